//! Parallel ranged download: an object as an ordered stream of chunks, several ranges in flight.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::StorageError;

/// Tuning of [`ranged_download`].
#[derive(Clone, Copy, Debug)]
pub struct DownloadOptions {
    /// Bytes per ranged GET, once the first ones (from 1 MiB, doubling) have reached it.
    pub chunk_size: u64,
    /// Ranged GETs in flight at once. Memory stays within `chunk_size * concurrency`.
    pub concurrency: usize,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            chunk_size: 8 * 1024 * 1024,
            concurrency: 6,
        }
    }
}

/// The first range's size at most: small, so that the work on the data starts early; the ranges
/// after it double up to the chunk size.
const FIRST_RANGE: u64 = 1024 * 1024;

/// The byte ranges (first and last byte) of an object of `size` bytes, in order: `FIRST_RANGE`,
/// then doubling up to `chunk` each.
fn ranges(size: u64, chunk: u64) -> Vec<(u64, u64)> {
    let chunk = chunk.max(1);
    let mut next = FIRST_RANGE.min(chunk);
    let mut out = Vec::new();
    let mut first = 0;
    while first < size {
        let last = first.saturating_add(next).min(size) - 1;
        out.push((first, last));
        first = last + 1;
        next = next.saturating_mul(2).min(chunk);
    }
    out
}

/// The `size` bytes of an object as chunks in order, fetched by parallel ranged GETs. A replaced
/// object fails the download instead of mixing two versions: with an `etag` (from a HEAD), every
/// range is conditional on it; without, every range must answer with the same ETag. Every range
/// must also report the object's size as `size` (so no HEAD is needed when the size is known).
pub fn ranged_download(
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    size: u64,
    etag: Option<String>,
    options: DownloadOptions,
) -> impl Stream<Item = Result<Bytes, StorageError>> {
    let object = Arc::new(Object {
        client,
        bucket,
        key,
        size,
        etag,
        seen_etag: Mutex::new(None),
    });
    futures::stream::iter(ranges(size, options.chunk_size))
        .map(move |range| {
            let object = object.clone();
            async move { object.fetch_range(range).await }
        })
        .buffered(options.concurrency.max(1))
}

/// What every range of one download checks against.
struct Object {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    size: u64,
    /// The ETag every range is conditional on (`If-Match`).
    etag: Option<String>,
    /// Without one: the first ETag a range answered with, which the others must match.
    seen_etag: Mutex<Option<String>>,
}

/// Tries of one range. Ranges are idempotent: one whose body was cut short or stalled, or whose
/// request was throttled or failed after the client's own retries, is tried again; one that
/// found the object changed, missing or of another size is not.
const RANGE_TRIES: u32 = 4;
/// No byte of a range's body for this long abandons the try (and the range is tried again).
const STALL: Duration = Duration::from_secs(10);

/// Whether a range that failed so is worth another try.
fn retryable(e: &StorageError) -> bool {
    match e {
        StorageError::Unreachable { .. } | StorageError::Timeout { .. } => true,
        StorageError::Service { code, .. } => matches!(
            code.as_str(),
            "ShortRange" | "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout"
        ),
        _ => false,
    }
}

impl Object {
    async fn fetch_range(&self, range: (u64, u64)) -> Result<Bytes, StorageError> {
        let mut pause = Duration::from_millis(100);
        let mut tries = 1;
        loop {
            match self.fetch_range_once(range).await {
                Err(e) if tries < RANGE_TRIES && retryable(&e) => {
                    tracing::debug!(error = %e, tries, "a range failed; trying it again");
                    tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64())).await;
                    pause *= 2;
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    async fn fetch_range_once(&self, (first, last): (u64, u64)) -> Result<Bytes, StorageError> {
        let (bucket, key) = (self.bucket.as_str(), self.key.as_str());
        let service_error = |code: &str, message: String| StorageError::Service {
            op: "GET",
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            code: code.to_owned(),
            message,
        };
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={first}-{last}"))
            .set_if_match(self.etag.clone())
            .send()
            .await
            .map_err(|e| StorageError::from_sdk("GET", bucket, key, e))?;
        // `bytes FIRST-LAST/TOTAL`
        let total = out
            .content_range()
            .and_then(|r| r.rsplit('/').next()?.parse().ok());
        if let Some(total) = total
            && total != self.size
        {
            return Err(StorageError::WrongSize {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                found: total,
                expected: self.size,
            });
        }
        if self.etag.is_none()
            && let Some(tag) = out.e_tag()
        {
            let mut seen = self.seen_etag.lock().unwrap_or_else(|e| e.into_inner());
            match seen.as_deref() {
                None => *seen = Some(tag.to_owned()),
                Some(earlier) if earlier != tag => {
                    return Err(service_error(
                        "ObjectChanged",
                        format!(
                            "the object changed during the download (ETag {earlier}, then {tag})"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let expected = last - first + 1;
        let data = super::read_body(out.body, bucket, key, expected, Some(STALL)).await?;
        if data.len() as u64 != expected {
            return Err(service_error(
                "ShortRange",
                format!(
                    "range {first}-{last} returned {} bytes, expected {expected}",
                    data.len()
                ),
            ));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn ranges_start_small_and_double_up_to_the_chunk_size() {
        let sizes = |size, chunk| -> Vec<u64> {
            let r = ranges(size, chunk);
            // Contiguous, from 0 to the last byte.
            assert_eq!(r.first().map_or(0, |r| r.0), 0);
            assert_eq!(r.last().map_or(0, |r| r.1 + 1), size);
            assert!(r.windows(2).all(|w| w[1].0 == w[0].1 + 1));
            r.iter().map(|(a, b)| b - a + 1).collect()
        };
        let m = |n: &[u64]| n.iter().map(|n| n * MIB).collect::<Vec<_>>();
        assert_eq!(sizes(30 * MIB, 8 * MIB), m(&[1, 2, 4, 8, 8, 7]));
        assert_eq!(sizes(2 * MIB, 8 * MIB), m(&[1, 1]));
        assert_eq!(sizes(MIB + MIB / 2, MIB / 2), [MIB / 2; 3]);
        assert!(ranges(0, 8 * MIB).is_empty());
        assert_eq!(ranges(10, 8 * MIB), [(0, 9)]);
    }
}
