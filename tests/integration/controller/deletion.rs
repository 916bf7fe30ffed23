//! Deleting SiteCaches: the prefix emptied (or kept), a running Job stopped, storage outages, and
//! prefixes that belong to another SiteCache.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use sitecache_devtools::Store;

use super::harness::{
    Harness, Options, cond, condition, condition_reason, counter_sum, eventually, quiet_proxy, warm,
};

const MINUTE: Duration = Duration::from_secs(60);

// Emptying a prefix, on every S3 implementation (`NAME::minio`, `NAME::seaweedfs`).
on_every_store!(
    delete_policy_empties_the_prefix_and_retain_keeps_it,
    delete_while_a_job_runs_stops_it_and_leaves_nothing,
    a_second_sitecache_on_an_owned_prefix_is_refused_and_its_deletion_touches_nothing,
    deletion_aborts_every_unfinished_upload_under_the_prefix,
);

async fn delete_policy_empties_the_prefix_and_retain_keeps_it(store: Store) {
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    h.create("gone", json!({"site": "gone", "warm": warm("", 2)}))
        .await;
    h.create(
        "kept",
        json!({"site": "kept", "warm": warm("", 2), "deletionPolicy": "Retain"}),
    )
    .await;
    let sc = h.wait_promoted("gone", 1).await;
    assert!(
        sc.metadata
            .finalizers
            .as_ref()
            .unwrap()
            .contains(&"sitecache.dev/storage-cleanup".to_owned())
    );
    h.wait_promoted("kept", 1).await;
    let kept_before = h.keys("kept/").await;
    assert!(kept_before.contains(&"kept/current.json".to_owned()));
    assert!(!h.keys("gone/").await.is_empty());

    h.delete("gone").await;
    h.delete("kept").await;
    h.wait_gone("gone", MINUTE).await;
    h.wait_gone("kept", MINUTE).await;
    assert_eq!(
        h.keys("gone/").await,
        Vec::<String>::new(),
        "the prefix is empty"
    );
    assert_eq!(
        h.keys("kept/").await,
        kept_before,
        "Retain leaves every object"
    );
    let metrics = h.metrics().await;
    let deleted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sitecache_storage_objects_deleted_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sitecache_storage_objects_deleted_total in:\n{metrics}"));
    assert!(deleted >= 4, "{deleted} objects counted as deleted");
    h.shutdown().await;
}

async fn delete_while_a_job_runs_stops_it_and_leaves_nothing(store: Store) {
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    h.create("shop", json!({"site": "shop", "warm": warm("sleep 30", 2)}))
        .await;
    h.wait("shop", "snapshotting", MINUTE, |sc| {
        sc.status.as_ref().and_then(|s| s.active_job.as_deref()) == Some("shop-g1")
    })
    .await;
    h.delete("shop").await;
    h.wait_gone("shop", MINUTE).await;
    assert!(
        h.jobs().get_opt("shop-g1").await.unwrap().is_none(),
        "the Job was deleted"
    );
    assert_eq!(h.keys("shop/").await, Vec::<String>::new());
    // Nothing arrives late either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.keys("shop/").await, Vec::<String>::new());
    h.shutdown().await;
}

#[tokio::test]
async fn storage_outage_blocks_deletion_until_it_is_back() {
    let mut h = Harness::start(Options {
        own_s3: true,
        ..Options::default()
    })
    .await;
    h.create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    h.s3_mut().stop();
    h.delete("shop").await;
    let sc = h
        .wait("shop", "DeletionBlocked", MINUTE, |sc| {
            condition(sc, "DeletionBlocked") == Some("True")
        })
        .await;
    let blocked = cond(&sc, "DeletionBlocked");
    assert!(blocked.reason.starts_with("Storage"), "{blocked:?}");
    assert!(
        blocked.message.contains("unreachable") || blocked.message.contains("timed out"),
        "{blocked:?}"
    );
    assert_eq!(
        sc.status.as_ref().unwrap().phase,
        Some(sitecache::api::Phase::Deleting)
    );
    assert!(
        h.event_reasons("shop")
            .await
            .iter()
            .any(|r| r == "DeletionBlocked")
    );

    h.s3_mut().restart().await.expect("restart the S3 server");
    h.wait_gone("shop", Duration::from_secs(120)).await;
    assert_eq!(h.keys("shop/").await, Vec::<String>::new());
    h.shutdown().await;
}

