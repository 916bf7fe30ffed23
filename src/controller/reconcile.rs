//! Reconciling one SiteCache: read what is (the object, its Jobs, its prefix), decide with the
//! pure functions of [`schedule`](super::schedule), [`job`](super::job) and
//! [`status`](super::status), then act (promote, delete old generations, start a Job) and write
//! the status if it changed.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::context::{Context, MANAGER};
use super::error::Error;
use super::job::{JobInputs, JobState, JobView, job_name, snapshot_job};
use super::objects::{Claim, OwnerRecord, Prefix, Rejection, retention_victims};
use super::schedule::{self, Backoff, Trigger};
use super::status::{self, Activity, generation_info};
use crate::api::{LastSnapshot, SiteCache, SiteCacheStatus, SnapshotResult};

/// How soon a SiteCache waiting for a slot looks again if no Job's end wakes it first.
const WAITING_RECHECK: Duration = Duration::from_secs(20);

/// Reconciles a SiteCache that is not being deleted.
pub async fn apply(obj: Arc<SiteCache>, ctx: &Context) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let Some((api, sc)) = read_fresh(&obj, ctx).await? else {
        return Ok(Action::await_change());
    };
    let mut run = Run {
        ctx,
        jobs: Api::namespaced(ctx.client.clone(), &ns),
        oref: ObjectRef::from_obj(&sc),
        status: sc.status.clone().unwrap_or_default(),
        sc,
        api,
        now: Timestamp::now(),
    };
    let outcome = run.steps().await;
    // Whatever the steps achieved before a failure (a promotion, say) is recorded.
    let activity = match &outcome {
        Ok((activity, _)) => activity.clone(),
        Err(_) => run.current_activity(),
    };
    run.write_status(&activity).await?;
    outcome.map(|(_, action)| action)
}

struct Run<'a> {
    ctx: &'a Context,
    api: Api<SiteCache>,
    jobs: Api<Job>,
    sc: SiteCache,
    oref: ObjectRef<SiteCache>,
    status: SiteCacheStatus,
    now: Timestamp,
}

