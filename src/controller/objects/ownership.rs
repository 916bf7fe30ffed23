//! Who owns what: the ownership marker `P/.sitecache-owner.json`, claiming a prefix, and which
//! SiteCache a key belongs to.
//!
//! Rules:
//! - a SiteCache claims its prefix before it writes anything there, by creating the marker with
//!   `If-None-Match: *`; the marker names the cluster too ([`OwnerRecord::cluster`]);
//! - a prefix whose marker names another cluster is never taken over, whatever SiteCache it
//!   names: two clusters on one bucket (a standby, a migration, a restore from backup) each keep
//!   their own, and the one that does not own a prefix writes and deletes nothing there;
//! - a marker of the same cluster, namespace and name with another uid is an earlier
//!   incarnation of the SiteCache (deleted with `Retain`, created again): it is taken over. So is
//!   one that names no cluster (written before markers did), which this rule cannot tell apart;
//! - ownership is confirmed again ([`Prefix::confirm`]) before anything that promotes or
//!   deletes, since a claim confirmed once may have been taken away since;
//! - a claim is refused when another SiteCache owns the same prefix, a prefix that contains it,
//!   or a prefix inside it (prefixes are compared as strings: `teams/` contains `teams/b/`, not
//!   `teams-b/`). The check runs before the marker is written and again after, so that two
//!   claims racing on nested prefixes cannot both stand: whichever sees the other after writing
//!   withdraws its marker;
//! - a claim that stands is kept (overlaps are refused when a claim is made); a key belongs to
//!   the SiteCache whose marker sits at the longest prefix of the key, so that deleting one
//!   SiteCache never removes an object under another's marker, even where claims made before
//!   this rule overlap.

use jiff::Timestamp;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::Prefix;
use crate::api::SiteCache;
use crate::storage::{
    self, OWNER_MARKER, ServiceClass, StorageError, claimed_by_marker, parent_prefixes,
};

/// `P/.sitecache-owner.json`: which SiteCache of which cluster owns the prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerRecord {
    /// The owner's cluster (`--cluster-id`, by default its `kube-system` namespace's UID);
    /// absent in markers written before markers named clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub claimed_at: Timestamp,
}

impl OwnerRecord {
    /// `sc` of `cluster` as its ownership marker records it, claimed at `now`.
    pub fn of(sc: &SiteCache, cluster: &str, now: Timestamp) -> OwnerRecord {
        OwnerRecord {
            cluster: Some(cluster.to_owned()),
            namespace: sc.namespace().unwrap_or_default(),
            name: sc.name_any(),
            uid: sc.uid().unwrap_or_default(),
            claimed_at: now,
        }
    }

    /// The same SiteCache object (not merely the same name) of the same cluster. A marker that
    /// names no cluster is matched by uid alone.
    pub fn is(&self, other: &OwnerRecord) -> bool {
        self.uid == other.uid && !self.of_another_cluster_than(other)
    }

    /// Whether both name a cluster and the clusters differ.
    pub fn of_another_cluster_than(&self, other: &OwnerRecord) -> bool {
        matches!((&self.cluster, &other.cluster), (Some(a), Some(b)) if a != b)
    }

    /// An earlier incarnation of the same SiteCache: same cluster, namespace and name, another
    /// uid (deleted with `Retain`, then created again).
    fn is_earlier_incarnation_of(&self, other: &OwnerRecord) -> bool {
        self.uid != other.uid
            && !self.of_another_cluster_than(other)
            && self.namespace == other.namespace
            && self.name == other.name
    }

    /// `is(me)`, and the marker records everything `me` would write (a marker written before
    /// markers named clusters is brought up to date).
    fn is_current_for(&self, me: &OwnerRecord) -> bool {
        self.is(me) && self.cluster == me.cluster
    }
}

impl std::fmt::Display for OwnerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SiteCache {}/{} (uid {}",
            self.namespace, self.name, self.uid
        )?;
        match &self.cluster {
            Some(cluster) => write!(f, ", cluster {cluster})"),
            None => write!(f, ")"),
        }
    }
}

/// The outcome of claiming a prefix.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// The prefix is this SiteCache's.
    Owned,
    /// Another SiteCache owns the same prefix.
    OwnedByAnother(OwnerRecord),
    /// Another SiteCache owns `prefix`, which contains this SiteCache's prefix or lies inside it.
    Overlaps { owner: OwnerRecord, prefix: String },
}

