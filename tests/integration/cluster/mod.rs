//! Scenarios on the real node (`sitecache_devtools::node`): the chart installed with Helm, its
//! controller running as pods, and snapshot Jobs run by the real Job controller and kubelet
//! (containerd, runc), where the local job runner of the fast tier only simulates them.
//!
//! One node shared by the scenarios of a test run (the upgrade has its own, below), with one
//! release of `charts/sitecache` on it ([`cluster`]): the local
//! agent image (`pullPolicy: Never`), two replicas electing a leader, the shared MinIO at the
//! address the node forwards it to (`storage.endpoint`, path-style), the controller's own keys
//! from a Secret (`controller.extraEnv`), finished Jobs kept [`JOB_TTL`]. Each scenario has a
//! namespace (watched by the release, with the chart's Roles and snapshot ServiceAccount) and a
//! bucket of its own, and MinIO users whose policies are the ones docs/iam.md gives; the
//! scenarios run concurrently. A part that does not work fails the scenario with the node's
//! logs, the controller's and every pod's log of the scenario's namespace (read from kubelet's
//! log directory, which holds the logs of pods already deleted too; `kubectl logs` works as well,
//! through the node's proxy: `tests/integration/node.rs`).
//!
//! - [`chart`]: Helm's install, real ServiceAccount tokens
//!   and RBAC, kubelet's probes, one Lease holder;
//! - [`deno_site`]: scenarios 2 to 4 of issue 13 in one namespace that
//!   enforces Pod Security `restricted`, so every pod in it (snapshot pods and runner pods) is
//!   admitted only with compliant settings: generation 1 of the storefront warmed by Deno caching
//!   real `npm:` packages, a runner pod that restores it and serves the site with
//!   `--cached-only`, then generation 2 warmed as uid 1000 on top of what `restore-previous`
//!   restored (as uid 1000 too);
//! - [`hanging`]: `activeDeadlineSeconds`, the TTL controller and the garbage
//!   collector;
//! - [`credentials`]: the agents reach MinIO only with the keys of
//!   `spec.snapshot.credentialsSecret`, which the warm container never gets;
//! - [`undeclared_user`]: a site image whose own user is non-root, left undeclared: the next
//!   generation restores as the user that owned the cache, so that the warm step can write;
//! - [`outage`]: a result outlives its Job's TTL while the controller cannot record it (the
//!   result finalizer against the real TTL controller and garbage collector);
//! - [`private_ca`]: a store behind a private CA (MinIO serving TLS with a certificate of a CA
//!   made in the test), which the controller trusts through the chart's `caBundle.controller`:
//!   the snapshot Job's agents refuse it, saying so in the status, until
//!   `spec.snapshot.caBundle` mounts the CA into them;
//! - [`stalled`]: Jobs that make no progress (a pod Pod Security refuses, a container whose
//!   Secret is missing) are reported with what the Job controller and kubelet say, long before
//!   their deadline;
//! - [`onboarding`]: namespaces in which the chart made no snapshot ServiceAccount: the
//!   controller makes it where it is missing (and again when it is deleted), and leaves a user's
//!   own alone;
//! - [`upgrade`], on a node and release of its own: `helm upgrade` from the earlier release
//!   (`UPGRADE_FROM_COMMIT`) to the working tree with snapshot Jobs in flight, each handled once.
//!
//! Run just this tier with `cargo test --test integration -- node:: cluster::`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sitecache::api::{SiteCache, SnapshotResult};
use sitecache_devtools::assets::Asset;
use sitecache_devtools::connect_proxy::{ConnectProxy, PACKAGE_REGISTRIES};
use sitecache_devtools::node::{AgentImage, NODE_NAME, Node, NodeConfig};
use sitecache_devtools::process::tail;
use tokio::sync::OnceCell;

use crate::controller::harness::{cond, condition, current};
use crate::support;

