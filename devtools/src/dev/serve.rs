//! `sitecache-dev serve`: runs the dev environment in the background until `SIGTERM`.
//!
//! It starts etcd + kube-apiserver, MinIO (with the bucket), installs the CRD, starts the local
//! job runner and the real `sitecache controller`, writes `env.sh` and then `ready.json`
//! (atomically: its presence means everything runs), and waits. On `SIGTERM` or `SIGINT` it stops
//! the controller (`SIGTERM`, then `SIGKILL` after a grace period), the job runner (and any Job
//! process), MinIO, kube-apiserver and etcd, in that order. If one of them dies on its own, it
//! says so in its log (`serve.log`) and stops the rest.
//!
//! Every process it starts is tied to it (`PR_SET_PDEATHSIG`, see [`crate::process`]): however
//! `serve` ends, they end too. Until it is ready it also watches the `up` that started it, and
//! stops if `up` is gone (interrupted or crashed), so a failed start leaves nothing behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::Signal;
use tokio::signal::unix::{SignalKind, signal};

use super::{
    AGENT_IMAGE, BUCKET, JOB_SELECTOR, Logs, ProcessFacts, REGION, Ready, S3Facts, StateDir,
    program_name, write_atomic,
};
use crate::assets::Asset;
use crate::control_plane::{ControlPlane, install_crds};
use crate::job_runner::{JobRunner, JobRunnerConfig};
use crate::process::ManagedProcess;
use crate::s3::S3Server;

/// How long the controller gets to become ready, and to stop on `SIGTERM`.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(60);
const CONTROLLER_GRACE: Duration = Duration::from_secs(15);

/// What `serve` needs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub dir: StateDir,
    pub repo: PathBuf,
    pub sitecache_bin: PathBuf,
    /// The `up` that started it: `serve` stops if that process goes away before it is ready.
    pub parent_pid: Option<u32>,
}

/// A progress line in `serve.log`; `up` shows the lines that start with `==> `.
fn say(message: &str) {
    println!("==> {message}");
}

