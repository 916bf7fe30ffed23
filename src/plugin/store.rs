//! Where the plugin reads a SiteCache's objects (`restore`, `logs`): the location in its
//! status, through an endpoint the user or the controller chose. The plugin signs requests with
//! the user's own credentials, so it never sends them to `spec.storage.endpoint` as such, which
//! anyone who may edit SiteCaches in the namespace can point anywhere ([`Endpoint::choose`]).
//! It says where before it connects.

use anyhow::Context as _;
use clap::Args;

use crate::api::SiteCache;
use crate::storage::{CaBundle, Location, StorageOptions};

/// The flags that say where the bucket is, each defaulting from the SiteCache.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// S3 endpoint URL (default: the endpoint the controller accepted, status.endpoint, else
    /// AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS). Never the spec's: it may name anything.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Region (default: the SiteCache's spec.storage.region, else the AWS environment).
    #[arg(long)]
    pub region: Option<String>,
    /// Path-style addressing (default: the SiteCache's spec.storage.forcePathStyle).
    #[arg(long)]
    pub path_style: bool,
    /// CA certificates (PEM) to trust besides the platform's, for a store whose certificate a
    /// private CA issued.
    #[arg(long, env = "SITECACHE_CA_BUNDLE", value_name = "FILE")]
    pub ca_bundle: Option<std::path::PathBuf>,
}

/// A SiteCache's objects, as the plugin reaches them.
pub struct Store {
    /// `status.url`.
    pub url: Location,
    pub endpoint: Endpoint,
    pub region: Option<String>,
    pub path_style: bool,
    /// `--ca-bundle`.
    pub ca_bundle: Option<std::path::PathBuf>,
}

impl Store {
    /// Where `sc`'s objects are, with `args` over its spec; prints where it will connect.
    pub fn of(sc: &SiteCache, args: &StoreArgs, ns: &str) -> anyhow::Result<Store> {
        let name = sc.metadata.name.as_deref().unwrap_or_default();
        let status = sc.status.clone().unwrap_or_default();
        let url = status.url.clone().with_context(|| {
            format!(
                "SiteCache {ns}/{name} has no storage location yet (status.url): the controller \
                 has not reconciled it"
            )
        })?;
        let url: Location = url
            .parse()
            .map_err(|e| anyhow::anyhow!("SiteCache {ns}/{name}: status.url {url:?}: {e}"))?;
        let storage = &sc.spec.storage;
        let endpoint = Endpoint::choose(
            args.endpoint.as_deref(),
            status.endpoint.as_deref(),
            storage.endpoint.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("SiteCache {ns}/{name}: {e}"))?;
        eprintln!(
            "Connecting to {} for {url}.",
            endpoint.describe(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        );
        if let (Endpoint::Accepted(accepted), Some(spec)) = (&endpoint, &storage.endpoint)
            && accepted != spec
        {
            eprintln!(
                "warning: spec.storage.endpoint names {spec}, which the controller has not \
                 accepted; connecting to {accepted}"
            );
        }
        Ok(Store {
            url,
            endpoint,
            region: args.region.clone().or_else(|| storage.region.clone()),
            path_style: args.path_style || storage.force_path_style == Some(true),
            ca_bundle: args.ca_bundle.clone(),
        })
    }

    /// An S3 client for it (an error for a `--ca-bundle` that cannot be used).
    pub async fn client(&self) -> anyhow::Result<aws_sdk_s3::Client> {
        let ca_bundle = self.ca_bundle.as_deref().map(CaBundle::load).transpose()?;
        Ok(crate::storage::client(&StorageOptions {
            region: self.region.clone(),
            endpoint: self.endpoint.url().map(str::to_owned),
            path_style: self.path_style,
            ca_bundle,
            ..StorageOptions::default()
        })
        .await)
    }
}

/// Where the plugin's requests go, and who chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `--endpoint`.
    Flag(String),
    /// `status.endpoint`: the spec's, as the controller accepted it.
    Accepted(String),
    /// The user's AWS environment (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`), else AWS.
    Environment,
}

