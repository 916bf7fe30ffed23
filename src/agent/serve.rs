//! `sitecache warm-serve`: warms a cache by serving the site. It starts the site's command as
//! its child, waits until the site answers on `--port`, requests each `--path` (what the site
//! loads at run time, dynamic imports and npm packages resolved while it runs, gets into
//! `DENO_DIR`, and Deno's V8 code cache with it), then stops the site with SIGTERM and waits for
//! it, so that what it writes on the way out is written before the snapshot packs the cache.
//!
//! It needs nothing from the site's image but the command (no shell, no HTTP client): the
//! snapshot Job puts this binary in the warm container. A site that does not answer within
//! `--timeout`, exits first, or answers a path with an error fails the warm step, with the end of
//! its log quoted on the last lines of stderr (what the Job reports as the warm step's failure).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How much of the site's output a failure quotes.
const TAIL_BYTES: usize = 4096;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is asked.
const POLL: Duration = Duration::from_millis(100);
/// The most of a status line and headers read before the status is known.
const HEAD_LIMIT: usize = 16 * 1024;

#[derive(Args, Debug, Clone)]
pub struct WarmServeArgs {
    /// The port the site listens on (on the pod's loopback).
    #[arg(long)]
    pub port: u16,
    /// The path whose answer (any status below 500) says the site is ready.
    #[arg(long, default_value = "/")]
    pub ready_path: String,
    /// A path to request once the site is ready (repeatable), in order; each must answer with a
    /// status below 400.
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
    /// How long the site has to become ready and answer every path.
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// How long the site has to exit after SIGTERM before it is killed.
    #[arg(long, default_value = "20s", value_parser = super::parse_duration)]
    pub stop_grace: Duration,
    /// The site's command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// What the warm step did, printed as one JSON line on stdout when it succeeds.
#[derive(Debug, Serialize)]
pub struct Served {
    pub ok: bool,
    /// From the start of the site to its first answer on the readiness path.
    pub ready_ms: u64,
    pub paths: Vec<PathResult>,
    /// How the site ended: `exited` (by itself, or within the grace after SIGTERM) or `killed`
    /// (SIGKILL after the grace).
    pub stopped: &'static str,
    /// Its exit code, or the signal that ended it.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Debug, Serialize)]
pub struct PathResult {
    pub path: String,
    pub status: u16,
    pub ms: u64,
}

/// A failure of the warm step, with the end of the site's output.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", quote_tail(tail))]
pub struct ServeError {
    pub message: String,
    pub tail: String,
}

fn quote_tail(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; the end of the site's log:\n{}", tail.trim_end())
    }
}

/// The last [`TAIL_BYTES`] of what the site printed, both streams interleaved by line.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<VecDeque<u8>>>);

impl Tail {
    fn push(&self, line: &[u8]) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.extend(line);
        t.push_back(b'\n');
        let excess = t.len().saturating_sub(TAIL_BYTES);
        t.drain(..excess);
    }

    fn text(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: Vec<u8> = t.iter().copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Copies the child's stream line by line to `out`, keeping the tail.
async fn forward(stream: impl AsyncRead + Unpin, mut out: impl AsyncWrite + Unpin, tail: Tail) {
    let mut lines = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let _ = out.write_all(&line).await;
                let _ = out.flush().await;
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                tail.push(text);
            }
        }
    }
}

pub async fn run(args: WarmServeArgs) -> Result<Served, ServeError> {
    let tail = Tail::default();
    let fail = |message: String, tail: &Tail| ServeError {
        message,
        tail: tail.text(),
    };
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| fail("no command to run".into(), &tail))?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: SIGTERM reaches what it forks too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("could not start {program}: {e}"), &tail))?;
    let out = tokio::spawn(forward(
        child.stdout.take().expect("piped"),
        tokio::io::stdout(),
        tail.clone(),
    ));
    let err = tokio::spawn(forward(
        child.stderr.take().expect("piped"),
        tokio::io::stderr(),
        tail.clone(),
    ));
    let deadline = started + args.timeout;
    let result = serve(&args, &mut child, started, deadline).await;
    let stop = stop(&mut child, args.stop_grace).await;
    // The site's output up to its end, before anything is reported.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = out.await;
        let _ = err.await;
    })
    .await;
    let (ready_ms, paths) = result.map_err(|message| fail(message, &tail))?;
    let (stopped, exit_code, signal) = stop;
    Ok(Served {
        ok: true,
        ready_ms,
        paths,
        stopped,
        exit_code,
        signal,
    })
}

