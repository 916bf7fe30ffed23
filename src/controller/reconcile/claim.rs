//! Step 3, claim: the SiteCache's prefix must be its own before anything is written there.

use kube::ResourceExt;

use super::{Outcome, Run};
use crate::controller::error::Error;
use crate::controller::objects::{Claim, OwnerRecord, Prefix};

impl Run<'_> {
    /// Claims the prefix once per controller process; `Some` when the claim is refused (another
    /// SiteCache owns the prefix or one that overlaps it).
    pub(super) async fn claim(&mut self, prefix: &Prefix<'_>) -> Result<Option<Outcome>, Error> {
        let uid = self.uid();
        if self.ctx.is_claimed(&uid) {
            return Ok(None);
        }
        let me = OwnerRecord {
            namespace: self.sc.namespace().unwrap_or_default(),
            name: self.sc.name_any(),
            uid: uid.clone(),
            claimed_at: self.now,
        };
        let claim = {
            let _one_at_a_time = self.ctx.claim_lock(prefix.location).await;
            prefix.claim(&me).await?
        };
        let location = prefix.location;
        match claim {
            Claim::Owned => {
                self.ctx.set_claimed(&uid, true);
                Ok(None)
            }
            Claim::OwnedByAnother(owner) => {
                let message = format!(
                    "{location} is owned by {owner}; this SiteCache writes and deletes nothing \
                     there. Use another spec.storage.prefix, or delete the marker {} if that \
                     SiteCache is gone for good",
                    location.owner_key()
                );
                Ok(Some(self.blocked("PrefixOwnedByAnother", message)))
            }
            Claim::Overlaps {
                owner,
                prefix: other,
            } => {
                let other = format!("s3://{}/{other}", location.bucket);
                let relation = if other.len() < location.to_string().len() {
                    "lies inside"
                } else {
                    "contains"
                };
                let message = format!(
                    "{location} {relation} {other}, which {owner} owns: the prefixes of two \
                     SiteCaches must not overlap, so this one writes and deletes nothing. Use \
                     another spec.storage.prefix"
                );
                Ok(Some(self.blocked("PrefixOverlaps", message)))
            }
        }
    }
}
