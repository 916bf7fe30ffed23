//! containerd (Debian's package) with its CRI plugin, runc and the CNI plugins, started inside the
//! node's network namespace with its state under the node's directory: its root, state, the pods'
//! network namespaces (`netns_mounts_under_state_dir`) and the CNI configuration and address
//! allocations. Its sockets are in the node's short directory (`janitor::short_dir`): a socket's
//! path has at most 104 bytes, which a node's directory under a target directory may exceed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cgroups::NodeCgroup;
use super::netns::{NetNs, POD_SUBNET};
use crate::assets::Asset;
use crate::process::ManagedProcess;

/// The containerd namespace of kubelet's (CRI) containers and images.
const CRI_NAMESPACE: &str = "k8s.io";

pub struct Containerd {
    socket: PathBuf,
    ctr: PathBuf,
    pub process: ManagedProcess,
}

impl Containerd {
    /// Writes the configuration (CNI included) under `dir` and starts containerd in `netns`,
    /// with its sockets in `sockets`, moved into the node's cgroup (`<cgroup>/runtime`) so that
    /// its shims and containers are in it too; returns once it answers on its socket.
    pub async fn start(
        dir: &Path,
        sockets: &Path,
        netns: &NetNs,
        cgroup: &NodeCgroup,
        sandbox_image: &str,
    ) -> Result<Self> {
        let containerd_bin = Asset::Containerd.path()?;
        let ctr = Asset::Ctr.path()?;
        let runc = Asset::Runc.path()?;
        let cni_bin = Asset::CniPlugins.path()?;
        let root = dir.join("root");
        let state = dir.join("state");
        let cni_conf = dir.join("cni").join("net.d");
        for d in [&root, &state, &cni_conf] {
            std::fs::create_dir_all(d)?;
        }
        std::fs::create_dir_all(sockets)
            .with_context(|| format!("create {}", sockets.display()))?;
        let socket = sockets.join("containerd.sock");
        std::fs::write(
            cni_conf.join("10-sitecache.conflist"),
            cni_config(&dir.join("cni").join("ipam")),
        )?;
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
# Snapshotters this machine cannot use only log errors.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # No CAP_SYS_RESOURCE here: without this every sandbox fails with runc's "can't get final
  # child's PID from pipe".
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  # The pods' network namespaces under the state directory, not in the host's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        # runc's state under the node's directory, not the host's /run/containerd/runc.
        Root = "{runc_root}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"#,
                root = root.display(),
                state = state.display(),
                socket = socket.display(),
                opt = dir.join("opt").display(),
                runc = runc.display(),
                runc_root = dir.join("runc").display(),
                cni_bin = cni_bin.display(),
                cni_conf = cni_conf.display(),
            ),
        )?;
        let mut cmd = netns.command(&containerd_bin);
        cmd.arg(format!("--config={}", config.display()));
        let process = ManagedProcess::spawn("containerd", cmd, &dir.join("containerd.log"))?;
        cgroup
            .adopt("runtime", process.pid())
            .context("move containerd into the node's cgroup")?;
        let mut c = Self {
            socket,
            ctr,
            process,
        };
        c.wait_ready().await?;
        Ok(c)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.process.exited().is_some() {
                return Err(self.process.failure("exited during start-up"));
            }
            if self.socket.exists() && self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self
                    .process
                    .failure("did not answer on its socket within 60s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// kubelet's `containerRuntimeEndpoint`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs `ctr` on this containerd in the CRI namespace; returns its standard output.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.ctr)
            .arg(format!("--address={}", self.socket.display()))
            .args(["--namespace", CRI_NAMESPACE])
            .args(args)
            .output()
            .context("run ctr")?;
        if !out.status.success() {
            bail!(
                "ctr {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports an OCI archive for the CRI (unpacked for the default snapshotter) and checks that
    /// containerd lists each of its images under its reference (`references`).
    pub fn import(&self, references: &[String], archive: &Path) -> Result<()> {
        let path = archive.to_string_lossy();
        self.ctr(&["images", "import", &path]).with_context(|| {
            format!("import {} as {}", archive.display(), references.join(", "))
        })?;
        let list = self.ctr(&["images", "list", "--quiet"])?;
        for reference in references {
            if !list.lines().any(|l| l.trim() == reference) {
                bail!(
                    "containerd has no image {reference} after importing {}; it lists:\n{list}",
                    archive.display()
                );
            }
        }
        Ok(())
    }
}

/// The CNI network of the pods: a bridge in the node's namespace with pod addresses from
/// host-local (its allocations under `ipam_dir`, not the host's /var/lib/cni), the bridge as
/// their gateway (the node's and the API Service's addresses are local there), no masquerade
/// and no port mappings (no iptables rule), loopback in each pod.
fn cni_config(ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "sitecache",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "ranges": [[{ "subnet": POD_SUBNET }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            },
        ],
    })
    .to_string()
}
