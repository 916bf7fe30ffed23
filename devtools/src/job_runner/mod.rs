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
//!   that); the pods of a finished Job stay when the Job is deleted (no garbage collector); a pod the
//!   API server refuses (an admission plugin) fails the attempt, where the Job controller would
//!   retry creating it.
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
//! - start: `startTime`, `active: 1`, `ready: 0`, `terminating: 0`; `ready: 1` once the main
//!   containers are started; after a failed attempt `failed` is incremented and `active: 0`, and
//!   `active: 1` again when the next attempt starts, 1 s later (the Job controller's back-off is
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
//! # Not supported
//!
//! `completions` or `parallelism` above 1 and `Indexed` completion (the attempt fails with a
//! message); sidecar init containers (`restartPolicy: Always`; same); `podFailurePolicy`,
//! `successPolicy`, `backoffLimitPerIndex`, `ttlSecondsAfterFinished` (ignored: no TTL controller
//! deletes finished Jobs; a warning is logged for the others); `restartPolicy: OnFailure` (run as `Never`: each failure is a new
//! attempt and counts in `failed`); suspending a running Job (the running attempt goes on); no
//! Events are created; resources, probes, security contexts, service accounts
//! and image pulls are ignored.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::process::{TiedGroup, spawn_tied_async};

mod plan;
mod pod;

use plan::{Prepared, plan_pod};
use pod::ContainerEnd;

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

/// What the task running a Job learns from the watch.
#[derive(Clone)]
enum Update {
    /// The Job's latest version.
    Live(Arc<Job>),
    /// The Job was deleted (or is being deleted), or the runner stops.
    Gone,
}

/// A Job being run (or that was run) by a task.
struct Entry {
    updates: watch::Sender<Update>,
    task: JoinHandle<()>,
}

struct Shared {
    client: Client,
    config: Arc<JobRunnerConfig>,
}

/// The watch loop: starts a task per Job to run, forwards it the Job's updates, stops it when the
/// Job goes away.
async fn supervise(client: Client, config: Arc<JobRunnerConfig>, mut stop: oneshot::Receiver<()>) {
    let api: Api<Job> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut watch_config = watcher::Config::default();
    if !config.label_selector.is_empty() {
        watch_config = watch_config.labels(&config.label_selector);
    }
    let mut events = std::pin::pin!(watcher(api, watch_config));
    let shared = Arc::new(Shared {
        client,
        config: config.clone(),
    });
    // By uid: a Job deleted and created again under the same name is another Job.
    let mut jobs: HashMap<String, Entry> = HashMap::new();
    let mut retired: Vec<JoinHandle<()>> = Vec::new();
    // Uids seen since the watch (re)started with a full list.
    let mut listed: Option<HashSet<String>> = None;
    tracing::info!(
        namespace = config.namespace.as_deref().unwrap_or("<all>"),
        selector = %config.label_selector,
        work_dir = %config.work_dir.display(),
        "job runner started"
    );
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = events.next() => event,
        };
        match event {
            None => {
                tracing::error!("the Job watch ended");
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching Jobs failed; retrying");
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Some(Ok(watcher::Event::Init)) => listed = Some(HashSet::new()),
            Some(Ok(watcher::Event::InitApply(job))) => {
                if let (Some(listed), Some(uid)) = (listed.as_mut(), job.uid()) {
                    listed.insert(uid);
                }
                observe(&shared, &mut jobs, job);
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if let Some(listed) = listed.take() {
                    let vanished: Vec<String> = jobs
                        .keys()
                        .filter(|uid| !listed.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in vanished {
                        if let Some(entry) = jobs.remove(&uid) {
                            let _ = entry.updates.send(Update::Gone);
                            retired.push(entry.task);
                        }
                    }
                }
            }
            Some(Ok(watcher::Event::Apply(job))) => observe(&shared, &mut jobs, job),
            Some(Ok(watcher::Event::Delete(job))) => {
                if let Some(entry) = job.uid().and_then(|uid| jobs.remove(&uid)) {
                    let _ = entry.updates.send(Update::Gone);
                    retired.push(entry.task);
                }
            }
        }
        retired.retain(|task| !task.is_finished());
    }
    for (_, entry) in jobs.drain() {
        let _ = entry.updates.send(Update::Gone);
        retired.push(entry.task);
    }
    for task in retired {
        let _ = task.await;
    }
    tracing::info!("job runner stopped");
}