/// The Helm release (and so the controller's full name, ServiceAccount and Lease prefix).
const RELEASE: &str = "sitecache";
/// `controller.jobTTL`: how long finished Jobs stay.
const JOB_TTL: Duration = Duration::from_secs(30);
/// The namespaces (and buckets) of the scenarios, created before the install so that the
/// release watches them.
const SCENARIOS: [&str; 9] = [
    "deno", "hang", "creds", "stall", "owner", "outage", PRIVATE_CA, "onboard", "byo",
];
/// The scenario whose bucket is in the MinIO behind a private CA ([`private_ca`]).
const PRIVATE_CA: &str = "ca";
/// The ConfigMap with that CA's certificate (key `ca.crt`), in the release's namespace (the
/// chart's `caBundle.controller`) and in the [`PRIVATE_CA`] scenario's.
const CA_CONFIG_MAP: &str = "storage-ca";
/// The scenarios whose namespace the chart makes no snapshot ServiceAccount in: onboarded after
/// the install, as far as the account is concerned ([`onboarding`]).
const WITHOUT_CHART_ACCOUNT: [&str; 2] = ["onboard", "byo"];
/// `controller.snapshotStallAfter`: how long a Job may make no progress before it is reported.
const STALL_AFTER: Duration = Duration::from_secs(1);
/// Where the scenarios' pods mount the Deno cache.
const DENO_DIR: &str = "/deno-dir";

/// A node with the chart installed: the one the scenarios of a run share ([`cluster`]), or one
/// of a scenario's own ([`upgrade`]).
struct Cluster {
    node: Node,
    /// The release's namespace.
    release_ns: String,
    /// MinIO as pods reach it (`http://<node address>:<port>`).
    s3_endpoint: String,
    /// With [`ClusterConfig::private_ca`]: the MinIO behind a private CA as pods reach it
    /// (`https://<node address>:<port>`, an address its certificate names).
    private_endpoint: Option<String>,
    /// Each scenario's (name, namespace, bucket).
    places: Vec<(&'static str, String, String)>,
    /// The release's values but the image, which [`Cluster::helm`] adds.
    values: Value,
}

/// What [`start`] makes: a node and a release of the chart on it.
struct ClusterConfig {
    /// The node's directory, under the run's.
    dir: &'static str,
    /// The agent images beside the working tree's.
    other_agents: Vec<AgentImage>,
    /// The scenarios, each with a namespace (watched by the release) and a bucket.
    scenarios: &'static [&'static str],
    /// The scenario whose bucket is the release's default bucket; the others' are allowed.
    default_bucket: &'static str,
    /// The chart to install.
    chart: PathBuf,
    /// The image of the controller and its agents; `None`: the working tree's.
    image: Option<String>,
    /// Serve the [`PRIVATE_CA`] scenario's bucket from MinIO behind a private CA
    /// (`support::private_store`), an allowed endpoint, whose CA the controller trusts through
    /// the chart's `caBundle.controller`.
    private_ca: bool,
}

/// The shared node and release, started by the first scenario that asks. A start that failed
/// fails every scenario with its error (it is not retried).
async fn cluster() -> &'static Cluster {
    static CLUSTER: OnceCell<Result<Cluster, String>> = OnceCell::const_new();
    let started = CLUSTER
        .get_or_init(|| async {
            let config = ClusterConfig {
                dir: "cluster-node",
                other_agents: Vec::new(),
                scenarios: &SCENARIOS,
                // The credentials scenario uses the default bucket; the others name theirs.
                default_bucket: "creds",
                chart: support::repo_path("charts/sitecache"),
                image: None,
                private_ca: true,
            };
            start(&config).await.map_err(|e| format!("{e:#}"))
        })
        .await;
    match started {
        Ok(c) => c,
        Err(e) => panic!("the real node with the chart installed is not available: {e}"),
    }
}

