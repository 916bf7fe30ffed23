//! `sitecache controller`: reconciles SiteCache objects.
//!
//! Rooms, by concern (imports run down this list, never up):
//! - [`settings`]: the controller's flags and the resolved storage of a SiteCache; who the
//!   controller is ([`settings::identity`]: its field manager and the cluster's identity, which
//!   ownership markers record); a SiteCache's spec checked against them and parsed once
//!   ([`settings::validate`]), with the snapshot pod's settings ([`settings::podspec`]) and the
//!   schedule's timing ([`settings::schedule`]: when a snapshot is due, how fresh a generation
//!   is). Pure.
//! - [`jobs`]: the snapshot Job built from the SiteCache and read back, whether it starts from an
//!   empty cache ([`jobs::rebuild`]), what its pods reported ([`jobs::report`]), stalls
//!   ([`jobs::stall`]), the snapshot slots ([`jobs::queue`]), and releasing its result
//!   ([`jobs::results`]).
//! - [`objects`]: the storage work on a SiteCache's prefix (the shared S3 clients, ownership,
//!   inventory, verification, promotion, retention, deletion).
//! - [`status`]: the status derived from what a reconcile found and did, and the Events that say
//!   it ([`status::events`]).
//! - [`error`]: why a reconcile failed, with the metrics kind and Event reason of each error (a
//!   leaf every room may use).
//! - [`context`]: what reconciles share (clients, metrics, Events, the snapshot slots, the watch
//!   caches); [`leader`]: which replica reconciles; [`watches`]: what wakes a SiteCache;
//!   [`server`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`reconcile`] and [`cleanup`]: the numbered steps for a live and a deleted SiteCache, which
//!   use every room above.

mod cleanup;
mod context;
mod error;
pub mod jobs;
mod leader;
pub mod objects;
mod reconcile;
mod server;
pub mod settings;
pub mod status;
pub mod watches;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

pub use context::{Caches, Context};
pub use error::Error;
pub use reconcile::write_status;
pub use settings::identity::MANAGER;
pub use settings::{ControllerArgs, Settings};

use crate::api::{FINALIZER, SiteCache};
use crate::telemetry::metrics::Metrics;

