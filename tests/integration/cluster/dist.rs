//! A release installed on the real node from its files alone (`make test-dist` builds them and
//! names them in `SITECACHE_DIST`), in each of the three ways docs/install.md gives, one after
//! the other on a node of its own (the CRD is cluster-scoped): the image imported from the
//! release's OCI archive, never from a build of the tree, and each time a controller that comes
//! up Ready and promotes a generation, and an uninstall that leaves the CRD, the SiteCaches and
//! the bucket's objects:
//!
//! 1. `helm install` of the chart package, with the storage settings as values (the image left
//!    to the chart's default: the release's); `helm uninstall`;
//! 2. `kubectl apply --server-side -f install.yaml`, the storage settings in the ConfigMap
//!    `sitecache-config` and the keys in the Secret `sitecache-storage`; `kubectl delete -f
//!    install.yaml`, which the CRD's guard refuses for the CRD;
//! 3. `kubectl apply --server-side -k` of an overlay on the kustomize base that generates that
//!    ConfigMap and Secret and runs one replica; `kubectl delete -k`.
//!
//! Each controller takes over the SiteCaches the previous one left, Ready with their generation.

use std::collections::BTreeMap;
use std::process::Output;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use sitecache_devtools::dist::{self as release, chart};

use super::*;
use crate::dist::Dist;

/// What the controller is given in each install: the storage settings (variables, as
/// install.yaml's ConfigMap holds them) and the keys.
struct Settings {
    config: BTreeMap<String, String>,
    keys: BTreeMap<String, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "installs a release: make test-dist"]
