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
    /// SeaweedFS' `weed`, the second S3-compatible server.
    Seaweedfs,
    Deno,
    Helm,
    /// Prometheus' rule checker and unit tester (the chart's alerts).
    Promtool,
    /// What GitOps tools make of an object's status, with their own code: cli-utils' kstatus
    /// and Argo CD's Lua health checks (`hack/assets/gitops-status`).
    GitopsStatus,
    /// The real node's Kubernetes components: one binary, `hack/node/kube-node`, under three
    /// names.
    Kubelet,
    KubeScheduler,
    KubeControllerManager,
    /// The real node's runtime, from Debian's packages (`hack/test-assets.sh` installs the
    /// versions pinned in `hack/versions.env`).
    Containerd,
    /// containerd's client.
    Ctr,
    Runc,
    /// The directory of the CNI plugins (Debian's `containernetworking-plugins`).
    CniPlugins,
    /// The directory of the earlier release the upgrade test starts from, built from
    /// `UPGRADE_FROM_COMMIT` of this repository (`hack/versions.env`): its `sitecache` binary
    /// (dev profile), its `Dockerfile` and its chart, `charts/sitecache/`.
    UpgradeBase,
    /// The release's SBOM generator (`make dist`).
    CargoCyclonedx,
    /// go-containerregistry's `crane`: a registry for the release's tests (`crane registry
    /// serve`) and its client.
    Crane,
    /// The kubectl plugin manager, which installs the plugin from the release's krew manifest.
    Krew,
    /// The GitHub Actions workflow linter (`make lint`).
    Actionlint,
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
            Asset::Seaweedfs => "seaweedfs",
            Asset::Deno => "deno",
            Asset::Helm => "helm",
            Asset::Promtool => "promtool",
            Asset::GitopsStatus => "gitops-status",
            Asset::Kubelet => "kubelet",
            Asset::KubeScheduler => "kube-scheduler",
            Asset::KubeControllerManager => "kube-controller-manager",
            Asset::Containerd => "containerd",
            Asset::Ctr => "ctr",
            Asset::Runc => "runc",
            Asset::CniPlugins => "cni-plugins",
            Asset::UpgradeBase => "upgrade-base",
            Asset::CargoCyclonedx => "cargo-cyclonedx",
            Asset::Crane => "crane",
            Asset::Krew => "krew",
            Asset::Actionlint => "actionlint",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            Asset::Etcd => "TEST_ASSET_ETCD",
            Asset::KubeApiserver => "TEST_ASSET_KUBE_APISERVER",
            Asset::Kubectl => "TEST_ASSET_KUBECTL",
            Asset::Minio => "TEST_ASSET_MINIO",
            Asset::MinioAdmin => "TEST_ASSET_MINIO_ADMIN",
            Asset::Seaweedfs => "TEST_ASSET_SEAWEEDFS",
            Asset::Deno => "TEST_ASSET_DENO",
            Asset::Helm => "TEST_ASSET_HELM",
            Asset::Promtool => "TEST_ASSET_PROMTOOL",
            Asset::GitopsStatus => "TEST_ASSET_GITOPS_STATUS",
            Asset::Kubelet => "TEST_ASSET_KUBELET",
            Asset::KubeScheduler => "TEST_ASSET_KUBE_SCHEDULER",
            Asset::KubeControllerManager => "TEST_ASSET_KUBE_CONTROLLER_MANAGER",
            Asset::Containerd => "TEST_ASSET_CONTAINERD",
            Asset::Ctr => "TEST_ASSET_CTR",
            Asset::Runc => "TEST_ASSET_RUNC",
            Asset::CniPlugins => "TEST_ASSET_CNI_PLUGINS",
            Asset::UpgradeBase => "TEST_ASSET_UPGRADE_BASE",
            Asset::CargoCyclonedx => "TEST_ASSET_CARGO_CYCLONEDX",
            Asset::Crane => "TEST_ASSET_CRANE",
            Asset::Krew => "TEST_ASSET_KREW",
            Asset::Actionlint => "TEST_ASSET_ACTIONLINT",
        }
    }

    /// Where Debian's package puts it (the node's runtime), `None` for a built asset.
    fn system_path(self) -> Option<&'static str> {
        match self {
            Asset::Containerd => Some("/usr/bin/containerd"),
            Asset::Ctr => Some("/usr/bin/ctr"),
            Asset::Runc => Some("/usr/sbin/runc"),
            Asset::CniPlugins => Some("/usr/lib/cni"),
            _ => None,
        }
    }

    /// The cache directory `hack/test-assets.sh` builds this binary into.
    fn cache_dir(self) -> Result<String> {
        if let Asset::UpgradeBase = self {
            return Ok(format!(
                "upgrade-base-{}",
                pinned_version("UPGRADE_FROM_COMMIT")?
            ));
        }
        if let Asset::GitopsStatus = self {
            return Ok(format!(
                "gitops-status-{}-lua{}",
                pinned_version("CLI_UTILS_VERSION")?,
                pinned_version("GOPHER_LUA_VERSION")?
            ));
        }
        let (package, key) = match self {
            Asset::Kubelet | Asset::KubeScheduler | Asset::KubeControllerManager => {
                ("kubernetes-node", "KUBERNETES_VERSION")
            }
            Asset::Containerd | Asset::Ctr | Asset::Runc | Asset::CniPlugins => {
                bail!("{} is installed from a Debian package", self.name())
            }
            Asset::Etcd => ("etcd", "ETCD_VERSION"),
            Asset::KubeApiserver | Asset::Kubectl => ("kubernetes", "KUBERNETES_VERSION"),
            Asset::Minio => ("minio", "MINIO_VERSION"),
            Asset::MinioAdmin => ("minio-admin", "MADMIN_VERSION"),
            Asset::Seaweedfs => ("seaweedfs", "SEAWEEDFS_VERSION"),
            Asset::Deno => ("deno", "DENO_VERSION"),
            Asset::Helm => ("helm", "HELM_VERSION"),
            Asset::Promtool => ("promtool", "PROMETHEUS_VERSION"),
            Asset::CargoCyclonedx => ("cargo-cyclonedx", "CARGO_CYCLONEDX_VERSION"),
            Asset::Crane => ("crane", "CRANE_VERSION"),
            Asset::Krew => ("krew", "KREW_VERSION"),
            Asset::Actionlint => ("actionlint", "ACTIONLINT_VERSION"),
            Asset::GitopsStatus | Asset::UpgradeBase => unreachable!("named above"),
        };
        Ok(format!("{package}-{}", pinned_version(key)?))
    }

    /// Resolves the binary: `TEST_ASSET_<NAME>`, then `KUBEBUILDER_ASSETS/<name>` (control-plane binaries),
    /// then the cache of `hack/test-assets.sh` (or the path of the Debian package).
    pub fn path(self) -> Result<PathBuf> {
        if let Some(p) = std::env::var_os(self.env_var()) {
            let p = PathBuf::from(p);
            let kind_ok = match self {
                Asset::CniPlugins => p.is_dir(),
                Asset::UpgradeBase => p.join("sitecache").is_file(),
                _ => p.is_file(),
            };
            if !kind_ok {
                bail!(
                    "{}={} is not a file (a directory for CNI plugins, one with a sitecache \
                     binary for the upgrade base)",
                    self.env_var(),
                    p.display()
                );
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
        if let Some(p) = self.system_path() {
            let p = PathBuf::from(p);
            if !p.exists() {
                bail!(
                    "{} not found at {}: run `hack/test-assets.sh` (or `make test-assets`), which \
                     installs the real node's Debian packages, or set {}",
                    self.name(),
                    p.display(),
                    self.env_var()
                );
            }
            return Ok(p);
        }
        if let Asset::UpgradeBase = self {
            // A directory, published whole by `hack/test-assets.sh` once its build succeeded.
            let p = cache_root()?.join(self.cache_dir()?);
            if !p.join("sitecache").is_file() {
                bail!(
                    "the upgrade test's earlier release is not at {}: run `hack/test-assets.sh` \
                     (or `make test-assets`), which builds it from UPGRADE_FROM_COMMIT of this \
                     repository's history, or set {}",
                    p.display(),
                    self.env_var()
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
