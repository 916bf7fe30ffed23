//! What a snapshot committed, read and checked before it is promoted. A manifest is read as
//! hostile input (a site's own code runs beside the snapshot's credentials): every key it names is
//! checked against the layout of its generation before the controller uses it, and a manifest the
//! controller cannot read is a rejection of that generation, never an error that stalls the
//! SiteCache.

use jiff::Timestamp;
use serde::Deserialize;

use super::Prefix;
use crate::archive::{Current, FORMAT_TAR_ZSTD, FORMAT_VERSION, Manifest, Report};
use crate::storage::{self, Location, StorageError};

/// Why a finished snapshot is not promoted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("generation {0} has no manifest: the snapshot did not commit it")]
    NoManifest(u64),
    #[error("the manifest of generation {generation} cannot be read: {why}")]
    Malformed { generation: u64, why: String },
    #[error(
        "generation {generation} has {found}; this controller reads format version \
         {FORMAT_VERSION} ({FORMAT_TAR_ZSTD})"
    )]
    UnknownFormat { generation: u64, found: String },
    #[error(
        "the manifest of generation {generation} says {field} {found:?}, expected {expected:?}"
    )]
    WrongManifest {
        generation: u64,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error(
        "Job {job} succeeded, but its snapshot container reported nothing (its pods are gone, or \
         it wrote no report): nothing in the bucket is promoted on its word alone"
    )]
    NotReported { job: String },
    #[error("the pods of Job {job} reported different commits: none is promoted")]
    ConflictingReports { job: String },
    #[error(
        "the manifest of generation {generation} says {field} {found}, but the snapshot container \
         reported {reported}: the bucket was changed after the snapshot wrote it"
    )]
    NotAsReported {
        generation: u64,
        field: &'static str,
        found: String,
        reported: String,
    },
    #[error("the archive {key} is missing")]
    NoArchive { key: String },
    #[error("the archive {key} is {found} bytes, the manifest says {expected}")]
    SizeMismatch {
        key: String,
        found: u64,
        expected: u64,
    },
    #[error("generation {generation} has {files} files, fewer than spec.snapshot.minFiles {min}")]
    TooFewFiles {
        generation: u64,
        files: u64,
        min: u64,
    },
}

impl Rejection {
    /// A CamelCase reason for status and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::NoManifest(_) => "ManifestMissing",
            Rejection::Malformed { .. } => "ManifestMalformed",
            Rejection::UnknownFormat { .. } => "UnknownFormat",
            Rejection::WrongManifest { .. } => "ManifestMismatch",
            Rejection::NotReported { .. } => "SnapshotNotReported",
            Rejection::ConflictingReports { .. } => "SnapshotReportsConflict",
            Rejection::NotAsReported { .. } => "ManifestNotAsReported",
            Rejection::NoArchive { .. } => "ArchiveMissing",
            Rejection::SizeMismatch { .. } => "ArchiveSizeMismatch",
            Rejection::TooFewFiles { .. } => "TooFewFiles",
        }
    }
}

/// Parses the manifest of generation `n` at `location` and checks what it says about itself:
/// its format, its generation, and every key it names (the archive, the legacy copy) against the
/// layout of generation `n`. Pure.
pub fn parse_manifest(bytes: &[u8], location: &Location, n: u64) -> Result<Manifest, Rejection> {
    /// The fields every format version has, read first so that a newer format is reported as
    /// such rather than as malformed.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Version {
        format_version: u32,
    }
    let malformed = |why: String| Rejection::Malformed { generation: n, why };
    let version: Version =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("not a manifest: {e}")))?;
    if version.format_version != FORMAT_VERSION {
        return Err(Rejection::UnknownFormat {
            generation: n,
            found: format!("format version {}", version.format_version),
        });
    }
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("{e}")))?;
    check_manifest(&manifest, location, n)?;
    Ok(manifest)
}

/// Checks a manifest against the layout of generation `n` at `location`.
pub fn check_manifest(manifest: &Manifest, location: &Location, n: u64) -> Result<(), Rejection> {
    let wrong = |field, found: String, expected: String| {
        Err(Rejection::WrongManifest {
            generation: n,
            field,
            found,
            expected,
        })
    };
    if manifest.format != FORMAT_TAR_ZSTD {
        return Err(Rejection::UnknownFormat {
            generation: n,
            found: format!("format {:?}", manifest.format),
        });
    }
    if manifest.generation != n {
        return wrong("generation", manifest.generation.to_string(), n.to_string());
    }
    let Some(token) = location.archive_token(n, &manifest.archive_key) else {
        return wrong(
            "archiveKey",
            manifest.archive_key.clone(),
            location.attempt_archive_key(n, "<token>"),
        );
    };
    if let Some(legacy) = &manifest.legacy_archive_key {
        let expected = location.legacy_key_for(n, token);
        if *legacy != expected {
            return wrong("legacyArchiveKey", legacy.clone(), expected);
        }
    }
    let hex = manifest.sha256.len() == 64
        && manifest
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return Err(Rejection::Malformed {
            generation: n,
            why: format!(
                "sha256 {:?} is not 64 lower-case hex digits",
                manifest.sha256
            ),
        });
    }
    Ok(())
}

