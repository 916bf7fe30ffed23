//! The controller's configuration: flags, each with an environment variable.

pub mod identity;
pub mod job_defaults;
pub mod podspec;
pub mod prefix;
pub mod schedule;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kube::ResourceExt;

use crate::agent::parse_duration;
use crate::api::{BUCKET_PATTERN, CaBundleRef, DEFAULT_CA_BUNDLE_KEY, SiteCache};
use crate::storage::{CaBundle, CaBundleError, Location, StorageOptions};

use job_defaults::{JobDefaults, JobDefaultsError};
use prefix::{DEFAULT_PREFIX_TEMPLATE, PrefixTemplate};

/// The image the snapshot Jobs' agent containers run unless `--agent-image` says otherwise.
pub const DEFAULT_AGENT_IMAGE: &str =
    concat!("ghcr.io/sitecache/sitecache:", env!("CARGO_PKG_VERSION"));

/// Reconcile SiteCache objects.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Bucket of SiteCaches that name none.
    #[arg(long, env = "SITECACHE_DEFAULT_BUCKET")]
    pub default_bucket: Option<String>,

    /// Buckets SiteCaches may use (comma-separated). The default bucket is always allowed.
    #[arg(long, env = "SITECACHE_ALLOWED_BUCKETS", value_delimiter = ',')]
    pub allowed_buckets: Vec<String>,

    /// S3 endpoints SiteCaches may name in spec.storage.endpoint (comma-separated URLs). The
    /// controller calls them with its own credentials; the default endpoint is always allowed.
    #[arg(
        long,
        env = "SITECACHE_ALLOWED_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub allowed_endpoints: Vec<String>,

    /// Let spec.legacy.publishKey name a key outside the SiteCache's own prefix (never one under
    /// another SiteCache's prefix).
    #[arg(long, env = "SITECACHE_ALLOW_LEGACY_KEYS_OUTSIDE_PREFIX", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_legacy_keys_outside_prefix: bool,

    /// Storage prefix of SiteCaches that name none in spec.storage.prefix, from `{namespace}`,
    /// `{name}` (the SiteCache's) and `{site}` (spec.site). `{namespace}/{site}/` keeps the sites
    /// of different namespaces apart. Only a SiteCache without a recorded location
    /// (status.url) takes it: changing it moves no existing cache.
    #[arg(long, env = "SITECACHE_DEFAULT_PREFIX_TEMPLATE", default_value = DEFAULT_PREFIX_TEMPLATE, value_name = "TEMPLATE")]
    pub default_prefix_template: String,

    /// Region of SiteCaches that name none (default: the AWS default chain, else us-east-1).
    #[arg(long, env = "SITECACHE_S3_REGION")]
    pub region: Option<String>,

    /// S3 endpoint of SiteCaches that name none (default: AWS_ENDPOINT_URL_S3, else AWS).
    #[arg(long, env = "SITECACHE_S3_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,

    /// Path-style addressing for SiteCaches that do not say (MinIO and most self-hosted stores).
    #[arg(long, env = "SITECACHE_PATH_STYLE", value_parser = clap::builder::BoolishValueParser::new())]
    pub path_style: bool,

    /// CA certificates (PEM, one or more) the controller trusts besides the platform's in its
    /// own storage calls, for a store whose certificate a private CA issued. Read at start-up.
    #[arg(long, env = "SITECACHE_CA_BUNDLE", value_name = "FILE")]
    pub ca_bundle: Option<std::path::PathBuf>,

    /// A ConfigMap, in each SiteCache's namespace, whose key --agent-ca-bundle-key holds the CA
    /// certificates the snapshot Jobs' agent containers trust besides the platform's (a
    /// trust-manager Bundle synced to every namespace under one name); spec.snapshot.caBundle
    /// overrides it.
    #[arg(
        long,
        env = "SITECACHE_AGENT_CA_BUNDLE_CONFIG_MAP",
        value_name = "NAME",
        conflicts_with = "agent_ca_bundle_secret"
    )]
    pub agent_ca_bundle_config_map: Option<String>,

    /// As --agent-ca-bundle-config-map, from a Secret of that name.
    #[arg(long, env = "SITECACHE_AGENT_CA_BUNDLE_SECRET", value_name = "NAME")]
    pub agent_ca_bundle_secret: Option<String>,

    /// The key of --agent-ca-bundle-config-map or --agent-ca-bundle-secret.
    #[arg(long, env = "SITECACHE_AGENT_CA_BUNDLE_KEY", value_name = "KEY", default_value = DEFAULT_CA_BUNDLE_KEY)]
    pub agent_ca_bundle_key: String,

    /// Snapshot Jobs running at once across every watched namespace; the rest wait.
    #[arg(long, env = "SITECACHE_MAX_CONCURRENT_SNAPSHOTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_snapshots: u32,

    /// Image of the snapshot Jobs' restore and snapshot containers (this project's image).
    #[arg(long, env = "SITECACHE_AGENT_IMAGE", default_value = DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,

    /// Service account of snapshot pods whose SiteCache names none (for example one bound to a
    /// storage role through IRSA or EKS Pod Identity).
    #[arg(long, env = "SITECACHE_JOB_SERVICE_ACCOUNT")]
    pub job_service_account: Option<String>,

    /// A YAML or JSON file of defaults for the snapshot Jobs: `agentResources` (of the agent
    /// containers), `imagePullSecrets`, `nodeSelector` and `tolerations` (of the pod). A
    /// SiteCache's own field (`spec.snapshot.agentResources`, `spec.snapshot.pod.*`) wins, per
    /// field: a default fills only a field the SiteCache leaves unset or empty. Read once at
    /// start-up; a file that does not parse or holds an invalid field stops the controller.
    #[arg(long, env = "SITECACHE_JOB_DEFAULTS", value_name = "FILE")]
    pub job_defaults: Option<PathBuf>,
    /// Create --job-service-account in a SiteCache's namespace when a snapshot Job needs it and
    /// it is missing (labelled app.kubernetes.io/managed-by=sitecache, no token mounted). An
    /// account someone else made is left as it is.
    #[arg(
        long,
        env = "SITECACHE_CREATE_JOB_SERVICE_ACCOUNT",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub create_job_service_account: bool,

    /// Annotations of the Job service accounts the controller creates (comma-separated
    /// KEY=VALUE; for example eks.amazonaws.com/role-arn=... for IRSA).
    #[arg(
        long,
        env = "SITECACHE_JOB_SERVICE_ACCOUNT_ANNOTATIONS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub job_service_account_annotations: Vec<String>,

    /// How long finished snapshot Jobs are kept (`ttlSecondsAfterFinished`).
    #[arg(long, env = "SITECACHE_JOB_TTL", default_value = "1h", value_parser = parse_duration)]
    pub job_ttl: Duration,

    /// How much of the end of each snapshot container's log is kept in the bucket when the Job
    /// is handled (`P/logs/<n>.json`, read by `kubectl sitecache logs`). 0 keeps none.
    #[arg(long, env = "SITECACHE_JOB_LOG_BYTES", default_value = "64KiB", value_parser = crate::agent::parse_size)]
    pub job_log_bytes: u64,

    /// How long deletion waits for a SiteCache's snapshot pods to stop (a pod on a lost node never
    /// does) before it goes on without them.
    #[arg(long, env = "SITECACHE_SNAPSHOT_POD_STOP_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub snapshot_pod_stop_timeout: Duration,

    /// How long a snapshot Job may go without a pod, with a pod that cannot be scheduled or with a
    /// container that cannot start (an image pull, a missing Secret key) before its SiteCache
    /// reports it (`Degraded`, a Warning Event); the Job's deadline still ends it.
    #[arg(long, env = "SITECACHE_SNAPSHOT_STALL_AFTER", default_value = "2m", value_parser = parse_duration)]
    pub snapshot_stall_after: Duration,

    /// Namespaces to watch (comma-separated; default: all).
    #[arg(
        long = "namespace",
        env = "SITECACHE_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "SITECACHE_LISTEN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub listen_address: SocketAddr,

    /// First delay after a failed snapshot; it doubles with each failure in a row.
    #[arg(long, env = "SITECACHE_FAILURE_BACKOFF", default_value = "1m", value_parser = parse_duration)]
    pub failure_backoff: Duration,

    /// Longest delay between failed snapshots.
    #[arg(long, env = "SITECACHE_FAILURE_BACKOFF_MAX", default_value = "1h", value_parser = parse_duration)]
    pub failure_backoff_max: Duration,

    /// Longest time between two reconciles of a SiteCache: the safety net behind the watches.
    /// A reconcile reads the watch cache and sends no request when nothing changed, so this
    /// costs CPU only.
    #[arg(long, env = "SITECACHE_RESYNC", default_value = "1h", value_parser = parse_duration)]
    pub resync: Duration,

    /// Concurrent reconciles per watched namespace (0: unbounded).
    #[arg(long, env = "SITECACHE_RECONCILE_CONCURRENCY", default_value_t = 16)]
    pub reconcile_concurrency: u16,

    /// Elect a leader among replicas on a Lease; only the leader reconciles.
    #[arg(long, env = "SITECACHE_LEADER_ELECT", value_parser = clap::builder::BoolishValueParser::new())]
    pub leader_elect: bool,

    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, else `default`).
    #[arg(long, env = "SITECACHE_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "SITECACHE_LEADER_ELECTION_LEASE",
        default_value = "sitecache-controller"
    )]
    pub leader_election_lease: String,

    /// How long a leader's lease lasts without renewal: the longest handover after it dies.
    #[arg(long, env = "SITECACHE_LEADER_ELECTION_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_duration: Duration,

    /// This replica's identity in the Lease (default: POD_NAME, else host name and process id).
    #[arg(long, env = "SITECACHE_LEADER_ELECTION_IDENTITY")]
    pub leader_election_identity: Option<String>,

    /// How long a superseded generation is kept after the promotion that superseded it, beyond
    /// `spec.retention.keep`: a runner that read `current.json` just before the promotion still
    /// finds the archive it named.
    #[arg(long, env = "SITECACHE_RETENTION_GRACE", default_value = "10m", value_parser = parse_duration)]
    pub retention_grace: Duration,

    /// This cluster's identity in the ownership markers it writes (default: the UID of the
    /// `kube-system` namespace). A prefix whose marker names another cluster is never taken
    /// over. Set it when two installs must count as one cluster (a rebuilt cluster taking over
    /// its predecessor's prefixes), or when the controller may not read `kube-system`.
    #[arg(long, env = "SITECACHE_CLUSTER_ID")]
    pub cluster_id: Option<String>,

    /// Standby: follow the generations another cluster promotes under each SiteCache's prefix
    /// and report them in the status, writing and deleting nothing in storage and running no
    /// snapshot Job (a disaster-recovery or migration cluster on the same bucket).
    #[arg(long, env = "SITECACHE_STANDBY", value_parser = clap::builder::BoolishValueParser::new())]
    pub standby: bool,

    /// How often a standby reads each SiteCache's `current.json` to follow promotions (one GET).
    #[arg(long, env = "SITECACHE_STANDBY_POLL", default_value = "5m", value_parser = parse_duration)]
    pub standby_poll: Duration,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--default-bucket {0:?} is not a valid bucket name (pattern {BUCKET_PATTERN})")]
    BadDefaultBucket(String),
    #[error("--allowed-buckets: {0:?} is not a valid bucket name (pattern {BUCKET_PATTERN})")]
    BadAllowedBucket(String),
    #[error("--failure-backoff must not be longer than --failure-backoff-max")]
    BackoffOrder,
    #[error("--agent-image must not be empty")]
    NoAgentImage,
    #[error("--allowed-endpoints: {0:?} is not an http or https URL")]
    BadAllowedEndpoint(String),
    #[error("--endpoint {0:?} is not an http or https URL")]
    BadEndpoint(String),
    #[error("--cluster-id {0:?} must be 1 to 128 printable characters without spaces")]
    BadClusterId(String),
    #[error("--default-prefix-template {0:?} {1}")]
    BadPrefixTemplate(String, String),
    #[error("--job-service-account {0:?} is not a valid ServiceAccount name (a DNS subdomain)")]
    BadJobServiceAccount(String),
    #[error("--job-service-account-annotations: {0}")]
    BadJobServiceAccountAnnotation(String),
    #[error(
        "--job-service-account-annotations needs --job-service-account: they annotate the \
         account the controller creates"
    )]
    AnnotationsWithoutAccount,
    #[error(
        "--job-log-bytes {0} is more than 256KiB: a Job's logs are one document of at most 1 MiB"
    )]
    JobLogTooLarge(u64),
    #[error(transparent)]
    JobDefaults(#[from] JobDefaultsError),
    #[error("{0}")]
    CaBundle(#[from] CaBundleError),
    #[error("{flag} {value:?} is not a valid {what}")]
    BadAgentCaBundle {
        flag: &'static str,
        value: String,
        what: &'static str,
    },
}

/// The most of each container's log `--job-log-bytes` may keep.
const MAX_JOB_LOG_BYTES: u64 = 256 * 1024;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_bucket: Option<String>,
    pub allowed_buckets: BTreeSet<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// Endpoints a SiteCache may name, normalized ([`normalize_endpoint`]); the default
    /// endpoint included.
    pub allowed_endpoints: BTreeSet<String>,
    pub allow_legacy_keys_outside_prefix: bool,
    pub path_style: bool,
    pub max_concurrent_snapshots: u32,
    pub agent_image: String,
    pub job_service_account: Option<String>,
    /// `--job-defaults`: what the snapshot Jobs of SiteCaches that set none of their own get.
    pub job_defaults: JobDefaults,
    /// `--create-job-service-account` (meaningful with `job_service_account` only).
    pub create_job_service_account: bool,
    pub job_service_account_annotations: BTreeMap<String, String>,
    /// `--default-prefix-template`.
    pub default_prefix: PrefixTemplate,
    pub job_ttl: Duration,
    pub job_log_bytes: u64,
    pub snapshot_pod_stop_timeout: Duration,
    pub snapshot_stall_after: Duration,
    pub namespaces: Vec<String>,
    pub failure_backoff: Duration,
    pub failure_backoff_max: Duration,
    pub resync: Duration,
    pub reconcile_concurrency: u16,
    pub retention_grace: Duration,
    /// `--cluster-id`; `None`: the `kube-system` namespace's UID, read at start-up.
    pub cluster_id: Option<String>,
    pub standby: bool,
    pub standby_poll: Duration,
    /// `--ca-bundle`, read and checked.
    pub ca_bundle: Option<CaBundle>,
    /// The CA bundle of snapshot Jobs whose SiteCache names none (`--agent-ca-bundle-*`).
    pub agent_ca_bundle: Option<CaBundleRef>,
}