impl Run<'_> {
    fn uid(&self) -> String {
        self.sc.uid().unwrap_or_default()
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            base: self.ctx.settings.failure_backoff,
            max: self.ctx.settings.failure_backoff_max,
        }
    }

    /// The SiteCache with the status as this reconcile has it so far.
    fn with_status(&self) -> SiteCache {
        let mut sc = self.sc.clone();
        sc.status = Some(self.status.clone());
        sc
    }

    fn current_activity(&self) -> Activity {
        match (&self.status.active_job, &self.status.last_snapshot) {
            (Some(job), Some(last)) => Activity::Running {
                job: job.clone(),
                generation: last.generation,
            },
            _ => Activity::Idle,
        }
    }

    async fn steps(&mut self) -> Result<(Activity, Action), Error> {
        let ctx = self.ctx;
        let target = match ctx.settings.target(&self.sc) {
            Ok(t) => t,
            Err(e) => return Ok(self.blocked("InvalidStorage", e.to_string())),
        };
        self.status.url = Some(target.location.to_string());
        let s3 = ctx.storage(&target).await;
        let prefix = Prefix {
            client: &s3,
            location: &target.location,
        };

        let uid = self.uid();
        if !ctx.is_claimed(&uid) {
            let me = OwnerRecord {
                namespace: self.sc.namespace().unwrap_or_default(),
                name: self.sc.name_any(),
                uid: uid.clone(),
                claimed_at: self.now,
            };
            match prefix.claim(&me).await? {
                Claim::Owned => ctx.set_claimed(&uid, true),
                Claim::OwnedByAnother(owner) => {
                    let message = format!(
                        "{} is owned by {owner}; this SiteCache writes and deletes nothing there. \
                         Use another spec.storage.prefix, or delete the marker {} if that \
                         SiteCache is gone for good",
                        target.location,
                        target.location.owner_key()
                    );
                    return Ok(self.blocked("PrefixOwnedByAnother", message));
                }
            }
        }

        if self.status.latest_generation.is_none() {
            self.adopt(&prefix).await?;
        }

        let mut jobs = ctx.jobs_of(&uid);
        self.add_missing_job(&mut jobs).await?;
        let handled = match &self.status.last_snapshot {
            Some(l) if l.result != Some(SnapshotResult::Running) => l.generation,
            _ => 0,
        };
        for job in jobs
            .iter()
            .filter(|j| j.generation > handled && !j.is_running())
        {
            self.finish(job, &prefix).await?;
        }

        let highest_job = jobs.iter().map(|j| j.generation).max().unwrap_or(0);
        let latest = self.status.latest_generation.unwrap_or(0).max(highest_job);
        self.status.latest_generation = (latest > 0).then_some(latest);

        let verdict = schedule::evaluate(&self.with_status(), self.now, self.backoff());
        ctx.set_stale(&uid, verdict.freshness != crate::api::Freshness::Fresh);
        if let Some(job) = jobs.iter().rev().find(|j| j.is_running()) {
            ctx.not_waiting(&self.oref);
            self.track_running(job);
            let activity = Activity::Running {
                job: job.name.clone(),
                generation: job.generation,
            };
            return Ok((activity, Action::requeue(ctx.settings.resync)));
        }
        self.status.active_job = None;
        let Some(trigger) = verdict.due.clone() else {
            ctx.not_waiting(&self.oref);
            let wait = verdict
                .next_due
                .map(|t| duration_until(self.now, t) + Duration::from_secs(1))
                .unwrap_or(ctx.settings.resync)
                .min(ctx.settings.resync);
            return Ok((Activity::Idle, Action::requeue(wait)));
        };
        self.start(trigger, latest + 1, &target).await
    }

    /// An empty status over a prefix that already holds generations (a recreated SiteCache, or a
    /// lost status): continue after the highest one, with the promoted one as current.
    async fn adopt(&mut self, prefix: &Prefix<'_>) -> Result<(), Error> {
        let inventory = prefix.inventory().await?;
        let Some(highest) = inventory.highest() else {
            return Ok(());
        };
        self.status.latest_generation = Some(highest);
        let current = prefix.current().await?;
        if let Some(c) = &current {
            self.status.current = Some(generation_info(&c.manifest));
            let keep = self.sc.spec.retention.keep as usize;
            let mut generations = Vec::new();
            for &n in inventory
                .committed
                .iter()
                .rev()
                .filter(|&&n| n <= c.manifest.generation)
                .take(keep)
            {
                if let Some(m) = prefix.manifest(n).await? {
                    generations.push(generation_info(&m));
                }
            }
            self.status.generations = generations;
        }
        let note = format!(
            "found generations up to {highest} under {}{}; the next snapshot is generation {}",
            prefix.location,
            current
                .map(|c| format!(" (generation {} promoted)", c.manifest.generation))
                .unwrap_or_default(),
            highest + 1
        );
        tracing::info!("{note}");
        self.ctx
            .event(&self.sc, EventType::Normal, "Adopted", "Adopt", note)
            .await;
        Ok(())
    }

    /// The Job the status says is running may be missing from the watch's view: just created
    /// (the watch lags) or gone. Ask the API server.
    async fn add_missing_job(&self, jobs: &mut Vec<JobView>) -> Result<(), Error> {
        let Some(last) = &self.status.last_snapshot else {
            return Ok(());
        };
        if last.result != Some(SnapshotResult::Running)
            || jobs.iter().any(|j| j.generation == last.generation)
        {
            return Ok(());
        }
        let found = self
            .jobs
            .get_opt(&last.job)
            .await
            .map_err(Error::kube("get snapshot Job"))?;
        jobs.push(match found.as_ref().and_then(JobView::of) {
            Some(view) => view,
            None => JobView {
                name: last.job.clone(),
                generation: last.generation,
                request: None,
                state: JobState::Vanished,
                deleting: false,
            },
        });
        jobs.sort_by_key(|j| j.generation);
        Ok(())
    }

    /// Records a finished Job: promote its generation, or count the failure.
    async fn finish(&mut self, job: &JobView, prefix: &Prefix<'_>) -> Result<(), Error> {
        let (start, completion) = match &job.state {
            JobState::Succeeded { start, completion } => (start.clone(), completion.clone()),
            JobState::Failed {
                start, completion, ..
            } => (start.clone(), completion.clone()),
            JobState::Vanished => (None, Some(Time(self.now))),
            JobState::Running { .. } => return Ok(()),
        };
        let start = start.or_else(|| {
            self.status
                .last_snapshot
                .as_ref()
                .filter(|l| l.generation == job.generation)
                .and_then(|l| l.start_time.clone())
        });
        let seconds = match (&start, &completion) {
            (Some(s), Some(c)) => Some(c.0.duration_since(s.0).as_secs_f64().max(0.0)),
            _ => None,
        };
        let failure = match &job.state {
            JobState::Failed {
                reason, message, ..
            } => Some((
                reason.clone(),
                format!("Job {} failed: {message}", job.name),
            )),
            _ => match prefix
                .verify(job.generation, self.sc.spec.snapshot.min_files)
                .await?
            {
                Ok(manifest) => {
                    self.promote(job, &manifest, prefix).await?;
                    None
                }
                Err(Rejection::NoManifest(_)) if job.state == JobState::Vanished => Some((
                    "JobLost".to_owned(),
                    format!(
                        "Job {} disappeared before it committed generation {}",
                        job.name, job.generation
                    ),
                )),
                Err(rejection) => {
                    // Never promoted, never kept: a rejected generation's objects go now.
                    let removed = prefix.delete_generations(&[job.generation]).await?;
                    self.count_removed(removed);
                    Some((
                        rejection.reason().to_owned(),
                        format!(
                            "generation {} was not promoted: {rejection}",
                            job.generation
                        ),
                    ))
                }
            },
        };
        let result = match &failure {
            None => SnapshotResult::Succeeded,
            Some(_) if matches!(job.state, JobState::Succeeded { .. }) => SnapshotResult::Rejected,
            Some(_) => SnapshotResult::Failed,
        };
        let (reason, message) = failure.clone().unwrap_or_else(|| {
            (
                "Promoted".to_owned(),
                format!("generation {} promoted", job.generation),
            )
        });
        self.ctx.metrics.job_finished(
            match result {
                SnapshotResult::Succeeded => "succeeded",
                SnapshotResult::Rejected => "rejected",
                _ => "failed",
            },
            seconds,
        );
        self.status.last_snapshot = Some(LastSnapshot {
            generation: job.generation,
            job: job.name.clone(),
            start_time: start,
            completion_time: completion,
            duration_seconds: seconds.map(|s| s.round() as u64),
            result: Some(result),
            reason: Some(reason.clone()),
            message: Some(message.clone()),
        });
        if let Some(request) = &job.request {
            self.status.last_handled_request = Some(request.clone());
        }
        self.status.active_job = None;
        self.ctx.wake_waiting();
        if failure.is_some() {
            self.status.consecutive_failures = self.status.consecutive_failures.saturating_add(1);
            tracing::warn!(generation = job.generation, %reason, "{message}");
            self.ctx
                .event(&self.sc, EventType::Warning, &reason, "Snapshot", message)
                .await;
        } else {
            self.status.consecutive_failures = 0;
        }
        Ok(())
    }

    /// Promotes a verified generation, then applies retention.
    async fn promote(
        &mut self,
        job: &JobView,
        manifest: &crate::archive::Manifest,
        prefix: &Prefix<'_>,
    ) -> Result<(), Error> {
        let n = manifest.generation;
        let newer = self
            .status
            .current
            .as_ref()
            .is_none_or(|c| n > c.generation);
        if newer {
            let legacy = self.sc.spec.legacy.as_ref().map(|l| l.publish_key.as_str());
            prefix.promote(manifest, legacy, self.now).await?;
            self.status.current = Some(generation_info(manifest));
            self.ctx.metrics.generations_promoted.inc();
            let note = format!(
                "generation {n} promoted: {} files, {} compressed, from Job {}",
                manifest.files,
                bytesize::ByteSize(manifest.size_bytes).display().iec(),
                job.name
            );
            tracing::info!(generation = n, "{note}");
            self.ctx
                .event(&self.sc, EventType::Normal, "Promoted", "Promote", note)
                .await;
        }
        let mut generations = vec![generation_info(manifest)];
        generations.extend(
            self.status
                .generations
                .iter()
                .filter(|g| g.generation < n)
                .cloned(),
        );
        self.status.generations = generations;
        self.apply_retention(prefix).await
    }

    async fn apply_retention(&mut self, prefix: &Prefix<'_>) -> Result<(), Error> {
        let Some(current) = self.status.current.as_ref().map(|c| c.generation) else {
            return Ok(());
        };
        let inventory = prefix.inventory().await?;
        let in_flight = self
            .ctx
            .jobs_of(&self.uid())
            .into_iter()
            .filter(|j| j.is_running())
            .map(|j| j.generation)
            .min();
        let victims =
            retention_victims(&inventory, current, self.sc.spec.retention.keep, in_flight);
        if !victims.is_empty() {
            let removed = prefix.delete_generations(&victims).await?;
            self.count_removed(removed);
            tracing::info!(
                ?victims,
                objects = removed.objects,
                "retention deleted old generations"
            );
        }
        self.status.generations.retain(|g| {
            inventory.committed.contains(&g.generation) && !victims.contains(&g.generation)
        });
        Ok(())
    }

    fn count_removed(&self, removed: super::objects::Removed) {
        self.ctx.metrics.objects_deleted.inc_by(removed.objects);
        self.ctx.metrics.bytes_deleted.inc_by(removed.bytes);
    }

    /// A running Job the status does not know yet (it was created just before a restart).
    fn track_running(&mut self, job: &JobView) {
        self.status.active_job = Some(job.name.clone());
        let known = self
            .status
            .last_snapshot
            .as_ref()
            .is_some_and(|l| l.generation == job.generation);
        if !known {
            self.status.last_snapshot = Some(LastSnapshot {
                generation: job.generation,
                job: job.name.clone(),
                start_time: match &job.state {
                    JobState::Running { start } => start.clone(),
                    _ => None,
                },
                result: Some(SnapshotResult::Running),
                ..Default::default()
            });
        }
    }

    /// Starts the snapshot Job for generation `n`, if a slot is free.
    async fn start(
        &mut self,
        trigger: Trigger,
        n: u64,
        target: &super::config::Target,
    ) -> Result<(Activity, Action), Error> {
        let ctx = self.ctx;
        let ns = self.sc.namespace().unwrap_or_default();
        let name = job_name(&self.sc.name_any(), n);
        if let Err(running) = ctx.try_start(&self.oref, &ns, &name) {
            let activity = Activity::Waiting {
                running,
                limit: ctx.settings.max_concurrent_snapshots,
            };
            let wait = WAITING_RECHECK.mul_f64(1.0 + fastrand::f64() * 0.5);
            return Ok((activity, Action::requeue(wait)));
        }
        let request = schedule::pending_request(&self.sc);
        let job = snapshot_job(
            &self.sc,
            &JobInputs {
                settings: &ctx.settings,
                target,
                generation: n,
                previous: self.status.current.as_ref().map(|c| c.generation),
                request: request.as_deref(),
            },
        );
        let created = async {
            // A Job's pod template is immutable: create it once, never re-apply over it.
            if self
                .jobs
                .get_opt(&name)
                .await
                .map_err(Error::kube("get snapshot Job"))?
                .is_none()
            {
                self.jobs
                    .patch(
                        &name,
                        &PatchParams::apply(MANAGER).force(),
                        &Patch::Apply(&job),
                    )
                    .await
                    .map_err(Error::kube("create snapshot Job"))?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = created {
            ctx.release(&ns, &name);
            return Err(e);
        }
        self.status.latest_generation = Some(n);
        self.status.active_job = Some(name.clone());
        self.status.last_snapshot = Some(LastSnapshot {
            generation: n,
            job: name.clone(),
            start_time: Some(Time(self.now)),
            result: Some(SnapshotResult::Running),
            ..Default::default()
        });
        let why = match &trigger {
            Trigger::Request(token) => format!("on-demand request {token:?}"),
            Trigger::Initial => "no generation promoted yet".into(),
            Trigger::Revision => format!(
                "source revision is now {}",
                self.sc.spec.source.revision.as_deref().unwrap_or_default()
            ),
            Trigger::Cron => format!(
                "cron {}",
                self.sc.spec.schedule.cron.as_deref().unwrap_or_default()
            ),
            Trigger::MaxAge => format!(
                "current generation older than maxAge {}",
                self.sc.spec.schedule.max_age
            ),
        };
        let note = format!("Job {name} started for generation {n}: {why}");
        tracing::info!(generation = n, trigger = trigger.reason(), "{note}");
        ctx.event(
            &self.sc,
            EventType::Normal,
            "SnapshotStarted",
            "Snapshot",
            note,
        )
        .await;
        let activity = Activity::Running {
            job: name,
            generation: n,
        };
        Ok((activity, Action::requeue(ctx.settings.resync)))
    }

    /// The SiteCache cannot be served until its spec or the controller's configuration changes.
    fn blocked(&mut self, reason: &str, message: String) -> (Activity, Action) {
        self.ctx.not_waiting(&self.oref);
        let activity = Activity::Blocked {
            reason: reason.to_owned(),
            message,
        };
        (activity, Action::requeue(self.ctx.settings.resync))
    }

    /// Derives the rest of the status and writes it if it changed; Events on a newly blocked
    /// state.
    async fn write_status(&mut self, activity: &Activity) -> Result<(), Error> {
        let verdict = match activity {
            Activity::Blocked { .. } => None,
            _ => Some(schedule::evaluate(
                &self.with_status(),
                self.now,
                self.backoff(),
            )),
        };
        let mut new = self.status.clone();
        status::derive(
            &mut new,
            verdict.as_ref(),
            activity,
            self.sc.spec.suspend,
            self.sc.metadata.generation,
            self.now,
        );
        let old = self.sc.status.as_ref();
        if !status::changed(old, &new) {
            return Ok(());
        }
        if let Activity::Blocked { reason, message } = activity {
            let was = old
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == status::READY))
                .map(|c| c.reason.as_str());
            if was != Some(reason.as_str()) {
                tracing::warn!(%reason, "{message}");
                self.ctx
                    .event(
                        &self.sc,
                        EventType::Warning,
                        reason,
                        "Reconcile",
                        message.clone(),
                    )
                    .await;
            }
        }
        write_status(&self.api, &self.sc, &new).await
    }
}