/// Handles a Job from the watch: forwards it to its task, or starts one if it is to be run.
fn observe(shared: &Arc<Shared>, jobs: &mut HashMap<String, Entry>, job: Job) {
    let Some(uid) = job.uid() else {
        return;
    };
    let deleting = job.metadata.deletion_timestamp.is_some();
    if let Some(entry) = jobs.get(&uid) {
        // A finished task has no receiver left; the entry stays so the Job is not run again.
        let _ = entry.updates.send(if deleting {
            Update::Gone
        } else {
            Update::Live(Arc::new(job))
        });
        return;
    }
    let spec = job.spec.as_ref();
    let suspended = spec.and_then(|s| s.suspend).unwrap_or(false);
    let no_pods = spec.and_then(|s| s.parallelism) == Some(0);
    if deleting || is_finished(&job) || suspended || no_pods {
        return;
    }
    let job = Arc::new(job);
    let (updates, rx) = watch::channel(Update::Live(job.clone()));
    let task = tokio::spawn(run_job(shared.clone(), job, rx));
    jobs.insert(uid, Entry { updates, task });
}

fn true_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// `Complete=True` or `Failed=True`: the Job controller's "finished".
fn is_finished(job: &Job) -> bool {
    true_condition(job, "Complete").is_some() || true_condition(job, "Failed").is_some()
}

/// How a Job's task ended.
enum End {
    Complete,
    Failed(String),
    /// Deleted, or the runner stopped: processes killed, status left alone.
    Gone,
    /// The API server refuses the status the runner writes (a bug of the runner).
    Broken(String),
}

/// Why a running attempt is interrupted.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Deadline,
    Gone,
}

/// How an attempt ended.
enum AttemptEnd {
    Succeeded,
    Failed(String),
    Stopped(Stop),
}

/// The task's view of its Job: the latest version, until it is gone.
struct Watched {
    rx: watch::Receiver<Update>,
    job: Arc<Job>,
    gone: bool,
}

impl Watched {
    fn take_update(&mut self) {
        match &*self.rx.borrow_and_update() {
            Update::Live(job) => self.job = job.clone(),
            Update::Gone => self.gone = true,
        }
    }

    /// Takes a pending update without waiting; true if the Job is gone.
    fn is_gone(&mut self) -> bool {
        if !self.gone {
            match self.rx.has_changed() {
                Ok(true) => self.take_update(),
                Ok(false) => {}
                Err(_) => self.gone = true,
            }
        }
        self.gone
    }

    /// Waits for the next update; false once the Job is gone.
    async fn next(&mut self) -> bool {
        if self.gone {
            return false;
        }
        match self.rx.changed().await {
            Ok(()) => self.take_update(),
            Err(_) => self.gone = true,
        }
        !self.gone
    }

    /// Waits until the Job is gone.
    async fn gone(&mut self) {
        while self.next().await {}
    }

    /// Waits until the Job is gone or its `activeDeadlineSeconds` (counted from `start`) have
    /// passed, following changes of the deadline.
    async fn stopped(&mut self, start: Timestamp) -> Stop {
        loop {
            let deadline = deadline(&self.job, start);
            tokio::select! {
                _ = sleep_until(deadline) => return Stop::Deadline,
                live = self.next() => {
                    if !live {
                        return Stop::Gone;
                    }
                }
            }
        }
    }
}

/// When the Job's `activeDeadlineSeconds` run out, if it has one.
fn deadline(job: &Job, start: Timestamp) -> Option<Instant> {
    let seconds = job.spec.as_ref()?.active_deadline_seconds?;
    let end = start.checked_add(SignedDuration::from_secs(seconds)).ok()?;
    let left = Duration::try_from(end.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO);
    Some(Instant::now() + left)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Now, to the second (the precision of `metav1.Time`).
fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now())
}

fn time_json(t: Timestamp) -> Value {
    serde_json::to_value(Time(t)).unwrap_or(Value::Null)
}

/// A condition to add (with status True) when writing a status.
struct NewCondition {
    type_: &'static str,
    reason: String,
    message: String,
}

fn condition(type_: &'static str, reason: &str, message: &str) -> NewCondition {
    NewCondition {
        type_,
        reason: reason.to_owned(),
        message: message.to_owned(),
    }
}

