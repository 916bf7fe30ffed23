//! Object storage: S3 clients from the standard AWS configuration, typed errors, and the
//! streaming upload and download primitives the agent commands are built on.

mod download;
pub mod joblog;
mod location;
mod tls;
mod upload;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use download::{DownloadOptions, ranged_download};
pub use location::{
    Location, LocationError, OWNER_MARKER, claimed_by_marker, is_attempt_token, new_attempt_token,
    parent_prefixes, validate_prefix,
};
pub use tls::{CA_BUNDLE_ENV, CA_BUNDLE_FLAG, CaBundle, CaBundleError};
pub use upload::{Part, UploadError, UploadOptions, multipart_upload};

/// Region used when none is configured: S3-compatible stores accept any, and AWS redirects.
const FALLBACK_REGION: &str = "us-east-1";

/// How to reach the object store, on top of the standard AWS environment (`AWS_REGION`,
/// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, credentials from the default chain: environment,
/// web identity / IRSA, EKS Pod Identity, profiles, instance metadata).
#[derive(Clone, Debug, Default)]
pub struct StorageOptions {
    /// Region; else `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile; else us-east-1.
    pub region: Option<String>,
    /// Endpoint URL; else `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`; else AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), as MinIO and most self-hosted stores need.
    pub path_style: bool,
    /// Connect timeout of each request.
    pub connect_timeout: Option<Duration>,
    /// Timeout of one attempt of one request (a stalled transfer fails after this long).
    pub attempt_timeout: Option<Duration>,
    /// Attempts per request, retries included.
    pub max_attempts: Option<u32>,
    /// Sees every request (the controller counts them).
    pub interceptor: Option<aws_sdk_s3::config::SharedInterceptor>,
    /// CA certificates trusted besides the platform's (`--ca-bundle`).
    pub ca_bundle: Option<CaBundle>,
}

/// Builds an S3 client from the standard AWS configuration and `options`.
pub async fn client(options: &StorageOptions) -> aws_sdk_s3::Client {
    // The region chain deliberately skips instance metadata: probing an unreachable metadata
    // endpoint costs seconds, and restores run in a wake-up's critical path.
    let region =
        RegionProviderChain::first_try(options.region.clone().map(aws_config::Region::new))
            .or_else(aws_config::environment::EnvironmentVariableRegionProvider::new())
            .or_else(aws_config::profile::ProfileFileRegionProvider::new())
            .or_else(aws_config::Region::from_static(FALLBACK_REGION));
    let mut timeouts = TimeoutConfig::builder()
        .connect_timeout(options.connect_timeout.unwrap_or(Duration::from_secs(5)));
    if let Some(t) = options.attempt_timeout {
        timeouts = timeouts.operation_attempt_timeout(t);
    }
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .timeout_config(timeouts.build())
        .retry_config(RetryConfig::standard().with_max_attempts(options.max_attempts.unwrap_or(3)));
    if let Some(endpoint) = &options.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let native = tls::has_native_roots();
    if !native || options.ca_bundle.is_some() {
        loader = loader.http_client(tls::client_with_roots(native, options.ca_bundle.as_ref()));
    }
    let shared = loader.load().await;
    let mut config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(options.path_style)
        .retry_classifier(tls::NoRetryOnRefusedCertificate);
    if let Some(interceptor) = &options.interceptor {
        config.push_interceptor(interceptor.clone());
    }
    let config = config.build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A storage operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("s3://{bucket}/{key} does not exist")]
    NotFound { bucket: String, key: String },
    #[error("s3://{bucket}/{key} already exists")]
    AlreadyExists { bucket: String, key: String },
    #[error("{op} s3://{bucket}/{key} timed out")]
    Timeout {
        op: &'static str,
        bucket: String,
        key: String,
    },
    #[error("{op} s3://{bucket}/{key}: storage unreachable: {message}")]
    Unreachable {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
    },
    /// No credentials could be found or loaded: not the store's answer, the client never sent
    /// the request.
    #[error("{op} s3://{bucket}/{key}: {message}")]
    Credentials {
        op: &'static str,
        bucket: String,
        key: String,
        /// No provider had any (as opposed to one that failed).
        missing: bool,
        message: String,
    },
    /// The endpoint's TLS certificate was refused: the request never reached the store.
    #[error("{op} s3://{bucket}/{key}: {}", certificate_message(*.unknown_issuer, .problem))]
    Certificate {
        op: &'static str,
        bucket: String,
        key: String,
        /// No trusted CA issued it (a private CA that `--ca-bundle` does not name), as opposed
        /// to a certificate that is expired, for another name, revoked, …
        unknown_issuer: bool,
        /// What rustls said.
        problem: String,
    },
    #[error("{op} s3://{bucket}/{key}: {code}: {message}")]
    Service {
        op: &'static str,
        bucket: String,
        key: String,
        code: String,
        message: String,
    },
    #[error("s3://{bucket}/{key} is {found} bytes, not the {expected} expected")]
    WrongSize {
        bucket: String,
        key: String,
        found: u64,
        expected: u64,
    },
    #[error("s3://{bucket}/{key} is larger than the {limit} bytes a document may have")]
    TooLarge {
        bucket: String,
        key: String,
        limit: u64,
    },
    #[error("s3://{bucket}/{key} is not valid JSON of the expected shape: {source}")]
    BadDocument {
        bucket: String,
        key: String,
        source: serde_json::Error,
    },
}

