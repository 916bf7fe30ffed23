//! Scenarios on the real node (`sitecache_devtools::node`): the chart installed with Helm, its
//! controller running as pods, and snapshot Jobs run by the real Job controller and kubelet
//! (containerd, runc), where the local job runner of the fast tier only simulates them.
//!
//! One node per test run, with one release of `charts/sitecache` on it ([`cluster`]): the local
//! agent image (`pullPolicy: Never`), two replicas electing a leader, the shared MinIO at the
//! address the node forwards it to (`storage.endpoint`, path-style), the controller's own keys
//! from a Secret (`controller.extraEnv`), finished Jobs kept [`JOB_TTL`]. Each scenario has a
//! namespace (watched by the release, with the chart's Roles and snapshot ServiceAccount) and a
//! bucket of its own, and MinIO users whose policies are the ones docs/iam.md gives; the
//! scenarios run concurrently. A part that does not work fails the scenario with the node's
//! logs, the controller's and every pod's log of the scenario's namespace (read from kubelet's
//! log directory: `kubectl logs` goes through the node's address, which the API server cannot
//! reach).
//!
//! - [`the_chart_runs_two_replicas_with_one_leader`]: Helm's install, real ServiceAccount tokens
//!   and RBAC, kubelet's probes, one Lease holder;
//! - [`a_deno_site_in_a_restricted_namespace`]: scenarios 2 to 4 of issue 13 in one namespace that
//!   enforces Pod Security `restricted`, so every pod in it (snapshot pods and runner pods) is
//!   admitted only with compliant settings: generation 1 of the storefront warmed by Deno caching
//!   real `npm:` packages, a runner pod that restores it and serves the site with
//!   `--cached-only`, then generation 2 warmed as uid 1000 on top of what `restore-previous`
//!   restored (as uid 1000 too);
//! - [`a_warm_step_that_hangs`]: `activeDeadlineSeconds`, the TTL controller and the garbage
//!   collector;
//! - [`credentials_come_from_a_secret_only`]: the agents reach MinIO only with the keys of
//!   `spec.snapshot.credentialsSecret`, which the warm container never gets.
//!
//! Run just this tier with `cargo test --test integration -- node:: cluster::`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
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
use sitecache_devtools::node::{NODE_NAME, Node, NodeConfig};
use sitecache_devtools::process::tail;
use sitecache_devtools::registry_proxy::{PACKAGE_REGISTRIES, RegistryProxy};
use tokio::sync::OnceCell;

use crate::controller::harness::{cond, condition, current};
use crate::support;

/// The Helm release (and so the controller's full name, ServiceAccount and Lease prefix).
const RELEASE: &str = "sitecache";
/// `controller.jobTTL`: how long finished Jobs stay.
const JOB_TTL: Duration = Duration::from_secs(30);
/// The namespaces (and buckets) of the scenarios, created before the install so that the
/// release watches them.
const SCENARIOS: [&str; 3] = ["deno", "hang", "creds"];
/// Where the scenarios' pods mount the Deno cache.
const DENO_DIR: &str = "/deno-dir";

/// The node with the chart installed, shared by the scenarios of a run.
struct Cluster {
    node: Node,
    /// The release's namespace.
    release_ns: String,
    /// MinIO as pods reach it (`http://<node address>:<port>`).
    s3_endpoint: String,
    /// Each scenario's (name, namespace, bucket).
    places: Vec<(&'static str, String, String)>,
}

/// The shared node and release, started by the first scenario that asks. A start that failed
/// fails every scenario with its error (it is not retried).
async fn cluster() -> &'static Cluster {
    static CLUSTER: OnceCell<Result<Cluster, String>> = OnceCell::const_new();
    let started = CLUSTER
        .get_or_init(|| async { start().await.map_err(|e| format!("{e:#}")) })
        .await;
    match started {
        Ok(c) => c,
        Err(e) => panic!("the real node with the chart installed is not available: {e}"),
    }
}

