//! What every reconcile shares: clients, settings, metrics, the Event recorder, the snapshot slots
//! and the SiteCaches waiting for one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;

use super::config::{Settings, Target};
use super::job::{JobView, UID_LABEL};
use crate::api::SiteCache;
use crate::telemetry::metrics::Metrics;

/// The field manager of every write the controller makes.
pub const MANAGER: &str = "sitecache-controller";

/// How long a Job the controller created counts against the limit before the watch shows it.
const PENDING_GRACE: Duration = Duration::from_secs(120);

pub struct Context {
    pub client: kube::Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    storage: tokio::sync::Mutex<Clients>,
    /// Claims of prefixes that could overlap (same bucket and first segment) go one at a time.
    claim_locks: Vec<tokio::sync::Mutex<()>>,
    /// SiteCaches (by uid) whose ownership marker this process has confirmed.
    claimed: Mutex<HashSet<String>>,
    /// SiteCaches (by uid) whose cache is not Fresh, for the stale gauge.
    stale: Mutex<HashSet<String>>,
    slots: Mutex<Slots>,
    /// Failed reconciles in a row per object, for the error policy's backoff.
    pub errors: Errors,
    /// The snapshot Jobs the controller watches, one store per watched namespace (or one for
    /// all).
    jobs: Vec<Store<Job>>,
    /// Where to send SiteCaches to reconcile again when a slot frees up, by watched namespace
    /// (`None`: all).
    wakers: Vec<(Option<String>, mpsc::UnboundedSender<ObjectRef<SiteCache>>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StorageKey {
    region: Option<String>,
    endpoint: Option<String>,
    path_style: bool,
}

/// S3 clients by store: at most [`Clients::CAPACITY`], the least recently used dropped first
/// (regions are free text in the spec, so the set of stores is not bounded by the allow-lists).
#[derive(Default)]
struct Clients {
    clients: HashMap<StorageKey, (aws_sdk_s3::Client, u64)>,
    /// A clock of uses, for least-recently-used eviction.
    uses: u64,
}

impl Clients {
    const CAPACITY: usize = 32;

    fn get(&mut self, key: &StorageKey) -> Option<aws_sdk_s3::Client> {
        self.uses += 1;
        let uses = self.uses;
        self.clients.get_mut(key).map(|(c, used)| {
            *used = uses;
            c.clone()
        })
    }

    fn insert(&mut self, key: StorageKey, client: aws_sdk_s3::Client) {
        while self.clients.len() >= Self::CAPACITY {
            let Some(oldest) = self
                .clients
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.clients.remove(&oldest);
        }
        self.uses += 1;
        self.clients.insert(key, (client, self.uses));
    }
}

/// How many claim locks there are (claims that could not overlap may share one).
const CLAIM_LOCKS: usize = 64;

#[derive(Default)]
struct Slots {
    /// Jobs created but perhaps not yet seen by the watch, with when they were created.
    pending: HashMap<(String, String), Instant>,
    waiting: HashSet<ObjectRef<SiteCache>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        jobs: Vec<Store<Job>>,
        wakers: Vec<(Option<String>, mpsc::UnboundedSender<ObjectRef<SiteCache>>)>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            storage: Default::default(),
            claim_locks: (0..CLAIM_LOCKS).map(|_| Default::default()).collect(),
            claimed: Default::default(),
            stale: Default::default(),
            slots: Default::default(),
            errors: Default::default(),
            jobs,
            wakers,
        }
    }

    /// An S3 client for the SiteCache's store, shared by every SiteCache on the same store.
    pub async fn storage(&self, target: &Target) -> aws_sdk_s3::Client {
        let key = StorageKey {
            region: target.region.clone(),
            endpoint: target.endpoint.clone(),
            path_style: target.path_style,
        };
        let mut clients = self.storage.lock().await;
        if let Some(c) = clients.get(&key) {
            return c;
        }
        let client = crate::storage::client(&target.storage_options()).await;
        clients.insert(key, client.clone());
        client
    }

    /// The lock that claims of `location` take: two prefixes can overlap only if they are in the
    /// same bucket and share their first segment, so those claims are made one at a time here
    /// (claims by other processes are settled by the check after writing the marker).
    pub async fn claim_lock(
        &self,
        location: &crate::storage::Location,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let first = location.prefix.split('/').next().unwrap_or_default();
        let hash = foldhash::fast::FixedState::with_seed(0).hash_one((&location.bucket, first));
        self.claim_locks[hash as usize % CLAIM_LOCKS].lock().await
    }

    pub fn is_claimed(&self, uid: &str) -> bool {
        lock(&self.claimed).contains(uid)
    }

    pub fn set_claimed(&self, uid: &str, claimed: bool) {
        let mut set = lock(&self.claimed);
        if claimed {
            set.insert(uid.to_owned());
        } else {
            set.remove(uid);
        }
    }

    pub fn set_stale(&self, uid: &str, stale: bool) {
        let mut set = lock(&self.stale);
        if stale {
            set.insert(uid.to_owned());
        } else {
            set.remove(uid);
        }
        self.metrics.stale_sitecaches.set(set.len() as i64);
    }

