//! `--job-defaults` (the chart's `jobDefaults`) on the control plane: the snapshot Job of a
//! SiteCache that sets nothing of its own gets the defaults (agent resources, image pull secrets,
//! node selector, tolerations); a SiteCache's own field wins over its default as a whole, and the
//! defaults still fill the fields it leaves unset; a defaults file that does not parse stops the
//! controller before it does anything, naming the file and the field.

use std::collections::BTreeMap;
use std::process::Command;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::json;

use super::harness::{Harness, Options, warm};

const DEFAULTS: &str = r#"
agentResources:
  requests: {cpu: 100m, memory: 64Mi}
  limits: {memory: 300Mi}
imagePullSecrets: [{name: chart-registry}]
nodeSelector: {pool: snapshots}
tolerations:
  - {key: snapshots, operator: Exists, effect: NoSchedule}
"#;

async fn pod_of_job(h: &Harness, job: &str) -> PodSpec {
    let job = h.jobs().get(job).await.unwrap();
    job.spec.unwrap().template.spec.unwrap()
}

fn snapshot_container(pod: &PodSpec) -> &Container {
    pod.containers
        .iter()
        .find(|c| c.name == "snapshot")
        .unwrap()
}

fn quantities(
    map: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> BTreeMap<String, String> {
    map.iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

#[tokio::test]
async fn snapshot_jobs_get_the_job_defaults_and_a_sitecaches_own_field_wins() {
    let mut h = Harness::start(Options {
        start_controller: false,
        ..Options::default()
    })
    .await;
    let file = h.dir.join("job-defaults.yaml");
    std::fs::write(&file, DEFAULTS).unwrap();
    h.restart_controller_with(&["--job-defaults", file.to_str().unwrap()]);

    h.create("plain", json!({"site": "plain", "warm": warm("", 3)}))
        .await;
    h.create(
        "own",
        json!({"site": "own", "warm": warm("", 3), "snapshot": {
            "agentResources": {"requests": {"cpu": "50m"}, "limits": {"memory": "400Mi"}},
            "pod": {"nodeSelector": {"zone": "a"}},
        }}),
    )
    .await;
    h.wait_promoted("plain", 1).await;
    h.wait_promoted("own", 1).await;

    // Nothing of its own: every default.
    let pod = pod_of_job(&h, "plain-g1").await;
    let names: Vec<&str> = pod
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["chart-registry"]);
    assert_eq!(
        pod.node_selector,
        Some(BTreeMap::from([("pool".into(), "snapshots".into())]))
    );
    let tolerations = pod.tolerations.clone().unwrap();
    assert_eq!(tolerations.len(), 1);
    assert_eq!(tolerations[0].key.as_deref(), Some("snapshots"));
    let resources = snapshot_container(&pod).resources.clone().unwrap();
    assert_eq!(
        quantities(&resources.requests),
        BTreeMap::from([
            ("cpu".into(), "100m".into()),
            ("memory".into(), "64Mi".into())
        ])
    );
    assert_eq!(
        quantities(&resources.limits),
        BTreeMap::from([("memory".into(), "300Mi".into())])
    );
    // The warm container is the site's: no agent defaults.
    let warm = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "warm")
        .unwrap();
    assert!(
        warm.resources.as_ref().is_none_or(|r| r.limits.is_none()),
        "{:?}",
        warm.resources
    );

    // Its own node selector and resources win as a whole (no `pool` key, no default memory
    // request or limit); its pull secrets and tolerations, unset, are the defaults.
    let pod = pod_of_job(&h, "own-g1").await;
    assert_eq!(
        pod.node_selector,
        Some(BTreeMap::from([("zone".into(), "a".into())]))
    );
    let resources = snapshot_container(&pod).resources.clone().unwrap();
    assert_eq!(quantities(&resources.requests)["cpu"], "50m");
    assert_ne!(
        quantities(&resources.requests)
            .get("memory")
            .map(String::as_str),
        Some("64Mi")
    );
    assert_eq!(
        quantities(&resources.limits),
        BTreeMap::from([("memory".into(), "400Mi".into())])
    );
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "chart-registry");
    assert_eq!(pod.tolerations.unwrap(), tolerations);
    h.shutdown().await;
}

#[tokio::test]
async fn a_defaults_file_that_does_not_parse_stops_the_controller_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job-defaults.yaml");
    std::fs::write(
        &file,
        "nodeSelector: {pool: snapshots}\ntolerations:\n  - {key: snapshots, operatr: Exists}\n",
    )
    .unwrap();
    // No cluster to reach: the controller must stop on the file before it tries.
    let out = Command::new(env!("CARGO_BIN_EXE_sitecache"))
        .arg("controller")
        .env("SITECACHE_JOB_DEFAULTS", &file)
        .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--job-defaults {}: tolerations[0]: unknown field \"operatr\"",
            file.display()
        )),
        "{stderr}"
    );
}
