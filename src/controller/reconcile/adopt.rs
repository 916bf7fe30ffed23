//! Step 4, adopt: an empty status over a prefix that already holds generations (a recreated
//! SiteCache, or a lost status) continues after the highest one, with the promoted one as
//! current if its record checks out.

use kube::runtime::events::EventType;

use super::Run;
use crate::controller::error::Error;
use crate::controller::objects::Prefix;
use crate::controller::status::generation_info;

impl Run<'_> {
    pub(super) async fn adopt(&mut self, prefix: &Prefix<'_>) -> Result<(), Error> {
        let inventory = prefix.inventory().await?;
        let Some(highest) = inventory.highest() else {
            return Ok(());
        };
        self.status.latest_generation = Some(highest);
        let mut promoted = None;
        match prefix.current().await? {
            None => {}
            Some(Err(why)) => {
                let note = format!("{why}; no generation is taken as current");
                tracing::warn!("{note}");
                self.event(EventType::Warning, "CurrentRejected", "Adopt", note);
            }
            Some(Ok(current)) => {
                let n = current.manifest.generation;
                self.status.current = Some(generation_info(&current.manifest));
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
                        generations.push(generation_info(&current.manifest));
                    } else if let Ok(manifest) = prefix.manifest(g).await? {
                        generations.push(generation_info(&manifest));
                    }
                }
                self.status.generations = generations;
                promoted = Some(n);
            }
        }
        let note = format!(
            "found generations up to {highest} under {}{}; the next snapshot is generation {}",
            prefix.location,
            promoted
                .map(|n| format!(" (generation {n} promoted)"))
                .unwrap_or_default(),
            highest + 1
        );
        tracing::info!("{note}");
        self.event(EventType::Normal, "Adopted", "Adopt", note);
        Ok(())
    }
}
