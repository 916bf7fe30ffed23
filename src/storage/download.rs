//! Parallel ranged download: an object as an ordered stream of chunks, several ranges in flight.

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::StorageError;

/// Tuning of [`ranged_download`].
#[derive(Clone, Copy, Debug)]
pub struct DownloadOptions {
    /// Bytes per ranged GET.
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

/// The `size` bytes of an object as chunks in order, fetched by parallel ranged GETs. With an
/// `etag`, every range is conditional on it, so a replaced object fails the download instead of
/// mixing two versions.
pub fn ranged_download(
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    size: u64,
    etag: Option<String>,
    options: DownloadOptions,
) -> impl Stream<Item = Result<Bytes, StorageError>> {
    let chunk = options.chunk_size.max(1);
    let ranges =
        (0..size.div_ceil(chunk)).map(move |i| (i * chunk, ((i + 1) * chunk).min(size) - 1));
    futures::stream::iter(ranges)
        .map(move |(first, last)| {
            let (client, bucket, key, etag) =
                (client.clone(), bucket.clone(), key.clone(), etag.clone());
            async move { fetch_range(&client, &bucket, &key, etag.as_deref(), first, last).await }
        })
        .buffered(options.concurrency.max(1))
}

async fn fetch_range(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    etag: Option<&str>,
    first: u64,
    last: u64,
) -> Result<Bytes, StorageError> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .range(format!("bytes={first}-{last}"))
        .set_if_match(etag.map(str::to_owned))
        .send()
        .await
        .map_err(|e| StorageError::from_sdk("GET", bucket, key, e))?;
    let data = super::read_body(out.body, bucket, key).await?;
    let expected = last - first + 1;
    if data.len() as u64 != expected {
        return Err(StorageError::Service {
            op: "GET",
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            code: "ShortRange".to_owned(),
            message: format!(
                "range {first}-{last} returned {} bytes, expected {expected}",
                data.len()
            ),
        });
    }
    Ok(data)
}
