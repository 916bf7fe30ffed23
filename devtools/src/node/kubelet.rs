//! kubelet, inside the node's network namespace, with its configuration, logs and the pods' logs
//! under the node's directory and its root directory (sockets, the pods' volumes) in the node's
//! short directory (`janitor::short_dir`).

use std::path::Path;

use anyhow::Result;

use super::netns::{NODE_IP, NetNs};
use crate::assets::Asset;
use crate::process::ManagedProcess;

/// The node's name.
pub const NODE_NAME: &str = "sitecache-node";
/// Kubelet's port, on the node's address.
pub const PORT: u16 = 10250;

/// Writes kubelet's configuration under `dir` and starts it with its root directory at `root`.
/// `kubeconfig` reaches the API server from inside the namespace; `ca` is the cluster's CA
/// (client certificates it accepts).
pub fn start(
    dir: &Path,
    root: &Path,
    netns: &NetNs,
    kubeconfig: &Path,
    ca: &Path,
    runtime_endpoint: &str,
    cgroup_root: &str,
) -> Result<ManagedProcess> {
    let pod_logs = dir.join("pod-logs");
    for d in [root, &pod_logs] {
        std::fs::create_dir_all(d)?;
    }
    // No cluster DNS: pods get an empty resolv.conf rather than the host's (whose servers are
    // out of the namespace's reach anyway).
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "")?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine is cgroup v1; the node's cgroups are cgroupfs directories under cgroupRoot.
failCgroupV1: {fail_cgroup_v1}
cgroupDriver: cgroupfs
cgroupRoot: "{cgroup_root}"
failSwapOn: false
containerRuntimeEndpoint: "{runtime_endpoint}"
podLogsDir: "{pod_logs}"
resolvConf: "{resolv}"
address: "{NODE_IP}"
port: {PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: "{ca}"
authorization:
  mode: AlwaysAllow
registerNode: true
# The disk is shared with the rest of the machine: never evict or collect images because of it
# (the images cannot be pulled back).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
shutdownGracePeriod: 0s
"#,
            fail_cgroup_v1 = !super::cgroups::is_v1(),
            pod_logs = pod_logs.display(),
            resolv = resolv.display(),
            ca = ca.display(),
        ),
    )?;
    let mut cmd = netns.command(&Asset::Kubelet.path()?);
    cmd.arg(format!("--config={}", config.display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--root-dir={}", root.display()))
        .arg(format!("--cert-dir={}", dir.join("pki").display()))
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg(format!("--node-ip={NODE_IP}"))
        .arg("--v=2");
    ManagedProcess::spawn("kubelet", cmd, &dir.join("kubelet.log"))
}
