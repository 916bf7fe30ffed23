//! One SiteCache's life: first generation, source changes and retention, on-demand requests,
//! maxAge, failing and empty warm steps, adoption after a lost status; on every S3 implementation
//! the tests start.

use std::time::Duration;

use kube::ResourceExt;
use serde_json::json;
use sitecache::api::{Freshness, Phase, SnapshotResult};
use sitecache::archive::Current;
use sitecache_devtools::Store;

use super::harness::{
    AGENT_IMAGE, Harness, Options, condition, condition_reason, current, eventually, warm,
};

const MINUTE: Duration = Duration::from_secs(60);

// Each test runs against MinIO and SeaweedFS (`NAME::minio`, `NAME::seaweedfs`).
on_every_store!(
    create_runs_a_job_and_promotes_generation_1,
    revision_changes_make_generations_and_retention_keeps_two,
    on_demand_request_makes_a_generation_and_is_acknowledged,
    max_age_makes_the_cache_stale_then_refreshes_it,
    failing_warm_step_degrades_keeps_current_and_backs_off,
    empty_or_too_small_cache_is_never_promoted,
    wiped_status_continues_after_the_highest_generation,
    a_new_revision_is_built_from_an_empty_cache_so_old_modules_go,
    stale_is_written_when_max_age_passes_while_suspended_or_running,
);

async fn create_runs_a_job_and_promotes_generation_1(store: Store) {
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    // Ready once its watches have listed (a readiness probe relies on it).
    h.wait_ready().await;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 5), "source": {"revision": "r1"},
               "snapshot": {"minFiles": 3}}),
    )
    .await;

    // The Job as the controller built it.
    let job = loop {
        if let Some(j) = h.jobs().get_opt("shop-g1").await.unwrap() {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("SiteCache", "shop")
    );
    assert_eq!(job.labels()["app.kubernetes.io/managed-by"], "sitecache");
    assert_eq!(job.labels()["sitecache.dev/generation"], "1");
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.active_deadline_seconds, Some(1800));
    assert_eq!(spec.backoff_limit, Some(1));
    assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
    let pod = spec.template.spec.as_ref().unwrap();
    assert!(pod.volumes.as_ref().unwrap()[0].empty_dir.is_some());
    let init: Vec<_> = pod
        .init_containers
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["warm"], "nothing to restore before generation 1");
    let snapshot = &pod.containers[0];
    assert_eq!(snapshot.image.as_deref(), Some(AGENT_IMAGE));
    let args = snapshot.args.as_ref().unwrap().join(" ");
    assert!(
        args.contains(&format!("--url s3://{}/shop/ --generation 1", h.bucket)),
        "{args}"
    );
    assert!(
        args.contains("--min-files 3 --source-revision r1"),
        "{args}"
    );

    let sc = h.wait_promoted("shop", 1).await;
    let status = sc.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Ready));
    assert_eq!(status.freshness, Some(Freshness::Fresh));
    assert_eq!(condition(&sc, "Fresh"), Some("True"));
    assert_eq!(condition(&sc, "Degraded"), Some("False"));
    assert_eq!(
        status.url.as_deref(),
        Some(format!("s3://{}/shop/", h.bucket).as_str())
    );
    assert_eq!(status.latest_generation, Some(1));
    assert_eq!(status.active_job, None);
    let last = status.last_snapshot.as_ref().unwrap();
    assert_eq!(last.result, Some(SnapshotResult::Succeeded));
    assert_eq!(last.job, "shop-g1");
    let cur = status.current.as_ref().unwrap();
    assert_eq!(cur.files, 5 + 1, "five modules and the marker");
    assert_eq!(cur.source_revision.as_deref(), Some("r1"));
    assert_eq!(status.generations.len(), 1);

    // current.json in storage says the same.
    let bytes = h
        .s3()
        .get_bytes(&h.bucket, "shop/current.json")
        .await
        .unwrap();
    let stored: Current = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(stored.manifest.generation, 1);
    assert_eq!(stored.manifest.sha256, cur.sha256);
    assert!(
        h.keys("shop/")
            .await
            .contains(&"shop/.sitecache-owner.json".to_owned())
    );

    // Events are published once the status that records them is written: just after it.
    eventually(
        "the SnapshotStarted and Promoted Events",
        MINUTE,
        || async {
            let events = h.event_reasons("shop").await;
            ["SnapshotStarted", "Promoted"]
                .iter()
                .all(|reason| events.iter().any(|r| r == reason))
        },
    )
    .await;
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("sitecache_generations_promoted_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sitecache_snapshot_jobs_total{result=\"succeeded\"} 1"),
        "{metrics}"
    );
    h.shutdown().await;
}

