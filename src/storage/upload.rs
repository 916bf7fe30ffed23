//! Streaming multipart upload: parts arrive on a channel, a few upload at once, and the upload
//! is aborted on any failure so that no partial object is ever left behind.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::StorageError;

/// What a producer sends to [`multipart_upload`].
#[derive(Debug)]
pub enum Part {
    /// The next part, in order (every part but the last at least 5 MiB).
    Data(Bytes),
    /// The producer finished: complete the upload. A channel closed without `End` means the
    /// producer failed, and the upload is aborted.
    End,
}

/// Tuning of [`multipart_upload`].
#[derive(Clone, Copy, Debug)]
pub struct UploadOptions {
    /// Parts uploading at once.
    pub concurrency: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self { concurrency: 4 }
    }
}

/// Why a multipart upload did not complete (it was aborted in every case).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the producer stopped before the end of the data")]
    ProducerFailed,
}

/// Uploads the parts received on `parts` as one object and returns its size. On any failure, and
/// when the producer stops without [`Part::End`], the multipart upload is aborted.
pub async fn multipart_upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    content_type: &str,
    mut parts: mpsc::Receiver<Part>,
    options: UploadOptions,
) -> Result<u64, UploadError> {
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type(content_type)
        .send()
        .await
        .map_err(|e| StorageError::from_sdk("CreateMultipartUpload", bucket, key, e))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| StorageError::Service {
            op: "CreateMultipartUpload",
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            code: "NoUploadId".to_owned(),
            message: "the response had no upload id".to_owned(),
        })?
        .to_owned();

    let result = upload_parts(client, bucket, key, &upload_id, &mut parts, options).await;
    if result.is_err() {
        // Free the uploaded parts. Best effort: a bucket lifecycle rule for incomplete
        // multipart uploads is the backstop (see docs/).
        parts.close();
        if let Err(e) = client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await
        {
            tracing::warn!(
                key,
                error = %StorageError::from_sdk("AbortMultipartUpload", bucket, key, e),
                "could not abort the multipart upload"
            );
        }
    }
    result
}

async fn upload_parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: &mut mpsc::Receiver<Part>,
    options: UploadOptions,
) -> Result<u64, UploadError> {
    let mut in_flight: JoinSet<Result<CompletedPart, StorageError>> = JoinSet::new();
    let mut completed = Vec::new();
    let mut number = 0i32;
    let mut total = 0u64;
    let mut ended = false;
    while let Some(part) = parts.recv().await {
        let data = match part {
            Part::End => {
                ended = true;
                break;
            }
            Part::Data(data) => data,
        };
        while in_flight.len() >= options.concurrency.max(1) {
            completed.push(join(&mut in_flight).await?);
        }
        number += 1;
        total += data.len() as u64;
        let (client, bucket, key, upload_id) = (
            client.clone(),
            bucket.to_owned(),
            key.to_owned(),
            upload_id.to_owned(),
        );
        let part_number = number;
        in_flight.spawn(async move {
            let out = client
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(part_number)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| StorageError::from_sdk("UploadPart", &bucket, &key, e))?;
            Ok(CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build())
        });
    }
    while !in_flight.is_empty() {
        completed.push(join(&mut in_flight).await?);
    }
    if !ended {
        return Err(UploadError::ProducerFailed);
    }
    completed.sort_by_key(|p| p.part_number());
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .map_err(|e| StorageError::from_sdk("CompleteMultipartUpload", bucket, key, e))?;
    Ok(total)
}

async fn join(
    set: &mut JoinSet<Result<CompletedPart, StorageError>>,
) -> Result<CompletedPart, StorageError> {
    match set.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(join_error)) => std::panic::resume_unwind(join_error.into_panic()),
        None => unreachable!("join is only called on a non-empty set"),
    }
}
