//! What `up` does with the example once the environment runs: apply it, follow its SiteCache to
//! `Ready`, restore the promoted generation into a fresh directory and run the site from it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use serde_json::Value;

use super::example::Example;
use super::{Clock, Ready, StateDir, q};
use crate::process::tail;

/// How long the first snapshot may take (Deno downloads the example's packages).
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// The promoted generation the example reached.
#[derive(Clone, Debug)]
pub struct Promoted {
    pub url: String,
    pub generation: u64,
}

/// An admin client of the environment.
pub async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn sitecaches(client: Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("sitecache.dev", "v1alpha1", "SiteCache");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "sitecaches");
    Api::namespaced_with(client, namespace, &resource)
}

/// Runs a command, with a clear error if it cannot start. A Ctrl-C reaches the command too: if it
/// died of it, `up` ends as interrupted.
fn output(cmd: &mut Command, what: &str) -> Result<Output> {
    use std::os::unix::process::ExitStatusExt;
    let out = cmd
        .output()
        .with_context(|| format!("run {what} ({})", cmd.get_program().to_string_lossy()))?;
    if out.status.signal() == Some(rustix::process::Signal::INT.as_raw()) {
        super::exit_interrupted();
    }
    Ok(out)
}

/// `kubectl apply -R -f examples/`, printed so that it can be run again.
pub fn apply(ready: &Ready, clock: &Clock) -> Result<()> {
    let examples = ready.repo.join("examples");
    clock.say(&format!(
        "applying examples/: KUBECONFIG={} {} apply -R -f {}",
        q(&ready.kubeconfig),
        q(&ready.kubectl),
        q(&examples)
    ));
    let out = output(
        Command::new(&ready.kubectl)
            .args(["apply", "-R", "-f"])
            .arg(&examples)
            .env("KUBECONFIG", &ready.kubeconfig),
        "kubectl apply",
    )?;
    clock.quote(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "kubectl apply -R -f {} failed ({}):\n{}",
            examples.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One line about the SiteCache's state.
fn describe(status: &Value) -> String {
    let Some(phase) = status["phase"].as_str() else {
        return "waiting for the controller".to_owned();
    };
    let mut parts = vec![format!("phase {phase}")];
    if let Some(c) = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"))
    {
        parts.push(format!(
            "Progressing={} ({})",
            c["status"].as_str().unwrap_or("?"),
            c["reason"].as_str().unwrap_or("")
        ));
    }
    if let Some(job) = status["activeJob"].as_str() {
        parts.push(format!("Job {job}"));
    }
    let current = &status["current"];
    if let Some(generation) = current["generation"].as_u64() {
        parts.push(format!(
            "generation {generation} ({} files, {})",
            current["files"].as_u64().unwrap_or(0),
            status["size"].as_str().unwrap_or("?")
        ));
    }
    if let Some(freshness) = status["freshness"].as_str() {
        parts.push(freshness.to_owned());
    }
    parts.join(", ")
}

/// Follows the example's SiteCache (a watch: every change is seen) until it is `Ready` with a
/// promoted generation, printing each change. On failure or timeout, prints the logs that say why.
pub async fn follow(
    ready: &Ready,
    dir: &StateDir,
    example: &Example,
    clock: &Clock,
) -> Result<Promoted> {
    let api = sitecaches(client(&ready.kubeconfig).await?, &example.namespace);
    let who = format!("SiteCache {}/{}", example.namespace, example.name);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", example.name));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut last = String::new();
    let mut jobs: Vec<String> = Vec::new();
    let mut status = Value::Null;
    loop {
        let sc = match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => None,
            Ok(None) => bail!("the watch of {who} ended"),
            Ok(Some(Err(e))) => {
                // The watcher retries with a back-off.
                tracing::debug!(error = %e, "watching the SiteCache");
                continue;
            }
            Ok(Some(Ok(watcher::Event::Apply(sc) | watcher::Event::InitApply(sc)))) => Some(sc),
            Ok(Some(Ok(watcher::Event::Delete(_)))) => {
                bail!("{who} was deleted while `up` waited for it")
            }
            Ok(Some(Ok(watcher::Event::Init | watcher::Event::InitDone))) => continue,
        };
        let timed_out = sc.is_none();
        if let Some(sc) = sc {
            status = sc.data.get("status").cloned().unwrap_or(Value::Null);
            for job in [&status["activeJob"], &status["lastSnapshot"]["job"]] {
                if let Some(job) = job.as_str()
                    && !jobs.iter().any(|j| j == job)
                {
                    jobs.push(job.to_owned());
                }
            }
            let line = describe(&status);
            if line != last {
                clock.say(&format!("{who}: {line}"));
                last = line;
            }
            let generation = status["current"]["generation"].as_u64();
            if status["phase"] == "Ready"
                && let (Some(generation), Some(url)) = (generation, status["url"].as_str())
            {
                return Ok(Promoted {
                    url: url.to_owned(),
                    generation,
                });
            }
        }
        let failed = status["phase"] == "Failed";
        if failed || timed_out {
            print_logs(ready, dir, example, &jobs);
            let why = if failed {
                let last = &status["lastSnapshot"];
                format!(
                    "failed: {} {}",
                    last["reason"].as_str().unwrap_or(""),
                    last["message"].as_str().unwrap_or("")
                )
            } else {
                format!("not Ready within {}s", READY_TIMEOUT.as_secs())
            };
            bail!("{who} {why} (the Job and controller logs are above)");
        }
    }
}

/// Prints the end of the snapshot Jobs' container logs and of the controller's log.
fn print_logs(ready: &Ready, dir: &StateDir, example: &Example, jobs: &[String]) {
    for job in jobs {
        let job_dir = dir.jobs().join(&example.namespace).join(job);
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&job_dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        if logs.is_empty() {
            println!("--- Job {job}: no container log in {}", job_dir.display());
        }
        for log in logs {
            println!("--- {} (end) ---\n{}", log.display(), tail(&log, 3000));
        }
    }
    println!(
        "--- {} (end) ---\n{}",
        ready.logs.controller.display(),
        tail(&ready.logs.controller, 4000)
    );
}

/// `sitecache restore --strict` of the promoted generation into a fresh directory; returns the
/// directory.
pub fn restore(
    ready: &Ready,
    dir: &StateDir,
    promoted: &Promoted,
    clock: &Clock,
) -> Result<PathBuf> {
    let dest = dir.restored();
    if dest.exists() {
        std::fs::remove_dir_all(&dest).with_context(|| format!("remove {}", dest.display()))?;
    }
    clock.say(&format!(
        "restoring generation {} into a fresh directory: {} restore --strict --url {} --dest {}",
        promoted.generation,
        q(&ready.sitecache_bin),
        promoted.url,
        q(&dest)
    ));
    let out = output(
        Command::new(&ready.sitecache_bin)
            .args(["restore", "--strict", "--url", &promoted.url, "--dest"])
            .arg(&dest)
            .envs(ready.s3.env()),
        "sitecache restore",
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    clock.quote(&stdout);
    let ok = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|v| v["ok"] == true);
    if !out.status.success() || !ok {
        bail!(
            "sitecache restore failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(dest)
}

/// `deno run --cached-only main.ts` with `DENO_DIR` set to the restored directory.
pub fn run_site(ready: &Ready, example: &Example, deno_dir: &Path, clock: &Clock) -> Result<()> {
    clock.say(&format!(
        "running the site from the restored cache alone: cd {} && DENO_DIR={} {} run --cached-only main.ts",
        q(&example.dir),
        q(deno_dir),
        q(&ready.deno)
    ));
    let out = output(
        Command::new(&ready.deno)
            .args(["run", "--cached-only", "main.ts"])
            .current_dir(&example.dir)
            .env("DENO_DIR", deno_dir)
            .env("NO_COLOR", "1"),
        "deno run",
    )?;
    clock.quote(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "deno run --cached-only {} failed ({}):\n{}",
            example.main.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