async fn revision_changes_make_generations_and_retention_keeps_two(store: Store) {
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    // Warming on top of the current generation when the revision changes (rebuilds are
    // another test's).
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 3), "source": {"revision": "r1"},
               "retention": {"keep": 2}, "snapshot": {"rebuild": {"onRevisionChange": false}}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;

    h.patch("shop", json!({"spec": {"source": {"revision": "r2"}}}))
        .await;
    let sc = h.wait_promoted("shop", 2).await;
    assert_eq!(
        sc.status
            .as_ref()
            .unwrap()
            .current
            .as_ref()
            .unwrap()
            .source_revision
            .as_deref(),
        Some("r2")
    );
    let job = h.jobs().get("shop-g2").await.unwrap();
    let init = job
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .init_containers
        .unwrap();
    assert_eq!(init[0].name, "restore-previous");
    assert!(
        init[0]
            .args
            .as_ref()
            .unwrap()
            .join(" ")
            .contains("--generation 1")
    );
    assert_eq!(h.stored_generations("shop/").await, [1, 2]);

    h.patch("shop", json!({"spec": {"source": {"revision": "r3"}}}))
        .await;
    let sc = h
        .wait(
            "shop",
            "at generation 3 with 3 and 2 retained",
            MINUTE,
            |sc| {
                let listed: Vec<u64> = sc
                    .status
                    .as_ref()
                    .map(|s| s.generations.iter().map(|g| g.generation).collect())
                    .unwrap_or_default();
                current(sc) == Some(3) && listed == [3, 2]
            },
        )
        .await;
    assert_eq!(sc.status.as_ref().unwrap().latest_generation, Some(3));
    assert_eq!(
        h.stored_generations("shop/").await,
        [2, 3],
        "generation 1's objects are gone"
    );
    h.shutdown().await;
}

async fn on_demand_request_makes_a_generation_and_is_acknowledged(store: Store) {
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    h.create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    let sc = h.request_and_wait("shop", "deploy-42").await;
    assert_eq!(current(&sc), Some(2));
    let job = h.jobs().get("shop-g2").await.unwrap();
    assert_eq!(
        job.annotations()["sitecache.dev/answers-request"],
        "deploy-42"
    );
    // Answered once: no third generation follows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(h.jobs().get_opt("shop-g3").await.unwrap().is_none());
    h.shutdown().await;
}

async fn max_age_makes_the_cache_stale_then_refreshes_it(store: Store) {
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    // Later generations take a few seconds to warm, so the stale state can be seen.
    let slow_after_first = "if [ -e \"$DENO_DIR/warmed\" ]; then sleep 4; fi";
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm(slow_after_first, 2),
               "schedule": {"maxAge": "6s", "jitter": "0s"}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;
    let sc = h
        .wait("shop", "Stale", MINUTE, |sc| {
            sc.status.as_ref().and_then(|s| s.freshness) == Some(Freshness::Stale)
        })
        .await;
    assert_eq!(condition(&sc, "Fresh"), Some("False"));
    assert_eq!(condition_reason(&sc, "Fresh"), Some("Stale"));
    assert_eq!(current(&sc), Some(1), "still serving generation 1");
    assert!(
        sc.status
            .as_ref()
            .unwrap()
            .freshness_reason
            .as_deref()
            .unwrap()
            .contains("maxAge")
    );
    let sc = h.wait_promoted("shop", 2).await;
    assert_eq!(
        sc.status.as_ref().unwrap().freshness,
        Some(Freshness::Fresh)
    );
    h.shutdown().await;
}