impl Prefix<'_> {
    /// The manifest of the generation `info` records, if it still says what the record does
    /// (archive key, size, SHA-256): what promoting a recorded generation again (`agree`, a pin)
    /// writes `current.json` from. `Ok(Err(why))` when it does not.
    pub async fn manifest_as_recorded(
        &self,
        info: &crate::api::GenerationInfo,
    ) -> Result<Result<Manifest, String>, StorageError> {
        Ok(match self.manifest(info.generation).await? {
            Ok(m)
                if m.sha256 == info.sha256
                    && m.archive_key == info.key
                    && m.size_bytes == info.size_bytes =>
            {
                Ok(m)
            }
            Ok(_) => Err("its manifest differs from what the status records".to_owned()),
            Err(rejection) => Err(rejection.to_string()),
        })
    }

    /// The manifest of generation `n`, checked: `Ok(Err(_))` when the generation cannot be
    /// promoted as it is.
    pub async fn manifest(&self, n: u64) -> Result<Result<Manifest, Rejection>, StorageError> {
        let key = self.location.manifest_key(n);
        match storage::get_document(self.client, self.bucket(), &key).await {
            Ok(None) => Ok(Err(Rejection::NoManifest(n))),
            Ok(Some(bytes)) => Ok(parse_manifest(&bytes, self.location, n)),
            Err(StorageError::TooLarge { limit, .. }) => Ok(Err(Rejection::Malformed {
                generation: n,
                why: format!("it is larger than {limit} bytes"),
            })),
            Err(e) => Err(e),
        }
    }

    /// `current.json`, if a generation was promoted and its record checks out; `Ok(Err(_))`
    /// names what is wrong with it.
    pub async fn current(&self) -> Result<Option<Result<Current, String>>, StorageError> {
        let key = self.location.current_key();
        let bytes = match storage::get_document(self.client, self.bucket(), &key).await {
            Ok(None) => return Ok(None),
            Ok(Some(bytes)) => bytes,
            Err(StorageError::TooLarge { limit, .. }) => {
                return Ok(Some(Err(format!("{key} is larger than {limit} bytes"))));
            }
            Err(e) => return Err(e),
        };
        let current: Current = match serde_json::from_slice(&bytes) {
            Ok(c) => c,
            Err(e) => return Ok(Some(Err(format!("{key} cannot be read: {e}")))),
        };
        let n = current.manifest.generation;
        Ok(Some(
            check_manifest(&current.manifest, self.location, n)
                .map(|()| current)
                .map_err(|r| format!("{key}: {r}")),
        ))
    }

    /// Checks that generation `n` is committed as its snapshot container `reported`, complete
    /// and big enough to promote.
    pub async fn verify(
        &self,
        n: u64,
        reported: &Report,
        min_files: u64,
    ) -> Result<Result<Manifest, Rejection>, StorageError> {
        let manifest = match self.manifest(n).await? {
            Ok(m) => m,
            Err(rejection) => return Ok(Err(rejection)),
        };
        if let Some((field, found, reported)) = reported.differs_from(&manifest) {
            return Ok(Err(Rejection::NotAsReported {
                generation: n,
                field,
                found,
                reported,
            }));
        }
        let key = manifest.archive_key.clone();
        match storage::head(self.client, self.bucket(), &key).await? {
            None => return Ok(Err(Rejection::NoArchive { key })),
            Some((size, _)) if size != manifest.size_bytes => {
                return Ok(Err(Rejection::SizeMismatch {
                    key,
                    found: size,
                    expected: manifest.size_bytes,
                }));
            }
            Some(_) => {}
        }
        if manifest.files < min_files {
            return Ok(Err(Rejection::TooFewFiles {
                generation: n,
                files: manifest.files,
                min: min_files,
            }));
        }
        Ok(Ok(manifest))
    }

    /// Promotes a verified generation: publishes the legacy copy to `legacy_key` if asked (the
    /// caller checked that the key is this SiteCache's to write), then writes `current.json`.
    pub async fn promote(
        &self,
        manifest: &Manifest,
        legacy_key: Option<&str>,
        now: Timestamp,
    ) -> Result<Current, StorageError> {
        if let (Some(target), Some(source)) = (legacy_key, manifest.legacy_archive_key.as_deref()) {
            // CopyObject handles objects up to 5 GiB, far above a module cache's legacy tarball.
            self.client
                .copy_object()
                .bucket(self.bucket())
                .key(target)
                .copy_source(format!("{}/{}", self.bucket(), urlencode_key(source)))
                .send()
                .await
                .map_err(|e| StorageError::from_sdk("COPY", self.bucket(), target, e))?;
        }
        let current = Current {
            manifest: manifest.clone(),
            promoted_at: now,
        };
        storage::put_json(
            self.client,
            self.bucket(),
            &self.location.current_key(),
            &current,
            false,
        )
        .await?;
        Ok(current)
    }
}

