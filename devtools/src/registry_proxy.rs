//! An HTTPS proxy (`CONNECT` only) that lets pods of the real node reach the package registries
//! and nothing else: the node's network namespace has no route out, so a warm step that caches
//! `npm:` packages gets `HTTPS_PROXY` pointing here (through [`crate::node::Node::forward`]).
//! Tunnels are opened only to the allowed `host:port` pairs; anything else gets `403`, and a
//! request that is not `CONNECT` gets `405`. TLS stays end to end: the proxy sees host names, not
//! traffic.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The registries Deno's `npm:` and `jsr:` specifiers use.
pub const PACKAGE_REGISTRIES: [&str; 3] =
    ["registry.npmjs.org:443", "jsr.io:443", "npm.jsr.io:443"];

/// A running proxy on loopback; it stops when dropped.
pub struct RegistryProxy {
    addr: SocketAddr,
    tunnels: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl RegistryProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` that tunnels to `allowed` (`host:port`) only.
    pub async fn start<S: AsRef<str>>(allowed: &[S]) -> Result<RegistryProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("registry proxy: binding a loopback port")?;
        let addr = listener.local_addr()?;
        let allowed: Arc<BTreeSet<String>> = Arc::new(
            allowed
                .iter()
                .map(|a| a.as_ref().to_ascii_lowercase())
                .collect(),
        );
        let tunnels = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let (t, r) = (tunnels.clone(), refused.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (allowed, t, r) = (allowed.clone(), t.clone(), r.clone());
                tokio::spawn(async move {
                    match serve(client, &allowed).await {
                        Ok(true) => t.fetch_add(1, Ordering::Relaxed),
                        _ => r.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
        });
        Ok(RegistryProxy {
            addr,
            tunnels,
            refused,
            task,
        })
    }

    /// Where it listens (loopback).
    pub fn addr(&self) -> SocketAddr {
        self.addr
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

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one client: `Ok(true)` when a tunnel was opened.
async fn serve(mut client: TcpStream, allowed: &BTreeSet<String>) -> Result<bool> {
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
    let upstream =
        match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&target)).await {
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
async fn read_head(client: &mut TcpStream) -> Result<String> {
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

    async fn ask(proxy: &RegistryProxy, request: &str) -> (TcpStream, String) {
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
        let proxy = RegistryProxy::start(&[allowed.as_str()]).await.unwrap();

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
}
