//! Step 7, decide: follow the running Job, or, when a snapshot is due and a slot is free, start
//! the Job of the next generation, as a rebuild from an empty cache or warming on top of the
//! current generation ([`rebuild_reason`]).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::finish::handled_through;
use super::{Announcement, Outcome, Run};
use crate::api::{Freshness, LastSnapshot, SnapshotResult};
use crate::controller::error::Error;
use crate::controller::jobs::account::{self, Ensured};
use crate::controller::jobs::queue::Place;
use crate::controller::jobs::rebuild::{RebuildReason, rebuild_reason};
use crate::controller::jobs::report::JOB_UID_LABEL;
use crate::controller::jobs::stall::{Stall, diagnose};
use crate::controller::jobs::{
    JobInputs, JobState, JobView, UID_LABEL, is_ours, job_name, observed_user, snapshot_job,
};
use crate::controller::objects::Prefix;
use crate::controller::settings::identity::MANAGER;
use crate::controller::settings::schedule::{self, Trigger};
use crate::controller::settings::validate::Validated;
use crate::controller::status::Activity;

/// How often a Job deleted before it finished is looked at until its pods have stopped.
const STOPPING_LOOK: Duration = Duration::from_secs(5);

impl Run<'_> {
    pub(super) async fn decide(
        &mut self,
        prefix: &Prefix<'_>,
        jobs: &[JobView],
        spec: &Validated,
    ) -> Result<Outcome, Error> {
        let ctx = self.ctx;
        let verdict = schedule::evaluate(
            &self.with_status(),
            &spec.schedule,
            self.now,
            self.backoff(),
        );
        ctx.set_stale(&self.uid(), verdict.freshness != Freshness::Fresh);
        // Whatever the SiteCache does, it is looked at again when its cache turns Stale (the
        // status says so then), and at the latest after --resync.
        let (now, resync, fresh_until) = (self.now, ctx.settings.resync, verdict.fresh_until);
        let wake_at = self.wake_at;
        // A running Job is looked at again for a stall (`look_for_stall`) within `look`.
        let at_latest = |due: Option<Timestamp>, look: Option<Duration>| {
            let wake = [due, fresh_until, wake_at]
                .into_iter()
                .flatten()
                .min()
                .map(|t| duration_until(now, t) + Duration::from_secs(1))
                .unwrap_or(resync);
            Action::requeue(look.map_or(wake, |l| l.min(wake)).min(resync))
        };
        // A Job deleted before it finished and recorded as such is no longer followed.
        let handled = handled_through(&self.status);
        if let Some(job) = jobs
            .iter()
            .rev()
            .find(|j| j.is_running() && j.generation > handled)
        {
            ctx.leave_queue(&self.oref);
            self.track_running(job);
            let (stall, look_again) = if job.deleting {
                // Deleted before it finished: looked at until its pods have stopped (step 5).
                (None, Some(STOPPING_LOOK))
            } else {
                self.look_for_stall(job).await
            };
            ctx.set_stalled(&self.uid(), stall.is_some());
            let activity = Activity::Running {
                job: job.name.clone(),
                generation: job.generation,
                stall,
            };
            return Ok((activity, at_latest(None, look_again)));
        }
        ctx.set_stalled(&self.uid(), false);
        self.status.active_job = None;
        let Some(trigger) = verdict.due.clone() else {
            ctx.leave_queue(&self.oref);
            return Ok((Activity::Idle, at_latest(verdict.next_due, None)));
        };
        let place = Place {
            priority: match trigger {
                Trigger::Request(_) => 0,
                _ => 1,
            },
            due: verdict.due_since.unwrap_or(self.now),
        };
        let next = self.status.latest_generation.unwrap_or(0) + 1;
        match self.start(prefix, trigger, next, place, spec).await? {
            Some(started) => {
                let look = ctx.settings.snapshot_stall_after + Duration::from_secs(1);
                Ok((started, at_latest(None, Some(look))))
            }
            // Woken when a slot is its (no polling); still looked at when it turns Stale.
            None => {
                let activity = Activity::Waiting {
                    limit: ctx.settings.max_concurrent_snapshots,
                };
                Ok((activity, at_latest(None, None)))
            }
        }
    }

    /// Whether the running `job` is stalled ([`stall`](crate::controller::jobs::stall)), and when to
    /// look again: a Job is looked at once it has run for `--snapshot-stall-after`, then every
    /// `--snapshot-stall-after` while it runs (its pods' changes wake no reconcile). Reading the
    /// pods or Events is advice: when it fails, the Job is taken as not stalled.
    async fn look_for_stall(&mut self, job: &JobView) -> (Option<Stall>, Option<Duration>) {
        let after = self.ctx.settings.snapshot_stall_after;
        let age = job
            .created
            .map(|t| duration_until(t, self.now))
            .unwrap_or(Duration::ZERO);
        if age < after {
            return (None, Some(after - age + Duration::from_secs(1)));
        }
        let ns = self.sc.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let selector = format!("{JOB_UID_LABEL}={}", job.uid);
        let pods = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(job = %job.name, error = %e, "cannot list the snapshot Job's pods");
                return (None, Some(after));
            }
        };
        let mut stall = diagnose(job, &pods, self.now, after);
        if let Some(Stall::NoPod { cause, .. }) = &mut stall {
            *cause = self.failed_create(&ns, job).await;
        }
        // Refused for want of the controller's account, which this process found or made
        // before (deleted since, or its namespace made again): made again, the Job controller's
        // next attempt creates the pod.
        if let (Some(Stall::NoPod { cause: Some(c), .. }), Some(name)) =
            (&stall, self.ctx.settings.job_service_account.as_deref())
            && account::refused_for_missing(c, &ns, name)
        {
            self.ctx.forget_job_account(&ns);
            self.ensure_job_account(&ns).await;
        }
        (stall, Some(after))
    }

    /// [`Context::ensure_job_account`](crate::controller::context::Context::ensure_job_account),
    /// told in an Event. A failure does not stop the snapshot: the account may exist all the
    /// same (the controller may not be allowed to read it), and if it does not, the Job's pod is
    /// refused and the status says why (`SnapshotPodNotCreated`).
    async fn ensure_job_account(&mut self, ns: &str) {
        let Some(ensured) = self.ctx.ensure_job_account(ns).await else {
            return;
        };
        let name = self
            .ctx
            .settings
            .job_service_account
            .clone()
            .unwrap_or_default();
        match ensured {
            Ok(Ensured::Created) => {
                let note = format!(
                    "ServiceAccount {name} created in namespace {ns} for the snapshot Jobs \
                     (labelled app.kubernetes.io/managed-by=sitecache; it mounts no token)"
                );
                tracing::info!(namespace = ns, account = %name, "{note}");
                self.event(EventType::Normal, "ServiceAccountCreated", "Snapshot", note);
            }
            Ok(Ensured::Updated) => {
                let note = format!(
                    "ServiceAccount {name} in namespace {ns} updated to the controller's \
                     configuration (--job-service-account-annotations)"
                );
                tracing::info!(namespace = ns, account = %name, "{note}");
                self.event(EventType::Normal, "ServiceAccountUpdated", "Snapshot", note);
            }
            Ok(Ensured::UpToDate | Ensured::Foreign) => {}
            Err(e) => {
                let note = format!(
                    "cannot make sure ServiceAccount {name} exists in namespace {ns} for the \
                     snapshot Jobs: {e}. Create it, grant the controller get, create and patch \
                     on serviceaccounts, or run it with --create-job-service-account=false"
                );
                tracing::warn!(namespace = ns, account = %name, "{note}");
                self.event(
                    EventType::Warning,
                    "ServiceAccountNotCreated",
                    "Snapshot",
                    note,
                );
            }
        }
    }

    /// The Job controller's latest `FailedCreate` message for `job`: why it cannot create the
    /// pod (Pod Security, a quota, a missing ServiceAccount).
    async fn failed_create(&self, ns: &str, job: &JobView) -> Option<String> {
        let events: Api<Event> = Api::namespaced(self.ctx.client.clone(), ns);
        let fields = format!("regarding.uid={},reason=FailedCreate", job.uid);
        let listed = events
            .list(&ListParams::default().fields(&fields))
            .await
            .inspect_err(|e| {
                tracing::warn!(job = %job.name, error = %e, "cannot list the snapshot Job's Events")
            })
            .ok()?;
        let seen = |e: &Event| {
            let series = e.series.as_ref().map(|s| s.last_observed_time.0);
            let last = e.deprecated_last_timestamp.as_ref().map(|t| t.0);
            let at = e.event_time.as_ref().map(|t| t.0);
            series
                .or(last)
                .or(at)
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
        };
        listed
            .items
            .into_iter()
            .max_by_key(seen)
            .and_then(|e| e.note)
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

    /// Starts the snapshot Job for generation `n` if a slot is free for it; `None` when it
    /// waits in the queue.
    async fn start(
        &mut self,
        prefix: &Prefix<'_>,
        trigger: Trigger,
        n: u64,
        place: Place,
        spec: &Validated,
    ) -> Result<Option<Activity>, Error> {
        let ctx = self.ctx;
        let ns = self.sc.namespace().unwrap_or_default();
        let name = job_name(&self.sc.name_any(), n);
        let key = (ns.clone(), name.clone());
        if !ctx.ask_slot(&self.oref, place, key.clone()) {
            return Ok(None);
        }
        // The Job writes under the prefix.
        if let Err(e) = self.confirm_claim(prefix).await {
            ctx.release(&key);
            return Err(e);
        }
        let request = schedule::pending_request(&self.sc);
        let plan = match rebuild_reason(
            &spec.rebuild,
            self.sc.spec.source.revision.as_deref(),
            &self.status,
        ) {
            Some(reason) => Err(reason),
            None => match &self.status.current {
                Some(current) => Ok(current.generation),
                None => Err(RebuildReason::FirstGeneration),
            },
        };
        let observed_user = observed_user(spec.run_as, self.status.current.as_ref());
        let job = snapshot_job(
            &self.sc,
            &JobInputs {
                settings: &ctx.settings,
                target: &spec.target,
                generation: n,
                base: plan.as_ref().map(|b| *b),
                request: request.as_deref(),
                timeout: spec.timeout,
                run_as: spec.run_as,
                observed_user,
            },
        );
        // The account it runs as, in a namespace onboarded after the install.
        let runs_as = job
            .spec
            .as_ref()
            .and_then(|j| j.template.spec.as_ref())
            .and_then(|p| p.service_account_name.as_deref());
        if runs_as.is_some() && runs_as == ctx.settings.job_service_account.as_deref() {
            self.ensure_job_account(&ns).await;
        }
        let created = async {
            // A Job's pod template is immutable: create it once, never re-apply over it. A Job
            // of that name that is not this SiteCache's is never taken for its own: the
            // SiteCache waits until it is gone (a previous incarnation's, which the garbage
            // collector removes, or one made by hand).
            let existing = self
                .jobs
                .get_opt(&name)
                .await
                .map_err(Error::kube("get snapshot Job"))?;
            if let Some(other) = existing.as_ref().filter(|j| !is_ours(j, &self.uid())) {
                let owner = other.labels().get(UID_LABEL).map_or_else(
                    || "no SiteCache".to_owned(),
                    |u| format!("the SiteCache with uid {u}"),
                );
                return Err(Error::Refused {
                    reason: "JobNameTaken",
                    message: format!(
                        "Job {name} exists and belongs to {owner}, not to this SiteCache: \
                         generation {n} starts once it is gone"
                    ),
                });
            }
            if existing.is_none() {
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
            ctx.release(&key);
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
        let how = match &plan {
            Err(reason) => {
                self.announcements
                    .push(Announcement::Rebuild(reason.label()));
                format!("from an empty cache ({reason})")
            }
            Ok(base) => format!("on top of generation {base}"),
        };
        let how = match observed_user {
            Some(u) => format!(
                "{how}; restoring and packing as uid {}, the owner of generation {}'s files",
                u.uid,
                self.status.current.as_ref().map_or(0, |c| c.generation)
            ),
            None => how,
        };
        let note = format!("Job {name} started for generation {n}: {why}; warming {how}");
        tracing::info!(generation = n, trigger = trigger.reason(), "{note}");
        self.event(EventType::Normal, "SnapshotStarted", "Snapshot", note);
        Ok(Some(Activity::Running {
            job: name,
            generation: n,
            stall: None,
        }))
    }
}

fn duration_until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now)).unwrap_or(Duration::ZERO)
}
