//! `SiteCache.spec`: what a site's cache is, where it lives, how it is warmed and when it is due.
//!
//! The doc comments here are the CRD's field descriptions (`kubectl explain sitecache.spec`), and
//! the `x_kube` rules are enforced by the API server: invalid objects never reach the controller.

// clippy reads the repeated `printcolumn(type_ = ...)` arguments of the derive as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements,
    SecurityContext, Toleration,
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::duration::DURATION_PATTERN;
use super::status::SiteCacheStatus;

/// A site identifier: a DNS label.
pub const SITE_PATTERN: &str = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";
/// An S3 bucket name (lower-case letters, digits, dots and hyphens; 3 to 63 characters).
pub const BUCKET_PATTERN: &str = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
/// A cron expression with five fields, or one of the `@hourly`-style macros.
pub const CRON_PATTERN: &str = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[0-9A-Za-z*?/,-]+( +[0-9A-Za-z*?/,-]+){4})$";

/// Desired state of a site's module cache.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sitecache.dev",
    version = "v1alpha1",
    kind = "SiteCache",
    plural = "sitecaches",
    shortname = "scache",
    category = "sitecache",
    namespaced,
    status = "SiteCacheStatus",
    derive = "PartialEq",
    doc = "A site's Deno module cache, kept as immutable, verified generations in S3-compatible object storage and restored by the site's runners at cold start.",
    printcolumn(name = "Site", type_ = "string", json_path = ".spec.site"),
    printcolumn(
        name = "Generation",
        type_ = "integer",
        json_path = ".status.current.generation",
        description = "The promoted generation runners restore"
    ),
    printcolumn(name = "Freshness", type_ = "string", json_path = ".status.freshness"),
    printcolumn(
        name = "Size",
        type_ = "string",
        json_path = ".status.size",
        description = "Compressed size of the promoted generation"
    ),
    printcolumn(
        name = "Last snapshot",
        type_ = "date",
        json_path = ".status.lastSnapshot.completionTime"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // `-o wide` only (priority 1): where runners restore from and what the controller does next.
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        priority = 1
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.url",
        description = "The storage location runners pass to sitecache restore --url",
        priority = 1
    ),
    printcolumn(
        name = "Active job",
        type_ = "string",
        json_path = ".status.activeJob",
        description = "The snapshot Job running now",
        priority = 1
    ),
    // A string: a `date` column prints a time to come as `<invalid>` (it shows ages only).
    printcolumn(
        name = "Next snapshot",
        type_ = "string",
        json_path = ".status.nextSnapshotTime",
        description = "When the next scheduled snapshot is due",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SiteCacheSpec {
    /// The site's identifier: lower-case letters, digits and '-', starting and ending with a letter
    /// or digit, at most 63 characters. It names the default storage prefix (`<site>/`, or as the
    /// controller's `--default-prefix-template` says) and cannot change once set.
    #[schemars(regex(pattern = SITE_PATTERN), length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.site is immutable"))]
    pub site: String,

    /// Where the site's generations are stored. Every field is optional and defaults from the
    /// controller's configuration. The location cannot change once set: create a new SiteCache to
    /// move a cache.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.storage is immutable: create a new SiteCache to move a cache"))]
    pub storage: StorageSpec,

    /// The container that fills the cache directory in the snapshot Job (for example
    /// `deno cache main.ts` in the site's image).
    pub warm: WarmSpec,

    /// What the cache is built from. A change of `source.revision` makes a new snapshot due.
    #[serde(default, skip_serializing_if = "SourceSpec::is_empty")]
    pub source: SourceSpec,

    /// When snapshots are due besides a source change or an on-demand request.
    #[serde(default)]
    pub schedule: ScheduleSpec,

    /// How many promoted generations are kept in storage.
    #[serde(default)]
    pub retention: RetentionSpec,

    /// How snapshot Jobs run.
    #[serde(default)]
    pub snapshot: SnapshotSpec,

    /// When true, no new snapshot is started (a running one finishes). Restores are unaffected.
    #[serde(default)]
    pub suspend: bool,

    /// Rolls the cache back (or forward) to a retained generation and holds it there: the
    /// controller promotes `pin.generation` (runners restore it from their next start), keeps it
    /// whatever `retention.keep` says, and promotes nothing over it while the pin is set: no
    /// scheduled snapshot starts, and an on-demand snapshot is verified and kept, not promoted.
    /// Removing the pin leaves the pinned generation current until the next snapshot replaces
    /// it. `kubectl sitecache promote NAME --generation N` sets it, `kubectl sitecache unpin
    /// NAME` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<PinSpec>,

    /// What happens to the site's objects in storage when the SiteCache is deleted: `Delete`
    /// (the default) removes every object under the prefix; `Retain` leaves them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Compatibility with runners that restore the older single-file format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<LegacySpec>,
}

/// Object storage location of a site's cache.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Bucket name. Defaults to the controller's default bucket; must be one of the controller's
    /// allowed buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = BUCKET_PATTERN))]
    pub bucket: Option<String>,

    /// Region of the bucket. Defaults to the controller's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,

    /// S3 endpoint URL for S3-compatible stores (http or https). Defaults to the controller's
    /// endpoint, or AWS's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https']").message("spec.storage.endpoint must be an http or https URL"))]
    pub endpoint: Option<String>,

    /// Key prefix under which every object of this site is stored. Defaults to the controller's
    /// `--default-prefix-template` (`<site>/` unless configured, for example
    /// `<namespace>/<site>/`), recorded in `status.url`. It is never empty, never starts with '/', never contains '..' or '//', and ends with '/'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(
        validation = Rule::new("self.endsWith('/')").message("spec.storage.prefix must end with '/'"),
        validation = Rule::new("!self.startsWith('/')").message("spec.storage.prefix must not start with '/'"),
        validation = Rule::new("!self.contains('..')").message("spec.storage.prefix must not contain '..'"),
        validation = Rule::new("!self.contains('//')").message("spec.storage.prefix must not contain '//'")
    )]
    pub prefix: Option<String>,

    /// Address the bucket in the URL path (`endpoint/bucket/key`) instead of the host name, as
    /// MinIO and most self-hosted stores need. Defaults to the controller's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
}

