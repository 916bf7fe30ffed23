//! The S3 client's trust roots: the platform's CA certificates, plus the CA bundle the user gives
//! (`--ca-bundle`, `SITECACHE_CA_BUNDLE`) for a store whose certificate a private CA issued.
//!
//! The SDK's default HTTPS client trusts the platform's CA certificates (`SSL_CERT_FILE`,
//! `SSL_CERT_DIR`, else the system bundle) and asserts that it found some: an image without a CA
//! bundle made a debug build panic in a background task at the first request, and a release
//! build fail every `https` request with an unknown-issuer error that does not say why. Such an
//! image is fine for an `http` endpoint (MinIO in the cluster), so the client then trusts only
//! the user's bundle (or nothing), `http` works, and the log says once why `https` may not.
//!
//! A bundle is added to the platform's roots, never in their place: a company's store and AWS
//! both work from one process. It is read and checked once, up front ([`CaBundle::load`]): the
//! SDK parses certificates only when it connects, and panics on one it cannot use.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use aws_smithy_http_client::{Builder, ConnectorBuilder};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{PemObject, SectionKind};

/// The flag every storage client of the binary takes a CA bundle with.
pub const CA_BUNDLE_FLAG: &str = "--ca-bundle";
/// Its environment variable.
pub const CA_BUNDLE_ENV: &str = "SITECACHE_CA_BUNDLE";

/// The largest CA bundle read: the whole Mozilla bundle is about 220 KB.
const MAX_BUNDLE_BYTES: u64 = 4 << 20;

/// CA certificates (PEM) trusted besides the platform's, read and checked. Cheap to clone.
#[derive(Clone)]
pub struct CaBundle {
    path: PathBuf,
    pem: Arc<[u8]>,
    certificates: usize,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("certificates", &self.certificates)
            .finish()
    }
}

/// Why a CA bundle cannot be used. Each names the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("{CA_BUNDLE_FLAG} {}: cannot read it: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{CA_BUNDLE_FLAG} {}: larger than {MAX_BUNDLE_BYTES} bytes: not a CA bundle", path.display())]
    TooLarge { path: PathBuf },
    #[error(
        "{CA_BUNDLE_FLAG} {}: holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error("{CA_BUNDLE_FLAG} {}: not valid PEM: {message}", path.display())]
    BadPem { path: PathBuf, message: String },
    #[error(
        "{CA_BUNDLE_FLAG} {}: holds a private key: a CA bundle holds certificates only",
        path.display()
    )]
    PrivateKey { path: PathBuf },
    #[error("{CA_BUNDLE_FLAG} {}: certificate {index} cannot be a trust anchor: {message}", path.display())]
    BadCertificate {
        path: PathBuf,
        /// 1-based, in the file's order.
        index: usize,
        message: String,
    },
}

impl CaBundle {
    /// Reads and checks the PEM bundle at `path`: at least one certificate, each usable as a
    /// trust anchor, and nothing but certificates.
    pub fn load(path: &Path) -> Result<CaBundle, CaBundleError> {
        let unreadable = |source| CaBundleError::Unreadable {
            path: path.to_owned(),
            source,
        };
        let mut pem = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_BUNDLE_BYTES + 1).read_to_end(&mut pem))
            .map_err(unreadable)?;
        if pem.len() as u64 > MAX_BUNDLE_BYTES {
            return Err(CaBundleError::TooLarge {
                path: path.to_owned(),
            });
        }
        Self::from_pem(path, pem)
    }

    /// Checks PEM bytes read from `path` (named in errors).
    pub fn from_pem(path: &Path, pem: Vec<u8>) -> Result<CaBundle, CaBundleError> {
        let path = path.to_owned();
        let mut roots = rustls::RootCertStore::empty();
        let mut certificates = 0;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&pem) {
            let (kind, der) = section.map_err(|e| CaBundleError::BadPem {
                path: path.clone(),
                message: e.to_string(),
            })?;
            match kind {
                SectionKind::Certificate => {
                    certificates += 1;
                    // What the SDK does with each certificate when it connects (and panics on
                    // failure): done here, once, where an error can name the file.
                    roots.add(CertificateDer::from(der)).map_err(|e| {
                        CaBundleError::BadCertificate {
                            path: path.clone(),
                            index: certificates,
                            message: e.to_string(),
                        }
                    })?;
                }
                SectionKind::PrivateKey
                | SectionKind::RsaPrivateKey
                | SectionKind::EcPrivateKey => {
                    return Err(CaBundleError::PrivateKey { path });
                }
                // CRLs, public keys, requests: not roots, and harmless.
                _ => {}
            }
        }
        if certificates == 0 {
            return Err(CaBundleError::NoCertificate { path });
        }
        Ok(CaBundle {
            path,
            pem: pem.into(),
            certificates,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many certificates it holds.
    pub fn certificates(&self) -> usize {
        self.certificates
    }
}

/// Whether the platform has CA certificates (looked up once per process, as the SDK does).
pub(super) fn has_native_roots() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
            tracing::warn!(
                ?errors,
                "no CA certificates found (SSL_CERT_FILE, SSL_CERT_DIR, the system bundle): \
                 storage endpoints over https cannot be verified unless {CA_BUNDLE_FLAG} \
                 names their CA; http works"
            );
        }
        !found.certs.is_empty()
    })
}

