//! The parts the benchmark runs: a local control plane, MinIO, the release controller and the
//! local job runner; the prefixes of N sites written as an earlier controller left them; and a
//! watch that follows every SiteCache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use sitecache::api::SiteCache;
use sitecache::archive::{Current, FORMAT_TAR_ZSTD, FORMAT_VERSION, Manifest};
use sitecache::storage::Location;
use sitecache_devtools::job_runner::{JobRunner, JobRunnerConfig};
use sitecache_devtools::process::ManagedProcess;
use sitecache_devtools::{ControlPlane, S3Server, control_plane, free_port};

/// The image name the controller puts in its Jobs' agent containers; the job runner maps it to
/// the benchmarked binary.
const AGENT_IMAGE: &str = "sitecache-agent:bench";

pub struct World {
    /// Kept for its lifetime: dropping it stops etcd and the API server.
    _control_plane: ControlPlane,
    pub client: Client,
    pub s3: S3Server,
    pub bucket: String,
    pub namespace: String,
    pub controller: ManagedProcess,
    pub metrics_port: u16,
    runner: Option<JobRunner>,
    sitecache: PathBuf,
    dir: PathBuf,
}

/// The name of site `i`.
pub fn site(i: usize) -> String {
    format!("site-{i:05}")
}

impl World {
    /// Starts everything; the controller allows `slots` snapshot Jobs at once.
    pub async fn start(dir: &Path, sitecache: &Path, slots: u32) -> Result<World> {
        std::fs::create_dir_all(dir)?;
        let control_plane = ControlPlane::start(&dir.join("control-plane"))
            .await
            .context("start the control plane")?;
        let client = control_plane.client().await?;
        let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds");
        control_plane::install_crds(&client, &crds).await?;
        let namespace = control_plane::create_namespace(&client, "fleet").await?;
        let s3 = S3Server::start(&dir.join("s3"))
            .await
            .context("start MinIO")?;
        let bucket = s3.create_bucket("fleet").await?;
        let metrics_port = free_port()?;
        let mut cmd = Command::new(sitecache);
        cmd.arg("controller")
            .args(["--default-bucket", &bucket])
            .args(["--endpoint", &s3.endpoint()])
            .args(["--region", "us-east-1"])
            .arg("--path-style")
            .args(["--agent-image", AGENT_IMAGE])
            .args(["--max-concurrent-snapshots", &slots.to_string()])
            .args(["--listen-address", &format!("127.0.0.1:{metrics_port}")])
            .env("KUBECONFIG", control_plane.kubeconfig())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(s3.aws_env());
        let controller = ManagedProcess::spawn("controller", cmd, &dir.join("controller.log"))?;
        let mut world = World {
            _control_plane: control_plane,
            client,
            s3,
            bucket,
            namespace,
            controller,
            metrics_port,
            runner: None,
            sitecache: sitecache.to_owned(),
            dir: dir.to_owned(),
        };
        world.wait_controller_ready().await?;
        world.start_runner();
        Ok(world)
    }