/// The container that warms the cache.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.serve) || has(self.command)").message("spec.warm.serve needs spec.warm.command: the site's command, which the warm step starts and stops"))]
pub struct WarmSpec {
    /// Image of the warm container, normally the site's own image.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,

    /// Entrypoint of the warm container (the image's if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,

    /// Arguments of the warm container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,

    /// Extra environment of the warm container. `DENO_DIR` is always set to `cacheDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,

    /// Compute resources of the warm container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Absolute path of the cache directory in the snapshot pod; `DENO_DIR` is set to it. An
    /// `emptyDir` is mounted there, and everything in it is packed and published: it must be a
    /// clean path (no `.`, `..` or empty components, no trailing `/`) outside the directories
    /// the kubelet and the runtime put secrets and system files in (`/proc`, `/sys`, `/dev`,
    /// `/etc`, `/run`, `/var/run`, `/var/lib/kubelet`), which a mount above them would also
    /// shadow. The same rules as [`CACHE_DIR_RESERVED`] (checked by the controller too).
    #[serde(default = "default_cache_dir")]
    #[schemars(length(min = 2, max = 1024))]
    #[x_kube(
        validation = Rule::new("self.startsWith('/')").message("spec.warm.cacheDir must be an absolute path"),
        validation = Rule::new("!self.split('/').exists(p, p == '..')").message("spec.warm.cacheDir must not contain '..'"),
        validation = Rule::new("!self.endsWith('/') && !self.contains('//') && !self.split('/').exists(p, p == '.')").message("spec.warm.cacheDir must be a clean path: no '.' or empty components, no trailing '/'"),
        validation = Rule::new("!['/proc', '/sys', '/dev', '/etc', '/run', '/var/run', '/var/lib/kubelet'].exists(r, self == r || self.startsWith(r + '/'))").message("spec.warm.cacheDir must not be in /proc, /sys, /dev, /etc, /run, /var/run or /var/lib/kubelet")
    )]
    pub cache_dir: String,

    /// Service account of the snapshot pod, for example one bound to a storage role. Defaults to
    /// the controller's Job service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub service_account_name: Option<String>,

    /// Warm by serving the site instead of running `command` to its end: the warm step starts
    /// `command` (with `args`; the site's server, such as `deno run -A main.ts`), waits until
    /// it answers on `serve.port`, requests `serve.paths`, then stops it with SIGTERM and waits
    /// for it. What the site loads at run time (modules imported by computed specifiers, npm
    /// packages it resolves while it runs) and Deno's V8 code cache get into the cache, which a
    /// `deno cache` warm leaves out. The agent binary is put in the warm container by an init
    /// container and runs the site as its child: the image needs no shell, but its C library
    /// must be glibc (Debian, Ubuntu or distroless `cc` based, as the official Deno images
    /// are, not Alpine's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<ServeSpec>,

    /// Security context of the warm container. A warm container declared non-root (here or in
    /// `spec.snapshot.pod.securityContext`: `runAsNonRoot`, or a `runAsUser` other than 0) gets
    /// the Pod Security `restricted` settings for the fields left unset (no privilege
    /// escalation, every capability dropped), and the Job's agent containers run as its
    /// `runAsUser`/`runAsGroup`, so that the cache `restore-previous` fills is the warm
    /// container's own to write. Such a container must therefore say which user it runs as
    /// (`runAsUser`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
}