/// Runs the controller from its command-line arguments until SIGTERM or SIGINT. With
/// `--leader-elect`, it serves `/healthz` and `/metrics` at once but reconciles only while it
/// holds the Lease; losing the Lease ends the process (its replacement starts clean).
pub async fn main(args: ControllerArgs) -> anyhow::Result<()> {
    let settings = Settings::try_from(&args)?;
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the Kubernetes API: {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen_address)
        .await
        .map_err(|e| anyhow::anyhow!("--listen-address {}: {e}", args.listen_address))?;
    let (stop, stopping) = watch::channel(false);
    let shutdown = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing the reconciles under way");
        let _ = shutdown.send(true);
    });
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    tracing::info!(address = %args.listen_address, "serving /metrics, /healthz, /readyz");
    let server = tokio::spawn(server::serve(
        listener,
        metrics.clone(),
        ready.clone(),
        stopped(stopping.clone()),
    ));

    let result = match leader::Election::from_args(&args) {
        None => {
            metrics.leader.set(1);
            run(client, settings, metrics.clone(), ready, stopping).await
        }
        Some(election) => {
            // A standby serves and is ready; the leader turns ready again once its watches sync.
            ready.store(true, Ordering::Release);
            match leader::acquire(client.clone(), &election, stopping.clone()).await? {
                None => Ok(()),
                Some(mut leadership) => {
                    ready.store(false, Ordering::Release);
                    metrics.leader.set(1);
                    let (stop_run, run_stopping) = watch::channel(false);
                    let mut outer = stopping.clone();
                    let controller = run(client, settings, metrics.clone(), ready, run_stopping);
                    tokio::pin!(controller);
                    let lost = tokio::select! {
                        r = &mut controller => return r,
                        _ = leadership.lost() => true,
                        _ = outer.wait_for(|s| *s) => false,
                    };
                    let _ = stop_run.send(true);
                    controller.await?;
                    if lost {
                        anyhow::bail!(
                            "lost the leader-election Lease {}/{}",
                            election.namespace,
                            election.lease
                        );
                    }
                    leadership.release().await;
                    Ok(())
                }
            }
        }
    };
    // Whatever ended the run, this replica reconciles no more.
    metrics.leader.set(0);
    let _ = stop.send(true);
    server.await??;
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs the controller until `stop` turns true: one watch of SiteCaches and of their Jobs per
/// watched namespace (or one for all), sharing one [`Context`]. Reconciles read the watch caches
/// ([`watches`] says what they keep and which changes wake a reconcile). `ready` turns true once
/// every watch has listed its objects.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut caches = Vec::new();
    let mut parts = Vec::new();
    // Any change of a Job's state may free a snapshot slot.
    let (jobs_changed, mut job_change_seen) = mpsc::unbounded_channel::<()>();
    // SiteCaches gone (`Some`), and relists done (`None`), for the context to forget.
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<Option<ObjectRef<SiteCache>>>();
    for scope in &scopes {
        let (jobs, job_writer) = reflector::store();
        let jobs_changed = jobs_changed.clone();
        let job_changes = watches::job_changes(
            watcher(
                scoped::<Job>(&client, scope),
                watcher::Config::default().labels(jobs::JOB_SELECTOR),
            )
            .default_backoff()
            .modify(watches::strip_job)
            .reflect(job_writer),
        )
        .inspect(move |_| {
            let _ = jobs_changed.send(());
        });
        let (sitecaches, sitecache_writer) = reflector::store();
        let gone = gone_tx.clone();
        let sitecache_changes = watcher(
            scoped::<SiteCache>(&client, scope),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(watches::strip_sitecache)
        .reflect(sitecache_writer)
        // A SiteCache that went without a cleanup reconcile (its finalizer removed by hand, or
        // deleted while a relist was under way) leaves nothing behind in the context.
        .inspect(move |event| match event {
            Ok(watcher::Event::Delete(sc)) => {
                let _ = gone.send(Some(ObjectRef::from_obj(sc)));
            }
            Ok(watcher::Event::InitDone) => {
                let _ = gone.send(None);
            }
            _ => {}
        })
        .applied_objects()
        .predicate_filter(
            watches::sitecache_trigger,
            PredicateConfig::default().ttl(Duration::from_secs(7 * 86_400)),
        );
        let (wake, woken) = mpsc::unbounded_channel::<ObjectRef<SiteCache>>();
        caches.push(Caches {
            namespace: scope.clone(),
            sitecaches: sitecaches.clone(),
            jobs: jobs.clone(),
            wake,
        });
        parts.push((
            scope.clone(),
            sitecaches,
            sitecache_changes,
            job_changes,
            woken,
        ));
    }
    let stores: Vec<_> = caches
        .iter()
        .map(|c| (c.sitecaches.clone(), c.jobs.clone()))
        .collect();
    let cluster =
        settings::identity::cluster_identity(&client, settings.cluster_id.as_deref()).await?;
    tracing::info!(cluster = %cluster, standby = settings.standby, "cluster identity");
    let (ctx, mut expiries) =
        Context::new(client.clone(), settings.clone(), cluster, metrics, caches);
    let ctx = Arc::new(ctx);

    // Slots freed by Jobs that ended go to the heads of the queue.
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while job_change_seen.recv().await.is_some() {
                while job_change_seen.try_recv().is_ok() {}
                ctx.slot_freed();
            }
        });
    }
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(gone) = gone_rx.recv().await {
                match gone {
                    Some(sc) => ctx.forget(&sc),
                    None => ctx.forget_missing(),
                }
            }
        });
    }
    // Slots promised to woken SiteCaches that did not take them go to the next, on time.
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(at) = expiries.recv().await {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    ctx.expired_reservations();
                });
            }
        });
    }

    let mut tasks = Vec::new();
    for (scope, reader, sitecache_changes, job_changes, woken) in parts {
        let woken =
            futures::stream::unfold(
                woken,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let controller = Controller::for_stream(sitecache_changes, reader)
            .owns_stream(job_changes)
            .reconcile_on(woken)
            .with_config(ControllerConfig::default().concurrency(settings.reconcile_concurrency))
            .graceful_shutdown_on(stopped(stop.clone()));
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(
            controller
                .run(reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "controller event");
                    }
                })
                .instrument(tracing::info_span!(
                    "controller",
                    namespace = scope.as_deref().unwrap_or("*")
                )),
        ));
    }

    {
        let ready = ready.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            for (sitecaches, jobs) in &stores {
                wait_synced(sitecaches).await;
                wait_synced(jobs).await;
            }
            // Reconciles decide from now on, and slots are granted.
            ctx.mark_jobs_synced();
            ready.store(true, Ordering::Release);
            tracing::info!("watches synced; reconciling");
        });
    }
    tracing::info!(
        namespaces = ?settings.namespaces,
        max_concurrent_snapshots = settings.max_concurrent_snapshots,
        "controller started"
    );
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Waits until `store` has listed its objects. kube's `wait_until_ready` wakes only the task that
/// polled it last, and the Controller waits on the same store: poll it again now and then.
async fn wait_synced<K>(store: &reflector::Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready())
        .await
        .is_err()
    {}
}