    async fn wait_controller_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.controller.exited().is_some() {
                return Err(self.controller.failure("exited"));
            }
            let ok = Command::new("curl")
                .args([
                    "-sf",
                    "-o",
                    "/dev/null",
                    &format!("http://127.0.0.1:{}/readyz", self.metrics_port),
                ])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.controller.failure("not ready within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts the local job runner, which runs the snapshot Jobs.
    pub fn start_runner(&mut self) {
        let env = self.s3.job_env();
        self.runner = Some(JobRunner::start(
            self.client.clone(),
            JobRunnerConfig {
                namespace: Some(self.namespace.clone()),
                label_selector: sitecache::controller::jobs::JOB_SELECTOR.to_owned(),
                images: HashMap::from([(AGENT_IMAGE.to_owned(), self.sitecache.clone())]),
                env,
                work_dir: self.dir.join("jobs"),
            },
        ));
    }

    /// Stops the job runner (its watch would count as API traffic).
    pub async fn stop_runner(&mut self) {
        if let Some(r) = self.runner.take() {
            r.stop().await;
        }
    }

    /// Writes the prefixes of sites `0..n` as an earlier incarnation of each SiteCache left them
    /// (deleted with `Retain`, to be created again): the ownership marker, generation 1 committed
    /// and promoted. Returns how long it took.
    pub async fn seed_storage(&self, n: usize, concurrency: usize) -> Result<Duration> {
        let start = Instant::now();
        let s3 = self.s3.client();
        let now = jiff::Timestamp::now();
        let puts = futures::stream::iter(0..n).flat_map(|i| {
            let name = site(i);
            let location = Location::new(&self.bucket, &format!("{name}/")).expect("a location");
            let manifest = Manifest {
                format_version: FORMAT_VERSION,
                generation: 1,
                archive_key: location.archive_key(1),
                format: FORMAT_TAR_ZSTD.into(),
                size_bytes: 11,
                sha256: "ab".repeat(32),
                files: 100,
                entries: 120,
                uncompressed_bytes: 1_000_000,
                created_at: now,
                source_revision: Some("r1".into()),
                legacy_archive_key: None,
                deno_version: None,
                cache_dir: None,
                writer: sitecache::archive::writer(),
            };
            let current = Current {
                manifest: manifest.clone(),
                promoted_at: now,
            };
            let marker = json!({"namespace": self.namespace, "name": name,
                                "uid": format!("earlier-{i}"), "claimedAt": now});
            let objects = vec![
                (location.owner_key(), serde_json::to_vec(&marker).unwrap()),
                (location.archive_key(1), b"placeholder".to_vec()),
                (
                    location.manifest_key(1),
                    serde_json::to_vec(&manifest).unwrap(),
                ),
                (
                    location.current_key(),
                    serde_json::to_vec(&current).unwrap(),
                ),
            ];
            futures::stream::iter(objects)
        });
        puts.map(|(key, body)| {
            let s3 = s3.clone();
            let bucket = self.bucket.clone();
            async move {
                s3.put_object()
                    .bucket(bucket)
                    .key(&key)
                    .body(body.into())
                    .send()
                    .await
                    .with_context(|| format!("put {key}"))
            }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await?;
        Ok(start.elapsed())
    }

    pub fn api(&self) -> Api<SiteCache> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates SiteCaches `range`, `concurrency` at a time.
    pub async fn create(&self, range: std::ops::Range<usize>, concurrency: usize) -> Result<()> {
        let api = self.api();
        futures::stream::iter(range)
            .map(|i| {
                let api = api.clone();
                async move {
                    let name = site(i);
                    let sc: SiteCache = serde_json::from_value(json!({
                        "apiVersion": "sitecache.dev/v1alpha1",
                        "kind": "SiteCache",
                        "metadata": {"name": name},
                        "spec": spec(&name, "r1", "sleep 0"),
                    }))?;
                    api.create(&PostParams::default(), &sc)
                        .await
                        .with_context(|| format!("create SiteCache {name}"))?;
                    Ok::<_, anyhow::Error>(())
                }
            })
            .buffer_unordered(concurrency)
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    /// Merge-patches the spec of SiteCaches `names`, `concurrency` at a time.
    pub async fn patch_all(
        &self,
        names: &[String],
        patch: impl Fn(&str) -> serde_json::Value,
        concurrency: usize,
    ) -> Result<()> {
        let api = self.api();
        futures::stream::iter(names)
            .map(|name| {
                let api = api.clone();
                let body = patch(name);
                async move {
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
                        .await
                        .with_context(|| format!("patch SiteCache {name}"))?;
                    Ok::<_, anyhow::Error>(())
                }
            })
            .buffer_unordered(concurrency)
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    pub fn check_running(&mut self) -> Result<()> {
        if self.controller.exited().is_some() {
            bail!(self.controller.failure("exited"));
        }
        Ok(())
    }
}

/// The spec of site `name` at source revision `revision`, whose warm step runs `warm` then writes
/// three small modules.
pub fn spec(name: &str, revision: &str, warm: &str) -> serde_json::Value {
    let script = format!(
        "{warm}; mkdir -p \"$DENO_DIR/deps\" && for i in 1 2 3; do echo \"$i\" > \"$DENO_DIR/deps/m$i.js\"; done"
    );
    json!({"site": name, "source": {"revision": revision},
           "warm": {"image": "site:bench", "command": ["sh", "-c", script]}})
}

/// What the watch knows of one SiteCache.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub ready: bool,
    pub current: Option<u64>,
    pub waiting: bool,
    pub snapshotting: bool,
    /// `status.lastHandledRequest`.
    pub handled: Option<String>,
}

/// A watch of every SiteCache of the namespace.
pub struct Fleet {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Fleet {
    pub fn watch(api: Api<SiteCache>) -> Fleet {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let map = seen.clone();
        let task = tokio::spawn(async move {
            let mut objects = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(sc) = objects.next().await {
                let Ok(sc) = sc else { continue };
                let status = sc.status.as_ref();
                let condition = |t: &str| {
                    status
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
                        .map(|c| (c.status.clone(), c.reason.clone()))
                };
                let entry = Seen {
                    ready: condition("Ready").is_some_and(|(s, _)| s == "True"),
                    current: status
                        .and_then(|s| s.current.as_ref())
                        .map(|c| c.generation),
                    waiting: condition("Progressing").is_some_and(|(_, r)| r == "WaitingForSlot"),
                    snapshotting: condition("Progressing")
                        .is_some_and(|(_, r)| r == "SnapshotRunning"),
                    handled: status.and_then(|s| s.last_handled_request.clone()),
                };
                map.lock().unwrap().insert(sc.name_any(), entry);
            }
        });
        Fleet { seen, task }
    }

    /// How many SiteCaches satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&str, &Seen) -> bool) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, s)| pred(name, s))
            .count()
    }

    /// Waits until `want` SiteCaches satisfy `pred`, printing progress; returns how long it took
    /// from `since`.
    pub async fn wait_for(
        &self,
        what: &str,
        want: usize,
        since: Instant,
        timeout: Duration,
        pred: impl Fn(&str, &Seen) -> bool,
    ) -> Result<Duration> {
        let mut last_print = Instant::now();
        loop {
            let n = self.count(&pred);
            if n >= want {
                return Ok(since.elapsed());
            }
            if since.elapsed() > timeout {
                bail!("{what}: {n} of {want} after {timeout:?}");
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "  … {what}: {n} of {want} ({:.0} s)",
                    since.elapsed().as_secs_f64()
                );
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.task.abort();
    }
}