/// How the warm step serves the site (see `spec.warm.serve`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServeSpec {
    /// The port the site listens on, on the pod's loopback or all addresses.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// The path whose answer (any status below 500) says the site is ready.
    #[serde(default = "default_readiness_path")]
    #[schemars(regex(pattern = r"^/[!-~]*$"), length(max = 1024))]
    pub readiness_path: String,
    /// Paths to request once it is ready, in order: the pages whose modules the cache should
    /// hold. Each must answer with a status below 400, or the snapshot fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(regex(pattern = r"^/[!-~]*$"), length(max = 1024))
    )]
    pub paths: Vec<String>,
    /// How long the site has to become ready and answer every path (a duration).
    #[serde(default = "default_serve_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: String,
    /// How long the site has to exit after SIGTERM before it is killed (a duration).
    #[serde(default = "default_stop_grace")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub stop_grace: String,
}

fn default_readiness_path() -> String {
    "/".into()
}

fn default_serve_timeout() -> String {
    "5m".into()
}

fn default_stop_grace() -> String {
    "20s".into()
}

/// Directories `spec.warm.cacheDir` may not be in (or be): where the kubelet and the runtime
/// put service account tokens, Secrets and system files.
pub const CACHE_DIR_RESERVED: [&str; 7] = [
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/run",
    "/var/run",
    "/var/lib/kubelet",
];

/// Why `dir` cannot be a `spec.warm.cacheDir`, if it cannot: the CRD's rules, for SiteCaches
/// stored before they were (or restored from elsewhere).
pub fn cache_dir_problem(dir: &str) -> Option<String> {
    if !dir.starts_with('/') || dir.len() < 2 {
        return Some("must be an absolute path below /".into());
    }
    if dir.ends_with('/')
        || dir[1..]
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Some(
            "must be a clean path: no '.', '..' or empty components, no trailing '/'".into(),
        );
    }
    CACHE_DIR_RESERVED
        .iter()
        .find(|r| {
            dir == **r
                || dir
                    .strip_prefix(**r)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .map(|r| format!("must not be in {r}, where secrets and system files are mounted"))
}

fn default_cache_dir() -> String {
    "/deno-dir".to_owned()
}

/// The source the cache is built from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// An opaque revision of what the cache depends on (a git commit, a lockfile hash, a runtime
    /// version). When it changes, a new snapshot is due; each generation records the revision it
    /// was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub revision: Option<String>,
}

impl SourceSpec {
    fn is_empty(&self) -> bool {
        self.revision.is_none()
    }
}

/// When a snapshot is due besides a source change or an on-demand request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// A snapshot is due when the current generation is older than this (a duration such as
    /// `24h`, `90m`).
    #[serde(default = "default_max_age")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("spec.schedule.maxAge must be at least 1s"))]
    pub max_age: String,

    /// Optional cron schedule (five fields, UTC, or `@daily`-style) on which a snapshot is also
    /// due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = CRON_PATTERN), length(max = 256))]
    pub cron: Option<String>,

    /// Each SiteCache's scheduled snapshots fire up to this much earlier than due, by an amount
    /// fixed per object, so that many sites do not snapshot at once (a duration; `0s` disables).
    #[serde(default = "default_jitter")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub jitter: String,
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        Self {
            max_age: default_max_age(),
            cron: None,
            jitter: default_jitter(),
        }
    }
}

fn default_max_age() -> String {
    "24h".to_owned()
}

