//! The controller's storage work on one SiteCache's prefix: the ownership marker, the inventory
//! of generations, verification and promotion, retention, and deletion of everything.
//!
//! Nothing here ever lists or deletes outside the prefix, and nothing is deleted under a prefix
//! whose marker names another SiteCache.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::archive::{Current, FORMAT_VERSION, Manifest};
use crate::storage::{self, Location, StorageError};

/// `P/.sitecache-owner.json`: which SiteCache owns the prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub claimed_at: Timestamp,
}

impl std::fmt::Display for OwnerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SiteCache {}/{} (uid {})",
            self.namespace, self.name, self.uid
        )
    }
}

/// The outcome of claiming a prefix.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// The prefix is this SiteCache's.
    Owned,
    /// Another SiteCache owns it.
    OwnedByAnother(OwnerRecord),
}

/// The generations found under `P/generations/`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inventory {
    /// Generations whose manifest exists (committed).
    pub committed: BTreeSet<u64>,
    /// Every generation number with any object, committed or not.
    pub all: BTreeSet<u64>,
    /// Bytes of each generation's objects.
    pub bytes: BTreeMap<u64, u64>,
}

impl Inventory {
    pub fn highest(&self) -> Option<u64> {
        self.all.last().copied()
    }
}

/// Why a finished snapshot is not promoted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("generation {0} has no manifest: the snapshot did not commit it")]
    NoManifest(u64),
    #[error("the manifest of generation {generation} is for generation {found} / {key}")]
    WrongManifest {
        generation: u64,
        found: u64,
        key: String,
    },
    #[error(
        "generation {generation} has format version {found}; this controller reads up to {FORMAT_VERSION}"
    )]
    UnknownFormat { generation: u64, found: u32 },
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
            Rejection::WrongManifest { .. } => "ManifestMismatch",
            Rejection::UnknownFormat { .. } => "UnknownFormat",
            Rejection::NoArchive { .. } => "ArchiveMissing",
            Rejection::SizeMismatch { .. } => "ArchiveSizeMismatch",
            Rejection::TooFewFiles { .. } => "TooFewFiles",
        }
    }
}

/// Objects and bytes removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub objects: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for Removed {
    fn add_assign(&mut self, o: Removed) {
        self.objects += o.objects;
        self.bytes += o.bytes;
    }
}

/// One SiteCache's prefix.
#[derive(Clone)]
pub struct Prefix<'a> {
    pub client: &'a Client,
    pub location: &'a Location,
}

/// Keys deleted per DeleteObjects request (the S3 maximum).
const DELETE_BATCH: usize = 1000;

