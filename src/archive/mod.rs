//! The archive format of a generation (version 1), documented for runner authors in
//! `docs/formats.md`:
//!
//! - `cache.tar.zst`: independent zstd frames of [`FRAME_INPUT`] tar bytes each, with content
//!   size and checksum (`frames`), holding a tar stream (GNU headers, long names as GNU
//!   extensions) of the cache directory's contents, paths relative to it, sorted, each directory
//!   before its contents. Regular files, directories, symbolic links
//!   (relative, staying inside the tree) and hard links; permission bits and modification times
//!   (seconds) are kept; owners are not.
//! - `manifest.json` ([`Manifest`]): written after the archive, it commits the generation.
//! - `current.json` ([`Current`]): the promoted generation.
//!
//! Legacy archives (`tar -czf` of `/deno-dir`, entries under `deno-dir/`) are detected from their
//! first bytes and restored too.

mod entries;
mod frames;
mod pack;
pub mod policy;
mod pool;
pub mod runtime;
mod unpack;
mod walk;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use frames::{DecodeOptions, FRAME_INPUT, FrameEncoder, Piece, decompress};
pub use pack::{Owner, PackError, PackStats, Tree, pack, scan};
pub use unpack::{Declared, UnpackError, UnpackLimits, UnpackStats, Unpacker};

/// Version of the archive and manifest formats this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The `format` field of a manifest for `cache.tar.zst`.
pub const FORMAT_TAR_ZSTD: &str = "tar+zstd";

/// The name prefix of entries in a legacy tarball (`tar -xzf - -C /` restores `/deno-dir`).
pub const LEGACY_PREFIX: &str = "deno-dir";

/// `P/generations/<n>/manifest.json`: describes and commits generation `n`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Generation number.
    pub generation: u64,
    /// Key of the archive object.
    pub archive_key: String,
    /// Archive format, [`FORMAT_TAR_ZSTD`].
    pub format: String,
    /// Size of the archive object in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the archive object, lower-case hex.
    pub sha256: String,
    /// Regular files in the archive (hard links included).
    pub files: u64,
    /// Entries of every kind in the archive.
    pub entries: u64,
    /// Total size of the regular files.
    pub uncompressed_bytes: u64,
    /// When the snapshot finished packing.
    pub created_at: Timestamp,
    /// The source revision the cache was built from, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_revision: Option<String>,
    /// Key of the legacy gzip copy, when one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_archive_key: Option<String>,
    /// The version of the Deno that warmed the cache, as its caches record it (`runtime.rs`):
    /// its V8 code cache is of use only to that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deno_version: Option<String>,
    /// Where the cache was warmed (its `DENO_DIR`): Deno keys its code cache of npm packages by
    /// their paths under it, so a runner's `DENO_DIR` elsewhere does not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
    /// The program that wrote it.
    pub writer: String,
}

/// What a snapshot container reports in its termination message when it has committed a
/// generation: the manifest's fields that say which bytes were committed. The controller promotes
/// a generation only when the manifest in the bucket says the same, so an object replaced in the
/// bucket after the snapshot wrote it is never promoted under the snapshot's name. Free-form
/// fields (the source revision) are left out: a termination message holds 4 KiB at most.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub generation: u64,
    pub archive_key: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub files: u64,
    pub entries: u64,
    pub uncompressed_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_archive_key: Option<String>,
    /// Who owned every file of the cache the snapshot packed (not in the manifest: it describes
    /// the warming pod, not the archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_owner: Option<Owner>,
}

impl Report {
    /// The report of a committed manifest.
    pub fn of(m: &Manifest) -> Report {
        Report {
            generation: m.generation,
            archive_key: m.archive_key.clone(),
            size_bytes: m.size_bytes,
            sha256: m.sha256.clone(),
            files: m.files,
            entries: m.entries,
            uncompressed_bytes: m.uncompressed_bytes,
            legacy_archive_key: m.legacy_archive_key.clone(),
            cache_owner: None,
        }
    }

    /// The first field where `m` says something else than this report: (field, manifest's,
    /// report's).
    pub fn differs_from(&self, m: &Manifest) -> Option<(&'static str, String, String)> {
        let theirs = Report::of(m);
        let fields: [(&'static str, String, String); 8] = [
            (
                "generation",
                theirs.generation.to_string(),
                self.generation.to_string(),
            ),
            ("archiveKey", theirs.archive_key, self.archive_key.clone()),
            (
                "sizeBytes",
                theirs.size_bytes.to_string(),
                self.size_bytes.to_string(),
            ),
            ("sha256", theirs.sha256, self.sha256.clone()),
            ("files", theirs.files.to_string(), self.files.to_string()),
            (
                "entries",
                theirs.entries.to_string(),
                self.entries.to_string(),
            ),
            (
                "uncompressedBytes",
                theirs.uncompressed_bytes.to_string(),
                self.uncompressed_bytes.to_string(),
            ),
            (
                "legacyArchiveKey",
                format!("{:?}", theirs.legacy_archive_key),
                format!("{:?}", self.legacy_archive_key),
            ),
        ];
        fields.into_iter().find(|(_, a, b)| a != b)
    }
}

/// `P/current.json`: the promoted generation, a copy of its manifest plus when it was promoted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Current {
    #[serde(flatten)]
    pub manifest: Manifest,
    /// When the controller promoted the generation.
    pub promoted_at: Timestamp,
}

/// The compression of an archive, detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Gzip,
}

impl Compression {
    /// Detects zstd (`28 b5 2f fd`) or gzip (`1f 8b`) from the first bytes of an archive.
    pub fn detect(head: &[u8]) -> Option<Self> {
        if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else {
            None
        }
    }
}

/// The writer string recorded in manifests.
pub fn writer() -> String {
    format!("sitecache {}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression() {
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8]),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::detect(b"ustar"), None);
        assert_eq!(Compression::detect(&[]), None);
    }

    #[test]
    fn current_flattens_the_manifest() {
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            generation: 3,
            archive_key: "shop/generations/00000000000000000003/cache.tar.zst".into(),
            format: FORMAT_TAR_ZSTD.into(),
            size_bytes: 10,
            sha256: "00".repeat(32),
            files: 2,
            entries: 3,
            uncompressed_bytes: 20,
            created_at: "2026-11-23T10:00:00Z".parse().unwrap(),
            source_revision: Some("r1".into()),
            legacy_archive_key: None,
            deno_version: None,
            cache_dir: None,
            writer: writer(),
        };
        let current = Current {
            manifest: manifest.clone(),
            promoted_at: "2026-11-23T10:01:00Z".parse().unwrap(),
        };
        let json = serde_json::to_value(&current).unwrap();
        assert_eq!(json["generation"], 3);
        assert_eq!(json["sourceRevision"], "r1");
        assert_eq!(json["promotedAt"], "2026-11-23T10:01:00Z");
        let back: Current = serde_json::from_value(json).unwrap();
        assert_eq!(back, current);
    }
}
