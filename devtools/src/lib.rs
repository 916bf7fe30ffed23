//! Test and development tooling for sitecache. **Not part of the operator.**
//!
//! It starts the real parts sitecache runs against as local processes, the way envtest does for Go
//! operators: etcd and kube-apiserver (a control plane without kubelet or controllers), and MinIO
//! (a real S3-compatible server). The binaries come from `hack/test-assets.sh`, which builds them
//! from pinned Go modules and caches them under `~/.cache/sitecache/assets`. A local job runner
//! ([`JobRunner`]) stands in for kubelet and the Job controller: it runs `batch/v1` Jobs as host
//! processes. [`FaultProxy`] sits between S3 clients and MinIO and injects storage faults. [`dev`]
//! is `sitecache-dev`, the local dev environment of `make dev`.

// `unsafe` is allowed only on the spot where std has no safe form: `Command::pre_exec` (the
// hooks of `process` and `dev::up`, whose calls are rustix's).
#![deny(unsafe_code)]

pub mod assets;
pub mod connect_proxy;
pub mod control_plane;
pub mod dev;
pub mod dist;
pub mod fault_proxy;
pub mod image;
pub mod job_runner;
pub mod node;
mod pki;
pub mod process;
pub mod s3;

pub use control_plane::ControlPlane;
pub use fault_proxy::FaultProxy;
pub use job_runner::{JobRunner, JobRunnerConfig};
pub use pki::{ServerCert, TestCa};
pub use s3::{S3Server, Store};

/// Picks a free TCP port on loopback (the OS's choice; another process could take it before it is
/// used, which the launchers detect and retry).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A name unique within this process and across processes: `<prefix>-<pid>-<counter>`,
/// lower-case, at most 63 characters for a short prefix.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}{:x}-{n}", std::process::id(), nanos % 4096)
}