impl TryFrom<&ControllerArgs> for Settings {
    type Error = ConfigError;

    fn try_from(a: &ControllerArgs) -> Result<Self, ConfigError> {
        let valid = |b: &str| Location::new(b, "x/").is_ok();
        if let Some(b) = &a.default_bucket
            && !valid(b)
        {
            return Err(ConfigError::BadDefaultBucket(b.clone()));
        }
        let mut allowed = BTreeSet::new();
        for b in a
            .allowed_buckets
            .iter()
            .map(|b| b.trim())
            .filter(|b| !b.is_empty())
        {
            if !valid(b) {
                return Err(ConfigError::BadAllowedBucket(b.to_owned()));
            }
            allowed.insert(b.to_owned());
        }
        allowed.extend(a.default_bucket.clone());
        let is_url = |u: &str| {
            let u = u.trim();
            (u.starts_with("http://") || u.starts_with("https://")) && u.len() > "https://".len()
        };
        if let Some(e) = &a.endpoint
            && !is_url(e)
        {
            return Err(ConfigError::BadEndpoint(e.clone()));
        }
        let mut allowed_endpoints = BTreeSet::new();
        for e in a
            .allowed_endpoints
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
        {
            if !is_url(e) {
                return Err(ConfigError::BadAllowedEndpoint(e.to_owned()));
            }
            allowed_endpoints.insert(normalize_endpoint(e));
        }
        allowed_endpoints.extend(a.endpoint.as_deref().map(normalize_endpoint));
        if a.failure_backoff > a.failure_backoff_max {
            return Err(ConfigError::BackoffOrder);
        }
        if a.job_log_bytes > MAX_JOB_LOG_BYTES {
            return Err(ConfigError::JobLogTooLarge(a.job_log_bytes));
        }
        if a.agent_image.trim().is_empty() {
            return Err(ConfigError::NoAgentImage);
        }
        let mut namespaces: Vec<String> = a
            .namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        namespaces.sort();
        namespaces.dedup();
        let cluster_id = a.cluster_id.as_deref().map(str::trim);
        if let Some(id) = cluster_id
            && !valid_cluster_id(id)
        {
            return Err(ConfigError::BadClusterId(id.to_owned()));
        }
        let default_prefix = PrefixTemplate::parse(&a.default_prefix_template).map_err(|why| {
            ConfigError::BadPrefixTemplate(a.default_prefix_template.clone(), why)
        })?;
        let job_service_account = a
            .job_service_account
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        if let Some(n) = job_service_account
            && !is_dns_subdomain(n)
        {
            return Err(ConfigError::BadJobServiceAccount(n.to_owned()));
        }
        let job_service_account_annotations = parse_annotations(&a.job_service_account_annotations)
            .map_err(ConfigError::BadJobServiceAccountAnnotation)?;
        if job_service_account.is_none() && !job_service_account_annotations.is_empty() {
            return Err(ConfigError::AnnotationsWithoutAccount);
        }
        let job_defaults = match &a.job_defaults {
            Some(path) => JobDefaults::load(path)?,
            None => JobDefaults::default(),
        };
        let agent_ca_bundle = agent_ca_bundle(a)?;
        // Read last: a configuration error says what is wrong without touching the file.
        let ca_bundle = a.ca_bundle.as_deref().map(CaBundle::load).transpose()?;
        Ok(Settings {
            default_bucket: a.default_bucket.clone(),
            allowed_buckets: allowed,
            region: a.region.clone(),
            endpoint: a.endpoint.clone(),
            allowed_endpoints,
            allow_legacy_keys_outside_prefix: a.allow_legacy_keys_outside_prefix,
            path_style: a.path_style,
            max_concurrent_snapshots: a.max_concurrent_snapshots,
            agent_image: a.agent_image.clone(),
            job_service_account: job_service_account.map(str::to_owned),
            create_job_service_account: a.create_job_service_account,
            job_service_account_annotations,
            default_prefix,
            job_defaults,
            job_ttl: a.job_ttl,
            job_log_bytes: a.job_log_bytes,
            snapshot_pod_stop_timeout: a.snapshot_pod_stop_timeout,
            snapshot_stall_after: a.snapshot_stall_after,
            namespaces,
            failure_backoff: a.failure_backoff,
            failure_backoff_max: a.failure_backoff_max,
            resync: a.resync,
            reconcile_concurrency: a.reconcile_concurrency,
            retention_grace: a.retention_grace,
            cluster_id: cluster_id.map(str::to_owned),
            standby: a.standby,
            standby_poll: a.standby_poll,
            ca_bundle,
            agent_ca_bundle,
        })
    }
}