impl Prefix<'_> {
    fn bucket(&self) -> &str {
        &self.location.bucket
    }

    /// The ownership marker, if any.
    pub async fn owner(&self) -> Result<Option<OwnerRecord>, StorageError> {
        storage::get_json(self.client, self.bucket(), &self.location.owner_key()).await
    }

    /// Claims the prefix for `me`, unless another SiteCache owns it. A marker with the same
    /// namespace and name but another uid is from an earlier incarnation of the same SiteCache
    /// (deleted with `Retain`, then recreated): it is taken over.
    pub async fn claim(&self, me: &OwnerRecord) -> Result<Claim, StorageError> {
        let key = self.location.owner_key();
        for _ in 0..3 {
            match self.owner().await? {
                Some(owner) if owner.uid == me.uid => return Ok(Claim::Owned),
                Some(owner) if owner.namespace == me.namespace && owner.name == me.name => {
                    storage::put_json(self.client, self.bucket(), &key, me, false).await?;
                    return Ok(Claim::Owned);
                }
                Some(owner) => return Ok(Claim::OwnedByAnother(owner)),
                None => match storage::put_json(self.client, self.bucket(), &key, me, true).await {
                    Ok(()) => return Ok(Claim::Owned),
                    // Someone claimed it between our read and write: read again.
                    Err(StorageError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e),
                },
            }
        }
        match self.owner().await? {
            Some(owner) if owner.uid == me.uid => Ok(Claim::Owned),
            Some(owner) => Ok(Claim::OwnedByAnother(owner)),
            None => Err(StorageError::Service {
                op: "PUT",
                bucket: self.bucket().to_owned(),
                key,
                code: "ClaimRace".into(),
                message: "the ownership marker kept changing".into(),
            }),
        }
    }

    /// Lists `P/generations/` (paginated).
    pub async fn inventory(&self) -> Result<Inventory, StorageError> {
        let mut inv = Inventory::default();
        for (key, size) in self.list(&self.location.generations_prefix()).await? {
            let Some(n) = self.location.generation_of_key(&key) else {
                continue;
            };
            inv.all.insert(n);
            *inv.bytes.entry(n).or_default() += size;
            if key == self.location.manifest_key(n) {
                inv.committed.insert(n);
            }
        }
        Ok(inv)
    }

    /// Every key under `prefix` with its size.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(self.bucket())
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| StorageError::from_sdk("LIST", self.bucket(), prefix, e))?;
            for o in page.contents() {
                if let Some(key) = o.key() {
                    out.push((key.to_owned(), o.size().unwrap_or(0).max(0) as u64));
                }
            }
        }
        Ok(out)
    }

    /// The manifest of generation `n`, if committed.
    pub async fn manifest(&self, n: u64) -> Result<Option<Manifest>, StorageError> {
        storage::get_json(self.client, self.bucket(), &self.location.manifest_key(n)).await
    }

    /// `current.json`, if any generation was promoted.
    pub async fn current(&self) -> Result<Option<Current>, StorageError> {
        storage::get_json(self.client, self.bucket(), &self.location.current_key()).await
    }

    /// Checks that generation `n` is committed, complete and big enough to promote.
    pub async fn verify(
        &self,
        n: u64,
        min_files: u64,
    ) -> Result<Result<Manifest, Rejection>, StorageError> {
        let Some(manifest) = self.manifest(n).await? else {
            return Ok(Err(Rejection::NoManifest(n)));
        };
        let key = self.location.archive_key(n);
        if manifest.generation != n || manifest.archive_key != key {
            return Ok(Err(Rejection::WrongManifest {
                generation: n,
                found: manifest.generation,
                key: manifest.archive_key,
            }));
        }
        if manifest.format_version > FORMAT_VERSION {
            return Ok(Err(Rejection::UnknownFormat {
                generation: n,
                found: manifest.format_version,
            }));
        }
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

    /// Promotes a verified generation: publishes the legacy copy if asked, then writes
    /// `current.json`. Returns what was written.
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

    /// Deletes every object of the given generations.
    pub async fn delete_generations(&self, generations: &[u64]) -> Result<Removed, StorageError> {
        let mut removed = Removed::default();
        for &n in generations {
            let keys = self.list(&self.location.generation_prefix(n)).await?;
            removed += self.delete_keys(&keys).await?;
        }
        Ok(removed)
    }

    /// Deletes everything under the prefix: in-progress uploads are aborted, objects deleted in
    /// batches, the ownership marker last; then checks that nothing is left. `Ok(None)` when
    /// objects appeared while deleting (a writer that had not stopped yet): call again.
    /// `latest` is the highest generation number the SiteCache used.
    pub async fn purge(&self, latest: u64) -> Result<Option<Removed>, StorageError> {
        let marker = self.location.owner_key();
        let keys: Vec<_> = self
            .list(&self.location.prefix)
            .await?
            .into_iter()
            .filter(|(k, _)| *k != marker)
            .collect();
        self.abort_uploads(&self.location.prefix).await?;
        // Some S3-compatible stores (MinIO) list uploads only by exact key, not by prefix: ask
        // for each archive key this prefix can have had too.
        let highest = keys
            .iter()
            .filter_map(|(k, _)| self.location.generation_of_key(k))
            .max()
            .unwrap_or(0)
            .max(latest);
        for n in 1..=highest + 1 {
            self.abort_uploads(&self.location.archive_key(n)).await?;
        }
        let mut removed = self.delete_keys(&keys).await?;
        let left = self.list(&self.location.prefix).await?;
        if left.iter().any(|(k, _)| *k != marker) {
            return Ok(None);
        }
        removed += self.delete_keys(&left).await?;
        if !self.list(&self.location.prefix).await?.is_empty() {
            return Ok(None);
        }
        Ok(Some(removed))
    }

    /// Aborts every unfinished multipart upload the store lists for `prefix` (every page).
    async fn abort_uploads(&self, prefix: &str) -> Result<(), StorageError> {
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(self.bucket())
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| StorageError::from_sdk("LIST-UPLOADS", self.bucket(), prefix, e))?;
            for upload in out.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                match self
                    .client
                    .abort_multipart_upload()
                    .bucket(self.bucket())
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                {
                    Ok(_) => {}
                    Err(e) => match StorageError::from_sdk("ABORT-UPLOAD", self.bucket(), key, e) {
                        StorageError::NotFound { .. } => {}
                        other => return Err(other),
                    },
                }
            }
            if !out.is_truncated().unwrap_or(false) {
                return Ok(());
            }
            key_marker = out.next_key_marker().map(str::to_owned);
            id_marker = out.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(());
            }
        }
    }

    async fn delete_keys(&self, keys: &[(String, u64)]) -> Result<Removed, StorageError> {
        let mut removed = Removed::default();
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|(k, _)| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .expect("keys are set");
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .expect("objects are set");
            let out = self
                .client
                .delete_objects()
                .bucket(self.bucket())
                .delete(delete)
                .send()
                .await
                .map_err(|e| {
                    StorageError::from_sdk("DELETE", self.bucket(), &self.location.prefix, e)
                })?;
            if let Some(err) = out.errors().first() {
                return Err(StorageError::Service {
                    op: "DELETE",
                    bucket: self.bucket().to_owned(),
                    key: err.key().unwrap_or_default().to_owned(),
                    code: err.code().unwrap_or("Error").to_owned(),
                    message: err.message().unwrap_or_default().to_owned(),
                });
            }
            removed.objects += batch.len() as u64;
            removed.bytes += batch.iter().map(|(_, s)| s).sum::<u64>();
        }
        Ok(removed)
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

