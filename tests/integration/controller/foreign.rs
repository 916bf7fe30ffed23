//! A Job is this SiteCache's only if its labels and controller reference say so, and a Job the
//! SiteCache started is finished whatever its spec says by then.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use sitecache::api::SnapshotResult;

use super::harness::{
    Harness, Options, cond, condition, condition_reason, current, eventually, warm,
};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_job_of_the_same_name_that_is_not_ours_is_waited_out_never_adopted() {
    let h = Harness::start(Options::default()).await;
    // A Job named as the SiteCache's first would be, without the controller's labels or owner
    // (made by hand, or left by a previous incarnation).
    let foreign: Job = serde_json::from_value(json!({
        "metadata": {"name": "shop-g1"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "c", "image": "busybox", "command": ["true"]}
        ]}}}
    }))
    .unwrap();
    h.jobs()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    h.create("shop", json!({"site": "shop", "warm": warm("", 3)}))
        .await;
    let sc = h
        .wait("shop", "waiting for the foreign Job", MINUTE, |sc| {
            condition_reason(sc, "Degraded") == Some("JobNameTaken")
        })
        .await;
    let message = cond(&sc, "Degraded").message;
    assert!(message.contains("shop-g1"), "{message}");
    assert_eq!(current(&sc), None);
    assert!(
        sc.status.as_ref().unwrap().last_snapshot.is_none(),
        "the foreign Job was taken for the SiteCache's: {:?}",
        sc.status
    );
    // Once it is gone, the SiteCache's own first Job runs.
    h.jobs()
        .delete("shop-g1", &DeleteParams::background())
        .await
        .unwrap();
    let sc = h.wait_promoted("shop", 1).await;
    let job = h.jobs().get("shop-g1").await.unwrap();
    assert_eq!(
        job.labels().get("sitecache.dev/uid"),
        sc.uid().as_ref(),
        "generation 1 came from the foreign Job"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_sitecache_refused_while_its_job_runs_still_finishes_that_job() {
    let h = Harness::start(Options::default()).await;
    h.create("shop", json!({"site": "shop", "warm": warm("sleep 3", 3)}))
        .await;
    h.wait("shop", "snapshotting", MINUTE, |sc| {
        condition_reason(sc, "Progressing") == Some("SnapshotRunning")
    })
    .await;
    // A typo the schema lets through, while the Job runs.
    h.patch(
        "shop",
        json!({"spec": {"schedule": {"cron": "61 * * * *"}}}),
    )
    .await;
    let sc = h
        .wait("shop", "finishing its Job", MINUTE, |sc| {
            sc.status
                .as_ref()
                .and_then(|s| s.last_snapshot.as_ref())
                .is_some_and(|l| l.result != Some(SnapshotResult::Running))
        })
        .await;
    let last = sc.status.as_ref().unwrap().last_snapshot.clone().unwrap();
    assert_eq!(
        (last.generation, last.result),
        (1, Some(SnapshotResult::Succeeded)),
        "{last:?}"
    );
    assert_eq!(current(&sc), Some(1));
    assert_eq!(condition(&sc, "Ready"), Some("True"));
    assert_eq!(condition_reason(&sc, "Degraded"), Some("InvalidSchedule"));
    assert_eq!(h.stored_generations("shop/").await, [1]);
    // The Job was released.
    eventually("shop-g1 released", MINUTE, || async {
        let job = h.jobs().get("shop-g1").await.unwrap();
        !job.finalizers().iter().any(|f| f == "sitecache.dev/result")
    })
    .await;
    h.shutdown().await;
}
