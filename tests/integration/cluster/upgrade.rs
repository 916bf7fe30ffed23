//! An upgrade from the earlier release (`UPGRADE_FROM_COMMIT` of `hack/versions.env`: its
//! binary, chart and Dockerfile, built by `hack/test-assets.sh`) to the working tree, on a node of
//! its own: the CRD is cluster-scoped, so the shared cluster's release cannot be made older.
//!
//! The earlier chart is installed with the earlier image, which promotes generation 1 of two
//! SiteCaches; then three snapshot Jobs that it starts (two generations 1, one generation 2) are
//! held in their warm step by a gate this test opens. `helm upgrade` to the working tree's chart
//! and image follows, as docs/operations.md ("Upgrading") says to upgrade; one Job is let go as
//! the upgrade begins (it ends whenever the rollout has got to), the other two once the new
//! controller leads. Then every Job started before the upgrade is handled once (one
//! `SnapshotStarted` and one `Promoted` Event per generation, no failure ever recorded, nothing
//! left in the bucket but the generations the statuses name, every Job released), the new
//! controller writes what the earlier one did not (kstatus' `Reconciling` while a first
//! generation is on its way, gone once it is promoted), every status converges to Ready, the CRD
//! is the working tree's, and a snapshot requested after the upgrade is promoted by the new
//! controller on top of a generation the earlier agent made. Last, `helm rollback` to the
//! earlier release with two Jobs of the new one held at the gate (one of them a first generation,
//! which the new controller reports as `Reconciling`): the earlier controller handles each once
//! too, and once the status's conditions are removed as docs/operations.md says (the earlier
//! release leaves a condition it does not know as it was), it writes its own again; a snapshot
//! after the rollback is warmed by the earlier agent on top of the generation the new one made.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::watcher;
use sitecache::api::SiteCacheStatus;
use sitecache::controller::jobs::RESULT_FINALIZER;
use sitecache_devtools::assets::pinned_version;
use sitecache_devtools::node::Images;

use super::*;

/// The scenarios (namespaces, buckets) of the upgrade's node: two namespaces, so that the
/// upgrade covers a release that watches more than one.
const NAMESPACES: [&str; 2] = ["upgrade-a", "upgrade-b"];
/// The tag of the earlier release's agent image on the node.
const BASE_TAG: &str = "upgrade-base";