fn scoped<K>(client: &Client, scope: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn stopped(mut stop: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + Sync + 'static {
    async move {
        let _ = stop.wait_for(|s| *s).await;
    }
    .boxed()
    .shared()
}

/// One reconcile: the finalizer routes a live SiteCache to [`reconcile::apply`] and a deleted one
/// to [`cleanup::cleanup`].
async fn reconcile(sc: Arc<SiteCache>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "reconcile",
        namespace = %sc.namespace().unwrap_or_default(),
        name = %sc.name_any()
    );
    async move {
        ctx.until_jobs_synced().await;
        let start = Instant::now();
        ctx.metrics.reconciles.inc();
        let api: Api<SiteCache> =
            Api::namespaced(ctx.client.clone(), &sc.namespace().unwrap_or_default());
        let result = finalizer(&api, FINALIZER, sc.clone(), |event| async {
            match event {
                Finalizer::Apply(sc) => reconcile::apply(sc, &ctx).await,
                Finalizer::Cleanup(sc) => cleanup::cleanup(sc, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)));
        ctx.metrics
            .reconcile_duration
            .observe(start.elapsed().as_secs_f64());
        let uid = sc.uid().unwrap_or_default();
        match &result {
            Ok(_) => ctx.errors.forget(&uid),
            Err(e) => {
                if let Some(reason) = e.inner().reason()
                    && ctx.errors.is_new(&uid, &e.to_string())
                {
                    ctx.event(
                        &sc,
                        EventType::Warning,
                        &reason,
                        "Reconcile",
                        e.inner().to_string(),
                    )
                    .await;
                }
            }
        }
        result
    }
    .instrument(span)
    .await
}

/// Per-object exponential backoff with jitter, for every failed reconcile.
fn error_policy(sc: Arc<SiteCache>, err: &Error, ctx: Arc<Context>) -> Action {
    let kind = err.kind();
    ctx.metrics.error(kind);
    let attempts = ctx.errors.attempts(&sc.uid().unwrap_or_default());
    let delay = retry_delay(attempts);
    tracing::warn!(
        namespace = %sc.namespace().unwrap_or_default(),
        name = %sc.name_any(),
        kind,
        attempt = attempts,
        retry_in = ?delay,
        "reconcile failed: {}",
        err.inner()
    );
    Action::requeue(delay)
}

/// 1 s doubling to 5 min, each delay spread by ±25%.
fn retry_delay(attempts: u32) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1 << attempts.saturating_sub(1).min(9));
    base.min(Duration::from_secs(300))
        .mul_f64(0.75 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_with_jitter_and_cap() {
        for _ in 0..50 {
            let d1 = retry_delay(1).as_secs_f64();
            assert!((0.75..=1.25).contains(&d1), "{d1}");
            let d4 = retry_delay(4).as_secs_f64();
            assert!((6.0..=10.0).contains(&d4), "{d4}");
            let d30 = retry_delay(30).as_secs_f64();
            assert!((225.0..=375.0).contains(&d30), "{d30}");
        }
    }
}
