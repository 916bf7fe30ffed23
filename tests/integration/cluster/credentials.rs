//! Storage credentials from `spec.snapshot.credentialsSecret`, for the agent containers only.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_a_secret_only() {
    let s = Scenario::new("creds").await;
    let images = s.node().images().clone();
    let name = "shop";
    s.storage_secret("shop-storage", snapshot_policy(&s.bucket, name))
        .await;
    // The site image's user, declared: restore-previous then runs as it too (see the Deno
    // scenario).
    let mut warm = quick_warm(&images.site, 5);
    warm["securityContext"] = json!({"runAsUser": 1000, "runAsGroup": 1000});
    // Without credentialsSecret, the agents have no keys: the snapshot ServiceAccount has no
    // identity for storage and no token, and nothing else gives them any.
    s.create(
        name,
        json!({
            "site": name,
            "warm": warm,
            "snapshot": {"minFiles": 3, "backoffLimit": 0},
        }),
    )
    .await;
    let sc = s
        .until(
            "the snapshot without credentials failing",
            Duration::from_secs(120),
            async || {
                let Some(sc) = s.sitecache(name).await else {
                    return Poll::Wait("no SiteCache".into());
                };
                let last = sc.status.as_ref().and_then(|s| s.last_snapshot.clone());
                match &last {
                    Some(l) if l.result == Some(SnapshotResult::Failed) => Poll::Done(sc),
                    Some(l) if l.result == Some(SnapshotResult::Succeeded) => {
                        Poll::Fail(format!("a snapshot without credentials succeeded: {l:?}"))
                    }
                    _ => Poll::Wait(format!("last snapshot {last:?}")),
                }
            },
        )
        .await;
    let failed_generation = sc
        .status
        .as_ref()
        .unwrap()
        .last_snapshot
        .as_ref()
        .unwrap()
        .generation;
    let pod = s.job_pod(name, failed_generation).await;
    let spec = pod.spec.clone().unwrap();
    ensure_eq!(
        s,
        spec.service_account_name.as_deref(),
        Some("sitecache-snapshot")
    );
    // The chart's snapshot ServiceAccount mounts no token.
    let tokens: Vec<_> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.projected.is_some())
        .map(|v| v.name.clone())
        .collect();
    ensure!(s, tokens.is_empty(), "token volumes: {tokens:?}");
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let names = env_names(c);
        ensure!(
            s,
            !names
                .iter()
                .any(|n| n.starts_with("AWS_ACCESS") || n.starts_with("AWS_SECRET")),
            "container {} has keys: {names:?}",
            c.name
        );
    }
    let log = s.log(&pod, "snapshot").await;
    if !log.to_lowercase().contains("credential") {
        s.fail(&format!(
            "the snapshot without keys did not fail for want of credentials: {log}"
        ))
        .await;
    }

    // With the Secret: the agent containers get its keys, the warm container does not.
    s.request_snapshot(
        name,
        "with-credentials",
        json!({"snapshot": {"credentialsSecret": {"name": "shop-storage"}}}),
    )
    .await;
    let sc = s
        .until(
            "a generation promoted with the Secret's keys",
            Duration::from_secs(120),
            async || {
                let Some(sc) = s.sitecache(name).await else {
                    return Poll::Wait("no SiteCache".into());
                };
                let status = sc.status.clone().unwrap_or_default();
                if status.current.is_some() && condition(&sc, "Ready") == Some("True") {
                    return Poll::Done(sc);
                }
                match &status.last_snapshot {
                    Some(l)
                        if l.generation > failed_generation
                            && l.result == Some(SnapshotResult::Failed) =>
                    {
                        Poll::Fail(format!("the snapshot with the Secret failed: {l:?}"))
                    }
                    l => Poll::Wait(format!("last snapshot {l:?}")),
                }
            },
        )
        .await;
    // One more on top of it: restore-previous reads the store with the Secret's keys too.
    let first = current(&sc).unwrap();
    s.request_snapshot(name, "on-top", json!({})).await;
    let sc = s
        .wait_promoted(name, first + 1, Duration::from_secs(120))
        .await;
    let info = sc.status.as_ref().unwrap().current.clone().unwrap();
    ensure_eq!(s, info.base_generation, Some(first), "{info:?}");
    let pod = s.job_pod(name, first + 1).await;
    for agent in ["restore-previous", "snapshot"] {
        let c = container(&pod, agent);
        let from_secret: Vec<String> = c
            .env
            .iter()
            .flatten()
            .filter(|e| {
                e.value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .is_some_and(|r| r.name == "shop-storage")
            })
            .map(|e| e.name.clone())
            .collect();
        ensure!(
            s,
            from_secret.contains(&"AWS_ACCESS_KEY_ID".to_owned())
                && from_secret.contains(&"AWS_SECRET_ACCESS_KEY".to_owned()),
            "{agent}: {from_secret:?}"
        );
    }
    let warm = container(&pod, "warm");
    let names = env_names(warm);
    ensure!(
        s,
        !names.iter().any(|n| n.starts_with("AWS_")),
        "the warm container's variables: {names:?}"
    );
    ensure!(s, warm.env_from.is_none(), "{:?}", warm.env_from);
    // What the warm step saw at run time.
    let log = s.log(&pod, "warm").await;
    let Some(seen) = log
        .lines()
        .find_map(|l| l.split_once("warm env: ").map(|(_, v)| v.to_owned()))
    else {
        s.fail(&format!("the warm step printed no environment: {log}"))
            .await
    };
    ensure!(s, !seen.contains("AWS_"), "the warm step saw: {seen}");
    ensure!(s, seen.contains("DENO_DIR"), "{seen}");
    s.done("credentials from a Secret");
}
