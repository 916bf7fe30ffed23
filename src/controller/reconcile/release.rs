//! Step 9, release: once the status records a finished Job's result, the Job and its pods lose
//! the result finalizer ([`results`](crate::controller::jobs::results)), so that its TTL, a `kubectl
//! delete` or a GitOps prune can remove them. Until then they stay, whatever deleted them and
//! however long the controller was down: the next reconcile finishes them from what they hold.

use kube::ResourceExt;

use super::Run;
use super::finish::handled_through;
use crate::controller::jobs::results;

impl Run<'_> {
    /// Releases every finished Job at or below the status's watermark that still holds its
    /// result. A failure is logged: a later reconcile (the Job's deletion wakes one) tries again.
    pub(super) async fn release_results(&self) {
        let handled = handled_through(&self.status);
        let ns = self.sc.namespace().unwrap_or_default();
        for job in self.ctx.jobs_of(&self.uid()).iter().filter(|j| {
            j.holds_result
                && j.generation <= handled
                && (!j.is_running() || j.deleting)
                && !self.ctx.released(&j.uid)
        }) {
            let pods = self.pods.get(&job.uid).map(Vec::as_slice);
            match results::release(&self.ctx.client, &ns, job, pods).await {
                Ok(()) => self.ctx.note_released(&job.uid),
                Err(e) => {
                    tracing::warn!(job = %job.name, error = %e, "cannot release the snapshot Job's result")
                }
            }
        }
    }
}
