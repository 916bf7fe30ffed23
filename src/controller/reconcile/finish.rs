//! Step 5, finish: each finished snapshot Job is handled exactly once. Its generation is promoted
//! or rejected, or its failure counted; the status written at the end of the reconcile records
//! it, and from then on the Job is behind the status's watermark ([`handled_through`]) however
//! long it stays in the watch cache and whatever Job runs after it.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;

use super::{Announcement, Run};
use crate::api::{CacheOwner, LastSnapshot, SiteCacheStatus, SnapshotResult};
use crate::archive::{Manifest, Owner};
use crate::controller::error::Error;
use crate::controller::jobs::rebuild::growth_after;
use crate::controller::jobs::report::{JOB_UID_LABEL, Reported, reported, warm_image};
use crate::controller::jobs::results;
use crate::controller::jobs::{Base, JobState, JobView, is_ours};
use crate::controller::objects::{Prefix, Rejection};
use crate::controller::status::generation_info;

/// The highest generation whose Job has been handled. A Job is started only by a reconcile that
/// handled every finished Job before it and records the new one as `Running` in the same status
/// write, so while generation `n` runs, every Job below `n` is handled; once `n` is recorded as
/// finished, so is `n`.
pub fn handled_through(status: &SiteCacheStatus) -> u64 {
    match &status.last_snapshot {
        None => 0,
        Some(l) if l.result == Some(SnapshotResult::Running) => l.generation.saturating_sub(1),
        Some(l) => l.generation,
    }
}