/// Holds the warm steps of Jobs in flight until the test lets each go: a warm step asks for
/// `GET /<site>` every half second and ends once it is answered 200.
struct Gate {
    state: Arc<Mutex<GateState>>,
    /// Where pods reach it (`http://<node address>:<port>`).
    url: String,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct GateState {
    /// Sites whose warm step asked at least once.
    asked: BTreeSet<String>,
    /// Sites let go.
    open: BTreeSet<String>,
}

impl Gate {
    async fn start(node: &Node) -> Result<Gate> {
        let state = Arc::new(Mutex::new(GateState::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", node.forward(listener.local_addr()?)?);
        let app = axum::Router::new()
            .route(
                "/{site}",
                axum::routing::get(
                    |axum::extract::State(state): axum::extract::State<Arc<Mutex<GateState>>>,
                     axum::extract::Path(site): axum::extract::Path<String>| async move {
                        let mut state = state.lock().unwrap();
                        state.asked.insert(site.clone());
                        if state.open.contains(&site) {
                            axum::http::StatusCode::OK
                        } else {
                            axum::http::StatusCode::SERVICE_UNAVAILABLE
                        }
                    },
                ),
            )
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Gate { state, url, task })
    }

    fn open(&self, site: &str) {
        self.state.lock().unwrap().open.insert(site.to_owned());
    }

    fn asked(&self, site: &str) -> bool {
        self.state.lock().unwrap().asked.contains(site)
    }

    /// A warm step (the site image's `deno eval`) that writes a few files, then waits at the
    /// gate until `site` is let go.
    fn warm(&self, image: &str, site: &str) -> Value {
        let script = format!(
            "const dir = Deno.env.get('DENO_DIR');\n\
             for (let i = 0; i < 5; i++) Deno.writeTextFileSync(`${{dir}}/file-${{i}}.txt`, 'x'.repeat(i));\n\
             for (;;) {{\n\
               try {{ const r = await fetch('{}/{site}'); await r.body?.cancel(); if (r.ok) break; }} catch (_) {{}}\n\
               await new Promise((r) => setTimeout(r, 500));\n\
             }}",
            self.url
        );
        json!({"image": image, "command": ["deno", "eval", script]})
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every status each SiteCache of the watched namespaces was given, in order, from the start of
/// the watch on.
struct StatusLog {
    seen: Arc<Mutex<Statuses>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The statuses seen of each SiteCache, by namespace and name.
type Statuses = BTreeMap<(String, String), Vec<SiteCacheStatus>>;

impl StatusLog {
    fn start(client: &Client, namespaces: &[&str]) -> StatusLog {
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let tasks = namespaces
            .iter()
            .map(|ns| {
                let api: Api<SiteCache> = Api::namespaced(client.clone(), ns);
                let log = seen.clone();
                tokio::spawn(async move {
                    let mut events = watcher(api, watcher::Config::default()).boxed();
                    while let Some(event) = events.next().await {
                        let sc = match event {
                            Ok(watcher::Event::Apply(sc) | watcher::Event::InitApply(sc)) => sc,
                            _ => continue,
                        };
                        let key = (sc.namespace().unwrap_or_default(), sc.name_any());
                        let status = sc.status.unwrap_or_default();
                        let mut seen = log.lock().unwrap();
                        let statuses: &mut Vec<SiteCacheStatus> = seen.entry(key).or_default();
                        if statuses.last() != Some(&status) {
                            statuses.push(status);
                        }
                    }
                })
            })
            .collect();
        StatusLog { seen, tasks }
    }

    fn of(&self, ns: &str, name: &str) -> Vec<SiteCacheStatus> {
        let seen = self.seen.lock().unwrap();
        seen.get(&(ns.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_from_the_earlier_release_and_back_handles_every_job_once() {
    let base = Asset::UpgradeBase
        .path()
        .unwrap_or_else(|e| panic!("the earlier release: {e:#}"));
    let commit = pinned_version("UPGRADE_FROM_COMMIT").unwrap();
    let old_image = Images::agent_tagged(BASE_TAG);
    let cluster = start(&ClusterConfig {
        dir: "upgrade-node",
        other_agents: vec![AgentImage {
            tag: BASE_TAG.into(),
            sitecache_bin: base.join("sitecache"),
            dockerfile: base.join("Dockerfile"),
        }],
        scenarios: &NAMESPACES,
        default_bucket: NAMESPACES[0],
        chart: base.join("charts/sitecache"),
        image: Some(old_image.clone()),
        // The earlier chart has no caBundle value.
        private_ca: false,
    })
    .await
    .unwrap_or_else(|e| panic!("the node with the release of {commit} installed: {e:#}"));
    let place = |name: &str| {
        let (_, ns, bucket) = cluster.places.iter().find(|p| p.0 == name).unwrap();
        (ns.clone(), bucket.clone())
    };
    let (ns_a, bucket_a) = place(NAMESPACES[0]);
    let (ns_b, bucket_b) = place(NAMESPACES[1]);
    let a = Scenario::in_namespace(&cluster, &ns_a, &bucket_a).await;
    let b = Scenario::in_namespace(&cluster, &ns_b, &bucket_b).await;
    let new_image = cluster.node.images().agent.clone();
    let site_image = cluster.node.images().site.clone();
    let gate = Gate::start(&cluster.node).await.expect("the gate");
    let log = StatusLog::start(&a.client, &[&ns_a, &ns_b]);
    let old_controllers = a
        .controllers_run(&old_image, "the earlier release's install")
        .await;

    // What the earlier controller promotes before the upgrade: generation 1 of `steady` (left
    // alone until after the upgrade) and of `refresh` (whose generation 2 will be in flight).
    for name in ["steady", "refresh"] {
        a.create_site(name, quick_warm(&site_image, 5)).await;
    }
    for name in ["steady", "refresh"] {
        a.wait_promoted(name, 1, Duration::from_secs(180)).await;
    }

    // The Jobs in flight at the upgrade, each started by the earlier controller and held at the
    // gate: generation 2 of `refresh` (on demand), generation 1 of `first` and of `during`.
    a.request_snapshot(
        "refresh",
        "before-upgrade",
        json!({"warm": gate.warm(&site_image, "refresh")}),
    )
    .await;
    for name in ["first", "during"] {
        b.create_site(name, gate.warm(&site_image, name)).await;
    }
    let in_flight = [(&a, "refresh", 2), (&b, "first", 1), (&b, "during", 1)];
    for (s, name, generation) in in_flight {
        let job = format!("{name}-g{generation}");
        s.until(
            &format!("Job {job} recorded and its warm step at the gate"),
            Duration::from_secs(180),
            async || {
                let sc = s.sitecache(name).await;
                let active = sc
                    .as_ref()
                    .and_then(|sc| sc.status.as_ref()?.active_job.clone());
                if active.as_deref() == Some(job.as_str()) && gate.asked(name) {
                    Poll::Done(())
                } else {
                    Poll::Wait(format!(
                        "active job {active:?}, at the gate: {}",
                        gate.asked(name)
                    ))
                }
            },
        )
        .await;
        // Made by the earlier release: its agent image, its result finalizer.
        let pod = s.job_pod(name, generation).await;
        ensure_eq!(
            s,
            container(&pod, "snapshot").image.as_deref(),
            Some(old_image.as_str()),
            "in the pod of {job}"
        );
        let held = s.jobs().get(&job).await.map(|j| j.finalizers().to_vec());
        ensure!(
            s,
            held.as_ref()
                .is_ok_and(|f| f.iter().any(|f| f == RESULT_FINALIZER)),
            "Job {job}'s finalizers: {held:?}"
        );
    }
    // The earlier controller does not write kstatus' conditions: the new one's appear below.
    let first = b.sitecache("first").await.expect("SiteCache first");
    ensure_eq!(
        b,
        condition(&first, "Reconciling"),
        None,
        "before the upgrade: {:?}",
        first.status
    );

    // The upgrade, as docs/operations.md says: `helm upgrade` to the new chart (which upgrades
    // the CRD with the release) and image. `during` is let go as it begins.
    gate.open("during");
    let upgrading = Instant::now();
    if let Err(e) = cluster
        .helm(
            "upgrade",
            &support::repo_path("charts/sitecache"),
            &new_image,
        )
        .await
    {
        a.fail(&format!("helm upgrade from {commit}: {e:#}")).await;
    }
    let new_controllers = a.controllers_run(&new_image, "the upgrade").await;
    let upgraded = upgrading.elapsed();

    // The new controller leads and has met `first`'s Job, still held at the gate: it says that
    // generation 1 is on its way, which the earlier one did not.
    let reconciling = b
        .until(
            "the new controller's Reconciling condition on first",
            Duration::from_secs(60),
            async || match b.sitecache("first").await {
                Some(sc) if condition(&sc, "Reconciling") == Some("True") => {
                    Poll::Done(cond(&sc, "Reconciling"))
                }
                other => Poll::Wait(format!("{:?}", other.and_then(|sc| sc.status))),
            },
        )
        .await;
    ensure_eq!(b, reconciling.reason, "SnapshotRunning", "{reconciling:?}");
    ensure!(
        b,
        reconciling.message.contains("first-g1"),
        "{reconciling:?}"
    );
    let job = b.jobs().get("first-g1").await.expect("Job first-g1");
    ensure!(
        b,
        job.status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .is_none(),
        "first-g1 finished before the gate let it go: {:?}",
        job.status
    );

    gate.open("first");
    gate.open("refresh");
    b.wait_promoted("first", 1, Duration::from_secs(180)).await;
    b.wait_promoted("during", 1, Duration::from_secs(180)).await;
    a.wait_promoted("refresh", 2, Duration::from_secs(180))
        .await;

    // A snapshot after the upgrade: the new controller's Job, with the new agent, restores the
    // generation the earlier agent packed and warms on top of it.
    a.request_snapshot("steady", "after-upgrade", json!({}))
        .await;
    let steady = a.wait_promoted("steady", 2, Duration::from_secs(180)).await;
    let pod = a.job_pod("steady", 2).await;
    ensure_eq!(
        a,
        agent_images(&pod),
        BTreeMap::from([
            ("restore-previous", new_image.clone()),
            ("snapshot", new_image.clone())
        ]),
        "in the pod of steady-g2"
    );
    let steady_current = steady.status.as_ref().and_then(|s| s.current.clone());
    ensure_eq!(
        a,
        steady_current.as_ref().and_then(|c| c.base_generation),
        Some(1),
        "steady's generation 2 was not warmed on top of generation 1: {steady_current:?}"
    );

    // Every SiteCache converged, with every generation handled once.
    let expected = [
        (&a, "steady", 2, Some("after-upgrade")),
        (&a, "refresh", 2, Some("before-upgrade")),
        (&b, "first", 1, None),
        (&b, "during", 1, None),
    ];
    for (s, name, generation, request) in expected {
        s.converged(name, generation, request, &log).await;
    }
    // Who promoted what: the earlier controllers what finished before the upgrade, the new ones
    // the Jobs held across it and the one after it.
    for (s, name, generation, controllers, which) in [
        (&a, "steady", 1, &old_controllers, "earlier"),
        (&a, "refresh", 1, &old_controllers, "earlier"),
        (&a, "refresh", 2, &new_controllers, "new"),
        (&b, "first", 1, &new_controllers, "new"),
        (&a, "steady", 2, &new_controllers, "new"),
    ] {
        let promoter = s.promoter(name, generation).await;
        ensure!(
            s,
            promoter.as_ref().is_some_and(|p| controllers.contains(p)),
            "{name}'s generation {generation} was promoted by {promoter:?}, not by the {which} \
             controllers {controllers:?}"
        );
    }
    let promoter = b.promoter("during", 1).await;
    eprintln!(
        "cluster: the upgrade: the Job let go as it began was promoted by {}",
        match &promoter {
            Some(p) if old_controllers.contains(p) => "the earlier release",
            Some(p) if new_controllers.contains(p) => "the new release",
            _ => "an unknown controller",
        }
    );
    // Every Job released (the earlier release's too): gone once their TTL passed.
    for s in [&a, &b] {
        s.until(
            "every snapshot Job released and gone",
            JOB_TTL + Duration::from_secs(90),
            async || match s.jobs().list(&ListParams::default()).await {
                Ok(list) if list.items.is_empty() => Poll::Done(()),
                Ok(list) => Poll::Wait(format!(
                    "{:?}",
                    list.items
                        .iter()
                        .map(|j| (j.name_any(), j.finalizers().to_vec()))
                        .collect::<Vec<_>>()
                )),
                Err(e) => Poll::Wait(e.to_string()),
            },
        )
        .await;
    }
    // The CRD is the working tree's: the chart ships it as a template, upgraded with the release.
    let crds: Api<CustomResourceDefinition> = Api::all(a.client.clone());
    let crd = crds
        .get("sitecaches.sitecache.dev")
        .await
        .expect("the SiteCache CRD");
    ensure_eq!(
        a,
        serde_json::to_value(&crd.spec.versions).unwrap(),
        serde_json::to_value(&sitecache::api::crd().spec.versions).unwrap(),
        "after the upgrade"
    );
    eprintln!(
        "cluster: helm upgrade from {commit} and the new controllers' rollout took {:.1}s",
        upgraded.as_secs_f64()
    );

    // Rolling the chart back to its first revision, the earlier release, with two Jobs of the
    // new one held at the gate: generation 3 of `steady`, and generation 1 of `late`, which the
    // new controller reports as Reconciling. The earlier controller handles each once.
    a.request_snapshot(
        "steady",
        "before-rollback",
        json!({"warm": gate.warm(&site_image, "steady")}),
    )
    .await;
    b.create_site("late", gate.warm(&site_image, "late")).await;
    for (s, name, job) in [(&a, "steady", "steady-g3"), (&b, "late", "late-g1")] {
        s.until(
            &format!("Job {job} recorded and its warm step at the gate"),
            Duration::from_secs(120),
            async || {
                let sc = s.sitecache(name).await;
                let active = sc
                    .as_ref()
                    .and_then(|sc| sc.status.as_ref()?.active_job.clone());
                let reconciling = sc.as_ref().and_then(|sc| condition(sc, "Reconciling"));
                // Only `late`'s first generation is on its way to what the spec asks for.
                let expected = (name == "late").then_some("True");
                if active.as_deref() == Some(job) && gate.asked(name) && reconciling == expected {
                    Poll::Done(())
                } else {
                    Poll::Wait(format!(
                        "active job {active:?}, Reconciling {reconciling:?}"
                    ))
                }
            },
        )
        .await;
    }
    if let Err(e) = cluster.helm_rollback(1).await {
        a.fail(&format!("helm rollback to {commit}: {e:#}")).await;
    }
    let rolled_back = a.controllers_run(&old_image, "the rollback").await;
    gate.open("steady");
    gate.open("late");
    a.wait_promoted("steady", 3, Duration::from_secs(180)).await;
    b.wait_promoted("late", 1, Duration::from_secs(180)).await;
    // What docs/operations.md says to do after rolling back: conditions the earlier release does
    // not know (it leaves them as the new one last wrote them) go with the status's conditions,
    // which the controller writes again.
    b.kubectl(&[
        "patch",
        "sitecache",
        "late",
        "--subresource=status",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/status/conditions"}]"#,
    ])
    .await;
    a.converged("steady", 3, Some("before-rollback"), &log)
        .await;
    b.converged("late", 1, None, &log).await;

    // A snapshot after the rollback: the earlier agent restores the generation the new one
    // packed, and warms on top of it.
    a.request_snapshot("steady", "after-rollback", json!({}))
        .await;
    let steady = a.wait_promoted("steady", 4, Duration::from_secs(180)).await;
    let pod = a.job_pod("steady", 4).await;
    ensure_eq!(
        a,
        agent_images(&pod),
        BTreeMap::from([
            ("restore-previous", old_image.clone()),
            ("snapshot", old_image.clone())
        ]),
        "in the pod of steady-g4"
    );
    let steady_current = steady.status.as_ref().and_then(|s| s.current.clone());
    ensure_eq!(
        a,
        steady_current.as_ref().and_then(|c| c.base_generation),
        Some(3),
        "steady's generation 4 was not warmed on top of generation 3: {steady_current:?}"
    );
    a.converged("steady", 4, Some("after-rollback"), &log).await;
    for (s, name, generation) in [(&a, "steady", 3), (&a, "steady", 4), (&b, "late", 1)] {
        let promoter = s.promoter(name, generation).await;
        ensure!(
            s,
            promoter.as_ref().is_some_and(|p| rolled_back.contains(p)),
            "{name}'s generation {generation} was promoted by {promoter:?}, not by the earlier \
             release's controllers {rolled_back:?}"
        );
    }
    a.done("the upgrade from the earlier release and the rollback");
}

impl Scenario<'_> {
    /// Creates SiteCache `name` of the site image warmed by `warm`, with the keys of a Secret
    /// of its own whose rights are the site's snapshot policy, keeping every generation the test
    /// makes (the checks see them all). Its snapshots warm on top of the current generation
    /// unless there is none: the cache is a few kilobytes, most of them Deno's own databases,
    /// whose size alone can pass the default growth limit of a rebuild.
    async fn create_site(&self, name: &str, warm: Value) {
        let secret = format!("{name}-storage");
        self.storage_secret(&secret, snapshot_policy(&self.bucket, name))
            .await;
        self.create(
            name,
            json!({
                "site": name,
                "storage": {"bucket": self.bucket},
                "warm": warm,
                "snapshot": {
                    "minFiles": 3,
                    "backoffLimit": 0,
                    "credentialsSecret": {"name": secret},
                    "rebuild": {"maxGrowthPercent": 0},
                },
                "retention": {"keep": 10},
            }),
        )
        .await;
    }

    /// Runs kubectl with `args` in the scenario's namespace; fails the scenario if it fails.
    async fn kubectl(&self, args: &[&str]) {
        let mut command = std::process::Command::new(Asset::Kubectl.path().expect("kubectl"));
        command
            .arg("--kubeconfig")
            .arg(self.node().kubeconfig())
            .args(["--namespace", &self.ns])
            .args(args);
        match tokio::task::spawn_blocking(move || command.output()).await {
            Ok(Ok(out)) if out.status.success() => {}
            other => self.fail(&format!("kubectl {args:?}: {other:?}")).await,
        }
    }

    /// Waits until the release's controllers are two Ready pods of `image` (and no other), one
    /// of which holds the Lease; returns their names.
    async fn controllers_run(&self, image: &str, after: &str) -> BTreeSet<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.c.release_ns);
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.c.release_ns);
        let selector = "app.kubernetes.io/name=sitecache,app.kubernetes.io/component=controller";
        self.until(
            &format!("after {after}: two Ready controllers of {image}, one leading"),
            Duration::from_secs(120),
            async || {
                let Ok(list) = pods.list(&ListParams::default().labels(selector)).await else {
                    return Poll::Wait("no pods".into());
                };
                let seen: Vec<(String, Option<String>, bool)> = list
                    .items
                    .iter()
                    .map(|p| {
                        let c = p
                            .status
                            .as_ref()
                            .and_then(|s| s.container_statuses.as_ref()?.first().cloned());
                        (
                            p.name_any(),
                            p.spec.as_ref().and_then(|s| s.containers[0].image.clone()),
                            c.is_some_and(|c| c.ready) && p.metadata.deletion_timestamp.is_none(),
                        )
                    })
                    .collect();
                let holder = leases
                    .get_opt(&format!("{RELEASE}-controller"))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec?.holder_identity);
                let all_ready = seen.len() == 2
                    && seen
                        .iter()
                        .all(|(_, i, ready)| *ready && i.as_deref() == Some(image));
                if all_ready && seen.iter().any(|(n, ..)| Some(n) == holder.as_ref()) {
                    Poll::Done(seen.into_iter().map(|(n, ..)| n).collect())
                } else {
                    Poll::Wait(format!("pods {seen:?}, Lease holder {holder:?}"))
                }
            },
        )
        .await
    }

    /// The controller pod (the Event's `reportingInstance`) that promoted generation
    /// `generation` of `name`.
    async fn promoter(&self, name: &str, generation: u64) -> Option<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("Promoted")
                    && e.regarding
                        .as_ref()
                        .is_some_and(|r| r.name.as_deref() == Some(name))
                    && e.note.as_ref().is_some_and(|n| {
                        n.starts_with(&format!("generation {generation} promoted:"))
                    })
            })?
            .reporting_instance
    }