async fn failing_warm_step_degrades_keeps_current_and_backs_off(store: Store) {
    let h = Harness::start(Options {
        store,
        failure_backoff: "4s",
        ..Options::default()
    })
    .await;
    // Generation 1 warms; every later attempt (which finds generation 1 restored) fails.
    let fail_after_first =
        "if [ -e \"$DENO_DIR/warmed\" ]; then echo 'npm registry unreachable' >&2; exit 3; fi";
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm(fail_after_first, 2), "source": {"revision": "r1"},
               "snapshot": {"backoffLimit": 0, "rebuild": {"onRevisionChange": false}}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;
    h.patch("shop", json!({"spec": {"source": {"revision": "r2"}}}))
        .await;

    let sc = h
        .wait("shop", "Degraded after a failure", MINUTE, |sc| {
            sc.status
                .as_ref()
                .is_some_and(|s| s.consecutive_failures >= 1)
                && condition(sc, "Degraded") == Some("True")
        })
        .await;
    let status = sc.status.as_ref().unwrap();
    assert_eq!(current(&sc), Some(1), "the current generation is kept");
    assert_eq!(condition(&sc, "Ready"), Some("True"));
    let last = status.last_snapshot.as_ref().unwrap();
    assert_eq!(last.result, Some(SnapshotResult::Failed));
    assert_eq!(last.reason.as_deref(), Some("BackoffLimitExceeded"));
    // What the warm step printed last says why, in the status.
    let message = last.message.as_deref().unwrap_or_default();
    assert!(
        message.ends_with("; the warm container exited with code 3: npm registry unreachable"),
        "{message}"
    );
    assert_eq!(condition_reason(&sc, "Progressing"), Some("BackingOff"));
    // Events are published once the status that records them is written and seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !h
        .event_reasons("shop")
        .await
        .iter()
        .any(|r| r == "BackoffLimitExceeded")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no BackoffLimitExceeded Event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let sc = h
        .wait("shop", "failed twice in a row", MINUTE, |sc| {
            sc.status
                .as_ref()
                .is_some_and(|s| s.consecutive_failures >= 2)
        })
        .await;
    assert_eq!(current(&sc), Some(1));
    // The second attempt waited out the backoff after the first failed (4 s ± 10%; Job times
    // are recorded to the second).
    let first = h.jobs().get("shop-g2").await.unwrap().status.unwrap();
    let second = h.jobs().get("shop-g3").await.unwrap().status.unwrap();
    let failed_at = first
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.last_transition_time)
        .unwrap()
        .0;
    let retried_at = second.start_time.unwrap().0;
    let gap = retried_at.duration_since(failed_at).as_secs_f64();
    assert!(gap >= 2.5, "retried {gap} s after the failure");
    assert_eq!(
        h.stored_generations("shop/").await,
        [1],
        "failed attempts leave nothing"
    );
    h.shutdown().await;
}

async fn empty_or_too_small_cache_is_never_promoted(store: Store) {
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    // Generation 1 is a real cache; the next attempt empties the directory.
    let empty_after_first =
        "if [ -e \"$DENO_DIR/warmed\" ]; then rm -rf \"$DENO_DIR\"/*; exit 0; fi";
    let spec = json!({"site": "shop", "warm": {"image": "site:test", "command": ["sh", "-c",
        format!("set -e\n{empty_after_first}\nmkdir -p \"$DENO_DIR/deps\"; for i in 1 2 3 4; do echo $i > \"$DENO_DIR/deps/m$i\"; done; touch \"$DENO_DIR/warmed\"")]},
        "snapshot": {"backoffLimit": 0, "minFiles": 4}});
    h.create("shop", spec).await;
    h.wait_promoted("shop", 1).await;
    let sc = h.request_and_wait("shop", "empty").await;
    let status = sc.status.as_ref().unwrap();
    assert_eq!(
        status.last_snapshot.as_ref().unwrap().result,
        Some(SnapshotResult::Failed)
    );
    assert_eq!(current(&sc), Some(1), "the good generation stays current");
    assert_eq!(status.consecutive_failures, 1);
    let bytes = h
        .s3()
        .get_bytes(&h.bucket, "shop/current.json")
        .await
        .unwrap();
    let stored: Current = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(stored.manifest.generation, 1);
    assert_eq!(h.stored_generations("shop/").await, [1]);
    h.shutdown().await;
}

async fn wiped_status_continues_after_the_highest_generation(store: Store) {
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 2), "source": {"revision": "r1"}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;
    for (rev, n) in [("r2", 2), ("r3", 3)] {
        h.patch("shop", json!({"spec": {"source": {"revision": rev}}}))
            .await;
        h.wait_promoted("shop", n).await;
    }
    assert_eq!(h.stored_generations("shop/").await, [1, 2, 3]);

    // The status is lost (as after a backup restore without status).
    h.api()
        .patch_status(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": null})),
        )
        .await
        .unwrap();
    let sc = h
        .wait("shop", "adopting generations 1-3", MINUTE, |sc| {
            sc.status.as_ref().and_then(|s| s.latest_generation) == Some(3)
                && current(sc) == Some(3)
        })
        .await;
    assert_eq!(sc.status.as_ref().unwrap().generations.len(), 3);
    let reasons = h.event_reasons("shop").await;
    if !reasons.iter().any(|r| r == "Adopted") {
        h.fail(&format!("no Adopted Event, only {reasons:?}")).await;
    }
    h.request_snapshot("shop", "after-adoption").await;
    h.wait_promoted("shop", 4).await;
    assert!(h.jobs().get_opt("shop-g4").await.unwrap().is_some());
    h.shutdown().await;
}

