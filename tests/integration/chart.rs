//! The Helm chart (`charts/sitecache`) with the real Helm, on the real control plane: it lints,
//! renders with default and non-default values, and applies with a server-side dry run; its RBAC
//! grants only what the controller uses; and the controller, acting as the chart's ServiceAccount
//! (impersonation) with the chart's configuration, completes a SiteCache's lifecycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::{Value, json};
use sitecache_devtools::assets::Asset;

use crate::controller::harness::{AGENT_IMAGE, Harness, Options, condition, current};
use crate::support;

const MINUTE: Duration = Duration::from_secs(60);

fn chart_dir() -> PathBuf {
    support::repo_path("charts/sitecache")
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn helm(args: &[&str]) -> Output {
    let helm = Asset::Helm.path().expect("helm (make test-assets)");
    support::run_with_input(&helm, args, None)
}

/// Writes values to a file of the test's own and returns its path.
fn values_file(name: &str, values: &Value) -> PathBuf {
    let dir = support::run_dir().join("chart");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.values.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(values).unwrap()).unwrap();
    path
}

/// `helm template` of the chart as release `release` in `ns` with the values of `values`.
fn render(release: &str, ns: &str, values: Option<&Path>) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        ns,
    ];
    let file;
    if let Some(v) = values {
        file = v.display().to_string();
        args.extend(["--values", &file]);
    }
    ok("helm template", helm(&args))
}

fn parse_objects(manifest: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(manifest)
        .expect("helm template renders YAML")
        .into_iter()
        .filter(|o| !o.is_null())
        .collect()
}

/// `value` with every number as a float, so that 0 and 0.0 compare equal.
fn numbers_as_floats(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn server_side_apply(manifest: &str, dry_run: bool) -> String {
    let mut args = vec![
        "apply",
        "--server-side",
        "--field-manager=chart-test",
        "-f",
        "-",
    ];
    if dry_run {
        args.push("--dry-run=server");
    }
    ok(
        "kubectl apply --server-side",
        support::kubectl(&args, Some(manifest)),
    )
}

/// Values that change every knob a platform team is likely to turn.
fn non_default_values(watched: &[&str]) -> Value {
    json!({
        "replicaCount": 3,
        "image": {
            "repository": "registry.example.com/platform/sitecache",
            "digest": format!("sha256:{}", "ab".repeat(32)),
            "pullPolicy": "Always"
        },
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "crds": {"install": true, "keep": false},
        "leaderElection": {"leaseName": "sitecache-leader", "leaseDuration": "20s"},
        "storage": {
            "defaultBucket": "site-caches",
            "allowedBuckets": ["site-caches-eu", "site-caches-us"],
            "region": "eu-west-1",
            "endpoint": "https://s3.eu-west-1.amazonaws.com",
            "pathStyle": true,
            "allowedEndpoints": ["https://minio.storage.svc:9000", "https://r2.example.com"],
            "allowLegacyKeysOutsidePrefix": true
        },
        "controller": {
            "watchNamespaces": watched,
            "maxConcurrentSnapshots": 40,
            "reconcileConcurrency": 8,
            "resync": "5m",
            "snapshotPodStopTimeout": "10m",
            "failureBackoff": "30s",
            "failureBackoffMax": "2h",
            "jobTTL": "30m",
            "logLevel": "info,sitecache=debug",
            "logFormat": "text",
            "extraEnv": [{"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}],
            "extraArgs": ["--reconcile-concurrency=4"]
        },
        "agentImage": "registry.example.com/platform/sitecache-agent:1.2.3",
        "serviceAccount": {
            "name": "cache-operator",
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/sitecache-controller"}
        },
        "snapshotServiceAccount": {
            "name": "cache-snapshots",
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/sitecache-snapshot"}
        },
        "metrics": {
            "port": 9090,
            "service": {"type": "ClusterIP", "port": 9090, "annotations": {"example.com/scrape": "true"}},
            "serviceMonitor": {"enabled": true, "interval": "15s", "labels": {"release": "prometheus"}}
        },
        "podDisruptionBudget": {"maxUnavailable": 2},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "terminationGracePeriodSeconds": 60,
        "podAnnotations": {"example.com/team": "platform"},
        "podLabels": {"example.com/tier": "control"},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [{
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "sitecache"}}
        }]
    })
}

/// The ServiceMonitor kind, so that a chart that renders one can be applied. A minimal stand-in
/// for prometheus-operator's CRD (its schema is not what this test checks).
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#;

#[tokio::test]
async fn helm_lint_passes_with_default_and_non_default_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    ok("helm lint (defaults)", helm(&["lint", "--strict", chart]));
    let values = values_file("lint", &non_default_values(&["shops", "outlets"]));
    ok(
        "helm lint (non-default values)",
        helm(&[
            "lint",
            "--strict",
            chart,
            "--values",
            values.to_str().unwrap(),
        ]),
    );
    // The schema catches a misspelt value, naming it.
    let typo = values_file("typo", &json!({"controller": {"maxConcurentSnapshots": 3}}));
    let out = helm(&["lint", chart, "--values", typo.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a misspelt value passed: {text}");
    assert!(text.contains("maxConcurentSnapshots"), "{text}");
}

#[tokio::test]
async fn chart_with_default_values_applies_with_a_server_side_dry_run() {
    let (_, ns) = support::kube().await;
    let manifest = render(&format!("{ns}-rel"), &ns, None);
    let objects = parse_objects(&manifest);
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "no {kind} rendered: {kinds:?}");
    }
    // The chart's CRD is the one `sitecache crd` prints (Helm writes the number 0.0 as 0).
    let crd = of_kind(&objects, "CustomResourceDefinition")[0];
    let generated = &parse_objects(&sitecache::api::crd_yaml())[0];
    assert!(
        numbers_as_floats(&crd["spec"]) == numbers_as_floats(&generated["spec"]),
        "the chart's CRD differs from `sitecache crd`"
    );
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let out = server_side_apply(&manifest, true);
    assert!(out.contains("deployment.apps/"), "{out}");
}

