//! A local job runner: it plays kubelet and the Job controller for `batch/v1` Jobs on a control
//! plane that has neither (see [`ControlPlane`](crate::ControlPlane)).
//!
//! **Test and development tooling, not part of the operator, and not a container runtime.** It
//! runs a Job's pod template as processes on this host, with this host's filesystem, network and
//! user, and writes the Job's status the way the Job controller of Kubernetes 1.37 does. Use it
//! for tests and `make dev` only, never on anything you would not run on your own machine.
//!
//! # What it runs
//!
//! [`JobRunner::start`] watches the Jobs of [`JobRunnerConfig::label_selector`]. A Job that is not
//! finished (no `Complete` or `Failed` condition), not suspended, not being deleted and not
//! already being run is run: one *attempt* (what would be one pod) after another until one
//! succeeds or the Job fails. An attempt runs the `initContainers` one after another, then the
//! `containers` together; it succeeds when every process exits with 0.
//!
//! A container is a process:
//!
//! - **Program.** For an image listed in [`JobRunnerConfig::images`], the mapped binary replaces
//!   `command[0]` (with no `command`, the binary is the program and `args` its arguments). For any
//!   other image, `command` + `args` run as they are (the program looked up in `PATH`); a container
//!   without `command` then fails the attempt, since an image's entrypoint is unknown here.
//! - **Environment.** The runner's own environment (`PATH`, `HOME`…), then
//!   [`JobRunnerConfig::env`], then the container's `env`. As kubelet does,
//!   `$(VAR)` in env values, `command` and `args` is replaced by the value of `VAR` if the config or
//!   the container (earlier in the list, for env values) defines it, and `$$` becomes `$` (so a
//!   shell script that needs `$$` writes `$$$$`). `valueFrom.secretKeyRef` is read from the Secret
//!   (a missing Secret or key fails the attempt unless `optional`); other `valueFrom` kinds and
//!   `envFrom` are not supported: the attempt fails with a message in the container's log.
//! - **Volumes.** Each `emptyDir` volume is a fresh directory per attempt, under
//!   `<work_dir>/<namespace>/<job>/attempt-<k>-volumes/` and removed when the attempt ends. There
//!   is no mount: a container's mounts are *simulated by rewriting strings*. In `command`, `args`,
//!   env values and `workingDir`, each occurrence of a mount path as a whole path is replaced by
//!   the host directory (plus `subPath`): an occurrence starts the string or follows whitespace, a
//!   quote, `=`, `:`, `<`, `>`, `(`, `;`, `|`, `&` or `,`, and is followed by the end, `/` or any
//!   character but a letter, a digit, `.`, `_` and `-`. So `--source /cache`, `--source=/cache/x`,
//!   `DENO_DIR=/cache`, `PATH=/bin:/cache/bin` and `sh -c 'echo hi > /cache/x'` all reach the host
//!   directory, while `/var/cache` and `/cache-old` are left alone; a program that builds the path
//!   some other way does not find the volume. Other volume kinds fail the attempt.
//! - **Termination messages.** Each container gets an empty file of its own that stands for its
//!   `terminationMessagePath` (default `/dev/termination-log`), which is rewritten like a mount
//!   path (`attempt-<k>-<container>.termination-log`). When the container exits, its first 4 KiB
//!   (or, with `FallbackToLogsOnError`, a failure and an empty file, the end of its log) become its
//!   termination message, as kubelet does.
//! - **Pods.** Each attempt is a Pod object, as the Job controller creates it: the template's labels
//!   plus `batch.kubernetes.io/controller-uid`, `batch.kubernetes.io/job-name` (and the legacy
//!   `controller-uid`, `job-name`), a controller reference to the Job, `generateName: <job>-`, and
//!   `spec.nodeName: sitecache-job-runner` (no Node object exists). Its status is written as kubelet
//!   would: `Running` with `startTime`, then `Succeeded` or `Failed` with a terminated state per
//!   container that ran (exit code, 128 + the signal for a killed one, the termination message),
//!   before the Job's status counts it. A pod of an attempt stopped by the deadline or of a Job
//!   that is deleted while it runs is deleted (the Job controller and the garbage collector do
//!   that); the pods of a finished Job stay when the Job is deleted (no garbage collector). A pod
//!   the API server refuses (admission, a quota) is tried again, 0.2 s doubling to 5 s, with a
//!   `FailedCreate` Warning Event on the Job for each new refusal message (`Error creating: …`), as
//!   the Job controller does, until the Job's deadline fails it (`DeadlineExceeded`, no pod
//!   counted as failed).
//! - **Logs.** stdout and stderr go to `<work_dir>/<namespace>/<job>/attempt-<k>-<container>.log`
//!   ([`JobRunner::log_dir`]); the runner appends its own notes (why it killed a process, why an
//!   attempt could not start) as lines starting with `[job runner]`. Pod-level problems go to
//!   `attempt-<k>-pod.log`. A Job's directory is emptied when the Job starts.
//!
//! Each process is started in its own process group with `PR_SET_PDEATHSIG`, from the long-lived
//! spawner thread of [`process`](crate::process): it dies with the test process however that ends,
//! and so do the processes it forks (a watchdog kills the group). When a process exits, the rest of
//! its group is killed, as a container's processes end with it.
//!
//! # The status it writes
//!
//! Through the status subresource, with optimistic concurrency (conflicts and API server errors
//! are retried), in the order the Job controller writes it, which the API server of 1.37 checks
//! for Jobs (`ValidateJobStatusUpdate`):
//!
//! - start: `startTime`, `active: 0`, `ready: 0`, `terminating: 0`; `active: 1` once the
//!   attempt's pod exists, `ready: 1` once the main containers are started; after a failed attempt
//!   `failed` is incremented and `active: 0`, and `active: 1` again when the next attempt's pod
//!   exists, 1 s later (the Job controller's back-off is
//!   exponential, 10 s doubling; a fixed short delay keeps tests fast);
//! - success: `succeeded: 1`, `active: 0`, `ready: 0` and `SuccessCriteriaMet=True`
//!   (`CompletionsReached`), then `Complete=True` with the same reason and `completionTime` (the
//!   API server requires `SuccessCriteriaMet` before `Complete`, and `completionTime` and
//!   `startTime` with it);
//! - failure: when `failed` exceeds `backoffLimit` (6 by default): `FailureTarget=True`
//!   (`BackoffLimitExceeded`), `active: 0`, then `Failed=True` with the same reason and message (the
//!   API server requires `FailureTarget` before `Failed`; no `completionTime` on a failed Job).
//!   When `activeDeadlineSeconds` have passed since `startTime`, the running process groups are
//!   killed, the attempt counts as failed and the Job fails the same way with `DeadlineExceeded`.
//!
//! A Job that is deleted (or gets a `deletionTimestamp`) has its processes killed (`SIGKILL` to the
//! process groups) and its status is never written again; [`JobRunner::stop`] does the same for
//! every Job. A Job found between `SuccessCriteriaMet` and `Complete` (or `FailureTarget` and
//! `Failed`), say after a runner restart, is finished as the Job controller would.
//!
//! # Layout
//!
//! `supervise` watches the Jobs and runs a task per Job; `job` is that task (attempts,
//! deadlines, the Job's status); `plan` turns the pod template into processes (programs,
//! environment, simulated mounts); `processes` runs them; `pod` is the Pod object of an
//! attempt and its kubelet-like status; `status` the Job status fields and conditions.
//!
//! # Not supported
//!
//! `completions` or `parallelism` above 1 and `Indexed` completion (the attempt fails with a
//! message); sidecar init containers (`restartPolicy: Always`; same); `podFailurePolicy`,
//! `successPolicy`, `backoffLimitPerIndex`, `ttlSecondsAfterFinished` (ignored: no TTL controller
//! deletes finished Jobs; a warning is logged for the others); `restartPolicy: OnFailure` (run as `Never`: each failure is a new
//! attempt and counts in `failed`); suspending a running Job (the running attempt goes on); no
//! Events but `FailedCreate`; resources, probes, security contexts, service accounts
//! and image pulls are ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod job;
mod plan;
mod pod;
mod processes;
mod status;
mod supervise;