/// The SDK's default HTTPS client (rustls with aws-lc, proxies from the environment) trusting
/// the platform's roots (when `native`) and `extra`'s certificates.
pub(super) fn client_with_roots(native: bool, extra: Option<&CaBundle>) -> SharedHttpClient {
    let mut roots = TrustStore::empty().with_native_roots(native);
    if let Some(bundle) = extra {
        roots = roots.with_pem_certificate(bundle.pem.to_vec());
    }
    let context = TlsContext::builder()
        .with_trust_store(roots)
        .build()
        .expect("a trust store is a valid TLS context");
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector = ConnectorBuilder::default()
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(context.clone());
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// Forbids retrying a request whose endpoint's certificate was refused: the SDK retries
/// connection errors, but a certificate that is not trusted now will not be in a second, and
/// the retries' backoff would eat a restore's deadline and end it as a timeout instead of the
/// cause.
#[derive(Debug)]
pub(super) struct NoRetryOnRefusedCertificate;

impl ClassifyRetry for NoRetryOnRefusedCertificate {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let refused = matches!(
            ctx.output_or_error(),
            Some(Err(e)) if e.as_connector_error().is_some_and(|c| certificate_error(c).is_some())
        );
        if refused {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "NoRetryOnRefusedCertificate"
    }
}

/// The certificate problem among `err`'s sources, if the request failed on the endpoint's
/// certificate. rustls' error travels inside `io::Error`s (tokio-rustls wraps it, hyper-rustls
/// wraps that again), whose `source()` skips what they wrap: each is unwrapped by hand.
pub(super) fn certificate_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::CertificateError> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(rustls::Error::InvalidCertificate(problem)) = rustls_error(e) {
            return Some(problem);
        }
        next = e.source();
    }
    None
}

/// `e` as rustls' error, itself or wrapped in `io::Error`s.
fn rustls_error<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
        e = inner;
    }
}

#[cfg(test)]
mod tests {
    use sitecache_devtools::TestCa;

    use super::*;

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn a_bundle_of_several_certificates_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (TestCa::new("a").unwrap(), TestCa::new("b").unwrap());
        // Text around the blocks (as in the system bundles) is allowed.
        let pem = format!(
            "# company CA\n{}\n# the next one\n{}",
            a.cert_pem(),
            b.cert_pem()
        );
        let bundle = CaBundle::load(&write(dir.path(), "ca.crt", &pem)).unwrap();
        assert_eq!(bundle.certificates(), 2);
        assert_eq!(bundle.path(), dir.path().join("ca.crt"));
    }

    #[test]
    fn an_unusable_bundle_is_an_error_naming_the_flag_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = |path: &Path| CaBundle::load(path).unwrap_err().to_string();
        let ca = TestCa::new("a").unwrap();
        let server = ca.server(&["localhost"]).unwrap();

        let missing = dir.path().join("missing.crt");
        let e = err(&missing);
        assert!(
            e.starts_with(&format!(
                "--ca-bundle {}: cannot read it:",
                missing.display()
            )),
            "{e}"
        );

        let empty = write(dir.path(), "empty.crt", "");
        let e = err(&empty);
        assert_eq!(
            e,
            format!(
                "--ca-bundle {}: holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
                empty.display()
            )
        );
        let der = dir.path().join("der.crt");
        std::fs::write(&der, [0x30, 0x82, 0x01, 0x0a]).unwrap();
        assert!(err(&der).contains("holds no certificate"), "{}", err(&der));

        let key = write(
            dir.path(),
            "with-key.pem",
            &format!("{}{}", ca.cert_pem(), server.key),
        );
        assert!(
            err(&key).ends_with(
                "with-key.pem: holds a private key: a CA bundle holds certificates only"
            ),
            "{}",
            err(&key)
        );

        let bad_base64 = write(
            dir.path(),
            "bad.crt",
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        );
        assert!(
            err(&bad_base64).contains("bad.crt: not valid PEM"),
            "{}",
            err(&bad_base64)
        );

        let not_der = write(
            dir.path(),
            "junk.crt",
            &format!(
                "{}-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
                ca.cert_pem()
            ),
        );
        assert!(
            err(&not_der).contains("junk.crt: certificate 2 cannot be a trust anchor"),
            "{}",
            err(&not_der)
        );

        let huge = dir.path().join("huge.crt");
        std::fs::write(&huge, vec![b'#'; MAX_BUNDLE_BYTES as usize + 1]).unwrap();
        assert!(err(&huge).contains("not a CA bundle"), "{}", err(&huge));
    }
}
