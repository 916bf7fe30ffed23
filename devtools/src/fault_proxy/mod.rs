//! An S3 fault proxy: an HTTP/1.1 proxy on loopback between S3 clients and the S3 server, that
//! injects faults on a seeded schedule ([`schedule`]): `503 SlowDown` and `500 InternalError`
//! answered in the server's stead, latency before forwarding, connections reset before the
//! response, response bodies reset (RST) or closed (FIN) part-way and bodies that stall
//! ([`body`]).
//!
//! **Test tooling, not part of the operator.** Clients talk to it as to the server: it forwards
//! each request as it came (the `Host` header included, so SigV4 signatures hold) on a fresh
//! upstream connection, and streams both bodies. [`FaultProxy::set_enabled`] turns the faults
//! on and off; [`FaultProxy::injected`] counts the faults that took effect, by kind.
//!
//! Besides the schedule, [`FaultProxy::lose_responses`] picks requests by method and path: each
//! is forwarded and takes effect on the server, but its answer never reaches the client (the
//! connection is reset), as a client killed right after its write would have it; and
//! [`FaultProxy::not_implemented`] answers chosen calls `501 NotImplemented`, as stores that lack
//! an optional call do.

mod body;
pub mod schedule;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use body::{BodyPlan, FaultBody};
pub use schedule::{Fault, FaultKind, FaultRates, Schedule};

type ProxyBody = BoxBody<Bytes, std::io::Error>;

/// What the connections share.
pub struct State {
    upstream: SocketAddr,
    schedule: Mutex<Schedule>,
    enabled: AtomicBool,
    injected: Mutex<BTreeMap<FaultKind, u64>>,
    requests: AtomicU64,
    /// Requests (method, path suffix) whose responses are lost.
    lose: Mutex<Option<(String, String)>>,
    /// Requests (method, query parameter) answered `501 NotImplemented`, as stores that lack an
    /// optional call answer it.
    unimplemented: Mutex<Option<(String, String)>>,
    lost: AtomicU64,
    refused: AtomicU64,
}

