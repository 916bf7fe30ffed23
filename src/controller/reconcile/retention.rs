//! Step 6, retention: after a promotion, the generations beyond `spec.retention.keep` expire;
//! expired and rejected generations are listed in `status.expiredGenerations` until their
//! objects are gone, so that a deletion that fails is retried by the next reconcile (with the
//! error policy's backoff), not after the next promotion. A superseded generation is deleted only
//! once `--retention-grace` has passed since the promotion that superseded it: a runner that read
//! `current.json` a moment before still finds its archive.

use super::Run;
use crate::controller::error::Error;
use crate::controller::jobs::JobView;
use crate::controller::objects::{Prefix, retention_victims};

impl Run<'_> {
    /// Marks generation `n` for deletion.
    pub(super) fn expire(&mut self, n: u64) {
        let expired = &mut self.status.expired_generations;
        if !expired.contains(&n) {
            expired.push(n);
            expired.sort_unstable();
        }
    }

    pub(super) async fn retention(
        &mut self,
        prefix: &Prefix<'_>,
        jobs: &[JobView],
    ) -> Result<(), Error> {
        if std::mem::take(&mut self.retention_due)
            && let Some(current) = self.status.current.as_ref().map(|c| c.generation)
        {
            let inventory = prefix.inventory().await?;
            let in_flight = jobs
                .iter()
                .filter(|j| j.is_running())
                .map(|j| j.generation)
                .min();
            let victims =
                retention_victims(&inventory, current, self.sc.spec.retention.keep, in_flight);
            self.status.generations.retain(|g| {
                inventory.committed.contains(&g.generation) && !victims.contains(&g.generation)
            });
            for n in victims {
                self.expire(n);
            }
        }
        // Never the current generation, nor one a running Job produces.
        let current = self.status.current.as_ref().map(|c| c.generation);
        self.status.expired_generations.retain(|&n| {
            Some(n) != current && !jobs.iter().any(|j| j.generation == n && j.is_running())
        });
        // A superseded generation is kept for the grace period after the promotion that
        // superseded it (the current one's); a rejected one, above the current, is not.
        let grace_until = self
            .status
            .current
            .as_ref()
            .and_then(|c| c.promoted_at.as_ref())
            .and_then(|t| {
                let grace =
                    jiff::SignedDuration::try_from(self.ctx.settings.retention_grace).ok()?;
                t.0.checked_add(grace).ok()
            })
            .filter(|&until| self.now < until);
        let in_grace = |n: u64| grace_until.is_some() && current.is_some_and(|c| n < c);
        let due: Vec<u64> = self
            .status
            .expired_generations
            .iter()
            .copied()
            .filter(|&n| !in_grace(n))
            .collect();
        if due.len() < self.status.expired_generations.len() {
            self.wake_at = grace_until;
        }
        if !due.is_empty() {
            self.confirm_claim(prefix).await?;
        }
        for n in due {
            let removed = prefix.delete_generations(&[n]).await?;
            self.count_removed(removed);
            tracing::info!(
                generation = n,
                objects = removed.objects,
                "deleted an expired generation"
            );
            self.status.expired_generations.retain(|&e| e != n);
        }
        Ok(())
    }
}