/// The snapshot Jobs' default CA bundle from `--agent-ca-bundle-*`, checked as the API server
/// checks `spec.snapshot.caBundle`.
fn agent_ca_bundle(a: &ControllerArgs) -> Result<Option<CaBundleRef>, ConfigError> {
    let (flag, name) = match (&a.agent_ca_bundle_config_map, &a.agent_ca_bundle_secret) {
        (Some(n), _) => ("--agent-ca-bundle-config-map", n.trim()),
        (None, Some(n)) => ("--agent-ca-bundle-secret", n.trim()),
        (None, None) => return Ok(None),
    };
    if name.is_empty() {
        return Ok(None);
    }
    if !is_dns_subdomain(name) {
        return Err(ConfigError::BadAgentCaBundle {
            flag,
            value: name.to_owned(),
            what: "ConfigMap or Secret name",
        });
    }
    let key = a.agent_ca_bundle_key.trim();
    let key_ok = (1..=253).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !key_ok {
        return Err(ConfigError::BadAgentCaBundle {
            flag: "--agent-ca-bundle-key",
            value: key.to_owned(),
            what: "ConfigMap or Secret key",
        });
    }
    let config_map = a.agent_ca_bundle_config_map.is_some();
    Ok(Some(CaBundleRef {
        config_map: config_map.then(|| name.to_owned()),
        secret: (!config_map).then(|| name.to_owned()),
        key: key.to_owned(),
    }))
}

