//! What every reconcile shares: clients, settings, metrics, the Event recorder, the watch caches,
//! and the snapshot slots with the queue of SiteCaches waiting for one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc;

use crate::api::SiteCache;
use crate::controller::jobs::account::{self, Ensured};
use crate::controller::jobs::queue::{Ask, JobKey, Place, RESERVATION_TTL, SlotQueue};
use crate::controller::jobs::{JobView, UID_LABEL};
use crate::controller::objects::clients::{Clients, CountRequests, StorageKey};
use crate::controller::settings::identity::MANAGER;
use crate::controller::settings::{Settings, Target};
use crate::controller::status::events::{Note, Recorder};
use crate::telemetry::metrics::Metrics;

/// How long a reconcile waits for the watch to show the status it wrote.
const OWN_WRITE_WAIT: Duration = Duration::from_secs(5);

/// How long a released Job is remembered ([`Context::note_released`]).
const RELEASE_MEMORY: Duration = Duration::from_secs(60);

/// How long abandoned snapshot pods are remembered ([`Context::first_abandonment`]): longer than
/// a cleanup takes, including one that runs again on the watch's last copy of a SiteCache that is
/// already gone.
const ABANDON_MEMORY: Duration = Duration::from_secs(600);

/// How many claim locks there are (claims that could not overlap may share one).
const CLAIM_LOCKS: usize = 64;

/// The watch caches of one scope (a watched namespace, or all of them).
pub struct Caches {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub sitecaches: Store<SiteCache>,
    pub jobs: Store<Job>,
    /// Where to send a SiteCache to reconcile it (a freed slot wakes it).
    pub wake: mpsc::UnboundedSender<ObjectRef<SiteCache>>,
}

pub struct Context {
    pub client: kube::Client,
    pub settings: Settings,
    /// This cluster's identity in ownership markers (`--cluster-id`, or `kube-system`'s UID).
    pub cluster: String,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    storage: tokio::sync::Mutex<Clients>,
    /// Claims of prefixes that could overlap (same bucket and first segment) go one at a time.
    claim_locks: Vec<tokio::sync::Mutex<()>>,
    /// SiteCaches (by uid) whose ownership marker this process has confirmed.
    claimed: Mutex<HashSet<String>>,
    /// Namespaces where this process found or made the snapshot Jobs' ServiceAccount
    /// ([`account`]): one entry per namespace, not per SiteCache.
    accounts: Mutex<HashSet<String>>,
    /// SiteCaches (by uid) whose cache is not Fresh, for the stale gauge.
    stale: Mutex<HashSet<String>>,
    /// SiteCaches (by uid) whose running snapshot Job is stalled, for the stalled gauge.
    stalled: Mutex<HashSet<String>>,
    /// SiteCaches (by uid) being deleted whose snapshot pods this process said it abandoned. Not
    /// forgotten with the SiteCache: a reconcile may still run on its last copy.
    abandoned: Recent,
    queue: Mutex<SlotQueue>,
    /// Failed reconciles in a row per object, for the error policy's backoff.
    pub errors: Errors,
    caches: Vec<Caches>,
    /// When a slot promised to a woken SiteCache expires (see [`Context::expired_reservations`]).
    reservations: mpsc::UnboundedSender<Instant>,
    /// Every Job watch has listed its Jobs ([`Context::mark_jobs_synced`]).
    jobs_synced: tokio::sync::watch::Sender<bool>,
    /// Jobs (by uid) whose result this process released lately, while the watch may still show
    /// them with the finalizer ([`Context::released`]).
    released: Recent,
}