/// Runs one Job to its end, and logs how it ended.
async fn run_job(shared: Arc<Shared>, job: Arc<Job>, rx: watch::Receiver<Update>) {
    let (Some(namespace), Some(name), Some(uid)) =
        (job.namespace(), job.metadata.name.clone(), job.uid())
    else {
        tracing::warn!("a Job without namespace, name or uid; not run");
        return;
    };
    let mut task = JobTask {
        api: Api::namespaced(shared.client.clone(), &namespace),
        pods: Api::namespaced(shared.client.clone(), &namespace),
        dir: job_dir(&shared.config.work_dir, &namespace, &name),
        shared,
        namespace,
        name,
        uid,
        w: Watched {
            rx,
            job,
            gone: false,
        },
    };
    tracing::info!(namespace = %task.namespace, job = %task.name, "running Job");
    if let Some(spec) = task.w.job.spec.as_ref() {
        let ignored = [
            ("podFailurePolicy", spec.pod_failure_policy.is_some()),
            ("successPolicy", spec.success_policy.is_some()),
            (
                "backoffLimitPerIndex",
                spec.backoff_limit_per_index.is_some(),
            ),
        ];
        for (field, set) in ignored {
            if set {
                tracing::warn!(
                    namespace = %task.namespace, job = %task.name,
                    "spec.{field} is ignored by the local job runner"
                );
            }
        }
    }
    let end = match task.run().await {
        Ok(end) | Err(end) => end,
    };
    let (namespace, job) = (&task.namespace, &task.name);
    match end {
        End::Complete => tracing::info!(%namespace, %job, result = "Complete", "Job finished"),
        End::Failed(reason) => {
            tracing::info!(%namespace, %job, result = "Failed", %reason, "Job finished")
        }
        End::Gone => tracing::info!(
            %namespace, %job,
            "Job deleted or runner stopping: processes killed, status left alone"
        ),
        End::Broken(message) => {
            tracing::error!(%namespace, %job, %message, "Job abandoned: status rejected")
        }
    }
}

struct JobTask {
    shared: Arc<Shared>,
    api: Api<Job>,
    pods: Api<Pod>,
    namespace: String,
    name: String,
    uid: String,
    dir: PathBuf,
    w: Watched,
}

