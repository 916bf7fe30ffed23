//! A standby's reconcile (`--standby`), in place of steps 3 to 7: it claims nothing, runs no
//! Job and deletes nothing. It reads who owns the prefix and which generation `current.json`
//! promotes (two GETs each `--standby-poll`), and reads the prefix again ([`Run::read_prefix`])
//! when the promoted generation changed, so that the status reports what the active cluster
//! promoted and a runner of this cluster can restore it. Jobs left from when it was active are
//! released, never recorded.

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::{Outcome, Run};
use crate::api::Freshness;
use crate::controller::error::Error;
use crate::controller::jobs::results;
use crate::controller::objects::Prefix;
use crate::controller::settings::schedule;
use crate::controller::settings::validate::Validated;
use crate::controller::status::Activity;

impl Run<'_> {
    pub(super) async fn follow(
        &mut self,
        prefix: &Prefix<'_>,
        spec: &Validated,
    ) -> Result<Outcome, Error> {
        let uid = self.uid();
        self.ctx.leave_queue(&self.oref);
        self.ctx.set_stalled(&uid, false);
        let owner = prefix.owner().await?;
        let promoted = match prefix.current().await? {
            Some(Ok(current)) => Some(current.manifest.generation),
            _ => None,
        };
        let known = self.status.current.as_ref().map(|c| c.generation);
        if promoted != known || self.status.latest_generation.is_none() {
            self.status.current = None;
            self.status.generations.clear();
            let found = self.read_prefix(prefix).await?;
            if let Some(n) = found.and_then(|f| f.promoted)
                && Some(n) != known
            {
                let note = format!(
                    "standby: generation {n} is promoted under {}{}",
                    prefix.location,
                    owner
                        .as_ref()
                        .map(|o| format!(" by {o}"))
                        .unwrap_or_default()
                );
                tracing::info!("{note}");
                self.event(EventType::Normal, "Followed", "Follow", note);
            }
        }
        let verdict = schedule::evaluate(
            &self.with_status(),
            &spec.schedule,
            self.now,
            self.backoff(),
        );
        self.ctx
            .set_stale(&uid, verdict.freshness != Freshness::Fresh);
        let activity = Activity::Standby {
            location: prefix.location.to_string(),
            owner: owner.map(|o| o.to_string()),
        };
        // Jobs left from when this controller was active are not a standby's to record: their
        // result finalizer goes, so that their TTL can remove them.
        let ns = self.sc.namespace().unwrap_or_default();
        for job in self
            .ctx
            .jobs_of(&uid)
            .iter()
            .filter(|j| j.holds_result && (!j.is_running() || j.deleting))
        {
            results::release(&self.ctx.client, &ns, job, None).await?;
        }
        let poll = self.ctx.settings.standby_poll.min(self.ctx.settings.resync);
        Ok((activity, Action::requeue(poll)))
    }
}