impl Run<'_> {
    /// Handles the finished Jobs not handled yet, oldest first; returns every Job of the
    /// SiteCache. `legacy` is where a promoted generation's legacy copy goes, if anywhere.
    pub(super) async fn finish_jobs(
        &mut self,
        prefix: &Prefix<'_>,
        legacy: Option<&str>,
    ) -> Result<Vec<JobView>, Error> {
        let mut jobs = self.ctx.jobs_of(&self.uid());
        self.add_missing_job(&mut jobs).await?;
        let handled = handled_through(&self.status);
        for job in jobs
            .iter()
            .filter(|j| j.generation > handled && (!j.is_running() || j.deleting))
        {
            self.finish(job, prefix, legacy).await?;
        }
        let highest_job = jobs.iter().map(|j| j.generation).max().unwrap_or(0);
        let latest = self.status.latest_generation.unwrap_or(0).max(highest_job);
        self.status.latest_generation = (latest > 0).then_some(latest);
        Ok(jobs)
    }

    /// Step 5 for a SiteCache whose spec is refused now (a cron typo, a bucket no longer
    /// allowed): the Jobs it started when it was valid are still finished, at the location the
    /// status recorded, and what they promote is kept by retention as usual; no legacy copy is
    /// published while the spec is refused.
    pub(super) async fn finish_refused(&mut self) -> Result<(), Error> {
        let handled = handled_through(&self.status);
        let unhandled = self
            .ctx
            .jobs_of(&self.uid())
            .iter()
            .any(|j| j.generation > handled)
            || self
                .status
                .last_snapshot
                .as_ref()
                .is_some_and(|l| l.result == Some(SnapshotResult::Running));
        if !unhandled || self.status.url.is_none() {
            return Ok(());
        }
        let Ok(target) = self.ctx.settings.resolve(&self.sc) else {
            return Ok(());
        };
        let s3 = self.ctx.storage(&target).await;
        let prefix = Prefix::new(&s3, &target.location);
        let jobs = self.finish_jobs(&prefix, None).await?;
        self.retention(&prefix, &jobs).await
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
        // A Job of that name that is not this SiteCache's (a previous incarnation's, or made by
        // hand) is not the one the status names: that one is gone.
        let ours = found.filter(|j| is_ours(j, &self.uid()));
        jobs.push(match ours.as_ref().and_then(JobView::of) {
            Some(view) => view,
            None => JobView {
                name: last.job.clone(),
                uid: String::new(),
                generation: last.generation,
                request: None,
                base: Base::Unknown,
                state: JobState::Vanished,
                deleting: false,
                created: None,
                active: 0,
                failed: 0,
                holds_result: false,
                resource_version: None,
                finalizers: Vec::new(),
            },
        });
        jobs.sort_by_key(|j| j.generation);
        Ok(())
    }

    /// Records a finished Job: promotes its generation, rejects it, or counts the failure.
    async fn finish(
        &mut self,
        job: &JobView,
        prefix: &Prefix<'_>,
        legacy: Option<&str>,
    ) -> Result<(), Error> {
        let (start, completion) = match &job.state {
            JobState::Succeeded { start, completion } => (start.clone(), completion.clone()),
            JobState::Failed {
                start, completion, ..
            } => (start.clone(), completion.clone()),
            JobState::Vanished => (None, Some(Time(self.now))),
            // Deleted before it finished: finished once its pods have stopped.
            JobState::Running { start } if job.deleting => {
                if self.pods_still_run(job).await? {
                    return Ok(());
                }
                (start.clone(), Some(Time(self.now)))
            }
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
        // Verified but not promoted: why.
        let mut kept: Option<String> = None;
        let failure = match &job.state {
            JobState::Failed {
                reason, message, ..
            } => {
                let said = match self.reported(job).await? {
                    Reported::Failed(error) => format!("; the snapshot said: {error}"),
                    Reported::WarmFailed(said) => format!("; {said}"),
                    _ => String::new(),
                };
                Some((
                    reason.clone(),
                    format!("Job {} failed: {message}{said}", job.name),
                ))
            }
            JobState::Running { .. } => {
                self.expire(job.generation);
                Some((
                    "JobDeleted".to_owned(),
                    format!(
                        "Job {} was deleted before it finished; generation {} is not promoted",
                        job.name, job.generation
                    ),
                ))
            }
            // Its pods went with it: what it committed cannot be trusted, and is not kept.
            JobState::Vanished => {
                self.expire(job.generation);
                Some((
                    "JobLost".to_owned(),
                    format!(
                        "Job {} disappeared before its result was handled; generation {} is not \
                         promoted",
                        job.name, job.generation
                    ),
                ))
            }
            _ => {
                let checked = match self.reported(job).await? {
                    Reported::Committed(report) => prefix
                        .verify(job.generation, &report, self.sc.spec.snapshot.min_files)
                        .await?
                        .map(|manifest| (manifest, report.cache_owner)),
                    Reported::Conflicting => Err(Rejection::ConflictingReports {
                        job: job.name.clone(),
                    }),
                    Reported::Failed(_) | Reported::WarmFailed(_) | Reported::Nothing => {
                        Err(Rejection::NotReported {
                            job: job.name.clone(),
                        })
                    }
                };
                match checked {
                    Ok((manifest, owner)) => {
                        let image = warm_image(&self.pods_of(job).await?, &job.uid);
                        kept = self
                            .promote(job, &manifest, (owner, image), prefix, legacy)
                            .await?;
                        None
                    }
                    Err(rejection) => {
                        // Never promoted, never kept: retention deletes a rejected generation's
                        // objects (step 6).
                        self.expire(job.generation);
                        Some((
                            rejection.reason().to_owned(),
                            format!(
                                "generation {} was not promoted: {rejection}",
                                job.generation
                            ),
                        ))
                    }
                }
            }
        };
        let result = match &failure {
            None => SnapshotResult::Succeeded,
            Some(_) if matches!(job.state, JobState::Succeeded { .. }) => SnapshotResult::Rejected,
            Some(_) => SnapshotResult::Failed,
        };
        let (reason, message) = failure.clone().unwrap_or_else(|| match &kept {
            Some(why) => ("Verified".to_owned(), why.clone()),
            None => (
                "Promoted".to_owned(),
                format!("generation {} promoted", job.generation),
            ),
        });
        self.announcements.push(Announcement::JobFinished {
            result: match result {
                SnapshotResult::Succeeded => "succeeded",
                SnapshotResult::Rejected => "rejected",
                _ => "failed",
            },
            seconds,
        });
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
        if failure.is_some() {
            self.status.consecutive_failures = self.status.consecutive_failures.saturating_add(1);
            tracing::warn!(generation = job.generation, %reason, "{message}");
            self.event(EventType::Warning, &reason, "Snapshot", message);
        } else {
            self.status.consecutive_failures = 0;
        }
        self.keep_logs(job, prefix).await;
        Ok(())
    }

    /// Whether a pod of the Job has not stopped yet ([`results::stopped`]).
    async fn pods_still_run(&mut self, job: &JobView) -> Result<bool, Error> {
        let pods = self.pods_of(job).await?;
        Ok(pods.iter().any(|p| !results::stopped(p, self.now)))
    }

    /// The Job's pods, listed once per reconcile (step 9 releases them).
    pub(super) async fn pods_of(&mut self, job: &JobView) -> Result<Vec<Pod>, Error> {
        if job.uid.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(pods) = self.pods.get(&job.uid) {
            return Ok(pods.clone());
        }
        let pods: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            &self.sc.namespace().unwrap_or_default(),
        );
        let selector = format!("{JOB_UID_LABEL}={}", job.uid);
        let pods = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::kube("list snapshot pods"))?;
        self.pods.insert(job.uid.clone(), pods.items.clone());
        Ok(pods.items)
    }

    /// What the Job's snapshot container reported, from its pods' termination messages.
    async fn reported(&mut self, job: &JobView) -> Result<Reported, Error> {
        if job.uid.is_empty() {
            return Ok(Reported::Nothing);
        }
        Ok(reported(&self.pods_of(job).await?, &job.uid))
    }

    /// Promotes a verified generation (if it is newer than the current one and no pin holds
    /// another) and lists it first among the retained ones; retention follows in step 6.
    /// Returns why it was kept without being promoted, if it was.
    async fn promote(
        &mut self,
        job: &JobView,
        manifest: &Manifest,
        (owner, warm_image): (Option<Owner>, Option<String>),
        prefix: &Prefix<'_>,
        legacy: Option<&str>,
    ) -> Result<Option<String>, Error> {
        let n = manifest.generation;
        let mut info = generation_info(manifest);
        if let Some(image) = warm_image {
            info.runtime.get_or_insert_with(Default::default).warm_image = Some(image);
        }
        info.cache_owner = owner.map(|o| CacheOwner {
            uid: o.uid,
            gid: o.gid,
        });
        info.base_generation = match job.base {
            Base::Generation(b) => Some(b),
            Base::Empty | Base::Unknown => None,
        };
        let current = self.status.current.as_ref().map(|c| c.generation);
        let newer = current.is_none_or(|c| n > c);
        // A pin holds its generation, even one the spec has refused.
        let held = self.sc.spec.pin.as_ref().map(|p| p.generation);
        let kept = match held {
            Some(pinned) if newer => {
                let note = format!(
                    "generation {n} verified and kept, not promoted: spec.pin holds generation \
                     {pinned} (kubectl sitecache promote --generation {n} promotes it)"
                );
                tracing::info!(generation = n, "{note}");
                self.event(EventType::Normal, "Verified", "Snapshot", note.clone());
                Some(note)
            }
            _ => None,
        };
        if newer && kept.is_none() {
            self.confirm_claim(prefix).await?;
            if let Some(key) = legacy {
                self.check_legacy_key(prefix, key).await?;
            }
            prefix.promote(manifest, legacy, self.now).await?;
            self.agreed = true;
            info.promoted_at = Some(Time(self.now));
            self.status.growth =
                growth_after(self.status.growth.as_ref(), &info, job.base == Base::Empty);
            self.status.current = Some(info.clone());
            let growth = self.status.growth.as_ref().map(|g| g.percent);
            self.announcements.push(Announcement::Promoted {
                growth_percent: growth.filter(|_| job.base != Base::Empty),
            });
            let note = format!(
                "generation {n} promoted: {} files, {} compressed, from Job {}{}",
                manifest.files,
                bytesize::ByteSize(manifest.size_bytes).display().iec(),
                job.name,
                match (&job.base, growth) {
                    (Base::Empty, _) => ", built from an empty cache".to_owned(),
                    (_, Some(p)) => format!(", {p:+}% since the last rebuild"),
                    _ => String::new(),
                }
            );
            tracing::info!(generation = n, "{note}");
            self.event(EventType::Normal, "Promoted", "Promote", note);
        }
        let mut generations = vec![info];
        generations.extend(
            self.status
                .generations
                .iter()
                .filter(|g| g.generation < n)
                .cloned(),
        );
        self.status.generations = generations;
        self.retention_due = true;
        Ok(kept)
    }

    /// The legacy key must not lie under a prefix another SiteCache owns (checked against
    /// storage when it is written: owners change).
    pub(super) async fn check_legacy_key(
        &self,
        prefix: &Prefix<'_>,
        key: &str,
    ) -> Result<(), Error> {
        match prefix.owner_of_key(key).await? {
            Some((owned, owner)) if owner.uid != self.uid() => Err(Error::Refused {
                reason: "InvalidLegacyKey",
                message: format!(
                    "spec.legacy.publishKey {key:?} lies under s3://{}/{owned}, which {owner} \
                     owns: nothing is published there",
                    prefix.location.bucket
                ),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(generation: u64, result: SnapshotResult) -> SiteCacheStatus {
        SiteCacheStatus {
            last_snapshot: Some(LastSnapshot {
                generation,
                job: format!("shop-g{generation}"),
                result: Some(result),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_running_retry_keeps_the_failed_job_behind_the_watermark() {
        assert_eq!(handled_through(&SiteCacheStatus::default()), 0);
        // Generation 2 failed and was recorded.
        assert_eq!(handled_through(&last(2, SnapshotResult::Failed)), 2);
        // Its retry, generation 3, runs: 2 stays handled.
        assert_eq!(handled_through(&last(3, SnapshotResult::Running)), 2);
        assert_eq!(handled_through(&last(3, SnapshotResult::Succeeded)), 3);
        assert_eq!(handled_through(&last(3, SnapshotResult::Rejected)), 3);
    }
}