    /// The snapshot Jobs of the SiteCache with this uid, as the watch last saw them.
    pub fn jobs_of(&self, uid: &str) -> Vec<JobView> {
        let mut views: Vec<JobView> = self
            .jobs
            .iter()
            .flat_map(|s| s.state())
            .filter(|j| j.labels().get(UID_LABEL).map(String::as_str) == Some(uid))
            .filter_map(|j| JobView::of(&j))
            .collect();
        views.sort_by_key(|v| v.generation);
        views
    }

    fn running_jobs(&self, slots: &mut Slots) -> usize {
        let mut running: HashSet<(String, String)> = HashSet::new();
        for job in self.jobs.iter().flat_map(|s| s.state()) {
            let key = (job.namespace().unwrap_or_default(), job.name_any());
            slots.pending.remove(&key);
            if JobView::of(&job).is_some_and(|v| v.is_running()) {
                running.insert(key);
            }
        }
        slots.pending.retain(|_, at| at.elapsed() < PENDING_GRACE);
        running.extend(slots.pending.keys().cloned());
        self.metrics.snapshot_jobs_running.set(running.len() as i64);
        running.len()
    }

    /// Takes a snapshot slot for Job `namespace/name` if fewer than the limit are running;
    /// otherwise records `sc` as waiting and returns how many are running.
    pub fn try_start(
        &self,
        sc: &ObjectRef<SiteCache>,
        namespace: &str,
        name: &str,
    ) -> Result<(), usize> {
        let mut slots = lock(&self.slots);
        let running = self.running_jobs(&mut slots);
        if running >= self.settings.max_concurrent_snapshots as usize {
            slots.waiting.insert(sc.clone());
            self.metrics
                .snapshot_jobs_waiting
                .set(slots.waiting.len() as i64);
            return Err(running);
        }
        slots.waiting.remove(sc);
        slots
            .pending
            .insert((namespace.to_owned(), name.to_owned()), Instant::now());
        self.metrics
            .snapshot_jobs_waiting
            .set(slots.waiting.len() as i64);
        Ok(())
    }

    /// Gives back a slot taken for a Job that was not created.
    pub fn release(&self, namespace: &str, name: &str) {
        lock(&self.slots)
            .pending
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Forgets a SiteCache that no longer waits (it started, was suspended or is being deleted).
    pub fn not_waiting(&self, sc: &ObjectRef<SiteCache>) {
        let mut slots = lock(&self.slots);
        if slots.waiting.remove(sc) {
            self.metrics
                .snapshot_jobs_waiting
                .set(slots.waiting.len() as i64);
        }
    }

    /// A snapshot Job finished: every waiting SiteCache gets reconciled again, and the first to
    /// get there takes the slot.
    /// The running-Jobs gauge is counted again here too, so that it falls when Jobs end even if
    /// no other snapshot starts.
    pub fn wake_waiting(&self) {
        let waiting: Vec<_> = {
            let mut slots = lock(&self.slots);
            self.running_jobs(&mut slots);
            slots.waiting.iter().cloned().collect()
        };
        for sc in waiting {
            for (ns, tx) in &self.wakers {
                if ns.is_none() || ns.as_deref() == sc.namespace.as_deref() {
                    let _ = tx.send(sc.clone());
                }
            }
        }
    }

    /// Publishes an Event about `sc` (failures to publish are logged, never fatal).
    pub async fn event(
        &self,
        sc: &SiteCache,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &sc.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an Event");
        }
    }
}

/// Failed reconciles in a row per object, and the last error (an Event is published when the
/// error changes, not on every retry).
#[derive(Default)]
pub struct Errors(Mutex<HashMap<String, (u32, String)>>);

impl Errors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, String)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_new(&self, uid: &str, message: &str) -> bool {
        let mut m = self.lock();
        let entry = m.entry(uid.to_owned()).or_default();
        let new = entry.1 != message;
        entry.1 = message.to_owned();
        new
    }

    pub fn attempts(&self, uid: &str) -> u32 {
        let mut m = self.lock();
        let entry = m.entry(uid.to_owned()).or_default();
        entry.0 = entry.0.saturating_add(1);
        entry.0
    }

    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(region: &str) -> StorageKey {
        StorageKey {
            region: Some(region.to_owned()),
            endpoint: None,
            path_style: false,
        }
    }

    fn client() -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    #[test]
    fn clients_are_bounded_and_the_least_recently_used_goes_first() {
        let mut clients = Clients::default();
        for i in 0..Clients::CAPACITY {
            clients.insert(key(&format!("r{i}")), client());
        }
        // r0 is used again, so r1 is now the least recently used.
        assert!(clients.get(&key("r0")).is_some());
        clients.insert(key("new"), client());
        assert_eq!(clients.clients.len(), Clients::CAPACITY);
        assert!(clients.get(&key("r0")).is_some());
        assert!(clients.get(&key("r1")).is_none());
        assert!(clients.get(&key("new")).is_some());
    }
}