async fn start(config: &ClusterConfig) -> Result<Cluster> {
    let begun = Instant::now();
    let node = Node::start(
        &support::run_dir().join(config.dir),
        &NodeConfig {
            sitecache_bin: env!("CARGO_BIN_EXE_sitecache").into(),
            dockerfile: support::repo_path("Dockerfile"),
            other_agents: config.other_agents.clone(),
        },
    )
    .await
    .context("the real node did not start")?;
    let node_ready = begun.elapsed();
    let client = node.client().await?;
    let s3 = support::s3().await;
    let minio: SocketAddr = s3.endpoint().trim_start_matches("http://").parse()?;
    let s3_endpoint = format!("http://{}", node.forward(minio)?);

    let private = match config.private_ca {
        true => Some(support::private_store().await),
        false => None,
    };
    let private_endpoint = match private {
        Some(p) => Some(format!(
            "https://{}",
            node.forward(SocketAddr::from(([127, 0, 0, 1], p.s3.port())))?
        )),
        None => None,
    };

    let release_ns = node.create_namespace("sitecache").await?;
    let mut places = Vec::new();
    for &name in config.scenarios {
        let ns = node.create_namespace(name).await?;
        let bucket = match private {
            Some(p) if name == PRIVATE_CA => {
                create_config_map(&client, &ns, CA_CONFIG_MAP, "ca.crt", &p.ca_pem).await?;
                p.s3.create_bucket(name).await?
            }
            _ => s3.create_bucket(name).await?,
        };
        places.push((name, ns, bucket));
    }
    if let Some(p) = private {
        create_config_map(&client, &release_ns, CA_CONFIG_MAP, "ca.crt", &p.ca_pem).await?;
    }
    // The controller's keys (MinIO's root user: every scenario's bucket), from a Secret.
    let keys: std::collections::BTreeMap<String, String> = s3
        .aws_env()
        .into_iter()
        .filter(|(k, _)| k.starts_with("AWS_ACCESS_KEY_ID") || k.starts_with("AWS_SECRET"))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    create_secret(&client, &release_ns, "controller-storage", keys).await?;

    let secret_env = |name: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "controller-storage", "key": name}}});
    let bucket_of = |name: &str| {
        places
            .iter()
            .find(|p| p.0 == name)
            .map(|p| p.2.clone())
            .unwrap_or_default()
    };
    let mut values = json!({
        "storage": {
            "defaultBucket": bucket_of(config.default_bucket),
            "allowedBuckets": places
                .iter()
                .filter(|p| p.0 != config.default_bucket)
                .map(|p| p.2.clone())
                .collect::<Vec<_>>(),
            "region": "us-east-1",
            "endpoint": s3_endpoint,
            "pathStyle": true,
        },
        "controller": {
            "watchNamespaces": places.iter().map(|p| p.1.clone()).collect::<Vec<_>>(),
            "jobTTL": format!("{}s", JOB_TTL.as_secs()),
            "snapshotStallAfter": format!("{}s", STALL_AFTER.as_secs()),
            "failureBackoff": "5s",
            "logFormat": "json",
            "extraEnv": [
                secret_env("AWS_ACCESS_KEY_ID"),
                secret_env("AWS_SECRET_ACCESS_KEY"),
                {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
            ],
        },
    });
    if let Some(endpoint) = &private_endpoint {
        // The same root keys as the shared MinIO's: the controller's Secret serves both.
        values["storage"]["allowedEndpoints"] = json!([endpoint]);
        values["caBundle"] = json!({"controller": {"configMap": CA_CONFIG_MAP}});
    }
    if places.iter().any(|p| WITHOUT_CHART_ACCOUNT.contains(&p.0)) {
        values["snapshotServiceAccount"] = json!({"namespaces": places
            .iter()
            .filter(|p| !WITHOUT_CHART_ACCOUNT.contains(&p.0))
            .map(|p| p.1.clone())
            .collect::<Vec<_>>()});
    }
    let cluster = Cluster {
        node,
        release_ns,
        s3_endpoint,
        private_endpoint,
        places,
        values,
    };
    let image = match &config.image {
        Some(image) => image.clone(),
        None => cluster.node.images().agent.clone(),
    };
    let installing = Instant::now();
    cluster.helm("install", &config.chart, &image).await?;
    eprintln!(
        "cluster: the node was ready in {:.1}s, helm install --wait took {:.1}s",
        node_ready.as_secs_f64(),
        installing.elapsed().as_secs_f64()
    );
    Ok(cluster)
}