/// Reads the SiteCache itself, not the watch's copy: the status a reconcile builds on must include
/// what the previous reconcile wrote. `None` when it is gone.
pub async fn read_fresh(
    obj: &SiteCache,
    ctx: &Context,
) -> Result<Option<(Api<SiteCache>, SiteCache)>, Error> {
    let api: Api<SiteCache> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let found = api
        .get_opt(&obj.name_any())
        .await
        .map_err(Error::kube("get SiteCache"))?;
    Ok(found.map(|sc| (api, sc)))
}

/// Writes the status with server-side apply under the controller's field manager, on condition
/// that the SiteCache is still the version `read` (optimistic concurrency): a status computed from
/// an object that changed meanwhile (a spec edit, a status reset) is not written over it. A
/// conflict is [`Error::Conflict`] and the next reconcile starts from the new version.
pub async fn write_status(
    api: &Api<SiteCache>,
    read: &SiteCache,
    status: &SiteCacheStatus,
) -> Result<(), Error> {
    let name = read.name_any();
    let patch = serde_json::json!({
        "apiVersion": "sitecache.dev/v1alpha1",
        "kind": "SiteCache",
        "metadata": {"name": name, "resourceVersion": read.resource_version()},
        "status": status,
    });
    match api
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict),
        Err(e) => Err(Error::kube("write SiteCache status")(e)),
    }
}

fn duration_until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now)).unwrap_or(Duration::ZERO)
}
