//! Deleting a SiteCache (the finalizer's work), in steps:
//!
//! 1. **Read** the SiteCache from the watch cache.
//! 2. **Stop** its snapshot Jobs (releasing their result finalizer) and wait for their pods, at
//!    most `--snapshot-pod-stop-timeout` after the SiteCache was deleted (a pod on a lost node
//!    never stops).
//! 3. **Retain**: with `deletionPolicy: Retain`, or on a standby controller, release the
//!    SiteCache and keep the objects.
//! 4. **Locate** the prefix (`status.url`, else where the spec puts it: a claim may have been
//!    written before a status that was never written, or was lost).
//! 5. **Ownership**: a prefix another SiteCache owns is left alone.
//! 6. **Purge** every object of this SiteCache's under the prefix, never one under another
//!    SiteCache's marker, and confirm that none is left.
//! 7. **Status**: when deletion cannot finish, `DeletionBlocked=True` with the reason, written
//!    once, only when it changed: retries with the same error write nothing, so nothing wakes
//!    the SiteCache but the error policy's backoff. The condition stays until deletion
//!    succeeds (and the SiteCache is gone).

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::api::{DeletionPolicy, Phase, SiteCache};
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::controller::jobs::results;
use crate::controller::jobs::{JobView, UID_LABEL};
use crate::controller::objects::Prefix;
use crate::controller::objects::ownership::OwnerRecord;
use crate::controller::reconcile::write_status;
use crate::controller::status::{self, DELETION_BLOCKED};

/// The reason of `DeletionBlocked` while snapshot pods have not stopped.
const PODS_RUNNING: &str = "SnapshotPodRunning";

/// Cleans up after a SiteCache being deleted; `Ok` releases its finalizer.
pub async fn cleanup(obj: Arc<SiteCache>, ctx: &Context) -> Result<Action, Error> {
    // 1. Read.
    let sc = SiteCache::clone(&obj);
    let api = Api::namespaced(ctx.client.clone(), &sc.namespace().unwrap_or_default());
    let uid = sc.uid().unwrap_or_default();
    ctx.leave_queue(&ObjectRef::from_obj(&sc));
    let mut c = Cleanup {
        ctx,
        api,
        now: status::now(),
        sc,
        blocked: None,
        events: Vec::new(),
    };
    let result = c.steps(&uid).await;
    if result.is_ok() {
        ctx.set_claimed(&uid, false);
        ctx.set_stale(&uid, false);
        ctx.set_stalled(&uid, false);
    }
    // 7. Status.
    c.conclude(result).await
}

struct Cleanup<'a> {
    ctx: &'a Context,
    api: Api<SiteCache>,
    now: Timestamp,
    sc: SiteCache,
    /// Why deletion cannot finish yet, when it is not an error of its own.
    blocked: Option<(String, String)>,
    /// Events to publish once the status is written (or the SiteCache released).
    events: Vec<(EventType, &'static str, String)>,
}

