//! `spec.warm.securityContext` and `spec.snapshot.pod` on the control plane: snapshot pods pass
//! Pod Security `restricted` admission (the API server's own, which refuses the pods the job
//! runner creates as it refuses the Job controller's), carry the pod settings, and bad settings
//! are refused with the field named. Who the containers run as is proved on a real node
//! (`tests/integration/node.rs`): the job runner runs processes as the test's user.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use sitecache::api::{Phase, SnapshotResult};

use super::harness::{Harness, Options, cond, condition_reason, warm};

/// Enforces Pod Security `restricted` on the test's namespace.
async fn restrict(h: &Harness) {
    let namespaces: Api<Namespace> = Api::all(h.client.clone());
    namespaces
        .patch(
            &h.ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn snapshot_pods_of_a_declared_non_root_warm_step_pass_restricted_admission() {
    let h = Harness::start(Options {
        failure_backoff: "1h",
        ..Options::default()
    })
    .await;
    restrict(&h).await;
    let mut warm = warm("", 3);
    warm["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000});
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm, "snapshot": {"pod": {
            "labels": {"team": "web"},
            "annotations": {"sidecar.istio.io/inject": "false"},
            "imagePullSecrets": [{"name": "registry"}],
            "nodeSelector": {"pool": "batch"},
            "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        }}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;
    // Generation 2 restores generation 1 first: a third container passes admission too.
    let sc = h.request_and_wait("shop", "second").await;
    let last = sc.status.as_ref().unwrap().last_snapshot.clone().unwrap();
    assert_eq!(last.result, Some(SnapshotResult::Succeeded), "{last:?}");
    assert_eq!(last.generation, 2);

    let pods: Api<Pod> = Api::namespaced(h.client.clone(), &h.ns);
    let pod = pods
        .list(&ListParams::default().labels("sitecache.dev/generation=2"))
        .await
        .unwrap()
        .items
        .pop()
        .expect("the Job's pod");
    let meta = &pod.metadata;
    assert_eq!(meta.labels.as_ref().unwrap()["team"], "web");
    assert_eq!(
        meta.annotations.as_ref().unwrap()["sidecar.istio.io/inject"],
        "false"
    );
    let spec = pod.spec.unwrap();
    assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "registry");
    assert_eq!(spec.node_selector.unwrap()["pool"], "batch");
    let init: Vec<(String, Option<i64>)> = spec
        .init_containers
        .unwrap()
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.security_context.as_ref().and_then(|s| s.run_as_user),
            )
        })
        .collect();
    assert_eq!(
        init,
        [
            ("restore-previous".to_owned(), Some(1000)),
            ("warm".to_owned(), Some(1000))
        ]
    );
    h.shutdown().await;
}

/// A pod that admission refuses leaves a Job without a pod until its deadline: the SiteCache says
/// so, with the Job controller's reason, long before the deadline; the failure replaces it then.
#[tokio::test]
async fn a_root_warm_step_is_refused_by_restricted_admission_and_bad_settings_by_the_controller() {
    let h = Harness::start(Options {
        failure_backoff: "1h",
        extra_args: vec!["--snapshot-stall-after".into(), "2s".into()],
        ..Options::default()
    })
    .await;
    restrict(&h).await;
    // Two refused at once, beside a slow Job that is admitted and runs longer than the stall
    // delay: it must never be called stalled.
    let roots = ["root", "root2"];
    for name in roots {
        h.create(
            name,
            json!({"site": name, "warm": warm("", 3), "snapshot": {"timeout": "25s"}}),
        )
        .await;
    }
    let slow_log = h.record_statuses("slow");
    let mut slow = warm("sleep 6", 3);
    slow["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 1000});
    h.create("slow", json!({"site": "slow", "warm": slow}))
        .await;
    for name in roots {
        let sc = h
            .wait(name, "stalled", Duration::from_secs(20), |sc| {
                condition_reason(sc, "Degraded") == Some("SnapshotPodNotCreated")
            })
            .await;
        let degraded = cond(&sc, "Degraded");
        assert_eq!(degraded.status, "True");
        assert!(
            degraded
                .message
                .starts_with(&format!("Job {name}-g1 has had no pod for "))
                && degraded.message.contains("Error creating: ")
                && degraded
                    .message
                    .contains("violates PodSecurity \"restricted:latest\""),
            "{}",
            degraded.message
        );
        let progressing = cond(&sc, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "SnapshotPodNotCreated")
        );
        assert_eq!(sc.status.as_ref().unwrap().phase, Some(Phase::Snapshotting));
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.event_count(name, "SnapshotPodNotCreated").await != 1 {
            assert!(Instant::now() < deadline, "no SnapshotPodNotCreated Event");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        h.metrics()
            .await
            .contains("\nsitecache_snapshot_jobs_stalled 2\n"),
        "the stalled gauge"
    );

    // The slow one is promoted, and was never reported stalled.
    h.wait_promoted("slow", 1).await;
    let stalled: Vec<String> = slow_log
        .seen()
        .iter()
        .flat_map(|s| &s.conditions)
        .filter(|c| {
            c.reason.starts_with("SnapshotPod") || c.reason.starts_with("SnapshotContainer")
        })
        .map(|c| format!("{}: {}", c.reason, c.message))
        .collect();
    assert!(stalled.is_empty(), "{stalled:?}");
    assert!(
        h.event_reasons("slow")
            .await
            .iter()
            .all(|r| !r.starts_with("SnapshotPod"))
    );

    // The deadline fails each refused Job; the failure is what the status reports then.
    for name in roots {
        let sc = h
            .wait(name, "failed", Duration::from_secs(60), |sc| {
                sc.status
                    .as_ref()
                    .is_some_and(|s| s.consecutive_failures > 0)
            })
            .await;
        assert_eq!(cond(&sc, "Degraded").reason, "DeadlineExceeded");
        assert_eq!(h.event_count(name, "SnapshotPodNotCreated").await, 1);
    }
    assert!(
        h.metrics()
            .await
            .contains("\nsitecache_snapshot_jobs_stalled 0\n"),
        "the stalled gauge"
    );
    // Their pods never ran: admission refused them every time.
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), &h.ns);
    for name in roots {
        let admitted = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
            .await
            .unwrap();
        assert!(admitted.items.is_empty(), "{:?}", admitted.items);
    }

    let mut warm = warm("", 3);
    warm["securityContext"] = json!({"runAsNonRoot": true});
    h.create("nouser", json!({"site": "nouser", "warm": warm}))
        .await;
    h.create(
        "mine",
        json!({"site": "mine", "warm": super::harness::warm("", 3),
               "snapshot": {"pod": {"labels": {"sitecache.dev/generation": "7"}}}}),
    )
    .await;
    for (name, wanted) in [
        ("nouser", "spec.warm.securityContext.runAsUser: required"),
        (
            "mine",
            "spec.snapshot.pod.labels[\"sitecache.dev/generation\"]: sitecache.dev/ labels are the controller's",
        ),
    ] {
        let sc = h
            .wait(name, "refused", Duration::from_secs(30), |sc| {
                sc.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Degraded" && c.reason == "InvalidPodSettings")
                })
            })
            .await;
        let degraded = cond(&sc, "Degraded");
        assert!(
            degraded.message.starts_with(wanted),
            "{name}: {}",
            degraded.message
        );
        assert!(
            h.jobs()
                .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
                .await
                .unwrap()
                .items
                .is_empty()
        );
    }
    h.shutdown().await;
}
