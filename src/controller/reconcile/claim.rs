//! Step 3, claim: the SiteCache's prefix must be its own before anything is written there, and
//! still be its own before anything is promoted or deleted there ([`Run::confirm_claim`]).

use super::{Outcome, Run};
use crate::controller::error::Error;
use crate::controller::objects::{Claim, OwnerRecord, Prefix};

/// The reason of a claim refused because another cluster's SiteCache owns the prefix.
pub const OWNED_BY_ANOTHER_CLUSTER: &str = "PrefixOwnedByAnotherCluster";

impl Run<'_> {
    /// This SiteCache as its ownership marker records it.
    pub(super) fn owner_record(&self) -> OwnerRecord {
        OwnerRecord::of(&self.sc, &self.ctx.cluster, self.now)
    }

    /// Claims the prefix once per controller process; `Some` when the claim is refused (another
    /// SiteCache owns the prefix or one that overlaps it).
    pub(super) async fn claim(&mut self, prefix: &Prefix<'_>) -> Result<Option<Outcome>, Error> {
        let uid = self.uid();
        if self.ctx.is_claimed(&uid) {
            return Ok(None);
        }
        let me = self.owner_record();
        let claim = {
            let _one_at_a_time = self.ctx.claim_lock(prefix.location).await;
            prefix.claim(&me).await?
        };
        let location = prefix.location;
        match claim {
            Claim::Owned => {
                self.ctx.set_claimed(&uid, true);
                self.confirmed = true;
                Ok(None)
            }
            Claim::OwnedByAnother(owner) if owner.of_another_cluster_than(&me) => {
                let message = format!(
                    "{location} is owned by {owner}, not by this cluster ({}): this SiteCache \
                     writes and deletes nothing there. A standby cluster runs its controller \
                     with --standby to follow that cluster's generations; to move the prefix to \
                     this cluster for good, stop that cluster's controller (or make it a \
                     standby), then delete the marker {}",
                    self.ctx.cluster,
                    location.owner_key()
                );
                Ok(Some(self.refused(OWNED_BY_ANOTHER_CLUSTER, message)))
            }
            Claim::OwnedByAnother(owner) => {
                let message = format!(
                    "{location} is owned by {owner}; this SiteCache writes and deletes nothing \
                     there. {}, or delete the marker {} if that SiteCache is gone for good",
                    self.how_to_avoid(&owner),
                    location.owner_key()
                );
                Ok(Some(self.refused("PrefixOwnedByAnother", message)))
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
                     SiteCaches must not overlap, so this one writes and deletes nothing. {}",
                    self.how_to_avoid(&owner)
                );
                Ok(Some(self.refused("PrefixOverlaps", message)))
            }
        }
    }

    /// A refused claim. A SiteCache that never had a Job records no location: `status.url` is
    /// the location a SiteCache has written to, which a changed `--default-prefix-template` does
    /// not move; one refused from the start is not held to the prefix that was refused, so that
    /// the template (or a new SiteCache with a prefix of its own) gives it another.
    fn refused(&mut self, reason: &str, message: String) -> Outcome {
        if self.status.latest_generation.is_none() && self.status.current.is_none() {
            self.status.url = None;
        }
        self.blocked(reason, message)
    }

    /// How this SiteCache gets a prefix of its own. One whose prefix is the controller's default
    /// and collides with a SiteCache of another namespace shows the default that does not tell
    /// namespaces apart: the template is the fix for every namespace at once.
    fn how_to_avoid(&self, owner: &OwnerRecord) -> String {
        let template = &self.ctx.settings.default_prefix;
        let mine = self.sc.metadata.namespace.as_deref().unwrap_or_default();
        if self.sc.spec.storage.prefix.is_none()
            && !template.per_namespace()
            && owner.namespace != mine
        {
            format!(
                "SiteCaches of different namespaces get the same default prefix from the \
                 controller's --default-prefix-template \"{template}\": name the namespace in it \
                 (for example '{{namespace}}/{{site}}/'; SiteCaches that have a location in \
                 status.url keep it), or create this SiteCache again with a spec.storage.prefix of \
                 its own (spec.storage is immutable)"
            )
        } else {
            "Use another spec.storage.prefix".to_owned()
        }
    }

    /// Confirms, once per reconcile, that the marker still names this SiteCache, before the
    /// reconcile promotes, deletes or starts a Job that writes under the prefix: a claim
    /// confirmed earlier may have been taken since (by hand, or by a controller of another
    /// cluster that did not know better). When it was, the claim is forgotten, so that the next
    /// reconcile claims again and is refused with a condition that names the owner.
    pub(super) async fn confirm_claim(&mut self, prefix: &Prefix<'_>) -> Result<(), Error> {
        if self.confirmed {
            return Ok(());
        }
        match prefix.confirm(&self.owner_record()).await? {
            Ok(()) => {
                self.confirmed = true;
                Ok(())
            }
            Err(found) => {
                self.ctx.set_claimed(&self.uid(), false);
                let owner = found.map_or_else(|| "nobody".to_owned(), |o| o.to_string());
                Err(Error::Refused {
                    reason: "PrefixClaimLost",
                    message: format!(
                        "the marker {} now names {owner}, not this SiteCache: nothing is \
                         promoted or deleted under {}",
                        prefix.location.owner_key(),
                        prefix.location
                    ),
                })
            }
        }
    }
}
