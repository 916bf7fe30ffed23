//! Results that outlive their Jobs and the controller's absence: a promotion whose status write
//! never happened, a Job deleted before the controller recorded it, a Job deleted in the
//! foreground while it runs, a generation superseded a moment after a runner read
//! `current.json`.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use sitecache::api::SnapshotResult;
use sitecache::controller::jobs::RESULT_FINALIZER;
use sitecache_devtools::FaultProxy;

use super::harness::{Harness, Options, condition_reason, current, eventually, quiet_proxy, warm};

const MINUTE: Duration = Duration::from_secs(60);

/// The generation `shop/current.json` names, if any.
async fn named_by_current(h: &Harness) -> Option<u64> {
    let bytes = h.get("shop/current.json").await?;
    let current: Value = serde_json::from_slice(&bytes).unwrap();
    current["generation"].as_u64()
}

/// Restores what `shop/current.json` names, as a runner does; returns its result line.
fn restore(h: &Harness) -> Value {
    let dest = h.dir.join(format!("restored-{}", fastrand::u32(..)));
    h.restore_into(&format!("s3://{}/shop/", h.bucket), &dest)
}

/// A harness whose controller calls storage through a fault proxy, with `shop` (of `spec`)
/// promoted at generation 1.
async fn shop_behind_a_proxy(seed: u64, spec: Value) -> (Harness, FaultProxy) {
    let proxy = quiet_proxy(seed).await;
    let h = Harness::start(Options {
        controller_endpoint: Some(proxy.endpoint()),
        ..Options::default()
    })
    .await;
    h.create("shop", spec).await;
    h.wait_promoted("shop", 1).await;
    (h, proxy)
}

