//! A container as a process: spawned in a group tied to the test process, its output in its log,
//! killed with its group.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use k8s_openapi::jiff::Timestamp;

use super::now;
use super::plan::Prepared;
use crate::process::{TiedGroup, spawn_tied_async};

pub(super) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

/// Appends a note of the runner to a log file.
pub(super) fn note(log: &Path, message: &str) {
    if let Ok(mut f) = File::options().create(true).append(true).open(log) {
        let _ = writeln!(f, "[job runner] {message}");
    }
}

/// Removes a directory when dropped (an attempt's emptyDir volumes).
pub(super) struct RemoveOnDrop(pub(super) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A started container process.
pub(super) struct Running {
    pub(super) container: String,
    pub(super) prepared: Prepared,
    pub(super) started: Timestamp,
    pub(super) log: PathBuf,
    pub(super) child: tokio::process::Child,
    pub(super) group: TiedGroup,
}

/// Starts a prepared container; on failure, says why in its log.
pub(super) async fn spawn(p: &Prepared) -> Result<Running, String> {
    let started = async {
        let log =
            File::create(&p.log).map_err(|e| format!("cannot create {}: {e}", p.log.display()))?;
        let stderr = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", p.log.display()))?;
        let mut cmd = tokio::process::Command::new(&p.program);
        cmd.args(&p.args)
            .envs(p.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(d) = &p.working_dir {
            cmd.current_dir(d);
        }
        let child = spawn_tied_async(cmd)
            .await
            .map_err(|e| format!("cannot start {}: {e}", p.program))?;
        let pid = child
            .id()
            .ok_or_else(|| format!("{} has no process id", p.program))?;
        Ok(Running {
            container: p.container.clone(),
            prepared: p.clone(),
            started: now(),
            log: p.log.clone(),
            child,
            group: TiedGroup::new(pid),
        })
    };
    started.await.map_err(|message: String| {
        let message = format!("container {}: {message}", p.container);
        note(&p.log, &message);
        message
    })
}

/// Kills every process of the attempt (their whole groups) and reaps them, noting `why` in the
/// logs of those that were still running.
pub(super) async fn kill_all(procs: &mut [Running], why: &str) {
    let running: Vec<bool> = procs
        .iter_mut()
        .map(|p| matches!(p.child.try_wait(), Ok(None)))
        .collect();
    for p in procs.iter() {
        p.group.kill();
    }
    for (p, running) in procs.iter_mut().zip(running) {
        let _ = p.child.wait().await;
        if running {
            note(&p.log, why);
        }
    }
}
