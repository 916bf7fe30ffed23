//! The fault soak (`make soak`; a short one in `make integration`): a fleet of SiteCaches on its
//! own control plane and MinIO, with the S3 fault proxy between MinIO and everything sitecache
//! runs (the controller and the snapshot Jobs), two controller replicas with leader election, and
//! on a seeded schedule: revision changes, on-demand requests, deletions under both policies,
//! SiteCaches whose prefixes lie inside others', and restarts of the leader, MinIO,
//! kube-apiserver and etcd. When the faults stop, every invariant is checked and every violation
//! printed; there must be none.
//!
//! `SOAK_MINUTES` (default 20), `SOAK_SITECACHES` (default 100), `SOAK_SEED` (default 1).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sitecache::api::{Phase, SiteCache};
use sitecache::storage::Location;
use sitecache_devtools::fault_proxy::{FaultKind, FaultRates};
use sitecache_devtools::job_runner::{JobRunner, JobRunnerConfig};
use sitecache_devtools::process::ManagedProcess;
use sitecache_devtools::{ControlPlane, FaultProxy, S3Server, control_plane, free_port};

use crate::controller::harness::{AGENT_IMAGE, warm};
use crate::support;

struct Config {
    minutes: f64,
    sitecaches: usize,
    seed: u64,
}

impl Config {
    fn from_env() -> Self {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_owned());
        Config {
            minutes: var("SOAK_MINUTES", "20").parse().expect("SOAK_MINUTES"),
            sitecaches: var("SOAK_SITECACHES", "100")
                .parse()
                .expect("SOAK_SITECACHES"),
            seed: var("SOAK_SEED", "1").parse().expect("SOAK_SEED"),
        }
    }
}

/// Each fault kind on this share of the requests while faults are on.
const FAULT_RATE: f64 = 0.02;

/// What the soak remembers of a SiteCache it made.
#[derive(Clone, Debug)]
struct Made {
    prefix: String,
    retain: bool,
    /// Refused by design: its prefix lies inside another's.
    overlapping: bool,
    deleted: bool,
    revision: u32,
    request: Option<String>,
}

struct World {
    dir: std::path::PathBuf,
    cp: ControlPlane,
    client: Client,
    ns: String,
    s3: S3Server,
    bucket: String,
    proxy: FaultProxy,
    controllers: HashMap<&'static str, ManagedProcess>,
    runner: Option<JobRunner>,
}

impl World {
    async fn start(cfg: &Config) -> World {
        let dir = support::run_dir().join("soak");
        let cp = ControlPlane::start(&dir.join("control-plane"))
            .await
            .unwrap_or_else(|e| panic!("the soak's control plane did not start: {e:#}"));
        let client = cp.client().await.unwrap();
        control_plane::install_crds(&client, &support::repo_path("crds"))
            .await
            .unwrap();
        let ns = control_plane::create_namespace(&client, "soak")
            .await
            .unwrap();
        let s3 = S3Server::start(&dir.join("s3"))
            .await
            .unwrap_or_else(|e| panic!("the soak's MinIO did not start: {e:#}"));
        let bucket = s3.create_bucket("soak").await.unwrap();
        let rates = FaultRates::each(
            FAULT_RATE,
            Duration::from_millis(500),
            Duration::from_secs(5),
        );
        let proxy = FaultProxy::start(&s3.endpoint(), cfg.seed, rates)
            .await
            .unwrap();
        let runner = JobRunner::start(
            client.clone(),
            JobRunnerConfig {
                namespace: Some(ns.clone()),
                label_selector: sitecache::controller::jobs::JOB_SELECTOR.to_owned(),
                images: HashMap::from([(
                    AGENT_IMAGE.to_owned(),
                    env!("CARGO_BIN_EXE_sitecache").into(),
                )]),
                env: s3.job_env(),
                work_dir: dir.join("jobs"),
            },
        );
        let mut world = World {
            dir,
            cp,
            client,
            ns,
            s3,
            bucket,
            proxy,
            controllers: HashMap::new(),
            runner: Some(runner),
        };
        for id in ["a", "b"] {
            world.start_controller(id);
        }
        world
    }