use supervise::supervise;

/// Delay between a failed attempt and the next one.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// `spec.backoffLimit` when unset (the API server defaults it, but an old object may lack it).
const DEFAULT_BACKOFF_LIMIT: i32 = 6;
/// Longest pause between two tries of a status write.
const MAX_WRITE_BACKOFF: Duration = Duration::from_secs(5);

const REASON_COMPLETIONS_REACHED: &str = "CompletionsReached";
const MESSAGE_COMPLETIONS_REACHED: &str = "Reached expected number of succeeded pods";
const REASON_BACKOFF_LIMIT: &str = "BackoffLimitExceeded";
const MESSAGE_BACKOFF_LIMIT: &str = "Job has reached the specified backoff limit";
const REASON_DEADLINE: &str = "DeadlineExceeded";
const MESSAGE_DEADLINE: &str = "Job was active longer than specified deadline";

/// What the runner runs, and how.
#[derive(Clone, Debug, Default)]
pub struct JobRunnerConfig {
    /// Watch Jobs in this namespace only (None: all namespaces).
    pub namespace: Option<String>,
    /// Label selector of the Jobs to run, e.g. `app.kubernetes.io/managed-by=sitecache` (empty:
    /// every Job).
    pub label_selector: String,
    /// Images that stand for a local binary (matched exactly, tag included): for a container with
    /// one of these images, the container's `command[0]` is replaced with the binary path (if
    /// `command` is empty, the binary is the program and `args` its arguments). Any other image:
    /// `command` + `args` run on the host as they are (program looked up in `PATH`).
    pub images: HashMap<String, PathBuf>,
    /// Environment added to every process (for example credentials and the S3 endpoint, as a pod
    /// identity webhook would inject them). The container's own `env` is applied on top.
    pub env: Vec<(String, String)>,
    /// Where pods' emptyDir directories and container logs go (created if missing).
    pub work_dir: PathBuf,
}