async fn start() -> Result<Cluster> {
    let begun = Instant::now();
    let node = Node::start(
        &support::run_dir().join("cluster-node"),
        &NodeConfig {
            sitecache_bin: env!("CARGO_BIN_EXE_sitecache").into(),
            dockerfile: support::repo_path("Dockerfile"),
        },
    )
    .await
    .context("the real node did not start")?;
    let node_ready = begun.elapsed();
    let client = node.client().await?;
    let s3 = support::s3().await;
    let minio: SocketAddr = s3.endpoint().trim_start_matches("http://").parse()?;
    let s3_endpoint = format!("http://{}", node.forward(minio)?);

    let release_ns = node.create_namespace("sitecache").await?;
    let mut places = Vec::new();
    for name in SCENARIOS {
        let ns = node.create_namespace(name).await?;
        let bucket = s3.create_bucket(name).await?;
        places.push((name, ns, bucket));
    }
    // The controller's keys (MinIO's root user: every scenario's bucket), from a Secret.
    let keys: std::collections::BTreeMap<String, String> = s3
        .aws_env()
        .into_iter()
        .filter(|(k, _)| k.starts_with("AWS_ACCESS_KEY_ID") || k.starts_with("AWS_SECRET"))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    create_secret(&client, &release_ns, "controller-storage", keys).await?;

    let (repository, tag) = node
        .images()
        .agent
        .rsplit_once(':')
        .context("the agent image has no tag")?;
    let secret_env = |name: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "controller-storage", "key": name}}});
    let bucket_of = |name: &str| {
        places
            .iter()
            .find(|p| p.0 == name)
            .map(|p| p.2.clone())
            .unwrap_or_default()
    };
    let values = json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "storage": {
            // The credentials scenario uses the default bucket; the others name theirs.
            "defaultBucket": bucket_of("creds"),
            "allowedBuckets": [bucket_of("deno"), bucket_of("hang")],
            "region": "us-east-1",
            "endpoint": s3_endpoint,
            "pathStyle": true,
        },
        "controller": {
            "watchNamespaces": places.iter().map(|p| p.1.clone()).collect::<Vec<_>>(),
            "jobTTL": format!("{}s", JOB_TTL.as_secs()),
            "failureBackoff": "5s",
            "logFormat": "json",
            "extraEnv": [
                secret_env("AWS_ACCESS_KEY_ID"),
                secret_env("AWS_SECRET_ACCESS_KEY"),
                {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
            ],
        },
    });
    let values_file = node.dir().join("values.json");
    std::fs::write(&values_file, serde_json::to_vec_pretty(&values)?)?;
    let helm = Asset::Helm.path().context("helm (make test-assets)")?;
    let args: Vec<String> = vec![
        "install".into(),
        RELEASE.into(),
        support::repo_path("charts/sitecache").display().to_string(),
        "--namespace".into(),
        release_ns.clone(),
        "--kubeconfig".into(),
        node.kubeconfig().display().to_string(),
        "--values".into(),
        values_file.display().to_string(),
        "--wait".into(),
        "--timeout".into(),
        "3m".into(),
    ];
    let installing = Instant::now();
    let out =
        tokio::task::spawn_blocking(move || std::process::Command::new(helm).args(&args).output())
            .await??;
    if !out.status.success() {
        let mut report = format!(
            "helm install failed ({}): {}{}\n",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        report.push_str(&pod_logs(&node, &release_ns));
        report.push_str(&node.log_tails());
        bail!("{report}");
    }
    eprintln!(
        "cluster: the node was ready in {:.1}s, helm install --wait took {:.1}s",
        node_ready.as_secs_f64(),
        installing.elapsed().as_secs_f64()
    );
    Ok(Cluster {
        node,
        release_ns,
        s3_endpoint,
        places,
    })
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

/// A scenario: its namespace and bucket on the shared cluster, an admin client of its own.
struct Scenario {
    c: &'static Cluster,
    client: Client,
    ns: String,
    bucket: String,
    started: Instant,
}

impl Scenario {
    /// The scenario `name` of [`SCENARIOS`], in its namespace, with its bucket.
    async fn new(name: &str) -> Scenario {
        let c = cluster().await;
        let (_, ns, bucket) = c
            .places
            .iter()
            .find(|p| p.0 == name)
            .unwrap_or_else(|| panic!("no namespace for scenario {name}"));
        Scenario::in_namespace(c, ns, bucket).await
    }

    /// A scenario about the release itself, in its namespace (no bucket).
    async fn release() -> Scenario {
        let c = cluster().await;
        Scenario::in_namespace(c, &c.release_ns, "").await
    }

    async fn in_namespace(c: &'static Cluster, ns: &str, bucket: &str) -> Scenario {
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
                "Resource": format!("arn:aws:s3:::{bucket}/{site}/*"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_two_replicas_with_one_leader() {
    let s = Scenario::release().await;
    let c = s.c;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &c.release_ns);
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &c.release_ns);
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &c.release_ns);
    let selector = "app.kubernetes.io/name=sitecache,app.kubernetes.io/component=controller";

    // Helm waited for the Deployment; kubelet's readiness probes (/readyz) keep both Ready, and
    // its liveness probes (/healthz, 3 failures 10 s apart restart a container) never failed:
    // both ran 35 s without a restart.
    let controllers = s
        .until(
            "two Ready controller pods that ran 35 s without a restart",
            Duration::from_secs(90),
            async || {
                let ready = deployments
                    .get(RELEASE)
                    .await
                    .ok()
                    .and_then(|d| d.status?.ready_replicas);
                let Ok(list) = pods.list(&ListParams::default().labels(selector)).await else {
                    return Poll::Wait("no pods".into());
                };
                let mut seen = Vec::new();
                let mut ran = 0;
                for pod in &list.items {
                    let status = pod.status.clone().unwrap_or_default();
                    let Some(c) = status.container_statuses.iter().flatten().next() else {
                        seen.push(format!("{}: no container status", pod.name_any()));
                        continue;
                    };
                    if c.restart_count > 0 {
                        return Poll::Fail(format!(
                            "{} restarted {} times: {:?}",
                            pod.name_any(),
                            c.restart_count,
                            c.last_state
                        ));
                    }
                    let running_for = c
                        .state
                        .as_ref()
                        .and_then(|s| s.running.as_ref()?.started_at.clone())
                        .map(|t| jiff::Timestamp::now().duration_since(t.0).as_secs());
                    if c.ready && running_for.is_some_and(|s| s >= 35) {
                        ran += 1;
                    }
                    seen.push(format!(
                        "{}: ready {}, running for {running_for:?}s",
                        pod.name_any(),
                        c.ready
                    ));
                }
                let all_ran = list.items.len() == 2 && ran == 2;
                if ready == Some(2) && all_ran {
                    Poll::Done(list.items)
                } else {
                    Poll::Wait(format!("ready replicas {ready:?}; {}", seen.join("; ")))
                }
            },
        )
        .await;
    let names: BTreeSet<String> = controllers.iter().map(|p| p.name_any()).collect();
    for pod in &controllers {
        let spec = pod.spec.as_ref().unwrap();
        // The chart's ServiceAccount, whose token kubelet projected: what the API server
        // authenticates the controller by, and the chart's RBAC authorizes.
        ensure_eq!(s, spec.service_account_name.as_deref(), Some(RELEASE));
        ensure!(
            s,
            spec.volumes
                .iter()
                .flatten()
                .any(|v| v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.service_account_token.is_some())
                })),
            "no projected service account token in {}: {:?}",
            pod.name_any(),
            spec.volumes
        );
        let controller = &spec.containers[0];
        let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref()?.path.clone())
                .unwrap_or_default()
        };
        ensure_eq!(s, probe_path(&controller.liveness_probe), "/healthz");
        ensure_eq!(s, probe_path(&controller.readiness_probe), "/readyz");
    }
    // Kubelet reported no liveness probe failure (a readiness probe may fail once, before the
    // controller listens: the pod is not Ready yet).
    let events: Api<Event> = Api::namespaced(s.client.clone(), &c.release_ns);
    let unhealthy: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Unhealthy"))
        .filter_map(|e| e.note)
        .filter(|note| note.starts_with("Liveness"))
        .collect();
    if !unhealthy.is_empty() {
        s.fail(&format!("kubelet's liveness probes failed: {unhealthy:?}"))
            .await;
    }

    // Exactly one leader: the Lease's holder is one of the two pods (their POD_NAME), written
    // with the controller's own token; the holder says it leads, the other that it waits.
    let lease_name = format!("{RELEASE}-controller");
    let holder = s
        .until(
            "a Lease holder",
            Duration::from_secs(30),
            async || match leases.get_opt(&lease_name).await {
                Ok(Some(l)) => match l.spec.and_then(|s| s.holder_identity) {
                    Some(h) if names.contains(&h) => Poll::Done(h),
                    other => Poll::Wait(format!("holder {other:?}, pods {names:?}")),
                },
                other => Poll::Wait(format!("{other:?}")),
            },
        )
        .await;
    let lease = leases.get(&lease_name).await.unwrap();
    let managers: Vec<String> = lease
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.clone())
        .collect();
    ensure!(
        s,
        managers.iter().any(|m| m == "sitecache-controller"),
        "the Lease was not written by the controller: {managers:?}"
    );
    for pod in &controllers {
        let log = s.log(pod, "controller").await;
        let leads = log.contains("\"message\":\"leading\"");
        let waits = log.contains("\"message\":\"waiting to lead\"");
        let is_holder = pod.name_any() == holder;
        if leads != is_holder || !waits {
            s.fail(&format!(
                "pod {} (holder: {is_holder}) leads: {leads}, waited: {waits}",
                pod.name_any()
            ))
            .await;
        }
    }
    s.done("the chart's install");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deno_site_in_a_restricted_namespace() {
    let s = Scenario::new("deno").await;
    s.enforce_restricted().await;
    let images = s.node().images().clone();
    // The warm step reaches the npm registry through the proxy; nothing else leaves the node.
    let proxy = RegistryProxy::start(&PACKAGE_REGISTRIES).await.unwrap();
    let proxy_in_node = s.node().forward(proxy.addr()).unwrap();
    let site = "storefront";
    s.storage_secret("snapshot-storage", snapshot_policy(&s.bucket, site))
        .await;
    s.storage_secret("runner-storage", runner_policy(&s.bucket, site))
        .await;

    // Generation 1: the site's image caches main.ts's npm: imports as its user, 1000, declared
    // so that the pod is admitted (the agents then run as 1000 too).
    let warm_env = json!([
        {"name": "HTTPS_PROXY", "value": format!("http://{proxy_in_node}")},
        {"name": "NO_COLOR", "value": "1"},
    ]);
    s.create(
        site,
        json!({
            "site": site,
            "storage": {"bucket": s.bucket},
            "source": {"revision": "storefront-deps-1"},
            "warm": {
                "image": images.site,
                "command": ["deno", "cache", "/site/main.ts"],
                "env": warm_env,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000},
            },
            "snapshot": {
                "minFiles": 50,
                "timeout": "5m",
                "backoffLimit": 0,
                "credentialsSecret": {"name": "snapshot-storage"},
            },
        }),
    )
    .await;
    let sc = s.wait_promoted(site, 1, Duration::from_secs(240)).await;
    let first = sc.status.as_ref().unwrap().current.clone().unwrap();
    let url = sc.status.as_ref().unwrap().url.clone().unwrap();
    // The real Job controller ran the Job to completion, its pod on the node.
    let job = s.jobs().get(&format!("{site}-g1")).await.unwrap();
    let complete = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        });
    let pod = s.job_pod(site, 1).await;
    if !complete || pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(NODE_NAME) {
        s.fail(&format!(
            "Job {site}-g1: {:?}; its pod: {:?}",
            job.status,
            pod.spec.as_ref().and_then(|s| s.node_name.clone())
        ))
        .await;
    }
    let warm_log = s.log(&pod, "warm").await;
    ensure!(
        s,
        warm_log.contains("Download https://registry.npmjs.org/preact"),
        "the warm step did not download preact: {warm_log}"
    );

    // A runner pod: an init container restores the generation into an emptyDir, then the site
    // runs from it alone (--cached-only), both admitted under `restricted`. The restore runs as
    // the agent image's user (65532), the site as its own (1000): it only reads the tree.
    let runner = |name: &str, extra: Vec<Value>| {
        let mut containers = vec![json!({
            "name": "site",
            "image": images.site,
            "imagePullPolicy": "Never",
            "args": ["run", "--cached-only", "/site/main.ts"],
            "env": [{"name": "DENO_DIR", "value": DENO_DIR}, {"name": "NO_COLOR", "value": "1"}],
            "volumeMounts": [{"name": "deno-dir", "mountPath": DENO_DIR}],
            "securityContext": restricted(),
        })];
        containers.extend(extra);
        json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "initContainers": [{
                    "name": "restore",
                    "image": images.agent,
                    "imagePullPolicy": "Never",
                    "args": ["restore", "--strict", "--url", url, "--dest", DENO_DIR],
                    "env": s.agent_env("runner-storage"),
                    "volumeMounts": [{"name": "deno-dir", "mountPath": DENO_DIR}],
                    "securityContext": restricted(),
                }],
                "containers": containers,
                "volumes": [{"name": "deno-dir", "emptyDir": {}}],
            },
        })
    };
    let pod = s
        .run_pod(runner("runner-g1", vec![]), Duration::from_secs(120))
        .await;
    let restored = s.log(&pod, "restore").await;
    let page = s.log(&pod, "site").await;
    if !restored.contains("\"generation\":1") || !page.contains("<h1>Storefront</h1>") {
        s.fail(&format!(
            "the runner did not serve the storefront from generation 1:\nrestore: {restored}\nsite: {page}"
        ))
        .await;
    }

    // Generation 2 warms on top of generation 1: restore-previous fills the cache as 1000 and
    // the warm step, as 1000, adds a package into that tree.
    s.request_snapshot(
        site,
        "second",
        json!({"warm": {"command": ["deno", "cache", "/site/main.ts", "npm:is-number@7.0.0"]}}),
    )
    .await;
    let sc = s.wait_promoted(site, 2, Duration::from_secs(240)).await;
    let second = sc.status.as_ref().unwrap().current.clone().unwrap();
    ensure_eq!(s, second.base_generation, Some(1), "{second:?}");
    ensure!(s, second.files > first.files, "{first:?} then {second:?}");
    let pod = s.job_pod(site, 2).await;
    ensure_eq!(s, run_as_user(&pod, "restore-previous"), Some(1000));
    ensure_eq!(s, run_as_user(&pod, "warm"), Some(1000));
    ensure_eq!(s, run_as_user(&pod, "snapshot"), Some(1000));
    let warm_log = s.log(&pod, "warm").await;
    // What generation 1 held came from restore-previous: only the new package was downloaded.
    if !warm_log.contains("Download https://registry.npmjs.org/is-number")
        || warm_log.contains("Download https://registry.npmjs.org/preact")
    {
        s.fail(&format!(
            "generation 2's warm step did not warm on top of generation 1: {warm_log}"
        ))
        .await;
    }
    let check = "const { default: isNumber } = await import('npm:is-number@7.0.0'); \
                 console.log(`is-number: ${isNumber(42)}`);";
    let pod = s
        .run_pod(
            runner(
                "runner-g2",
                vec![json!({
                    "name": "added",
                    "image": images.site,
                    "imagePullPolicy": "Never",
                    "args": ["eval", "--cached-only", check],
                    "env": [{"name": "DENO_DIR", "value": DENO_DIR}, {"name": "NO_COLOR", "value": "1"}],
                    "volumeMounts": [{"name": "deno-dir", "mountPath": DENO_DIR}],
                    "securityContext": restricted(),
                })],
            ),
            Duration::from_secs(120),
        )
        .await;
    let restored = s.log(&pod, "restore").await;
    let page = s.log(&pod, "site").await;
    let added = s.log(&pod, "added").await;
    if !restored.contains("\"generation\":2")
        || !page.contains("<h1>Storefront</h1>")
        || !added.contains("is-number: true")
    {
        s.fail(&format!(
            "the runner did not run from generation 2:\nrestore: {restored}\nsite: {page}\nadded: {added}"
        ))
        .await;
    }
    ensure!(
        s,
        proxy.tunnels() > 0,
        "no tunnel through the registry proxy"
    );
    s.done("the Deno site in a restricted namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_step_that_hangs() {
    let s = Scenario::new("hang").await;
    let images = s.node().images().clone();
    let name = "hang";
    s.storage_secret("storage", snapshot_policy(&s.bucket, name))
        .await;
    s.create(
        name,
        json!({
            "site": name,
            "storage": {"bucket": s.bucket},
            "warm": quick_warm(&images.site, 5),
            "snapshot": {"minFiles": 3, "backoffLimit": 0, "credentialsSecret": {"name": "storage"}},
        }),
    )
    .await;
    s.wait_promoted(name, 1, Duration::from_secs(120)).await;

    // Generation 2's warm step never ends: the Job's deadline (spec.snapshot.timeout) does.
    s.request_snapshot(
        name,
        "hangs",
        json!({
            "warm": {"command": ["deno", "eval", "console.log('warming forever'); await new Promise((r) => setTimeout(r, 3_600_000));"]},
            "snapshot": {"timeout": "20s"},
        }),
    )
    .await;
    let sc = s
        .until(
            "SiteCache hang Degraded by its Job's deadline",
            Duration::from_secs(90),
            async || {
                let Some(sc) = s.sitecache(name).await else {
                    return Poll::Wait("no SiteCache".into());
                };
                let last = sc.status.as_ref().and_then(|s| s.last_snapshot.clone());
                match &last {
                    Some(l) if l.generation == 2 && l.result == Some(SnapshotResult::Failed) => {
                        Poll::Done(sc)
                    }
                    Some(l) if l.generation == 2 && l.result == Some(SnapshotResult::Succeeded) => {
                        Poll::Fail(format!("the hanging snapshot succeeded: {l:?}"))
                    }
                    _ => Poll::Wait(format!("last snapshot {last:?}")),
                }
            },
        )
        .await;
    let degraded = cond(&sc, "Degraded");
    ensure_eq!(
        s,
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "DeadlineExceeded"),
        "{degraded:?}"
    );
    ensure_eq!(
        s,
        current(&sc),
        Some(1),
        "the current generation was not kept"
    );
    ensure_eq!(s, condition(&sc, "Ready"), Some("True"));
    // The real Job controller failed the Job (`Failed` once its pod has terminated; the
    // controller acted on `FailureTarget` already).
    let job_name = format!("{name}-g2");
    let (job, failed) = s
        .until(
            &format!("Job {job_name} Failed"),
            Duration::from_secs(60),
            async || {
                let Ok(job) = s.jobs().get(&job_name).await else {
                    return Poll::Wait("no Job".into());
                };
                let failed = job
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Failed" && c.status == "True");
                match failed {
                    Some(f) => Poll::Done((job, f)),
                    None => Poll::Wait(format!("{:?}", job.status)),
                }
            },
        )
        .await;
    ensure_eq!(s, failed.reason.as_deref(), Some("DeadlineExceeded"));
    ensure_eq!(
        s,
        job.spec.as_ref().unwrap().active_deadline_seconds,
        Some(20)
    );
    let failed_at = failed.last_transition_time.expect("a transition time").0;

    // The TTL controller removes generation 1's finished Job while its SiteCache lives.
    s.until(
        &format!(
            "Job {name}-g1 removed {}s after it finished",
            JOB_TTL.as_secs()
        ),
        JOB_TTL + Duration::from_secs(60),
        async || match s.jobs().get_opt(&format!("{name}-g1")).await {
            Ok(None) => Poll::Done(()),
            other => Poll::Wait(format!("{:?}", other.map(|j| j.map(|j| j.status)))),
        },
    )
    .await;

    // Deleting the SiteCache: the garbage collector removes its Jobs (owner references) and
    // their pods, before the TTL would have removed generation 2's Job.
    s.sitecaches()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let selector = format!("app.kubernetes.io/instance={name}");
    s.until(
        "the SiteCache, its Jobs and their pods gone",
        Duration::from_secs(60),
        async || {
            let lp = ListParams::default().labels(&selector);
            let sc = s.sitecache(name).await.is_some();
            let jobs = s.jobs().list(&lp).await.map(|l| l.items.len());
            let pods = s.pods().list(&lp).await.map(|l| l.items.len());
            match (sc, &jobs, &pods) {
                (false, Ok(0), Ok(0)) => Poll::Done(()),
                _ => Poll::Wait(format!("SiteCache {sc}, Jobs {jobs:?}, pods {pods:?}")),
            }
        },
    )
    .await;
    let gone_after = jiff::Timestamp::now().duration_since(failed_at);
    eprintln!(
        "cluster: {name}-g2 and its pods were gone {:.1}s after it failed (its TTL: {}s)",
        gone_after.as_secs_f64(),
        JOB_TTL.as_secs()
    );
    ensure!(
        s,
        gone_after.as_secs_f64() < JOB_TTL.as_secs_f64(),
        "Job {name}-g2 went {gone_after} after it failed, when its TTL would have removed it: \
         not proved to be the garbage collector's doing"
    );
    s.done("the warm step that hangs");
}

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