/// `KEY=VALUE` items as annotations; an error names the item and what is wrong with it.
fn parse_annotations(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("{item:?} is not KEY=VALUE"));
        };
        let key = key.trim();
        if let Some(why) = annotation_key_problem(key) {
            return Err(format!("{key:?} is not a valid annotation key: {why}"));
        }
        out.insert(key.to_owned(), value.trim().to_owned());
    }
    Ok(out)
}

/// What is wrong with an annotation key (`[prefix/]name`: a DNS subdomain, and at most 63
/// letters, digits, '-', '_' or '.' that start and end with a letter or digit).
fn annotation_key_problem(key: &str) -> Option<&'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) {
        return Some("its prefix is not a DNS subdomain");
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = (1..=63).contains(&name.len())
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (!ok).then_some(
        "its name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a \
         letter or digit",
    )
}

/// A DNS subdomain (RFC 1123), as Kubernetes names most objects: at most 253 characters, dot-
/// separated labels of lower-case letters, digits and '-' that start and end with a letter or
/// digit.
fn is_dns_subdomain(s: &str) -> bool {
    (1..=253).contains(&s.len())
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// A cluster identity as markers record it: short, printable, no spaces.
pub fn valid_cluster_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.chars().all(|c| c.is_ascii_graphic())
}

