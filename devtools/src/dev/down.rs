//! `sitecache-dev down` (`make dev-down`) and `sitecache-dev status`.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rustix::process::Signal;

use super::{ProcessFacts, StateDir, is_serve, pid_alive, runs, signal, signal_group};

/// How long `serve` gets to stop everything after `SIGTERM` before its process group is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until `gone` holds or `timeout` passes; true if it holds.
fn wait_until(timeout: Duration, gone: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !gone() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

fn names(processes: &[ProcessFacts]) -> String {
    processes
        .iter()
        .map(|p| format!("{} (pid {})", p.name, p.pid))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stops the environment of `dir` if one runs, then removes `dir`.
pub fn down(dir: &StateDir) -> Result<()> {
    let root = dir.root.display();
    if !dir.root.exists() {
        println!("nothing to stop: there is no dev environment in {root}");
        return Ok(());
    }
    if !dir.is_ours() {
        bail!(
            "{root} is not a sitecache-dev state directory (it has no marker file); leaving it alone"
        );
    }
    let processes = dir.read_ready().map(|r| r.processes).unwrap_or_default();
    match dir.read_serve_pid().filter(|pid| is_serve(*pid)) {
        Some(pid) => {
            println!("stopping the dev environment in {root} (sitecache-dev serve, pid {pid})");
            signal(pid, Signal::TERM);
            if !wait_until(STOP_TIMEOUT, || !pid_alive(pid)) {
                println!(
                    "it did not stop within {}s: killing its process group",
                    STOP_TIMEOUT.as_secs()
                );
                signal_group(pid, Signal::KILL);
                signal(pid, Signal::KILL);
                if !wait_until(Duration::from_secs(10), || !pid_alive(pid)) {
                    bail!("sitecache-dev serve (pid {pid}) is still alive after SIGKILL");
                }
            }
            if processes.is_empty() {
                println!("stopped sitecache-dev serve (pid {pid}) and what it had started");
            } else {
                println!(
                    "stopped sitecache-dev serve (pid {pid}): {}, the job runner",
                    names(&processes)
                );
            }
        }
        None => println!("no dev environment runs in {root}"),
    }
    // The processes serve started die with it (the kernel kills them); make sure of it.
    let mut killed = Vec::new();
    for p in &processes {
        if !wait_until(Duration::from_secs(5), || !runs(p.pid, &p.program)) {
            signal(p.pid, Signal::KILL);
            killed.push(p.clone());
        }
    }
    if !killed.is_empty() {
        println!("killed what outlived it: {}", names(&killed));
    }
    std::fs::remove_dir_all(&dir.root).map_err(|e| anyhow::anyhow!("remove {root}: {e}"))?;
    println!("removed {root} (control-plane and S3 data, kubeconfig, logs, restored cache)");
    Ok(())
}

/// Says whether an environment runs in `dir`, and where it is.
pub fn status(dir: &StateDir) -> Result<()> {
    let root = dir.root.display();
    if !dir.root.exists() {
        println!("no dev environment in {root} (make dev starts one)");
        return Ok(());
    }
    let Some(pid) = dir.read_serve_pid().filter(|pid| is_serve(*pid)) else {
        println!("no dev environment runs in {root}; its stale state is removed by make dev-down");
        return Ok(());
    };
    let ready = match dir.read_ready() {
        Ok(r) if r.serve_pid == pid => r,
        _ => {
            println!(
                "sitecache-dev serve (pid {pid}) is starting or stopping; see {}",
                dir.serve_log().display()
            );
            return Ok(());
        }
    };
    println!("the dev environment runs in {root} (sitecache-dev serve, pid {pid})");
    println!("  export KUBECONFIG={}", super::q(&ready.kubeconfig));
    println!("  kubectl      {}", ready.kubectl.display());
    println!("  API server   {}", ready.api_server);
    println!(
        "  S3 endpoint  {} bucket {} (source {})",
        ready.s3.endpoint,
        ready.s3.bucket,
        dir.env_sh().display()
    );
    println!("  metrics      {}", ready.controller_metrics);
    for p in &ready.processes {
        let state = if runs(p.pid, &p.program) {
            "running"
        } else {
            "GONE"
        };
        println!("  {:<15}pid {:<8}{state}", p.name, p.pid);
    }
    println!("  serve log    {}", ready.logs.serve.display());
    Ok(())
}
