use serde_json::json;

use super::*;
use crate::controller::jobs::{JobInputs, snapshot_job};

fn site(extra: serde_json::Value) -> SiteCache {
    let mut spec = json!({"site": "shop", "warm": {"image": "site:1"}});
    merge(&mut spec, extra);
    serde_json::from_value(json!({
        "apiVersion": "sitecache.dev/v1alpha1", "kind": "SiteCache",
        "metadata": {"name": "shop", "namespace": "sites", "uid": "u-1"},
        "spec": spec,
    }))
    .unwrap()
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn pod_of(sc: &SiteCache) -> (PodSpec, BTreeMap<String, String>, BTreeMap<String, String>) {
    pod_observing(sc, None)
}

/// The pod of `sc` when the current generation's files were owned by `owner`.
fn pod_observing(
    sc: &SiteCache,
    owner: Option<(u32, u32)>,
) -> (PodSpec, BTreeMap<String, String>, BTreeMap<String, String>) {
    let run_as = check(sc).unwrap();
    let current = owner.map(|(uid, gid)| crate::api::GenerationInfo {
        generation: 1,
        key: "k".into(),
        size_bytes: 1,
        uncompressed_bytes: 1,
        files: 1,
        sha256: "00".into(),
        created_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ),
        promoted_at: None,
        source_revision: None,
        base_generation: None,
        cache_owner: Some(crate::api::CacheOwner { uid, gid }),
        runtime: None,
    });
    let observed_user = crate::controller::jobs::observed_user(run_as, current.as_ref());
    let settings = crate::controller::jobs::tests::settings();
    let target = crate::controller::jobs::tests::target();
    let job = snapshot_job(
        sc,
        &JobInputs {
            settings: &settings,
            target: &target,
            generation: 2,
            base: Ok(1),
            request: None,
            timeout: std::time::Duration::from_secs(60),
            run_as,
            observed_user,
        },
    );
    let template = job.spec.unwrap().template;
    let meta = template.metadata.unwrap();
    (
        template.spec.unwrap(),
        meta.labels.unwrap_or_default(),
        meta.annotations.unwrap_or_default(),
    )
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .find(|c| c.name == name)
        .unwrap()
}

