//! `sitecache-dev`: the local dev environment behind `make dev` and `make dev-down`.
//!
//! `up` starts `serve` in the background (its own session, detached from the terminal), waits until
//! it has written `ready.json`, then applies `examples/`, follows the example SiteCache to `Ready`,
//! restores its promoted generation into a fresh directory, runs the site from that cache alone
//! and prints where everything is. `serve` runs the real parts (etcd + kube-apiserver, MinIO, the
//! `sitecache controller` binary and the local job runner) until `down` sends it `SIGTERM`.
//!
//! Everything lives in one state directory ([`StateDir`]): `<repo>/.dev` unless
//! `SITECACHE_DEV_DIR` (or `--dir`) names another.

pub mod down;
pub mod example;
pub mod serve;
pub mod site;
pub mod up;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};

/// The image the controller puts in its Jobs' agent containers (`--agent-image`); the job runner
/// maps it to the `sitecache` binary.
pub const AGENT_IMAGE: &str = "sitecache-agent:dev";
/// Label selector of the controller's snapshot Jobs: `sitecache::controller::jobs::JOB_SELECTOR`
/// (devtools does not depend on the operator crate; the dev test fails if they drift apart, since
/// no Job would run).
pub const JOB_SELECTOR: &str = "app.kubernetes.io/managed-by=sitecache";
/// The bucket the controller stores generations in (`--default-bucket`).
pub const BUCKET: &str = "sitecache-dev";
/// The region the controller and the agents use.
pub const REGION: &str = "us-east-1";
/// The example site that `up` applies, restores and runs, relative to the repository.
pub const EXAMPLE_DIR: &str = "examples/storefront";
/// The file under the state directory that marks it as ours: `down` removes only such a directory.
const MARKER: &str = ".sitecache-dev";

/// The warm image of the example, which the job runner maps to the pinned Deno binary:
/// `denoland/deno:<DENO_VERSION of hack/versions.env>`.
pub fn deno_image() -> Result<String> {
    Ok(format!(
        "denoland/deno:{}",
        crate::assets::pinned_version("DENO_VERSION")?
    ))
}

/// The default state directory of a checkout.
pub fn default_dir(repo: &Path) -> PathBuf {
    repo.join(".dev")
}

/// The files of a state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// The state directory `root`, made absolute.
    pub fn new(root: &Path) -> Result<Self> {
        let root = std::path::absolute(root)
            .with_context(|| format!("resolve the state directory {}", root.display()))?;
        Ok(Self { root })
    }

    pub fn serve_pid(&self) -> PathBuf {
        self.root.join("serve.pid")
    }
    pub fn serve_log(&self) -> PathBuf {
        self.root.join("serve.log")
    }
    pub fn ready(&self) -> PathBuf {
        self.root.join("ready.json")
    }
    pub fn env_sh(&self) -> PathBuf {
        self.root.join("env.sh")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("up.lock")
    }
    pub fn control_plane(&self) -> PathBuf {
        self.root.join("control-plane")
    }
    pub fn s3(&self) -> PathBuf {
        self.root.join("s3")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn jobs(&self) -> PathBuf {
        self.root.join("jobs")
    }
    pub fn restored(&self) -> PathBuf {
        self.root.join("restored")
    }

    /// True if the directory was made by `sitecache-dev` (it holds the marker file).
    pub fn is_ours(&self) -> bool {
        self.root.join(MARKER).is_file()
    }

    /// Creates the directory (and its marker), refusing an existing non-empty directory that is
    /// not ours: `down` removes the whole directory, so it must never be someone else's.
    pub fn create(&self) -> Result<()> {
        if self.root.exists() && !self.is_ours() {
            let empty = std::fs::read_dir(&self.root)
                .with_context(|| format!("read {}", self.root.display()))?
                .next()
                .is_none();
            if !empty {
                bail!(
                    "{} exists and is not a sitecache-dev state directory (no {MARKER} file); \
                     choose another directory with SITECACHE_DEV_DIR or --dir",
                    self.root.display()
                );
            }
        }
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("create {}", self.root.display()))?;
        std::fs::write(
            self.root.join(MARKER),
            "State of `sitecache-dev` (make dev); `make dev-down` removes this directory.\n",
        )
        .with_context(|| format!("write {}", self.root.join(MARKER).display()))?;
        Ok(())
    }

    /// Empties the directory but for its marker and lock (the state of an environment that is
    /// gone).
    pub fn clear(&self) -> Result<()> {
        for entry in std::fs::read_dir(&self.root)
            .with_context(|| format!("read {}", self.root.display()))?
        {
            let entry = entry?;
            if entry.file_name() == MARKER || entry.path() == self.lock() {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.with_context(|| format!("remove {}", path.display()))?;
        }
        Ok(())
    }

    /// The pid in `serve.pid`, if the file holds one.
    pub fn read_serve_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.serve_pid())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The facts `serve` wrote once ready.
    pub fn read_ready(&self) -> Result<Ready> {
        let path = self.ready();
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }
}

