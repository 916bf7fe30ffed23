//! Deleting objects under a prefix: generations (retention, rejections) and everything (the
//! SiteCache's deletion). Keys are listed, then deleted by name, 1000 per request; a key under a
//! prefix nested in `P` that another SiteCache's marker claims is never among them.

use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::Prefix;
use super::ownership::{foreign_prefixes, is_foreign};
use crate::storage::StorageError;

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

/// Keys deleted per DeleteObjects request (the S3 maximum).
const DELETE_BATCH: usize = 1000;

impl Prefix<'_> {
    /// The keys of a listing under `P` that are this SiteCache's: not under a nested prefix
    /// another SiteCache claims.
    fn ours(&self, listing: Vec<(String, u64)>) -> Vec<(String, u64)> {
        let own = self.location.owner_key();
        let foreign = foreign_prefixes(listing.iter().map(|(k, _)| k.as_str()), &own);
        listing
            .into_iter()
            .filter(|(k, _)| !is_foreign(k, &foreign))
            .collect()
    }

    /// Deletes every object of the given generations.
    pub async fn delete_generations(&self, generations: &[u64]) -> Result<Removed, StorageError> {
        let mut removed = Removed::default();
        for &n in generations {
            let keys = self.ours(self.list(&self.location.generation_prefix(n)).await?);
            self.abort_attempts(&keys, &[]).await?;
            removed += self.delete_keys(&keys).await?;
        }
        Ok(removed)
    }

    /// Deletes everything of this SiteCache's under the prefix: in-progress uploads are aborted,
    /// objects deleted in batches, the ownership marker last; then checks that nothing of it is
    /// left. `Ok(None)` when objects appeared while deleting (a writer that had not stopped yet):
    /// call again. `latest` is the highest generation number the SiteCache used.
    pub async fn purge(&self, latest: u64) -> Result<Option<Removed>, StorageError> {
        let marker = self.location.owner_key();
        let listing = self.list(&self.location.prefix).await?;
        let foreign = foreign_prefixes(listing.iter().map(|(k, _)| k.as_str()), &marker);
        let keys: Vec<_> = listing
            .into_iter()
            .filter(|(k, _)| *k != marker && !is_foreign(k, &foreign))
            .collect();
        self.abort_uploads(&self.location.prefix, &foreign).await?;
        // Some S3-compatible stores (MinIO) list uploads only by exact key, not by prefix: ask
        // for the archive key of each generation that left objects, and of the latest two (one
        // may be uploading without any object yet), not of every number ever used. Uploads of
        // snapshot attempts are found by their records (`abort_attempts`).
        let mut generations: std::collections::BTreeSet<u64> = keys
            .iter()
            .filter_map(|(k, _)| self.location.generation_of_key(k))
            .collect();
        generations.extend([latest, latest + 1].into_iter().filter(|&n| n > 0));
        for n in generations {
            self.abort_uploads(&self.location.archive_key(n), &foreign)
                .await?;
        }
        self.abort_attempts(&keys, &foreign).await?;
        let mut removed = self.delete_keys(&keys).await?;
        let left = self.ours(self.list(&self.location.prefix).await?);
        if left.iter().any(|(k, _)| *k != marker) {
            return Ok(None);
        }
        removed += self.delete_keys(&left).await?;
        if !self
            .ours(self.list(&self.location.prefix).await?)
            .is_empty()
        {
            return Ok(None);
        }
        Ok(Some(removed))
    }

    /// Aborts the unfinished uploads of the snapshot attempts whose records are among `keys`
    /// (asked by exact key, which every store answers).
    async fn abort_attempts(
        &self,
        keys: &[(String, u64)],
        foreign: &[String],
    ) -> Result<(), StorageError> {
        for (key, _) in keys {
            if let Some((n, token)) = self.location.attempt_of_marker(key) {
                self.abort_uploads(&self.location.attempt_archive_key(n, token), foreign)
                    .await?;
                self.abort_uploads(&self.location.attempt_legacy_key(n, token), foreign)
                    .await?;
            }
        }
        Ok(())
    }

    /// Aborts every unfinished multipart upload the store lists for `prefix` (every page), but
    /// those under a `foreign` prefix. A store that does not list uploads (`NotImplemented`:
    /// the call is optional in S3-compatible stores) has nothing more to list: its unfinished
    /// uploads are left to the bucket's lifecycle rule (`AbortIncompleteMultipartUpload`), not a
    /// reason to keep a SiteCache's objects.
    async fn abort_uploads(&self, prefix: &str, foreign: &[String]) -> Result<(), StorageError> {
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let listed = self
                .client
                .list_multipart_uploads()
                .bucket(self.bucket())
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| StorageError::from_sdk("LIST-UPLOADS", self.bucket(), prefix, e));
            let out = match listed {
                Ok(out) => out,
                Err(e) if e.is_not_implemented() => {
                    tracing::warn!(
                        bucket = self.bucket(),
                        %prefix,
                        "the store does not list multipart uploads (NotImplemented): unfinished \
                         uploads are left to the bucket's lifecycle rule"
                    );
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            for upload in out.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                if !key.starts_with(&self.location.prefix) || is_foreign(key, foreign) {
                    continue;
                }
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
            debug_assert!(
                batch
                    .iter()
                    .all(|(k, _)| k.starts_with(&self.location.prefix))
            );
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