/// A running job runner (see the [module documentation](self)). Dropping it stops it too, in
/// the background; [`JobRunner::stop`] waits until every process is dead.
pub struct JobRunner {
    work_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl JobRunner {
    /// Starts watching and running Jobs, on a task of the current tokio runtime (it panics
    /// outside of one). Problems (the watch failing, a Job that cannot run) are logged through
    /// `tracing` and retried or turned into failed attempts, never returned.
    pub fn start(client: Client, mut config: JobRunnerConfig) -> JobRunner {
        // Host directories replace mount paths in commands: they must not depend on the
        // working directory.
        if let Ok(absolute) = std::path::absolute(&config.work_dir) {
            config.work_dir = absolute;
        }
        let work_dir = config.work_dir.clone();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(client, Arc::new(config), stop_rx));
        JobRunner {
            work_dir,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Stops watching, kills every running process (and waits until they are reaped) and
    /// returns. Statuses of the Jobs it was running are left as they were.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// False once the runner has stopped on its own (its Job watch ended).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The directory of Job `job`'s container logs (`attempt-<k>-<container>.log`).
    pub fn log_dir(&self, namespace: &str, job: &str) -> PathBuf {
        job_dir(&self.work_dir, namespace, job)
    }
}

fn job_dir(work_dir: &Path, namespace: &str, job: &str) -> PathBuf {
    work_dir.join(namespace).join(job)
}

/// Now, to the second (the precision of `metav1.Time`).
fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now())
}

fn time_json(t: Timestamp) -> Value {
    serde_json::to_value(Time(t)).unwrap_or(Value::Null)
}
