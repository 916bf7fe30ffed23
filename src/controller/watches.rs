//! What the controller keeps of the objects it watches, and which of their changes wake a
//! reconcile. Reconciles read the watch cache, so the cache holds only what they use: no
//! `managedFields`, no `last-applied-configuration` copy of the spec, and no pod template in a
//! Job. Of a SiteCache's changes, only those that can change a decision wake it: its generation
//! (the spec), the on-demand request, deletion and finalizers, and a status that lost what the
//! controller wrote (a restore without status, a hand edit). Its own status writes do not: the
//! reconcile that wrote one already decided what follows. Of a Job, only a change of state
//! (running, succeeded, failed, being deleted, gone).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

use futures::{Stream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::api::{SNAPSHOT_REQUEST_ANNOTATION, SiteCache};
use crate::controller::jobs::{JobState, JobView};

/// The annotation `kubectl apply` writes: a second copy of the spec.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what reconciles never read from a cached SiteCache.
pub fn strip_sitecache(sc: &mut SiteCache) {
    sc.managed_fields_mut().clear();
    if let Some(a) = sc.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// Drops what reconciles never read from a cached Job: its spec (the pod template) included.
pub fn strip_job(job: &mut Job) {
    job.managed_fields_mut().clear();
    job.spec = None;
    if let Some(a) = job.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

fn hash(value: impl Hash) -> u64 {
    foldhash::fast::FixedState::with_seed(0).hash_one(value)
}

/// What of a SiteCache wakes a reconcile when it changes (see the module's doc).
pub fn sitecache_trigger(sc: &SiteCache) -> Option<u64> {
    let request = sc
        .annotations()
        .get(SNAPSHOT_REQUEST_ANNOTATION)
        .map(String::as_str);
    // The controller's writes always leave conditions; a status without any lost them.
    let status_lost = sc.status.as_ref().is_none_or(|s| s.conditions.is_empty());
    Some(hash((
        sc.metadata.generation,
        request,
        sc.metadata.deletion_timestamp.is_some(),
        sc.finalizers(),
        status_lost,
    )))
}

/// What of a Job wakes its SiteCache when it changes: its state.
pub fn job_trigger(job: &Job) -> u64 {
    let state = JobView::of(job).map(|v| {
        let state = match v.state {
            JobState::Running { .. } => 0u8,
            JobState::Succeeded { .. } => 1,
            JobState::Failed { .. } => 2,
            JobState::Vanished => 3,
        };
        (state, v.deleting)
    });
    hash(state)
}

/// The Jobs of a watch that wake their SiteCache: a Job seen for the first time, one whose state
/// changed ([`job_trigger`]), and one that is gone. A relist (after `410 Gone`, or a watch that
/// broke) reports no deletion for the Jobs removed in the gap: those that the relist no longer
/// lists are reported gone when it is done, by what is kept of them (name, namespace, owner).
pub fn job_changes<S>(events: S) -> impl Stream<Item = Result<Job, watcher::Error>> + Send
where
    S: Stream<Item = Result<watcher::Event<Job>, watcher::Error>> + Send,
{
    // Per Job uid: its state, and what names it and its owner.
    let mut seen: HashMap<String, (u64, Tomb)> = HashMap::new();
    // The uids a relist under way has listed.
    let mut relisted: Option<std::collections::HashSet<String>> = None;
    events.flat_map(move |event| {
        let jobs: Vec<Result<Job, watcher::Error>> = match event {
            Err(e) => vec![Err(e)],
            Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) => {
                let key = job.uid().unwrap_or_default();
                if let Some(listed) = relisted.as_mut() {
                    listed.insert(key.clone());
                }
                let state = job_trigger(&job);
                match seen.insert(key, (state, Tomb::of(&job))) {
                    Some((was, _)) if was == state => vec![],
                    _ => vec![Ok(job)],
                }
            }
            Ok(watcher::Event::Delete(job)) => {
                seen.remove(&job.uid().unwrap_or_default());
                vec![Ok(job)]
            }
            Ok(watcher::Event::Init) => {
                relisted = Some(Default::default());
                vec![]
            }
            Ok(watcher::Event::InitDone) => {
                let listed = relisted.take().unwrap_or_default();
                let gone: Vec<String> = seen
                    .keys()
                    .filter(|uid| !listed.contains(*uid))
                    .cloned()
                    .collect();
                gone.into_iter()
                    .filter_map(|uid| seen.remove(&uid))
                    .map(|(_, tomb)| Ok(tomb.job()))
                    .collect()
            }
        };
        futures::stream::iter(jobs)
    })
}

/// What is kept of a Job to report it gone: its name and namespace, and the name of the
/// SiteCache that controls it (the one to wake). Three strings, not the Job: every Job of every
/// watched namespace has one while it lives.
struct Tomb {
    name: Option<String>,
    namespace: Option<String>,
    owner: Option<String>,
}

impl Tomb {
    fn of(job: &Job) -> Tomb {
        let owner = job
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == SiteCache::kind(&()))
            .map(|o| o.name.clone());
        Tomb {
            name: job.metadata.name.clone(),
            namespace: job.metadata.namespace.clone(),
            owner,
        }
    }

    /// The Job as far as it is known: enough for its SiteCache to be woken.
    fn job(self) -> Job {
        let mut job = Job::default();
        job.metadata.name = self.name;
        job.metadata.namespace = self.namespace;
        job.metadata.owner_references = self.owner.map(|name| {
            vec![OwnerReference {
                api_version: SiteCache::api_version(&()).into_owned(),
                kind: SiteCache::kind(&()).into_owned(),
                name,
                controller: Some(true),
                ..Default::default()
            }]
        });
        job
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SiteCacheSpec, SiteCacheStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn site() -> SiteCache {
        let spec: SiteCacheSpec =
            serde_json::from_value(serde_json::json!({"site": "shop", "warm": {"image": "d"}}))
                .unwrap();
        let mut sc = SiteCache::new("shop", spec);
        sc.metadata.generation = Some(1);
        sc
    }

    fn written(mut sc: SiteCache, latest: u64) -> SiteCache {
        sc.status = Some(SiteCacheStatus {
            latest_generation: Some(latest),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "GenerationAvailable".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    "2026-01-01T00:00:00Z".parse().unwrap(),
                ),
            }],
            ..Default::default()
        });
        sc
    }

    #[test]
    fn the_controllers_own_status_writes_do_not_wake_it() {
        let a = written(site(), 1);
        let b = written(site(), 2);
        assert_eq!(sitecache_trigger(&a), sitecache_trigger(&b));
    }

    #[test]
    fn spec_requests_deletion_finalizers_and_lost_status_do() {
        let base = written(site(), 1);
        let t = sitecache_trigger(&base);
        let mut spec = base.clone();
        spec.metadata.generation = Some(2);
        let mut request = base.clone();
        request.metadata.annotations =
            Some([(SNAPSHOT_REQUEST_ANNOTATION.to_owned(), "t1".to_owned())].into());
        let mut deleted = base.clone();
        deleted.metadata.deletion_timestamp = Some(
            base.status.as_ref().unwrap().conditions[0]
                .last_transition_time
                .clone(),
        );
        let mut finalized = base.clone();
        finalized.metadata.finalizers = Some(vec!["sitecache.dev/storage-cleanup".into()]);
        let mut lost = base.clone();
        lost.status = None;
        for other in [spec, request, deleted, finalized, lost] {
            assert_ne!(sitecache_trigger(&other), t);
        }
    }

    fn owned_job(name: &str, state: &str) -> Job {
        let status = match state {
            "running" => serde_json::json!({"active": 1}),
            _ => serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}]}),
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "web", "uid": name,
                         "labels": {"sitecache.dev/generation": "1"},
                         "ownerReferences": [{"apiVersion": "sitecache.dev/v1alpha1",
                             "kind": "SiteCache", "name": "shop", "uid": "u", "controller": true}]},
            "status": status,
        }))
        .unwrap()
    }

    async fn names(events: Vec<watcher::Event<Job>>) -> Vec<String> {
        let stream = job_changes(futures::stream::iter(events.into_iter().map(Ok)));
        stream
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|j| {
                let j = j.unwrap();
                if j.status.is_some() {
                    return j.name_any();
                }
                // Reported gone: its SiteCache must be found from what was kept.
                let owner = &j.owner_references()[0];
                assert_eq!(
                    (owner.api_version.as_str(), owner.kind.as_str()),
                    ("sitecache.dev/v1alpha1", "SiteCache")
                );
                format!("{} (gone, of {})", j.name_any(), owner.name)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_relist_reports_the_jobs_that_went_in_the_gap() {
        use watcher::Event::*;
        let seen = names(vec![
            Init,
            InitApply(owned_job("shop-g1", "done")),
            InitApply(owned_job("shop-g2", "running")),
            InitDone,
            // The same state again wakes nothing; a new state does.
            Apply(owned_job("shop-g2", "running")),
            Apply(owned_job("shop-g2", "done")),
            // 410 Gone: shop-g1 was deleted meanwhile, shop-g2 was not.
            Init,
            InitApply(owned_job("shop-g2", "done")),
            InitDone,
        ])
        .await;
        assert_eq!(
            seen,
            ["shop-g1", "shop-g2", "shop-g2", "shop-g1 (gone, of shop)"]
        );
    }

    #[test]
    fn stripping_keeps_what_reconciles_read() {
        let mut sc = site();
        sc.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_owned(), "{...}".to_owned()),
                (SNAPSHOT_REQUEST_ANNOTATION.to_owned(), "t1".to_owned()),
            ]
            .into(),
        );
        strip_sitecache(&mut sc);
        assert_eq!(
            sc.annotations().keys().collect::<Vec<_>>(),
            [SNAPSHOT_REQUEST_ANNOTATION]
        );
    }
}