impl Cluster {
    /// `helm <verb>` (install, upgrade) of release [`RELEASE`] from `chart` with the cluster's
    /// values and `image` (`pullPolicy: Never`: the node's own), waiting until its workloads are
    /// ready; an error with the release's pod logs and the node's when it fails.
    async fn helm(&self, verb: &str, chart: &Path, image: &str) -> Result<()> {
        let (repository, tag) = image
            .rsplit_once(':')
            .with_context(|| format!("the image {image} has no tag"))?;
        let mut values = self.values.clone();
        values["image"] = json!({"repository": repository, "tag": tag, "pullPolicy": "Never"});
        let values_file = self.node.dir().join(format!("values-{verb}.json"));
        std::fs::write(&values_file, serde_json::to_vec_pretty(&values)?)?;
        self.run_helm(vec![
            verb.into(),
            RELEASE.into(),
            chart.display().to_string(),
            "--values".into(),
            values_file.display().to_string(),
        ])
        .await
    }

    /// `helm rollback` of release [`RELEASE`] to `revision`, waiting as [`Cluster::helm`] does.
    async fn helm_rollback(&self, revision: u32) -> Result<()> {
        self.run_helm(vec![
            "rollback".into(),
            RELEASE.into(),
            revision.to_string(),
        ])
        .await
    }

    /// Helm with `args`, on the release's namespace, waiting (3 minutes at most) until what it
    /// changed is ready.
    async fn run_helm(&self, mut args: Vec<String>) -> Result<()> {
        let helm = Asset::Helm.path().context("helm (make test-assets)")?;
        let what = args.first().cloned().unwrap_or_default();
        args.extend([
            "--namespace".into(),
            self.release_ns.clone(),
            "--kubeconfig".into(),
            self.node.kubeconfig().display().to_string(),
            "--wait".into(),
            "--timeout".into(),
            "3m".into(),
        ]);
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(helm).args(&args).output()
        })
        .await??;
        if !out.status.success() {
            let mut report = format!(
                "helm {what} failed ({}): {}{}\n",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            report.push_str(&pod_logs(&self.node, &self.release_ns));
            report.push_str(&self.node.log_tails());
            bail!("{report}");
        }
        Ok(())
    }
}

async fn create_secret(
    client: &Client,
    ns: &str,
    name: &str,
    data: std::collections::BTreeMap<String, String>,
) -> Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": data,
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("create Secret {ns}/{name}"))?;
    Ok(())
}

async fn create_config_map(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    let map: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {key: value},
    }))?;
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &map)
        .await
        .with_context(|| format!("create ConfigMap {ns}/{name}"))?;
    Ok(())
}

/// The end of every container log kubelet wrote for the pods of namespace `ns`.
fn pod_logs(node: &Node, ns: &str) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(node.pod_logs_dir()) else {
        return out;
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{ns}_")))
        })
        .collect();
    dirs.sort();
    for dir in dirs {
        let mut logs = Vec::new();
        for container in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            for log in std::fs::read_dir(container.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                logs.push(log.path());
            }
        }
        logs.sort();
        for log in logs {
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                log.strip_prefix(node.pod_logs_dir())
                    .unwrap_or(&log)
                    .display(),
                tail(&log, 3000)
            ));
        }
    }
    out
}

/// What a check of [`Scenario::until`] found.
enum Poll<T> {
    /// What was waited for: stop waiting.
    Done(T),
    /// Not yet; the state seen, for the message if the wait times out.
    Wait(String),
    /// It cannot happen any more (a Job failed, a pod was refused): fail now.
    Fail(String),
}

/// A scenario: its namespace and bucket on a cluster (the shared one, or its own), an admin
/// client of its own.
struct Scenario<'c> {
    c: &'c Cluster,
    client: Client,
    ns: String,
    bucket: String,
    started: Instant,
}