async fn a_second_sitecache_on_an_owned_prefix_is_refused_and_its_deletion_touches_nothing(
    store: Store,
) {
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    let storage = json!({"prefix": "shared/"});
    h.create(
        "first",
        json!({"site": "first", "warm": warm("", 2), "storage": storage}),
    )
    .await;
    h.wait_promoted("first", 1).await;
    let before = h.keys("shared/").await;

    h.create(
        "second",
        json!({"site": "second", "warm": warm("", 2), "storage": storage}),
    )
    .await;
    let sc = h
        .wait("second", "refusing the prefix", MINUTE, |sc| {
            condition_reason(sc, "Ready") == Some("PrefixOwnedByAnother")
        })
        .await;
    let ready = cond(&sc, "Ready");
    assert!(ready.message.contains("first"), "{ready:?}");
    assert_eq!(
        sc.status.as_ref().unwrap().phase,
        Some(sitecache::api::Phase::Failed)
    );
    let jobs = h
        .jobs()
        .list(&ListParams::default().labels(&format!(
            "sitecache.dev/uid={}",
            sc.metadata.uid.as_deref().unwrap()
        )))
        .await
        .unwrap();
    assert!(jobs.items.is_empty(), "no Job for the second SiteCache");

    h.delete("second").await;
    h.wait_gone("second", MINUTE).await;
    assert_eq!(
        h.keys("shared/").await,
        before,
        "the first SiteCache's objects are intact"
    );
    assert!(
        h.event_reasons("second")
            .await
            .iter()
            .any(|r| r == "PrefixNotOwned")
    );
    h.shutdown().await;
}

/// Unfinished multipart uploads the store lists for `prefix` (MinIO lists them by exact key).
async fn unfinished_uploads(h: &Harness, prefix: &str) -> usize {
    let s3 = h.s3().client();
    let (mut count, mut key_marker, mut id_marker) = (0, None::<String>, None::<String>);
    loop {
        let out = s3
            .list_multipart_uploads()
            .bucket(&h.bucket)
            .prefix(prefix)
            .set_key_marker(key_marker.take())
            .set_upload_id_marker(id_marker.take())
            .send()
            .await
            .expect("list multipart uploads");
        count += out.uploads().len();
        if !out.is_truncated().unwrap_or(false) {
            return count;
        }
        key_marker = out.next_key_marker().map(str::to_owned);
        id_marker = out.next_upload_id_marker().map(str::to_owned);
    }
}

async fn deletion_aborts_every_unfinished_upload_under_the_prefix(store: Store) {
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    h.create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    // More abandoned uploads of the next generation's archive than AWS lists in one page (1000),
    // as killed snapshot attempts would leave.
    let key = "shop/generations/00000000000000000002/cache.tar.zst";
    let s3 = h.s3().client();
    let uploads = 1010;
    let bucket = h.bucket.clone();
    let mut started = futures::stream::iter(0..uploads)
        .map(|_| {
            let s3 = s3.clone();
            let bucket = bucket.clone();
            async move {
                s3.create_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .expect("start a multipart upload")
            }
        })
        .buffer_unordered(32);
    while started.next().await.is_some() {}
    drop(started);
    assert_eq!(unfinished_uploads(&h, key).await, uploads);

    h.delete("shop").await;
    h.wait_gone("shop", MINUTE).await;
    assert_eq!(unfinished_uploads(&h, key).await, 0);
    assert_eq!(h.keys("shop/").await, Vec::<String>::new());
    h.shutdown().await;
}

