//! A tunnelling proxy (HTTP `CONNECT` only) to a few allowed `host:port` pairs; anything else gets
//! `403`, and a request that is not `CONNECT` gets `405`. TLS stays end to end: the proxy sees
//! host names, not traffic. Two uses:
//!
//! - pods of the real node reach the package registries and nothing else
//!   ([`PACKAGE_REGISTRIES`]): the node's network namespace has no route out, so a warm step that
//!   caches `npm:` packages gets `HTTPS_PROXY` pointing here (through
//!   [`crate::node::Node::forward`]);
//! - the node's API server reaches its kubelet inside that namespace (`kubectl logs`, `exec`):
//!   its egress selector sends `cluster` traffic here, and the proxy dials from inside the
//!   namespace ([`ConnectProxy::start_with`] and a [`Dial`] of the node's).

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::task::JoinHandle;

/// The registries Deno's `npm:` and `jsr:` specifiers use.
pub const PACKAGE_REGISTRIES: [&str; 3] =
    ["registry.npmjs.org:443", "jsr.io:443", "npm.jsr.io:443"];

/// How the proxy opens a connection to an allowed `host:port`.
pub type Dial = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>
        + Send
        + Sync,
>;

/// A running proxy on loopback; it stops when dropped.
pub struct ConnectProxy {
    addr: Option<SocketAddr>,
    tunnels: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// Where a proxy listens.
pub enum Listen {
    /// `127.0.0.1:<free port>`.
    Loopback,
    /// A Unix socket at this path (replaced if it exists).
    Unix(PathBuf),
}

/// What the accept loop shares with each connection.
#[derive(Clone)]
struct Shared {
    allowed: Arc<BTreeSet<String>>,
    dial: Dial,
    tunnels: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Shared {
    fn serve<S>(&self, client: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.clone();
        tokio::spawn(async move {
            let counter = match serve(client, &shared.allowed, &shared.dial).await {
                Ok(true) => &shared.tunnels,
                _ => &shared.refused,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
}

impl ConnectProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` that tunnels to `allowed` (`host:port`) only,
    /// connecting from this process's network namespace.
    pub async fn start<S: AsRef<str>>(allowed: &[S]) -> Result<ConnectProxy> {
        Self::start_with(
            Listen::Loopback,
            allowed,
            Arc::new(|target: String| Box::pin(async move { TcpStream::connect(target).await })),
        )
        .await
    }

    /// A proxy listening at `listen` that opens its tunnels with `dial`.
    pub async fn start_with<S: AsRef<str>>(
        listen: Listen,
        allowed: &[S],
        dial: Dial,
    ) -> Result<ConnectProxy> {
        let shared = Shared {
            allowed: Arc::new(
                allowed
                    .iter()
                    .map(|a| a.as_ref().to_ascii_lowercase())
                    .collect(),
            ),
            dial,
            tunnels: Arc::default(),
            refused: Arc::default(),
        };
        let (tunnels, refused) = (shared.tunnels.clone(), shared.refused.clone());
        let (addr, task) = match listen {
            Listen::Loopback => {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .context("CONNECT proxy: binding a loopback port")?;
                let addr = listener.local_addr()?;
                let task = tokio::spawn(async move {
                    while let Ok((client, _)) = listener.accept().await {
                        shared.serve(client);
                    }
                });
                (Some(addr), task)
            }
            Listen::Unix(path) => {
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path)
                    .with_context(|| format!("CONNECT proxy: binding {}", path.display()))?;
                let task = tokio::spawn(async move {
                    while let Ok((client, _)) = listener.accept().await {
                        shared.serve(client);
                    }
                });
                (None, task)
            }
        };
        Ok(ConnectProxy {
            addr,
            tunnels,
            refused,
            task,
        })
    }

    /// Where it listens, for a proxy on loopback.
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .expect("a proxy on a Unix socket has no address; its path is where it listens")
    }

    /// Tunnels opened so far.
    pub fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Requests refused (not `CONNECT`, not allowed, upstream unreachable).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one client: `Ok(true)` when a tunnel was opened.
async fn serve<S>(mut client: S, allowed: &BTreeSet<String>, dial: &Dial) -> Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = match tokio::time::timeout(Duration::from_secs(10), read_head(&mut client)).await {
        Ok(Ok(head)) => head,
        _ => return Ok(false),
    };
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    if method != "CONNECT" {
        client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(false);
    }
    let target = target.to_ascii_lowercase();
    if !allowed.contains(&target) {
        client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(false);
    }
    let upstream = match tokio::time::timeout(Duration::from_secs(10), dial(target)).await {
        Ok(Ok(upstream)) => upstream,
        _ => {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n")
                .await?;
            return Ok(false);
        }
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    let (mut client, mut upstream) = (client, upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(true)
}

/// Reads a request head (up to the blank line, at most 8 KiB).
async fn read_head<S: AsyncRead + Unpin>(client: &mut S) -> Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(head.len() < 8192, "request head too long");
        anyhow::ensure!(
            client.read(&mut byte).await? == 1,
            "closed before the head ended"
        );
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(proxy: &ConnectProxy, request: &str) -> (TcpStream, String) {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await.unwrap();
        (s, head)
    }

    #[tokio::test]
    async fn tunnels_to_allowed_targets_only() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let allowed = upstream.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .unwrap();
        });
        let proxy = ConnectProxy::start(&[allowed.as_str()]).await.unwrap();

        let (mut tunnel, head) = ask(
            &proxy,
            &format!("CONNECT {allowed} HTTP/1.1\r\nHost: {allowed}\r\n\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        tunnel.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tunnel.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"PING");

        let (_, head) = ask(&proxy, "CONNECT example.com:443 HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
        let (_, head) = ask(&proxy, &format!("GET http://{allowed}/ HTTP/1.1\r\n\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
        drop(tunnel);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!((proxy.tunnels(), proxy.refused()), (1, 2));
    }

    #[tokio::test]
    async fn on_a_unix_socket_it_opens_tunnels_with_its_dial() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let real = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            s.write_all(b"hi").await.unwrap();
        });
        // The allowed name is not an address: the dial decides where it leads.
        let dial: Dial = Arc::new(move |target: String| {
            Box::pin(async move {
                assert_eq!(target, "node:10250");
                TcpStream::connect(real).await
            })
        });
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let proxy = ConnectProxy::start_with(Listen::Unix(socket.clone()), &["node:10250"], dial)
            .await
            .unwrap();
        let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
        s.write_all(b"CONNECT node:10250 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let mut back = [0u8; 2];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hi");
        drop(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!((proxy.tunnels(), proxy.refused()), (1, 0));
    }
}
