//! Step 4, adopt: an empty status over a prefix that already holds generations (a recreated
//! SiteCache, or a lost status) continues after the highest one, with the promoted one as
//! current if its record checks out. A standby ([`follow`](Run::follow)) reads the prefix the
//! same way each time the promoted generation changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;

use super::Run;
use crate::controller::error::Error;
use crate::controller::objects::Prefix;
use crate::controller::status::generation_info;

/// What a prefix holds, as [`Run::read_prefix`] found it.
pub(super) struct Found {
    /// The highest generation with any object.
    pub highest: u64,
    /// The generation `current.json` promotes, if its record checks out.
    pub promoted: Option<u64>,
}

impl Run<'_> {
    pub(super) async fn adopt(&mut self, prefix: &Prefix<'_>) -> Result<(), Error> {
        let Some(found) = self.read_prefix(prefix).await? else {
            return Ok(());
        };
        let note = format!(
            "found generations up to {} under {}{}; the next snapshot is generation {}",
            found.highest,
            prefix.location,
            found
                .promoted
                .map(|n| format!(" (generation {n} promoted)"))
                .unwrap_or_default(),
            found.highest + 1
        );
        tracing::info!("{note}");
        self.event(EventType::Normal, "Adopted", "Adopt", note);
        Ok(())
    }

    /// Records in the status what the prefix holds: the highest generation, the promoted one
    /// and the retained ones below it. `None` when the prefix holds no generation.
    pub(super) async fn read_prefix(
        &mut self,
        prefix: &Prefix<'_>,
    ) -> Result<Option<Found>, Error> {
        let inventory = prefix.inventory().await?;
        let Some(highest) = inventory.highest() else {
            return Ok(None);
        };
        self.status.latest_generation = Some(highest);
        let mut promoted = None;
        match prefix.current().await? {
            // current.json and the status agree (step 6a need not read it again).
            None => self.agreed = self.status.current.is_none(),
            Some(Err(why)) => {
                let note = format!("{why}; no generation is taken as current");
                tracing::warn!("{note}");
                self.event(EventType::Warning, "CurrentRejected", "Adopt", note);
            }
            Some(Ok(current)) => {
                let n = current.manifest.generation;
                let mut info = generation_info(&current.manifest);
                info.promoted_at = Some(Time(current.promoted_at));
                self.status.current = Some(info.clone());
                let keep = self.sc.spec.retention.keep as usize;
                let mut generations = Vec::new();
                for &g in inventory
                    .committed
                    .iter()
                    .rev()
                    .filter(|&&g| g <= n)
                    .take(keep)
                {
                    // current.json holds the promoted generation's manifest, checked.
                    if g == n {
                        generations.push(info.clone());
                    } else if let Ok(manifest) = prefix.manifest(g).await? {
                        generations.push(generation_info(&manifest));
                    }
                }
                self.status.generations = generations;
                self.agreed = true;
                promoted = Some(n);
            }
        }
        Ok(Some(Found { highest, promoted }))
    }
}
