//! Reconciling one live SiteCache, in the numbered steps of `docs/controller.md`:
//!
//! 1. **Read** the SiteCache from the watch cache (the object the reconcile was given).
//! 2. **Validate** its spec against the controller's configuration ([`validate`]).
//! 3. **Claim** its prefix ([`claim`]).
//! 4. **Adopt** what the prefix holds when the status knows nothing of it ([`adopt`]).
//! 5. **Finish** each finished snapshot Job, exactly once ([`finish`]), keeping its logs
//!    ([`logs`]); then make the generation `spec.pin` names current ([`pin`]).
//! 6. **Retention**: delete expired and rejected generations ([`retention`]), once `current.json`
//!    is known to name the status's current generation ([`agree`]: also after each start).
//! 7. **Decide**: follow the running Job, or start one if a snapshot is due ([`decide`]).
//! 8. **Status**: derive it and write it if it changed; then publish the Events and count the
//!    metrics of what this reconcile did ([`Run::conclude`]).
//! 9. **Release** the finished Jobs whose result the status now records: their finalizer kept
//!    them, and the pods holding their reports, through any deletion until now ([`release`]).
//!
//! A standby controller (`--standby`) follows the prefix instead of steps 3 to 7 ([`standby`]).
//!
//! The steps build one [`Run`]: the SiteCache as read, the status as it is being rebuilt, and
//! what to announce once that status is written. Nothing is announced before: a reconcile whose
//! status write is refused (the object changed meanwhile) is done again from the new version,
//! and its Events and counts come from that one, once.

mod adopt;
mod agree;
mod claim;
mod decide;
mod finish;
mod logs;
mod pin;
mod release;
mod retention;
mod standby;

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::api::{SiteCache, SiteCacheStatus, SnapshotResult};
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::controller::objects::{Prefix, Removed};
use crate::controller::settings::identity::MANAGER;
use crate::controller::settings::schedule::{self, Backoff};
use crate::controller::settings::validate::{Invalid, Validated, validate};
use crate::controller::status::{self, Activity, Trouble};

/// Reconciles a SiteCache that is not being deleted.
pub async fn apply(obj: Arc<SiteCache>, ctx: &Context) -> Result<Action, Error> {
    // 1. Read.
    let api = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let mut run = Run::new(ctx, api, SiteCache::clone(&obj));
    let outcome = run.steps().await;
    // 8. Status.
    run.conclude(outcome).await
}

/// What a step decided the SiteCache is doing, and when to look at it again.
type Outcome = (Activity, Action);

/// One reconcile of one SiteCache.
struct Run<'a> {
    ctx: &'a Context,
    api: Api<SiteCache>,
    jobs: Api<Job>,
    /// The SiteCache as read (its status is what the last write left).
    sc: SiteCache,
    oref: ObjectRef<SiteCache>,
    /// The status as this reconcile rebuilds it.
    status: SiteCacheStatus,
    /// The validated spec, once step 2 passed.
    spec: Option<Validated>,
    now: Timestamp,
    /// What to announce once the status is written.
    announcements: Vec<Announcement>,
    /// A generation was promoted: retention has to look at the prefix.
    retention_due: bool,
    /// The ownership marker was read (or written) by this reconcile and names this SiteCache.
    confirmed: bool,
    /// `current.json` was found to name the status's current generation, or made to.
    agreed: bool,
    /// When to look again whatever is due (retention's grace period ends then).
    wake_at: Option<Timestamp>,
    /// The pods of the Jobs this reconcile listed, by Job uid (step 9 releases them).
    pods: std::collections::HashMap<String, Vec<k8s_openapi::api::core::v1::Pod>>,
}