#[tokio::test]
async fn chart_with_non_default_values_applies_with_a_server_side_dry_run() {
    let (_, ns) = support::kube().await;
    let (_, shops) = support::kube().await;
    let (_, outlets) = support::kube().await;
    server_side_apply(SERVICE_MONITOR_CRD, false);
    let values = values_file(&ns, &non_default_values(&[&shops, &outlets]));
    let manifest = render(&format!("{ns}-rel"), &ns, Some(&values));
    let objects = parse_objects(&manifest);

    let deployment = of_kind(&objects, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        format!(
            "registry.example.com/platform/sitecache@sha256:{}",
            "ab".repeat(32)
        )
    );
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(pod["serviceAccountName"], "cache-operator");
    let env: BTreeMap<&str, &str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert_eq!(env["SITECACHE_NAMESPACES"], format!("{shops},{outlets}"));
    assert_eq!(
        env["SITECACHE_ALLOWED_BUCKETS"],
        "site-caches-eu,site-caches-us"
    );
    assert_eq!(env["SITECACHE_JOB_SERVICE_ACCOUNT"], "cache-snapshots");
    assert_eq!(
        env["SITECACHE_ALLOWED_ENDPOINTS"],
        "https://minio.storage.svc:9000,https://r2.example.com"
    );
    assert_eq!(env["SITECACHE_ALLOW_LEGACY_KEYS_OUTSIDE_PREFIX"], "true");
    assert_eq!(env["SITECACHE_SNAPSHOT_POD_STOP_TIMEOUT"], "10m");
    assert_eq!(
        env["SITECACHE_AGENT_IMAGE"],
        "registry.example.com/platform/sitecache-agent:1.2.3"
    );
    assert_eq!(env["SITECACHE_LEADER_ELECTION_LEASE"], "sitecache-leader");
    assert_eq!(env["AWS_STS_REGIONAL_ENDPOINTS"], "regional");
    // Watching two namespaces: Roles there, nothing cluster-wide but the CRD.
    assert!(of_kind(&objects, "ClusterRole").is_empty());
    assert!(of_kind(&objects, "ClusterRoleBinding").is_empty());
    let snapshot_accounts: BTreeSet<&str> = of_kind(&objects, "ServiceAccount")
        .into_iter()
        .filter(|sa| sa["metadata"]["name"] == "cache-snapshots")
        .filter_map(|sa| sa["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(
        snapshot_accounts,
        BTreeSet::from([shops.as_str(), outlets.as_str()])
    );
    assert_eq!(of_kind(&objects, "ServiceMonitor").len(), 1);
    assert!(
        of_kind(&objects, "CustomResourceDefinition")[0]["metadata"]
            .get("annotations")
            .is_none_or(|a| a.get("helm.sh/resource-policy").is_none())
    );

    let out = server_side_apply(&manifest, true);
    assert!(
        out.contains("servicemonitor.monitoring.coreos.com/"),
        "{out}"
    );
    assert!(out.contains("poddisruptionbudget.policy/"), "{out}");
}

/// (API group, resource) → verbs: what the controller calls, and so all the chart may grant.
fn controller_permissions() -> BTreeMap<(String, String), BTreeSet<String>> {
    let table: &[(&str, &str, &[&str])] = &[
        (
            "sitecache.dev",
            "sitecaches",
            &["get", "list", "watch", "patch"],
        ),
        ("sitecache.dev", "sitecaches/status", &["patch"]),
        ("sitecache.dev", "sitecaches/finalizers", &["update"]),
        (
            "batch",
            "jobs",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("", "pods", &["list"]),
        ("events.k8s.io", "events", &["create", "patch"]),
    ];
    table
        .iter()
        .map(|(g, r, v)| {
            (
                (g.to_string(), r.to_string()),
                v.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect()
}

/// Every (group, resource) → verbs a set of rules grants, asserting no wildcard and no
/// `resourceNames` restriction is silently widened.
fn granted(rules: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in rules.as_array().expect("rules") {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "a non-resource rule: {rule}"
        );
        for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
            assert!(
                !list(field).iter().any(|v| v.contains('*')),
                "a wildcard in {field}: {rule}"
            );
        }
        for g in list("apiGroups") {
            for r in list("resources") {
                out.entry((g.clone(), r)).or_default().extend(list("verbs"));
            }
        }
    }
    out
}

#[tokio::test]
async fn chart_rbac_grants_only_what_the_controller_uses() {
    let (_, ns) = support::kube().await;
    let (_, watched) = support::kube().await;
    let (_, other) = support::kube().await;
    let expected = controller_permissions();

    // Cluster-wide (the default): one ClusterRole with exactly the controller's permissions.
    let objects = parse_objects(&render(&format!("{ns}-all"), &ns, None));
    let cluster_roles = of_kind(&objects, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1);
    assert_eq!(granted(&cluster_roles[0]["rules"]), expected);

    // Scoped: Roles in the watched namespace only, the same permissions.
    let values = values_file(
        &format!("{ns}-rbac"),
        &json!({"crds": {"install": false}, "controller": {"watchNamespaces": [watched]}}),
    );
    let manifest = render("sitecache", &ns, Some(&values));
    let objects = parse_objects(&manifest);
    assert!(of_kind(&objects, "ClusterRole").is_empty());
    let roles = of_kind(&objects, "Role");
    let (lease_roles, roles): (Vec<_>, Vec<_>) = roles.into_iter().partition(|r| {
        r["metadata"]["name"]
            .as_str()
            .unwrap()
            .ends_with("-leader-election")
    });
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["metadata"]["namespace"], watched.as_str());
    assert_eq!(granted(&roles[0]["rules"]), expected);
    // Leader election: create a Lease, read and renew only the named one.
    assert_eq!(lease_roles.len(), 1);
    assert_eq!(lease_roles[0]["metadata"]["namespace"], ns.as_str());
    let lease_rules = lease_roles[0]["rules"].as_array().unwrap();
    assert_eq!(
        granted(&lease_roles[0]["rules"]),
        BTreeMap::from([(
            ("coordination.k8s.io".to_owned(), "leases".to_owned()),
            BTreeSet::from(["create".to_owned(), "get".to_owned(), "patch".to_owned()])
        )])
    );
    for rule in lease_rules {
        let verbs = rule["verbs"].as_array().unwrap();
        if verbs.iter().any(|v| v != "create") {
            assert_eq!(
                rule["resourceNames"],
                json!(["sitecache-controller"]),
                "{rule}"
            );
        }
    }
    // The snapshot account holds no permission and mounts no token.
    let snapshot_sa = of_kind(&objects, "ServiceAccount")
        .into_iter()
        .find(|sa| sa["metadata"]["name"] == "sitecache-snapshot")
        .expect("the snapshot ServiceAccount");
    assert_eq!(snapshot_sa["automountServiceAccountToken"], false);
    for binding in of_kind(&objects, "RoleBinding") {
        for s in binding["subjects"].as_array().unwrap() {
            assert_ne!(s["name"], "sitecache-snapshot", "{binding}");
        }
    }

    // The API server agrees: as the controller's ServiceAccount, only these.
    server_side_apply(&manifest, false);
    let sa = format!("--as=system:serviceaccount:{ns}:sitecache");
    let can = |verb: &str, resource: &str, namespace: &str| -> bool {
        let out = support::kubectl(
            &["auth", "can-i", &sa, verb, resource, "-n", namespace],
            None,
        );
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can("create", "jobs.batch", &watched));
    assert!(can("patch", "sitecaches.sitecache.dev/status", &watched));
    assert!(can("create", "events.events.k8s.io", &watched));
    assert!(can(
        "patch",
        "leases.coordination.k8s.io/sitecache-controller",
        &ns
    ));
    assert!(!can("get", "secrets", &watched));
    assert!(!can("list", "configmaps", &watched));
    assert!(!can("update", "sitecaches.sitecache.dev", &watched));
    assert!(!can("delete", "sitecaches.sitecache.dev", &watched));
    assert!(!can("create", "pods", &watched));
    assert!(!can("create", "jobs.batch", &other));
    assert!(!can("create", "jobs.batch", &ns));
    assert!(!can(
        "patch",
        "leases.coordination.k8s.io/another-lease",
        &ns
    ));
    assert!(!can("create", "serviceaccounts/token", &watched));
}

#[tokio::test]
async fn controller_with_only_the_chart_rbac_completes_a_lifecycle() {
    let mut h = Harness::start(Options {
        start_controller: false,
        ..Default::default()
    })
    .await;
    let values = values_file(
        &h.ns,
        &json!({
            "crds": {"install": false},
            "storage": {
                "defaultBucket": h.bucket,
                "endpoint": h.s3().endpoint(),
                "region": "us-east-1",
                "pathStyle": true
            },
            "controller": {
                "watchNamespaces": [h.ns],
                "failureBackoff": "5s",
                "logFormat": "text"
            },
            "agentImage": AGENT_IMAGE,
        }),
    );
    let manifest = render("sitecache", &h.ns, Some(&values));
    server_side_apply(&manifest, false);

    // The controller's configuration is the chart's Deployment's environment.
    let objects = parse_objects(&manifest);
    let deployment = of_kind(&objects, "Deployment")[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], json!(["controller"]));
    let mut env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    env.push(("POD_NAME".into(), "sitecache-7d9f-abcde".into()));
    env.push(("POD_NAMESPACE".into(), h.ns.clone()));
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_owned();
    let kubeconfig = support::impersonating_kubeconfig(&h.dir, &h.ns, &account);
    h.start_controller_with_env(&kubeconfig, &env);

    h.create(
        "shop",
        json!({"site": "shop", "warm": crate::controller::harness::warm("", 3),
               "source": {"revision": "r1"}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;
    let job = h.jobs().get("shop-g1").await.unwrap();
    assert_eq!(
        job.spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .service_account_name
            .as_deref(),
        Some("sitecache-snapshot")
    );
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns);
    let lease = leases.get("sitecache-controller").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("sitecache-7d9f-abcde")
    );

    h.patch("shop", json!({"spec": {"source": {"revision": "r2"}}}))
        .await;
    h.wait_promoted("shop", 2).await;
    let sc = h.request_and_wait("shop", "chart-rbac").await;
    assert_eq!(condition(&sc, "Ready"), Some("True"));
    assert_eq!(current(&sc), Some(3));
    assert!(!h.keys("shop/").await.is_empty());

    h.delete("shop").await;
    h.wait_gone("shop", MINUTE).await;
    assert_eq!(h.keys("shop/").await, Vec::<String>::new());

    let log = std::fs::read_to_string(h.dir.join("controller-a.log")).unwrap();
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "the controller was refused something:\n{log}"
    );
    h.shutdown().await;
}