/// Where and how one SiteCache's objects are stored: its spec over the controller's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub location: Location,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: bool,
}

/// Why a SiteCache's storage cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "spec.storage.bucket is not set and the controller has no default bucket (--default-bucket)"
    )]
    NoBucket,
    #[error(
        "spec.storage.bucket {bucket:?} is not in the controller's allowed buckets ({allowed})"
    )]
    NotAllowed { bucket: String, allowed: String },
    #[error("status.url {0:?} is not a valid location: {1}")]
    BadUrl(String, String),
    #[error("spec.storage: {0}")]
    Invalid(String),
}

impl Settings {
    /// Resolves a SiteCache's storage. The location is fixed by `status.url` once set (the spec's
    /// storage is immutable, but the controller's defaults may change).
    pub fn target(&self, sc: &SiteCache) -> Result<Target, TargetError> {
        let target = self.resolve(sc)?;
        self.check_allowed(&target.location.bucket)?;
        Ok(target)
    }

    /// Resolves a SiteCache's storage without the allow-list (deletion cleans up where the
    /// SiteCache wrote, even if the bucket has since left the list).
    pub fn resolve(&self, sc: &SiteCache) -> Result<Target, TargetError> {
        let storage = &sc.spec.storage;
        let location = match sc.status.as_ref().and_then(|s| s.url.as_deref()) {
            Some(url) => url
                .parse::<Location>()
                .map_err(|e| TargetError::BadUrl(url.to_owned(), e.to_string()))?,
            None => {
                let bucket = storage
                    .bucket
                    .clone()
                    .or_else(|| self.default_bucket.clone())
                    .ok_or(TargetError::NoBucket)?;
                let prefix = storage.prefix.clone().unwrap_or_else(|| {
                    self.default_prefix.render(
                        &sc.namespace().unwrap_or_default(),
                        &sc.name_any(),
                        &sc.spec.site,
                    )
                });
                Location::new(&bucket, &prefix).map_err(|e| TargetError::Invalid(e.to_string()))?
            }
        };
        Ok(Target {
            location,
            region: storage.region.clone().or_else(|| self.region.clone()),
            endpoint: storage.endpoint.clone().or_else(|| self.endpoint.clone()),
            path_style: storage.force_path_style.unwrap_or(self.path_style),
        })
    }

