//! Errors reach the status: storage that refuses, settings the controller does not allow, and
//! manifests it cannot read.

use std::time::Duration;

use serde_json::json;
use sitecache::api::{Phase, SnapshotResult};

use super::harness::{Harness, Options, cond, condition, current, report_of, report_script, warm};

const MINUTE: Duration = Duration::from_secs(60);

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

/// `status.endpoint` says which endpoint the controller accepted (the plugin connects only
/// there): set while the spec's endpoint is allowed, cleared once the allow-list drops it.
#[tokio::test]
async fn the_accepted_endpoint_is_in_the_status_until_it_is_no_longer_allowed() {
    let proxy = super::harness::quiet_proxy(7).await;
    let endpoint = proxy.endpoint();
    let mut h = Harness::start(Options {
        extra_args: vec!["--allowed-endpoints".into(), endpoint.clone()],
        ..Options::default()
    })
    .await;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 2), "storage": {"endpoint": endpoint}}),
    )
    .await;
    let sc = h.wait_promoted("shop", 1).await;
    assert_eq!(sc.status.unwrap().endpoint, Some(endpoint.clone()));
    h.restart_controller_with(&[]);
    let sc = h
        .wait("shop", "refusing its endpoint", MINUTE, |sc| {
            condition(sc, "Degraded") == Some("True")
                && cond(sc, "Degraded").reason == "EndpointNotAllowed"
        })
        .await;
    // What was restored stays restorable (Ready), from an endpoint no one is sent to now.
    assert_eq!(condition(&sc, "Ready"), Some("True"));
    let status = sc.status.unwrap();
    assert_eq!(status.endpoint, None);
    assert!(status.url.is_some(), "the location stays");
    h.shutdown().await;
}

#[tokio::test]
async fn malformed_and_unknown_manifests_are_rejected_not_waited_on() {
    let h = Harness::start(Options::default()).await;
    h.create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    let archive = h.get(&h.archive_key_of("shop/", 1).await).await.unwrap();
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
        let key = format!("{prefix}cache.tar.zst");
        h.create_job("shop", n, &report_script(&report_of(n, &key, &archive)))
            .await;
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

#[tokio::test]
async fn when_the_status_cannot_be_written_either_the_reconcile_error_is_still_reported() {
    let missing = format!("missing-sw-{}", std::process::id());
    let mut h = Harness::start(Options {
        start_controller: false,
        ..Options::default()
    })
    .await;
    // An identity with every right the controller uses but writing SiteCache status.
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "no-status", "namespace": h.ns},
        "rules": [
            {"apiGroups": ["sitecache.dev"], "resources": ["sitecaches"],
             "verbs": ["get", "list", "watch", "patch", "update"]},
            {"apiGroups": ["batch"], "resources": ["jobs"],
             "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"],
             "verbs": ["create", "patch"]},
        ],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "no-status", "namespace": h.ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "no-status"},
        "subjects": [{"kind": "ServiceAccount", "name": "no-status", "namespace": h.ns}],
    });
    for object in [role, binding] {
        let out = crate::support::kubectl(
            &["apply", "-f", "-"],
            Some(&serde_json::to_string(&object).unwrap()),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kubeconfig = crate::support::impersonating_kubeconfig(&h.dir, &h.ns, "no-status");
    let env: Vec<(String, String)> = [
        ("SITECACHE_NAMESPACES", h.ns.clone()),
        ("SITECACHE_DEFAULT_BUCKET", h.bucket.clone()),
        ("SITECACHE_ALLOWED_BUCKETS", missing.clone()),
        ("SITECACHE_S3_ENDPOINT", h.s3().endpoint()),
        ("SITECACHE_S3_REGION", "us-east-1".into()),
        ("SITECACHE_PATH_STYLE", "true".into()),
        ("SITECACHE_AGENT_IMAGE", super::harness::AGENT_IMAGE.into()),
        // Named, so that the identity needs no read of kube-system.
        ("SITECACHE_CLUSTER_ID", "test-cluster".into()),
        ("RUST_LOG", "info".into()),
        ("NO_COLOR", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    h.start_controller_with_env(&kubeconfig, &env);
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 2), "storage": {"bucket": missing}}),
    )
    .await;
    // Both failures are in the log: the storage error the reconcile ran into, and the refused
    // status write that would have reported it.
    let log = h.dir.join("controller-a.log");
    let deadline = std::time::Instant::now() + MINUTE;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("NoSuchBucket") && text.contains("write SiteCache status") {
            break;
        }
        if std::time::Instant::now() > deadline {
            h.fail("the controller's log does not have both the storage error and the failed status write")
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("sitecache_reconcile_errors_total{kind=\"storage-no-such-bucket\"}"),
        "the error counted is the reconcile's own:\n{metrics}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_cron_the_pattern_accepts_but_the_parser_refuses_shows_in_the_status() {
    let h = Harness::start(Options::default()).await;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 2), "schedule": {"cron": "61 * * * *"}}),
    )
    .await;
    let sc = h
        .wait("shop", "refusing its schedule", MINUTE, |sc| {
            condition(sc, "Degraded") == Some("True")
                && cond(sc, "Degraded").reason == "InvalidSchedule"
        })
        .await;
    assert!(
        cond(&sc, "Degraded").message.contains("spec.schedule.cron"),
        "{:?}",
        cond(&sc, "Degraded")
    );
    assert!(h.jobs().get_opt("shop-g1").await.unwrap().is_none());
    h.shutdown().await;
}
