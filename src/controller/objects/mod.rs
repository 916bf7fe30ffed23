//! The controller's storage work on one SiteCache's prefix `P`:
//!
//! - [`ownership`]: the marker `P/.sitecache-owner.json`, claims (refused when they overlap
//!   another SiteCache's prefix), and which SiteCache a key belongs to;
//! - [`manifest`]: reading and checking what a snapshot committed before it is promoted;
//! - [`delete`]: retention and the deletion of everything, never of another SiteCache's objects;
//! - [`logs`]: the snapshot Jobs' logs, and how many are kept;
//! - [`retention`]: which generations retention deletes (pure).
//!
//! Nothing here ever lists or deletes outside `P`. A key belongs to the SiteCache whose marker
//! sits at the longest prefix of the key: objects under a prefix nested in `P` that another
//! SiteCache claimed are that SiteCache's, and never deleted from here.

pub mod clients;
pub mod delete;
pub mod logs;
pub mod manifest;
pub mod ownership;
pub mod retention;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use aws_sdk_s3::Client;

use crate::storage::{Location, StorageError};

pub use delete::Removed;
pub use manifest::Rejection;
pub use ownership::{Claim, OwnerRecord};
pub use retention::retention_victims;

/// One SiteCache's prefix, for the length of one reconcile.
pub struct Prefix<'a> {
    pub client: &'a Client,
    pub location: &'a Location,
    /// The listing of the whole prefix the claim just took, for the adoption that follows to
    /// use instead of listing again (taken once).
    recent: Mutex<Option<Vec<(String, u64)>>>,
}

/// The generations found under `P/generations/`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inventory {
    /// Generations whose manifest exists (committed).
    pub committed: BTreeSet<u64>,
    /// Every generation number with any object, committed or not.
    pub all: BTreeSet<u64>,
    /// Bytes of each generation's objects.
    pub bytes: BTreeMap<u64, u64>,
}

impl Inventory {
    pub fn highest(&self) -> Option<u64> {
        self.all.last().copied()
    }
}

impl<'a> Prefix<'a> {
    pub fn new(client: &'a Client, location: &'a Location) -> Self {
        Prefix {
            client,
            location,
            recent: Mutex::new(None),
        }
    }

    fn bucket(&self) -> &str {
        &self.location.bucket
    }

    /// Keeps a listing of the whole prefix, just taken, for [`Prefix::inventory`].
    fn keep_listing(&self, listing: &[(String, u64)]) {
        *self.recent.lock().unwrap_or_else(|e| e.into_inner()) = Some(listing.to_vec());
    }

    /// Lists `P/generations/` (paginated), or reads them from the listing of the whole prefix
    /// the claim took moments ago in this reconcile.
    pub async fn inventory(&self) -> Result<Inventory, StorageError> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner()).take();
        let listing = match recent {
            Some(listing) => listing,
            None => self.list(&self.location.generations_prefix()).await?,
        };
        let mut inv = Inventory::default();
        for (key, size) in listing {
            let Some(n) = self.location.generation_of_key(&key) else {
                continue;
            };
            inv.all.insert(n);
            *inv.bytes.entry(n).or_default() += size;
            if key == self.location.manifest_key(n) {
                inv.committed.insert(n);
            }
        }
        Ok(inv)
    }

    /// Every key under `prefix` (which lies in `P`) with its size, every page.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        debug_assert!(prefix.starts_with(&self.location.prefix));
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(self.bucket())
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| StorageError::from_sdk("LIST", self.bucket(), prefix, e))?;
            for o in page.contents() {
                if let Some(key) = o.key() {
                    out.push((key.to_owned(), o.size().unwrap_or(0).max(0) as u64));
                }
            }
        }
        Ok(out)
    }
}