    fn start_controller(&mut self, id: &'static str) {
        let port = free_port().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitecache"));
        cmd.arg("controller")
            .args(["--namespace", &self.ns])
            .args(["--default-bucket", &self.bucket])
            .args(["--endpoint", &self.proxy.endpoint()])
            .args(["--region", "us-east-1"])
            .arg("--path-style")
            .args(["--agent-image", AGENT_IMAGE])
            .args(["--max-concurrent-snapshots", "4"])
            .args(["--failure-backoff", "5s"])
            .args(["--failure-backoff-max", "30s"])
            .args(["--listen-address", &format!("127.0.0.1:{port}")])
            .arg("--leader-elect")
            .args(["--leader-election-namespace", &self.ns])
            .args(["--leader-election-identity", id])
            .args(["--leader-election-duration", "4s"])
            .env("KUBECONFIG", self.cp.kubeconfig())
            .env("RUST_LOG", "info")
            .envs(self.s3.aws_env())
            .env_remove("AWS_ENDPOINT_URL_S3");
        let log = self.dir.join(format!("controller-{id}.log"));
        let process = ManagedProcess::spawn(&format!("controller-{id}"), cmd, &log).unwrap();
        self.controllers.insert(id, process);
    }

    fn api(&self) -> Api<SiteCache> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The identity holding the leader Lease, if any.
    async fn leader(&self) -> Option<&'static str> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), &self.ns);
        let list = leases.list(&Default::default()).await.ok()?;
        let holder = list
            .items
            .iter()
            .find_map(|l| l.spec.as_ref()?.holder_identity.clone())?;
        ["a", "b"].into_iter().find(|id| *id == holder)
    }
}

/// Retries a Kubernetes call through API server and etcd restarts.
async fn retry<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn spec(made: &Made, site: &str) -> Value {
    json!({
        "site": site,
        "warm": warm("", 3),
        "source": {"revision": format!("r{}", made.revision)},
        "storage": {"prefix": made.prefix},
        "retention": {"keep": 2},
        "deletionPolicy": if made.retain { "Retain" } else { "Delete" },
    })
}

async fn create(world: &World, name: &str, made: &Made) {
    let sc: SiteCache = serde_json::from_value(json!({
        "apiVersion": "sitecache.dev/v1alpha1", "kind": "SiteCache",
        "metadata": {"name": name},
        "spec": spec(made, name),
    }))
    .unwrap();
    let api = world.api();
    retry("create a SiteCache", || {
        let (api, sc) = (api.clone(), sc.clone());
        async move {
            match api.create(&PostParams::default(), &sc).await {
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                other => other.map(|_| ()),
            }
        }
    })
    .await;
}

