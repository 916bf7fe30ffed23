//! Errors reach the status: storage that refuses, settings the controller does not allow, and
//! manifests it cannot read.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::json;
use sitecache::api::{Phase, SiteCache, SnapshotResult};

use super::harness::{Harness, Options, condition, current, warm};

const MINUTE: Duration = Duration::from_secs(60);

fn cond(sc: &SiteCache, type_: &str) -> Condition {
    sc.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", sc.status))
}

#[tokio::test]
async fn a_missing_bucket_shows_in_ready_and_degraded() {
    let missing = format!("missing-{}", std::process::id());
    let h = Harness::start(Options {
        extra_args: vec!["--allowed-buckets".into(), missing.clone()],
        ..Options::default()
    })
    .await;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 2), "storage": {"bucket": missing}}),
    )
    .await;
    let sc = h
        .wait("shop", "Degraded by the missing bucket", MINUTE, |sc| {
            condition(sc, "Degraded") == Some("True")
        })
        .await;
    for type_ in ["Degraded", "Ready"] {
        let c = cond(&sc, type_);
        assert_eq!(c.reason, "NoSuchBucket", "{c:?}");
        assert!(c.message.contains(&missing), "{c:?}");
    }
    assert_eq!(cond(&sc, "Ready").status, "False");
    assert_eq!(sc.status.as_ref().unwrap().phase, Some(Phase::Failed));
    h.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_outside_the_allow_list_is_refused() {
    let h = Harness::start(Options::default()).await;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 2),
               "storage": {"endpoint": "http://127.0.0.1:9/"}}),
    )
    .await;
    let sc = h
        .wait("shop", "refusing its endpoint", MINUTE, |sc| {
            condition(sc, "Ready") == Some("False")
                && cond(sc, "Ready").reason == "EndpointNotAllowed"
        })
        .await;
    let ready = cond(&sc, "Ready");
    assert!(
        ready.message.contains("spec.storage.endpoint")
            && ready.message.contains("http://127.0.0.1:9/")
            && ready.message.contains("--allowed-endpoints"),
        "{ready:?}"
    );
    assert!(h.jobs().get_opt("shop-g1").await.unwrap().is_none());
    h.shutdown().await;
}

#[tokio::test]
async fn malformed_and_unknown_manifests_are_rejected_not_waited_on() {
    let h = Harness::start(Options::default()).await;
    h.create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    let archive = h
        .get("shop/generations/00000000000000000001/cache.tar.zst")
        .await
        .unwrap();
    let cases = [
        (
            2,
            b"{\"formatVersion\": 1, \"generation\": ".to_vec(),
            "ManifestMalformed",
        ),
        (
            3,
            serde_json::to_vec(&json!({"formatVersion": 99, "generation": 3, "parts": []}))
                .unwrap(),
            "UnknownFormat",
        ),
    ];
    for (n, manifest, reason) in cases {
        let prefix = format!("shop/generations/{n:020}/");
        h.put(&format!("{prefix}cache.tar.zst"), archive.clone())
            .await;
        h.put(&format!("{prefix}manifest.json"), manifest).await;
        h.create_job("shop", n, "true").await;
        let sc = h
            .wait("shop", &format!("rejecting generation {n}"), MINUTE, |sc| {
                sc.status
                    .as_ref()
                    .and_then(|s| s.last_snapshot.as_ref())
                    .is_some_and(|l| {
                        l.generation == n && l.result == Some(SnapshotResult::Rejected)
                    })
            })
            .await;
        let status = sc.status.as_ref().unwrap();
        let last = status.last_snapshot.as_ref().unwrap();
        assert_eq!(last.reason.as_deref(), Some(reason), "{last:?}");
        assert_eq!(current(&sc), Some(1));
        assert_eq!(status.phase, Some(Phase::Ready));
        assert_eq!(cond(&sc, "Degraded").reason, reason);
        assert_eq!(
            h.stored_generations("shop/").await,
            [1],
            "generation {n} is deleted"
        );
    }
    h.shutdown().await;
}