impl State {
    fn count(&self, kind: FaultKind) {
        *self
            .injected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port` or
    /// `host:port`), with faults drawn from `seed` at `rates`, enabled.
    pub async fn start(upstream: &str, seed: u64, rates: FaultRates) -> Result<Self> {
        let authority = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream: SocketAddr = authority
            .parse()
            .with_context(|| format!("upstream {upstream:?} is not http://IP:PORT"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream,
            schedule: Mutex::new(Schedule::new(seed, rates)),
            enabled: AtomicBool::new(true),
            injected: Mutex::new(BTreeMap::new()),
            requests: AtomicU64::new(0),
            lose: Mutex::new(None),
            unimplemented: Mutex::new(None),
            lost: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept(listener, state.clone()));
        Ok(FaultProxy { addr, state, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_enabled(&self, on: bool) {
        self.state.enabled.store(on, Ordering::SeqCst);
    }

    /// The faults that took effect, by kind.
    pub fn injected(&self) -> BTreeMap<FaultKind, u64> {
        self.state
            .injected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// From now on, requests with `method` whose path ends with `path_suffix` reach the server,
    /// and their responses are lost: the connection is reset instead (until
    /// [`FaultProxy::keep_responses`]).
    pub fn lose_responses(&self, method: &str, path_suffix: &str) {
        *self.state.lose.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((method.to_owned(), path_suffix.to_owned()));
    }

    /// From now on, requests with `method` and the query parameter `param` (`uploads`: the
    /// `ListMultipartUploads` call) are answered `501 NotImplemented` without reaching the
    /// server, as a store that lacks that call answers them.
    pub fn not_implemented(&self, method: &str, param: &str) {
        *self
            .state
            .unimplemented
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((method.to_owned(), param.to_owned()));
    }

    /// Requests answered `NotImplemented` so far.
    pub fn not_implemented_answers(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Responses are passed on again.
    pub fn keep_responses(&self) {
        *self.state.lose.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Responses lost so far (the requests took effect).
    pub fn lost(&self) -> u64 {
        self.state.lost.load(Ordering::SeqCst)
    }

    /// Requests received.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            // A duplicate of the socket's descriptor, for the faults that reset the connection
            // (hyper owns the stream); it closes with the connection.
            let Ok(socket) = stream.as_fd().try_clone_to_owned() else {
                return;
            };
            let socket = Arc::new(socket);
            let service =
                hyper::service::service_fn(move |req| handle(req, state.clone(), socket.clone()));
            // A connection ends with an error whenever a fault cuts it: nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn full(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
    );
    let mut resp = Response::new(
        Full::new(Bytes::from(xml))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        "application/xml".parse().expect("a header value"),
    );
    resp
}

/// Whether the rule in `slot` (a method, and a word `matches` checks against the request) is
/// set and holds for a request with `method`.
fn rule_holds(
    slot: &Mutex<Option<(String, String)>>,
    method: &str,
    matches: impl Fn(&str) -> bool,
) -> bool {
    slot.lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|(m, word)| m == method && matches(word))
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    socket: Arc<OwnedFd>,
) -> Result<Response<ProxyBody>, std::io::Error> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let method = req.method().as_str();
    let lose = rule_holds(&state.lose, method, |suffix| {
        req.uri().path().ends_with(suffix)
    });
    let unimplemented = rule_holds(&state.unimplemented, method, |param| {
        req.uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|p| p.split('=').next() == Some(param))
    });
    if unimplemented {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return Ok(full(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "A header you provided implies functionality that is not implemented",
        ));
    }
    let fault = if lose {
        Fault::None
    } else if state.enabled.load(Ordering::SeqCst) {
        state
            .schedule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next(req.method() == Method::GET)
    } else {
        Fault::None
    };
    match fault {
        Fault::SlowDown => {
            state.count(FaultKind::SlowDown);
            return Ok(full(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            ));
        }
        Fault::InternalError => {
            state.count(FaultKind::InternalError);
            return Ok(full(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ));
        }
        Fault::ResetBeforeResponse => {
            state.count(FaultKind::ResetBeforeResponse);
            body::set_reset_on_close(&socket);
            return Err(std::io::Error::other("injected: connection reset"));
        }
        Fault::Latency(d) => {
            state.count(FaultKind::Latency);
            tokio::time::sleep(d).await;
        }
        _ => {}
    }
    let upstream = TcpStream::connect(state.upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    // The client's `Expect: 100-continue` was answered here already.
    parts.headers.remove("expect");
    let resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(std::io::Error::other)?;
    if lose {
        // The server has answered (the request took effect): the client never hears of it.
        drop(resp);
        state.lost.fetch_add(1, Ordering::SeqCst);
        body::set_reset_on_close(&socket);
        return Err(std::io::Error::other("injected: response lost"));
    }
    let (parts, body) = resp.into_parts();
    let len = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(64 * 1024);
    let at = |fraction: f64| ((len as f64 * fraction) as u64).min(len.saturating_sub(1));
    let plan = match fault {
        Fault::Cut { at: f, rst } if len > 0 => BodyPlan::Cut { at: at(f), rst },
        Fault::Stall { at: f, pause } if len > 0 => BodyPlan::Stall { at: at(f), pause },
        _ => BodyPlan::Pass,
    };
    Ok(Response::from_parts(
        parts,
        FaultBody::new(body, plan, socket, state).boxed(),
    ))
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An upstream that answers every request on a connection with 200 and `len` bytes.
    async fn upstream(len: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&vec![b'x'; len]).await;
                });
            }
        });
        addr
    }

    /// Sends one GET through a proxy that injects `kind` on every request, and reads until the
    /// connection ends: the error that ended it (`None`: a clean end of stream), and the bytes.
    async fn one_get(kind: FaultKind) -> (Option<ErrorKind>, usize) {
        let upstream = upstream(256 * 1024).await;
        let rates = FaultRates {
            rates: vec![(kind, 1.0)],
            max_latency: Duration::ZERO,
            max_stall: Duration::ZERO,
        };
        let proxy = FaultProxy::start(&format!("http://{upstream}"), 1, rates)
            .await
            .unwrap();
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        client
            .write_all(b"GET /bucket/key HTTP/1.1\r\nhost: s3\r\n\r\n")
            .await
            .unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await {
                Err(_) => panic!("{kind:?}: the connection neither ended nor failed"),
                Ok(Ok(0)) => break None,
                Ok(Ok(n)) => got += n,
                Ok(Err(e)) => break Some(e.kind()),
            }
        };
        assert_eq!(proxy.injected().get(&kind), Some(&1), "{kind:?}");
        (end, got)
    }

    #[tokio::test]
    async fn a_lost_response_reaches_the_server_and_never_the_client() {
        let upstream = upstream(16).await;
        let proxy = FaultProxy::start(&format!("http://{upstream}"), 1, FaultRates::none())
            .await
            .unwrap();
        proxy.lose_responses("PUT", "/current.json");
        let send = |line: &'static str| {
            let addr = proxy.addr;
            async move {
                let mut client = TcpStream::connect(addr).await.unwrap();
                client.write_all(line.as_bytes()).await.unwrap();
                let mut buf = Vec::new();
                let read =
                    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut buf))
                        .await
                        .expect("the connection ended");
                (read.err().map(|e| e.kind()), buf.len())
            }
        };
        let (end, got) =
            send("PUT /b/shop/current.json HTTP/1.1\r\nhost: s3\r\ncontent-length: 0\r\n\r\n")
                .await;
        assert_eq!((end, got), (Some(ErrorKind::ConnectionReset), 0));
        assert_eq!(proxy.lost(), 1);
        // Other requests pass, and so does this one once responses are kept.
        let (end, got) =
            send("GET /b/shop/current.json HTTP/1.1\r\nhost: s3\r\nconnection: close\r\n\r\n")
                .await;
        assert_eq!(end, None);
        assert!(got > 16, "{got}");
        proxy.keep_responses();
        let (end, _) =
            send("PUT /b/shop/current.json HTTP/1.1\r\nhost: s3\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
        assert_eq!(end, None);
        assert_eq!(proxy.lost(), 1);
    }

    #[tokio::test]
    async fn resets_reach_the_client_as_rst_and_truncation_as_fin() {
        let (end, got) = one_get(FaultKind::ResetBeforeResponse).await;
        assert_eq!((end, got), (Some(ErrorKind::ConnectionReset), 0));
        let (end, got) = one_get(FaultKind::ResetMidBody).await;
        assert_eq!(end, Some(ErrorKind::ConnectionReset));
        assert!(got < 256 * 1024, "{got} bytes");
        let (end, got) = one_get(FaultKind::TruncatedBody).await;
        assert_eq!(end, None);
        assert!(got < 256 * 1024, "{got} bytes");
    }
}