async fn every_install_path_from_the_release_files() {
    let dist = Dist::get();
    let v = dist.version.clone();
    let image = format!("{}:{v}", release::IMAGE_REPOSITORY);
    let node = Node::start(
        &support::run_dir().join("dist-node"),
        &NodeConfig {
            sitecache_bin: env!("CARGO_BIN_EXE_sitecache").into(),
            dockerfile: support::repo_path("Dockerfile"),
            other_agents: Vec::new(),
        },
    )
    .await
    .expect("the real node");
    node.import_image(&image, &dist.path(&release::image::archive_name(&v)))
        .expect("the release's image imported from its archive");
    let client = node.client().await.unwrap();
    let s3 = support::s3().await;
    let minio: SocketAddr = s3.endpoint().trim_start_matches("http://").parse().unwrap();
    let s3_endpoint = format!("http://{}", node.forward(minio).unwrap());
    let bucket = s3.create_bucket("dist").await.unwrap();
    let settings = Settings {
        config: [
            ("SITECACHE_DEFAULT_BUCKET", bucket.as_str()),
            ("SITECACHE_S3_ENDPOINT", s3_endpoint.as_str()),
            ("SITECACHE_S3_REGION", "us-east-1"),
            ("SITECACHE_PATH_STYLE", "true"),
            ("SITECACHE_FAILURE_BACKOFF", "5s"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        keys: s3
            .aws_env()
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_ACCESS_KEY_ID") || k.starts_with("AWS_SECRET"))
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let cluster = Cluster {
        node,
        release_ns: release::INSTALL_NAMESPACE.to_owned(),
        s3_endpoint,
        places: vec![("dist", String::new(), bucket.clone())],
        private_endpoint: None,
        values: Value::Null,
    };
    let kubectl = |args: &[&str]| -> Output {
        std::process::Command::new(Asset::Kubectl.path().unwrap())
            .arg("--kubeconfig")
            .arg(cluster.node.kubeconfig())
            .args(args)
            .output()
            .unwrap()
    };
    let mut sites: Vec<(Scenario, &str)> = Vec::new();

    // 1. The chart package, with values.
    create_namespace(&namespaces, release::INSTALL_NAMESPACE).await;
    create_secret(
        &client,
        release::INSTALL_NAMESPACE,
        "controller-storage",
        settings.keys.clone(),
    )
    .await
    .unwrap();
    let secret_env = |name: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "controller-storage", "key": name}}});
    let values = json!({
        "storage": {"defaultBucket": bucket, "endpoint": cluster.s3_endpoint, "region": "us-east-1", "pathStyle": true},
        "controller": {
            "failureBackoff": "5s",
            "extraEnv": [
                secret_env("AWS_ACCESS_KEY_ID"),
                secret_env("AWS_SECRET_ACCESS_KEY"),
                {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
            ],
        },
    });
    let values_file = cluster.node.dir().join("dist-values.json");
    std::fs::write(&values_file, serde_json::to_vec(&values).unwrap()).unwrap();
    let package = dist.path(&chart::package_name(&v));
    cluster
        .run_helm(vec![
            "install".into(),
            RELEASE.into(),
            package.display().to_string(),
            "--values".into(),
            values_file.display().to_string(),
        ])
        .await
        .unwrap_or_else(|e| panic!("helm install of {}: {e:#}", package.display()));
    let a = site(&cluster, "helm").await;
    running_the_release_image(&a, &image).await;
    a.create_quick_site("helm").await;
    a.wait_promoted("helm", 1, 4 * MINUTE).await;
    sites.push((a, "helm"));
    let out = helm_uninstall(&cluster);
    assert!(out.status.success(), "helm uninstall: {out:?}");
    left_standing(&cluster, &sites).await;

    // 2. install.yaml, configured by its ConfigMap and Secret.
    create_config(&client, &settings).await;
    let install = dist.path("install.yaml");
    let install = install.to_str().unwrap();
    let out = kubectl(&["apply", "--server-side", "-f", install]);
    assert!(
        out.status.success(),
        "kubectl apply -f install.yaml: {out:?}"
    );
    rolled_out(&cluster, &kubectl).await;
    let b = site(&cluster, "manifest").await;
    running_the_release_image(&b, &image).await;
    b.create_quick_site("manifest").await;
    b.wait_promoted("manifest", 1, 4 * MINUTE).await;
    sites.push((b, "manifest"));
    let out = kubectl(&["delete", "-f", install, "--wait", "--timeout=3m"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("the SiteCache CRD is kept"),
        "kubectl delete -f install.yaml was not refused for the CRD: {out:?}"
    );
    left_standing(&cluster, &sites).await;
    // kubectl stops waiting at the refusal; the namespace install.yaml made is still going.
    namespace_gone(&namespaces, release::INSTALL_NAMESPACE).await;

    // 3. An overlay of the kustomize base.
    let dir = cluster.node.dir().join("kustomize");
    dist.unpack(&chart::kustomize_name(&v), &dir);
    let overlay = dir.join("overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    let literals = |m: &BTreeMap<String, String>| -> Vec<String> {
        m.iter().map(|(k, v)| format!("{k}={v}")).collect()
    };
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../sitecache"],
        "configMapGenerator": [{
            "name": chart::INSTALL_CONFIG, "namespace": release::INSTALL_NAMESPACE,
            "literals": literals(&settings.config), "options": {"disableNameSuffixHash": true},
        }],
        "secretGenerator": [{
            "name": chart::INSTALL_SECRET, "namespace": release::INSTALL_NAMESPACE,
            "literals": literals(&settings.keys), "options": {"disableNameSuffixHash": true},
        }],
        "patches": [{
            "target": {"kind": "Deployment", "name": RELEASE},
            "patch": "- op: replace\n  path: /spec/replicas\n  value: 1\n",
        }],
    });
    std::fs::write(
        overlay.join("kustomization.yaml"),
        serde_json::to_vec_pretty(&kustomization).unwrap(),
    )
    .unwrap();
    let overlay = overlay.to_str().unwrap();
    let out = kubectl(&["apply", "--server-side", "-k", overlay]);
    assert!(out.status.success(), "kubectl apply -k: {out:?}");
    rolled_out(&cluster, &kubectl).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), release::INSTALL_NAMESPACE);
    let deployment = deployments.get(RELEASE).await.unwrap();
    assert_eq!(deployment.spec.replicas, Some(1), "the overlay's patch");
    let c = site(&cluster, "kustomize").await;
    running_the_release_image(&c, &image).await;
    c.create_quick_site("kustomize").await;
    c.wait_promoted("kustomize", 1, 4 * MINUTE).await;
    sites.push((c, "kustomize"));
    let out = kubectl(&["delete", "-k", overlay, "--wait", "--timeout=3m"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("the SiteCache CRD is kept"),
        "kubectl delete -k was not refused for the CRD: {out:?}"
    );
    left_standing(&cluster, &sites).await;
}

