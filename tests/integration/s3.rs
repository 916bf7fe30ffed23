//! The local S3 server is a real one: buckets, objects, listing, multipart uploads.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use crate::support;

#[tokio::test]
async fn s3_server_stores_and_lists_objects() {
    let s3 = support::s3().await;
    let bucket = s3.create_bucket("smoke").await.unwrap();
    let client = s3.client();
    for key in ["site/a.txt", "site/b/c.txt", "other/d.txt"] {
        client
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(ByteStream::from(key.as_bytes().to_vec()))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        s3.list_keys(&bucket, "site/").await.unwrap(),
        ["site/a.txt", "site/b/c.txt"]
    );
    let got = client
        .get_object()
        .bucket(&bucket)
        .key("site/b/c.txt")
        .send()
        .await
        .unwrap();
    let body = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(&body[..], b"site/b/c.txt");
}

#[tokio::test]
async fn s3_server_does_multipart_uploads() {
    let s3 = support::s3().await;
    let bucket = s3.create_bucket("multipart").await.unwrap();
    let client = s3.client();
    let upload = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key("big")
        .send()
        .await
        .unwrap();
    let id = upload.upload_id().unwrap();
    let part = vec![7u8; 5 * 1024 * 1024];
    let mut parts = Vec::new();
    for n in 1..=2 {
        let out = client
            .upload_part()
            .bucket(&bucket)
            .key("big")
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(part.clone()))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().unwrap())
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(&bucket)
        .key("big")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let head = client
        .head_object()
        .bucket(&bucket)
        .key("big")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(10 * 1024 * 1024));
}
