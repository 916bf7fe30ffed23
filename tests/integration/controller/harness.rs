//! A controller under test: the real `sitecache controller` binary against the shared control
//! plane, watching one fresh namespace, storing into a fresh bucket, with the local job runner
//! executing its snapshot Jobs (the `sitecache` binary stands in for the agent image).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sitecache::api::{SiteCache, SiteCacheStatus};
use sitecache_devtools::job_runner::{JobRunner, JobRunnerConfig};
use sitecache_devtools::process::{ManagedProcess, tail};
use sitecache_devtools::{S3Server, Store, free_port};

use crate::support;

/// The image name the controller puts in its Jobs' agent containers; the job runner maps it to
/// the `sitecache` binary under test.
pub const AGENT_IMAGE: &str = "sitecache-agent:under-test";

pub struct Options {
    pub max_concurrent: u32,
    pub failure_backoff: &'static str,
    /// `--retention-grace`: 0 s unless a test is about it, so that retention is seen at once.
    pub retention_grace: &'static str,
    /// Run a private S3 server (for tests that stop it).
    pub own_s3: bool,
    /// Start the controller with leader election (identity `a`, a 4 s lease).
    pub leader_elect: bool,
    /// Start the controller with flags at once; without, the test starts it (for example with
    /// [`Harness::start_controller_with_env`]).
    pub start_controller: bool,
    /// More flags for the controller (after the harness's own).
    pub extra_args: Vec<String>,
    /// More environment for the controller (after the S3 server's; for example other
    /// credentials).
    pub controller_env: Vec<(String, String)>,
    /// Give every container of the snapshot pods the storage credentials, as a pod identity
    /// would; without, only what the pod spec gives them (a Secret).
    pub pod_credentials: bool,
    /// The S3 endpoint the controller calls (for example a fault proxy in front of the
    /// server); the server's own by default. The snapshot Jobs always call the server.
    pub controller_endpoint: Option<String>,
    /// Where the controller runs (another cluster, a namespace, a bucket of the test's choice);
    /// by default a fresh namespace of the shared control plane and a fresh bucket.
    pub place: Option<Place>,
    /// Which S3 implementation stores the caches (MinIO by default).
    pub store: Store,
    /// Store in MinIO serving TLS with a private CA's certificate ([`support::private_store`])
    /// instead. The snapshot Jobs' agents get that CA (`SITECACHE_CA_BUNDLE`, as the Job's
    /// mount of `spec.snapshot.caBundle` would give it); the controller only what its flags say.
    pub private_ca: bool,
}

/// Where a harness's controller works, for tests with more than one cluster.
pub struct Place {
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    /// An existing bucket of the shared S3 server.
    pub bucket: String,
    /// Names the harness's directory (logs), unique in the run.
    pub label: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_concurrent: 4,
            failure_backoff: "5s",
            retention_grace: "0s",
            own_s3: false,
            leader_elect: false,
            start_controller: true,
            extra_args: Vec::new(),
            controller_env: Vec::new(),
            pod_credentials: true,
            controller_endpoint: None,
            place: None,
            store: Store::Minio,
            private_ca: false,
        }
    }
}

