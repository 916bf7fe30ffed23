//! Step 6a, agree: `current.json` names the generation the status records as current. They part
//! when a promotion wrote `current.json` and its status write never happened (the controller
//! was killed between the two, or the write failed) and the Job's result then was lost (its
//! result finalizer removed by hand: its generation is then expired), after a hand edit, or
//! when the status was restored from a backup older than the bucket. A newer generation that
//! nothing expired is followed (`CurrentAdopted`); otherwise the status wins: it records only
//! what a snapshot reported and the controller verified. Checked on the first reconcile of each
//! SiteCache in a process (a start-up, a leader handover) and before retention deletes
//! anything, so that retention never deletes what `current.json` names.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;

use super::Run;
use crate::controller::error::Error;
use crate::controller::objects::Prefix;
use crate::controller::settings::validate::Validated;
use crate::controller::status::generation_info;
use crate::storage;

impl Run<'_> {
    pub(super) async fn agree(
        &mut self,
        prefix: &Prefix<'_>,
        spec: &Validated,
    ) -> Result<(), Error> {
        if self.agreed {
            return Ok(());
        }
        let found = prefix.current().await?;
        let want = self.status.current.clone();
        let named = match &found {
            Some(Ok(c)) => Some(c.manifest.generation),
            _ => None,
        };
        let unreadable = matches!(found, Some(Err(_)));
        if named == want.as_ref().map(|c| c.generation) && !unreadable {
            self.agreed = true;
            return Ok(());
        }
        // A promotion newer than the status's that nothing expired (its Job was not lost or
        // rejected): the status is behind, not current.json (a status restored from a backup
        // older than the bucket). The status follows current.json, as adoption does.
        // Not under a pin: the pinned generation is current whatever is newer.
        if let Some(Ok(c)) = found.as_ref().filter(|_| spec.pin.is_none()) {
            let n = c.manifest.generation;
            let newer = want.as_ref().is_none_or(|w| n > w.generation);
            if newer && !self.status.expired_generations.contains(&n) {
                let mut info = generation_info(&c.manifest);
                info.promoted_at = Some(Time(c.promoted_at));
                self.status.current = Some(info.clone());
                self.status.generations.retain(|g| g.generation < n);
                self.status.generations.insert(0, info);
                let latest = self.status.latest_generation.unwrap_or(0).max(n);
                self.status.latest_generation = Some(latest);
                let note = format!(
                    "{} names generation {n}, newer than the status's {}: the status follows it",
                    prefix.location.current_key(),
                    want.map_or("none".to_owned(), |w| format!(
                        "generation {}",
                        w.generation
                    ))
                );
                tracing::warn!("{note}");
                self.event(EventType::Warning, "CurrentAdopted", "Adopt", note);
                self.agreed = true;
                return Ok(());
            }
        }
        self.confirm_claim(prefix).await?;
        let key = prefix.location.current_key();
        let was = match &found {
            None => "nothing".to_owned(),
            Some(Ok(c)) => format!("generation {}", c.manifest.generation),
            Some(Err(why)) => format!("nothing usable ({why})"),
        };
        let note = match want {
            Some(info) => {
                let n = info.generation;
                let manifest = match prefix.manifest_as_recorded(&info).await? {
                    Ok(m) => m,
                    Err(why) => {
                        return Err(Error::Refused {
                            reason: "CurrentDisagrees",
                            message: format!(
                                "{key} names {was}, but the status records generation {n} as \
                                 promoted, and it cannot be promoted again: {why}"
                            ),
                        });
                    }
                };
                let legacy = spec.legacy_key.as_deref();
                if let Some(legacy) = legacy {
                    self.check_legacy_key(prefix, legacy).await?;
                }
                prefix.promote(&manifest, legacy, self.now).await?;
                format!(
                    "{key} named {was}, not generation {n}, which the status records as \
                     promoted (a promotion whose result was never recorded, or a hand edit): it \
                     names generation {n} again"
                )
            }
            None => {
                storage::delete(prefix.client, &prefix.location.bucket, &key).await?;
                format!(
                    "{key} named {was}, but the status records no promoted generation (a \
                     promotion whose result was never recorded, or a hand edit): removed"
                )
            }
        };
        tracing::warn!("{note}");
        self.event(EventType::Warning, "CurrentRestored", "Promote", note);
        self.agreed = true;
        Ok(())
    }
}
