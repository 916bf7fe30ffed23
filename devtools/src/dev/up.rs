//! `sitecache-dev up` (`make dev`): starts the environment in the background (or reuses the one
//! that runs), then shows the example site going through it, and prints where everything is.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::Signal;

use super::example::Example;
use super::site::{self, Promoted};
use super::{Clock, Ready, StateDir, is_serve, q};
use crate::assets::Asset;

/// How long the background server may take to start everything.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// What `up` needs.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub dir: StateDir,
    pub repo: PathBuf,
    pub sitecache_bin: PathBuf,
}

/// Brings the environment up and shows the example. An error after the environment is ready
/// leaves it running: `up` says so and exits with 1.
pub async fn run(opts: UpOptions) -> Result<()> {
    let clock = Clock::start();
    let example = preflight(&opts)?;
    println!(
        "sitecache dev environment (state in {})",
        opts.dir.root.display()
    );
    opts.dir.create()?;
    let lock = lock(&opts.dir)?;
    let ready = match opts.dir.read_serve_pid().filter(|pid| is_serve(*pid)) {
        Some(pid) => reuse(&opts, pid, &clock)?,
        None => tokio::select! {
            ready = start(&opts, &clock) => ready?,
            _ = tokio::signal::ctrl_c() => {
                println!("\ninterrupted before the environment was ready: stopping it");
                stop_starting(&opts.dir);
                std::process::exit(130);
            }
        },
    };
    drop(lock);

    // From here on the environment is up: an error or a Ctrl-C leaves it running, on purpose.
    // (A task, not a select: the steps below also wait for commands, blocking this thread.)
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            super::exit_interrupted();
        }
    });
    match show(&opts, &ready, &example, &clock).await {
        Ok(promoted) => {
            print_screen(&opts.dir, &ready, &example, &promoted);
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            eprintln!(
                "the environment keeps running for inspection (logs in {}); stop it with: make dev-down",
                opts.dir.root.display()
            );
            std::process::exit(1);
        }
    }
}

/// Checks what `up` needs before starting anything, so that a missing piece is named at once.
fn preflight(opts: &UpOptions) -> Result<Example> {
    if !opts.sitecache_bin.is_file() {
        bail!(
            "the sitecache binary {} does not exist (--sitecache-bin / SITECACHE_BIN): build it \
             with `cargo build --bin sitecache`, or run `make dev`",
            opts.sitecache_bin.display()
        );
    }
    let crds = opts.repo.join("crds");
    if !crds.is_dir() {
        bail!(
            "{} is not a directory: --repo {} is not a sitecache checkout",
            crds.display(),
            opts.repo.display()
        );
    }
    for asset in [
        Asset::Etcd,
        Asset::KubeApiserver,
        Asset::Kubectl,
        Asset::Minio,
        Asset::Deno,
    ] {
        asset.path()?;
    }
    let example = Example::load(&opts.repo)?;
    example.check(&super::deno_image()?)?;
    Ok(example)
}

/// Holds an exclusive lock on the state directory while the environment starts: a second `up`
/// fails at once instead of starting another one.
fn lock(dir: &StateDir) -> Result<File> {
    let path = dir.lock();
    let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    // `flock(LOCK_EX | LOCK_NB)` on Linux.
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => bail!(
            "another `sitecache-dev up` is starting the environment in {}; wait for it, or stop \
             it with make dev-down",
            dir.root.display()
        ),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("lock {}", path.display())),
    }
}