impl Endpoint {
    /// The user's `--endpoint`, else the one the controller accepted. A spec that names an
    /// endpoint the controller has not accepted (an older controller writes no
    /// `status.endpoint`; a newer one refused it, or has not reconciled it yet) is an error,
    /// not a reason to connect to it or to the user's default store.
    pub fn choose(
        flag: Option<&str>,
        accepted: Option<&str>,
        spec: Option<&str>,
    ) -> Result<Endpoint, String> {
        if let Some(flag) = flag {
            return Ok(Endpoint::Flag(flag.to_owned()));
        }
        if let Some(accepted) = accepted {
            return Ok(Endpoint::Accepted(accepted.to_owned()));
        }
        if let Some(spec) = spec {
            return Err(format!(
                "spec.storage.endpoint names {spec}, which the controller has not accepted \
                 (status.endpoint is not set: a controller older than this plugin, or one that \
                 refused it or has not reconciled it yet). Pass --endpoint {spec} if you trust \
                 it with your credentials"
            ));
        }
        Ok(Endpoint::Environment)
    }

    /// The URL, or `None` for the environment's.
    pub fn url(&self) -> Option<&str> {
        match self {
            Endpoint::Flag(url) | Endpoint::Accepted(url) => Some(url),
            Endpoint::Environment => None,
        }
    }

    /// Where the requests go, in words, with `env` the user's environment.
    pub fn describe(&self, env: impl Fn(&str) -> Option<String>) -> String {
        let (url, from) = match self {
            Endpoint::Flag(url) => (url.clone(), "--endpoint"),
            Endpoint::Accepted(url) => (url.clone(), "status.endpoint, accepted by the controller"),
            Endpoint::Environment => match env("AWS_ENDPOINT_URL_S3")
                .map(|u| (u, "AWS_ENDPOINT_URL_S3"))
                .or_else(|| env("AWS_ENDPOINT_URL").map(|u| (u, "AWS_ENDPOINT_URL")))
            {
                Some(found) => found,
                None => ("AWS S3".to_owned(), "the AWS default"),
            },
        };
        let plain = if url.to_ascii_lowercase().starts_with("http://") {
            " over plain http: the data is not encrypted in transit"
        } else {
            ""
        };
        format!("{url} ({from}){plain}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_never_chooses_the_endpoint() {
        let evil = Some("http://evil.example");
        let ok = Some("https://s3.internal");
        assert_eq!(
            Endpoint::choose(None, ok, evil),
            Ok(Endpoint::Accepted("https://s3.internal".into()))
        );
        assert_eq!(
            Endpoint::choose(Some("http://mine"), ok, evil),
            Ok(Endpoint::Flag("http://mine".into()))
        );
        assert_eq!(
            Endpoint::choose(None, None, None),
            Ok(Endpoint::Environment)
        );
        let e = Endpoint::choose(None, None, evil).unwrap_err();
        assert!(
            e.contains("http://evil.example") && e.contains("--endpoint"),
            "{e}"
        );
    }

    #[test]
    fn says_where_and_whether_in_plain_text() {
        let none = |_: &str| None;
        let d = Endpoint::Accepted("http://minio:9000".into()).describe(none);
        assert!(
            d.contains("http://minio:9000") && d.contains("plain http"),
            "{d}"
        );
        let d = Endpoint::Flag("https://s3".into()).describe(none);
        assert!(d.contains("--endpoint") && !d.contains("plain"), "{d}");
        assert!(Endpoint::Environment.describe(none).contains("AWS S3"));
        let env = |k: &str| (k == "AWS_ENDPOINT_URL").then(|| "https://store".to_owned());
        let d = Endpoint::Environment.describe(env);
        assert!(d.contains("https://store (AWS_ENDPOINT_URL)"), "{d}");
    }
}