/// An Event to publish or a metric to count once the status that records it is written.
enum Announcement {
    Event {
        type_: EventType,
        reason: String,
        action: &'static str,
        note: String,
    },
    JobFinished {
        result: &'static str,
        seconds: Option<f64>,
    },
    Promoted {
        growth_percent: Option<i64>,
    },
    Rebuild(&'static str),
}

impl<'a> Run<'a> {
    fn new(ctx: &'a Context, api: Api<SiteCache>, sc: SiteCache) -> Self {
        Run {
            ctx,
            jobs: Api::namespaced(ctx.client.clone(), &sc.namespace().unwrap_or_default()),
            oref: ObjectRef::from_obj(&sc),
            status: sc.status.clone().unwrap_or_default(),
            spec: None,
            api,
            sc,
            now: status::now(),
            announcements: Vec::new(),
            retention_due: false,
            confirmed: false,
            agreed: false,
            wake_at: None,
            pods: Default::default(),
        }
    }

    /// Steps 2 to 7.
    async fn steps(&mut self) -> Result<Outcome, Error> {
        // 2. Validate.
        let spec = match validate(&self.sc, &self.ctx.settings) {
            Ok(spec) => self.spec.insert(spec).clone(),
            Err(invalid) => {
                if matches!(invalid, Invalid::EndpointNotAllowed { .. }) {
                    // No longer accepted (the allow-list changed): no one is sent there.
                    self.status.endpoint = None;
                }
                // What runs is finished whatever the spec says now.
                self.finish_refused().await?;
                return Ok(self.blocked(invalid.reason(), invalid.to_string()));
            }
        };
        self.status.url = Some(spec.target.location.to_string());
        // Accepted (allowed) by the validation: what the plugin may send a user's requests to.
        self.status.endpoint = self.sc.spec.storage.endpoint.clone();
        let s3 = self.ctx.storage(&spec.target).await;
        let prefix = Prefix::new(&s3, &spec.target.location);
        // A standby follows the cluster that owns the prefix, and writes nothing.
        if self.ctx.settings.standby {
            return self.follow(&prefix, &spec).await;
        }
        // 3. Claim.
        let first_in_process = !self.ctx.is_claimed(&self.uid());
        if let Some(refused) = self.claim(&prefix).await? {
            return Ok(refused);
        }
        // 4. Adopt.
        if self.status.latest_generation.is_none() {
            self.adopt(&prefix).await?;
        }
        // 5. Finish.
        let jobs = self
            .finish_jobs(&prefix, spec.legacy_key.as_deref())
            .await?;
        // 5b. Pin.
        self.pin(&prefix, &spec).await?;
        // 6a. Agree: after a start, and before retention deletes anything.
        if first_in_process || !self.status.expired_generations.is_empty() || self.retention_due {
            self.agree(&prefix, &spec).await?;
        }
        // 6. Retention.
        self.retention(&prefix, &jobs).await?;
        // 7. Decide.
        self.decide(&prefix, &jobs, &spec).await
    }

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

    /// What the status says the SiteCache is doing (when a step failed before deciding).
    fn current_activity(&self) -> Activity {
        match (&self.status.active_job, &self.status.last_snapshot) {
            (Some(job), Some(last)) if last.result == Some(SnapshotResult::Running) => {
                Activity::Running {
                    job: job.clone(),
                    generation: last.generation,
                    stall: None,
                }
            }
            _ => Activity::Idle,
        }
    }

    /// Announces an Event once the status is written.
    fn event(&mut self, type_: EventType, reason: &str, action: &'static str, note: String) {
        self.announcements.push(Announcement::Event {
            type_,
            reason: reason.to_owned(),
            action,
            note,
        });
    }

    fn count_removed(&self, removed: Removed) {
        self.ctx.metrics.objects_deleted.inc_by(removed.objects);
        self.ctx.metrics.bytes_deleted.inc_by(removed.bytes);
    }

    /// The SiteCache cannot be served until its spec, the controller's configuration or another
    /// SiteCache changes.
    fn blocked(&mut self, reason: &str, message: String) -> Outcome {
        self.ctx.leave_queue(&self.oref);
        self.ctx.set_stalled(&self.uid(), false);
        let activity = Activity::Blocked {
            reason: reason.to_owned(),
            message,
        };
        (activity, Action::requeue(self.ctx.settings.resync))
    }