/// Stops a `serve` that is still starting (it would stop by itself once it sees `up` gone; this
/// waits until it has).
fn stop_starting(dir: &StateDir) {
    if let Some(pid) = dir.read_serve_pid().filter(|pid| is_serve(*pid)) {
        super::signal(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while super::pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if super::pid_alive(pid) {
            println!(
                "sitecache-dev serve (pid {pid}) is still stopping; make dev-down waits for it"
            );
        } else {
            println!("stopped; its log: {}", dir.serve_log().display());
        }
    }
}

/// The environment that already runs, if it is ready.
fn reuse(opts: &UpOptions, pid: u32, clock: &Clock) -> Result<Ready> {
    let ready = match opts.dir.read_ready() {
        Ok(r) if r.serve_pid == pid => r,
        _ => bail!(
            "a sitecache-dev serve (pid {pid}) runs in {} but is not ready (starting or \
             stopping; see {}); stop it with make dev-down",
            opts.dir.root.display(),
            opts.dir.serve_log().display()
        ),
    };
    clock.say(&format!(
        "reusing the environment that runs in {} (sitecache-dev serve, pid {pid})",
        opts.dir.root.display()
    ));
    let rebuilt = |p: &Path| {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((modified(p), modified(&opts.dir.ready())), (Some(bin), Some(ready)) if bin > ready)
    };
    if ready.sitecache_bin != opts.sitecache_bin {
        clock.say(&format!(
            "note: its controller runs {}, not {} (make dev-down && make dev switches)",
            ready.sitecache_bin.display(),
            opts.sitecache_bin.display()
        ));
    } else if rebuilt(&ready.sitecache_bin) {
        clock.say(
            "note: the sitecache binary was rebuilt since the environment started; its \
             controller still runs the older build (make dev-down && make dev restarts it)",
        );
    }
    Ok(ready)
}

/// Starts `sitecache-dev serve` in the background and shows its progress until it is ready.
async fn start(opts: &UpOptions, clock: &Clock) -> Result<Ready> {
    if opts.dir.serve_pid().exists() || opts.dir.ready().exists() {
        clock.say("removing the state of an earlier environment that no longer runs");
    }
    opts.dir.clear()?;
    let log_path = opts.dir.serve_log();
    let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    let exe = std::env::current_exe().context("find the sitecache-dev executable")?;
    let mut cmd = Command::new(&exe);
    cmd.arg("serve")
        .arg("--dir")
        .arg(&opts.dir.root)
        .arg("--repo")
        .arg(&opts.repo)
        .arg("--sitecache-bin")
        .arg(&opts.sitecache_bin)
        .arg("--parent-pid")
        .arg(std::process::id().to_string())
        .current_dir(&opts.dir.root)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session rather than only its own process group (`CommandExt::process_group`): a
    // new session has no controlling terminal, so nothing the terminal sends (Ctrl-C, the
    // hang-up when it closes) can reach it, and it outlives this process and its shell. It leads
    // its process group too, which `down` kills as a whole.
    // SAFETY: `pre_exec` runs the hook in the forked child before exec, where only
    // async-signal-safe work is sound: the hook makes one raw system call through rustix
    // (setsid) and builds its error from an errno, allocating nothing and taking no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {} serve", exe.display()))?;
    let pid = child.id();
    super::write_atomic(&opts.dir.serve_pid(), format!("{pid}\n").as_bytes())?;
    clock.say(&format!(
        "starting the environment in the background (sitecache-dev serve, pid {pid}; log {})",
        log_path.display()
    ));
    follow_serve(opts, &mut child, clock).await
}

/// Prints the progress lines of `serve.log` until `ready.json` appears, `serve` exits, or the
/// start-up takes too long (then `serve` is stopped).
async fn follow_serve(opts: &UpOptions, child: &mut Child, clock: &Clock) -> Result<Ready> {
    let log_path = opts.dir.serve_log();
    let mut log = File::open(&log_path).with_context(|| format!("open {}", log_path.display()))?;
    let mut pending = String::new();
    let deadline = Instant::now() + START_TIMEOUT;
    let mut show_new_lines = |pending: &mut String| {
        let mut buf = Vec::new();
        let _ = log.read_to_end(&mut buf);
        pending.push_str(&String::from_utf8_lossy(&buf));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if line.starts_with("==> ") {
                clock.say(line.trim_end());
            }
        }
    };
    loop {
        show_new_lines(&mut pending);
        if let Ok(ready) = opts.dir.read_ready()
            && ready.serve_pid == child.id()
        {
            return Ok(ready);
        }
        if let Some(status) = child.try_wait()? {
            show_new_lines(&mut pending);
            bail!(
                "the environment did not start: sitecache-dev serve exited ({status}) and stopped \
                 what it had started; the end of {}:\n{}",
                log_path.display(),
                last_lines(&log_path, 40)
            );
        }
        if Instant::now() > deadline {
            super::signal(child.id(), Signal::TERM);
            let stop_deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() && Instant::now() < stop_deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if child.try_wait()?.is_none() {
                super::signal_group(child.id(), Signal::KILL);
                let _ = child.wait();
            }
            bail!(
                "the environment did not start within {}s (stopped); the end of {}:\n{}",
                START_TIMEOUT.as_secs(),
                log_path.display(),
                last_lines(&log_path, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last `n` lines of a file.
fn last_lines(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    text.push_str(&String::from_utf8_lossy(&buf));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The example, end to end: apply, follow to Ready, restore, run.
async fn show(
    opts: &UpOptions,
    ready: &Ready,
    example: &Example,
    clock: &Clock,
) -> Result<Promoted> {
    site::apply(ready, clock)?;
    let promoted = site::follow(ready, &opts.dir, example, clock).await?;
    let deno_dir = site::restore(ready, &opts.dir, &promoted, clock)?;
    site::run_site(ready, example, &deno_dir, clock)?;
    Ok(promoted)
}

/// The final screen: where everything is, what to try, how to stop it.
fn print_screen(dir: &StateDir, ready: &Ready, example: &Example, promoted: &Promoted) {
    let rule = "─".repeat(78);
    let sc = format!("{}/{}", example.namespace, example.name);
    let env_sh = q(&dir.env_sh());
    let again = dir.root.join("restored-again");
    let log_rows = [
        ("controller", q(&ready.logs.controller)),
        (
            "snapshot Jobs",
            format!(
                "{}/<namespace>/<job>/attempt-<k>-<container>.log",
                q(&ready.logs.jobs)
            ),
        ),
        ("etcd", q(&ready.logs.etcd)),
        ("kube-apiserver", q(&ready.logs.kube_apiserver)),
        ("MinIO", q(&ready.logs.minio)),
        ("sitecache-dev", q(&ready.logs.serve)),
    ];
    println!("{rule}");
    println!(
        "sitecache runs locally: {sc} is Ready at generation {}.",
        promoted.generation
    );
    println!();
    println!("  kubeconfig   export KUBECONFIG={}", q(&ready.kubeconfig));
    println!("  kubectl      {}", q(&ready.kubectl));
    println!("  API server   {}", ready.api_server);
    println!(
        "  S3 endpoint  {} (MinIO, path-style, region {})",
        ready.s3.endpoint, ready.s3.region
    );
    println!("  bucket       {}", ready.s3.bucket);
    println!(
        "  access key   {} / secret {} (dev-only credentials of the local MinIO)",
        ready.s3.access_key_id, ready.s3.secret_access_key
    );
    println!("  SiteCache    {sc} → {}", promoted.url);
    println!("  metrics      {}", ready.controller_metrics);
    println!(
        "  shell        source {env_sh}   (KUBECONFIG, the S3 variables, kubectl and sitecache on PATH)"
    );
    println!();
    println!("Logs");
    for (what, path) in log_rows {
        println!("  {what:<16}{path}");
    }
    println!();
    println!("Try");
    println!("  source {env_sh}");
    println!("  kubectl get scache");
    println!(
        "  kubectl annotate scache {} sitecache.dev/snapshot-request=$(date +%s)   # a new generation",
        example.name
    );
    println!(
        "  sitecache restore --url {} --dest {}",
        promoted.url,
        q(&again)
    );
    println!();
    println!("Stop everything: make dev-down");
    println!("{rule}");
}
