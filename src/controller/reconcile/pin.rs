//! Step 5b, pin: `spec.pin.generation` is made current and held there. Validation (step 2)
//! accepted only a retained generation, one the status records as verified; here its manifest is
//! checked against that record again (the bucket may have changed since), and `current.json` is
//! written for it as for any promotion: runners restore it from their next start. While the pin
//! is set, step 5 promotes nothing over it, step 7 starts nothing scheduled, and retention (step
//! 6) keeps it, since it never deletes the current generation nor any above it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;

use super::Run;
use crate::controller::error::Error;
use crate::controller::jobs::rebuild::growth_of;
use crate::controller::objects::Prefix;
use crate::controller::settings::validate::Validated;

impl Run<'_> {
    pub(super) async fn pin(&mut self, prefix: &Prefix<'_>, spec: &Validated) -> Result<(), Error> {
        let Some(n) = spec.pin else {
            return Ok(());
        };
        let was = self.status.current.as_ref().map(|c| c.generation);
        if was == Some(n) {
            return Ok(());
        }
        let Some(mut info) = self
            .status
            .generations
            .iter()
            .find(|g| g.generation == n)
            .cloned()
        else {
            // Step 2 refuses a pin that names no retained generation.
            return Ok(());
        };
        let manifest = match prefix.manifest_as_recorded(&info).await? {
            Ok(m) => m,
            Err(why) => {
                return Err(Error::Refused {
                    reason: "PinUnavailable",
                    message: format!(
                        "spec.pin.generation {n} cannot be promoted: {why}; generation {} stays \
                         current",
                        was.map_or("none".to_owned(), |w| w.to_string())
                    ),
                });
            }
        };
        self.confirm_claim(prefix).await?;
        if let Some(key) = spec.legacy_key.as_deref() {
            self.check_legacy_key(prefix, key).await?;
        }
        prefix
            .promote(&manifest, spec.legacy_key.as_deref(), self.now)
            .await?;
        self.agreed = true;
        self.retention_due = true;
        info.promoted_at = Some(Time(self.now));
        for g in &mut self.status.generations {
            if g.generation == n {
                g.promoted_at = info.promoted_at.clone();
            }
        }
        self.status.growth = growth_of(&self.status.generations, n);
        self.status.current = Some(info);
        let note = format!(
            "generation {n} promoted by spec.pin (generation {} was current); nothing is \
             promoted over it while the pin is set",
            was.map_or("none".to_owned(), |w| w.to_string())
        );
        tracing::info!(generation = n, "{note}");
        self.event(EventType::Normal, "Pinned", "Promote", note);
        Ok(())
    }
}