    /// Checks that SiteCache `name` converged at `generation`, each of its generations made by
    /// one Job and handled once: its status (`request` answered), every status it was given
    /// (`log`), its Events, and what its prefix holds.
    async fn converged(&self, name: &str, generation: u64, request: Option<&str>, log: &StatusLog) {
        let sc = self
            .until(
                &format!("{name} converged at generation {generation}"),
                Duration::from_secs(60),
                async || match self.sitecache(name).await {
                    Some(sc)
                        if current(&sc) == Some(generation)
                            && sc.status.as_ref().is_some_and(|s| s.active_job.is_none())
                            && condition(&sc, "Ready") == Some("True")
                            && condition(&sc, "Reconciling").is_none() =>
                    {
                        Poll::Done(sc)
                    }
                    other => Poll::Wait(format!("{:?}", other.and_then(|sc| sc.status))),
                },
            )
            .await;
        let status = sc.status.clone().unwrap_or_default();
        ensure_eq!(self, status.phase, Some(sitecache::api::Phase::Ready));
        ensure_eq!(self, status.latest_generation, Some(generation), "{name}");
        ensure_eq!(self, status.consecutive_failures, 0, "{name}");
        ensure_eq!(
            self,
            status.last_handled_request.as_deref(),
            request,
            "{name}"
        );
        ensure_eq!(
            self,
            status.observed_generation,
            sc.metadata.generation,
            "{name}"
        );
        let last = status.last_snapshot.clone().unwrap_or_default();
        ensure_eq!(
            self,
            (last.generation, last.result),
            (generation, Some(SnapshotResult::Succeeded)),
            "{name}: {last:?}"
        );
        // Every generation retained, newest first, with no gap.
        let retained: Vec<u64> = status.generations.iter().map(|g| g.generation).collect();
        ensure_eq!(
            self,
            retained,
            (1..=generation).rev().collect::<Vec<_>>(),
            "{name}"
        );
        ensure!(
            self,
            status.expired_generations.is_empty(),
            "{name}: {:?}",
            status.expired_generations
        );
        for type_ in ["Stalled", "Reconciling"] {
            ensure_eq!(self, condition(&sc, type_), None, "{name}: {type_}");
        }
        ensure_eq!(self, condition(&sc, "Degraded"), Some("False"), "{name}");

        // No status it was ever given counted a failure, named a generation beyond the last, or
        // lost a promoted one.
        let statuses = log.of(&self.ns, name);
        ensure!(self, !statuses.is_empty(), "no status of {name} was seen");
        let mut promoted = 0;
        for (i, s) in statuses.iter().enumerate() {
            let failed = s.last_snapshot.as_ref().is_some_and(|l| {
                matches!(
                    l.result,
                    Some(SnapshotResult::Failed | SnapshotResult::Rejected)
                )
            });
            let now = s.current.as_ref().map_or(0, |c| c.generation);
            if s.consecutive_failures > 0
                || failed
                || s.latest_generation.unwrap_or(0) > generation
                || now < promoted
            {
                self.fail(&format!(
                    "status {i} of {name} (of {}): {s:#?}",
                    statuses.len()
                ))
                .await
            }
            promoted = now;
        }

        // One Job started and one promotion per generation, and no warning.
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let about: Vec<Event> = events
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("SiteCache") && r.name.as_deref() == Some(name)
                })
            })
            .collect();
        let count = |reason: &str| -> i32 {
            about
                .iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .map(|e| e.series.as_ref().map_or(1, |s| s.count))
                .sum()
        };
        let notes = |reason: &str| -> Vec<String> {
            about
                .iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .filter_map(|e| e.note.clone())
                .collect()
        };
        ensure_eq!(
            self,
            count("SnapshotStarted"),
            generation as i32,
            "{name}: {:?}",
            notes("SnapshotStarted")
        );
        ensure_eq!(
            self,
            count("Promoted"),
            generation as i32,
            "{name}: {:?}",
            notes("Promoted")
        );
        for n in 1..=generation {
            ensure!(
                self,
                notes("Promoted")
                    .iter()
                    .any(|note| note.starts_with(&format!("generation {n} promoted:"))),
                "{name}: no Promoted Event for generation {n}: {:?}",
                notes("Promoted")
            );
        }
        let warnings: Vec<String> = about
            .iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .map(|e| format!("{:?}: {:?}", e.reason, e.note))
            .collect();
        ensure!(self, warnings.is_empty(), "{name}: {warnings:?}");

        // The prefix holds exactly the generations the status names, and current.json names
        // the status's current one, whose archive is there.
        let s3 = support::s3().await;
        let keys = s3
            .list_keys(&self.bucket, &format!("{name}/generations/"))
            .await
            .expect("list the generations");
        let stored: BTreeSet<u64> = keys
            .iter()
            .filter_map(|k| k.split('/').nth(2)?.parse().ok())
            .collect();
        ensure_eq!(
            self,
            stored,
            (1..=generation).collect::<BTreeSet<_>>(),
            "{name}: {keys:?}"
        );
        for g in &status.generations {
            ensure!(
                self,
                keys.contains(&g.key),
                "{name}: {} is not there",
                g.key
            );
        }
        let stored = s3
            .get_bytes(&self.bucket, &format!("{name}/current.json"))
            .await
            .expect("current.json");
        let stored: sitecache::archive::Current = serde_json::from_slice(&stored).unwrap();
        let promoted = status.current.clone().expect("a current generation");
        ensure_eq!(
            self,
            (
                stored.manifest.generation,
                &stored.manifest.archive_key,
                &stored.manifest.sha256
            ),
            (promoted.generation, &promoted.key, &promoted.sha256),
            "{name}"
        );
    }
}

/// The images of `pod`'s agent containers (`restore-previous`, `snapshot`) that it has.
fn agent_images(pod: &Pod) -> BTreeMap<&'static str, String> {
    let spec = pod.spec.as_ref();
    let all = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers));
    let mut images = BTreeMap::new();
    for c in all {
        for agent in ["restore-previous", "snapshot"] {
            if c.name == agent {
                images.insert(agent, c.image.clone().unwrap_or_default());
            }
        }
    }
    images
}