/// The init containers of Job `name`, with their arguments.
async fn init_containers(h: &Harness, name: &str) -> Vec<String> {
    let job = h.jobs().get(name).await.unwrap();
    job.spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .init_containers
        .unwrap()
        .into_iter()
        .map(|c| format!("{} {}", c.name, c.args.unwrap_or_default().join(" ")))
        .collect()
}

async fn a_new_revision_is_built_from_an_empty_cache_so_old_modules_go(store: Store) {
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    // Each revision of the site uses its own three modules.
    let script = "set -e; mkdir -p \"$DENO_DIR/deps\"; \
                  for i in 1 2 3; do echo \"$REV $i\" > \"$DENO_DIR/deps/$REV-$i.js\"; done";
    let spec = |rev: &str| {
        json!({"site": "shop", "source": {"revision": rev},
               "warm": {"image": "site:test", "command": ["sh", "-c", script],
                        "env": [{"name": "REV", "value": rev}]}})
    };
    h.create("shop", spec("r1")).await;
    h.wait_promoted("shop", 1).await;

    h.patch("shop", json!({"spec": spec("r2")})).await;
    let sc = h.wait_promoted("shop", 2).await;
    let status = sc.status.as_ref().unwrap();
    let g2 = status.current.as_ref().unwrap();
    assert_eq!(g2.files, 3, "r1's modules are gone");
    assert_eq!(g2.base_generation, None, "built from an empty cache");
    let init = init_containers(&h, "shop-g2").await;
    assert!(init.iter().all(|c| c.starts_with("warm")), "{init:?}");
    let growth = status.growth.as_ref().unwrap();
    assert_eq!(growth.rebuilt_generation, 2);
    assert_eq!(growth.incremental_generations, 0);

    // A snapshot of the same revision warms on top of the current generation.
    let sc = h.request_and_wait("shop", "same-revision").await;
    let status = sc.status.as_ref().unwrap();
    let g3 = status.current.as_ref().unwrap();
    assert_eq!((g3.generation, g3.files), (3, 3));
    assert_eq!(g3.base_generation, Some(2));
    let init = init_containers(&h, "shop-g3").await;
    assert!(
        init[0].starts_with("restore-previous") && init[0].contains("--generation 2"),
        "{init:?}"
    );
    let growth = status.growth.as_ref().unwrap();
    assert_eq!(
        (growth.rebuilt_generation, growth.incremental_generations),
        (2, 1)
    );
    assert_eq!(growth.percent, 0);
    h.shutdown().await;
}

async fn stale_is_written_when_max_age_passes_while_suspended_or_running(store: Store) {
    // The harness's controller resyncs once an hour: only the schedule can wake these.
    let h = Harness::start(Options {
        store,
        ..Options::default()
    })
    .await;
    let slow_after_first = "if [ -e \"$DENO_DIR/warmed\" ]; then sleep 20; fi";
    for name in ["idle", "busy"] {
        h.create(
            name,
            json!({"site": name, "warm": warm(slow_after_first, 2),
                   "schedule": {"maxAge": "8s", "jitter": "0s"}}),
        )
        .await;
    }
    h.wait_promoted("idle", 1).await;
    h.wait_promoted("busy", 1).await;
    h.patch("idle", json!({"spec": {"suspend": true}})).await;
    h.request_snapshot("busy", "long").await;
    h.wait("busy", "snapshotting", MINUTE, |sc| {
        sc.status.as_ref().and_then(|s| s.phase) == Some(Phase::Snapshotting)
    })
    .await;
    let stale = |sc: &sitecache::api::SiteCache| {
        sc.status.as_ref().and_then(|s| s.freshness) == Some(Freshness::Stale)
    };
    let sc = h.wait("idle", "Stale while suspended", MINUTE, stale).await;
    assert_eq!(condition_reason(&sc, "Progressing"), Some("Suspended"));
    let sc = h
        .wait("busy", "Stale while snapshotting", MINUTE, stale)
        .await;
    assert_eq!(
        sc.status.as_ref().unwrap().phase,
        Some(Phase::Snapshotting),
        "still running generation 2"
    );
    h.shutdown().await;
}