impl Context {
    /// The context, and the times at which slots promised to woken SiteCaches expire: whoever
    /// runs the controller calls [`Context::expired_reservations`] at each.
    pub fn new(
        client: kube::Client,
        settings: Settings,
        cluster: String,
        metrics: Arc<Metrics>,
        caches: Vec<Caches>,
    ) -> (Self, mpsc::UnboundedReceiver<Instant>) {
        let (reservations, expiries) = mpsc::unbounded_channel();
        let ctx = Context {
            recorder: Recorder::new(client.clone(), MANAGER, std::env::var("POD_NAME").ok()),
            client,
            settings,
            cluster,
            metrics,
            storage: Default::default(),
            claim_locks: (0..CLAIM_LOCKS).map(|_| Default::default()).collect(),
            claimed: Default::default(),
            accounts: Default::default(),
            stale: Default::default(),
            stalled: Default::default(),
            abandoned: Recent::new(ABANDON_MEMORY),
            queue: Default::default(),
            errors: Default::default(),
            caches,
            reservations,
            jobs_synced: tokio::sync::watch::channel(false).0,
            released: Recent::new(RELEASE_MEMORY),
        };
        (ctx, expiries)
    }

    /// Makes sure the controller's Job ServiceAccount exists in namespace `ns` (see
    /// [`account`]), at most once per namespace and process; `None` when there was nothing to
    /// look at (no account configured, creation turned off, a standby, or looked at already).
    pub async fn ensure_job_account(&self, ns: &str) -> Option<Result<Ensured, kube::Error>> {
        let s = &self.settings;
        let name = s.job_service_account.as_deref()?;
        if !s.create_job_service_account || s.standby || lock(&self.accounts).contains(ns) {
            return None;
        }
        let ensured =
            account::ensure(&self.client, ns, name, &s.job_service_account_annotations).await;
        if ensured.is_ok() {
            lock(&self.accounts).insert(ns.to_owned());
        }
        Some(ensured)
    }

    /// Forgets that the Job ServiceAccount was found in `ns`: a pod was refused for want of it.
    pub fn forget_job_account(&self, ns: &str) {
        lock(&self.accounts).remove(ns);
    }

    /// An S3 client for the SiteCache's store, shared by every SiteCache on the same store; its
    /// requests are counted in `sitecache_storage_requests_total`.
    pub async fn storage(&self, target: &Target) -> aws_sdk_s3::Client {
        let key = StorageKey::of(target);
        let mut clients = self.storage.lock().await;
        if let Some(c) = clients.get(&key) {
            return c;
        }
        let mut options = target.storage_options();
        options.interceptor = Some(CountRequests::shared(&self.metrics.storage_requests));
        options.ca_bundle = self.settings.ca_bundle.clone();
        let client = crate::storage::client(&options).await;
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
        let n = mark(&self.stale, uid, stale);
        self.metrics.stale_sitecaches.set(n);
    }

    pub fn set_stalled(&self, uid: &str, stalled: bool) {
        let n = mark(&self.stalled, uid, stalled);
        self.metrics.stalled_snapshots.set(n);
    }

    /// Whether this process released the result of the Job with `uid` lately: the watch may
    /// not show it yet, and a reconcile in between would release it again for nothing.
    pub fn released(&self, uid: &str) -> bool {
        self.released.contains(uid)
    }

    /// Notes that the result of the Job with `uid` was released. Entries last as long as a watch
    /// takes to catch up, at most.
    pub fn note_released(&self, uid: &str) {
        self.released.note(uid);
    }

    /// Forgets a SiteCache that is gone (whether or not a cleanup reconcile saw it go): its
    /// place in the queue, its claim, its part in the stale and stalled gauges, its error count.
    pub fn forget(&self, sc: &ObjectRef<SiteCache>) {
        self.leave_queue(sc);
        if let Some(uid) = &sc.extra.uid {
            self.set_claimed(uid, false);
            self.set_stale(uid, false);
            self.set_stalled(uid, false);
            self.errors.forget(uid);
        }
    }

    /// After a relist, forgets the SiteCaches no watch cache holds any more (deleted while the
    /// watch was broken, which reports no deletion).
    pub fn forget_missing(&self) {
        let present: HashSet<String> = self
            .caches
            .iter()
            .flat_map(|c| c.sitecaches.state())
            .filter_map(|sc| sc.uid())
            .collect();
        for set in [&self.claimed, &self.stale, &self.stalled] {
            lock(set).retain(|uid| present.contains(uid));
        }
        self.metrics
            .stale_sitecaches
            .set(lock(&self.stale).len() as i64);
        self.metrics
            .stalled_snapshots
            .set(lock(&self.stalled).len() as i64);
        self.errors.retain(&present);
    }