/// What kind of refusal a store's error code is: a closed set, so that metrics labels stay few
/// whatever codes a store invents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceClass {
    /// The credentials may not do this (`AccessDenied`, `InvalidAccessKeyId`, …).
    Denied,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The store asks the client to slow down (`SlowDown`, HTTP 503).
    Throttled,
    /// Anything else.
    Other,
}

impl StorageError {
    /// A short machine-readable kind, for metrics labels and result lines.
    pub fn kind(&self) -> &'static str {
        match self {
            StorageError::NotFound { .. } => "not-found",
            StorageError::AlreadyExists { .. } => "already-exists",
            StorageError::Timeout { .. } => "timeout",
            StorageError::Unreachable { .. } => "unreachable",
            StorageError::Credentials { .. } => "credentials",
            StorageError::Certificate {
                unknown_issuer: true,
                ..
            } => "untrusted-certificate",
            StorageError::Certificate { .. } => "invalid-certificate",
            StorageError::Service { .. } => match self.class() {
                Some(ServiceClass::Denied) => "access-denied",
                Some(ServiceClass::NoSuchBucket) => "no-such-bucket",
                Some(ServiceClass::Throttled) => "throttled",
                Some(ServiceClass::Other) | None => "storage-error",
            },
            StorageError::WrongSize { .. } => "wrong-size",
            StorageError::TooLarge { .. } | StorageError::BadDocument { .. } => "bad-document",
        }
    }

    /// The class of a store's refusal (`None` for errors that are not one).
    pub fn class(&self) -> Option<ServiceClass> {
        let StorageError::Service { code, .. } = self else {
            return None;
        };
        Some(match code.as_str() {
            "AccessDenied"
            | "AllAccessDisabled"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "AccountProblem" => ServiceClass::Denied,
            "NoSuchBucket" => ServiceClass::NoSuchBucket,
            "SlowDown"
            | "ServiceUnavailable"
            | "RequestLimitExceeded"
            | "Throttling"
            | "HTTP 503" => ServiceClass::Throttled,
            _ => ServiceClass::Other,
        })
    }

    /// A CamelCase reason for conditions and Events: the store's own error code when it is one
    /// (`AccessDenied`, `NoSuchBucket`, `SlowDown`), else what failed (`StorageTimeout`,
    /// `StorageUnreachable`, …).
    /// The store does not implement the call (an optional one, in S3-compatible stores).
    pub fn is_not_implemented(&self) -> bool {
        matches!(self, StorageError::Service { code, .. } if code == "NotImplemented" || code == "HTTP 501")
    }

    pub fn reason(&self) -> String {
        match self {
            StorageError::NotFound { .. } => "StorageObjectMissing".into(),
            StorageError::AlreadyExists { .. } => "StorageObjectExists".into(),
            StorageError::Timeout { .. } => "StorageTimeout".into(),
            StorageError::Unreachable { .. } => "StorageUnreachable".into(),
            StorageError::Credentials { missing: true, .. } => "NoStorageCredentials".into(),
            StorageError::Credentials { .. } => "StorageCredentialsError".into(),
            StorageError::Certificate {
                unknown_issuer: true,
                ..
            } => "StorageCertificateUntrusted".into(),
            StorageError::Certificate { .. } => "StorageCertificateInvalid".into(),
            StorageError::Service { code, .. } if is_camel_case_code(code) => code.clone(),
            StorageError::Service { .. } => "StorageError".into(),
            StorageError::WrongSize { .. } => "StorageSizeMismatch".into(),
            StorageError::TooLarge { .. } | StorageError::BadDocument { .. } => {
                "StorageBadDocument".into()
            }
        }
    }

    /// Classifies an SDK error of operation `op` on `bucket`/`key`.
    pub fn from_sdk<E>(
        op: &'static str,
        bucket: &str,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        match &err {
            SdkError::TimeoutError(_) => StorageError::Timeout { op, bucket, key },
            SdkError::DispatchFailure(f) if f.is_timeout() => {
                StorageError::Timeout { op, bucket, key }
            }
            // A refused certificate: the store is reachable, but not trusted (or not valid).
            SdkError::DispatchFailure(_) if tls::certificate_error(&err).is_some() => {
                certificate_refused(op, bucket, key, &err)
            }
            // Resolving the credentials happens before the request is sent, and its failure
            // comes out as a dispatch failure: it is no network problem.
            SdkError::DispatchFailure(_) => match credentials_error(&err) {
                Some(c) => {
                    let missing = matches!(c, CredentialsError::CredentialsNotLoaded(_));
                    let what = if missing {
                        "no storage credentials found (tried AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY, web identity, EKS Pod Identity, profiles, instance \
                         metadata)"
                    } else {
                        "the storage credentials could not be loaded"
                    };
                    StorageError::Credentials {
                        op,
                        bucket,
                        key,
                        missing,
                        message: format!("{what}: {}", error_chain(c)),
                    }
                }
                None => StorageError::Unreachable {
                    op,
                    bucket,
                    key,
                    message: error_chain(&err),
                },
            },
            SdkError::ServiceError(se) => {
                let code = se.err().code().unwrap_or("").to_owned();
                let status = se.raw().status().as_u16();
                // A missing bucket answers 404 too, but it is no missing object: it is a
                // configuration error the caller must hear of.
                if code == "NoSuchKey" || code == "NotFound" || (status == 404 && code.is_empty()) {
                    StorageError::NotFound { bucket, key }
                } else if code == "PreconditionFailed" || status == 412 {
                    StorageError::AlreadyExists { bucket, key }
                } else {
                    StorageError::Service {
                        op,
                        bucket,
                        key,
                        code: if code.is_empty() {
                            format!("HTTP {status}")
                        } else {
                            code
                        },
                        message: se.err().message().unwrap_or("").to_owned(),
                    }
                }
            }
            _ => StorageError::Service {
                op,
                bucket,
                key,
                code: "Error".to_owned(),
                message: error_chain(&err),
            },
        }
    }
}

