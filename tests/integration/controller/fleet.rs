//! Many SiteCaches under one snapshot limit, and a controller restarted mid-snapshot.

use std::time::{Duration, Instant};

use kube::api::ListParams;
use serde_json::json;

use super::harness::{Harness, Options, condition_reason, counter_sum, current, warm};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn five_sitecaches_share_two_snapshot_slots() {
    let h = Harness::start(Options {
        max_concurrent: 2,
        ..Options::default()
    })
    .await;
    let names: Vec<String> = (1..=5).map(|i| format!("site-{i}")).collect();
    for name in &names {
        h.create(name, json!({"site": name, "warm": warm("sleep 2", 2)}))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut most, mut saw_waiting) = (0, false);
    loop {
        let jobs = h.jobs().list(&ListParams::default()).await.unwrap().items;
        let unfinished = jobs
            .iter()
            .filter(|j| {
                !j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                        })
                    })
            })
            .count();
        most = most.max(unfinished);
        let all = h.api().list(&ListParams::default()).await.unwrap().items;
        saw_waiting |= all
            .iter()
            .any(|sc| condition_reason(sc, "Progressing") == Some("WaitingForSlot"));
        if all.len() == 5 && all.iter().all(|sc| current(sc) == Some(1)) {
            break;
        }
        if Instant::now() > deadline {
            h.fail(&format!("not all five promoted; most Jobs at once: {most}"))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        most <= 2,
        "{most} snapshot Jobs ran at once, the limit is 2"
    );
    assert_eq!(most, 2, "the limit was used");
    assert!(saw_waiting, "no SiteCache said it was waiting for a slot");
    let jobs = h.jobs().list(&ListParams::default()).await.unwrap().items;
    assert_eq!(jobs.len(), 5, "one Job each");
    // With every Job done, the gauges say so (no snapshot started after the last one ended).
    let metrics = h.metrics().await;
    for gauge in [
        "sitecache_snapshot_jobs_running 0",
        "sitecache_snapshot_jobs_waiting 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == gauge),
            "no `{gauge}` in:\n{metrics}"
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn controller_restarted_mid_snapshot_converges_without_a_duplicate_job() {
    let mut h = Harness::start(Options::default()).await;
    h.create("shop", json!({"site": "shop", "warm": warm("sleep 4", 2)}))
        .await;
    h.wait("shop", "snapshotting", Duration::from_secs(30), |sc| {
        sc.status.as_ref().and_then(|s| s.active_job.as_deref()) == Some("shop-g1")
    })
    .await;
    h.stop_controller();
    // The Job goes on without the controller.
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.start_controller();
    let sc = h.wait_promoted("shop", 1).await;
    let status = sc.status.as_ref().unwrap();
    assert_eq!(status.latest_generation, Some(1));
    let jobs = h.jobs().list(&ListParams::default()).await.unwrap().items;
    assert_eq!(jobs.len(), 1, "no duplicate Job");
    // And the next generation is 2, once.
    h.request_snapshot("shop", "after-restart").await;
    h.wait_promoted("shop", 2).await;
    assert_eq!(
        h.jobs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert_eq!(h.stored_generations("shop/").await, [1, 2]);
    h.shutdown().await;
}

/// When each SiteCache's `SnapshotStarted` Event was published (microseconds), by name.
async fn snapshot_starts(h: &Harness) -> Vec<(jiff::Timestamp, String)> {
    let events: kube::api::Api<k8s_openapi::api::events::v1::Event> =
        kube::api::Api::namespaced(h.client.clone(), &h.ns);
    let mut starts: Vec<_> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SnapshotStarted"))
        .filter_map(|e| Some((e.event_time?.0, e.regarding?.name?)))
        .collect();
    starts.sort();
    starts
}

#[tokio::test]
async fn waiting_sitecaches_start_in_due_order_one_per_freed_slot_without_polling() {
    let h = Harness::start(Options {
        max_concurrent: 2,
        ..Options::default()
    })
    .await;
    // Two long snapshots take both slots; they end 10 s apart, so that the waiters start one after
    // another in one freed slot (starts are compared by their Events, which are published after
    // the status write that records them: two starts in the same instant could swap).
    for (name, sleep) in [("long-1", 35), ("long-2", 45)] {
        h.create(
            name,
            json!({"site": name, "warm": warm(&format!("sleep {sleep}"), 1)}),
        )
        .await;
    }
    for name in ["long-1", "long-2"] {
        h.wait(name, "snapshotting", MINUTE, |sc| {
            sc.status
                .as_ref()
                .and_then(|s| s.active_job.as_ref())
                .is_some()
        })
        .await;
    }
    // Five more are due, a second apart (a new SiteCache is due since its creation).
    let waiters: Vec<String> = (1..=5).map(|i| format!("wait-{i}")).collect();
    for name in &waiters {
        h.create(name, json!({"site": name, "warm": warm("", 1)}))
            .await;
        h.wait(name, "waiting for a slot", MINUTE, |sc| {
            condition_reason(sc, "Progressing") == Some("WaitingForSlot")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // While nothing ends, nothing happens: no SiteCache polls for a slot.
    let reconciles = |m: &str| counter_sum(m, "sitecache_reconciles_total");
    let before = reconciles(&h.metrics().await);
    tokio::time::sleep(Duration::from_secs(25)).await;
    let after = reconciles(&h.metrics().await);
    assert_eq!(after, before, "reconciles while every waiter waits");
    assert!(h.jobs().get_opt("wait-1-g1").await.unwrap().is_none());

    for name in &waiters {
        h.wait_promoted(name, 1).await;
    }
    let started: Vec<String> = snapshot_starts(&h)
        .await
        .into_iter()
        .map(|(_, name)| name)
        .filter(|n| n.starts_with("wait-"))
        .collect();
    assert_eq!(started, waiters, "the earliest due start first");
    // Each freed slot woke one SiteCache: the five waiters, once each.
    let metrics = h.metrics().await;
    assert_eq!(
        counter_sum(&metrics, "sitecache_snapshot_queue_wakeups_total"),
        5.0,
        "{metrics}"
    );
    h.shutdown().await;
}
