//! The node's own network namespace, and the forwarders that make a few host services reachable
//! inside it.
//!
//! The whole node tier (containerd, and so the CNI plugins and every pod; kubelet) lives in a
//! network namespace that the run creates (`ip netns add`). It has no link to the host's
//! network: only loopback, the CNI bridge and the pods' veths. The API server and MinIO stay on
//! the host's loopback; a forwarder of this process listens on an address *inside* the namespace
//! (its listening socket is made by a thread that has entered the namespace, so the socket
//! belongs there) and relays each connection to the host address from the host side. Pods thus
//! reach the API server at the `kubernetes` Service's address and MinIO at an address of the
//! node, and no packet leaves the namespace.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

use crate::connect_proxy::{ConnectProxy, Dial, Listen};

/// The address of the `kubernetes` Service (the first of the control plane's
/// `--service-cluster-ip-range`): pods find the API server there.
pub const API_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The node's address (kubelet's `--node-ip`) and where forwarded host services listen.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
/// The pods' addresses (the CNI bridge's host-local range).
pub const POD_SUBNET: &str = "10.88.0.0/16";

/// A network namespace made with `ip netns add`, deleted when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name` with loopback up and the node's and the API Service's
    /// addresses on it (local addresses: a packet from a pod to one of them is delivered to this
    /// namespace's sockets, with no forwarding and no kube-proxy).
    pub fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        for addr in [NODE_IP, API_SERVICE_IP] {
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ])?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file (`/run/netns/<name>`).
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `cmd` wrapped to run inside the namespace: `nsenter --net=<path> -- cmd` (only the network
    /// namespace changes, unlike `ip netns exec`, which also gives the command its own mount
    /// namespace: kubelet's volume mounts must be seen by containerd and runc). nsenter execs the
    /// command, so the process started is the command itself.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// TCP forwarders from addresses inside a namespace to addresses on the host, served by a thread
/// of their own (with its own tokio runtime, so that they outlive whichever runtime started the
/// node). Dropping it stops them.
pub struct Forwarder {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    netns: PathBuf,
    /// What each forward carried and its last error, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

impl Forwarder {
    pub fn start(netns: &NetNs) -> Result<Self> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("node-forwarder".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .context("start the forwarder thread")?;
        let handle = handle_rx
            .recv()
            .context("the forwarder thread ended")?
            .context("the forwarder's runtime")?;
        Ok(Self {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
            netns: netns.path(),
            log: Arc::default(),
        })
    }

    /// Listens on `listen` inside the namespace and relays every connection to `target`.
    pub fn forward(&self, listen: SocketAddrV4, target: SocketAddr) -> Result<()> {
        let listener = bind_in_netns(&self.netns, listen)?;
        let log = self.log.clone();
        self.handle.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    note(&log, format!("{listen}: {e}"));
                    return;
                }
            };
            loop {
                let mut inbound = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of descriptors, for example: do not spin.
                        note(&log, format!("{listen}: accept: {e}"));
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let log = log.clone();
                tokio::spawn(async move {
                    match tokio::net::TcpStream::connect(target).await {
                        Ok(mut outbound) => {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Err(e) => note(&log, format!("{listen} -> {target}: {e}")),
                    }
                });
            }
        });
        Ok(())
    }

    /// A `CONNECT` proxy on the host's Unix socket `socket` that tunnels to `allowed` addresses
    /// *inside* the namespace, connecting from a thread that has entered it (the API server's way
    /// to its kubelet: see [`crate::control_plane::ControlPlaneOptions::cluster_egress`]).
    /// Served by the forwarder's runtime, so it outlives whichever runtime asked for it.
    pub async fn proxy_into(
        &self,
        socket: &Path,
        allowed: &[SocketAddrV4],
    ) -> Result<ConnectProxy> {
        let listen = Listen::Unix(socket.to_owned());
        let netns = self.netns.clone();
        let allowed: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        let dial: Dial = Arc::new(move |target: String| {
            let netns = netns.clone();
            Box::pin(async move {
                let addr: SocketAddrV4 = target
                    .parse()
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let stream = tokio::task::spawn_blocking(move || connect_in_netns(&netns, addr))
                    .await
                    .map_err(std::io::Error::other)??;
                stream.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(stream)
            })
        });
        self.handle
            .spawn(async move { ConnectProxy::start_with(listen, &allowed, dial).await })
            .await
            .context("the forwarder's runtime")?
    }

    /// Recent forwarding errors, for failure messages.
    pub fn errors(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn note(log: &Mutex<Vec<String>>, line: String) {
    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
    if log.len() >= 20 {
        log.remove(0);
    }
    log.push(line);
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection to `addr` made from inside the namespace at `netns`, by a short-lived thread that
/// has entered it (the socket stays in that namespace).
fn connect_in_netns(netns: &Path, addr: SocketAddrV4) -> std::io::Result<std::net::TcpStream> {
    let netns = netns.to_owned();
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&netns)?;
            rustix::thread::move_into_link_name_space(
                f.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            std::net::TcpStream::connect_timeout(&addr.into(), std::time::Duration::from_secs(5))
        })
        .join()
        .map_err(|_| std::io::Error::other("the thread connecting into the namespace panicked"))?
    })
}

/// A listening socket that belongs to the namespace at `netns`: made by a short-lived thread
/// that has entered the namespace (a socket stays in the namespace it was made in).
fn bind_in_netns(netns: &Path, addr: SocketAddrV4) -> Result<std::net::TcpListener> {
    let netns = netns.to_owned();
    std::thread::scope(|s| {
        s.spawn(|| -> Result<std::net::TcpListener> {
            let f =
                std::fs::File::open(&netns).with_context(|| format!("open {}", netns.display()))?;
            rustix::thread::move_into_link_name_space(
                f.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(std::io::Error::from)
            .with_context(|| format!("setns into {}", netns.display()))?;
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("listen on {addr} in {}", netns.display()))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread binding {addr} panicked"))?
    })
}