    /// Whether a SiteCache may name `endpoint` in `spec.storage.endpoint`.
    pub fn endpoint_allowed(&self, endpoint: &str) -> bool {
        self.allowed_endpoints
            .contains(&normalize_endpoint(endpoint))
    }

    /// The allowed endpoints, for messages.
    pub fn allowed_endpoints_text(&self) -> String {
        if self.allowed_endpoints.is_empty() {
            "none configured".to_owned()
        } else {
            self.allowed_endpoints
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    fn check_allowed(&self, bucket: &str) -> Result<(), TargetError> {
        if !self.allowed_buckets.contains(bucket) {
            return Err(TargetError::NotAllowed {
                bucket: bucket.to_owned(),
                allowed: if self.allowed_buckets.is_empty() {
                    "none configured".to_owned()
                } else {
                    self.allowed_buckets
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        }
        Ok(())
    }
}

impl Target {
    /// Client options for the controller's own storage calls.
    pub fn storage_options(&self) -> StorageOptions {
        StorageOptions {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            path_style: self.path_style,
            connect_timeout: Some(Duration::from_secs(5)),
            attempt_timeout: Some(Duration::from_secs(30)),
            max_attempts: Some(3),
            interceptor: None,
            ca_bundle: None,
        }
    }
}

/// An endpoint URL as the allow-list compares it: scheme and authority in lower case, without a
/// trailing '/'.
pub fn normalize_endpoint(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            format!(
                "{}://{}{path}",
                scheme.to_ascii_lowercase(),
                authority.to_ascii_lowercase()
            )
        }
        None => url.to_ascii_lowercase(),
    }
}

/// Settings from command-line flags, for tests.
#[cfg(test)]
pub fn settings_from(flags: &[&str]) -> Settings {
    try_settings_from(flags).unwrap_or_else(|e| panic!("{e}"))
}

/// Settings from command-line flags, or the error a start with them reports, for tests.
#[cfg(test)]
pub fn try_settings_from(flags: &[&str]) -> Result<Settings, String> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }
    let cli = <Cli as clap::Parser>::try_parse_from(
        std::iter::once("controller").chain(flags.iter().copied()),
    )
    .map_err(|e| e.to_string())?;
    Settings::try_from(&cli.args).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(flags: &[&str]) -> String {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ControllerArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(
            std::iter::once("controller").chain(flags.iter().copied()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Settings::try_from(&cli.args).unwrap_err().to_string()
    }

    #[test]
    fn a_ca_bundle_that_cannot_be_used_stops_the_controller_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.crt");
        let e = config_error(&["--ca-bundle", missing.to_str().unwrap()]);
        assert!(
            e.starts_with(&format!(
                "--ca-bundle {}: cannot read it",
                missing.display()
            )),
            "{e}"
        );
        std::fs::write(&missing, "not a certificate").unwrap();
        let e = config_error(&["--ca-bundle", missing.to_str().unwrap()]);
        assert!(
            e.ends_with("holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"),
            "{e}"
        );

        let ca = sitecache_devtools::TestCa::new("company").unwrap();
        std::fs::write(&missing, ca.cert_pem()).unwrap();
        let s = settings_from(&["--ca-bundle", missing.to_str().unwrap()]);
        assert_eq!(s.ca_bundle.map(|b| b.certificates()), Some(1));
    }

    #[test]
    fn the_agents_default_ca_bundle_is_checked_as_the_api_server_checks_a_spec() {
        let s = settings_from(&["--agent-ca-bundle-secret", "company-ca"]);
        assert_eq!(
            s.agent_ca_bundle,
            Some(CaBundleRef {
                config_map: None,
                secret: Some("company-ca".into()),
                key: "ca.crt".into(),
            })
        );
        assert_eq!(settings_from(&[]).agent_ca_bundle, None);
        assert_eq!(
            config_error(&["--agent-ca-bundle-config-map", "Trust_Bundle"]),
            "--agent-ca-bundle-config-map \"Trust_Bundle\" is not a valid ConfigMap or Secret name"
        );
        assert_eq!(
            config_error(&[
                "--agent-ca-bundle-config-map",
                "trust-bundle",
                "--agent-ca-bundle-key",
                "a/b"
            ]),
            "--agent-ca-bundle-key \"a/b\" is not a valid ConfigMap or Secret key"
        );
    }

    fn sitecache(ns: &str, name: &str, site: &str, status_url: Option<&str>) -> SiteCache {
        let spec = serde_json::from_value(serde_json::json!({
            "site": site, "warm": {"image": "i", "command": ["deno", "cache", "main.ts"]},
        }))
        .unwrap();
        let mut sc = SiteCache::new(name, spec);
        sc.metadata.namespace = Some(ns.into());
        sc.status = status_url.map(|u| crate::api::SiteCacheStatus {
            url: Some(u.into()),
            ..Default::default()
        });
        sc
    }

    #[test]
    fn the_default_prefix_is_the_site_unless_the_template_says_otherwise() {
        let s = settings_from(&["--default-bucket", "caches"]);
        let a = sitecache("team-a", "shop-cache", "shop", None);
        assert_eq!(
            s.target(&a).unwrap().location.to_string(),
            "s3://caches/shop/"
        );
        let s = settings_from(&[
            "--default-bucket",
            "caches",
            "--default-prefix-template",
            "{namespace}/{site}/",
        ]);
        let b = sitecache("team-b", "shop-cache", "shop", None);
        assert_eq!(
            s.target(&a).unwrap().location.to_string(),
            "s3://caches/team-a/shop/"
        );
        assert_eq!(
            s.target(&b).unwrap().location.to_string(),
            "s3://caches/team-b/shop/"
        );
        // A recorded location wins over the template: a changed template moves no cache.
        let recorded = sitecache("team-a", "shop-cache", "shop", Some("s3://caches/shop/"));
        assert_eq!(
            s.target(&recorded).unwrap().location.to_string(),
            "s3://caches/shop/"
        );
        // So does spec.storage.prefix.
        let mut own = sitecache("team-a", "shop-cache", "shop", None);
        own.spec.storage.prefix = Some("mine/".into());
        assert_eq!(s.target(&own).unwrap().location.prefix, "mine/");
    }

    #[test]
    fn a_bad_template_names_the_flag() {
        let e = try_settings_from(&["--default-prefix-template", "{ns}/{site}/"]).unwrap_err();
        assert_eq!(
            e,
            "--default-prefix-template \"{ns}/{site}/\" has an unknown placeholder {ns} \
             (known: {namespace}, {name}, {site})"
        );
        let e = try_settings_from(&["--default-prefix-template", "{namespace}/"]).unwrap_err();
        assert!(
            e.starts_with("--default-prefix-template \"{namespace}/\" names neither"),
            "{e}"
        );
    }

    #[test]
    fn job_service_account_settings() {
        let s = settings_from(&["--job-service-account", "snap"]);
        assert_eq!(s.job_service_account.as_deref(), Some("snap"));
        assert!(s.create_job_service_account, "created by default");
        assert!(s.job_service_account_annotations.is_empty());
        let s = settings_from(&[
            "--job-service-account",
            "snap",
            "--create-job-service-account=false",
            "--job-service-account-annotations",
            "eks.amazonaws.com/role-arn=arn:aws:iam::1:role/x=y, azure.workload.identity/client-id=abc",
        ]);
        assert!(!s.create_job_service_account);
        assert_eq!(
            s.job_service_account_annotations,
            BTreeMap::from([
                (
                    "azure.workload.identity/client-id".to_owned(),
                    "abc".to_owned()
                ),
                (
                    "eks.amazonaws.com/role-arn".to_owned(),
                    "arn:aws:iam::1:role/x=y".to_owned()
                ),
            ])
        );
        let e = try_settings_from(&[
            "--job-service-account",
            "snap",
            "--job-service-account-annotations",
            "role",
        ])
        .unwrap_err();
        assert_eq!(
            e,
            "--job-service-account-annotations: \"role\" is not KEY=VALUE"
        );
        let e = try_settings_from(&[
            "--job-service-account",
            "snap",
            "--job-service-account-annotations",
            "Bad_Prefix/x=1",
        ])
        .unwrap_err();
        assert!(
            e.contains("\"Bad_Prefix/x\" is not a valid annotation key"),
            "{e}"
        );
        let e = try_settings_from(&["--job-service-account-annotations", "a=b"]).unwrap_err();
        assert!(e.contains("needs --job-service-account"), "{e}");
        let e = try_settings_from(&["--job-service-account", "Snap_1"]).unwrap_err();
        assert!(e.starts_with("--job-service-account \"Snap_1\""), "{e}");
    }

    #[test]
    fn endpoint_normalization() {
        assert_eq!(
            normalize_endpoint("HTTPS://Minio.Example:9000/"),
            "https://minio.example:9000"
        );
        assert_eq!(normalize_endpoint("http://h/Path/"), "http://h/Path");
    }
}
