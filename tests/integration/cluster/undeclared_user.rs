//! A site image whose own user is non-root (uid 1000), with no `spec.warm.securityContext`:
//! generation 1 records that uid 1000 owned the cache, and generation 2's `restore-previous`
//! runs as uid 1000, so that the warm step can rewrite what was restored (as the agents' 65532 it
//! could not: `Permission denied`). The Job's containers' logs are kept in the bucket.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_non_root_warm_user_can_write_into_the_next_restore() {
    let s = Scenario::new("owner").await;
    let name = "owner";
    // quick_warm rewrites the same files every generation.
    s.create_quick_site(name).await;
    let sc = s.wait_promoted(name, 1, Duration::from_secs(120)).await;
    let owner = sc
        .status
        .as_ref()
        .unwrap()
        .current
        .as_ref()
        .unwrap()
        .cache_owner;
    ensure_eq!(
        s,
        owner,
        Some(sitecache::api::CacheOwner {
            uid: 1000,
            gid: 1000
        })
    );
    let first = s.job_pod(name, 1).await;
    ensure_eq!(
        s,
        run_as_user(&first, "snapshot"),
        None,
        "the image's user at first"
    );

    s.request_snapshot(name, "second", json!({})).await;
    s.wait_promoted(name, 2, Duration::from_secs(120)).await;
    let second = s.job_pod(name, 2).await;
    ensure_eq!(s, run_as_user(&second, "restore-previous"), Some(1000));
    ensure_eq!(s, run_as_user(&second, "snapshot"), Some(1000));
    ensure_eq!(
        s,
        run_as_user(&second, "warm"),
        None,
        "the warm step as its image says"
    );
    // The Job's logs outlive it: the controller read them from kubelet when it handled the Job
    // and keeps them in the bucket (kubectl sitecache logs).
    let key = format!("{name}/logs/{:020}.json", 2);
    let log: sitecache::storage::joblog::JobLog =
        match support::s3().await.get_bytes(&s.bucket, &key).await {
            Ok(bytes) => serde_json::from_slice(&bytes).expect("a job log"),
            Err(e) => s.fail(&format!("no logs kept at {key}: {e}")).await,
        };
    ensure_eq!(s, log.result.as_str(), "Succeeded");
    let containers: Vec<(&str, &str)> = log.pods[0]
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.state.as_str()))
        .collect();
    ensure_eq!(
        s,
        containers,
        [
            ("restore-previous", "exit 0"),
            ("warm", "exit 0"),
            ("snapshot", "exit 0")
        ]
    );
    let warm = &log.pods[0].containers[1];
    ensure!(s, warm.log.contains("warm env: "), "{warm:?}");
    let snapshot = &log.pods[0].containers[2];
    ensure!(
        s,
        !snapshot.log.is_empty() && snapshot.unavailable.is_none(),
        "{snapshot:?}"
    );
    s.done("the undeclared non-root warm user");
}