impl Cleanup<'_> {
    async fn steps(&mut self, uid: &str) -> Result<Action, Error> {
        // 2. Stop.
        self.stop_snapshots(uid).await?;
        // 3. Retain (a standby deletes nothing: the objects are the active cluster's).
        let why_keep = if self.ctx.settings.standby {
            Some("this controller is a standby (--standby)")
        } else if self.sc.spec.deletion_policy == DeletionPolicy::Retain {
            Some("deletionPolicy Retain")
        } else {
            None
        };
        if let Some(why) = why_keep {
            let note = match self.sc.status.as_ref().and_then(|s| s.url.as_deref()) {
                Some(url) => format!("{why}: the objects under {url} are kept"),
                None => format!("{why}: nothing to keep"),
            };
            self.events.push((EventType::Normal, "Retained", note));
            return Ok(Action::await_change());
        }
        // 4. Locate: `status.url`, or, without one (a status lost, or a claim whose status write
        // never happened), where the spec and the controller's defaults put the prefix: the
        // marker then says whether anything there is this SiteCache's.
        let target = match self.ctx.settings.resolve(&self.sc) {
            Ok(target) => target,
            Err(e) => {
                let note = format!("{e}; nothing deleted");
                self.events
                    .push((EventType::Warning, "NothingDeleted", note));
                return Ok(Action::await_change());
            }
        };
        let s3 = self.ctx.storage(&target).await;
        let prefix = Prefix::new(&s3, &target.location);
        // 5. Ownership.
        if !self.owns(&prefix).await? {
            return Ok(Action::await_change());
        }
        // 6. Purge.
        self.purge(&prefix).await
    }

    /// Deletes the SiteCache's unfinished snapshot Jobs; `Err` while their pods still run, until
    /// the stop timeout, after which deletion goes on without them.
    async fn stop_snapshots(&mut self, uid: &str) -> Result<(), Error> {
        let running = self.stop_jobs(uid).await?;
        if running.is_empty() {
            return Ok(());
        }
        let deleted = self
            .sc
            .metadata
            .deletion_timestamp
            .as_ref()
            .map_or(self.now, |t| t.0);
        let timeout = SignedDuration::try_from(self.ctx.settings.snapshot_pod_stop_timeout)
            .unwrap_or(SignedDuration::MAX);
        let until = deleted.saturating_add(timeout).unwrap_or(Timestamp::MAX);
        let pods = running.join(", ");
        if self.now < until {
            let message = format!(
                "waiting for snapshot pods to stop: {pods}; deletion goes on without them at {} \
                 (--snapshot-pod-stop-timeout)",
                until.round(jiff::Unit::Second).unwrap_or(until)
            );
            self.blocked = Some((PODS_RUNNING.to_owned(), message.clone()));
            return Err(Error::CleanupPending(message));
        }
        // Said whether or not this controller saw the wait (it may have been down for it), once:
        // a cleanup retried after it (a purge that failed) abandons the same pods again.
        if self.ctx.first_abandonment(uid) {
            let note = format!(
                "snapshot pods did not stop within --snapshot-pod-stop-timeout ({}): {pods}; \
                 deleting the objects without waiting for them (a pod that is still running \
                 may write objects after)",
                humantime(self.ctx.settings.snapshot_pod_stop_timeout)
            );
            tracing::warn!("{note}");
            self.events
                .push((EventType::Warning, "SnapshotPodAbandoned", note));
        }
        Ok(())
    }

    /// Whether the prefix is this SiteCache's to empty.
    async fn owns(&mut self, prefix: &Prefix<'_>) -> Result<bool, Error> {
        let wrote = self
            .sc
            .status
            .as_ref()
            .is_some_and(|s| s.latest_generation.is_some());
        match prefix.owner().await? {
            // This SiteCache of this cluster (a marker written before markers named clusters
            // is matched by uid alone).
            Some(owner) if owner.is(&OwnerRecord::of(&self.sc, &self.ctx.cluster, self.now)) => {
                Ok(true)
            }
            Some(owner) => {
                let note = format!("{} is owned by {owner}: nothing deleted", prefix.location);
                self.events
                    .push((EventType::Normal, "PrefixNotOwned", note));
                Ok(false)
            }
            // Claiming comes before any write; without a marker, only a SiteCache that recorded
            // generations has objects there (its marker was removed by hand).
            None => Ok(wrote),
        }
    }

    async fn purge(&mut self, prefix: &Prefix<'_>) -> Result<Action, Error> {
        let latest = self
            .sc
            .status
            .as_ref()
            .and_then(|s| s.latest_generation)
            .unwrap_or(0);
        let Some(removed) = prefix.purge(latest).await? else {
            return Err(Error::CleanupPending(format!(
                "objects appeared under {} while deleting; deleting again",
                prefix.location
            )));
        };
        self.ctx.metrics.objects_deleted.inc_by(removed.objects);
        self.ctx.metrics.bytes_deleted.inc_by(removed.bytes);
        let note = format!(
            "deleted {} objects ({}) under {}; nothing of this SiteCache's is left",
            removed.objects,
            bytesize::ByteSize(removed.bytes).display().iec(),
            prefix.location
        );
        tracing::info!("{note}");
        self.events
            .push((EventType::Normal, "StorageDeleted", note));
        Ok(Action::await_change())
    }

    /// Deletes the SiteCache's snapshot Jobs; returns the pods that still run, with their nodes.
    async fn stop_jobs(&self, uid: &str) -> Result<Vec<String>, Error> {
        let ns = self.sc.namespace().unwrap_or_default();
        let selector = format!("{UID_LABEL}={uid}");
        let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &ns);
        let list = jobs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::kube("list snapshot Jobs"))?;
        for job in &list.items {
            // The SiteCache is going: its Jobs' results are of no use any more, and the result
            // finalizer must not keep the Jobs and their pods.
            if let Some(view) = JobView::of(job)
                && view.holds_result
            {
                results::release(&self.ctx.client, &ns, &view, None).await?;
            }
            if job.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let finished = job
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                    })
                });
            if !finished {
                tracing::info!(job = %job.name_any(), "stopping the snapshot Job");
                match jobs
                    .delete(&job.name_any(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => return Err(Error::kube("delete snapshot Job")(e)),
                }
            }
        }
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let running = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::kube("list snapshot pods"))?
            .items
            .into_iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .map(|p| {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                match node {
                    Some(node) => format!("{} (on node {node})", p.name_any()),
                    None => p.name_any(),
                }
            })
            .collect();
        Ok(running)
    }

    /// The reason of `DeletionBlocked` as the status has it.
    fn blocked_reason(&self) -> Option<&str> {
        self.sc
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == DELETION_BLOCKED && c.status == "True")
            .map(|c| c.reason.as_str())
    }

    /// Writes `DeletionBlocked` when deletion cannot finish (once per change), then publishes
    /// the Events. The deletion's own error wins over a failed status write, which is logged.
    async fn conclude(mut self, result: Result<Action, Error>) -> Result<Action, Error> {
        let blocked = match (&result, self.blocked.take()) {
            (Ok(_), _) => None,
            (Err(_), Some(blocked)) => Some(blocked),
            (Err(e), None) => e.reason().map(|reason| {
                let message = match e {
                    Error::Storage(s) => format!(
                        "cannot delete the objects under {}: {s}",
                        self.sc
                            .status
                            .as_ref()
                            .and_then(|s| s.url.as_deref())
                            .unwrap_or("the prefix")
                    ),
                    other => other.to_string(),
                };
                (reason, message)
            }),
        };
        if let Some((reason, message)) = blocked {
            let mut new = self.sc.status.clone().unwrap_or_default();
            new.phase = Some(Phase::Deleting);
            new.active_job = None;
            status::set_condition(
                &mut new.conditions,
                DELETION_BLOCKED,
                true,
                &reason,
                message.clone(),
                self.sc.metadata.generation,
                self.now,
            );
            if status::changed(self.sc.status.as_ref(), &new) {
                match write_status(&self.api, &self.sc, &new).await {
                    Ok(written) => {
                        self.ctx.metrics.status_writes.inc();
                        self.ctx.await_own_write(&written).await;
                    }
                    Err(write) => {
                        tracing::warn!(
                            "deletion cannot finish ({message}), and the status write failed: \
                             {write}"
                        );
                        return result;
                    }
                }
                if self.blocked_reason() != Some(reason.as_str()) {
                    tracing::warn!(%reason, "{message}");
                    self.events
                        .push((EventType::Warning, "DeletionBlocked", message));
                }
            }
        }
        for (type_, reason, note) in std::mem::take(&mut self.events) {
            self.ctx
                .event(&self.sc, type_, reason, "Delete", note)
                .await;
        }
        result
    }
}

/// A duration as the flags spell it (`5m`, `90s`).
fn humantime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}