#[tokio::test]
async fn deletion_without_the_right_to_delete_stays_blocked_backs_off_and_clears_once_allowed() {
    // The controller may do everything but delete objects: a storage failure that persists.
    let h = Harness::without_delete_rights().await;
    h.create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    let stored = h.keys("shop/").await;

    h.delete("shop").await;
    let sc = h
        .wait("shop", "DeletionBlocked", MINUTE, |sc| {
            condition(sc, "DeletionBlocked") == Some("True")
        })
        .await;
    let first = cond(&sc, "DeletionBlocked");
    assert_eq!(first.reason, "AccessDenied", "{first:?}");
    assert!(first.message.contains("DELETE"), "{first:?}");
    assert_eq!(
        sc.status.as_ref().unwrap().phase,
        Some(sitecache::api::Phase::Deleting)
    );

    // Retries go on, backing off, and the condition holds still: no flapping, no status writes.
    let statuses = h.record_statuses("shop");
    let errors = |m: &str| counter_sum(m, "sitecache_reconcile_errors_total");
    let before = errors(&h.metrics().await);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let retries = errors(&h.metrics().await) - before;
    let seen = statuses.seen();
    assert_eq!(
        seen.len(),
        1,
        "the status was written {} times while nothing changed: {:#?}",
        seen.len() - 1,
        seen
    );
    let now = h.api().get("shop").await.unwrap();
    assert_eq!(cond(&now, "DeletionBlocked"), first);
    // 1 s doubling with ±25% jitter: at most 5 attempts in 20 s (a hot loop makes hundreds).
    assert!(
        (1.0..=6.0).contains(&retries),
        "{retries} failed deletion attempts in 20 s"
    );
    assert_eq!(h.keys("shop/").await, stored, "nothing was deleted");

    // Once the controller may delete, the next retry finishes the job.
    h.allow_delete();
    h.wait_gone("shop", Duration::from_secs(90)).await;
    assert_eq!(h.keys("shop/").await, Vec::<String>::new());
    h.shutdown().await;
}

/// A snapshot pod of SiteCache `uid` on a node that is gone: its deletion never completes (a
/// finalizer stands in for the kubelet that never confirms it) until [`release_lost_pod`].
async fn lost_pod(h: &Harness, uid: &str) -> Api<Pod> {
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), &h.ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "shop-g2-lost",
            "labels": {"app.kubernetes.io/managed-by": "sitecache", "sitecache.dev/uid": uid},
            "finalizers": ["sitecache.dev/test-hold"],
        },
        "spec": {"nodeName": "lost-node", "containers": [{"name": "snapshot", "image": "x"}]},
    }))
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    pods
}

