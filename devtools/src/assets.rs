//! Finds the binaries of the local parts (see `hack/test-assets.sh`, which builds them).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

const VERSIONS: &str = include_str!("../../hack/versions.env");

/// A binary of a local part.
#[derive(Clone, Copy, Debug)]
pub enum Asset {
    Etcd,
    KubeApiserver,
    Kubectl,
    Minio,
    /// MinIO's users and policies (`hack/assets/minio-admin`).
    MinioAdmin,
    Deno,
    Helm,
    /// Prometheus' rule checker and unit tester (the chart's alerts).
    Promtool,
}

impl Asset {
    /// The binary's file name.
    pub fn name(self) -> &'static str {
        match self {
            Asset::Etcd => "etcd",
            Asset::KubeApiserver => "kube-apiserver",
            Asset::Kubectl => "kubectl",
            Asset::Minio => "minio",
            Asset::MinioAdmin => "minio-admin",
            Asset::Deno => "deno",
            Asset::Helm => "helm",
            Asset::Promtool => "promtool",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            Asset::Etcd => "TEST_ASSET_ETCD",
            Asset::KubeApiserver => "TEST_ASSET_KUBE_APISERVER",
            Asset::Kubectl => "TEST_ASSET_KUBECTL",
            Asset::Minio => "TEST_ASSET_MINIO",
            Asset::MinioAdmin => "TEST_ASSET_MINIO_ADMIN",
            Asset::Deno => "TEST_ASSET_DENO",
            Asset::Helm => "TEST_ASSET_HELM",
            Asset::Promtool => "TEST_ASSET_PROMTOOL",
        }
    }

    /// The cache directory `hack/test-assets.sh` builds this binary into.
    fn cache_dir(self) -> Result<String> {
        let (package, key) = match self {
            Asset::Etcd => ("etcd", "ETCD_VERSION"),
            Asset::KubeApiserver | Asset::Kubectl => ("kubernetes", "KUBERNETES_VERSION"),
            Asset::Minio => ("minio", "MINIO_VERSION"),
            Asset::MinioAdmin => ("minio-admin", "MADMIN_VERSION"),
            Asset::Deno => ("deno", "DENO_VERSION"),
            Asset::Helm => ("helm", "HELM_VERSION"),
            Asset::Promtool => ("promtool", "PROMETHEUS_VERSION"),
        };
        Ok(format!("{package}-{}", pinned_version(key)?))
    }

    /// Resolves the binary: `TEST_ASSET_<NAME>`, then `KUBEBUILDER_ASSETS/<name>` (control-plane binaries),
    /// then the cache of `hack/test-assets.sh`.
    pub fn path(self) -> Result<PathBuf> {
        if let Some(p) = std::env::var_os(self.env_var()) {
            let p = PathBuf::from(p);
            if !p.is_file() {
                bail!("{}={} is not a file", self.env_var(), p.display());
            }
            return Ok(p);
        }
        if matches!(self, Asset::Etcd | Asset::KubeApiserver | Asset::Kubectl)
            && let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS")
        {
            let p = PathBuf::from(dir).join(self.name());
            if !p.is_file() {
                bail!(
                    "KUBEBUILDER_ASSETS has no {} ({})",
                    self.name(),
                    p.display()
                );
            }
            return Ok(p);
        }
        let p = cache_root()?.join(self.cache_dir()?).join(self.name());
        if !p.is_file() {
            bail!(
                "{} not found at {}: run `hack/test-assets.sh` (or `make test-assets`) to build the pinned \
                 test assets, or set {} / KUBEBUILDER_ASSETS",
                self.name(),
                p.display(),
                self.env_var()
            );
        }
        Ok(p)
    }
}

fn cache_root() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("sitecache").join("assets"))
}

/// A version pinned in `hack/versions.env`.
pub fn pinned_version(key: &str) -> Result<&'static str> {
    VERSIONS
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .with_context(|| format!("hack/versions.env has no {key}"))
}
