//! A site image whose own user is non-root (uid 1000), with no `spec.warm.securityContext`:
//! generation 1 records that uid 1000 owned the cache, and generation 2's `restore-previous`
//! runs as uid 1000, so that the warm step can rewrite what was restored (as the agents' 65532 it
//! could not: `Permission denied`).

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
    s.done("the undeclared non-root warm user");
}