/// Which generations retention deletes after promoting `current`: committed ones beyond the
/// `keep` newest at or below `current`, and uncommitted leftovers below `current`. Never
/// `current`, never one at or above `in_flight`, never one above `current` (not yet promoted).
pub fn retention_victims(
    inventory: &Inventory,
    current: u64,
    keep: u32,
    in_flight: Option<u64>,
) -> Vec<u64> {
    let kept: BTreeSet<u64> = inventory
        .committed
        .iter()
        .rev()
        .filter(|&&n| n <= current)
        .take(keep.max(1) as usize)
        .copied()
        .collect();
    inventory
        .all
        .iter()
        .copied()
        .filter(|&n| n < current && !kept.contains(&n))
        .filter(|&n| in_flight.is_none_or(|f| n < f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(committed: &[u64], uncommitted: &[u64]) -> Inventory {
        let mut i = Inventory::default();
        i.committed.extend(committed);
        i.all.extend(committed);
        i.all.extend(uncommitted);
        i
    }

    #[test]
    fn retention_keeps_the_newest_and_never_current_or_in_flight() {
        let i = inv(&[1, 2, 3, 4, 5], &[]);
        assert_eq!(retention_victims(&i, 5, 2, None), [1, 2, 3]);
        assert_eq!(retention_victims(&i, 5, 1, None), [1, 2, 3, 4]);
        assert_eq!(retention_victims(&i, 5, 10, None), Vec::<u64>::new());
        // Promoted 4 while 5 is being written: 5 is untouched.
        assert_eq!(retention_victims(&i, 4, 1, Some(5)), [1, 2, 3]);
    }

    #[test]
    fn retention_sweeps_uncommitted_leftovers_below_current() {
        let i = inv(&[1, 3, 5], &[2, 4, 6]);
        assert_eq!(retention_victims(&i, 5, 2, Some(6)), [1, 2, 4]);
        assert_eq!(retention_victims(&i, 5, 3, None), [2, 4]);
    }

    #[test]
    fn copy_source_encoding() {
        assert_eq!(urlencode_key("a/b c+d.tgz"), "a/b%20c%2Bd.tgz");
    }
}
