//! A store behind a private CA: MinIO serving TLS with a certificate of a CA made in the test,
//! for the address pods reach it by. The controller trusts it through the chart's
//! `caBundle.controller` (a ConfigMap mounted into its pods); a snapshot Job's agents do not until
//! `spec.snapshot.caBundle` names a ConfigMap with that CA in the SiteCache's namespace (one
//! that is missing fails the snapshot at once, naming it).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_a_private_ca_is_trusted_with_its_ca_bundle() {
    let s = Scenario::new(PRIVATE_CA).await;
    let endpoint =
        s.c.private_endpoint
            .clone()
            .expect("the shared cluster has the private CA's store");
    let name = "shop";
    // The agents' keys: the store's root user (its admin API is not served over TLS here).
    let private = support::private_store().await;
    let keys = private
        .s3
        .aws_env()
        .into_iter()
        .filter(|(k, _)| *k == "AWS_ACCESS_KEY_ID" || *k == "AWS_SECRET_ACCESS_KEY")
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    if let Err(e) = create_secret(&s.client, &s.ns, "storage", keys).await {
        s.fail(&format!("{e:#}")).await;
    }
    s.create(
        name,
        json!({
            "site": name,
            "storage": {"bucket": s.bucket, "endpoint": endpoint, "forcePathStyle": true},
            "warm": quick_warm(&s.node().images().site, 5),
            "snapshot": {"minFiles": 3, "backoffLimit": 0, "credentialsSecret": {"name": "storage"}},
        }),
    )
    .await;

    // Without the bundle: the controller (which trusts the CA) claims the prefix and runs the
    // Job; its agent refuses the certificate, and the status says so.
    let failed = s
        .until(
            "the snapshot without the CA bundle failing",
            Duration::from_secs(180),
            async || {
                let Some(sc) = s.sitecache(name).await else {
                    return Poll::Wait("no SiteCache".into());
                };
                let last = sc.status.as_ref().and_then(|s| s.last_snapshot.clone());
                match last {
                    Some(l) if l.result == Some(SnapshotResult::Failed) => Poll::Done(l),
                    Some(l) if l.result == Some(SnapshotResult::Succeeded) => {
                        Poll::Fail(format!("a snapshot without the CA succeeded: {l:?}"))
                    }
                    other => Poll::Wait(format!("last snapshot {other:?}")),
                }
            },
        )
        .await;
    let message = failed.message.clone().unwrap_or_default();
    ensure!(
        s,
        message.contains("the storage endpoint's certificate is not trusted (unknown issuer)")
            && message.contains("spec.snapshot.caBundle"),
        "lastSnapshot: {failed:?}"
    );
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await
        .map(|l| l.items.into_iter().filter_map(|e| e.note).collect())
        .unwrap_or_default();
    ensure!(
        s,
        notes
            .iter()
            .any(|n| n.contains("certificate is not trusted (unknown issuer)")),
        "Events: {notes:?}"
    );

    // A bundle that names a ConfigMap missing from the namespace: the pod starts all the same
    // (the volume is optional) and the snapshot fails at once, naming it.
    s.request_snapshot(
        name,
        "missing-config-map",
        json!({"snapshot": {"caBundle": {"configMap": "nowhere"}}}),
    )
    .await;
    let missing = s
        .until(
            "the snapshot with a missing ConfigMap failing",
            Duration::from_secs(180),
            async || {
                let Some(sc) = s.sitecache(name).await else {
                    return Poll::Wait("no SiteCache".into());
                };
                let last = sc.status.as_ref().and_then(|s| s.last_snapshot.clone());
                match last {
                    Some(l)
                        if l.generation > failed.generation
                            && l.result == Some(SnapshotResult::Failed) =>
                    {
                        Poll::Done(l)
                    }
                    Some(l) if l.result == Some(SnapshotResult::Succeeded) => {
                        Poll::Fail(format!("a snapshot without the CA succeeded: {l:?}"))
                    }
                    other => Poll::Wait(format!("last snapshot {other:?}")),
                }
            },
        )
        .await;
    let message = missing.message.clone().unwrap_or_default();
    ensure!(
        s,
        message.contains(
            "--ca-bundle /etc/sitecache/ca-bundle/configmap-nowhere/ca.crt: cannot read it"
        ),
        "lastSnapshot: {missing:?}"
    );

    // With it: the agents get the CA, mounted read-only, and the generation is promoted.
    s.request_snapshot(
        name,
        "with-the-ca",
        json!({"snapshot": {"caBundle": {"configMap": CA_CONFIG_MAP}}}),
    )
    .await;
    let generation = s
        .until(
            "a generation promoted with the CA bundle",
            Duration::from_secs(180),
            async || {
                let Some(sc) = s.sitecache(name).await else {
                    return Poll::Wait("no SiteCache".into());
                };
                let status = sc.status.clone().unwrap_or_default();
                if let Some(n) = current(&sc)
                    && condition(&sc, "Ready") == Some("True")
                {
                    return Poll::Done(n);
                }
                if let Some(last) = &status.last_snapshot
                    && last.generation > missing.generation
                    && last.result == Some(SnapshotResult::Failed)
                {
                    return Poll::Fail(format!("the snapshot with the CA failed: {last:?}"));
                }
                Poll::Wait(format!("last snapshot {:?}", status.last_snapshot))
            },
        )
        .await;
    let pod = s.job_pod(name, generation).await;
    let bundle = "/etc/sitecache/ca-bundle/configmap-storage-ca/ca.crt";
    for agent in ["snapshot"] {
        let c = container(&pod, agent);
        let value = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "SITECACHE_CA_BUNDLE")
            .and_then(|e| e.value.clone());
        ensure_eq!(s, value.as_deref(), Some(bundle));
    }
    ensure!(
        s,
        !env_names(container(&pod, "warm")).contains("SITECACHE_CA_BUNDLE"),
        "the warm container got the CA bundle"
    );
    s.done("private CA");
}
