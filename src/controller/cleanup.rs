//! Deleting a SiteCache (the finalizer's work): stop its snapshot Job, then with `Delete` remove
//! every object under its prefix (only if the prefix is its own), confirm the prefix is empty,
//! and release the object. With `Retain`, release it at once.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::context::Context;
use super::error::Error;
use super::job::UID_LABEL;
use super::objects::Prefix;
use super::reconcile::{read_fresh, write_status};
use super::status::{self, DELETION_BLOCKED, PROGRESSING};
use crate::api::{DeletionPolicy, Phase, SiteCache};
use crate::storage::{Location, StorageError};

/// Cleans up after a SiteCache being deleted; `Ok` releases its finalizer.
pub async fn cleanup(obj: Arc<SiteCache>, ctx: &Context) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let Some((api, sc)) = read_fresh(&obj, ctx).await? else {
        return Ok(Action::await_change());
    };
    let uid = sc.uid().unwrap_or_default();
    ctx.not_waiting(&ObjectRef::from_obj(&sc));
    let mut c = Cleanup {
        ctx,
        api,
        ns,
        now: Timestamp::now(),
        sc,
    };
    let result = c.run(&uid).await;
    if result.is_ok() {
        ctx.set_claimed(&uid, false);
        ctx.set_stale(&uid, false);
    }
    result
}

struct Cleanup<'a> {
    ctx: &'a Context,
    api: Api<SiteCache>,
    ns: String,
    now: Timestamp,
    sc: SiteCache,
}

impl Cleanup<'_> {
    async fn run(&mut self, uid: &str) -> Result<Action, Error> {
        let stopping = self.stop_jobs(uid).await?;
        if !stopping.is_empty() {
            let message = format!("waiting for snapshot pods to stop: {}", stopping.join(", "));
            self.set_status(PROGRESSING, true, "StoppingSnapshot", &message)
                .await?;
            return Err(Error::CleanupPending(message));
        }
        if self.sc.spec.deletion_policy == DeletionPolicy::Retain {
            let note = match self.sc.status.as_ref().and_then(|s| s.url.as_deref()) {
                Some(url) => format!("deletionPolicy Retain: the objects under {url} are kept"),
                None => "deletionPolicy Retain: nothing to keep".to_owned(),
            };
            self.ctx
                .event(&self.sc, EventType::Normal, "Retained", "Delete", note)
                .await;
            return Ok(Action::await_change());
        }
        // Nothing was ever written without a resolved location.
        let Some(url) = self.sc.status.as_ref().and_then(|s| s.url.clone()) else {
            return Ok(Action::await_change());
        };
        let location: Location = match url.parse() {
            Ok(l) => l,
            Err(e) => {
                let note = format!("status.url {url:?} is not a location ({e}); nothing deleted");
                self.ctx
                    .event(
                        &self.sc,
                        EventType::Warning,
                        "NothingDeleted",
                        "Delete",
                        note,
                    )
                    .await;
                return Ok(Action::await_change());
            }
        };
        let mut target = self
            .ctx
            .settings
            .resolve(&self.sc)
            .map_err(|e| Error::CleanupPending(e.to_string()))?;
        target.location = location;
        let s3 = self.ctx.storage(&target).await;
        let prefix = Prefix {
            client: &s3,
            location: &target.location,
        };
        match self.purge_if_owned(&prefix, uid).await {
            Ok(action) => Ok(action),
            Err(Error::Storage(e)) => {
                let message = format!("cannot delete the objects under {}: {e}", target.location);
                self.set_status(DELETION_BLOCKED, true, storage_reason(&e), &message)
                    .await?;
                Err(Error::Storage(e))
            }
            Err(e) => Err(e),
        }
    }

    async fn purge_if_owned(&mut self, prefix: &Prefix<'_>, uid: &str) -> Result<Action, Error> {
        let wrote = self
            .sc
            .status
            .as_ref()
            .is_some_and(|s| s.latest_generation.is_some());
        match prefix.owner().await? {
            Some(owner) if owner.uid == uid => {}
            Some(owner) => {
                let note = format!("{} is owned by {owner}: nothing deleted", prefix.location);
                self.ctx
                    .event(
                        &self.sc,
                        EventType::Normal,
                        "PrefixNotOwned",
                        "Delete",
                        note,
                    )
                    .await;
                return Ok(Action::await_change());
            }
            // Claiming comes before any write; without a marker, only a SiteCache that recorded
            // generations has objects there (its marker was removed by hand).
            None if !wrote => return Ok(Action::await_change()),
            None => {}
        }
        self.set_status(
            PROGRESSING,
            true,
            "DeletingObjects",
            &format!("deleting every object under {}", prefix.location),
        )
        .await?;
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
            "deleted {} objects ({}) under {}; the prefix is empty",
            removed.objects,
            bytesize::ByteSize(removed.bytes).display().iec(),
            prefix.location
        );
        tracing::info!("{note}");
        self.ctx
            .event(
                &self.sc,
                EventType::Normal,
                "StorageDeleted",
                "Delete",
                note,
            )
            .await;
        Ok(Action::await_change())
    }

    /// Deletes the SiteCache's snapshot Jobs; returns the pods that still run.
    async fn stop_jobs(&self, uid: &str) -> Result<Vec<String>, Error> {
        let selector = format!("{UID_LABEL}={uid}");
        let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let list = jobs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::kube("list snapshot Jobs"))?;
        for job in list
            .items
            .iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
        {
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
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
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
            .map(|p| p.name_any())
            .collect();
        Ok(running)
    }

    async fn set_status(
        &mut self,
        type_: &str,
        value: bool,
        reason: &str,
        message: &str,
    ) -> Result<(), Error> {
        let mut new = self.sc.status.clone().unwrap_or_default();
        new.phase = Some(Phase::Deleting);
        new.active_job = None;
        status::set_condition(
            &mut new.conditions,
            type_,
            value,
            reason,
            message.to_owned(),
            self.sc.metadata.generation,
            self.now,
        );
        if type_ != DELETION_BLOCKED {
            status::clear_condition(&mut new.conditions, DELETION_BLOCKED);
        }
        if !status::changed(self.sc.status.as_ref(), &new) {
            return Ok(());
        }
        if type_ == DELETION_BLOCKED {
            tracing::warn!(%reason, "{message}");
            self.ctx
                .event(
                    &self.sc,
                    EventType::Warning,
                    "DeletionBlocked",
                    "Delete",
                    message.to_owned(),
                )
                .await;
        }
        write_status(&self.api, &self.sc, &new).await?;
        self.sc.status = Some(new);
        Ok(())
    }
}

fn storage_reason(e: &StorageError) -> &'static str {
    match e {
        StorageError::Timeout { .. } => "StorageTimeout",
        StorageError::Unreachable { .. } => "StorageUnreachable",
        _ => "StorageError",
    }
}