impl JobTask {
    /// Runs attempts until the Job ends. `Err` ends it early (gone, or status refused).
    async fn run(&mut self) -> Result<End, End> {
        let job = self.w.job.clone();
        // Left between the interim and the final condition: finish the transition.
        if let Some(c) = true_condition(&job, "SuccessCriteriaMet") {
            let done = condition("Complete", reason_of(c), message_of(c));
            self.write(json!({ "completionTime": time_json(now()) }), vec![done])
                .await?;
            return Ok(End::Complete);
        }
        if let Some(c) = true_condition(&job, "FailureTarget") {
            let reason = reason_of(c).to_owned();
            let done = condition("Failed", &reason, message_of(c));
            self.write(json!({}), vec![done]).await?;
            return Ok(End::Failed(reason));
        }

        let status = job.status.clone().unwrap_or_default();
        let mut failed = status.failed.unwrap_or(0);
        let (start, mut first) = match &status.start_time {
            Some(t) => (t.0, false),
            None => (now(), true),
        };
        if first {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        loop {
            if deadline(&self.w.job, start).is_some_and(|d| d <= Instant::now()) {
                return self.fail(failed, REASON_DEADLINE, MESSAGE_DEADLINE).await;
            }
            let mut fields = json!({ "active": 1, "ready": 0, "terminating": 0 });
            if first {
                fields["startTime"] = time_json(start);
                fields["uncountedTerminatedPods"] = json!({});
                first = false;
            }
            self.write(fields, vec![]).await?;
            let k = failed + 1;
            match self.attempt(k, start).await? {
                AttemptEnd::Succeeded => return self.succeed().await,
                AttemptEnd::Failed(message) => {
                    failed += 1;
                    tracing::info!(
                        namespace = %self.namespace, job = %self.name, attempt = k, %message,
                        "attempt failed"
                    );
                    if failed > backoff_limit(&self.w.job) {
                        return self
                            .fail(failed, REASON_BACKOFF_LIMIT, MESSAGE_BACKOFF_LIMIT)
                            .await;
                    }
                    self.write(json!({ "failed": failed, "active": 0, "ready": 0 }), vec![])
                        .await?;
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_DELAY) => {}
                        stop = self.w.stopped(start) => match stop {
                            Stop::Gone => return Err(End::Gone),
                            Stop::Deadline => {
                                return self.fail(failed, REASON_DEADLINE, MESSAGE_DEADLINE).await;
                            }
                        },
                    }
                }
                AttemptEnd::Stopped(Stop::Gone) => return Err(End::Gone),
                AttemptEnd::Stopped(Stop::Deadline) => {
                    // The Job controller counts the pods it deletes as failed.
                    failed += 1;
                    return self.fail(failed, REASON_DEADLINE, MESSAGE_DEADLINE).await;
                }
            }
        }
    }

    async fn succeed(&mut self) -> Result<End, End> {
        let (reason, message) = (REASON_COMPLETIONS_REACHED, MESSAGE_COMPLETIONS_REACHED);
        self.write(
            json!({ "succeeded": 1, "active": 0, "ready": 0, "terminating": 0 }),
            vec![condition("SuccessCriteriaMet", reason, message)],
        )
        .await?;
        self.write(
            json!({ "completionTime": time_json(now()) }),
            vec![condition("Complete", reason, message)],
        )
        .await?;
        Ok(End::Complete)
    }

    async fn fail(&mut self, failed: i32, reason: &str, message: &str) -> Result<End, End> {
        self.write(
            json!({ "failed": failed, "active": 0, "ready": 0, "terminating": 0 }),
            vec![condition("FailureTarget", reason, message)],
        )
        .await?;
        self.write(json!({}), vec![condition("Failed", reason, message)])
            .await?;
        Ok(End::Failed(reason.to_owned()))
    }

    /// Merges `fields` into the Job's status and appends `conditions` (unless already True),
    /// guarded by the resourceVersion just read; retries conflicts and errors until the Job is
    /// gone.
    async fn write(&mut self, fields: Value, conditions: Vec<NewCondition>) -> Result<(), End> {
        let mut pause = Duration::from_millis(200);
        loop {
            if self.w.is_gone() {
                return Err(End::Gone);
            }
            let error = match self.api.get_opt(&self.name).await {
                Ok(None) => return Err(End::Gone),
                Ok(Some(current)) => {
                    if current.uid().as_deref() != Some(&self.uid)
                        || current.metadata.deletion_timestamp.is_some()
                    {
                        return Err(End::Gone);
                    }
                    let patch = status_patch(&current, &fields, &conditions);
                    match self
                        .api
                        .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(kube::Error::Api(s)) if s.code == 404 => return Err(End::Gone),
                        Err(kube::Error::Api(s)) if s.code == 400 || s.code == 422 => {
                            return Err(End::Broken(format!(
                                "the API server refused the status patch {patch}: {}",
                                s.message
                            )));
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            tracing::warn!(
                namespace = %self.namespace, job = %self.name, error = %error,
                "writing the Job status failed; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.w.gone() => return Err(End::Gone),
            }
            pause = (pause * 2).min(MAX_WRITE_BACKOFF);
        }
    }

    /// Runs attempt `k` of the current pod template, as a Pod object whose status follows it.
    async fn attempt(&mut self, k: i32, start: Timestamp) -> Result<AttemptEnd, End> {
        let job = self.w.job.clone();
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            return Ok(AttemptEnd::Failed(format!(
                "cannot create {}: {e}",
                self.dir.display()
            )));
        }
        let volumes_dir = self.dir.join(format!("attempt-{k}-volumes"));
        let _volumes = RemoveOnDrop(volumes_dir.clone());
        let secrets = self.secrets(&job).await?;
        let plan = match plan_pod(
            &job,
            &self.shared.config,
            &secrets,
            &self.dir,
            k,
            &volumes_dir,
        ) {
            Ok(plan) => plan,
            Err(e) => {
                note(&e.log, &e.message);
                return Ok(AttemptEnd::Failed(e.message));
            }
        };
        let pod = match self.create_pod(&job).await? {
            Ok(pod) => pod,
            Err(message) => {
                note(&self.dir.join(format!("attempt-{k}-pod.log")), &message);
                return Ok(AttemptEnd::Failed(message));
            }
        };
        let result = self.run_pod(&plan, &pod, start).await;
        if matches!(result, Err(_) | Ok(AttemptEnd::Stopped(_))) {
            // Deleted, as the Job controller deletes the pods of a Job past its deadline and
            // the garbage collector those of a deleted Job.
            self.delete_pod(&pod).await;
        }
        result
    }

    /// Runs the attempt's containers with `pod`'s status following them.
    async fn run_pod(
        &mut self,
        plan: &plan::Plan,
        pod: &Pod,
        start: Timestamp,
    ) -> Result<AttemptEnd, End> {
        let pod_start = now();
        self.write_pod(pod, pod::running(pod_start)).await?;
        let mut ends = Vec::new();
        let end = self.run_containers(plan, start, &mut ends).await?;
        let phase = match &end {
            AttemptEnd::Succeeded => "Succeeded",
            AttemptEnd::Failed(_) => "Failed",
            AttemptEnd::Stopped(_) => return Ok(end),
        };
        // Before the Job's status: the Job controller counts a pod only once it has finished.
        self.write_pod(pod, pod::finished(pod, phase, pod_start, &ends))
            .await?;
        Ok(end)
    }

    /// The Secrets the pod template's env refers to, read as kubelet reads them (retrying API
    /// errors until the Job is gone).
    async fn secrets(&mut self, job: &Job) -> Result<plan::Secrets, End> {
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        let mut found = plan::Secrets::new();
        for name in plan::secret_names(job) {
            let mut pause = Duration::from_millis(200);
            let secret = loop {
                match api.get_opt(&name).await {
                    Ok(secret) => break secret,
                    Err(e) => {
                        tracing::warn!(secret = %name, error = %e, "reading a Secret failed; retrying")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = self.w.gone() => return Err(End::Gone),
                }
                pause = (pause * 2).min(MAX_WRITE_BACKOFF);
            };
            let data = secret.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect()
            });
            found.insert(name, data);
        }
        Ok(found)
    }

    /// Creates the attempt's Pod. `Ok(Err(_))`: the API server refuses it (the attempt fails).
    async fn create_pod(&mut self, job: &Job) -> Result<Result<Pod, String>, End> {
        let pod = match pod::pod_for(job, &self.uid) {
            Ok(pod) => pod,
            Err(e) => return Ok(Err(format!("cannot make the attempt's pod: {e}"))),
        };
        let mut pause = Duration::from_millis(200);
        loop {
            if self.w.is_gone() {
                return Err(End::Gone);
            }
            match self.pods.create(&PostParams::default(), &pod).await {
                Ok(created) => return Ok(Ok(created)),
                Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 429 => {
                    return Ok(Err(format!(
                        "the API server refused the attempt's pod: {}",
                        s.message
                    )));
                }
                Err(e) => {
                    tracing::warn!(job = %self.name, error = %e, "creating a pod failed; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.w.gone() => return Err(End::Gone),
            }
            pause = (pause * 2).min(MAX_WRITE_BACKOFF);
        }
    }

    /// Writes a pod's status, retrying until it is written, the pod is gone (left alone) or
    /// the Job is.
    async fn write_pod(&mut self, pod: &Pod, status: Value) -> Result<(), End> {
        let name = pod.name_any();
        let patch = json!({ "status": status });
        let mut pause = Duration::from_millis(200);
        loop {
            let error = match self
                .pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 400 || s.code == 422 => {
                    return Err(End::Broken(format!(
                        "the API server refused the pod status {patch}: {}",
                        s.message
                    )));
                }
                Err(e) => e,
            };
            tracing::warn!(pod = %name, error = %error, "writing a pod status failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.w.gone() => return Err(End::Gone),
            }
            pause = (pause * 2).min(MAX_WRITE_BACKOFF);
        }
    }

    /// Deletes a pod (best effort: a pod left behind is logged). At once, as kubelet confirms
    /// the deletion of a pod whose containers are dead: the runner has killed them.
    async fn delete_pod(&self, pod: &Pod) {
        let name = pod.name_any();
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match self.pods.delete(&name, &now).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(pod = %name, error = %e, "could not delete a pod"),
        }
    }

    /// Runs the init containers one after another, then the main ones together; records how
    /// each one that ran ended.
    async fn run_containers(
        &mut self,
        plan: &plan::Plan,
        start: Timestamp,
        ends: &mut Vec<ContainerEnd>,
    ) -> Result<AttemptEnd, End> {
        for init in &plan.init {
            let mut procs = match spawn(init).await {
                Ok(p) => vec![p],
                Err(message) => return Ok(AttemptEnd::Failed(message)),
            };
            match self.wait_all(&mut procs, start, ends).await {
                Ok(()) => {}
                Err(end) => return Ok(end),
            }
        }
        let mut procs = Vec::new();
        for main in &plan.main {
            match spawn(main).await {
                Ok(p) => procs.push(p),
                Err(message) => {
                    kill_all(
                        &mut procs,
                        "another container of the attempt failed to start",
                    )
                    .await;
                    return Ok(AttemptEnd::Failed(message));
                }
            }
        }
        if let Err(end) = self.write(json!({ "ready": 1 }), vec![]).await {
            kill_all(&mut procs, "the Job is gone").await;
            return Err(end);
        }
        match self.wait_all(&mut procs, start, ends).await {
            Ok(()) => Ok(AttemptEnd::Succeeded),
            Err(end) => Ok(end),
        }
    }

    /// Waits until every process has exited (`Ok` if all with 0) or the attempt is stopped (the
    /// processes are then killed and reaped).
    async fn wait_all(
        &mut self,
        procs: &mut [Running],
        start: Timestamp,
        ends: &mut Vec<ContainerEnd>,
    ) -> Result<(), AttemptEnd> {
        let outcome = {
            let exits = futures::future::join_all(procs.iter_mut().map(|p| async move {
                let status = p.child.wait().await;
                // What the container's main process left behind ends with it.
                p.group.kill();
                status
            }));
            tokio::select! {
                statuses = exits => Ok(statuses),
                stop = self.w.stopped(start) => Err(stop),
            }
        };
        match outcome {
            Ok(statuses) => {
                for (p, status) in procs.iter().zip(&statuses) {
                    if let Ok(status) = status {
                        ends.push(ContainerEnd::of(&p.prepared, *status, p.started));
                    }
                }
                let failures: Vec<String> = procs
                    .iter()
                    .zip(statuses)
                    .filter_map(|(p, status)| match status {
                        Ok(s) if s.success() => None,
                        Ok(s) => Some(format!("container {} {}", p.container, describe(s))),
                        Err(e) => Some(format!(
                            "container {}: cannot wait for it: {e}",
                            p.container
                        )),
                    })
                    .collect();
                if failures.is_empty() {
                    Ok(())
                } else {
                    Err(AttemptEnd::Failed(failures.join("; ")))
                }
            }
            Err(stop) => {
                let why = match stop {
                    Stop::Deadline => "killed: the Job's activeDeadlineSeconds have passed",
                    Stop::Gone => "killed: the Job was deleted or the job runner stopped",
                };
                kill_all(procs, why).await;
                Err(AttemptEnd::Stopped(stop))
            }
        }
    }
}