async fn release_lost_pod(pods: &Api<Pod>) {
    pods.patch(
        "shop-g2-lost",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_snapshot_pod_that_never_stops_blocks_deletion_for_a_bounded_time() {
    let h = Harness::start(Options {
        extra_args: vec!["--snapshot-pod-stop-timeout".into(), "6s".into()],
        ..Options::default()
    })
    .await;
    let sc = h
        .create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    let pods = lost_pod(&h, &sc.metadata.uid.clone().unwrap()).await;

    h.delete("shop").await;
    let sc = h
        .wait("shop", "DeletionBlocked by the pod", MINUTE, |sc| {
            condition(sc, "DeletionBlocked") == Some("True")
        })
        .await;
    let blocked = cond(&sc, "DeletionBlocked");
    assert_eq!(blocked.reason, "SnapshotPodRunning", "{blocked:?}");
    assert!(
        blocked.message.contains("shop-g2-lost") && blocked.message.contains("lost-node"),
        "{blocked:?}"
    );
    // Past the bound, deletion goes on without it.
    h.wait_gone("shop", MINUTE).await;
    assert_eq!(h.keys("shop/").await, Vec::<String>::new());
    assert_eq!(h.event_count("shop", "SnapshotPodAbandoned").await, 1);
    release_lost_pod(&pods).await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_sitecache_whose_status_was_lost_is_cleaned_up_where_its_spec_puts_it() {
    let mut h = Harness::start(Options::default()).await;
    h.create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    assert!(!h.keys("shop/").await.is_empty());
    // While the controller is down, the status is lost (a restore from a backup without
    // status), then the SiteCache is deleted.
    h.stop_controller();
    h.api()
        .patch_status(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": null})),
        )
        .await
        .unwrap();
    h.delete("shop").await;
    h.start_controller();
    h.wait_gone("shop", MINUTE).await;
    assert_eq!(h.keys("shop/").await, Vec::<String>::new());
    h.shutdown().await;
}

#[tokio::test]
async fn a_snapshot_pod_abandoned_while_the_controller_was_down_is_said_so() {
    let mut h = Harness::start(Options {
        extra_args: vec!["--snapshot-pod-stop-timeout".into(), "2s".into()],
        ..Options::default()
    })
    .await;
    let sc = h
        .create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    let pods = lost_pod(&h, &sc.metadata.uid.clone().unwrap()).await;
    // The whole stop timeout passes while the controller is down.
    h.stop_controller();
    h.delete("shop").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.start_controller();
    h.wait_gone("shop", MINUTE).await;
    assert_eq!(
        h.event_count("shop", "SnapshotPodAbandoned").await,
        1,
        "{:#?}",
        h.events_about("shop").await
    );
    release_lost_pod(&pods).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_snapshot_pods_are_said_once_however_often_the_cleanup_is_retried() {
    let proxy = quiet_proxy(5).await;
    let h = Harness::start(Options {
        controller_endpoint: Some(proxy.endpoint()),
        extra_args: vec!["--snapshot-pod-stop-timeout".into(), "2s".into()],
        ..Options::default()
    })
    .await;
    let sc = h
        .create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    let pods = lost_pod(&h, &sc.metadata.uid.clone().unwrap()).await;
    // The first purges after the pods are abandoned fail (DeleteObjects, the only POST a
    // cleanup sends, takes effect and its answer never arrives): the cleanup is retried.
    proxy.lose_responses("POST", "");
    h.delete("shop").await;
    let sc = h
        .wait("shop", "a purge that failed", MINUTE, |sc| {
            condition(sc, "DeletionBlocked") == Some("True")
                && condition_reason(sc, "DeletionBlocked") != Some("SnapshotPodRunning")
        })
        .await;
    assert!(proxy.lost() > 0, "{:?}", cond(&sc, "DeletionBlocked"));
    proxy.keep_responses();
    h.wait_gone("shop", MINUTE).await;
    assert_eq!(h.keys("shop/").await, Vec::<String>::new());
    assert_eq!(h.event_count("shop", "SnapshotPodAbandoned").await, 1);
    release_lost_pod(&pods).await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_sitecache_gone_without_its_cleanup_leaves_no_gauge_behind() {
    // Deletion will be blocked (no right to delete), and the user removes the finalizer.
    let h = Harness::without_delete_rights().await;
    // Never promoted: its cache is Missing, which the stale gauge counts.
    h.create(
        "shop",
        json!({"site": "shop", "warm": {"image": "site:test", "command": ["sh", "-c", "exit 3"]}}),
    )
    .await;
    let stale = |m: &str| counter_sum(m, "sitecache_stale_sitecaches");
    eventually("counted as stale", MINUTE, || async {
        stale(&h.metrics().await) == 1.0
    })
    .await;
    h.delete("shop").await;
    h.wait("shop", "DeletionBlocked", MINUTE, |sc| {
        condition(sc, "DeletionBlocked") == Some("True")
    })
    .await;
    // Its finalizer removed by hand, it goes without a cleanup reconcile that succeeded.
    h.patch("shop", json!({"metadata": {"finalizers": null}}))
        .await;
    h.wait_gone("shop", MINUTE).await;
    eventually(
        "the gone SiteCache no longer counted as stale",
        MINUTE,
        || async { stale(&h.metrics().await) == 0.0 },
    )
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_does_not_list_uploads_blocks_neither_retention_nor_deletion() {
    let proxy = quiet_proxy(3).await;
    // ListMultipartUploads is optional: some S3-compatible stores answer NotImplemented.
    proxy.not_implemented("GET", "uploads");
    let h = Harness::start(Options {
        controller_endpoint: Some(proxy.endpoint()),
        ..Options::default()
    })
    .await;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 2), "retention": {"keep": 1}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;
    h.request_and_wait("shop", "two").await;
    h.wait_promoted("shop", 2).await;
    // Retention deleted generation 1 without listing its uploads.
    h.wait("shop", "generation 1 deleted", MINUTE, |sc| {
        sc.status.as_ref().unwrap().expired_generations.is_empty()
    })
    .await;
    assert_eq!(h.stored_generations("shop/").await, [2]);
    h.delete("shop").await;
    h.wait_gone("shop", MINUTE).await;
    assert_eq!(h.keys("shop/").await, Vec::<String>::new());
    assert!(proxy.not_implemented_answers() > 0);
    h.shutdown().await;
}