/// The prefixes nested in a listing that another SiteCache's marker claims (the listing's own
/// marker `own_marker` excepted), shortest first.
pub fn foreign_prefixes<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    own_marker: &str,
) -> Vec<String> {
    let mut found: Vec<String> = keys
        .into_iter()
        .filter(|k| *k != own_marker)
        .filter_map(claimed_by_marker)
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Whether `key` lies under one of `foreign` prefixes.
pub fn is_foreign(key: &str, foreign: &[String]) -> bool {
    foreign.iter().any(|p| key.starts_with(p.as_str()))
}

impl Prefix<'_> {
    /// The ownership marker, if any.
    pub async fn owner(&self) -> Result<Option<OwnerRecord>, StorageError> {
        self.marker_at(&self.location.prefix).await
    }

    async fn marker_at(&self, prefix: &str) -> Result<Option<OwnerRecord>, StorageError> {
        storage::get_json(
            self.client,
            self.bucket(),
            &format!("{prefix}{OWNER_MARKER}"),
        )
        .await
    }

    /// The marker at a prefix above `P`. The controller's rights may stop at `P` (a policy scoped
    /// to the prefix): a marker it may not read counts as none, since it could not have written
    /// one there either.
    async fn marker_above(&self, prefix: &str) -> Result<Option<OwnerRecord>, StorageError> {
        match self.marker_at(prefix).await {
            Err(e) if e.class() == Some(ServiceClass::Denied) => Ok(None),
            other => other,
        }
    }

    /// Claims the prefix for `me`, unless another SiteCache owns it or a prefix that overlaps it.
    /// A marker of the same cluster, namespace and name but another uid is from an earlier
    /// incarnation of the same SiteCache: it is taken over.
    pub async fn claim(&self, me: &OwnerRecord) -> Result<Claim, StorageError> {
        let found = self.owner().await?;
        match &found {
            // The claim stands already.
            Some(owner) if owner.is_current_for(me) => return Ok(Claim::Owned),
            // Ours, written before markers named clusters: rewritten with the cluster.
            Some(owner) if owner.is(me) => {}
            Some(owner) if !owner.is_earlier_incarnation_of(me) => {
                return Ok(Claim::OwnedByAnother(owner.clone()));
            }
            // Taking over the prefix from an earlier incarnation writes no marker where there
            // was none: the check after writing is enough.
            Some(_) => {}
            None => {
                if let Some(overlap) = self.overlap(me).await? {
                    return Ok(overlap);
                }
            }
        }
        if let Some(refused) = self.write_marker(me, found).await? {
            return Ok(refused);
        }
        // A claim of a nesting prefix may have raced this one: whichever sees the other now
        // withdraws (both may; both then try again later).
        if let Some(overlap) = self.overlap(me).await? {
            self.withdraw(me).await?;
            return Ok(overlap);
        }
        Ok(Claim::Owned)
    }

    /// Writes `me` as the owner: creates the marker, or replaces an earlier incarnation's.
    /// `found` is the marker as just read. `Some` when another SiteCache got there first.
    async fn write_marker(
        &self,
        me: &OwnerRecord,
        mut found: Option<OwnerRecord>,
    ) -> Result<Option<Claim>, StorageError> {
        let key = self.location.owner_key();
        for attempt in 0..3 {
            if attempt > 0 {
                found = self.owner().await?;
            }
            match found.take() {
                Some(owner) if owner.is_current_for(me) => return Ok(None),
                Some(owner) if owner.is(me) || owner.is_earlier_incarnation_of(me) => {
                    storage::put_json(self.client, self.bucket(), &key, me, false).await?;
                    return Ok(None);
                }
                Some(owner) => return Ok(Some(Claim::OwnedByAnother(owner))),
                None => match storage::put_json(self.client, self.bucket(), &key, me, true).await {
                    Ok(()) => return Ok(None),
                    // Someone claimed it between our read and write: read again.
                    Err(StorageError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e),
                },
            }
        }
        Err(StorageError::Service {
            op: "PUT",
            bucket: self.bucket().to_owned(),
            key,
            code: "ClaimRace".into(),
            message: "the ownership marker kept changing".into(),
        })
    }

    /// `Ok` while the marker still names `me`: checked again before anything that promotes or
    /// deletes under the prefix. `Err` with the marker found (`None`: there is none).
    pub async fn confirm(
        &self,
        me: &OwnerRecord,
    ) -> Result<Result<(), Option<OwnerRecord>>, StorageError> {
        Ok(match self.owner().await? {
            Some(owner) if owner.is(me) => Ok(()),
            other => Err(other),
        })
    }

    /// Removes the marker if it still names `me`.
    async fn withdraw(&self, me: &OwnerRecord) -> Result<(), StorageError> {
        if self.owner().await?.is_some_and(|o| o.is(me)) {
            let key = self.location.owner_key();
            self.client
                .delete_object()
                .bucket(self.bucket())
                .key(&key)
                .send()
                .await
                .map_err(|e| StorageError::from_sdk("DELETE", self.bucket(), &key, e))?;
        }
        Ok(())
    }

    /// Another SiteCache's claim on a prefix that contains this one or lies inside it.
    async fn overlap(&self, me: &OwnerRecord) -> Result<Option<Claim>, StorageError> {
        for parent in parent_prefixes(&self.location.prefix) {
            if let Some(owner) = self.marker_above(parent).await?
                && !owner.is(me)
            {
                return Ok(Some(Claim::Overlaps {
                    owner,
                    prefix: parent.to_owned(),
                }));
            }
        }
        let listing = self.list(&self.location.prefix).await?;
        self.keep_listing(&listing);
        let own = self.location.owner_key();
        for nested in foreign_prefixes(listing.iter().map(|(k, _)| k.as_str()), &own) {
            if let Some(owner) = self.marker_at(&nested).await?
                && !owner.is(me)
            {
                return Ok(Some(Claim::Overlaps {
                    owner,
                    prefix: nested,
                }));
            }
        }
        Ok(None)
    }

    /// The SiteCache `key` belongs to: the marker at the longest prefix of the key, if any.
    pub async fn owner_of_key(
        &self,
        key: &str,
    ) -> Result<Option<(String, OwnerRecord)>, StorageError> {
        for prefix in parent_prefixes(key).into_iter().rev() {
            let owner = if prefix.starts_with(&self.location.prefix) {
                self.marker_at(prefix).await?
            } else {
                self.marker_above(prefix).await?
            };
            if let Some(owner) = owner {
                return Ok(Some((prefix.to_owned(), owner)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cluster: Option<&str>, name: &str, uid: &str) -> OwnerRecord {
        OwnerRecord {
            cluster: cluster.map(str::to_owned),
            namespace: "web".into(),
            name: name.into(),
            uid: uid.into(),
            claimed_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn another_clusters_sitecache_of_the_same_name_is_never_an_earlier_incarnation() {
        let me = record(Some("cluster-b"), "shop", "uid-b");
        let theirs = record(Some("cluster-a"), "shop", "uid-a");
        assert!(!theirs.is(&me));
        assert!(theirs.of_another_cluster_than(&me));
        assert!(!theirs.is_earlier_incarnation_of(&me));
        // The same cluster's earlier incarnation is taken over.
        let earlier = record(Some("cluster-b"), "shop", "uid-old");
        assert!(earlier.is_earlier_incarnation_of(&me));
        // Another name is another SiteCache, whatever the cluster.
        assert!(!record(Some("cluster-b"), "outlet", "uid-x").is_earlier_incarnation_of(&me));
        // Even a uid that matches is not this SiteCache when the clusters differ.
        assert!(!record(Some("cluster-a"), "shop", "uid-b").is(&me));
    }

    #[test]
    fn markers_written_before_clusters_match_by_uid_and_are_brought_up_to_date() {
        let me = record(Some("cluster-b"), "shop", "uid-b");
        let old = record(None, "shop", "uid-b");
        assert!(old.is(&me));
        assert!(!old.is_current_for(&me));
        assert!(me.is_current_for(&me));
        // A marker without a cluster cannot be told from this cluster's earlier incarnation.
        assert!(record(None, "shop", "uid-old").is_earlier_incarnation_of(&me));
        // It reads and writes as before, plus the cluster.
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("cluster").is_none(), "{json}");
        let back: OwnerRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, old);
        assert_eq!(
            me.to_string(),
            "SiteCache web/shop (uid uid-b, cluster cluster-b)"
        );
    }

    #[test]
    fn nested_markers_are_foreign_and_so_is_everything_under_them() {
        let keys = [
            "teams/.sitecache-owner.json",
            "teams/current.json",
            "teams/b/.sitecache-owner.json",
            "teams/b/generations/00000000000000000001/cache.tar.zst",
            "teams/b/c/.sitecache-owner.json",
            "teams/bx/file",
            "teams/x.sitecache-owner.json",
        ];
        let foreign = foreign_prefixes(keys, "teams/.sitecache-owner.json");
        assert_eq!(foreign, ["teams/b/", "teams/b/c/"]);
        let ours: Vec<_> = keys.iter().filter(|k| !is_foreign(k, &foreign)).collect();
        assert_eq!(
            ours,
            [
                &"teams/.sitecache-owner.json",
                &"teams/current.json",
                &"teams/bx/file",
                &"teams/x.sitecache-owner.json"
            ]
        );
    }
}