fn default_jitter() -> String {
    "10m".to_owned()
}

/// A generation held as the current one (see `spec.pin`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PinSpec {
    /// The generation to promote and hold: one of `status.generations` (a retained generation,
    /// verified when its snapshot finished). Another number is refused (`InvalidPin`) and nothing
    /// changes.
    #[schemars(range(min = 1))]
    pub generation: u64,
}

/// How many generations are kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Promoted generations kept in storage, the current one included (at least 1). Older ones
    /// are deleted after each promotion.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 100))]
    pub keep: u32,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        Self {
            keep: default_keep(),
        }
    }
}

fn default_keep() -> u32 {
    3
}

/// How snapshot Jobs run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// Deadline of a snapshot Job, warming included (a duration; the Job's
    /// `activeDeadlineSeconds`).
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("spec.snapshot.timeout must be at least 1s"))]
    pub timeout: String,

    /// Retries of a failed snapshot pod within one Job (the Job's `backoffLimit`).
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: i32,

    /// A snapshot with fewer files than this is refused and never promoted (guards against an
    /// empty or partial cache replacing a good one).
    #[serde(default = "default_min_files")]
    #[schemars(range(min = 1))]
    pub min_files: u64,

    /// zstd compression level of the archive, 1 (fastest) to 19 (smallest).
    #[serde(default = "default_compression_level")]
    #[schemars(range(min = 1, max = 19))]
    pub compression_level: i32,

    /// When a snapshot is built from an empty cache instead of warming on top of the current
    /// generation. Warming on top is faster, but keeps every module an earlier revision used:
    /// without rebuilds a cache only grows, and every restore with it.
    #[serde(default)]
    pub rebuild: RebuildSpec,

    /// A Secret in the SiteCache's namespace whose keys `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and (optional) `AWS_SESSION_TOKEN` become the storage credentials
    /// of the Job's agent containers (`restore-previous` and `snapshot`) only: the warm container,
    /// which runs the site's own code, never gets them. Without it, the agent containers use the
    /// pod's identity (IRSA, EKS Pod Identity), which every container of the pod shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretRef>,

    /// Compute resources of the Job's agent containers (`restore-previous`, `snapshot`, and
    /// `install-agent` with `warm.serve`; the warm container's are `warm.resources`). Unset: the
    /// controller's Job defaults (`--job-defaults`, the chart's `jobDefaults.agentResources`),
    /// else requests of 250m CPU and 128Mi memory and a 512Mi memory limit. Set, it wins over
    /// the default as a whole: requests and limits come from here together, never mixed with
    /// the default's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_resources: Option<Box<ResourceRequirements>>,
    /// CA certificates (PEM) the Job's agent containers (`restore-previous` and `snapshot`)
    /// trust besides the platform's, for a store whose certificate a private CA issued: a key of
    /// a ConfigMap or Secret in the SiteCache's namespace, mounted read-only into those
    /// containers only. Unset, the controller's default applies (its
    /// `--agent-ca-bundle-config-map` or `--agent-ca-bundle-secret`, typically a trust-manager
    /// Bundle synced to every namespace), if it has one; set, it replaces that default. A
    /// missing ConfigMap, Secret or key fails the snapshot with a message that names them.
    /// It is here and not in `spec.storage`, which is immutable: a CA bundle changes (a new CA,
    /// a rotation) while the cache stays where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<Box<CaBundleRef>>,

    /// Settings of the snapshot Job's pod: where it may run, how it pulls images, its labels and
    /// annotations, its security context.
    #[serde(default, skip_serializing_if = "SnapshotPodSpec::is_empty")]
    pub pod: SnapshotPodSpec,
}

/// Settings of the snapshot Job's pod. The controller's own labels (`app.kubernetes.io/*` it
/// sets, `sitecache.dev/*`) cannot be set or overridden here. `imagePullSecrets`, `nodeSelector`
/// and `tolerations` default to the controller's Job defaults (`--job-defaults`, the chart's
/// `jobDefaults`); each one set here (non-empty) wins over its default as a whole.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPodSpec {
    /// Labels added to the pod (for example for network policies or cost reports).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Annotations of the pod (for example `sidecar.istio.io/inject: "false"` to keep a
    /// service-mesh sidecar, which would keep the Job from completing, out of it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// The pod's security context. Unset, the pod gets `seccompProfile: RuntimeDefault`; `fsGroup`
    /// here makes the cache volume group-owned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,

    /// Secrets holding credentials for pulling the warm image (and the agent image) from private
    /// registries. Empty: the controller's default (`jobDefaults.imagePullSecrets` in the chart);
    /// set, this list replaces the default, not added to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Node labels the pod must match. Empty: the controller's default
    /// (`jobDefaults.nodeSelector` in the chart); set, this map replaces the default as a whole
    /// (the default's other keys do not apply).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the pod tolerates. Empty: the controller's default (`jobDefaults.tolerations` in
    /// the chart); set, this list replaces the default, not added to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Node and pod affinity of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Priority class of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
}