const MINUTE: Duration = Duration::from_secs(60);

/// A namespace with the given name (install.yaml's is fixed), unless it exists.
async fn create_namespace(namespaces: &Api<Namespace>, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

/// Waits until the namespace `name` is gone (deleted with what it held).
async fn namespace_gone(namespaces: &Api<Namespace>, name: &str) {
    let begun = Instant::now();
    while namespaces.get_opt(name).await.unwrap().is_some() {
        assert!(
            begun.elapsed() < 3 * MINUTE,
            "namespace {name} not deleted after 3 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The ConfigMap and Secret install.yaml's controller reads (its namespace created first, as
/// docs/install.md says).
async fn create_config(client: &Client, settings: &Settings) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create_namespace(&namespaces, release::INSTALL_NAMESPACE).await;
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), release::INSTALL_NAMESPACE);
    let map = serde_json::from_value(json!({
        "metadata": {"name": chart::INSTALL_CONFIG},
        "data": settings.config,
    }))
    .unwrap();
    maps.create(&PostParams::default(), &map).await.unwrap();
    create_secret(
        client,
        release::INSTALL_NAMESPACE,
        chart::INSTALL_SECRET,
        settings.keys.clone(),
    )
    .await
    .unwrap();
}

/// A scenario in a new namespace for the site `name`, in the bucket every site of this test
/// uses (the controller's default).
async fn site<'c>(cluster: &'c Cluster, name: &str) -> Scenario<'c> {
    let ns = cluster.node.create_namespace(name).await.unwrap();
    Scenario::in_namespace(cluster, &ns, &cluster.places[0].2).await
}

/// Waits until the controller Deployment is rolled out (Available).
async fn rolled_out(cluster: &Cluster, kubectl: &impl Fn(&[&str]) -> Output) {
    let out = kubectl(&[
        "-n",
        release::INSTALL_NAMESPACE,
        "rollout",
        "status",
        &format!("deployment/{RELEASE}"),
        "--timeout=3m",
    ]);
    if !out.status.success() {
        panic!(
            "the controller did not roll out: {out:?}\n{}{}",
            pod_logs(&cluster.node, release::INSTALL_NAMESPACE),
            cluster.node.log_tails()
        );
    }
}

/// Checks that the controller's pods run the release's image (imported from its archive), not
/// the node's build of the tree.
async fn running_the_release_image(s: &Scenario<'_>, image: &str) {
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), release::INSTALL_NAMESPACE);
    let list = pods.list(&ListParams::default()).await.unwrap();
    ensure!(s, !list.items.is_empty(), "no controller pod");
    for pod in &list.items {
        let spec = pod.spec.clone().unwrap();
        ensure_eq!(s, spec.containers[0].image.as_deref(), Some(image));
    }
}

fn helm_uninstall(cluster: &Cluster) -> Output {
    std::process::Command::new(Asset::Helm.path().unwrap())
        .args([
            "uninstall",
            RELEASE,
            "--namespace",
            release::INSTALL_NAMESPACE,
        ])
        .arg("--kubeconfig")
        .arg(cluster.node.kubeconfig())
        .args(["--wait", "--timeout", "3m"])
        .output()
        .unwrap()
}

/// After an uninstall: the controller gone, and the CRD, every SiteCache (Ready, its generation
/// current) and every site's objects in the bucket still there.
async fn left_standing(cluster: &Cluster, sites: &[(Scenario<'_>, &str)]) {
    let client = cluster.node.client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds.get_opt("sitecaches.sitecache.dev").await.unwrap();
    assert!(
        crd.is_some_and(|c| c.metadata.deletion_timestamp.is_none()),
        "the CRD did not stay"
    );
    let s3 = support::s3().await;
    for (s, name) in sites {
        let sc = s
            .sitecache(name)
            .await
            .unwrap_or_else(|| panic!("SiteCache {name} did not stay"));
        ensure_eq!(s, current(&sc), Some(1));
        ensure!(s, sc.metadata.deletion_timestamp.is_none());
        let keys = s3.list_keys(&s.bucket, &format!("{name}/")).await.unwrap();
        ensure!(
            s,
            keys.iter().any(|k| k.ends_with("current.json")),
            "the bucket lost {name}'s objects: {keys:?}"
        );
    }
}