/// Waits until the site is ready, then requests each path.
async fn serve(
    args: &WarmServeArgs,
    child: &mut Child,
    started: Instant,
    deadline: Instant,
) -> Result<(u64, Vec<PathResult>), String> {
    let timeout_text = crate::api::duration::format(args.timeout);
    let ready_ms = loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the site exited ({status}) before it answered GET {} on port {}",
                args.ready_path, args.port
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the site did not answer GET {} on port {} within --timeout {timeout_text}",
                args.ready_path, args.port
            ));
        }
        match get(args.port, &args.ready_path, deadline).await {
            Ok(status) if status < 500 => break started.elapsed().as_millis() as u64,
            _ => tokio::time::sleep(POLL).await,
        }
    };
    let mut paths = Vec::new();
    for path in &args.paths {
        let begun = Instant::now();
        let status = get(args.port, path, deadline).await.map_err(|e| {
            format!(
                "requesting {path} of the site (port {}) failed: {e}",
                args.port
            )
        })?;
        if status >= 400 {
            return Err(format!(
                "the site answered {path} with HTTP {status}: a path to warm must succeed"
            ));
        }
        paths.push(PathResult {
            path: path.clone(),
            status,
            ms: begun.elapsed().as_millis() as u64,
        });
    }
    Ok((ready_ms, paths))
}

/// Stops the site: SIGTERM to its process group, then SIGKILL after `grace`. Returns how it
/// ended, its exit code and the signal that ended it.
async fn stop(child: &mut Child, grace: Duration) -> (&'static str, Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    let ended = |s: std::process::ExitStatus| ("exited", s.code(), s.signal());
    if let Ok(Some(status)) = child.try_wait() {
        return ended(status);
    }
    let group = child
        .id()
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
    let signal = |sig| {
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, sig);
        }
    };
    signal(rustix::process::Signal::TERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => ended(status),
        _ => {
            signal(rustix::process::Signal::KILL);
            let status = child.wait().await.ok();
            ("killed", None, status.and_then(|s| s.signal()))
        }
    }
}

/// One `GET` on the loopback; returns the status once the whole answer is read.
async fn get(port: u16, path: &str, deadline: Instant) -> Result<u16, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(REQUEST_TIMEOUT.min(left), async {
        let mut conn = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: sitecache-warm\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut buf = [0u8; 8192];
        let status = loop {
            let n = conn.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the connection closed before a status line".to_owned());
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(status) = status_of(&head)? {
                break status;
            }
            if head.len() > HEAD_LIMIT {
                return Err("no status line in the first 16 KiB".to_owned());
            }
        };
        // The whole answer: the site finishes what the request loads.
        while conn.read(&mut buf).await.map_err(|e| e.to_string())? > 0 {}
        Ok(status)
    })
    .await
    .map_err(|_| "no answer in time".to_owned())?
}

/// The status of an HTTP/1.x answer once its status line is complete.
fn status_of(head: &[u8]) -> Result<Option<u16>, String> {
    let Some(end) = head.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&head[..end]);
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse()
            .map(Some)
            .map_err(|_| format!("not an HTTP status line: {line:?}")),
        _ => Err(format!("not an HTTP status line: {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
        assert_eq!(status_of(b"HTTP/1.0 503 Busy\r\nx"), Ok(Some(503)));
        assert_eq!(status_of(b"HTTP/1.1 20"), Ok(None));
        assert!(status_of(b"SSH-2.0-OpenSSH\r\n").is_err());
    }

    #[test]
    fn the_tail_keeps_the_end() {
        let t = Tail::default();
        for i in 0..2000 {
            t.push(format!("line {i}").as_bytes());
        }
        let text = t.text();
        assert!(text.len() <= TAIL_BYTES);
        assert!(text.ends_with("line 1999\n"));
    }
}