impl SnapshotPodSpec {
    pub fn is_empty(&self) -> bool {
        *self == SnapshotPodSpec::default()
    }
}

/// A Secret in the SiteCache's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// A key of a ConfigMap or of a Secret (exactly one) in the SiteCache's namespace, holding CA
/// certificates (PEM).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.secret)").message("spec.snapshot.caBundle must name exactly one of configMap and secret"))]
pub struct CaBundleRef {
    /// The ConfigMap's name (trust-manager Bundles target ConfigMaps by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub config_map: Option<String>,

    /// The Secret's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret: Option<String>,

    /// The key whose value is the PEM bundle.
    #[serde(default = "default_ca_bundle_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// The key a CA bundle reference names unless it says: cert-manager's and trust-manager's.
pub const DEFAULT_CA_BUNDLE_KEY: &str = "ca.crt";

fn default_ca_bundle_key() -> String {
    DEFAULT_CA_BUNDLE_KEY.to_owned()
}

impl Default for SnapshotSpec {
    fn default() -> Self {
        Self {
            timeout: default_timeout(),
            backoff_limit: default_backoff_limit(),
            min_files: default_min_files(),
            compression_level: default_compression_level(),
            rebuild: RebuildSpec::default(),
            credentials_secret: None,
            agent_resources: None,
            ca_bundle: None,
            pod: SnapshotPodSpec::default(),
        }
    }
}

/// When a snapshot starts from an empty cache. Any one condition that holds makes the next
/// snapshot a rebuild; the first generation always is one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RebuildSpec {
    /// Rebuild when `spec.source.revision` changed: modules the old revision used and the new
    /// one does not are left behind.
    #[serde(default = "default_true")]
    pub on_revision_change: bool,

    /// Rebuild after this many generations in a row were warmed on top of the one before
    /// (0: never for this reason).
    #[serde(default = "default_every_generations")]
    #[schemars(range(max = 1000))]
    pub every_generations: u32,

    /// Rebuild when the current generation's files have grown by more than this percentage
    /// over the last rebuilt generation's (0: never for this reason).
    #[serde(default = "default_max_growth_percent")]
    #[schemars(range(max = 10000))]
    pub max_growth_percent: u32,
}

impl Default for RebuildSpec {
    fn default() -> Self {
        Self {
            on_revision_change: true,
            every_generations: default_every_generations(),
            max_growth_percent: default_max_growth_percent(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_every_generations() -> u32 {
    10
}

fn default_max_growth_percent() -> u32 {
    20
}

fn default_timeout() -> String {
    "30m".to_owned()
}

fn default_backoff_limit() -> i32 {
    1
}

fn default_min_files() -> u64 {
    1
}

fn default_compression_level() -> i32 {
    3
}

/// What happens to stored objects when the SiteCache is deleted.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum DeletionPolicy {
    /// Delete every object under the SiteCache's prefix, then release the SiteCache.
    #[default]
    Delete,
    /// Leave the objects in storage.
    Retain,
}

/// Publishing for runners that restore the older single-file format.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LegacySpec {
    /// Key (in the same bucket) at which each promoted generation is also published as a gzip
    /// tarball with entries under `deno-dir/`, as `tar -xzf - -C /` restores it. For example
    /// `<site>/cache.tgz`. A key outside the prefix is not removed on deletion.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(
        validation = Rule::new("!self.startsWith('/')").message("spec.legacy.publishKey must not start with '/'"),
        validation = Rule::new("!self.endsWith('/')").message("spec.legacy.publishKey must name an object, not end with '/'"),
        validation = Rule::new("!self.split('/').exists(p, p == '..')").message("spec.legacy.publishKey must not contain '..' segments")
    )]
    pub publish_key: String,
}