async fn patch(world: &World, name: &str, patch: Value) {
    let api = world.api();
    retry("patch a SiteCache", || {
        let (api, patch) = (api.clone(), patch.clone());
        async move {
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the fault soak: make soak (a short one runs in make integration)"]
async fn soak() {
    let cfg = Config::from_env();
    let started = Instant::now();
    let mut world = World::start(&cfg).await;
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let mut made: BTreeMap<String, Made> = BTreeMap::new();
    let mut ops: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut disruptions: BTreeMap<&'static str, u64> = BTreeMap::new();

    // The fleet; then one in ten more, each with its prefix inside one of theirs, made once that
    // one has claimed its prefix (the claim that comes first stands), and refused.
    let mut next_id = 0usize;
    let mut add =
        |made: &mut BTreeMap<String, Made>, rng: &mut fastrand::Rng, outer: Option<&str>| {
            let name = format!("s{next_id:04}");
            next_id += 1;
            let prefix = match outer {
                Some(outer) => format!("{}nested-{name}/", made[outer].prefix),
                None => format!("{name}/"),
            };
            let m = Made {
                prefix,
                retain: rng.bool(),
                overlapping: outer.is_some(),
                deleted: false,
                revision: 1,
                request: None,
            };
            made.insert(name.clone(), m.clone());
            (name, m)
        };
    for _ in 0..cfg.sitecaches {
        let (name, m) = add(&mut made, &mut rng, None);
        create(&world, &name, &m).await;
        *ops.entry("create").or_default() += 1;
    }
    let outers: Vec<String> = made.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    for outer in &outers {
        while !claimed(&world, &made[outer].prefix).await {
            assert!(
                Instant::now() < deadline,
                "{outer} never claimed its prefix"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for _ in 0..cfg.sitecaches.div_ceil(10) {
        let outer = &outers[rng.usize(..outers.len())];
        let (name, m) = add(&mut made, &mut rng, Some(outer));
        create(&world, &name, &m).await;
        *ops.entry("create-overlapping").or_default() += 1;
    }

    // The faults and the disruptions, for SOAK_MINUTES.
    let run_for = Duration::from_secs_f64(cfg.minutes * 60.0);
    let kinds = ["leader", "minio", "kube-apiserver", "etcd"];
    let every = (run_for / 6).max(Duration::from_secs(8));
    let mut next_disruption = Instant::now() + every / 2;
    let mut k = 0;
    let until = Instant::now() + run_for;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(300 + rng.u64(..1200))).await;
        let live: Vec<String> = made
            .iter()
            .filter(|(_, m)| !m.deleted && !m.overlapping)
            .map(|(n, _)| n.clone())
            .collect();
        if live.is_empty() {
            break;
        }
        let name = live[rng.usize(..live.len())].clone();
        match rng.u32(..10) {
            0..=3 => {
                let m = made.get_mut(&name).unwrap();
                m.revision += 1;
                let rev = format!("r{}", m.revision);
                patch(
                    &world,
                    &name,
                    json!({"spec": {"source": {"revision": rev}}}),
                )
                .await;
                *ops.entry("revision-change").or_default() += 1;
            }
            4..=6 => {
                let token = format!("t{}", rng.u64(..));
                made.get_mut(&name).unwrap().request = Some(token.clone());
                let annotations = json!({"sitecache.dev/snapshot-request": token});
                patch(
                    &world,
                    &name,
                    json!({"metadata": {"annotations": annotations}}),
                )
                .await;
                *ops.entry("on-demand-request").or_default() += 1;
            }
            7 => {
                // Not one another SiteCache's prefix lies in: its objects are its own.
                let nested = made.values().any(|m| {
                    m.overlapping && !m.deleted && m.prefix.starts_with(&made[&name].prefix)
                });
                if !nested {
                    let api = world.api();
                    retry("delete a SiteCache", || {
                        let api = api.clone();
                        let name = name.clone();
                        async move {
                            match api.delete(&name, &DeleteParams::default()).await {
                                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                                other => other.map(|_| ()),
                            }
                        }
                    })
                    .await;
                    made.get_mut(&name).unwrap().deleted = true;
                    *ops.entry(if made[&name].retain {
                        "delete-retain"
                    } else {
                        "delete"
                    })
                    .or_default() += 1;
                }
            }
            8 => {
                let (name, m) = add(&mut made, &mut rng, None);
                create(&world, &name, &m).await;
                *ops.entry("create").or_default() += 1;
            }
            _ => {}
        }
        if Instant::now() >= next_disruption {
            let kind = kinds[k % kinds.len()];
            k += 1;
            next_disruption = Instant::now() + every;
            match kind {
                "leader" => {
                    let id = world.leader().await.unwrap_or("a");
                    world.controllers.remove(id);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    world.start_controller(id);
                }
                "minio" => {
                    world.s3.stop();
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    world.s3.restart().await.expect("MinIO restarts");
                }
                "kube-apiserver" => world.cp.restart_apiserver().await.expect("restart"),
                _ => world.cp.restart_etcd().await.expect("restart"),
            }
            *disruptions.entry(kind).or_default() += 1;
        }
    }
    world.proxy.set_enabled(false);
    let faults_stopped = Instant::now();
    println!(
        "soak: {:.1} min of faults, {} SiteCaches made",
        faults_stopped.duration_since(started).as_secs_f64() / 60.0,
        made.len()
    );

    // Convergence: every live SiteCache Ready at its latest revision and request, the deleted
    // ones gone, the overlapping ones refused.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut waiting: Vec<String>;
    loop {
        let list = retry("list SiteCaches", || {
            let api = world.api();
            async move { api.list(&Default::default()).await }
        })
        .await;
        let by_name: HashMap<String, SiteCache> =
            list.items.into_iter().map(|s| (s.name_any(), s)).collect();
        waiting = made
            .iter()
            .filter(|(name, m)| !converged(m, by_name.get(*name)))
            .map(|(n, _)| n.clone())
            .collect();
        if waiting.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let converge_secs = faults_stopped.elapsed().as_secs();

    // At rest: what the fleet costs when nothing happens.
    let rest = Duration::from_secs(20);
    let (before, api_before) = (world.proxy.requests(), api_requests(&world).await);
    tokio::time::sleep(rest).await;
    let at_rest = world.proxy.requests() - before;
    let api_at_rest = api_requests(&world).await - api_before;

    let mut violations: Vec<String> = waiting
        .iter()
        .map(|n| format!("{n}: did not converge within 600 s after the faults stopped"))
        .collect();
    check(&world, &made, &mut violations).await;
    let failures = failures_counted_once(&world, &mut violations).await;
    let live = made
        .values()
        .filter(|m| !m.deleted && !m.overlapping)
        .count();
    if at_rest > live as u64 {
        violations.push(format!(
            "{at_rest} S3 requests in {rest:?} at rest, for {live} SiteCaches"
        ));
    }
    // Two replicas renewing and trying the Lease every 2 s, and the checks' own reads.
    if api_at_rest > 60 + live as u64 {
        violations.push(format!(
            "{api_at_rest} API requests in {rest:?} at rest, for {live} SiteCaches"
        ));
    }

    let injected: BTreeMap<&str, u64> = world
        .proxy
        .injected()
        .into_iter()
        .map(|(k, n)| (k.name(), n))
        .collect();
    let hours = started.elapsed().as_secs_f64() / 3600.0;
    println!("soak: faults injected by kind: {injected:?}");
    println!("soak: disruptions: {disruptions:?}");
    println!("soak: operations: {ops:?}");
    println!("soak: snapshot failures and rejections recorded: {failures}");
    println!(
        "soak: S3 requests through the proxy: {} ({:.0} per SiteCache-hour over the run), {} at \
         rest in {}s; API requests at rest: {}; converged {}s after the faults stopped",
        world.proxy.requests(),
        world.proxy.requests() as f64 / made.len().max(1) as f64 / hours,
        at_rest,
        rest.as_secs(),
        api_at_rest,
        converge_secs
    );
    println!("soak: violations: {}", violations.len());
    for v in &violations {
        println!("  {v}");
    }
    for kind in [
        FaultKind::SlowDown,
        FaultKind::InternalError,
        FaultKind::Latency,
    ] {
        assert!(
            injected.contains_key(kind.name()),
            "no {kind:?} was injected: the soak did not soak"
        );
    }
    assert!(violations.is_empty(), "{} violations", violations.len());
    if let Some(runner) = world.runner.take() {
        runner.stop().await;
    }
}

/// Every snapshot failure or rejection is announced once (one Warning Event, never repeated),
/// through the leader handovers and restarts: the Events come from the same announcements as the
/// metrics. Returns how many were announced.
async fn failures_counted_once(world: &World, violations: &mut Vec<String>) -> usize {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::namespaced(world.client.clone(), &world.ns);
    let list = retry("list Events", || {
        let events = events.clone();
        async move { events.list(&Default::default()).await }
    })
    .await;
    let mut counts: BTreeMap<String, i32> = BTreeMap::new();
    for e in list.items {
        if e.type_.as_deref() != Some("Warning") || e.action.as_deref() != Some("Snapshot") {
            continue;
        }
        let note = e.note.clone().unwrap_or_default();
        let regarding = e.regarding.as_ref().and_then(|r| r.name.clone());
        let mut words = note.split_whitespace();
        // "Job <name> failed: …", "Job <name> disappeared …", "generation <n> was not promoted: …"
        let key = match (words.next(), words.next(), regarding) {
            (Some("Job"), Some(job), _) => job.to_owned(),
            (Some("generation"), Some(n), Some(sc)) => format!("{sc}-g{n}"),
            _ => continue,
        };
        *counts.entry(key).or_default() += e.series.map_or(1, |s| s.count);
    }
    for (job, n) in &counts {
        if *n > 1 {
            violations.push(format!("the failure of {job} was announced {n} times"));
        }
    }
    counts.len()
}

/// Requests the API server has served (every client), from its metrics.
async fn api_requests(world: &World) -> u64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = world.client.request_text(req).await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Whether a SiteCache's ownership marker is at `prefix` (read from MinIO, without faults).
async fn claimed(world: &World, prefix: &str) -> bool {
    let loc = Location::new(&world.bucket, prefix).unwrap();
    world
        .s3
        .get_bytes(&world.bucket, &loc.owner_key())
        .await
        .is_ok()
}

/// Whether a SiteCache reached the state its last changes call for.
fn converged(m: &Made, sc: Option<&SiteCache>) -> bool {
    match sc {
        None => m.deleted,
        Some(_) if m.deleted => false,
        Some(sc) => {
            let Some(status) = &sc.status else {
                return false;
            };
            if m.overlapping {
                return status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "PrefixOverlaps");
            }
            let revision = format!("r{}", m.revision);
            status.phase == Some(Phase::Ready)
                && status.active_job.is_none()
                && status
                    .current
                    .as_ref()
                    .and_then(|c| c.source_revision.as_deref())
                    == Some(revision.as_str())
                && (m.request.is_none() || status.last_handled_request == m.request)
        }
    }
}

/// The invariants, checked against MinIO directly (no faults).
async fn check(world: &World, made: &BTreeMap<String, Made>, violations: &mut Vec<String>) {
    let api = world.api();
    for (name, m) in made {
        let loc = Location::new(&world.bucket, &m.prefix).unwrap();
        let keys = world
            .s3
            .list_keys(&world.bucket, &m.prefix)
            .await
            .unwrap_or_default();
        if m.overlapping {
            if keys.iter().any(|k| k == &loc.owner_key()) {
                violations.push(format!("{name}: a refused SiteCache claimed {}", m.prefix));
            }
            continue;
        }
        if m.deleted && !m.retain {
            let left: Vec<_> = keys
                .iter()
                .filter(|k| {
                    !made
                        .values()
                        .any(|o| o.overlapping && k.starts_with(&o.prefix))
                })
                .collect();
            if !left.is_empty() {
                violations.push(format!("{name} (Delete, deleted): objects left: {left:?}"));
            }
            continue;
        }
        // current.json restores and verifies, live or retained.
        if let Err(e) = restore_ok(world, &loc, None) {
            violations.push(format!(
                "{name}: the current generation does not restore: {e}"
            ));
        }
        if m.deleted {
            continue;
        }
        let Ok(sc) = api.get(name).await else {
            violations.push(format!("{name}: cannot be read"));
            continue;
        };
        let status = sc.status.clone().unwrap_or_default();
        let current: Option<Value> = world
            .s3
            .get_bytes(&world.bucket, &loc.current_key())
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match (&status.current, &current) {
            (Some(s), Some(c)) => {
                if c["generation"] != json!(s.generation)
                    || c["sha256"] != json!(s.sha256)
                    || c["archiveKey"] != json!(s.key)
                {
                    violations.push(format!(
                        "{name}: status.current (generation {}) disagrees with current.json \
                         (generation {})",
                        s.generation, c["generation"]
                    ));
                }
            }
            (s, c) => violations.push(format!(
                "{name}: status.current {:?}, current.json {:?}",
                s.as_ref().map(|g| g.generation),
                c.as_ref().map(|c| c["generation"].clone())
            )),
        }
        // Every retained generation is there and verifies.
        for g in &status.generations {
            if let Err(e) = restore_ok(world, &loc, Some(g.generation)) {
                violations.push(format!(
                    "{name}: retained generation {} does not restore: {e}",
                    g.generation
                ));
            }
        }
    }
}

/// Restores (strict, straight from MinIO) into a scratch directory.
fn restore_ok(world: &World, loc: &Location, generation: Option<u64>) -> Result<(), String> {
    let dest = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitecache"));
    cmd.envs(world.s3.aws_env())
        .env("SITECACHE_PATH_STYLE", "1")
        .args(["restore", "--strict", "--url", &loc.to_string(), "--dest"])
        .arg(dest.path().join("d"));
    if let Some(n) = generation {
        cmd.args(["--generation", &n.to_string()]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() && Path::new(&dest.path().join("d/warmed")).exists() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}