fn reason_of(c: &JobCondition) -> &str {
    c.reason.as_deref().unwrap_or_default()
}

fn message_of(c: &JobCondition) -> &str {
    c.message.as_deref().unwrap_or_default()
}

fn backoff_limit(job: &Job) -> i32 {
    job.spec
        .as_ref()
        .and_then(|s| s.backoff_limit)
        .unwrap_or(DEFAULT_BACKOFF_LIMIT)
}

/// The merge patch that sets `fields` and appends `conditions` to `current`'s status.
fn status_patch(current: &Job, fields: &Value, conditions: &[NewCondition]) -> Value {
    let mut status = fields.clone();
    if !conditions.is_empty() {
        let existing: &[JobCondition] = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let mut list: Vec<Value> = existing
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let at = time_json(now());
        for c in conditions {
            if true_condition(current, c.type_).is_none() {
                list.push(json!({
                    "type": c.type_,
                    "status": "True",
                    "reason": c.reason,
                    "message": c.message,
                    "lastProbeTime": at,
                    "lastTransitionTime": at,
                }));
            }
        }
        status["conditions"] = Value::Array(list);
    }
    json!({
        "metadata": { "resourceVersion": current.resource_version() },
        "status": status,
    })
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

/// Appends a note of the runner to a log file.
fn note(log: &Path, message: &str) {
    if let Ok(mut f) = File::options().create(true).append(true).open(log) {
        let _ = writeln!(f, "[job runner] {message}");
    }
}

/// Removes a directory when dropped (an attempt's emptyDir volumes).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A started container process.
struct Running {
    container: String,
    prepared: Prepared,
    started: Timestamp,
    log: PathBuf,
    child: tokio::process::Child,
    group: TiedGroup,
}

/// Starts a prepared container; on failure, says why in its log.
async fn spawn(p: &Prepared) -> Result<Running, String> {
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
async fn kill_all(procs: &mut [Running], why: &str) {
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
