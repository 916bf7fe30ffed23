//! Step 5, after each finished Job: its containers' logs are kept in the bucket
//! (`P/logs/<n>.json`, `kubectl sitecache logs`), read from its pods while the result finalizer
//! still keeps them. Advice, not a step that can fail: a log that cannot be read or written is
//! logged, and the reconcile goes on.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;

use super::Run;
use crate::controller::jobs::JobView;
use crate::controller::jobs::logs::capture;
use crate::controller::objects::Prefix;
use crate::storage::MAX_DOCUMENT;
use crate::storage::joblog::{JOB_LOG_FORMAT, JobLog};

impl Run<'_> {
    /// Keeps the logs of `job`, whose result `status.lastSnapshot` now records.
    pub(super) async fn keep_logs(&mut self, job: &JobView, prefix: &Prefix<'_>) {
        let limit = self.ctx.settings.job_log_bytes;
        let Some(last) = self.status.last_snapshot.clone() else {
            return;
        };
        if limit == 0 || last.generation != job.generation {
            return;
        }
        // Written under the claim only, like everything under the prefix.
        let pods = match self.confirm_claim(prefix).await {
            Ok(()) => self.pods_of(job).await,
            Err(e) => Err(e),
        };
        let pods = match pods {
            Ok(pods) => pods,
            Err(e) => {
                tracing::warn!(job = %job.name, error = %e, "the Job's logs were not kept");
                return;
            }
        };
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            &self.sc.namespace().unwrap_or_default(),
        );
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let (pods, pods_left_out) = capture(&api, &pods, limit).await;
        let mut log = JobLog {
            format_version: JOB_LOG_FORMAT,
            generation: job.generation,
            job: job.name.clone(),
            result: last
                .result
                .map(|r| format!("{r:?}"))
                .unwrap_or_else(|| "Unknown".into()),
            reason: last.reason.unwrap_or_default(),
            message: last.message.unwrap_or_default(),
            captured_at: self.now,
            pods,
            pods_left_out,
        };
        log.fit(MAX_DOCUMENT as usize);
        let retained: BTreeSet<u64> = self
            .status
            .generations
            .iter()
            .map(|g| g.generation)
            .chain(self.status.current.as_ref().map(|c| c.generation))
            .collect();
        match prefix.keep_log(&log, &retained).await {
            Ok(deleted) => tracing::debug!(
                generation = job.generation,
                deleted,
                "kept the snapshot Job's logs"
            ),
            Err(e) => {
                tracing::warn!(job = %job.name, error = %e, "the Job's logs were not kept")
            }
        }
    }
}