enum S3 {
    Shared(&'static S3Server),
    Own(Box<S3Server>),
    Private(&'static support::PrivateStore),
}

pub struct Harness {
    pub client: Client,
    pub ns: String,
    pub bucket: String,
    pub dir: PathBuf,
    kubeconfig: PathBuf,
    s3: S3,
    opts: Options,
    controller: Option<ManagedProcess>,
    metrics_port: u16,
    runner: Option<JobRunner>,
}

impl Harness {
    pub async fn start(mut opts: Options) -> Harness {
        let place = opts.place.take();
        let (client, ns, kubeconfig, bucket, label) = match place {
            Some(p) => (p.client, p.namespace, p.kubeconfig, Some(p.bucket), p.label),
            None => {
                let (client, ns) = support::kube().await;
                let kubeconfig = support::control_plane().await.kubeconfig().to_path_buf();
                (client, ns.clone(), kubeconfig, None, ns)
            }
        };
        let dir = support::run_dir().join("controller").join(&label);
        std::fs::create_dir_all(&dir).unwrap();
        let s3 = if opts.private_ca {
            S3::Private(support::private_store().await)
        } else if opts.own_s3 {
            S3::Own(Box::new(
                S3Server::start_store(opts.store, &dir.join("s3"))
                    .await
                    .unwrap_or_else(|e| panic!("a private S3 server did not start: {e:#}")),
            ))
        } else {
            S3::Shared(support::s3_of(opts.store).await)
        };
        let mut h = Harness {
            client,
            kubeconfig,
            bucket: String::new(),
            dir,
            s3,
            opts,
            controller: None,
            metrics_port: 0,
            runner: None,
            ns,
        };
        h.bucket = match bucket {
            Some(b) => b,
            None => h.s3().create_bucket("ctl").await.expect("create bucket"),
        };
        h.start_runner();
        if h.opts.start_controller {
            h.start_controller();
        }
        h
    }

    pub fn s3(&self) -> &S3Server {
        match &self.s3 {
            S3::Shared(s) => s,
            S3::Own(s) => s,
            S3::Private(p) => &p.s3,
        }
    }

    pub fn s3_mut(&mut self) -> &mut S3Server {
        match &mut self.s3 {
            S3::Shared(_) | S3::Private(_) => {
                panic!("the shared S3 server is not this test's to stop")
            }
            S3::Own(s) => s,
        }
    }

    fn start_runner(&mut self) {
        let mut env = self.s3().job_env();
        if !self.opts.pod_credentials {
            env.retain(|(k, _)| k != "AWS_ACCESS_KEY_ID" && k != "AWS_SECRET_ACCESS_KEY");
        }
        if let S3::Private(p) = &self.s3 {
            env.push((
                "SITECACHE_CA_BUNDLE".to_owned(),
                p.ca_file.display().to_string(),
            ));
        }
        self.runner = Some(JobRunner::start(
            self.client.clone(),
            JobRunnerConfig {
                namespace: Some(self.ns.clone()),
                label_selector: sitecache::controller::jobs::JOB_SELECTOR.to_owned(),
                images: HashMap::from([(
                    AGENT_IMAGE.to_owned(),
                    PathBuf::from(env!("CARGO_BIN_EXE_sitecache")),
                )]),
                env,
                work_dir: self.dir.join("jobs"),
            },
        ));
    }

    /// Restarts the controller with `extra_args` in place of the options' (after the
    /// harness's own flags).
    pub fn restart_controller_with(&mut self, extra_args: &[&str]) {
        self.stop_controller();
        self.opts.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        self.start_controller();
    }

    /// Restarts the controller calling `endpoint` for storage (`None`: the server itself).
    pub fn restart_controller_at(&mut self, endpoint: Option<String>) {
        self.stop_controller();
        self.opts.controller_endpoint = endpoint;
        self.start_controller();
    }

    /// Starts (or restarts) the controller process.
    pub fn start_controller(&mut self) {
        let (process, port) = self.spawn_controller("a");
        self.controller = Some(process);
        self.metrics_port = port;
    }

    /// Spawns a controller process (`identity` names it in the Lease and its log file) and
    /// returns it with its metrics port.
    pub fn spawn_controller(&self, identity: &str) -> (ManagedProcess, u16) {
        let port = free_port().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitecache"));
        cmd.arg("controller")
            .args(["--namespace", &self.ns])
            .args(["--default-bucket", &self.bucket])
            .args([
                "--endpoint",
                self.opts
                    .controller_endpoint
                    .as_deref()
                    .unwrap_or(&self.s3().endpoint()),
            ])
            .args(["--region", "us-east-1"])
            .arg("--path-style")
            .args(["--agent-image", AGENT_IMAGE])
            .args([
                "--max-concurrent-snapshots",
                &self.opts.max_concurrent.to_string(),
            ])
            .args(["--failure-backoff", self.opts.failure_backoff])
            .args(["--retention-grace", self.opts.retention_grace])
            .args(["--resync", "1h"])
            .args(["--listen-address", &format!("127.0.0.1:{port}")])
            .args(&self.opts.extra_args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .envs(self.s3().aws_env())
            .envs(self.opts.controller_env.iter().map(|(k, v)| (k, v)))
            .env_remove("AWS_ENDPOINT_URL_S3");
        if self.opts.leader_elect {
            cmd.arg("--leader-elect")
                .args(["--leader-election-namespace", &self.ns])
                .args(["--leader-election-identity", identity])
                .args(["--leader-election-duration", "4s"]);
        }
        let log = self.dir.join(format!("controller-{identity}.log"));
        let process = ManagedProcess::spawn(&format!("controller-{identity}"), cmd, &log)
            .expect("spawn the controller");
        (process, port)
    }

    /// Starts the controller as a Deployment would: `sitecache controller` and no flag, configured
    /// by `env` alone and acting as the identity of `kubeconfig`. Storage credentials come from
    /// the S3 server's environment (IRSA or Pod Identity would provide them in a cluster).
    pub fn start_controller_with_env(&mut self, kubeconfig: &Path, env: &[(String, String)]) {
        let port = free_port().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitecache"));
        cmd.arg("controller")
            .envs(self.s3().aws_env())
            .env_remove("AWS_ENDPOINT_URL_S3")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("SITECACHE_LISTEN_ADDRESS", format!("127.0.0.1:{port}"))
            .env("KUBECONFIG", kubeconfig);
        let log = self.dir.join("controller-a.log");
        let process =
            ManagedProcess::spawn("controller-a", cmd, &log).expect("spawn the controller");
        self.controller = Some(process);
        self.metrics_port = port;
    }

    /// Starts the controller with the storage credentials of MinIO user `user` (the snapshot Jobs
    /// keep the root user's).
    pub fn start_controller_as(&mut self, user: &str, secret: &str) {
        self.use_credentials_of(user, secret);
        self.start_controller();
    }

    /// From the next start on, the controller uses the storage credentials of MinIO user `user`.
    pub fn use_credentials_of(&mut self, user: &str, secret: &str) {
        self.opts.controller_env = self
            .s3()
            .aws_env_as(user, secret)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    }

    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.kill();
        }
    }

    pub async fn metrics(&self) -> String {
        metrics_at(self.metrics_port).await
    }

    /// Waits (boundedly) until the controller's `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        wait_ready_at(self.metrics_port).await
    }
}

