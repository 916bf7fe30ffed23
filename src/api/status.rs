//! `SiteCache.status`: what is cached, how fresh it is and what the controller is doing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a site's cache, written by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SiteCacheStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Summary of the SiteCache's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The resolved storage location (`s3://bucket/prefix/`), fixed when the SiteCache is first
    /// reconciled. Runners pass it to `sitecache restore --url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// The S3 endpoint the controller accepted from `spec.storage.endpoint` (one of its
    /// `--allowed-endpoints`), kept while a later spec names one it refuses. `kubectl sitecache
    /// restore` sends a user's requests only there (or where its own `--endpoint` says), never to
    /// whatever the spec names. Absent when the SiteCache names no endpoint (the controller's
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The promoted generation: what `sitecache restore` fetches by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<GenerationInfo>,

    /// Compressed size of the current generation, for display (for example `184.2 MiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,

    /// The retained generations, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generations: Vec<GenerationInfo>,

    /// Generations that retention has still to delete: superseded ones within their grace
    /// period (`--retention-grace`, so that a runner that read `current.json` just before a
    /// promotion still finds the archive it names), rejected ones, and ones whose deletion failed
    /// (retried with backoff).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expired_generations: Vec<u64>,

    /// How much the cache has grown since it was last built from an empty cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth: Option<CacheGrowth>,

    /// The highest generation number ever used under this prefix (promoted or not). The next
    /// snapshot uses the number after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_generation: Option<u64>,

    /// Name of the snapshot Job now running, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_job: Option<String>,

    /// Outcome of the most recent snapshot attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<LastSnapshot>,

    /// When the next scheduled snapshot is due (jitter applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_snapshot_time: Option<Time>,

    /// `Fresh`: the current generation matches the source revision and is younger than maxAge;
    /// `Stale`: it exists but is out of date; `Missing`: there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,

    /// Why the cache has its freshness, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness_reason: Option<String>,

    /// Snapshot attempts that failed in a row since the last success.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: u32,

    /// The last `sitecache.dev/snapshot-request` annotation value that a completed snapshot
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_request: Option<String>,

    /// Standard conditions: `Ready` (a usable generation exists), `Fresh`, `Progressing`,
    /// `Degraded`, and `DeletionBlocked` while deletion cannot finish.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl SiteCacheStatus {
    /// The generations `spec.pin` may name, newest first: the current one and the retained ones
    /// retention has not expired (their records are verified: what `current.json` is written
    /// from).
    pub fn pinnable(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .generations
            .iter()
            .map(|g| g.generation)
            .chain(self.current.as_ref().map(|c| c.generation))
            .filter(|g| !self.expired_generations.contains(g))
            .collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.dedup();
        out
    }

    /// [`pinnable`](Self::pinnable) in words: `retained: 6, 5`, or `none is retained`.
    pub fn pinnable_text(&self) -> String {
        let list: Vec<String> = self.pinnable().iter().map(u64::to_string).collect();
        if list.is_empty() {
            "none is retained".into()
        } else {
            format!("retained: {}", list.join(", "))
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Summary state of a SiteCache.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No usable generation yet, or a snapshot is waiting for a free slot.
    Pending,
    /// A snapshot Job is running.
    Snapshotting,
    /// A usable generation exists and nothing is running.
    Ready,
    /// The last snapshot failed and there is no usable generation, or the spec cannot be served.
    Failed,
    /// The SiteCache is being deleted and its objects removed.
    Deleting,
}

/// How current the promoted generation is.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Matches the source revision and younger than maxAge.
    Fresh,
    /// Exists but is older than maxAge or built from another source revision.
    Stale,
    /// No generation has been promoted.
    Missing,
}

/// A committed generation, as its manifest records it.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GenerationInfo {
    /// Generation number (1, 2, …), unique and increasing under the prefix.
    pub generation: u64,
    /// Object key of the archive.
    pub key: String,
    /// Size of the compressed archive in bytes.
    pub size_bytes: u64,
    /// Total size of the files in the archive.
    pub uncompressed_bytes: u64,
    /// Number of entries (files, directories, links) in the archive.
    pub files: u64,
    /// SHA-256 of the archive, hex.
    pub sha256: String,
    /// When the snapshot was taken.
    pub created_at: Time,
    /// When the controller promoted it (wrote `current.json` naming it); absent for a
    /// generation never promoted, or recorded before promotions were timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<Time>,
    /// `spec.source.revision` the generation was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_revision: Option<String>,
    /// The generation restored into the cache before warming; absent when the generation was
    /// built from an empty cache (a rebuild).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_generation: Option<u64>,
    /// The user and group that owned every file the snapshot packed: the warm step's, when it
    /// wrote the whole cache as one non-root user. The next snapshot restores as that user when
    /// `spec.warm.securityContext` names none, so that the warm step can write into the
    /// restored cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_owner: Option<CacheOwner>,
    /// What warmed it, where known. (Boxed: absent for most generations of a large fleet, and
    /// one pointer in the controller's cache of each.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Box<Runtime>>,
}

/// What warmed a generation.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    /// The version of the Deno that warmed it, as its caches record it: its V8 code cache is of
    /// use only to a runner with the same version (whose `sitecache restore --runtime-version`
    /// says otherwise in `runtimeMismatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deno: Option<String>,
    /// The image the warm step ran, by digest as kubelet reported it (`imageID`), when the pod
    /// that committed the generation was still there to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_image: Option<String>,
}

/// A user and group (numeric).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheOwner {
    pub uid: u32,
    pub gid: u32,
}

/// The cache's growth since its last rebuild (see `spec.snapshot.rebuild`).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheGrowth {
    /// The last generation built from an empty cache.
    pub rebuilt_generation: u64,
    /// Total size of its files.
    pub rebuilt_uncompressed_bytes: u64,
    /// Generations promoted since, each warmed on top of the one before.
    pub incremental_generations: u32,
    /// How much larger the current generation's files are than the rebuilt one's, in percent
    /// (negative when smaller).
    pub percent: i64,
}

/// The most recent snapshot attempt.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastSnapshot {
    /// Generation number the attempt produced or tried to produce.
    pub generation: u64,
    /// Name of the snapshot Job.
    pub job: String,
    /// When the Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the Job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Seconds from start to completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
    /// `Running`, `Succeeded` (promoted), `Failed` or `Rejected` (uploaded but not promoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<SnapshotResult>,
    /// Machine-readable reason of the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message of the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Outcome of a snapshot attempt.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotResult {
    /// The Job is running.
    Running,
    /// The generation was verified and promoted.
    Succeeded,
    /// The Job failed; nothing was promoted.
    Failed,
    /// The Job finished but its generation failed verification; nothing was promoted.
    Rejected,
}