/// What `serve` writes to `ready.json` once everything runs: what `up`, `down`, `status` and the
/// user need.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ready {
    pub serve_pid: u32,
    /// Seconds since the Unix epoch.
    pub ready_at: u64,
    pub repo: PathBuf,
    pub sitecache_bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub deno: PathBuf,
    pub api_server: String,
    pub s3: S3Facts,
    pub controller_metrics: String,
    pub processes: Vec<ProcessFacts>,
    pub logs: Logs,
}

/// The local S3 server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct S3Facts {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl S3Facts {
    /// The environment that points `sitecache restore` (or any AWS client) at the server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_ENDPOINT_URL_S3", self.endpoint.clone()),
            ("SITECACHE_PATH_STYLE", "true".to_owned()),
        ]
    }
}

/// A process `serve` started (besides the job runner's, which die with it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessFacts {
    pub name: String,
    pub pid: u32,
    /// The file name of its program (`argv[0]`), to tell it from a process that reused the pid.
    pub program: String,
}

/// Log files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Logs {
    pub serve: PathBuf,
    pub controller: PathBuf,
    pub jobs: PathBuf,
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub minio: PathBuf,
}

/// Writes `contents` to `path` atomically (a temporary file, then a rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {} into place", tmp.display()))
}

/// True if process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses (which may hold spaces).
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The arguments of process `pid` (empty if it is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The file name of a program path.
pub fn program_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// True if `pid` is alive and runs `program` (by `argv[0]`'s file name).
pub fn runs(pid: u32, program: &str) -> bool {
    pid_alive(pid)
        && cmdline(pid)
            .first()
            .is_some_and(|a| program_name(a) == program)
}

/// True if `pid` is a live `sitecache-dev serve`.
pub fn is_serve(pid: u32) -> bool {
    runs(pid, "sitecache-dev") && cmdline(pid).get(1).is_some_and(|a| a == "serve")
}

/// Sends `signal` to process `pid`; false if there was no such process.
pub fn signal(pid: u32, signal: Signal) -> bool {
    raw_pid(pid).is_some_and(|pid| rustix::process::kill_process(pid, signal).is_ok())
}

/// Sends `signal` to every process of the group `pgid`; false if there was no such group.
pub fn signal_group(pgid: u32, signal: Signal) -> bool {
    raw_pid(pgid).is_some_and(|pgid| rustix::process::kill_process_group(pgid, signal).is_ok())
}

fn raw_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// A path as a shell word: as it is if it needs no quoting, else single-quoted.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// [`shell_quote`] for a path.
pub fn q(path: &Path) -> String {
    shell_quote(&path.display().to_string())
}

/// Ends `up` after a Ctrl-C once the environment is ready: it keeps running, on purpose.
pub fn exit_interrupted() -> ! {
    println!("\ninterrupted: the environment keeps running; stop it with: make dev-down");
    std::process::exit(130);
}

/// Progress lines with the seconds elapsed since the command started.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn secs(&self) -> u64 {
        self.0.elapsed().as_secs()
    }

    /// Prints `[ 12s] message` on stdout.
    pub fn say(&self, message: &str) {
        println!("[{:>3}s] {message}", self.secs());
    }

    /// Prints each line of `text` indented under the progress lines.
    pub fn quote(&self, text: &str) {
        for line in text.lines() {
            println!("       {line}");
        }
    }
}

/// `GET <path>` on `127.0.0.1:<port>` with a bare HTTP/1.0 request: the status code, if any.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        http_status_unbounded(port, path),
    )
    .await
    .ok()
    .flatten()
}

async fn http_status_unbounded(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
    head.split_whitespace().nth(1)?.parse().ok()
}