    /// Step 8, status: records what the steps achieved (progress made before a failure
    /// included) and the error they ran into, writes the status if it changed, then announces.
    /// The reconcile's own error wins over a failed status write, which is logged.
    async fn conclude(mut self, outcome: Result<Outcome, Error>) -> Result<Action, Error> {
        let (activity, trouble, result) = match outcome {
            Ok((activity, action)) => (activity, None, Ok(action)),
            Err(e) => {
                let trouble = e.reason().map(|reason| Trouble {
                    reason,
                    message: e.to_string(),
                });
                (self.current_activity(), trouble, Err(e))
            }
        };
        match self.write_status(&activity, trouble.as_ref()).await {
            Ok(()) => {
                self.announce().await;
                // 9. Release.
                self.release_results().await;
                result
            }
            Err(write) => match result {
                Err(e) => {
                    tracing::warn!(error = %e, "the reconcile failed, and so did its status write: {write}");
                    Err(e)
                }
                Ok(_) => Err(write),
            },
        }
    }

    /// Derives the rest of the status and writes it if it changed. A newly blocked SiteCache gets
    /// a Warning Event.
    async fn write_status(
        &mut self,
        activity: &Activity,
        trouble: Option<&Trouble>,
    ) -> Result<(), Error> {
        let verdict = match (activity, &self.spec) {
            (Activity::Blocked { .. }, _) | (_, None) => None,
            (_, Some(spec)) => Some(schedule::evaluate(
                &self.with_status(),
                &spec.schedule,
                self.now,
                self.backoff(),
            )),
        };
        let mut new = self.status.clone();
        status::derive(
            &mut new,
            &status::Observed {
                verdict: verdict.as_ref(),
                activity,
                trouble,
                holds: status::Holds::of(&self.sc.spec),
                observed_generation: self.sc.metadata.generation,
                now: self.now,
            },
        );
        let old = self.sc.status.as_ref();
        if !status::changed(old, &new) {
            return Ok(());
        }
        // A SiteCache newly blocked, or whose Job newly stalls, gets a Warning Event.
        let warning = match activity {
            Activity::Blocked { reason, message } => {
                Some((reason.as_str(), message.clone(), "Reconcile"))
            }
            Activity::Running {
                stall: Some(stall), ..
            } => Some((stall.reason(), stall.message(), "Snapshot")),
            _ => None,
        };
        if let Some((reason, message, action)) = warning {
            let was = old
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == status::DEGRADED))
                .map(|c| c.reason.as_str());
            if was != Some(reason) {
                tracing::warn!(%reason, "{message}");
                self.event(EventType::Warning, reason, action, message);
            }
        }
        let written = write_status(&self.api, &self.sc, &new).await?;
        self.ctx.metrics.status_writes.inc();
        self.ctx.await_own_write(&written).await;
        Ok(())
    }

    /// Publishes the Events and counts the metrics of what this reconcile recorded.
    async fn announce(&mut self) {
        let metrics = &self.ctx.metrics;
        for a in std::mem::take(&mut self.announcements) {
            match a {
                Announcement::Event {
                    type_,
                    reason,
                    action,
                    note,
                } => self.ctx.event(&self.sc, type_, &reason, action, note).await,
                Announcement::JobFinished { result, seconds } => {
                    metrics.job_finished(result, seconds)
                }
                Announcement::Promoted { growth_percent } => {
                    metrics.generations_promoted.inc();
                    if let Some(p) = growth_percent {
                        metrics.cache_growth.observe(p as f64);
                    }
                }
                Announcement::Rebuild(reason) => metrics.rebuild(reason),
            }
        }
    }
}

/// Writes the status with server-side apply under the controller's field manager, on condition
/// that the SiteCache is still the version `read` (optimistic concurrency): a status computed from
/// an object that changed meanwhile (a spec edit, a status reset) is not written over it. A
/// conflict is [`Error::Conflict`] and the next reconcile starts from the new version. Returns
/// the SiteCache as written, whose version the next write in the same reconcile must carry.
pub async fn write_status(
    api: &Api<SiteCache>,
    read: &SiteCache,
    status: &SiteCacheStatus,
) -> Result<SiteCache, Error> {
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
        Ok(written) => Ok(written),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict),
        Err(e) => Err(Error::kube("write SiteCache status")(e)),
    }
}
