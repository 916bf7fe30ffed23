//! Promotion trusts only the snapshot container's own report (its termination message): what
//! anyone who can write to the bucket changes between the commit and the promotion, or writes
//! without a snapshot, is never promoted.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sitecache::api::{SiteCache, SnapshotResult};

use super::harness::{Harness, Options, current, warm};

const MINUTE: Duration = Duration::from_secs(60);

/// Waits until generation `n`'s snapshot is rejected; returns the SiteCache.
async fn rejected(h: &Harness, n: u64) -> SiteCache {
    h.wait("shop", &format!("rejecting generation {n}"), MINUTE, |sc| {
        sc.status
            .as_ref()
            .and_then(|s| s.last_snapshot.as_ref())
            .is_some_and(|l| l.generation == n && l.result == Some(SnapshotResult::Rejected))
    })
    .await
}

#[tokio::test]
async fn a_generation_changed_in_the_bucket_after_its_commit_is_not_promoted() {
    let mut h = Harness::start(Options::default()).await;
    // Generation 2 (which restores 1 first) warms for 3 s: time to stop the controller.
    let slow = r#"if [ -e "$DENO_DIR/warmed" ]; then sleep 3; fi"#;
    h.create("shop", json!({"site": "shop", "warm": warm(slow, 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    h.request_snapshot("shop", "t2").await;
    let deadline = Instant::now() + MINUTE;
    while h.jobs().get_opt("shop-g2").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "no Job for generation 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop_controller();
    loop {
        let job = h.jobs().get("shop-g2").await.unwrap();
        let done = job.status.and_then(|s| s.conditions).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Job of generation 2 did not complete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // As anyone who can write to the bucket could: other bytes of the same size, and a manifest
    // that vouches for them.
    let key = h.archive_key_of("shop/", 2).await;
    let mut archive = h.get(&key).await.unwrap();
    let middle = archive.len() / 2;
    archive[middle] ^= 0xff;
    h.put(&key, archive.clone()).await;
    let manifest_key = "shop/generations/00000000000000000002/manifest.json";
    let mut manifest: Value = serde_json::from_slice(&h.get(manifest_key).await.unwrap()).unwrap();
    manifest["sha256"] = json!(hex::encode(Sha256::digest(&archive)));
    h.put(manifest_key, serde_json::to_vec(&manifest).unwrap())
        .await;

    h.start_controller();
    let sc = rejected(&h, 2).await;
    let last = sc.status.as_ref().unwrap().last_snapshot.clone().unwrap();
    assert_eq!(
        last.reason.as_deref(),
        Some("ManifestNotAsReported"),
        "{last:?}"
    );
    assert!(
        last.message.as_deref().unwrap().contains("sha256"),
        "{last:?}"
    );
    assert_eq!(current(&sc), Some(1));
    h.shutdown().await;
}

#[tokio::test]
async fn a_generation_no_snapshot_container_reported_is_not_promoted() {
    let h = Harness::start(Options::default()).await;
    h.create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;

    // A whole generation 2, consistent in itself, written into the bucket, and a Job that
    // succeeds without a snapshot container's report.
    let g2 = "shop/generations/00000000000000000002/";
    let archive = h.get(&h.archive_key_of("shop/", 1).await).await.unwrap();
    let mut manifest: Value = serde_json::from_slice(
        &h.get("shop/generations/00000000000000000001/manifest.json")
            .await
            .unwrap(),
    )
    .unwrap();
    manifest["generation"] = json!(2);
    manifest["archiveKey"] = json!(format!("{g2}cache.tar.zst"));
    h.put(&format!("{g2}cache.tar.zst"), archive).await;
    h.put(
        &format!("{g2}manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .await;
    h.create_job("shop", 2, "true").await;

    let sc = rejected(&h, 2).await;
    let last = sc.status.as_ref().unwrap().last_snapshot.clone().unwrap();
    assert_eq!(
        last.reason.as_deref(),
        Some("SnapshotNotReported"),
        "{last:?}"
    );
    assert_eq!(current(&sc), Some(1));
    let deadline = Instant::now() + MINUTE;
    while h.stored_generations("shop/").await != [1] {
        assert!(Instant::now() < deadline, "generation 2 was not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.shutdown().await;
}

#[tokio::test]
async fn storage_credentials_from_a_secret_reach_the_agent_containers_only() {
    let h = Harness::start(Options {
        pod_credentials: false,
        ..Options::default()
    })
    .await;
    let env: std::collections::HashMap<_, _> = h.s3().aws_env().into_iter().collect();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "shop-s3"},
        "stringData": {
            "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
        },
    }))
    .unwrap();
    Api::<Secret>::namespaced(h.client.clone(), &h.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    // The warm step (the site's own code) fails if it can see any credentials.
    let check = r#"if [ -n "${AWS_ACCESS_KEY_ID:-}${AWS_SECRET_ACCESS_KEY:-}" ]; then echo "credentials in the warm container" >&2; exit 3; fi"#;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm(check, 2),
               "snapshot": {"credentialsSecret": {"name": "shop-s3"}}}),
    )
    .await;
    let sc = h.wait_promoted("shop", 1).await;
    assert_eq!(current(&sc), Some(1));
    h.shutdown().await;
}