/// The [`StorageError::Certificate`] of `err`, a request whose endpoint's certificate was
/// refused.
fn certificate_refused(
    op: &'static str,
    bucket: String,
    key: String,
    err: &(dyn std::error::Error + 'static),
) -> StorageError {
    let problem = tls::certificate_error(err);
    StorageError::Certificate {
        op,
        bucket,
        key,
        unknown_issuer: matches!(problem, Some(rustls::CertificateError::UnknownIssuer)),
        problem: problem.map(certificate_problem).unwrap_or_default(),
    }
}

/// What [`StorageError::Certificate`] says: plainly that the certificate is not trusted, and
/// what to do about it.
fn certificate_message(unknown_issuer: bool, problem: &str) -> String {
    if unknown_issuer {
        format!(
            "the storage endpoint's certificate is not trusted ({problem}): give the CA that \
             issued it with {CA_BUNDLE_FLAG} or {CA_BUNDLE_ENV} (for snapshot Jobs: \
             spec.snapshot.caBundle or the controller's --agent-ca-bundle-*; see \
             docs/private-ca.md)"
        )
    } else {
        format!("the storage endpoint's certificate is not valid: {problem}")
    }
}

/// A certificate problem in words: rustls' own (with the names or times it gives), except for
/// the one this module explains.
fn certificate_problem(problem: &rustls::CertificateError) -> String {
    match problem {
        rustls::CertificateError::UnknownIssuer => "unknown issuer".to_owned(),
        other => rustls::Error::InvalidCertificate(other.clone()).to_string(),
    }
}

/// The credentials error among `err`'s sources, if any.
fn credentials_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut source = err.source();
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<CredentialsError>() {
            return Some(c);
        }
        source = s.source();
    }
    None
}