#[test]
fn a_non_root_warm_user_is_the_agents_user_with_restricted_defaults() {
    let sc = site(
        json!({"warm": {"securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 3000}}}),
    );
    assert_eq!(
        check(&sc).unwrap(),
        Some(RunAs {
            uid: 1000,
            gid: Some(3000)
        })
    );
    let (pod, _, _) = pod_of(&sc);
    for agent in ["restore-previous", "snapshot"] {
        let ctx = container(&pod, agent).security_context.as_ref().unwrap();
        assert_eq!(
            (ctx.run_as_user, ctx.run_as_group),
            (Some(1000), Some(3000)),
            "{agent}"
        );
        assert_eq!(ctx.run_as_non_root, Some(true), "{agent}");
        assert_eq!(ctx.read_only_root_filesystem, Some(true), "{agent}");
    }
    let warm = container(&pod, "warm").security_context.as_ref().unwrap();
    assert_eq!(warm.run_as_user, Some(1000));
    assert_eq!(warm.allow_privilege_escalation, Some(false));
    assert_eq!(
        warm.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    let seccomp = pod
        .security_context
        .as_ref()
        .unwrap()
        .seccomp_profile
        .as_ref()
        .unwrap();
    assert_eq!(seccomp.type_, "RuntimeDefault");
}

#[test]
fn the_pods_user_counts_and_the_containers_wins() {
    let sc = site(
        json!({"snapshot": {"pod": {"securityContext": {"runAsUser": 2000, "fsGroup": 2000}}}}),
    );
    assert_eq!(
        check(&sc).unwrap(),
        Some(RunAs {
            uid: 2000,
            gid: None
        })
    );
    let sc = site(json!({"warm": {"securityContext": {"runAsUser": 1001}},
                         "snapshot": {"pod": {"securityContext": {"runAsUser": 2000, "runAsGroup": 5}}}}));
    assert_eq!(
        check(&sc).unwrap(),
        Some(RunAs {
            uid: 1001,
            gid: Some(5)
        })
    );
    let (pod, _, _) = pod_of(&sc);
    let snapshot = container(&pod, "snapshot")
        .security_context
        .as_ref()
        .unwrap();
    assert_eq!(
        (snapshot.run_as_user, snapshot.run_as_group),
        (Some(1001), Some(5))
    );
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_user,
        Some(2000)
    );
}

#[test]
fn a_root_or_undeclared_warm_user_changes_nothing_for_the_agents() {
    for extra in [
        json!({}),
        json!({"warm": {"securityContext": {"runAsUser": 0}}}),
        json!({"warm": {"securityContext": {"runAsNonRoot": false}}}),
    ] {
        let sc = site(extra.clone());
        assert_eq!(check(&sc).unwrap(), None, "{extra}");
        let (pod, _, _) = pod_of(&sc);
        let snapshot = container(&pod, "snapshot")
            .security_context
            .as_ref()
            .unwrap();
        assert_eq!(
            snapshot.run_as_user, None,
            "the image's user (65532): {extra}"
        );
        // Root keeps its capabilities: it writes into the tree restore-previous made.
        let warm = container(&pod, "warm").security_context.as_ref();
        assert!(warm.is_none_or(|w| w.capabilities.is_none()), "{extra}");
    }
}

#[test]
fn an_undeclared_warm_user_that_owned_the_cache_is_who_the_agents_run_as() {
    let undeclared = site(json!({}));
    let (pod, _, _) = pod_observing(&undeclared, Some((1000, 1001)));
    for agent in ["restore-previous", "snapshot"] {
        let ctx = container(&pod, agent).security_context.as_ref().unwrap();
        assert_eq!(
            (ctx.run_as_user, ctx.run_as_group, ctx.run_as_non_root),
            (Some(1000), Some(1001), Some(true)),
            "{agent}"
        );
    }
    // The warm container stays as the spec has it: the image's user, its capabilities.
    assert!(container(&pod, "warm").security_context.is_none());

    // Root, or the agents' own user, owned it: nothing changes.
    for owner in [(0, 0), (65532, 65532)] {
        let (pod, _, _) = pod_observing(&undeclared, Some(owner));
        let ctx = container(&pod, "snapshot")
            .security_context
            .as_ref()
            .unwrap();
        assert_eq!(ctx.run_as_user, None, "{owner:?}");
    }
    // A declared user wins over what was observed.
    let declared = site(json!({"warm": {"securityContext": {"runAsUser": 2000}}}));
    let (pod, _, _) = pod_observing(&declared, Some((1000, 1000)));
    let ctx = container(&pod, "restore-previous")
        .security_context
        .as_ref()
        .unwrap();
    assert_eq!(ctx.run_as_user, Some(2000));
}

#[test]
fn refuses_a_non_root_warm_container_without_a_user_and_contradictions() {
    let err = check(&site(
        json!({"warm": {"securityContext": {"runAsNonRoot": true}}}),
    ))
    .unwrap_err();
    assert!(
        err.starts_with("spec.warm.securityContext.runAsUser: required"),
        "{err}"
    );
    let err = check(&site(
        json!({"snapshot": {"pod": {"securityContext": {"runAsNonRoot": true}}}}),
    ))
    .unwrap_err();
    assert!(
        err.starts_with("spec.warm.securityContext.runAsUser: required"),
        "{err}"
    );
    let err = check(&site(
        json!({"warm": {"securityContext": {"runAsNonRoot": true, "runAsUser": 0}}}),
    ))
    .unwrap_err();
    assert!(err.contains("runAsUser is 0"), "{err}");
}

#[test]
fn scheduling_pull_secrets_labels_and_annotations_reach_the_pod_not_the_controllers_keys() {
    let sc = site(json!({"snapshot": {"pod": {
        "labels": {"team": "web", "example.com/cost-center": "42"},
        "annotations": {"sidecar.istio.io/inject": "false"},
        "imagePullSecrets": [{"name": "registry"}],
        "nodeSelector": {"pool": "batch"},
        "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "priorityClassName": "low",
    }}}));
    let (pod, labels, annotations) = pod_of(&sc);
    assert_eq!(labels["team"], "web");
    assert_eq!(labels["example.com/cost-center"], "42");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "sitecache");
    assert_eq!(annotations["sidecar.istio.io/inject"], "false");
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry");
    assert_eq!(pod.node_selector.unwrap()["pool"], "batch");
    assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("batch"));
    assert!(pod.affinity.unwrap().node_affinity.is_some());
    assert_eq!(pod.priority_class_name.as_deref(), Some("low"));

    for (field, value, wanted) in [
        (
            "labels",
            json!({"app.kubernetes.io/managed-by": "me"}),
            "the controller sets this label",
        ),
        (
            "labels",
            json!({"sitecache.dev/generation": "9"}),
            "sitecache.dev/ labels are the controller's",
        ),
        (
            "labels",
            json!({"team": "a b"}),
            "the value \"a b\" must be",
        ),
        ("labels", json!({"-bad": "x"}), "the key \"-bad\" must be"),
        (
            "labels",
            json!({"Bad.Prefix/x": "y"}),
            "not a DNS subdomain",
        ),
        (
            "annotations",
            json!({"sitecache.dev/request": "x"}),
            "the controller's",
        ),
        (
            "nodeSelector",
            json!({"pool": "x".repeat(64)}),
            "must be at most 63",
        ),
    ] {
        let sc = site(json!({"snapshot": {"pod": {field: value}}}));
        let err = check(&sc).unwrap_err();
        assert!(
            err.starts_with(&format!("spec.snapshot.pod.{field}[")),
            "{err}"
        );
        assert!(err.contains(wanted), "{field}: {err}");
    }
}