/// Percent-encodes a key for `x-amz-copy-source` (keeping '/').
fn urlencode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::writer;

    fn loc() -> Location {
        Location::new("caches", "shop/").unwrap()
    }

    fn manifest(n: u64) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            generation: n,
            archive_key: loc().archive_key(n),
            format: FORMAT_TAR_ZSTD.into(),
            size_bytes: 10,
            sha256: "ab".repeat(32),
            files: 2,
            entries: 3,
            uncompressed_bytes: 20,
            created_at: "2026-11-23T10:00:00Z".parse().unwrap(),
            source_revision: None,
            legacy_archive_key: Some(loc().legacy_archive_key(n)),
            deno_version: None,
            cache_dir: None,
            writer: writer(),
        }
    }

    fn parse(m: &serde_json::Value, n: u64) -> Result<Manifest, Rejection> {
        parse_manifest(&serde_json::to_vec(m).unwrap(), &loc(), n)
    }

    #[test]
    fn a_manifest_of_its_own_generation_is_accepted() {
        let m = serde_json::to_value(manifest(4)).unwrap();
        assert_eq!(parse(&m, 4), Ok(manifest(4)));
    }

    #[test]
    fn every_key_a_manifest_names_is_checked() {
        let cases = [
            (
                "archiveKey",
                "victim/generations/00000000000000000004/cache.tar.zst",
            ),
            ("legacyArchiveKey", "victim/current.json"),
            (
                "legacyArchiveKey",
                "shop/generations/00000000000000000003/legacy.tar.gz",
            ),
        ];
        for (field, value) in cases {
            let mut m = serde_json::to_value(manifest(4)).unwrap();
            m[field] = value.into();
            let r = parse(&m, 4).unwrap_err();
            assert_eq!(r.reason(), "ManifestMismatch", "{field}");
            assert!(r.to_string().contains(value), "{r}");
        }
        let mut m = serde_json::to_value(manifest(4)).unwrap();
        m["generation"] = 5.into();
        assert_eq!(parse(&m, 4).unwrap_err().reason(), "ManifestMismatch");
    }

    #[test]
    fn unreadable_and_unknown_manifests_are_rejections() {
        let r = parse_manifest(b"{\"formatVersion\": 1, \"gen", &loc(), 4).unwrap_err();
        assert_eq!(r.reason(), "ManifestMalformed");
        let r = parse_manifest(b"[]", &loc(), 4).unwrap_err();
        assert_eq!(r.reason(), "ManifestMalformed");
        // A newer format is reported as such, whatever else it holds.
        let newer = serde_json::json!({"formatVersion": 2, "parts": []});
        let r = parse(&newer, 4).unwrap_err();
        assert_eq!(r.reason(), "UnknownFormat");
        assert!(r.to_string().contains("format version 2"), "{r}");
        let mut m = serde_json::to_value(manifest(4)).unwrap();
        m["format"] = "tar+lz4".into();
        assert_eq!(parse(&m, 4).unwrap_err().reason(), "UnknownFormat");
        let mut m = serde_json::to_value(manifest(4)).unwrap();
        m["sha256"] = "../../etc".into();
        assert_eq!(parse(&m, 4).unwrap_err().reason(), "ManifestMalformed");
        let mut m = serde_json::to_value(manifest(4)).unwrap();
        m.as_object_mut().unwrap().remove("sizeBytes");
        assert_eq!(parse(&m, 4).unwrap_err().reason(), "ManifestMalformed");
    }

    #[test]
    fn copy_source_encoding() {
        assert_eq!(urlencode_key("a/b c+d.tgz"), "a/b%20c%2Bd.tgz");
    }
}