/// Generation 2 is snapshot, and the controller writes `current.json` for it and never learns
/// that it did, as if it were killed right after the write; then it is stopped. Its status
/// still says generation 1.
async fn promote_2_and_stop_before_the_status_write(h: &mut Harness, proxy: &FaultProxy) {
    proxy.lose_responses("PUT", "/shop/current.json");
    h.request_snapshot("shop", "two").await;
    eventually("current.json naming generation 2", MINUTE, || async {
        named_by_current(h).await == Some(2)
    })
    .await;
    assert!(proxy.lost() > 0);
    h.stop_controller();
    let sc = h.api().get("shop").await.unwrap();
    assert_eq!(
        current(&sc),
        Some(1),
        "the status write happened: {:?}",
        sc.status
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_outlives_a_controller_killed_before_its_status_write_and_its_jobs_deletion() {
    let (mut h, proxy) = shop_behind_a_proxy(1, json!({"site": "shop", "warm": warm("", 3)})).await;
    promote_2_and_stop_before_the_status_write(&mut h, &proxy).await;

    // While it is down, the Job is deleted (its TTL, a GitOps prune, kubectl delete).
    h.jobs()
        .delete("shop-g2", &DeleteParams::background())
        .await
        .unwrap();
    h.restart_controller_at(None);

    // Generation 2 is promoted from the Job it kept, and current.json names an archive that
    // exists and restores.
    let sc = h.wait_promoted("shop", 2).await;
    let last = sc.status.as_ref().unwrap().last_snapshot.clone().unwrap();
    assert_eq!(
        (last.generation, last.result),
        (2, Some(SnapshotResult::Succeeded))
    );
    assert_eq!(named_by_current(&h).await, Some(2));
    let restored = restore(&h);
    assert_eq!(restored["generation"], json!(2), "{restored}");
    assert!(h.stored_generations("shop/").await.contains(&2));
    // Once recorded, the Job and its pods are released: the deletion completes.
    eventually("Job shop-g2 released and gone", MINUTE, || async {
        h.jobs().get_opt("shop-g2").await.unwrap().is_none()
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn current_json_that_names_an_unrecorded_generation_is_brought_back_to_the_status() {
    let (mut h, proxy) = shop_behind_a_proxy(
        2,
        json!({"site": "shop", "warm": warm("", 3), "retention": {"keep": 1}}),
    )
    .await;
    promote_2_and_stop_before_the_status_write(&mut h, &proxy).await;
    // The Job's result is lost for good: its finalizers removed by hand, then deleted.
    let jobs = h.jobs();
    jobs.patch(
        "shop-g2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    jobs.delete("shop-g2", &DeleteParams::background())
        .await
        .unwrap();
    // No retry of the request may hide what follows.
    h.patch("shop", json!({"spec": {"suspend": true}})).await;
    h.restart_controller_at(None);

    // Generation 2 is lost (JobLost), and current.json names generation 1 again before
    // retention deletes generation 2: every restore works.
    let sc = h
        .wait("shop", "recording the lost Job", MINUTE, |sc| {
            sc.status
                .as_ref()
                .and_then(|s| s.last_snapshot.as_ref())
                .is_some_and(|l| l.generation == 2 && l.reason.as_deref() == Some("JobLost"))
        })
        .await;
    assert_eq!(current(&sc), Some(1));
    assert_eq!(named_by_current(&h).await, Some(1));
    let restored = restore(&h);
    assert_eq!(restored["generation"], json!(1), "{restored}");
    assert!(
        h.event_reasons("shop")
            .await
            .contains(&"CurrentRestored".to_owned())
    );
    eventually("generation 2 deleted", MINUTE, || async {
        h.stored_generations("shop/").await == [1]
    })
    .await;
    assert_eq!(
        condition_reason(&h.api().get("shop").await.unwrap(), "Ready"),
        Some("GenerationAvailable")
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_deleted_in_the_foreground_while_it_runs_is_a_failure_once_its_pod_stopped() {
    let h = Harness::start(Options::default()).await;
    h.create("shop", json!({"site": "shop", "warm": warm("sleep 4", 3)}))
        .await;
    h.wait("shop", "snapshotting", MINUTE, |sc| {
        condition_reason(sc, "Progressing") == Some("SnapshotRunning")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // As `kubectl delete --cascade=foreground` or Argo CD's prune deletes it.
    h.jobs()
        .delete("shop-g1", &DeleteParams::foreground())
        .await
        .unwrap();
    let sc = h
        .wait("shop", "recording the deleted Job", MINUTE, |sc| {
            sc.status
                .as_ref()
                .and_then(|s| s.last_snapshot.as_ref())
                .is_some_and(|l| l.result == Some(SnapshotResult::Failed))
        })
        .await;
    let status = sc.status.as_ref().unwrap();
    let last = status.last_snapshot.as_ref().unwrap();
    assert_eq!(
        (last.generation, last.reason.as_deref()),
        (1, Some("JobDeleted")),
        "{last:?}"
    );
    assert_eq!(status.consecutive_failures, 1);
    // The next generation waited for the pod to stop and then for the failure backoff.
    assert!(h.jobs().get_opt("shop-g2").await.unwrap().is_none());
    assert_eq!(h.event_count("shop", "JobDeleted").await, 1);
    h.wait_promoted("shop", 2).await;
    assert_eq!(h.event_count("shop", "JobDeleted").await, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn a_superseded_generation_outlives_its_promotion_by_the_grace_period() {
    let h = Harness::start(Options {
        retention_grace: "5s",
        ..Options::default()
    })
    .await;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 3), "retention": {"keep": 1}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;
    let archive_1 = h.archive_key_of("shop/", 1).await;
    h.request_and_wait("shop", "two").await;
    let sc = h.wait_promoted("shop", 2).await;
    // A runner that read current.json just before the promotion still finds generation 1.
    assert!(
        h.get(&archive_1).await.is_some(),
        "generation 1 went at once"
    );
    assert_eq!(sc.status.as_ref().unwrap().expired_generations, [1]);
    let promoted_at = sc
        .status
        .as_ref()
        .unwrap()
        .current
        .as_ref()
        .unwrap()
        .promoted_at
        .clone();
    assert!(promoted_at.is_some());
    // Then it goes, with nothing else to wake the SiteCache.
    eventually(
        "generation 1 deleted after the grace period",
        MINUTE,
        || async { h.stored_generations("shop/").await == [2] },
    )
    .await;
    h.wait("shop", "no generation left to expire", MINUTE, |sc| {
        sc.status.as_ref().unwrap().expired_generations.is_empty()
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_status_restored_from_an_older_backup_follows_current_json_and_never_rolls_it_back() {
    let mut h = Harness::start(Options::default()).await;
    h.create("shop", json!({"site": "shop", "warm": warm("", 3)}))
        .await;
    let backup = h.wait_promoted("shop", 1).await.status.unwrap();
    h.request_and_wait("shop", "two").await;
    h.wait_promoted("shop", 2).await;
    // Released just after the status write that recorded it.
    eventually("Job shop-g2 released", MINUTE, || async {
        let job = h.jobs().get("shop-g2").await.unwrap();
        !job.finalizers().iter().any(|f| f == RESULT_FINALIZER)
    })
    .await;
    // The status goes back to what a backup taken at generation 1 held, and generation 2's Job
    // is long gone (its TTL).
    h.stop_controller();
    h.jobs()
        .delete("shop-g2", &DeleteParams::background())
        .await
        .unwrap();
    eventually("Job shop-g2 gone", MINUTE, || async {
        h.jobs().get_opt("shop-g2").await.unwrap().is_none()
    })
    .await;
    h.api()
        .patch_status(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": backup})),
        )
        .await
        .unwrap();
    assert_eq!(current(&h.api().get("shop").await.unwrap()), Some(1));
    h.start_controller();
    let sc = h
        .wait("shop", "following current.json", MINUTE, |sc| {
            current(sc) == Some(2)
        })
        .await;
    assert_eq!(named_by_current(&h).await, Some(2));
    assert_eq!(sc.status.as_ref().unwrap().latest_generation, Some(2));
    assert!(
        h.event_reasons("shop")
            .await
            .contains(&"CurrentAdopted".to_owned())
    );
    h.shutdown().await;
}
