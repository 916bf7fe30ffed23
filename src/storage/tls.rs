//! The S3 client's trust roots when the machine has none.
//!
//! The SDK's default HTTPS client trusts the platform's CA certificates (`SSL_CERT_FILE`,
//! `SSL_CERT_DIR`, else the system bundle) and asserts that it found some: an image without a CA
//! bundle made a debug build panic in a background task at the first request, and a release
//! build fail every `https` request with an unknown-issuer error that does not say why. Such an
//! image is fine for an `http` endpoint (MinIO in the cluster), so the client then trusts nothing,
//! `http` works, and the log says once why `https` cannot.

use std::sync::OnceLock;

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use aws_smithy_http_client::{Builder, ConnectorBuilder};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

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
                 storage endpoints over https cannot be verified and will fail; http works"
            );
        }
        !found.certs.is_empty()
    })
}

/// The SDK's default HTTPS client (rustls with aws-lc, proxies from the environment) with an
/// empty trust store instead of the platform's.
pub(super) fn client_without_native_roots() -> SharedHttpClient {
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::empty().with_native_roots(false))
        .build()
        .expect("an empty trust store is a valid TLS context");
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
