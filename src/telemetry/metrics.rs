//! The controller's Prometheus metrics (`/metrics`), in one registry per controller instance:
//! its own, prefixed `sitecache_`, and the standard `process_*` ones ([`super::process`]).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::process::ProcessCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

/// `sitecache_build_info`'s labels: what is running, for dashboards and upgrade checks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

/// Every metric the controller exports.
pub struct Metrics {
    pub registry: Registry,
    /// 1 while this replica reconciles: it holds the Lease, or runs without leader election.
    pub leader: Gauge,
    pub reconciles: Counter,
    pub reconcile_errors: Family<KindLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub snapshot_jobs: Family<ResultLabel, Counter>,
    pub snapshot_job_duration: Family<ResultLabel, Histogram>,
    pub snapshot_jobs_running: Gauge,
    pub snapshot_jobs_waiting: Gauge,
    pub generations_promoted: Counter,
    pub objects_deleted: Counter,
    pub bytes_deleted: Counter<u64, AtomicU64>,
    pub stale_sitecaches: Gauge,
    pub stalled_snapshots: Gauge,
    pub status_writes: Counter,
    pub rebuilds: Family<ReasonLabel, Counter>,
    pub cache_growth: Histogram,
    pub storage_requests: Family<OperationLabel, Counter>,
    pub snapshot_queue_wakeups: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("sitecache");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register(
            "build_info",
            "The running build: always 1, its version in the labels",
            build_info,
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica reconciles (holds the leader-election Lease, or runs without \
             election), 0 while it stands by",
            leader.clone(),
        );
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Reconciles of SiteCache objects",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        let snapshot_jobs = Family::<ResultLabel, Counter>::default();
        registry.register(
            "snapshot_jobs",
            "Finished snapshot Jobs by result (succeeded, failed, rejected)",
            snapshot_jobs.clone(),
        );
        let snapshot_job_duration = Family::<ResultLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(5.0, 2.0, 12))
        });
        registry.register(
            "snapshot_job_duration_seconds",
            "Duration of finished snapshot Jobs by result",
            snapshot_job_duration.clone(),
        );
        let snapshot_jobs_running = Gauge::default();
        registry.register(
            "snapshot_jobs_running",
            "Snapshot Jobs running now",
            snapshot_jobs_running.clone(),
        );
        let snapshot_jobs_waiting = Gauge::default();
        registry.register(
            "snapshot_jobs_waiting",
            "SiteCaches waiting for a free snapshot slot",
            snapshot_jobs_waiting.clone(),
        );
        let generations_promoted = Counter::default();
        registry.register(
            "generations_promoted",
            "Generations verified and promoted",
            generations_promoted.clone(),
        );
        let objects_deleted = Counter::default();
        registry.register(
            "storage_objects_deleted",
            "Objects deleted from storage (retention and SiteCache deletion)",
            objects_deleted.clone(),
        );
        let bytes_deleted = Counter::<u64, AtomicU64>::default();
        registry.register(
            "storage_deleted_bytes",
            "Bytes deleted from storage (retention and SiteCache deletion)",
            bytes_deleted.clone(),
        );
        let stale_sitecaches = Gauge::default();
        registry.register(
            "stale_sitecaches",
            "SiteCaches whose cache is Stale or Missing",
            stale_sitecaches.clone(),
        );
        let stalled_snapshots = Gauge::default();
        registry.register(
            "snapshot_jobs_stalled",
            "Running snapshot Jobs that have no pod, an unschedulable pod or a container that \
             cannot start (the SiteCache's Degraded condition says which)",
            stalled_snapshots.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "status_writes",
            "Writes of a SiteCache's status (each one changed it)",
            status_writes.clone(),
        );
        let rebuilds = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "snapshot_rebuilds",
            "Snapshot Jobs started from an empty cache, by reason",
            rebuilds.clone(),
        );
        let cache_growth = Histogram::new([0.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 200.0]);
        registry.register(
            "cache_growth_percent",
            "Growth of each promoted generation over the SiteCache's last rebuild, in percent",
            cache_growth.clone(),
        );
        let storage_requests = Family::<OperationLabel, Counter>::default();
        registry.register(
            "storage_requests",
            "Requests the controller sent to object storage, by S3 operation (retries included)",
            storage_requests.clone(),
        );
        let snapshot_queue_wakeups = Counter::default();
        registry.register(
            "snapshot_queue_wakeups",
            "SiteCaches woken because a snapshot slot became theirs (one per freed slot)",
            snapshot_queue_wakeups.clone(),
        );
        Metrics {
            registry: root,
            leader,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            snapshot_jobs,
            snapshot_job_duration,
            snapshot_jobs_running,
            snapshot_jobs_waiting,
            generations_promoted,
            objects_deleted,
            bytes_deleted,
            stale_sitecaches,
            stalled_snapshots,
            status_writes,
            rebuilds,
            cache_growth,
            storage_requests,
            snapshot_queue_wakeups,
        }
    }
}

impl Metrics {
    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    pub fn job_finished(&self, result: &str, seconds: Option<f64>) {
        let label = ResultLabel {
            result: result.to_owned(),
        };
        self.snapshot_jobs.get_or_create(&label).inc();
        if let Some(s) = seconds {
            self.snapshot_job_duration.get_or_create(&label).observe(s);
        }
    }

    pub fn rebuild(&self, reason: &str) {
        self.rebuilds
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_names() {
        let m = Metrics::default();
        m.error("storage-timeout");
        m.job_finished("succeeded", Some(12.0));
        m.bytes_deleted.inc_by(10);
        let text = m.encode();
        for name in [
            "sitecache_reconciles_total",
            "sitecache_reconcile_errors_total{kind=\"storage-timeout\"} 1",
            "sitecache_reconcile_duration_seconds_bucket",
            "sitecache_snapshot_jobs_total{result=\"succeeded\"} 1",
            "sitecache_snapshot_job_duration_seconds_sum{result=\"succeeded\"} 12.0",
            "sitecache_generations_promoted_total",
            "sitecache_storage_objects_deleted_total",
            "sitecache_storage_deleted_bytes_total 10",
            "sitecache_stale_sitecaches",
            "sitecache_snapshot_jobs_stalled",
            "sitecache_snapshot_jobs_waiting",
            "sitecache_status_writes_total",
            "sitecache_cache_growth_percent_bucket",
            "sitecache_snapshot_queue_wakeups_total",
            concat!(
                "sitecache_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
            "sitecache_leader 0",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