/// A fault proxy in front of the shared S3 server that injects nothing until a test asks it to
/// (`lose_responses`, `not_implemented`); its endpoint goes to [`Options::controller_endpoint`].
pub async fn quiet_proxy(seed: u64) -> sitecache_devtools::FaultProxy {
    let s3 = support::s3().await;
    sitecache_devtools::FaultProxy::start(
        &s3.endpoint(),
        seed,
        sitecache_devtools::fault_proxy::FaultRates::none(),
    )
    .await
    .expect("start the fault proxy")
}

/// Polls `check` until it holds, for at most `timeout`, and panics naming `what` if it never
/// does: the one definition of "eventually" for the tests' waits on what is not a SiteCache's
/// status (objects in the bucket, Jobs, metrics); [`Harness::wait`] is the one for a SiteCache.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "not {what} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Waits up to 10 s until `/readyz` on `port` answers 200; panics with the last answer.
pub async fn wait_ready_at(port: u16) {
    get_ok(&format!("http://127.0.0.1:{port}/readyz")).await;
}

/// The metrics of the controller serving on `port`.
pub async fn metrics_at(port: u16) -> String {
    get_ok(&format!("http://127.0.0.1:{port}/metrics")).await
}

/// GETs `url` until it answers 200 (for up to 10 s) and returns the body; panics with the last
/// status and error.
async fn get_ok(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", url])
            .output()
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
        if code == "200" {
            return body.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "GET {url} answered {code:?}, not 200: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Harness {
    pub fn api(&self) -> Api<SiteCache> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn create(&self, name: &str, spec: Value) -> SiteCache {
        let sc: SiteCache = serde_json::from_value(json!({
            "apiVersion": "sitecache.dev/v1alpha1",
            "kind": "SiteCache",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("a SiteCache");
        self.api()
            .create(&PostParams::default(), &sc)
            .await
            .unwrap_or_else(|e| panic!("create SiteCache {name}: {e}"))
    }

    pub async fn patch(&self, name: &str, patch: Value) {
        self.api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("patch SiteCache {name}: {e}"));
    }

    pub async fn request_snapshot(&self, name: &str, token: &str) {
        self.patch(
            name,
            json!({"metadata": {"annotations": {"sitecache.dev/snapshot-request": token}}}),
        )
        .await;
    }

    /// Requests a snapshot and waits until the controller has answered the request (with a
    /// promotion or a failure).
    pub async fn request_and_wait(&self, name: &str, token: &str) -> SiteCache {
        self.request_snapshot(name, token).await;
        self.wait(
            name,
            &format!("answering request {token}"),
            Duration::from_secs(60),
            |sc| {
                sc.status
                    .as_ref()
                    .and_then(|s| s.last_handled_request.as_deref())
                    == Some(token)
            },
        )
        .await
    }

    pub async fn delete(&self, name: &str) {
        self.api()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete SiteCache {name}: {e}"));
    }

    /// Creates snapshot Job `<name>-g<generation>` for SiteCache `name` by hand, with the labels
    /// and owner the controller's own Jobs carry, running `script` (as the site's code could):
    /// the controller handles it like one of its own when it finishes.
    pub async fn create_job(&self, name: &str, generation: u64, script: &str) {
        let sc = self.api().get(name).await.expect("get SiteCache");
        let labels = json!({
            "app.kubernetes.io/managed-by": "sitecache",
            "sitecache.dev/uid": sc.uid().unwrap(),
            "sitecache.dev/generation": generation.to_string(),
        });
        let job: Job = serde_json::from_value(json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": format!("{name}-g{generation}"),
                "labels": labels,
                "ownerReferences": [{
                    "apiVersion": "sitecache.dev/v1alpha1", "kind": "SiteCache",
                    "name": name, "uid": sc.uid().unwrap(), "controller": true,
                }],
            },
            "spec": {"backoffLimit": 0, "template": {
                "metadata": {"labels": labels},
                "spec": {"restartPolicy": "Never", "containers": [
                    {"name": "snapshot", "image": "site:test", "command": ["sh", "-c", script]}
                ]}
            }}
        }))
        .expect("a Job");
        self.jobs()
            .create(&PostParams::default(), &job)
            .await
            .unwrap_or_else(|e| panic!("create Job {name}-g{generation}: {e}"));
    }

    /// Runs `sitecache restore --strict` of `url` into `dest`, as a runner does, with the S3
    /// server's credentials; returns its result line (panics if it failed).
    pub fn restore_into(&self, url: &str, dest: &Path) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_sitecache"))
            .args(["restore", "--strict", "--url", url, "--dest"])
            .arg(dest)
            .envs(self.s3().aws_env())
            .env("SITECACHE_PATH_STYLE", "true")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The archive key generation `n` under `prefix` committed (its manifest's).
    pub async fn archive_key_of(&self, prefix: &str, n: u64) -> String {
        let manifest = self
            .get(&format!("{prefix}generations/{n:020}/manifest.json"))
            .await
            .unwrap_or_else(|| panic!("generation {n} under {prefix} is not committed"));
        let manifest: Value = serde_json::from_slice(&manifest).unwrap();
        manifest["archiveKey"].as_str().unwrap().to_owned()
    }

    /// Writes an object into the test's bucket.
    pub async fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        self.s3()
            .client()
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body.into().into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    /// The content of an object in the test's bucket, if it exists.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.s3().get_bytes(&self.bucket, key).await.ok()
    }

    /// Polls `name` until `pred` holds; on timeout, fails with the object, the controller's log
    /// and the job runner's logs.
    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&SiteCache) -> bool,
    ) -> SiteCache {
        let deadline = Instant::now() + timeout;
        loop {
            let sc = self.api().get_opt(name).await.expect("get SiteCache");
            if let Some(sc) = &sc
                && pred(sc)
            {
                return sc.clone();
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "SiteCache {name}: not {what} after {timeout:?}; it is:\n{}",
                    serde_json::to_string_pretty(&sc).unwrap()
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Waits until `name` no longer exists.
    pub async fn wait_gone(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some(sc) = self.api().get_opt(name).await.expect("get SiteCache") {
            if Instant::now() > deadline {
                self.fail(&format!(
                    "SiteCache {name} still exists after {timeout:?}:\n{}",
                    serde_json::to_string_pretty(&sc).unwrap()
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Waits until `generation` is promoted, Ready and Fresh.
    pub async fn wait_promoted(&self, name: &str, generation: u64) -> SiteCache {
        self.wait(
            name,
            &format!("promoted at generation {generation}"),
            Duration::from_secs(60),
            |sc| current(sc) == Some(generation) && condition(sc, "Ready") == Some("True"),
        )
        .await
    }

    pub async fn fail(&self, message: &str) -> ! {
        let mut report = format!(
            "{message}\n--- controller log (tail) ---\n{}",
            tail(&self.dir.join("controller-a.log"), 6000)
        );
        let mut logs: Vec<_> = walk(&self.dir.join("jobs"));
        logs.sort();
        for log in logs.iter().rev().take(6) {
            report.push_str(&format!("\n--- {} ---\n{}", log.display(), tail(log, 1500)));
        }
        let jobs = self
            .jobs()
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        for j in jobs {
            report.push_str(&format!(
                "\n--- Job {} status ---\n{}",
                j.name_any(),
                serde_json::to_string(&j.status).unwrap()
            ));
        }
        panic!("{report}");
    }

    /// Keys under `prefix` in the test's bucket.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.s3()
            .list_keys(&self.bucket, prefix)
            .await
            .expect("list keys")
    }

    /// Generation numbers with objects under `prefix`.
    pub async fn stored_generations(&self, prefix: &str) -> Vec<u64> {
        let mut gens: Vec<u64> = self
            .keys(&format!("{prefix}generations/"))
            .await
            .iter()
            .filter_map(|k| k.split('/').rev().nth(1)?.parse().ok())
            .collect();
        gens.dedup();
        gens
    }

    /// The Events about SiteCache `name`.
    pub async fn events_about(&self, name: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect()
    }

    /// Reasons of the Events about SiteCache `name`.
    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        let events = self.events_about(name).await;
        events.into_iter().filter_map(|e| e.reason).collect()
    }

    /// How many times an Event with `reason` was published about SiteCache `name` (a repeated
    /// Event is one object whose `series.count` grows).
    pub async fn event_count(&self, name: &str, reason: &str) -> i32 {
        let events = self.events_about(name).await;
        events
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.series.map_or(1, |s| s.count))
            .sum()
    }

    /// Starts recording every status SiteCache `name` is given, in order, from now on.
    pub fn record_statuses(&self, name: &str) -> StatusLog {
        let api = self.api();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let seen = Arc::new(Mutex::new(Vec::<SiteCacheStatus>::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).boxed();
            while let Some(event) = events.next().await {
                let sc = match event {
                    Ok(watcher::Event::Apply(sc) | watcher::Event::InitApply(sc)) => sc,
                    _ => continue,
                };
                let status = sc.status.unwrap_or_default();
                let mut seen = log.lock().unwrap();
                if seen.last() != Some(&status) {
                    seen.push(status);
                }
            }
        });
        StatusLog { seen, task }
    }

    pub async fn shutdown(mut self) {
        self.stop_controller();
        if let Some(r) = self.runner.take() {
            r.stop().await;
        }
    }
}

/// The statuses a SiteCache went through, as a watch saw them: each write of a new status is one
/// entry (a write of the same status, or a change of metadata only, is none).
pub struct StatusLog {
    seen: Arc<Mutex<Vec<SiteCacheStatus>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusLog {
    /// The statuses seen so far, the empty one before the first write included.
    pub fn seen(&self) -> Vec<SiteCacheStatus> {
        self.seen.lock().unwrap().clone()
    }

    /// The statuses seen until the log's watch has caught up with `sc` (read by another
    /// request, which the watch may lag behind).
    pub async fn seen_up_to(&self, sc: &SiteCache) -> Vec<SiteCacheStatus> {
        let want = sc.status.clone().unwrap_or_default();
        eventually(
            "the status log to catch up",
            Duration::from_secs(30),
            || {
                let caught_up = self.seen().last() == Some(&want);
                async move { caught_up }
            },
        )
        .await;
        self.seen()
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn current(sc: &SiteCache) -> Option<u64> {
    sc.status.as_ref()?.current.as_ref().map(|c| c.generation)
}

pub fn condition<'a>(sc: &'a SiteCache, type_: &str) -> Option<&'a str> {
    sc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// Condition `type_` of `sc`, whole; panics when there is none.
pub fn cond(sc: &SiteCache, type_: &str) -> Condition {
    sc.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", sc.status))
}

pub fn condition_reason<'a>(sc: &'a SiteCache, type_: &str) -> Option<&'a str> {
    sc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

/// A script that reports `report` as a snapshot container does, in its termination message
/// (the job runner maps `/dev/termination-log` to the container's own file).
pub fn report_script(report: &Value) -> String {
    format!("printf '%s' '{report}' > /dev/termination-log")
}

/// A report of generation `n` as a snapshot of `archive` at `key` would make it.
pub fn report_of(n: u64, key: &str, archive: &[u8]) -> Value {
    use sha2::Digest;
    json!({
        "generation": n, "archiveKey": key, "sizeBytes": archive.len(),
        "sha256": hex::encode(sha2::Sha256::digest(archive)),
        "files": 2, "entries": 3, "uncompressedBytes": 10,
    })
}

/// A warm step for the host: writes `files` files into `$DENO_DIR` (the runner maps the cache
/// mount to a directory), after `script_before` (which sees the restored previous generation).
pub fn warm(script_before: &str, files: u32) -> Value {
    let script = format!(
        "set -e\n{script_before}\nmkdir -p \"$DENO_DIR/deps\"\n\
         for i in $(seq 1 {files}); do echo \"module $i $(date +%s%N)\" > \"$DENO_DIR/deps/m$i.js\"; done\n\
         touch \"$DENO_DIR/warmed\""
    );
    json!({"image": "site:test", "command": ["sh", "-c", script]})
}

/// An IAM policy with the storage rights the controller uses on `bucket`, `s3:DeleteObject` only
/// when `delete`.
fn controller_policy(bucket: &str, delete: bool) -> Value {
    let mut actions = vec![
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListBucket",
        "s3:ListBucketMultipartUploads",
        "s3:ListMultipartUploadParts",
        "s3:AbortMultipartUpload",
    ];
    if delete {
        actions.push("s3:DeleteObject");
    }
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": actions,
            "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
        }]
    })
}

impl Harness {
    /// A harness whose controller has every storage right it uses but `s3:DeleteObject`: a
    /// storage failure that persists until [`allow_delete`](Self::allow_delete). The snapshot
    /// Jobs keep the root user's rights.
    pub async fn without_delete_rights() -> Harness {
        let mut h = Harness::start(Options {
            start_controller: false,
            ..Options::default()
        })
        .await;
        let user = format!("ctl-{}", h.ns);
        let secret = format!("{user}-secret");
        h.s3()
            .put_policy(&user, &controller_policy(&h.bucket, false))
            .unwrap_or_else(|e| panic!("{e:#}"));
        h.s3()
            .add_user(&user, &secret, &user)
            .unwrap_or_else(|e| panic!("{e:#}"));
        h.start_controller_as(&user, &secret);
        h
    }

    /// Grants the controller of [`without_delete_rights`](Self::without_delete_rights) the
    /// right to delete.
    pub fn allow_delete(&self) {
        self.s3()
            .put_policy(
                &format!("ctl-{}", self.ns),
                &controller_policy(&self.bucket, true),
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// The sum of every sample of counter `name` (all label sets) in a metrics text.
pub fn counter_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
