//! Failed snapshots and their retries: each finished Job is handled exactly once, however long it
//! stays in the cache and whatever Job runs after it.

use std::time::Duration;

use serde_json::json;
use sitecache::api::{Phase, SnapshotResult};

use super::harness::{Harness, Options, condition, condition_reason, current, warm};

const MINUTE: Duration = Duration::from_secs(60);

/// What a status says about the snapshots, for comparing a SiteCache's history line by line.
fn summary(s: &sitecache::api::SiteCacheStatus) -> String {
    let last = s.last_snapshot.as_ref();
    format!(
        "phase {:?}, last snapshot g{} {:?}, {} failures in a row",
        s.phase,
        last.map_or(0, |l| l.generation),
        last.and_then(|l| l.result),
        s.consecutive_failures
    )
}

#[tokio::test]
async fn a_failed_job_is_handled_once_while_its_retry_runs() {
    // Long enough that the failure is recorded before the backoff lets the retry start, however
    // late a loaded machine runs that reconcile (with 1 s, both landed in one write once).
    let h = Harness::start(Options {
        failure_backoff: "5s",
        ..Options::default()
    })
    .await;
    let statuses = h.record_statuses("shop");
    // The first attempt fails; the retry runs for a while (the failed Job stays in the cache the
    // whole time: there is no TTL controller here), then succeeds.
    let once = h.dir.join("failed-once");
    let script = format!(
        "if [ ! -e {m} ]; then touch {m}; echo 'registry unreachable' >&2; exit 3; fi; sleep 6",
        m = once.display()
    );
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm(&script, 2), "snapshot": {"backoffLimit": 0}}),
    )
    .await;
    let sc = h.wait_promoted("shop", 2).await;
    assert_eq!(sc.status.as_ref().unwrap().consecutive_failures, 0);

    let seen = statuses.seen_up_to(&sc).await;
    let history: Vec<String> = seen.iter().skip(1).map(summary).collect();
    let expected = [
        format!(
            "phase {:?}, last snapshot g1 {:?}, 0 failures in a row",
            Some(Phase::Snapshotting),
            Some(SnapshotResult::Running)
        ),
        format!(
            "phase {:?}, last snapshot g1 {:?}, 1 failures in a row",
            Some(Phase::Failed),
            Some(SnapshotResult::Failed)
        ),
        format!(
            "phase {:?}, last snapshot g2 {:?}, 1 failures in a row",
            Some(Phase::Snapshotting),
            Some(SnapshotResult::Running)
        ),
        format!(
            "phase {:?}, last snapshot g2 {:?}, 0 failures in a row",
            Some(Phase::Ready),
            Some(SnapshotResult::Succeeded)
        ),
    ];
    if history != expected {
        h.fail(&format!(
            "{} status writes, not the 4 expected:\n{}\n{}",
            history.len(),
            history.join("\n"),
            serde_json::to_string_pretty(&seen).unwrap()
        ))
        .await;
    }
    assert_eq!(
        h.event_count("shop", "BackoffLimitExceeded").await,
        1,
        "the failure is published once"
    );
    assert_eq!(h.event_count("shop", "SnapshotStarted").await, 2);
    assert_eq!(h.event_count("shop", "Promoted").await, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn retention_that_fails_is_retried_without_waiting_for_a_promotion() {
    let h = Harness::without_delete_rights().await;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 2), "retention": {"keep": 1}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;
    h.request_snapshot("shop", "second").await;
    // Generation 2 is promoted; deleting generation 1 is refused, and the status says so.
    let sc = h
        .wait("shop", "owing the deletion of generation 1", MINUTE, |sc| {
            current(sc) == Some(2)
                && sc.status.as_ref().unwrap().expired_generations == [1]
                && condition_reason(sc, "Degraded") == Some("AccessDenied")
        })
        .await;
    assert_eq!(condition(&sc, "Ready"), Some("True"));
    assert_eq!(h.stored_generations("shop/").await, [1, 2]);

    // Allowed to delete, the controller finishes retention on its next retry, with no new Job.
    h.allow_delete();
    let sc = h
        .wait(
            "shop",
            "done with retention",
            Duration::from_secs(90),
            |sc| {
                sc.status.as_ref().unwrap().expired_generations.is_empty()
                    && condition(sc, "Degraded") == Some("False")
            },
        )
        .await;
    assert_eq!(current(&sc), Some(2));
    assert_eq!(h.stored_generations("shop/").await, [2]);
    assert!(h.jobs().get_opt("shop-g3").await.unwrap().is_none());
    assert_eq!(h.event_count("shop", "Promoted").await, 2);
    let metrics = h.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "sitecache_snapshot_jobs_total{result=\"succeeded\"} 2"),
        "each Job is counted once:\n{metrics}"
    );
    h.shutdown().await;
}