/// Runs the environment until a signal (`Ok`) or until a part dies on its own (`Err`).
pub async fn run(opts: ServeOptions) -> Result<()> {
    init_tracing();
    opts.dir.create()?;
    write_atomic(
        &opts.dir.serve_pid(),
        format!("{}\n", std::process::id()).as_bytes(),
    )?;
    let mut term = signal(SignalKind::terminate()).context("handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handle SIGINT")?;

    // Dropping the start-up future (a signal, `up` gone) kills whatever it had started.
    let mut env = tokio::select! {
        env = start(&opts) => env?,
        _ = term.recv() => {
            say("SIGTERM during start-up: stopped");
            return Ok(());
        }
        _ = int.recv() => {
            say("SIGINT during start-up: stopped");
            return Ok(());
        }
        pid = parent_gone(opts.parent_pid) => {
            bail!("`sitecache-dev up` (pid {pid}) went away before the environment was ready: stopped");
        }
    };
    say("ready");

    let outcome = tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
        e = env.watch() => Err(e),
    };
    let _ = std::fs::remove_file(opts.dir.ready());
    match &outcome {
        Ok(sig) => say(&format!("{sig}: stopping everything")),
        Err(e) => say(&format!(
            "a part of the environment died unexpectedly, stopping the rest: {e:#}"
        )),
    }
    env.shutdown().await;
    say("stopped");
    outcome.map(|_| ())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SITECACHE_DEV_LOG")
        // kube's client logs each refused connection while the API server starts: noise here.
        .unwrap_or_else(|_| {
            EnvFilter::new("warn,kube_client::client::builder=off,sitecache_devtools=info")
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .try_init();
}

/// Resolves when process `parent` is no longer this process's parent (never if `None`); returns
/// its pid.
async fn parent_gone(parent: Option<u32>) -> u32 {
    let Some(parent) = parent else {
        return std::future::pending().await;
    };
    loop {
        if rustix::process::getppid().map(|p| p.as_raw_pid() as u32) != Some(parent) {
            return parent;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The running parts. Field order is drop order.
struct Env {
    controller: ManagedProcess,
    runner: Option<JobRunner>,
    s3: S3Server,
    control_plane: ControlPlane,
}

impl Env {
    /// Resolves with an error when a part has died on its own.
    async fn watch(&mut self) -> anyhow::Error {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if self.controller.exited().is_some() {
                return self.controller.failure("exited");
            }
            if let Err(e) = self.control_plane.check_running() {
                return e;
            }
            if let Err(e) = self.s3.check_running() {
                return e;
            }
            if !self.runner.as_ref().is_some_and(JobRunner::is_running) {
                return anyhow::anyhow!("the job runner stopped (its Job watch ended)");
            }
        }
    }

    /// Stops everything: the controller gracefully, then the rest.
    async fn shutdown(mut self) {
        say(&format!(
            "stopping the controller (pid {})",
            self.controller.pid()
        ));
        if self.controller.exited().is_none() {
            let _ = self.controller.signal(Signal::TERM.as_raw());
            let deadline = Instant::now() + CONTROLLER_GRACE;
            while self.controller.exited().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if self.controller.exited().is_none() {
                say(&format!(
                    "the controller did not stop within {}s: killing it",
                    CONTROLLER_GRACE.as_secs()
                ));
            }
        }
        self.controller.kill();
        if let Some(runner) = self.runner.take() {
            say("stopping the job runner (and any snapshot Job it runs)");
            runner.stop().await;
        }
        say("stopping MinIO");
        drop(self.s3);
        say("stopping kube-apiserver and etcd");
        drop(self.control_plane);
    }
}

/// Starts every part, writes `env.sh` and `ready.json`.
async fn start(opts: &ServeOptions) -> Result<Env> {
    let dir = &opts.dir;
    let kubectl = Asset::Kubectl.path()?;
    let deno = Asset::Deno.path()?;
    let deno_image = super::deno_image()?;

    say("starting etcd + kube-apiserver");
    let control_plane = ControlPlane::start(&dir.control_plane())
        .await
        .context("the local control plane (etcd + kube-apiserver) did not start")?;
    say(&format!(
        "kube-apiserver ready at {}",
        control_plane.server()
    ));

    say("starting MinIO");
    let s3 = S3Server::start(&dir.s3())
        .await
        .context("the local S3 server (MinIO) did not start")?;
    s3.client()
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .with_context(|| format!("create bucket {BUCKET}"))?;
    say(&format!(
        "MinIO ready at {}, bucket {BUCKET}",
        s3.endpoint()
    ));

    let client = control_plane.client().await?;
    let crds = opts.repo.join("crds");
    say(&format!("installing the CRD from {}", crds.display()));
    let names = install_crds(&client, &crds).await?;
    say(&format!("CRD installed: {}", names.join(", ")));

    say(&format!(
        "starting the job runner (Jobs labelled {JOB_SELECTOR}, all namespaces; \
         {AGENT_IMAGE} runs {}, {deno_image} runs {})",
        opts.sitecache_bin.display(),
        deno.display()
    ));
    let aws_env = s3.job_env();
    let runner = JobRunner::start(
        client,
        JobRunnerConfig {
            namespace: None,
            label_selector: JOB_SELECTOR.to_owned(),
            images: HashMap::from([
                (AGENT_IMAGE.to_owned(), opts.sitecache_bin.clone()),
                (deno_image.clone(), deno.clone()),
            ]),
            env: aws_env,
            work_dir: dir.jobs(),
        },
    );

    say("starting the controller (sitecache controller, all namespaces)");
    std::fs::create_dir_all(dir.logs())?;
    let controller_log = dir.logs().join("controller.log");
    let (controller, port) =
        start_controller(opts, &s3, control_plane.kubeconfig(), &controller_log).await?;
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    say(&format!("controller serving (metrics {metrics})"));

    let [etcd_log, apiserver_log] = control_plane.logs().map(Path::to_path_buf);
    let [etcd_pid, apiserver_pid] = control_plane.pids();
    let minio_pid = s3.process().context("MinIO is not running")?.pid();
    let process = |name: &str, pid: u32, program: &Path| ProcessFacts {
        name: name.to_owned(),
        pid,
        program: program_name(&program.display().to_string()),
    };
    let aws = s3.aws_env();
    let aws_value = |key: &str| {
        aws.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let ready = Ready {
        serve_pid: std::process::id(),
        ready_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        repo: opts.repo.clone(),
        sitecache_bin: opts.sitecache_bin.clone(),
        kubeconfig: control_plane.kubeconfig().to_path_buf(),
        kubectl,
        deno,
        api_server: control_plane.server().to_owned(),
        s3: S3Facts {
            endpoint: s3.endpoint(),
            bucket: BUCKET.to_owned(),
            region: REGION.to_owned(),
            access_key_id: aws_value("AWS_ACCESS_KEY_ID"),
            secret_access_key: aws_value("AWS_SECRET_ACCESS_KEY"),
        },
        controller_metrics: metrics,
        processes: vec![
            process("etcd", etcd_pid, &Asset::Etcd.path()?),
            process(
                "kube-apiserver",
                apiserver_pid,
                &Asset::KubeApiserver.path()?,
            ),
            process("minio", minio_pid, &Asset::Minio.path()?),
            process("controller", controller.pid(), &opts.sitecache_bin),
        ],
        logs: Logs {
            serve: dir.serve_log(),
            controller: controller_log,
            jobs: dir.jobs(),
            etcd: etcd_log,
            kube_apiserver: apiserver_log,
            minio: s3.log(),
        },
    };
    write_atomic(&dir.env_sh(), env_sh(&ready).as_bytes())?;
    write_atomic(
        &dir.ready(),
        serde_json::to_string_pretty(&ready)?.as_bytes(),
    )?;
    Ok(Env {
        controller,
        runner: Some(runner),
        s3,
        control_plane,
    })
}

/// Spawns the controller on a free port and waits until `/readyz` says its watches have listed
/// (a few tries: the port may be taken between the choice and the bind).
async fn start_controller(
    opts: &ServeOptions,
    s3: &S3Server,
    kubeconfig: &Path,
    log: &Path,
) -> Result<(ManagedProcess, u16)> {
    let mut last_err = None;
    for _attempt in 0..3 {
        let port = crate::free_port()?;
        let mut cmd = Command::new(&opts.sitecache_bin);
        cmd.arg("controller")
            .args(["--default-bucket", BUCKET])
            .args(["--endpoint", &s3.endpoint()])
            .args(["--region", REGION])
            .arg("--path-style")
            .args(["--agent-image", AGENT_IMAGE])
            // A failed snapshot is retried soon: in dev, one fixes the example and watches.
            .args(["--failure-backoff", "10s"])
            .args(["--listen-address", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(s3.aws_env())
            // The endpoint reaches the Jobs through the controller's own setting.
            .env_remove("AWS_ENDPOINT_URL_S3");
        // Settings of the caller's shell must not change the dev controller.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SITECACHE_") {
                cmd.env_remove(key);
            }
        }
        let mut controller = ManagedProcess::spawn("controller", cmd, log)
            .with_context(|| format!("start {}", opts.sitecache_bin.display()))?;
        let deadline = Instant::now() + CONTROLLER_TIMEOUT;
        let ready = loop {
            if controller.exited().is_some() {
                break Err(controller.failure("exited during start-up"));
            }
            if super::http_status(port, "/readyz").await == Some(200) {
                break Ok(());
            }
            if Instant::now() > deadline {
                break Err(controller.failure(&format!(
                    "not ready within {}s",
                    CONTROLLER_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        match ready {
            Ok(()) => return Ok((controller, port)),
            // Exited (the port was taken, say): try again. Running but not serving: give up.
            Err(e) if controller.exited().is_some() => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("the controller did not start")))
}

/// A shell snippet that points a shell at the environment.
fn env_sh(ready: &Ready) -> String {
    use super::{q, shell_quote};
    let dir_of = |p: &Path| p.parent().map(q).unwrap_or_default();
    let mut out = String::from(
        "# The local sitecache dev environment (`make dev`): `source` this file to point kubectl,\n\
         # sitecache and AWS clients at it. Dev-only credentials of a local MinIO.\n",
    );
    out.push_str(&format!("export KUBECONFIG={}\n", q(&ready.kubeconfig)));
    for (key, value) in ready.s3.env() {
        out.push_str(&format!("export {key}={}\n", shell_quote(&value)));
    }
    out.push_str(&format!(
        "export PATH={}:{}:\"$PATH\"\n",
        dir_of(&ready.kubectl),
        dir_of(&ready.sitecache_bin)
    ));
    out
}
