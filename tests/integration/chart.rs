//! The Helm chart (`charts/sitecache`) with the real Helm, on the real control plane: it lints,
//! renders with default and non-default values, and applies with a server-side dry run; its RBAC
//! grants only what the controller uses; and the controller, acting as the chart's ServiceAccount
//! (impersonation) with the chart's configuration, completes a SiteCache's lifecycle. It works as
//! a subchart and aggregates users' access into the default roles; its alerts pass `promtool`'s
//! checks and unit tests, and they and its dashboard use only metrics a running controller
//! exports; its PrometheusRule, dashboard and NetworkPolicy render as designed and apply.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::{Value, json};
use sitecache_devtools::assets::Asset;

use crate::controller::harness::{AGENT_IMAGE, Harness, Options, condition, counter_sum, current};
use crate::support::{self, ok};

const MINUTE: Duration = Duration::from_secs(60);

fn chart_dir() -> PathBuf {
    support::repo_path("charts/sitecache")
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

/// Whether a ClusterRole is one of the users' roles aggregated into the default ones.
fn is_aggregated(role: &Value) -> bool {
    role["metadata"]["labels"]
        .as_object()
        .is_some_and(|labels| {
            labels
                .keys()
                .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
        })
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
            "snapshotStallAfter": "90s",
            "retentionGrace": "30m",
            "clusterId": "eu-west-prod",
            "standby": true,
            "standbyPoll": "2m",
            "failureBackoff": "30s",
            "failureBackoffMax": "2h",
            "jobTTL": "30m",
            "logLevel": "info,sitecache=debug",
            "logFormat": "text",
            "extraEnv": [{"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}],
            "extraArgs": ["--reconcile-concurrency=4"]
        },
        "agentImage": "registry.example.com/platform/sitecache-agent:1.2.3",
        "caBundle": {
            "controller": {"secret": "corporate-ca", "key": "root.pem"},
            "snapshotJobs": {"configMap": "trust-bundle"}
        },
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

/// A minimal stand-in for the prometheus-operator CRD of `kind` (`ServiceMonitor`,
/// `PrometheusRule`), so that a chart that renders one can be applied; its schema is not what these
/// tests check (promtool checks the rules).
fn prometheus_operator_crd(kind: &str) -> String {
    let singular = kind.to_lowercase();
    format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {singular}s.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {{kind: {kind}, listKind: {kind}List, plural: {singular}s, singular: {singular}}}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#
    )
}

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
    server_side_apply(&prometheus_operator_crd("ServiceMonitor"), false);
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
    assert_eq!(env["SITECACHE_SNAPSHOT_STALL_AFTER"], "90s");
    assert_eq!(env["SITECACHE_RETENTION_GRACE"], "30m");
    assert_eq!(env["SITECACHE_CLUSTER_ID"], "eu-west-prod");
    assert_eq!(env["SITECACHE_STANDBY"], "true");
    assert_eq!(env["SITECACHE_STANDBY_POLL"], "2m");
    assert_eq!(
        env["SITECACHE_AGENT_IMAGE"],
        "registry.example.com/platform/sitecache-agent:1.2.3"
    );
    assert_eq!(env["SITECACHE_LEADER_ELECTION_LEASE"], "sitecache-leader");
    assert_eq!(env["AWS_STS_REGIONAL_ENDPOINTS"], "regional");
    // The controller's CA bundle, mounted read-only from its Secret; the Jobs' default by name.
    assert_eq!(
        env["SITECACHE_CA_BUNDLE"],
        "/etc/sitecache/ca-bundle/root.pem"
    );
    assert_eq!(env["SITECACHE_AGENT_CA_BUNDLE_CONFIG_MAP"], "trust-bundle");
    assert_eq!(env["SITECACHE_AGENT_CA_BUNDLE_KEY"], "ca.crt");
    assert!(!env.contains_key("SITECACHE_AGENT_CA_BUNDLE_SECRET"));
    assert_eq!(
        container["volumeMounts"],
        json!([{"name": "ca-bundle", "mountPath": "/etc/sitecache/ca-bundle", "readOnly": true}])
    );
    assert_eq!(
        pod["volumes"],
        json!([{"name": "ca-bundle", "secret": {
            "secretName": "corporate-ca",
            "items": [{"key": "root.pem", "path": "root.pem"}],
        }}])
    );
    // Watching two namespaces with a cluster id of its own: Roles there, nothing cluster-wide
    // but the CRD and the users' aggregated roles.
    assert!(
        of_kind(&objects, "ClusterRole")
            .into_iter()
            .all(is_aggregated)
    );
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
        ("", "pods", &["list", "get", "patch"]),
        ("", "pods/log", &["get"]),
        ("events.k8s.io", "events", &["create", "patch", "list"]),
        // The snapshot Jobs' account, made where it is missing (get and patch on its name).
        ("", "serviceaccounts", &["create", "get", "patch"]),
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

/// The ClusterRole that reads the cluster's identity.
fn is_cluster_identity(role: &Value) -> bool {
    role["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n.ends_with("-cluster-identity"))
}

/// One cluster-identity ClusterRole, granting get on the `kube-system` namespace and nothing
/// else.
fn assert_cluster_identity_only(roles: &[&Value]) {
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(
        roles[0]["rules"],
        json!([{"apiGroups": [""], "resources": ["namespaces"],
                "resourceNames": ["kube-system"], "verbs": ["get"]}])
    );
}

#[tokio::test]
async fn chart_rbac_grants_only_what_the_controller_uses() {
    let (_, ns) = support::kube().await;
    let (_, watched) = support::kube().await;
    let (_, other) = support::kube().await;
    let expected = controller_permissions();

    // Cluster-wide (the default): one ClusterRole with exactly the controller's permissions
    // (besides the users' aggregated roles).
    let objects = parse_objects(&render(&format!("{ns}-all"), &ns, None));
    let (identity_roles, cluster_roles): (Vec<_>, Vec<_>) = of_kind(&objects, "ClusterRole")
        .into_iter()
        .filter(|r| !is_aggregated(r))
        .partition(|r| is_cluster_identity(r));
    assert_eq!(cluster_roles.len(), 1);
    assert_eq!(granted(&cluster_roles[0]["rules"]), expected);
    assert_cluster_identity_only(&identity_roles);

    // Scoped: Roles in the watched namespace only, the same permissions.
    let values = values_file(
        &format!("{ns}-rbac"),
        &json!({"crds": {"install": false}, "controller": {"watchNamespaces": [watched]}}),
    );
    let manifest = render("sitecache", &ns, Some(&values));
    let objects = parse_objects(&manifest);
    let (identity_roles, others): (Vec<_>, Vec<_>) = of_kind(&objects, "ClusterRole")
        .into_iter()
        .partition(|r| is_cluster_identity(r));
    assert!(others.into_iter().all(is_aggregated));
    assert_cluster_identity_only(&identity_roles);
    // With controller.clusterId set, the controller reads nothing cluster-wide.
    let values = values_file(
        &format!("{ns}-cluster-id"),
        &json!({"crds": {"install": false}, "controller": {"watchNamespaces": [watched], "clusterId": "eu-1"}}),
    );
    let with_id = parse_objects(&render("sitecache", &ns, Some(&values)));
    assert!(
        of_kind(&with_id, "ClusterRole")
            .into_iter()
            .all(is_aggregated)
    );
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
    // No token minted for any account (the TokenRequest subresource; `serviceaccounts/token`
    // would name an account called `token`, which create on serviceaccounts allows).
    let out = support::kubectl(
        &[
            "auth",
            "can-i",
            &sa,
            "create",
            "serviceaccounts",
            "--subresource=token",
            "-n",
            &watched,
        ],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    // The snapshot account: made where it is missing; read and updated by its name only.
    assert!(can("create", "serviceaccounts", &watched));
    assert!(can("get", "serviceaccounts/sitecache-snapshot", &watched));
    assert!(can("patch", "serviceaccounts/sitecache-snapshot", &watched));
    assert!(!can("get", "serviceaccounts/default", &watched));
    assert!(!can("patch", "serviceaccounts/default", &watched));
    assert!(!can(
        "delete",
        "serviceaccounts/sitecache-snapshot",
        &watched
    ));
    assert!(!can("create", "serviceaccounts", &other));
    for rule in roles[0]["rules"].as_array().unwrap() {
        if rule["resources"] == json!(["serviceaccounts"]) && rule["verbs"] != json!(["create"]) {
            assert_eq!(
                rule["resourceNames"],
                json!(["sitecache-snapshot"]),
                "{rule}"
            );
        }
    }
    // Without autoCreate, nothing on serviceaccounts.
    let values = values_file(
        &format!("{ns}-no-auto-create"),
        &json!({"crds": {"install": false}, "snapshotServiceAccount": {"autoCreate": false}}),
    );
    let objects = parse_objects(&render(&format!("{ns}-nac"), &ns, Some(&values)));
    let role = of_kind(&objects, "ClusterRole")
        .into_iter()
        .find(|r| !is_aggregated(r) && !is_cluster_identity(r))
        .unwrap();
    let mut without = expected.clone();
    without.remove(&(String::new(), "serviceaccounts".to_owned()));
    assert_eq!(granted(&role["rules"]), without);
}

#[tokio::test]
async fn controller_with_only_the_chart_rbac_completes_a_lifecycle() {
    let mut h = Harness::start(Options {
        start_controller: false,
        ..Default::default()
    })
    .await;
    let (_, elsewhere) = support::kube().await;
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
            "jobDefaults": {
                "agentResources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "300Mi"}},
                "nodeSelector": {"node-pool": "snapshots"},
                "tolerations": [{"key": "snapshots", "operator": "Exists", "effect": "NoSchedule"}]
            },
            // The chart makes the snapshot account elsewhere: here the controller makes it, with
            // the chart's RBAC.
            "snapshotServiceAccount": {"namespaces": [elsewhere]},
        }),
    );
    // Named after the test's namespace: the chart's cluster-scoped objects (the cluster-identity
    // binding) are the release's own, not another test's.
    let manifest = render(&h.ns, &h.ns, Some(&values));
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
    // The Job defaults file is the chart's ConfigMap, mounted where SITECACHE_JOB_DEFAULTS points:
    // here a file with its content.
    let defaults = of_kind(&objects, "ConfigMap")
        .into_iter()
        .find(|c| {
            c["metadata"]["name"]
                .as_str()
                .unwrap()
                .ends_with("-job-defaults")
        })
        .expect("the job-defaults ConfigMap");
    let defaults_file = h.dir.join("job-defaults.yaml");
    std::fs::write(
        &defaults_file,
        defaults["data"]["job-defaults.yaml"].as_str().unwrap(),
    )
    .unwrap();
    let path = env
        .iter_mut()
        .find(|(k, _)| k == "SITECACHE_JOB_DEFAULTS")
        .expect("SITECACHE_JOB_DEFAULTS");
    path.1 = defaults_file.display().to_string();
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
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("sitecache-snapshot")
    );
    // The chart's Job defaults, as the controller read them from the chart's document.
    assert_eq!(
        pod.node_selector,
        Some(BTreeMap::from([("node-pool".into(), "snapshots".into())]))
    );
    assert_eq!(
        pod.tolerations.unwrap()[0].key.as_deref(),
        Some("snapshots")
    );
    let snapshot = pod
        .containers
        .iter()
        .find(|c| c.name == "snapshot")
        .unwrap();
    assert_eq!(
        snapshot
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap()["memory"]
            .0,
        "300Mi"
    );
    let account =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(h.client.clone(), &h.ns)
            .get("sitecache-snapshot")
            .await
            .expect("the snapshot account, made by the controller");
    assert_eq!(
        account
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("sitecache")
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

#[tokio::test]
async fn chart_works_as_a_subchart_with_global_values() {
    let chart = chart_dir();
    // The chart's own lint, with values a parent chart would share.
    let global = json!({"global": {
        "imageRegistry": "registry.example.com",
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "labels": {"example.com/team": "platform"}
    }});
    let values = values_file("global", &global);
    ok(
        "helm lint --strict (global values)",
        helm(&[
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "--values",
            values.to_str().unwrap(),
        ]),
    );

    // A parent chart with sitecache as its dependency: Helm hands it the parent's `global`.
    let parent = support::run_dir().join("chart").join("parent");
    let _ = std::fs::remove_dir_all(&parent);
    copy_dir(&chart, &parent.join("charts").join("sitecache"));
    std::fs::create_dir_all(parent.join("templates")).unwrap();
    std::fs::write(
        parent.join("Chart.yaml"),
        "apiVersion: v2\nname: platform\nversion: 1.0.0\nicon: https://example.com/icon.png\n\
         dependencies:\n  - name: sitecache\n    version: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        parent.join("templates").join("registry.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-registry\n\
         data:\n  registry: {{ .Values.global.imageRegistry | quote }}\n",
    )
    .unwrap();
    std::fs::write(
        parent.join("values.yaml"),
        serde_json::to_string(&json!({
            "global": global["global"],
            "sitecache": {"storage": {"defaultBucket": "site-caches"}}
        }))
        .unwrap(),
    )
    .unwrap();
    let parent_dir = parent.to_str().unwrap();
    ok(
        "helm lint --strict (parent chart)",
        helm(&["lint", "--strict", parent_dir]),
    );
    let objects = parse_objects(&ok(
        "helm template (parent chart)",
        helm(&["template", "platform", parent_dir]),
    ));
    let deployment = of_kind(&objects, "Deployment")[0];
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "SITECACHE_DEFAULT_BUCKET" && e["value"] == "site-caches"),
        "the parent's values reach the subchart: {env}"
    );
    // The parent's global pull secrets reach the controller pod.
    assert_eq!(
        deployment["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "registry-credentials"}])
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn chart_aggregates_sitecache_access_into_the_default_roles() {
    let (_, ns) = support::kube().await;
    let release = format!("{ns}-agg");
    let aggregated = |values: Option<Value>| -> Vec<Value> {
        let file = values.map(|v| values_file(&format!("{ns}-agg"), &v));
        let objects = parse_objects(&render(&release, &ns, file.as_deref()));
        of_kind(&objects, "ClusterRole")
            .into_iter()
            .filter(|r| is_aggregated(r))
            .cloned()
            .collect()
    };
    let label = |k: &str| format!("rbac.authorization.k8s.io/aggregate-to-{k}");
    let check = |roles: &[Value]| {
        assert_eq!(roles.len(), 2, "{roles:?}");
        let view = roles
            .iter()
            .find(|r| r["metadata"]["name"] == format!("{release}-sitecache-view"))
            .expect("the view role");
        let edit = roles
            .iter()
            .find(|r| r["metadata"]["name"] == format!("{release}-sitecache-edit"))
            .expect("the edit role");
        for k in ["view", "edit", "admin"] {
            assert_eq!(view["metadata"]["labels"][label(k)], "true", "{view}");
        }
        assert_eq!(edit["metadata"]["labels"][label("edit")], "true", "{edit}");
        assert_eq!(edit["metadata"]["labels"][label("admin")], "true", "{edit}");
        assert!(
            edit["metadata"]["labels"].get(label("view")).is_none(),
            "viewers may not change SiteCaches: {edit}"
        );
        let grants = |rules: &[(&str, &[&str])]| {
            rules
                .iter()
                .map(|(r, v)| {
                    (
                        ("sitecache.dev".to_owned(), r.to_string()),
                        v.iter().map(|s| s.to_string()).collect(),
                    )
                })
                .collect::<BTreeMap<_, BTreeSet<_>>>()
        };
        assert_eq!(
            granted(&view["rules"]),
            grants(&[
                ("sitecaches", &["get", "list", "watch"]),
                ("sitecaches/status", &["get", "list", "watch"]),
            ])
        );
        assert_eq!(
            granted(&edit["rules"]),
            grants(&[(
                "sitecaches",
                &["create", "update", "patch", "delete", "deletecollection"]
            )])
        );
    };
    // By default, also with watched namespaces (users' access does not depend on them).
    check(&aggregated(None));
    check(&aggregated(Some(
        json!({"controller": {"watchNamespaces": [ns]}}),
    )));
    assert!(aggregated(Some(json!({"rbac": {"aggregateToDefaultRoles": false}}))).is_empty());
    assert!(aggregated(Some(json!({"rbac": {"create": false}}))).is_empty());
}

// ---------------------------------------------------------------- alerts and dashboard

fn promtool(args: &[&str]) -> Output {
    let promtool = Asset::Promtool.path().expect("promtool (make test-assets)");
    support::run_with_input(&promtool, args, None)
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rules_path() -> PathBuf {
    chart_dir().join("files").join("prometheus-rules.yaml")
}

fn rules_tests_path() -> PathBuf {
    chart_dir().join("tests").join("prometheus-rules.test.yaml")
}

fn rules_file() -> Value {
    serde_saphyr::from_str(&read_text(&rules_path())).expect("files/prometheus-rules.yaml")
}

fn dashboard_file() -> Value {
    serde_json::from_str(&read_text(
        &chart_dir().join("files").join("dashboard.json"),
    ))
    .expect("files/dashboard.json is JSON")
}

/// Every rule of a rule file, through its groups.
fn rules_of(file: &Value) -> Vec<&Value> {
    rules_of_groups(&file["groups"])
}

fn alert_names(file: &Value) -> Vec<String> {
    rules_of(file)
        .into_iter()
        .filter_map(|r| Some(r.get("alert")?.as_str()?.to_owned()))
        .collect()
}

/// A vector selector of a PromQL expression: its metric name and its label matchers as written
/// (between the braces; empty without braces).
#[derive(Debug, PartialEq)]
struct Selector {
    metric: String,
    matchers: String,
}

/// Words of PromQL that are not metric names when they are not followed by `(`: aggregations
/// (followed by `by`/`without`), binary operators and literals.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Words followed by a list of label names in parentheses.
const PROMQL_LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The vector selectors of a PromQL expression (Grafana's `$variables` allowed), by a small
/// lexer: strings, comments, ranges, numbers and durations, label lists, functions and keywords
/// are skipped; every other word is a metric name.
fn selectors(expr: &str) -> Vec<Selector> {
    let c: Vec<char> = expr.chars().collect();
    fn after_string(c: &[char], mut i: usize) -> usize {
        let quote = c[i];
        i += 1;
        while i < c.len() && c[i] != quote {
            if c[i] == '\\' && quote != '`' {
                i += 1;
            }
            i += 1;
        }
        i + 1
    }
    fn after_group(c: &[char], mut i: usize, close: char) -> usize {
        let open = c[i];
        let mut depth = 0;
        while i < c.len() {
            match c[i] {
                '"' | '\'' | '`' => {
                    i = after_string(c, i);
                    continue;
                }
                x if x == open => depth += 1,
                x if x == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced {open} in {}", c.iter().collect::<String>())
    }
    let word_char = |x: char| x.is_ascii_alphanumeric() || x == '_' || x == ':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => i = after_string(&c, i),
            '#' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '[' => i = after_group(&c, i, ']'),
            '{' => panic!("a selector without a metric name in {expr}"),
            '$' => {
                i += 1;
                if c.get(i) == Some(&'{') {
                    i = after_group(&c, i, '}');
                } else {
                    while i < c.len() && word_char(c[i]) {
                        i += 1;
                    }
                }
            }
            x if x.is_ascii_digit() || x == '.' => {
                while i < c.len() && (word_char(c[i]) || c[i] == '.') {
                    i += 1;
                }
            }
            x if x.is_ascii_alphabetic() || x == '_' || x == ':' => {
                let start = i;
                while i < c.len() && word_char(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let mut j = i;
                while j < c.len() && c[j].is_whitespace() {
                    j += 1;
                }
                let next = c.get(j).copied();
                if PROMQL_LABEL_LISTS.contains(&word.as_str()) {
                    if next == Some('(') {
                        i = after_group(&c, j, ')');
                    }
                } else if next == Some('(') || PROMQL_WORDS.contains(&word.to_lowercase().as_str())
                {
                    // A function, an aggregation, an operator or a literal.
                } else if next == Some('{') {
                    let end = after_group(&c, j, '}');
                    out.push(Selector {
                        metric: word,
                        matchers: c[j + 1..end - 1].iter().collect(),
                    });
                    i = end;
                } else {
                    out.push(Selector {
                        metric: word,
                        matchers: String::new(),
                    });
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn selectors_are_found_in_promql() {
    let expr = r#"
        histogram_quantile(0.9, sum by (le) (rate(a_bucket{job="$job",le=~"1.*"}[5m] offset 1h)))
          > on (job) group_left(version) max without (instance) (b_info{job="x"}) * 1e3
        and ignoring(kind) sum(increase(c_total{kind="{not}a_metric"}[$__rate_interval]))
        or vector(1) unless d # e_comment{job="y"}
        / count(f:recorded) + inf
    "#;
    let found: Vec<(String, String)> = selectors(expr)
        .into_iter()
        .map(|s| (s.metric, s.matchers))
        .collect();
    assert_eq!(
        found,
        [
            ("a_bucket", r#"job="$job",le=~"1.*""#),
            ("b_info", r#"job="x""#),
            ("c_total", r#"kind="{not}a_metric""#),
            ("d", ""),
            ("f:recorded", ""),
        ]
        .map(|(m, l)| (m.to_owned(), l.to_owned()))
    );
}

/// Asserts that every selector of a controller metric in `expr` has `job` (as written, for
/// example `job="sitecache"`) as its only job matcher, and that kube-state-metrics' series have
/// none (their job is kube-state-metrics').
fn assert_job_matchers(expr: &str, job: &str, extra: &[&str]) {
    for s in selectors(expr) {
        let matchers: Vec<&str> = s
            .matchers
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        let jobs: Vec<&str> = matchers
            .iter()
            .copied()
            .filter(|m| m.starts_with("job"))
            .collect();
        if s.metric.starts_with("kube_sitecache_") {
            assert!(jobs.is_empty(), "{s:?} in {expr}");
            continue;
        }
        assert_eq!(jobs, vec![job], "the job matcher of {s:?} in {expr}");
        for m in extra {
            assert!(matchers.contains(m), "no {m} in {s:?} in {expr}");
        }
    }
}

#[test]
fn every_controller_selector_of_the_alerts_and_the_dashboard_names_the_job() {
    let rules = rules_file();
    for rule in rules_of(&rules) {
        assert_job_matchers(rule["expr"].as_str().unwrap(), r#"job="sitecache""#, &[]);
    }
    for (whence, expr) in dashboard_queries(&dashboard_file()) {
        if whence == r#"variable "job""# {
            continue; // it lists the jobs
        }
        // Panels show the replicas chosen; the variables list them.
        let replicas: &[&str] = if whence.starts_with("panel") {
            &[r#"instance=~"$instance""#]
        } else {
            &[]
        };
        assert_job_matchers(&expr, r#"job="$job""#, replicas);
    }
}

/// The PromQL of a dashboard: its panels' targets and its variables' `label_values` selectors,
/// each with where it is.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {:?} {}", panel["title"], target["refId"]),
                target["expr"].as_str().expect("a target's expr").to_owned(),
            ));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let query = var["query"]["query"].as_str().unwrap();
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| Some(q.rsplit_once(',')?.0))
                .unwrap_or_else(|| panic!("variable {}: {query}", var["name"]));
            out.push((format!("variable {}", var["name"]), inner.to_owned()));
        }
    }
    out
}

#[test]
fn dashboard_is_a_grafana_dashboard_with_a_datasource_job_and_replica_variables() {
    let dashboard = dashboard_file();
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().is_some());
    let vars: BTreeMap<&str, &Value> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    assert!(
        vars["job"]["query"]["query"]
            .as_str()
            .unwrap()
            .ends_with(", job)")
    );
    assert!(
        vars["instance"]["query"]["query"]
            .as_str()
            .unwrap()
            .contains(r#"{job="$job"}"#)
    );
    assert_eq!(vars["instance"]["includeAll"], true);
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "{panel}");
        let pos = &panel["gridPos"];
        assert!(
            pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24,
            "{pos}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{panel}");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{panel}");
        }
    }
    let titles: BTreeSet<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for title in [
        "Leader",
        "Reconciles",
        "Snapshot Jobs finished",
        "Snapshot Job duration (succeeded, last hour)",
        "Generations promoted",
        "Stale SiteCaches",
        "Storage requests",
        "CPU",
        "Memory",
        "File descriptors",
    ] {
        assert!(titles.contains(title), "no panel {title:?}: {titles:?}");
    }
}

/// `promtool` with the chart's rules: `check rules` counts them all, `test rules` passes, and
/// the dashboard's queries parse.
#[tokio::test]
async fn promtool_checks_the_alerts_and_the_dashboard_queries_and_runs_the_alert_unit_tests() {
    let rules = rules_file();
    let path = rules_path();
    let out = ok(
        "promtool check rules",
        promtool(&["check", "rules", path.to_str().unwrap()]),
    );
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules_of(&rules).len())),
        "{out}"
    );
    // The unit tests run on the chart's file itself.
    let tests: Value = serde_saphyr::from_str(&read_text(&rules_tests_path())).unwrap();
    assert_eq!(
        tests["rule_files"],
        json!(["../files/prometheus-rules.yaml"])
    );
    let tests_path = rules_tests_path();
    let out = ok(
        "promtool test rules",
        promtool(&["test", "rules", tests_path.to_str().unwrap()]),
    );
    assert!(out.contains("SUCCESS"), "{out}");

    // The dashboard's queries are PromQL (Grafana's variables replaced by values).
    let dashboard_rules: Vec<Value> = dashboard_queries(&dashboard_file())
        .into_iter()
        .enumerate()
        .map(|(n, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$__range", "6h")
                .replace("$job", "sitecache")
                .replace("$instance", ".*");
            assert!(!expr.contains('$'), "an unknown variable in {expr}");
            json!({"record": format!("sitecache_dashboard:query_{n}"), "expr": expr})
        })
        .collect();
    let dir = support::run_dir().join("chart").join("promtool");
    std::fs::create_dir_all(&dir).unwrap();
    let queries = dir.join("dashboard-queries.json");
    std::fs::write(
        &queries,
        serde_json::to_vec(&json!({"groups": [{"name": "dashboard", "rules": dashboard_rules}]}))
            .unwrap(),
    )
    .unwrap();
    ok(
        "promtool check rules (the dashboard's queries)",
        promtool(&["check", "rules", queries.to_str().unwrap()]),
    );
}

/// Each alert's unit tests can fail: with the alert's expression replaced by one that is always
/// true, its "stays quiet" tests fail; by one that is never true, its "fires" tests fail.
#[tokio::test]
async fn every_alert_fires_on_its_problem_and_stays_quiet_when_healthy() {
    let rules = rules_file();
    let tests: Value = serde_saphyr::from_str(&read_text(&rules_tests_path())).unwrap();
    let groups: Vec<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let dir = support::run_dir().join("chart").join("promtool");
    std::fs::create_dir_all(&dir).unwrap();
    let alerts = alert_names(&rules);
    assert!(alerts.len() >= 15, "{alerts:?}");
    for alert in &alerts {
        for (kind, expr) in [("fires", "vector(1) < 0"), ("stays quiet", "vector(1)")] {
            let prefix = format!("{alert} {kind}");
            assert!(
                groups.iter().any(|g| g.starts_with(&prefix)),
                "no unit test named \"{prefix} …\""
            );
            let mut mutated = rules.clone();
            for group in mutated["groups"].as_array_mut().unwrap() {
                for rule in group["rules"].as_array_mut().unwrap() {
                    if rule["alert"] == alert.as_str() {
                        rule["expr"] = json!(expr);
                    }
                }
            }
            let stem = format!("{alert}-{}", kind.replace(' ', "-"));
            let rules_path = dir.join(format!("{stem}.rules.json"));
            std::fs::write(&rules_path, serde_json::to_vec(&mutated).unwrap()).unwrap();
            let mut tests = tests.clone();
            tests["rule_files"] = json!([rules_path]);
            let tests_path = dir.join(format!("{stem}.test.json"));
            std::fs::write(&tests_path, serde_json::to_vec(&tests).unwrap()).unwrap();
            let out = promtool(&[
                "test",
                "rules",
                "--run",
                &format!("^{prefix} "),
                tests_path.to_str().unwrap(),
            ]);
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && text.contains("FAILED") && text.contains(alert.as_str()),
                "with {alert}'s expression replaced by `{expr}`, its \"{kind}\" tests still pass:\n{text}"
            );
        }
    }
}

/// The sample names a scrape's `# TYPE` lines announce: what PromQL can select. Checks that every
/// sample in the scrape is one of them.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        match kind {
            // OpenMetrics names a counter's family without the suffix its samples carry.
            "counter" if name.ends_with("_total") => {
                names.insert(name.to_owned());
            }
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            "summary" => {
                for suffix in ["", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            "info" => {
                names.insert(format!("{name}_info"));
            }
            "gauge" | "unknown" | "untyped" | "stateset" => {
                names.insert(name.to_owned());
            }
            other => panic!("an unknown metric type {other}: {line}"),
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(
            names.contains(name)
                || name
                    .strip_suffix("_created")
                    .is_some_and(|base| names.iter().any(|n| n.starts_with(base))),
            "sample {name} of no announced family (the suffixes above are wrong):\n{text}"
        );
    }
    names
}

#[tokio::test]
async fn the_alerts_and_the_dashboard_use_only_metrics_the_controller_exports() {
    // Every name the rules and the dashboard select, and where.
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in rules_of(&rules_file()) {
        let whence = format!(
            "rule {}",
            rule.get("alert")
                .or_else(|| rule.get("record"))
                .unwrap()
                .as_str()
                .unwrap()
        );
        for s in selectors(rule["expr"].as_str().unwrap()) {
            used.entry(s.metric).or_default().insert(whence.clone());
        }
    }
    for (whence, expr) in dashboard_queries(&dashboard_file()) {
        for s in selectors(&expr) {
            used.entry(s.metric).or_default().insert(whence.clone());
        }
    }
    for name in [
        "sitecache_reconciles_total",
        "sitecache_snapshot_job_duration_seconds_bucket",
        "kube_sitecache_status_condition",
        "process_cpu_seconds_total",
    ] {
        assert!(used.contains_key(name), "{name} not found in {used:?}");
    }

    // A running controller. A family with labels is exported from its first sample on: one
    // SiteCache is promoted (Jobs by result, rebuilds, storage requests) and another fails on
    // a missing bucket (reconcile errors).
    let missing = format!("missing-{}", std::process::id());
    let h = Harness::start(Options {
        extra_args: vec!["--allowed-buckets".into(), missing.clone()],
        ..Options::default()
    })
    .await;
    h.wait_ready().await;
    let warm = crate::controller::harness::warm("", 3);
    h.create("shop", json!({"site": "shop", "warm": warm}))
        .await;
    h.create(
        "broken",
        json!({"site": "broken", "warm": warm, "storage": {"bucket": missing}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;
    let deadline = std::time::Instant::now() + MINUTE;
    let scrape = loop {
        let scrape = h.metrics().await;
        if counter_sum(&scrape, "sitecache_reconcile_errors_total") > 0.0 {
            break scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reconcile error counted:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let exported = exported_names(&scrape);
    let missing: Vec<String> = used
        .iter()
        // `up` is Prometheus' own; kube_sitecache_* come from kube-state-metrics.
        .filter(|(name, _)| *name != "up" && !name.starts_with("kube_sitecache_"))
        .filter(|(name, _)| !exported.contains(*name))
        .map(|(name, whence)| format!("{name} (used by {whence:?})"))
        .collect();
    assert!(
        missing.is_empty(),
        "the alerts or the dashboard use metrics the controller does not export:\n  {}\n\
         exported: {exported:?}",
        missing.join("\n  ")
    );
    h.shutdown().await;
}

/// The rule groups of files/prometheus-rules.yaml as the chart should render them: `job`
/// matching the controller's series, `alert_labels` added to the alerts (their own win).
fn expected_rule_groups(job: &str, alert_labels: &Value) -> Value {
    let mut file = rules_file();
    for group in file["groups"].as_array_mut().unwrap() {
        for rule in group["rules"].as_array_mut().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            rule["expr"] = json!(expr.replace(r#"job="sitecache""#, &format!(r#"job="{job}""#)));
            if rule.get("alert").is_some() {
                let labels = rule["labels"].as_object_mut().unwrap();
                for (k, v) in alert_labels.as_object().unwrap() {
                    labels.entry(k.clone()).or_insert(v.clone());
                }
            }
        }
    }
    file["groups"].take()
}

/// Asserts rendered rule groups equal the expected ones, rule by rule (for a readable failure).
fn assert_groups(rendered: &Value, expected: &Value) {
    let names = |groups: &Value| -> Vec<Value> {
        groups
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].clone())
            .collect()
    };
    assert_eq!(names(rendered), names(expected));
    let (rendered, expected) = (rules_of_groups(rendered), rules_of_groups(expected));
    assert_eq!(rendered.len(), expected.len());
    for (r, e) in rendered.iter().zip(&expected) {
        assert_eq!(r, e, "rule {}", e.get("alert").unwrap_or(&e["record"]));
    }
}

fn rules_of_groups(groups: &Value) -> Vec<&Value> {
    groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect()
}

#[tokio::test]
async fn chart_renders_alerts_a_dashboard_and_a_network_policy_that_apply() {
    let (_, ns) = support::kube().await;
    let (_, monitoring) = support::kube().await;
    server_side_apply(&prometheus_operator_crd("ServiceMonitor"), false);
    server_side_apply(&prometheus_operator_crd("PrometheusRule"), false);
    ok(
        "kubectl wait (CRDs established)",
        support::kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/servicemonitors.monitoring.coreos.com",
                "crd/prometheusrules.monitoring.coreos.com",
            ],
            None,
        ),
    );
    let metrics_from = json!([{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": monitoring}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    }]);
    let egress = json!([
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        {"to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}], "ports": [{"port": 443, "protocol": "TCP"}]},
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    ]);
    let values = values_file(
        &format!("{ns}-monitoring"),
        &json!({
            "metrics": {
                "port": 9090,
                "serviceMonitor": {"enabled": true},
                "prometheusRule": {
                    "enabled": true,
                    "labels": {"release": "prometheus"},
                    "alertLabels": {"team": "platform", "severity": "page"}
                },
                "grafanaDashboard": {
                    "enabled": true,
                    "namespace": monitoring,
                    "annotations": {"grafana_folder": "Operators"}
                }
            },
            "networkPolicy": {"enabled": true, "metricsFrom": metrics_from, "egress": egress}
        }),
    );
    let chart = chart_dir();
    ok(
        "helm lint --strict (alerts, dashboard, network policy)",
        helm(&[
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "--values",
            values.to_str().unwrap(),
        ]),
    );
    let manifest = render(&format!("{ns}-rel"), &ns, Some(&values));
    let objects = parse_objects(&manifest);

    // The alerts select the job the ServiceMonitor gives the controller's series: the Service's
    // name (prometheus-operator's default job label).
    let service = of_kind(&objects, "Service")[0];
    let job = service["metadata"]["name"].as_str().unwrap();
    let monitor = of_kind(&objects, "ServiceMonitor")[0];
    assert!(monitor["spec"].get("jobLabel").is_none(), "{monitor}");
    let rule = of_kind(&objects, "PrometheusRule");
    assert_eq!(rule.len(), 1);
    let rule = rule[0];
    assert_eq!(rule["metadata"]["namespace"], ns.as_str());
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    assert_groups(
        &rule["spec"]["groups"],
        &expected_rule_groups(job, &json!({"team": "platform", "severity": "page"})),
    );
    for r in rules_of(&rule["spec"]) {
        assert_job_matchers(r["expr"].as_str().unwrap(), &format!(r#"job="{job}""#), &[]);
    }
    // Prometheus' templates reach the PrometheusRule untouched by Helm.
    for template in [
        "{{ $labels.instance }}",
        "{{ $value | humanizeDuration }}",
        "{{ $labels.namespace }}/{{ $labels.name }}",
    ] {
        assert!(
            rules_of(&rule["spec"])
                .iter()
                .any(|r| r["annotations"]["summary"]
                    .as_str()
                    .is_some_and(|s| s.contains(template))),
            "no annotation with {template}"
        );
    }

    // The dashboard, for the sidecar in the monitoring namespace.
    let dashboards = of_kind(&objects, "ConfigMap");
    assert_eq!(dashboards.len(), 1);
    let dashboard = dashboards[0];
    assert_eq!(dashboard["metadata"]["namespace"], monitoring.as_str());
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        dashboard["metadata"]["annotations"]["grafana_folder"],
        "Operators"
    );
    let json: Value = serde_json::from_str(
        dashboard["data"]["sitecache.json"]
            .as_str()
            .expect("data.sitecache.json"),
    )
    .expect("the ConfigMap holds JSON");
    assert_eq!(json, dashboard_file());

    // The NetworkPolicy: the controller pods; in, only the metrics port from the peers given;
    // out, the rules given.
    let deployment = of_kind(&objects, "Deployment")[0];
    let policy = of_kind(&objects, "NetworkPolicy");
    assert_eq!(policy.len(), 1);
    let policy = &policy[0]["spec"];
    assert_eq!(
        policy["podSelector"], deployment["spec"]["selector"],
        "the policy selects the controller pods"
    );
    assert_eq!(policy["policyTypes"], json!(["Ingress", "Egress"]));
    let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert_eq!(
        ports,
        &json!([{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}])
    );
    assert_eq!(
        policy["ingress"],
        json!([{"ports": [{"port": 9090, "protocol": "TCP"}], "from": metrics_from}])
    );
    assert_eq!(policy["egress"], egress);

    let out = server_side_apply(&manifest, true);
    for kind in [
        "prometheusrule.monitoring.coreos.com/",
        "configmap/",
        "networkpolicy.networking.k8s.io/",
        "servicemonitor.monitoring.coreos.com/",
    ] {
        assert!(out.contains(kind), "{kind} not applied:\n{out}");
    }

    // Defaults: the alerts as written but for the job; any source may scrape; all egress.
    let values = values_file(
        &format!("{ns}-monitoring-defaults"),
        &json!({
            "metrics": {"prometheusRule": {"enabled": true}, "grafanaDashboard": {"enabled": true}},
            "networkPolicy": {"enabled": true}
        }),
    );
    let objects = parse_objects(&render(&format!("{ns}-rel"), &ns, Some(&values)));
    let rule = of_kind(&objects, "PrometheusRule")[0];
    assert_groups(
        &rule["spec"]["groups"],
        &expected_rule_groups(&format!("{ns}-rel-sitecache-metrics"), &json!({})),
    );
    let dashboard = of_kind(&objects, "ConfigMap")[0];
    assert_eq!(dashboard["metadata"]["namespace"], ns.as_str());
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let policy = &of_kind(&objects, "NetworkPolicy")[0]["spec"];
    assert_eq!(
        policy["ingress"],
        json!([{"ports": [{"port": 8080, "protocol": "TCP"}]}])
    );
    assert_eq!(policy["egress"], json!([{}]));

    // A job of the user's own scrape configuration.
    let values = values_file(
        &format!("{ns}-monitoring-job"),
        &json!({"metrics": {"prometheusRule": {"enabled": true, "job": "kubernetes-pods/sitecache"}}}),
    );
    let objects = parse_objects(&render(&format!("{ns}-rel"), &ns, Some(&values)));
    let rule = of_kind(&objects, "PrometheusRule")[0];
    assert_groups(
        &rule["spec"]["groups"],
        &expected_rule_groups("kubernetes-pods/sitecache", &json!({})),
    );

    // None of them unless asked for.
    let objects = parse_objects(&render(&format!("{ns}-rel"), &ns, None));
    for kind in ["PrometheusRule", "ConfigMap", "NetworkPolicy"] {
        assert!(
            of_kind(&objects, kind).is_empty(),
            "{kind} rendered by default"
        );
    }
}

/// The labels of an object.
fn labels_of(object: &Value) -> &serde_json::Map<String, Value> {
    object["metadata"]["labels"]
        .as_object()
        .unwrap_or_else(|| panic!("no labels: {object}"))
}

/// The text of `helm template` or `helm lint` that failed, with what it printed.
fn failure(out: Output) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded:\n{text}");
    text
}

/// Values that turn on every convention: global values, commonLabels, a registry, extra
/// objects, volumes, a PodMonitor and Job defaults.
fn convention_values(ns: &str) -> Value {
    json!({
        "global": {
            "imagePullSecrets": [{"name": "global-registry"}],
            "commonLabels": {"example.com/team": "platform", "example.com/env": "global"},
            "priorityClassName": "global-priority",
            "imageRegistry": "a parent's own global, ignored"
        },
        "image": {"registry": "registry.example.com", "repository": "mirror/sitecache", "tag": "9.9.9"},
        "imagePullSecrets": [{"name": "registry"}, {"name": "global-registry"}],
        "commonLabels": {"example.com/env": "prod"},
        "jobDefaults": {
            "agentResources": {"requests": {"cpu": 1, "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "imagePullSecrets": [{"name": "snapshot-registry"}],
            "nodeSelector": {"node-pool": "batch"},
            "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}]
        },
        "volumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
        "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/custom", "readOnly": true}],
        "metrics": {
            "podMonitor": {"enabled": true, "interval": "15s", "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": true},
            "grafanaDashboard": {"enabled": true}
        },
        "networkPolicy": {"enabled": true},
        "extraObjects": [
            {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "{{ include \"sitecache.fullname\" . }}-extra", "namespace": ns},
                "data": {"release": "{{ .Release.Name }}"}
            },
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-extra\n  namespace: {{ .Release.Namespace }}\nstringData:\n  bucket: {{ .Values.storage.defaultBucket | quote }}\n"
        ],
        "storage": {"defaultBucket": "site-caches"}
    })
}

#[tokio::test]
async fn chart_conventions_global_common_labels_registry_volumes_extra_objects_and_pod_monitor() {
    let (_, ns) = support::kube().await;
    let release = format!("{ns}-rel");
    let values = values_file(&format!("{ns}-conventions"), &convention_values(&ns));
    let manifest = render(&release, &ns, Some(&values));
    let objects = parse_objects(&manifest);
    let fullname = format!("{release}-sitecache");

    // commonLabels over global.commonLabels, on every object the chart renders (the CRD and the
    // monitoring objects included), never on the user's extraObjects; the chart's own labels stay.
    let extra: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-extra"))
        })
        .collect();
    assert_eq!(extra.len(), 2, "the two extraObjects");
    for object in objects.iter().filter(|o| !extra.contains(o)) {
        let labels = labels_of(object);
        let what = format!("{} {}", object["kind"], object["metadata"]["name"]);
        assert_eq!(
            labels.get("example.com/env"),
            Some(&json!("prod")),
            "{what}"
        );
        assert_eq!(
            labels.get("example.com/team"),
            Some(&json!("platform")),
            "{what}"
        );
        assert_eq!(
            labels.get("app.kubernetes.io/part-of"),
            Some(&json!("sitecache")),
            "{what}"
        );
    }
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "PodMonitor",
        "PrometheusRule",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(kind), "no {kind}: {kinds:?}");
    }
    assert!(!kinds.contains("ServiceMonitor"));

    // extraObjects, templated: a mapping and a string.
    let configmap = extra.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert_eq!(configmap["metadata"]["name"], format!("{fullname}-extra"));
    assert_eq!(configmap["data"]["release"], release.as_str());
    let secret = extra.iter().find(|o| o["kind"] == "Secret").unwrap();
    assert_eq!(secret["metadata"]["namespace"], ns.as_str());
    assert_eq!(secret["stringData"]["bucket"], "site-caches");

    // The controller pod: registry/repository:tag, global then own pull secrets (once each),
    // the global priority class, its own volumes beside the Job defaults'.
    let deployment = of_kind(&objects, "Deployment")[0];
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/mirror/sitecache:9.9.9"
    );
    assert_eq!(
        spec["imagePullSecrets"],
        json!([{"name": "global-registry"}, {"name": "registry"}])
    );
    assert_eq!(spec["priorityClassName"], "global-priority");
    assert_eq!(pod["metadata"]["labels"]["example.com/env"], "prod");
    let selector = deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(
        selector.keys().all(|k| k.starts_with("app.kubernetes.io/")),
        "{selector:?}"
    );
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(volumes, ["job-defaults", "ca"]);
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert_eq!(mounts[1]["mountPath"], "/etc/ssl/custom");

    // The Job defaults: a ConfigMap whose document the controller's own parser reads as the
    // values say, mounted where SITECACHE_JOB_DEFAULTS points, its checksum on the pod.
    let defaults_map = of_kind(&objects, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == format!("{fullname}-job-defaults"))
        .expect("the job-defaults ConfigMap");
    let document = defaults_map["data"]["job-defaults.yaml"].as_str().unwrap();
    let parsed = sitecache::controller::settings::job_defaults::JobDefaults::parse(document)
        .unwrap_or_else(|e| {
            panic!("the controller refuses the chart's document: {e:?}\n{document}")
        });
    let resources = parsed.agent_resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "1");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "1Gi");
    assert_eq!(parsed.image_pull_secrets[0].name, "snapshot-registry");
    assert_eq!(parsed.node_selector["node-pool"], "batch");
    assert_eq!(parsed.tolerations[0].key.as_deref(), Some("batch"));
    let env_path = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SITECACHE_JOB_DEFAULTS")
        .and_then(|e| e["value"].as_str())
        .expect("SITECACHE_JOB_DEFAULTS");
    let mount = mounts.iter().find(|m| m["name"] == "job-defaults").unwrap();
    assert_eq!(
        env_path,
        format!("{}/job-defaults.yaml", mount["mountPath"].as_str().unwrap())
    );
    assert_eq!(
        spec["volumes"][0]["configMap"]["name"],
        format!("{fullname}-job-defaults")
    );
    let checksum = pod["metadata"]["annotations"]["checksum/job-defaults"].clone();
    assert!(
        checksum.as_str().is_some_and(|c| c.len() == 64),
        "{checksum}"
    );
    let mut other = convention_values(&ns);
    other["jobDefaults"]["nodeSelector"] = json!({"node-pool": "other"});
    let other = parse_objects(&render(
        &release,
        &ns,
        Some(&values_file(&format!("{ns}-conventions-2"), &other)),
    ));
    let other_checksum = &of_kind(&other, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]
        ["checksum/job-defaults"];
    assert_ne!(
        other_checksum, &checksum,
        "other defaults must roll the controller"
    );

    // The PodMonitor scrapes the controller pods and gives their series the ServiceMonitor's
    // job, the one the PrometheusRule's alerts select.
    let monitor = of_kind(&objects, "PodMonitor")[0];
    assert_eq!(labels_of(monitor)["release"], "prometheus");
    assert_eq!(
        &monitor["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["selector"]["matchLabels"]
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["interval"], "15s");
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "job");
    assert_eq!(
        endpoint["relabelings"][0]["replacement"],
        format!("{fullname}-metrics")
    );
    let rule = of_kind(&objects, "PrometheusRule")[0].to_string();
    assert!(
        rule.contains(&format!("job=\\\"{fullname}-metrics\\\"")),
        "{rule}"
    );

    // It all applies (stand-ins for prometheus-operator's CRDs).
    for kind in ["PodMonitor", "PrometheusRule"] {
        server_side_apply(&prometheus_operator_crd(kind), false);
    }
    let out = server_side_apply(&manifest, true);
    for applied in ["podmonitor.monitoring.coreos.com/", "configmap/", "secret/"] {
        assert!(out.contains(applied), "{applied}: {out}");
    }

    // Without global values: the chart's own; its own priority class wins over the global one.
    let mut own = convention_values(&ns);
    own["priorityClassName"] = json!("own-priority");
    own["image"] = json!({"repository": "ghcr.io/sitecache/sitecache", "digest": format!("sha256:{}", "cd".repeat(32))});
    let own = parse_objects(&render(
        &release,
        &ns,
        Some(&values_file(&format!("{ns}-conventions-own"), &own)),
    ));
    let spec = &of_kind(&own, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(spec["priorityClassName"], "own-priority");
    assert_eq!(
        spec["containers"][0]["image"],
        format!("ghcr.io/sitecache/sitecache@sha256:{}", "cd".repeat(32))
    );
}

#[tokio::test]
async fn chart_refuses_a_pod_monitor_beside_a_service_monitor_and_bad_conventions_by_name() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let both = values_file(
        "both-monitors",
        &json!({"metrics": {"serviceMonitor": {"enabled": true}, "podMonitor": {"enabled": true}}}),
    );
    let text = failure(helm(&[
        "template",
        "r",
        chart,
        "--values",
        both.to_str().unwrap(),
    ]));
    assert!(text.contains("choose one"), "{text}");
    for (name, values, named) in [
        (
            "own-label",
            json!({"commonLabels": {"app.kubernetes.io/name": "x"}}),
            "commonLabels",
        ),
        (
            "global-label",
            json!({"global": {"commonLabels": {"team": 1}}}),
            "commonLabels",
        ),
        (
            "bad-toleration",
            json!({"jobDefaults": {"tolerations": [{"key": "a", "operator": "Sometimes"}]}}),
            "operator",
        ),
        (
            "bad-quantity",
            json!({"jobDefaults": {"agentResources": {"limits": {"memory": "lots"}}}}),
            "memory",
        ),
        (
            "typo",
            json!({"jobDefaults": {"nodeSelectr": {"a": "b"}}}),
            "nodeSelectr",
        ),
        (
            "pull-secret",
            json!({"imagePullSecrets": [{"nam": "x"}]}),
            "nam",
        ),
    ] {
        let file = values_file(name, &values);
        let text = failure(helm(&["lint", chart, "--values", file.to_str().unwrap()]));
        assert!(text.contains(named), "{name}: {text}");
    }
}

#[tokio::test]
async fn artifact_hub_annotations_agree_with_the_chart_and_the_crd_example_is_accepted() {
    let (_, ns) = support::kube().await;
    let chart: Value = serde_saphyr::from_str(&read_text(&chart_dir().join("Chart.yaml"))).unwrap();
    let values: Value =
        serde_saphyr::from_str(&read_text(&chart_dir().join("values.yaml"))).unwrap();
    let annotations = &chart["annotations"];
    let list = |key: &str| -> Vec<Value> {
        let text = annotations[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} annotation"));
        serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    assert_eq!(annotations["artifacthub.io/license"], "Apache-2.0");
    assert_eq!(annotations["artifacthub.io/operator"], "true");
    assert!(
        [
            "Basic Install",
            "Seamless Upgrades",
            "Full Lifecycle",
            "Deep Insights",
            "Auto Pilot"
        ]
        .contains(
            &annotations["artifacthub.io/operatorCapabilities"]
                .as_str()
                .unwrap()
        )
    );
    assert!(
        [
            "ai-machine-learning",
            "database",
            "integration-delivery",
            "monitoring-logging",
            "networking",
            "security",
            "storage",
            "streaming-messaging"
        ]
        .contains(&annotations["artifacthub.io/category"].as_str().unwrap())
    );
    // The image of this appVersion, as the chart's defaults pull it.
    let images = list("artifacthub.io/images");
    assert_eq!(
        images[0]["image"],
        format!(
            "{}:{}",
            values["image"]["repository"].as_str().unwrap(),
            chart["appVersion"].as_str().unwrap()
        ),
        "artifacthub.io/images must name the image of appVersion (stamp both at release)"
    );
    for link in list("artifacthub.io/links") {
        assert!(
            link["url"].as_str().unwrap().starts_with("https://"),
            "{link}"
        );
    }
    // The CRD as it is.
    let crd = &parse_objects(&sitecache::api::crd_yaml())[0];
    let crds = list("artifacthub.io/crds");
    assert_eq!(crds.len(), 1);
    assert_eq!(crds[0]["kind"], crd["spec"]["names"]["kind"]);
    assert_eq!(crds[0]["name"], crd["metadata"]["name"]);
    let served: Vec<&Value> = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["storage"] == true)
        .map(|v| &v["name"])
        .collect();
    assert_eq!(served, [&crds[0]["version"]]);
    // Its example passes the API server's validation.
    for mut example in list("artifacthub.io/crdsExamples") {
        example["metadata"]["namespace"] = json!(ns);
        let out = server_side_apply(&serde_json::to_string(&example).unwrap(), true);
        assert!(out.contains("sitecache.sitecache.dev/"), "{out}");
    }
}

/// The README's values table (generated by helm-docs, `make chart-docs`; `make lint` checks it is
/// current) describes every value the schema knows, each row with a description.
#[test]
fn the_readme_values_table_describes_every_value_of_the_schema() {
    let readme = read_text(&chart_dir().join("README.md"));
    let rows: BTreeMap<String, String> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| Key | Type | Default | Description |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            (cells[0].to_string(), cells[cells.len() - 1].to_string())
        })
        .collect();
    assert!(rows.len() > 50, "no values table in the README: {rows:?}");
    for (key, description) in &rows {
        assert!(
            !description.is_empty(),
            "{key} has no `# --` description in values.yaml"
        );
    }
    let schema: Value =
        serde_json::from_str(&read_text(&chart_dir().join("values.schema.json"))).unwrap();
    let mut missing = Vec::new();
    for key in schema["properties"].as_object().unwrap().keys() {
        let prefix = format!("{key}.");
        if !rows.keys().any(|k| k == key || k.starts_with(&prefix)) {
            missing.push(key.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "values not in the README's table: {missing:?}"
    );
}