    /// Whether this is the first time this process abandons the snapshot pods of the SiteCache
    /// with this uid: a cleanup retried after it, or run again on the watch's last copy of a
    /// SiteCache that is already gone, says so once.
    pub fn first_abandonment(&self, uid: &str) -> bool {
        self.abandoned.note(uid)
    }

    /// The snapshot Jobs of the SiteCache with this uid, as the watch last saw them.
    pub fn jobs_of(&self, uid: &str) -> Vec<JobView> {
        let mut views: Vec<JobView> = self
            .caches
            .iter()
            .flat_map(|c| c.jobs.state())
            .filter(|j| j.labels().get(UID_LABEL).map(String::as_str) == Some(uid))
            .filter_map(|j| JobView::of(&j))
            .collect();
        views.sort_by_key(|v| v.generation);
        views
    }

    /// Waits (boundedly) until the watch cache holds `written` or a later version of it, so that
    /// the next reconcile of the object, which reads the cache, builds on what this one wrote.
    pub async fn await_own_write(&self, written: &SiteCache) {
        let oref = ObjectRef::from_obj(written);
        let Some(cache) = self
            .caches
            .iter()
            .find(|c| c.namespace.is_none() || c.namespace == written.namespace())
        else {
            return;
        };
        let written_version = written.resource_version();
        let deadline = Instant::now() + OWN_WRITE_WAIT;
        let mut delay = Duration::from_millis(2);
        while Instant::now() < deadline {
            let Some(cached) = cache.sitecaches.get(&oref) else {
                return;
            };
            if cached.resource_version() == written_version
                || newer_version(cached.resource_version(), written_version.clone())
            {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
        tracing::debug!(object = %oref, "the watch has not shown the status written yet");
    }

    /// Every Job watch has listed its Jobs (the task that waits for the watches says so). Until
    /// then the Jobs that run are unknown (after a restart or a leader handover, up to
    /// `--max-concurrent-snapshots` may), so no slot is granted; the SiteCaches that asked wait
    /// in the queue, and get the free slots now.
    pub fn mark_jobs_synced(&self) {
        self.jobs_synced.send_replace(true);
        self.slot_freed();
    }

    /// Waits until every Job watch has listed its Jobs: a reconcile decides nothing from a Job
    /// cache that is still empty (it would find no running Job, and wait for a slot it cannot
    /// be given yet).
    pub async fn until_jobs_synced(&self) {
        let mut synced = self.jobs_synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// How many snapshot Jobs the watch shows running (and forgets pending Jobs it shows); every
    /// slot counts as taken until the Job watches have listed.
    fn observe_jobs(&self, queue: &mut SlotQueue) -> usize {
        if !*self.jobs_synced.borrow() {
            return self.settings.max_concurrent_snapshots as usize;
        }
        let jobs = self.caches.iter().flat_map(|c| c.jobs.state()).map(|job| {
            let key: JobKey = (job.namespace().unwrap_or_default(), job.name_any());
            (key, JobView::of(&job).is_some_and(|v| v.is_running()))
        });
        let running = queue.observe(jobs);
        self.metrics
            .snapshot_jobs_running
            .set(queue.taken(running) as i64);
        running
    }

    /// SiteCache `sc`, due since `place`, asks for a snapshot slot for Job `job`. `true`: start
    /// it now (then [`Context::release`] it if it cannot be created); `false`: every slot is
    /// taken; it waits in the queue and is woken when a slot is its.
    pub fn ask_slot(&self, sc: &ObjectRef<SiteCache>, place: Place, job: JobKey) -> bool {
        let limit = self.settings.max_concurrent_snapshots as usize;
        let (answer, woken) = {
            let mut queue = lock(&self.queue);
            let running = self.observe_jobs(&mut queue);
            let (answer, woken) = queue.ask(sc, place, running, limit);
            if answer == Ask::Start {
                queue.started(job);
            }
            self.metrics
                .snapshot_jobs_waiting
                .set(queue.waiting() as i64);
            (answer, woken)
        };
        self.wake(woken);
        answer == Ask::Start
    }

    /// Gives back the slot taken for Job `job`, which was not created.
    pub fn release(&self, job: &JobKey) {
        lock(&self.queue).release(job);
        self.slot_freed();
    }

    /// `sc` does not wait for a slot (any more): it started, is no longer due, is suspended,
    /// refused or deleted. A slot promised to it goes to the next.
    pub fn leave_queue(&self, sc: &ObjectRef<SiteCache>) {
        let woken = {
            let mut queue = lock(&self.queue);
            queue.leave(sc);
            self.metrics
                .snapshot_jobs_waiting
                .set(queue.waiting() as i64);
            let running = self.observe_jobs(&mut queue);
            queue.assign(running, self.settings.max_concurrent_snapshots as usize)
        };
        self.wake(woken);
    }

    /// A slot may have come free (a Job finished, vanished or was deleted): the heads of the
    /// queue get the free slots, one SiteCache each.
    pub fn slot_freed(&self) {
        let woken = {
            let mut queue = lock(&self.queue);
            let running = self.observe_jobs(&mut queue);
            let woken = queue.assign(running, self.settings.max_concurrent_snapshots as usize);
            self.metrics
                .snapshot_jobs_waiting
                .set(queue.waiting() as i64);
            woken
        };
        self.wake(woken);
    }

    /// Called at the times [`Context::new`] returned: slots promised to SiteCaches that did not
    /// take them go to the next in the queue.
    pub fn expired_reservations(&self) {
        self.slot_freed();
    }

    /// Wakes SiteCaches that got a slot.
    fn wake(&self, woken: Vec<ObjectRef<SiteCache>>) {
        for sc in woken {
            self.metrics.snapshot_queue_wakeups.inc();
            let _ = self.reservations.send(Instant::now() + RESERVATION_TTL);
            for cache in &self.caches {
                if cache.namespace.is_none() || cache.namespace == sc.namespace {
                    let _ = cache.wake.send(sc.clone());
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
        let what = Note {
            type_,
            reason,
            action,
            note: &note,
        };
        if let Err(e) = self.recorder.publish(sc, &what).await {
            tracing::warn!(error = %e, reason, "could not publish an Event");
        }
    }
}

/// Uids noted lately, each forgotten `keep` after it was last noted (swept when one is noted).
struct Recent {
    keep: Duration,
    at: Mutex<HashMap<String, Instant>>,
}

impl Recent {
    fn new(keep: Duration) -> Self {
        Recent {
            keep,
            at: Mutex::default(),
        }
    }

    fn contains(&self, uid: &str) -> bool {
        lock(&self.at)
            .get(uid)
            .is_some_and(|t| t.elapsed() < self.keep)
    }

    /// Notes `uid`; whether it was not noted within `keep` before.
    fn note(&self, uid: &str) -> bool {
        let mut at = lock(&self.at);
        at.retain(|_, t| t.elapsed() < self.keep);
        at.insert(uid.to_owned(), Instant::now()).is_none()
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

    /// Keeps only the objects in `present`.
    fn retain(&self, present: &HashSet<String>) {
        self.lock().retain(|uid, _| present.contains(uid));
    }
}

/// Whether resource version `a` is later than `b`. Versions are opaque to clients, but every API
/// server backed by etcd gives revisions that grow; when they do not parse, only equality counts.
fn newer_version(a: Option<String>, b: Option<String>) -> bool {
    match (
        a.and_then(|v| v.parse::<u64>().ok()),
        b.and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

/// Puts `uid` in or out of `set`; returns how many the set holds.
fn mark(set: &Mutex<HashSet<String>>, uid: &str, member: bool) -> i64 {
    let mut set = lock(set);
    if member {
        set.insert(uid.to_owned());
    } else {
        set.remove(uid);
    }
    set.len() as i64
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::Job;
    use kube::runtime::watcher;

    use super::*;
    use crate::controller::settings::settings_from;

    fn running_job(name: &str) -> Job {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "web", "uid": name,
                         "labels": {"sitecache.dev/generation": "1", "sitecache.dev/uid": "u"}},
            "status": {"active": 1},
        }))
        .unwrap()
    }

    /// A context with one snapshot slot over a Job watch fed by the writer returned, and the
    /// receiver of the SiteCaches it wakes.
    fn one_slot() -> (
        Context,
        kube::runtime::reflector::store::Writer<Job>,
        mpsc::UnboundedReceiver<ObjectRef<SiteCache>>,
    ) {
        let (sitecaches, _sitecache_writer) = kube::runtime::reflector::store();
        let (jobs, job_writer) = kube::runtime::reflector::store();
        let (wake, woken) = mpsc::unbounded_channel();
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let (ctx, _expiries) = Context::new(
            client,
            settings_from(&[
                "--default-bucket",
                "caches",
                "--max-concurrent-snapshots",
                "1",
            ]),
            "cluster".into(),
            Arc::new(Metrics::default()),
            vec![Caches {
                namespace: None,
                sitecaches,
                jobs,
                wake,
            }],
        );
        (ctx, job_writer, woken)
    }

    fn place() -> Place {
        Place {
            priority: 1,
            due: "2026-01-01T00:00:00Z".parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn a_job_deleted_before_it_finished_keeps_its_slot_until_it_is_gone() {
        let (ctx, mut job_writer, _woken) = one_slot();
        let mut stopping = running_job("outlet-g3");
        stopping.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        job_writer.apply_watcher_event(&watcher::Event::Init);
        job_writer.apply_watcher_event(&watcher::Event::InitApply(stopping.clone()));
        job_writer.apply_watcher_event(&watcher::Event::InitDone);
        ctx.mark_jobs_synced();
        let shop = ObjectRef::new("shop").within("web");
        let job = ("web".to_owned(), "shop-g1".to_owned());
        assert!(!ctx.ask_slot(&shop, place(), job.clone()));
        job_writer.apply_watcher_event(&watcher::Event::Delete(stopping));
        assert!(ctx.ask_slot(&shop, place(), job));
    }

    #[tokio::test]
    async fn no_slot_is_granted_before_the_job_watch_has_listed() {
        let (ctx, mut job_writer, mut woken) = one_slot();
        let shop = ObjectRef::new("shop").within("web");
        let place = place();
        // Restarted: a Job runs that the watch has not listed yet.
        let job = ("web".to_owned(), "shop-g1".to_owned());
        assert!(!ctx.ask_slot(&shop, place.clone(), job.clone()));
        // The watch lists it: the only slot is that Job's, and the waiter is not woken.
        job_writer.apply_watcher_event(&watcher::Event::Init);
        job_writer.apply_watcher_event(&watcher::Event::InitApply(running_job("outlet-g3")));
        job_writer.apply_watcher_event(&watcher::Event::InitDone);
        ctx.mark_jobs_synced();
        assert!(woken.try_recv().is_err());
        // It finishes: the waiter gets the slot.
        job_writer.apply_watcher_event(&watcher::Event::Delete(running_job("outlet-g3")));
        ctx.slot_freed();
        assert_eq!(woken.try_recv().unwrap(), shop);
        assert!(ctx.ask_slot(&shop, place, job));
    }

    #[tokio::test]
    async fn abandoned_pods_are_said_once_even_after_the_sitecache_is_forgotten() {
        let (ctx, _job_writer, _woken) = one_slot();
        assert!(ctx.first_abandonment("u1"));
        assert!(!ctx.first_abandonment("u1"), "a retried cleanup");
        // The SiteCache is gone from the watch while a reconcile still runs on its last copy.
        let mut shop = ObjectRef::<SiteCache>::new("shop").within("web");
        shop.extra.uid = Some("u1".into());
        ctx.forget(&shop);
        ctx.forget_missing();
        assert!(!ctx.first_abandonment("u1"));
        assert!(ctx.first_abandonment("u2"));
    }
}