impl<'c> Scenario<'c> {
    /// The scenario `name` of [`SCENARIOS`], in its namespace, with its bucket.
    async fn new(name: &str) -> Scenario<'static> {
        let c = cluster().await;
        let (_, ns, bucket) = c
            .places
            .iter()
            .find(|p| p.0 == name)
            .unwrap_or_else(|| panic!("no namespace for scenario {name}"));
        Scenario::in_namespace(c, ns, bucket).await
    }

    /// A scenario about the release itself, in its namespace (no bucket).
    async fn release() -> Scenario<'static> {
        let c = cluster().await;
        Scenario::in_namespace(c, &c.release_ns, "").await
    }

    async fn in_namespace(c: &'c Cluster, ns: &str, bucket: &str) -> Scenario<'c> {
        Scenario {
            c,
            client: c.node.client().await.expect("an admin client"),
            ns: ns.to_owned(),
            bucket: bucket.to_owned(),
            started: Instant::now(),
        }
    }

    fn node(&self) -> &Node {
        &self.c.node
    }

    fn sitecaches(&self) -> Api<SiteCache> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Polls `check` every half second until it is done, and fails the scenario when it says
    /// so or when `timeout` has passed. The one wait of every scenario.
    async fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl AsyncFnMut() -> Poll<T>,
    ) -> T {
        let begun = Instant::now();
        let mut next_health_check = begun;
        loop {
            // A controller that restarted (a crash, a failed liveness probe) fails every wait.
            if Instant::now() >= next_health_check {
                next_health_check = Instant::now() + Duration::from_secs(5);
                if let Some(why) = self.controller_restarts().await {
                    self.fail(&format!("{what}: the controller restarted: {why}"))
                        .await
                }
            }
            match check().await {
                Poll::Done(t) => return t,
                Poll::Fail(why) => {
                    self.fail(&format!(
                        "{what}: failed after {:.1}s: {why}",
                        begun.elapsed().as_secs_f64()
                    ))
                    .await
                }
                Poll::Wait(seen) if begun.elapsed() > timeout => {
                    self.fail(&format!(
                        "{what}: not within {}s; last seen: {seen}",
                        timeout.as_secs()
                    ))
                    .await
                }
                Poll::Wait(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// The controller pods' restarts, if any.
    async fn controller_restarts(&self) -> Option<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.c.release_ns);
        let list = pods.list(&ListParams::default()).await.ok()?;
        let restarted: Vec<String> = list
            .items
            .iter()
            .flat_map(|p| {
                let statuses = p.status.as_ref()?.container_statuses.clone()?;
                Some(
                    statuses
                        .into_iter()
                        .filter(|c| c.restart_count > 0)
                        .map(|c| {
                            format!(
                                "{} restarted {} times, last: {:?}",
                                p.name_any(),
                                c.restart_count,
                                c.last_state.and_then(|s| s.terminated)
                            )
                        }),
                )
            })
            .flatten()
            .collect();
        (!restarted.is_empty()).then(|| restarted.join("; "))
    }

    /// Panics with `message` and what explains it: the scenario's SiteCaches, Jobs, pods and
    /// Events, every container log of its namespace, the controller's logs and the node's.
    async fn fail(&self, message: &str) -> ! {
        let mut report = format!(
            "{message}\n(scenario in namespace {}, {:.1}s in)\n",
            self.ns,
            self.started.elapsed().as_secs_f64()
        );
        let lp = ListParams::default();
        if let Ok(list) = self.sitecaches().list(&lp).await {
            for sc in list.items {
                report.push_str(&format!(
                    "--- SiteCache {} ---\n{}\n",
                    sc.name_any(),
                    serde_json::to_string_pretty(&sc.status).unwrap_or_default()
                ));
            }
        }
        if let Ok(list) = self.jobs().list(&lp).await {
            for job in list.items {
                report.push_str(&format!(
                    "--- Job {} ---\n{}\n",
                    job.name_any(),
                    serde_json::to_string(&job.status).unwrap_or_default()
                ));
            }
        }
        if let Ok(list) = self.pods().list(&lp).await {
            for pod in list.items {
                report.push_str(&format!(
                    "--- Pod {} ---\n{}\n",
                    pod.name_any(),
                    serde_json::to_string(&pod.status).unwrap_or_default()
                ));
            }
        }
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        if let Ok(list) = events.list(&lp).await {
            report.push_str("--- Events ---\n");
            for e in list.items {
                report.push_str(&format!(
                    "{} {}: {} {}\n",
                    e.regarding
                        .as_ref()
                        .and_then(|r| r.name.clone())
                        .unwrap_or_default(),
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default()
                ));
            }
        }
        if self.ns != self.c.release_ns {
            report.push_str(&pod_logs(self.node(), &self.ns));
        }
        report.push_str("=== the controller ===\n");
        report.push_str(&pod_logs(self.node(), &self.c.release_ns));
        report.push_str("=== the node ===\n");
        report.push_str(&self.node().log_tails());
        panic!("{report}");
    }

    async fn create(&self, name: &str, spec: Value) {
        let sc: SiteCache = serde_json::from_value(json!({
            "apiVersion": "sitecache.dev/v1alpha1",
            "kind": "SiteCache",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("a SiteCache");
        if let Err(e) = self.sitecaches().create(&PostParams::default(), &sc).await {
            self.fail(&format!("create SiteCache {name}: {e}")).await;
        }
    }

    /// Merges `spec` into SiteCache `name`'s and requests a snapshot with `token`.
    async fn request_snapshot(&self, name: &str, token: &str, spec: Value) {
        let patch = json!({
            "metadata": {"annotations": {"sitecache.dev/snapshot-request": token}},
            "spec": spec,
        });
        if let Err(e) = self
            .sitecaches()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            self.fail(&format!("patch SiteCache {name}: {e}")).await;
        }
    }

    async fn sitecache(&self, name: &str) -> Option<SiteCache> {
        self.sitecaches().get_opt(name).await.ok().flatten()
    }

    /// Waits until generation `generation` of `name` is promoted and Ready; fails at once when
    /// its snapshot failed or was rejected.
    async fn wait_promoted(&self, name: &str, generation: u64, timeout: Duration) -> SiteCache {
        self.until(
            &format!("SiteCache {name} promoting generation {generation}"),
            timeout,
            async || {
                let Some(sc) = self.sitecache(name).await else {
                    return Poll::Wait("no SiteCache".into());
                };
                if current(&sc) == Some(generation) && condition(&sc, "Ready") == Some("True") {
                    return Poll::Done(sc);
                }
                let status = sc.status.clone().unwrap_or_default();
                if let Some(last) = &status.last_snapshot
                    && last.generation == generation
                    && matches!(
                        last.result,
                        Some(SnapshotResult::Failed | SnapshotResult::Rejected)
                    )
                {
                    return Poll::Fail(format!("its snapshot did not succeed: {last:?}"));
                }
                Poll::Wait(format!(
                    "phase {:?}, current {:?}, last snapshot {:?}, conditions {:?}",
                    status.phase,
                    current(&sc),
                    status.last_snapshot,
                    status
                        .conditions
                        .iter()
                        .map(|c| format!("{}={} {}", c.type_, c.status, c.reason))
                        .collect::<Vec<_>>()
                ))
            },
        )
        .await
    }

    /// The pod the Job controller made for generation `generation` of `name`.
    async fn job_pod(&self, name: &str, generation: u64) -> Pod {
        let selector =
            format!("app.kubernetes.io/instance={name},sitecache.dev/generation={generation}");
        self.until(
            &format!("the pod of {name}'s generation {generation}"),
            Duration::from_secs(30),
            async || match self
                .pods()
                .list(&ListParams::default().labels(&selector))
                .await
            {
                Ok(list) if !list.items.is_empty() => {
                    Poll::Done(list.items.into_iter().next().unwrap())
                }
                Ok(_) => Poll::Wait("no pod".into()),
                Err(e) => Poll::Wait(e.to_string()),
            },
        )
        .await
    }

    /// The log kubelet wrote for `container` of `pod` (its first run).
    async fn log(&self, pod: &Pod, container: &str) -> String {
        let meta = &pod.metadata;
        let path = self
            .node()
            .pod_logs_dir()
            .join(format!(
                "{}_{}_{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default(),
                meta.uid.as_deref().unwrap_or_default()
            ))
            .join(container)
            .join("0.log");
        match std::fs::read_to_string(&path) {
            Ok(log) => log,
            Err(e) => {
                self.fail(&format!("no log at {}: {e}", path.display()))
                    .await
            }
        }
    }

    /// Creates SiteCache `name` of the site image, left to its own user (uid 1000), warmed by
    /// [`quick_warm`] into the scenario's bucket with the keys of a Secret whose rights are the
    /// site's snapshot policy.
    async fn create_quick_site(&self, name: &str) {
        self.storage_secret("storage", snapshot_policy(&self.bucket, name))
            .await;
        self.create(
            name,
            json!({
                "site": name,
                "storage": {"bucket": self.bucket},
                "warm": quick_warm(&self.node().images().site, 5),
                "snapshot": {"minFiles": 3, "backoffLimit": 0, "credentialsSecret": {"name": "storage"}},
            }),
        )
        .await;
    }

    /// Creates a MinIO user whose only rights are `policy` and a Secret `name` with its keys,
    /// the variables of `spec.snapshot.credentialsSecret`.
    async fn storage_secret(&self, name: &str, policy: Value) {
        let s3 = support::s3().await;
        let user = format!("{name}-{}", self.ns);
        let secret = format!("{user}-key");
        s3.put_policy(&user, &policy)
            .and_then(|()| s3.add_user(&user, &secret, &user))
            .unwrap_or_else(|e| panic!("MinIO user {user}: {e:#}"));
        let data = [
            ("AWS_ACCESS_KEY_ID".to_owned(), user),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), secret),
        ]
        .into();
        if let Err(e) = create_secret(&self.client, &self.ns, name, data).await {
            self.fail(&format!("{e:#}")).await;
        }
    }

    /// The variables that point an agent container at MinIO with the keys of Secret `secret`.
    fn agent_env(&self, secret: &str) -> Value {
        let key = |name: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}});
        json!([
            {"name": "AWS_REGION", "value": "us-east-1"},
            {"name": "AWS_ENDPOINT_URL_S3", "value": self.c.s3_endpoint},
            {"name": "SITECACHE_PATH_STYLE", "value": "true"},
            {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
            key("AWS_ACCESS_KEY_ID"),
            key("AWS_SECRET_ACCESS_KEY"),
        ])
    }

    /// Runs the pod `pod` to its end; returns it once it Succeeded, fails the scenario if it
    /// failed.
    async fn run_pod(&self, pod: Value, timeout: Duration) -> Pod {
        let pod: Pod = serde_json::from_value(pod).expect("a Pod");
        let name = pod.name_any();
        if let Err(e) = self.pods().create(&PostParams::default(), &pod).await {
            self.fail(&format!("create pod {name}: {e}")).await;
        }
        self.until(&format!("pod {name} succeeding"), timeout, async || {
            let Ok(pod) = self.pods().get(&name).await else {
                return Poll::Wait("not found".into());
            };
            let status = pod.status.clone().unwrap_or_default();
            match status.phase.as_deref() {
                Some("Succeeded") => Poll::Done(pod),
                Some("Failed") => Poll::Fail(format!("it failed: {status:?}")),
                _ => Poll::Wait(format!("{status:?}")),
            }
        })
        .await
    }

    /// Enforces Pod Security `restricted` on the scenario's namespace, and checks that a pod
    /// left to its image's settings is refused there.
    async fn enforce_restricted(&self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }}});
        if let Err(e) = namespaces
            .patch(&self.ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            self.fail(&format!("label namespace {}: {e}", self.ns))
                .await;
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "not-restricted"},
            "spec": {"containers": [{"name": "site", "image": self.node().images().site}]},
        }))
        .unwrap();
        match self.pods().create(&PostParams::default(), &pod).await {
            Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("PodSecurity") => {}
            other => {
                self.fail(&format!(
                    "namespace {} does not enforce restricted: a pod without security settings \
                     got {other:?}",
                    self.ns
                ))
                .await
            }
        }
    }

    fn done(&self, what: &str) {
        eprintln!(
            "cluster: {what} done in {:.1}s",
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// The policy docs/iam.md gives a site's snapshot Jobs: read and write its generations.
fn snapshot_policy(bucket: &str, site: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": format!("arn:aws:s3:::{bucket}"),
                "Condition": {"StringLike": {"s3:prefix": [format!("{site}/*")]}},
            },
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": format!("arn:aws:s3:::{bucket}/{site}/generations/*"),
            },
        ],
    })
}

/// The policy docs/iam.md gives a site's runners: read its cache.
fn runner_policy(bucket: &str, site: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                // What a restore reads, not the Jobs' logs (docs/iam.md).
                "Resource": [
                    format!("arn:aws:s3:::{bucket}/{site}/current.json"),
                    format!("arn:aws:s3:::{bucket}/{site}/generations/*"),
                ],
            },
            {
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": format!("arn:aws:s3:::{bucket}"),
                "Condition": {"StringLike": {"s3:prefix": [format!("{site}/*")]}},
            },
        ],
    })
}

/// A container's settings that Pod Security `restricted` admits.
fn restricted() -> Value {
    json!({
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The names of `container`'s variables.
/// [`restricted`] settings, as `uid` (and its group).
fn restricted_as(uid: i64) -> Value {
    let mut ctx = restricted();
    ctx["runAsUser"] = json!(uid);
    ctx["runAsGroup"] = json!(uid);
    ctx
}

fn env_names(container: &Container) -> BTreeSet<String> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect()
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().expect("a pod spec");
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name} in pod {}", pod.name_any()))
}

/// The uid `container` of `pod` runs as, as its spec says.
fn run_as_user(pod: &Pod, name: &str) -> Option<i64> {
    container(pod, name)
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
}

/// A warm step (the site image's `deno eval`) that writes `files` small files into the cache and
/// prints the names of its environment variables.
///
/// `deno eval` leaves `node_compat_bin/node` in `DENO_DIR` (no `node` is on `PATH`): a link to
/// this machine's Deno, which the snapshot leaves out (`archive::pack::MACHINE_LOCAL`).
fn quick_warm(image: &str, files: u32) -> Value {
    let script = format!(
        "const dir = Deno.env.get('DENO_DIR');\n\
         for (let i = 0; i < {files}; i++) Deno.writeTextFileSync(`${{dir}}/file-${{i}}.txt`, 'x'.repeat(i));\n\
         console.log(`warm env: ${{Object.keys(Deno.env.toObject()).sort().join(' ')}}`);"
    );
    json!({"image": image, "command": ["deno", "eval", script]})
}

/// Fails the scenario `$s` (with its logs, see [`Scenario::fail`]) unless `$cond` holds.
macro_rules! ensure {
    ($s:expr, $cond:expr $(,)?) => {
        ensure!($s, $cond, "")
    };
    ($s:expr, $cond:expr, $($msg:tt)+) => {{
        let holds: bool = $cond;
        if !holds {
            $s.fail(&format!("not {}: {}", stringify!($cond), format!($($msg)+))).await
        }
    }};
}

/// Fails the scenario `$s` (with its logs) unless `$left == $right`.
macro_rules! ensure_eq {
    ($s:expr, $left:expr, $right:expr $(,)?) => {
        ensure_eq!($s, $left, $right, "")
    };
    ($s:expr, $left:expr, $right:expr, $($msg:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            $s.fail(&format!(
                "{} is {left:?}, not {right:?} {}",
                stringify!($left),
                format!($($msg)+)
            ))
            .await
        }
    }};
}

mod chart;
mod credentials;
mod deno_site;
mod dist;
mod hanging;
mod onboarding;
mod outage;
mod private_ca;
mod stalled;
mod undeclared_user;
mod upgrade;
