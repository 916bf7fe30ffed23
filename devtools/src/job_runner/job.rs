//! One Job's run: attempts (a Pod each, its containers as processes) until one succeeds, the
//! backoff limit or the deadline, with the Job's status written as the Job controller writes it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::plan::{self, plan_pod};
use super::pod::{self, ContainerEnd};
use super::processes::{RemoveOnDrop, Running, describe, kill_all, note, spawn};
use super::status::{NewCondition, backoff_limit, condition, message_of, reason_of, status_patch};
use super::supervise::{Shared, Update, true_condition};
use super::{
    MAX_WRITE_BACKOFF, MESSAGE_BACKOFF_LIMIT, MESSAGE_COMPLETIONS_REACHED, MESSAGE_DEADLINE,
    REASON_BACKOFF_LIMIT, REASON_COMPLETIONS_REACHED, REASON_DEADLINE, RETRY_DELAY, job_dir, now,
    time_json,
};

/// How long the deletion of a pod whose processes were killed is retried.
const POD_DELETE_PATIENCE: Duration = Duration::from_secs(120);

/// How a Job's task ended.
pub(super) enum End {
    Complete,
    Failed(String),
    /// Deleted, or the runner stopped: processes killed, status left alone.
    Gone,
    /// The API server refuses the status the runner writes (a bug of the runner).
    Broken(String),
}

/// What became of an attempt's pod.
enum Created {
    Pod(Box<Pod>),
    /// The pod template cannot make a pod (the attempt fails).
    Invalid(String),
    /// The Job's deadline passed while the API server refused the pod.
    DeadlinePassed,
}

/// Why a running attempt is interrupted.
#[derive(Clone, Copy, Debug)]
pub(super) enum Stop {
    Deadline,
    Gone,
}

/// How an attempt ended.
pub(super) enum AttemptEnd {
    Succeeded,
    Failed(String),
    Stopped(Stop),
    /// The deadline passed while the API server refused the attempt's pod: no pod ran, none
    /// counts as failed.
    NeverCreated,
}

/// The task's view of its Job: the latest version, until it is gone.
pub(super) struct Watched {
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
pub(super) fn deadline(job: &Job, start: Timestamp) -> Option<Instant> {
    let seconds = job.spec.as_ref()?.active_deadline_seconds?;
    let end = start.checked_add(SignedDuration::from_secs(seconds)).ok()?;
    let left = Duration::try_from(end.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO);
    Some(Instant::now() + left)
}

pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs one Job to its end, and logs how it ended.
pub(super) async fn run_job(shared: Arc<Shared>, job: Arc<Job>, rx: watch::Receiver<Update>) {
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

pub(super) struct JobTask {
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
            // `active` counts pods: it becomes 1 once the attempt's pod exists.
            let mut fields = json!({ "active": 0, "ready": 0, "terminating": 0 });
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
                AttemptEnd::NeverCreated => {
                    return self.fail(failed, REASON_DEADLINE, MESSAGE_DEADLINE).await;
                }
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
        let pod_log = self.dir.join(format!("attempt-{k}-pod.log"));
        let pod = match self.create_pod(&job, start, &pod_log).await? {
            Created::Pod(pod) => pod,
            Created::Invalid(message) => {
                note(&pod_log, &message);
                return Ok(AttemptEnd::Failed(message));
            }
            Created::DeadlinePassed => return Ok(AttemptEnd::NeverCreated),
        };
        if let Err(end) = self.write(json!({ "active": 1 }), vec![]).await {
            self.delete_pod(&pod).await;
            return Err(end);
        }
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
            AttemptEnd::Stopped(_) | AttemptEnd::NeverCreated => return Ok(end),
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

    /// Creates the attempt's Pod. A pod the API server refuses (admission, a quota) is tried
    /// again, as the Job controller does, with a `FailedCreate` Event on the Job, until the Job's
    /// deadline or until it is gone.
    async fn create_pod(
        &mut self,
        job: &Job,
        start: Timestamp,
        log: &Path,
    ) -> Result<Created, End> {
        let pod = match pod::pod_for(job, &self.uid) {
            Ok(pod) => pod,
            Err(e) => {
                return Ok(Created::Invalid(format!(
                    "cannot make the attempt's pod: {e}"
                )));
            }
        };
        let mut pause = Duration::from_millis(200);
        let mut reported = None;
        loop {
            if self.w.is_gone() {
                return Err(End::Gone);
            }
            match self.pods.create(&PostParams::default(), &pod).await {
                Ok(created) => return Ok(Created::Pod(Box::new(created))),
                Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 429 => {
                    let message = format!("Error creating: {}", s.message);
                    if reported.as_ref() != Some(&message) {
                        note(
                            log,
                            &format!("the API server refused the attempt's pod: {}", s.message),
                        );
                        self.failed_create_event(&message).await;
                        reported = Some(message);
                    }
                }
                Err(e) => {
                    tracing::warn!(job = %self.name, error = %e, "creating a pod failed; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                stop = self.w.stopped(start) => match stop {
                    Stop::Gone => return Err(End::Gone),
                    Stop::Deadline => return Ok(Created::DeadlinePassed),
                },
            }
            pause = (pause * 2).min(MAX_WRITE_BACKOFF);
        }
    }

    /// The Job controller's `FailedCreate` Warning Event on the Job (best effort).
    async fn failed_create_event(&self, message: &str) {
        let events: Api<Event> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        let now = time_json(now());
        let event = json!({
            "metadata": {"generateName": format!("{}.", self.name), "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": "batch/v1", "kind": "Job", "namespace": self.namespace,
                "name": self.name, "uid": self.uid,
            },
            "reason": "FailedCreate",
            "message": message,
            "type": "Warning",
            "source": {"component": "job-controller"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let created = match serde_json::from_value::<Event>(event) {
            Ok(event) => events
                .create(&PostParams::default(), &event)
                .await
                .map(|_| ()),
            Err(e) => {
                tracing::warn!(job = %self.name, error = %e, "cannot build a FailedCreate Event");
                return;
            }
        };
        if let Err(e) = created {
            tracing::warn!(job = %self.name, error = %e, "cannot create a FailedCreate Event");
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

    /// Deletes a pod at once, as kubelet confirms the deletion of a pod whose containers are
    /// dead: the runner has killed them. Retried (the API server may be restarting) for up to
    /// [`POD_DELETE_PATIENCE`], as the garbage collector and kubelet keep at it: a pod left
    /// `Running` after its processes died would be waited on by whoever deleted its Job.
    async fn delete_pod(&self, pod: &Pod) {
        let name = pod.name_any();
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let deadline = tokio::time::Instant::now() + POD_DELETE_PATIENCE;
        let mut pause = Duration::from_millis(200);
        loop {
            match self.pods.delete(&name, &now).await {
                Ok(_) => return,
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) if tokio::time::Instant::now() + pause > deadline => {
                    tracing::warn!(pod = %name, error = %e, "could not delete a pod; left behind");
                    return;
                }
                Err(e) => {
                    tracing::info!(pod = %name, error = %e, "could not delete a pod; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_WRITE_BACKOFF);
                }
            }
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
