//! kube-controller-manager and kube-scheduler, on the host beside the API server (they talk to
//! nothing else), without serving ports or leader election.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::ControlPlane;
use crate::assets::Asset;
use crate::process::ManagedProcess;

/// kube-controller-manager with its default controllers: among them Job, TTL-after-finished,
/// garbage collector, namespace, service account and service account token (signed with the
/// API server's key), and the root CA publisher (`kube-root-ca.crt` in every namespace).
pub fn start_controller_manager(dir: &Path, cp: &ControlPlane) -> Result<ManagedProcess> {
    let kubeconfig = cp.kubeconfig().display().to_string();
    let mut cmd = Command::new(Asset::KubeControllerManager.path()?);
    cmd.arg(format!("--kubeconfig={kubeconfig}"))
        .arg(format!("--authentication-kubeconfig={kubeconfig}"))
        .arg(format!("--authorization-kubeconfig={kubeconfig}"))
        .arg("--secure-port=0")
        .arg("--leader-elect=false")
        .arg("--controllers=*")
        .arg(format!(
            "--service-account-private-key-file={}",
            cp.service_account_key_file().display()
        ))
        .arg(format!("--root-ca-file={}", cp.ca_file().display()))
        // Every controller acts with the admin's credentials (no per-controller service
        // accounts to wait for).
        .arg("--use-service-account-credentials=false")
        // No cloud, no node IPAM (CNI's host-local gives pod addresses).
        .arg("--allocate-node-cidrs=false")
        .arg("--v=1");
    ManagedProcess::spawn(
        "kube-controller-manager",
        cmd,
        &dir.join("kube-controller-manager.log"),
    )
}

pub fn start_scheduler(dir: &Path, cp: &ControlPlane) -> Result<ManagedProcess> {
    let kubeconfig = cp.kubeconfig().display().to_string();
    let mut cmd = Command::new(Asset::KubeScheduler.path()?);
    cmd.arg(format!("--kubeconfig={kubeconfig}"))
        .arg(format!("--authentication-kubeconfig={kubeconfig}"))
        .arg(format!("--authorization-kubeconfig={kubeconfig}"))
        .arg("--secure-port=0")
        .arg("--leader-elect=false")
        .arg("--v=1");
    ManagedProcess::spawn("kube-scheduler", cmd, &dir.join("kube-scheduler.log"))
}