/// Whether a store's error code can be a condition reason as it is: a CamelCase word, such as
/// every S3 error code (`AccessDenied`, `NoSuchBucket`).
fn is_camel_case_code(code: &str) -> bool {
    (2..=64).contains(&code.len())
        && code.as_bytes()[0].is_ascii_uppercase()
        && code.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Renders an error with its sources, `a: b: c`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The largest document (manifest, `current.json`, ownership marker) read: far above what the
/// writers produce (well under a KiB), far below what would hurt a reader.
pub const MAX_DOCUMENT: u64 = 1 << 20;

/// Reads a small document whole, at most [`MAX_DOCUMENT`] bytes whatever the object's size or
/// what the store says it is; `Ok(None)` when it does not exist.
pub async fn get_document(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<bytes::Bytes>, StorageError> {
    let mut out = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => out,
        Err(e) => {
            return match StorageError::from_sdk("GET", bucket, key, e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            };
        }
    };
    let too_large = || StorageError::TooLarge {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        limit: MAX_DOCUMENT,
    };
    if out
        .content_length()
        .is_some_and(|n| n as u64 > MAX_DOCUMENT)
    {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = out.body.next().await {
        let chunk = chunk.map_err(|e| StorageError::Unreachable {
            op: "GET",
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            message: error_chain(&e),
        })?;
        if (body.len() + chunk.len()) as u64 > MAX_DOCUMENT {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// Reads a JSON document (at most [`MAX_DOCUMENT`] bytes); `Ok(None)` when it does not exist.
pub async fn get_json<T: DeserializeOwned>(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<T>, StorageError> {
    let Some(body) = get_document(client, bucket, key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|source| StorageError::BadDocument {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            source,
        })
}

/// Reads a GET's body, which should be `expected` bytes: at most one byte more is read, so a
/// store that sends more than it said costs nothing (the caller sees the length and refuses). A
/// transfer that breaks off is reported as unreachable storage.
async fn read_body(
    mut body: ByteStream,
    bucket: &str,
    key: &str,
    expected: u64,
    stall: Option<Duration>,
) -> Result<bytes::Bytes, StorageError> {
    let cap = usize::try_from(expected).unwrap_or(usize::MAX);
    let mut out = bytes::BytesMut::with_capacity(cap);
    loop {
        let next = match stall {
            Some(limit) => tokio::time::timeout(limit, body.next())
                .await
                .map_err(|_| StorageError::Timeout {
                    op: "GET",
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                })?,
            None => body.next().await,
        };
        let Some(chunk) = next else {
            break;
        };
        let chunk = chunk.map_err(|e| StorageError::Unreachable {
            op: "GET",
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            message: error_chain(&e),
        })?;
        let room = cap.saturating_add(1).saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() > cap {
            break;
        }
    }
    Ok(out.freeze())
}

/// Writes a JSON document. With `create_only`, the write fails with
/// [`StorageError::AlreadyExists`] when the key exists (`If-None-Match: *`).
pub async fn put_json<T: Serialize>(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    value: &T,
    create_only: bool,
) -> Result<(), StorageError> {
    let body = serde_json::to_vec_pretty(value).expect("documents serialize");
    let mut req = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .body(ByteStream::from(body));
    if create_only {
        req = req.if_none_match("*");
    }
    req.send()
        .await
        .map(|_| ())
        .map_err(|e| StorageError::from_sdk("PUT", bucket, key, e))
}

/// Size and ETag of an object; `Ok(None)` when it does not exist.
pub async fn head(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<(u64, Option<String>)>, StorageError> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(out) => Ok(Some((
            out.content_length().unwrap_or(0).max(0) as u64,
            out.e_tag().map(str::to_owned),
        ))),
        Err(e) => match StorageError::from_sdk("HEAD", bucket, key, e) {
            StorageError::NotFound { .. } => Ok(None),
            other => Err(other),
        },
    }
}

/// Deletes an object (deleting one that does not exist succeeds).
pub async fn delete(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<(), StorageError> {
    match client.delete_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(()),
        Err(e) => match StorageError::from_sdk("DELETE", bucket, key, e) {
            StorageError::NotFound { .. } => Ok(()),
            other => Err(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_smithy_runtime_api::client::result::ConnectorError;

    use super::*;

    /// A request that never left the client, as the SDK reports it.
    fn dispatch_failure(source: ConnectorError) -> StorageError {
        let err: SdkError<GetObjectError, HttpResponse> = SdkError::dispatch_failure(source);
        StorageError::from_sdk("GET", "b", "k", err)
    }

    #[test]
    fn missing_credentials_are_no_unreachable_store() {
        let missing = dispatch_failure(ConnectorError::other(
            Box::new(CredentialsError::not_loaded_no_source()),
            None,
        ));
        assert!(
            matches!(missing, StorageError::Credentials { missing: true, .. }),
            "{missing:?}"
        );
        assert_eq!(missing.reason(), "NoStorageCredentials");
        assert_eq!(missing.kind(), "credentials");
        assert!(
            missing
                .to_string()
                .starts_with("GET s3://b/k: no storage credentials found (tried AWS_ACCESS_KEY_ID"),
            "{missing}"
        );

        let failed = dispatch_failure(ConnectorError::other(
            Box::new(CredentialsError::provider_error(
                "the token file is unreadable",
            )),
            None,
        ));
        assert_eq!(failed.reason(), "StorageCredentialsError");
        assert!(
            failed.to_string().contains("the token file is unreadable"),
            "{failed}"
        );

        let refused = dispatch_failure(ConnectorError::io(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))));
        assert_eq!(refused.reason(), "StorageUnreachable");
    }

    /// A handshake that refused the endpoint's certificate, as the SDK's client reports it:
    /// rustls' error in tokio-rustls' `io::Error`, in hyper-rustls' `io::Error`, in the
    /// connector's error.
    fn refused_certificate(problem: rustls::CertificateError) -> StorageError {
        let tokio_rustls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(problem),
        );
        let hyper_rustls = std::io::Error::other(tokio_rustls);
        dispatch_failure(ConnectorError::io(Box::new(hyper_rustls)))
    }

    #[test]
    fn an_untrusted_certificate_says_so_and_how_to_trust_it() {
        let untrusted = refused_certificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(untrusted.reason(), "StorageCertificateUntrusted");
        assert_eq!(untrusted.kind(), "untrusted-certificate");
        let message = untrusted.to_string();
        assert!(
            message.starts_with(
                "GET s3://b/k: the storage endpoint's certificate is not trusted (unknown \
                 issuer): give the CA that issued it with --ca-bundle or SITECACHE_CA_BUNDLE"
            ),
            "{message}"
        );

        let expired = refused_certificate(rustls::CertificateError::Expired);
        assert_eq!(expired.reason(), "StorageCertificateInvalid");
        assert_eq!(expired.kind(), "invalid-certificate");
        assert!(
            expired
                .to_string()
                .starts_with("GET s3://b/k: the storage endpoint's certificate is not valid:"),
            "{expired}"
        );
        assert!(!expired.to_string().contains("--ca-bundle"), "{expired}");

        // Other TLS failures are no certificate problem.
        let other = dispatch_failure(ConnectorError::io(Box::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::DecryptError,
        ))));
        assert_eq!(other.reason(), "StorageUnreachable");
    }
}
