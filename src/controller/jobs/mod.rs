//! The snapshot Job: built from the SiteCache by pure functions, and read back as a [`JobState`].

pub mod account;
pub mod logs;
pub mod queue;
pub mod quote;
pub mod rebuild;
pub mod report;
pub mod results;
pub mod stall;

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    KeyToPath, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use std::time::Duration;

use jiff::Timestamp;

use crate::api::{CaBundleRef, GenerationInfo, SiteCache};
use crate::controller::jobs::rebuild::RebuildReason;
use crate::controller::jobs::report::{REPORT_PATH, SNAPSHOT_CONTAINER, WARM_CONTAINER};
use crate::controller::settings::podspec::{self, RunAs};
use crate::controller::settings::{Settings, Target};

/// `app.kubernetes.io/managed-by` of every snapshot Job: what the controller and tools select.
pub const MANAGED_BY: &str = "sitecache";
/// Label selector of every snapshot Job.
pub const JOB_SELECTOR: &str = "app.kubernetes.io/managed-by=sitecache";
/// Label with the owning SiteCache's uid.
pub const UID_LABEL: &str = "sitecache.dev/uid";
/// Label with the generation the Job produces.
pub const GENERATION_LABEL: &str = "sitecache.dev/generation";
/// Annotation with the on-demand request the Job answers.
pub const REQUEST_ANNOTATION: &str = "sitecache.dev/answers-request";
/// Annotation with the generation the Job restores before warming, or `none` for a rebuild
/// from an empty cache.
pub const BASE_ANNOTATION: &str = "sitecache.dev/base-generation";
/// Annotation with why the Job rebuilds from an empty cache.
pub const REBUILD_ANNOTATION: &str = "sitecache.dev/rebuild";
/// Finalizer on every snapshot Job and on its pods (through the pod template): the Job and the
/// pods that hold its report (their termination messages) outlive deletion (`ttlSecondsAfterFinished`,
/// `kubectl delete`, a GitOps prune) until the controller has recorded the Job's result in the
/// status, however long the controller is down. The controller removes it then, as the Job
/// controller removes its pod-tracking finalizer once it has counted a pod.
pub const RESULT_FINALIZER: &str = "sitecache.dev/result";
/// Name of the cache volume and of the containers.
const CACHE_VOLUME: &str = "cache";
/// Where the agent binary lives in this project's image.
pub const AGENT_PROGRAM: &str = "/usr/local/bin/sitecache";
/// Deadline of the restore-previous init container: it only speeds warming up, so a slow restore
/// gives up and warming starts from empty.
const RESTORE_TIMEOUT: &str = "10m";

/// The Job name for generation `n` of SiteCache `name`: `<name>-g<n>` when that fits in 63
/// characters, else the name cut short plus a hash of the whole name, so that two long names never
/// share Jobs.
pub fn job_name(name: &str, generation: u64) -> String {
    let suffix = format!("-g{generation}");
    if name.len() + suffix.len() <= 63 {
        return format!("{name}{suffix}");
    }
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..4]);
    let keep = 63 - suffix.len() - hash.len() - 1;
    let mut cut = name[..keep].trim_end_matches(['-', '.']).to_owned();
    cut.push('-');
    cut.push_str(&hash);
    cut.push_str(&suffix);
    cut
}

/// A label value naming the SiteCache: the name if it is a valid label value, else shortened.
fn instance_label(name: &str) -> String {
    if name.len() <= 63 {
        name.to_owned()
    } else {
        let hash = hex::encode(&Sha256::digest(name.as_bytes())[..4]);
        format!("{}-{hash}", name[..54].trim_end_matches(['-', '.']))
    }
}

/// Whether `job` is the snapshot Job of the SiteCache with `uid`: it carries the controller's
/// labels with that uid, and its controller reference names that SiteCache.
pub fn is_ours(job: &Job, uid: &str) -> bool {
    let labelled = job.labels().get(UID_LABEL).map(String::as_str) == Some(uid)
        && job.labels().get(GENERATION_LABEL).is_some();
    let owned = job
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid);
    labelled && owned
}

/// What the Job needs besides the SiteCache.
pub struct JobInputs<'a> {
    pub settings: &'a Settings,
    pub target: &'a Target,
    pub generation: u64,
    /// The generation restored first so that warming only adds what changed; `None`: the
    /// snapshot rebuilds from an empty cache, for `rebuild`.
    pub base: Result<u64, &'a RebuildReason>,
    /// The on-demand request the snapshot answers.
    pub request: Option<&'a str>,
    /// The Job's deadline.
    pub timeout: Duration,
    /// The warm container's declared non-root user, which the agent containers run as.
    pub run_as: Option<RunAs>,
    /// Without a declared user: the non-root user that owned the files of the generation
    /// restored, which the agent containers run as (see [`observed_user`]).
    pub observed_user: Option<RunAs>,
}

/// The user of the agent image (the Dockerfile's `USER`).
pub const AGENT_USER: u32 = 65532;

/// The user the agents run as when the spec declares none (`declared`): the non-root user that
/// owned every file of `current` (an image whose own user is non-root wrote them), so that the
/// restored tree is that user's and the warm step can write into it. Root and the agents' own
/// user need nothing: root writes anywhere, and the agents are that user already.
pub fn observed_user(declared: Option<RunAs>, current: Option<&GenerationInfo>) -> Option<RunAs> {
    if declared.is_some() {
        return None;
    }
    let owner = current?.cache_owner?;
    (owner.uid != 0 && owner.uid != AGENT_USER).then_some(RunAs {
        uid: owner.uid.into(),
        gid: Some(owner.gid.into()),
    })
}

/// The snapshot Job for generation `inputs.generation` of `sc`.
pub fn snapshot_job(sc: &SiteCache, inputs: &JobInputs) -> Job {
    let spec = &sc.spec;
    let name = job_name(&sc.name_any(), inputs.generation);
    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name", "sitecache".to_owned()),
        ("app.kubernetes.io/instance", instance_label(&sc.name_any())),
        ("app.kubernetes.io/component", "snapshot".to_owned()),
        ("app.kubernetes.io/managed-by", MANAGED_BY.to_owned()),
        ("sitecache.dev/site", spec.site.clone()),
        (UID_LABEL, sc.uid().unwrap_or_default()),
        (GENERATION_LABEL, inputs.generation.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut annotations = BTreeMap::new();
    if let Some(r) = inputs.request {
        annotations.insert(REQUEST_ANNOTATION.to_owned(), r.to_owned());
    }
    match inputs.base {
        Ok(n) => annotations.insert(BASE_ANNOTATION.to_owned(), n.to_string()),
        Err(why) => {
            annotations.insert(REBUILD_ANNOTATION.to_owned(), why.label().to_owned());
            annotations.insert(BASE_ANNOTATION.to_owned(), "none".to_owned())
        }
    };

    let url = inputs.target.location.to_string();
    let cache_dir = spec.warm.cache_dir.clone();
    let mount = vec![VolumeMount {
        name: CACHE_VOLUME.to_owned(),
        mount_path: cache_dir.clone(),
        ..Default::default()
    }];
    let mut storage_env = storage_env(inputs.target);
    if let Some(secret) = &spec.snapshot.credentials_secret {
        storage_env.extend(credentials_env(&secret.name));
    }
    // The agent containers' CA bundle: the SiteCache's, else the controller's default.
    let ca_bundle = spec
        .snapshot
        .ca_bundle
        .as_deref()
        .or(inputs.settings.agent_ca_bundle.as_ref())
        .map(CaBundleMount::of);
    let mut agent_mounts = mount.clone();
    if let Some(ca) = &ca_bundle {
        storage_env.push(ca.env());
        agent_mounts.push(ca.mount());
    }

    // The agent containers' resources: the SiteCache's, else the Job defaults', else built in.
    let builtin;
    let resources = match inputs
        .settings
        .job_defaults
        .for_snapshot(&spec.snapshot)
        .agent_resources
    {
        Some(r) => r,
        None => {
            builtin = agent_resources();
            &builtin
        }
    };
    let agent = |name: &str, args, env, mounts| {
        agent_container(
            name,
            &inputs.settings.agent_image,
            resources,
            args,
            env,
            mounts,
        )
    };

    let mut init = Vec::new();
    if let Ok(previous) = inputs.base {
        init.push(agent(
            "restore-previous",
            vec![
                "restore".into(),
                "--url".into(),
                url.clone(),
                "--dest".into(),
                cache_dir.clone(),
                "--generation".into(),
                previous.to_string(),
                "--timeout".into(),
                RESTORE_TIMEOUT.into(),
            ],
            storage_env.clone(),
            agent_mounts.clone(),
        ));
    }
    let mut warm_env = vec![EnvVar {
        name: "DENO_DIR".into(),
        value: Some(cache_dir.clone()),
        value_from: None,
    }];
    warm_env.extend(
        spec.warm
            .env
            .iter()
            .flatten()
            .filter(|e| e.name != "DENO_DIR")
            .cloned(),
    );
    let mut warm_mounts = mount.clone();
    let (command, args) = match &spec.warm.serve {
        None => (spec.warm.command.clone(), spec.warm.args.clone()),
        // The agent, put in the pod by an init container, runs the site as its child.
        Some(_) => {
            init.push(agent(
                INSTALL_AGENT_CONTAINER,
                vec!["install-self".into(), AGENT_IN_WARM.into()],
                Vec::new(),
                vec![VolumeMount {
                    name: AGENT_VOLUME.into(),
                    mount_path: AGENT_DIR.into(),
                    ..Default::default()
                }],
            ));
            warm_mounts.push(VolumeMount {
                name: AGENT_VOLUME.into(),
                mount_path: AGENT_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
            (
                Some(vec![AGENT_IN_WARM.to_owned()]),
                Some(serve_args(&spec.warm)),
            )
        }
    };
    init.push(Container {
        name: WARM_CONTAINER.into(),
        image: Some(spec.warm.image.clone()),
        // The end of its log becomes its termination message when it fails: the status quotes
        // it (see `report`).
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        command,
        args,
        env: Some(warm_env),
        resources: spec.warm.resources.clone(),
        volume_mounts: Some(warm_mounts),
        ..Default::default()
    });

    let mut args = vec![
        "snapshot".into(),
        "--source".into(),
        cache_dir.clone(),
        "--url".into(),
        url,
        "--generation".into(),
        inputs.generation.to_string(),
        "--level".into(),
        spec.snapshot.compression_level.to_string(),
        "--min-files".into(),
        spec.snapshot.min_files.to_string(),
    ];
    if let Some(rev) = &spec.source.revision {
        args.extend(["--source-revision".into(), rev.clone()]);
    }
    if spec.legacy.is_some() {
        args.push("--legacy".into());
    }
    args.extend(["--report-file".into(), REPORT_PATH.into()]);
    let snapshot = Container {
        // What the controller promotes (see `report`).
        termination_message_path: Some(REPORT_PATH.into()),
        termination_message_policy: Some("File".into()),
        ..agent(SNAPSHOT_CONTAINER, args, storage_env, agent_mounts)
    };

    let timeout = inputs.timeout.as_secs().max(1);
    // The Job carries the controller's labels; its pod the user's too.
    let mut pod_labels = labels.clone();
    let mut pod_annotations = BTreeMap::new();
    let mut pod = PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: spec
            .warm
            .service_account_name
            .clone()
            .or_else(|| inputs.settings.job_service_account.clone()),
        init_containers: Some(init),
        containers: vec![snapshot],
        volumes: Some(
            std::iter::once(CACHE_VOLUME)
                .chain(spec.warm.serve.as_ref().map(|_| AGENT_VOLUME))
                .map(|name| Volume {
                    name: name.into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                })
                .chain(ca_bundle.as_ref().map(CaBundleMount::volume))
                .collect(),
        ),
        ..Default::default()
    };
    podspec::apply(
        sc,
        &inputs.settings.job_defaults,
        inputs.run_as,
        inputs.observed_user,
        &mut pod,
        &mut pod_labels,
        &mut pod_annotations,
    );
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: sc.namespace(),
            labels: Some(labels.clone()),
            annotations: Some(annotations),
            owner_references: sc.controller_owner_ref(&()).map(|o| vec![o]),
            finalizers: Some(vec![RESULT_FINALIZER.into()]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(spec.snapshot.backoff_limit),
            active_deadline_seconds: Some(timeout as i64),
            ttl_seconds_after_finished: Some(
                inputs.settings.job_ttl.as_secs().min(i32::MAX as u64) as i32,
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    finalizers: Some(vec![RESULT_FINALIZER.into()]),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The init container that puts the agent binary in the pod for a warm step that serves.
pub const INSTALL_AGENT_CONTAINER: &str = "install-agent";
/// Its volume, and where the warm container finds the binary.
const AGENT_VOLUME: &str = "sitecache-agent";
const AGENT_DIR: &str = "/sitecache-agent";
const AGENT_IN_WARM: &str = "/sitecache-agent/sitecache";

/// `sitecache warm-serve`'s arguments for `spec.warm.serve`: the site's command after `--`.
fn serve_args(warm: &crate::api::WarmSpec) -> Vec<String> {
    let Some(serve) = &warm.serve else {
        return Vec::new();
    };
    let mut args = vec![
        "warm-serve".to_owned(),
        "--port".into(),
        serve.port.to_string(),
        "--ready-path".into(),
        serve.readiness_path.clone(),
        "--timeout".into(),
        serve.timeout.clone(),
        "--stop-grace".into(),
        serve.stop_grace.clone(),
    ];
    for path in &serve.paths {
        args.extend(["--path".into(), path.clone()]);
    }
    args.push("--".into());
    args.extend(warm.command.iter().flatten().cloned());
    args.extend(warm.args.iter().flatten().cloned());
    args
}

/// The volume of the agent containers' CA bundle.
const CA_BUNDLE_VOLUME: &str = "ca-bundle";

/// A CA bundle reference as the agent containers get it: one key of a ConfigMap or Secret,
/// mounted read-only at a path that names where it came from (the agent's errors quote the
/// path), and `SITECACHE_CA_BUNDLE` naming the file.
struct CaBundleMount<'a> {
    source: &'a CaBundleRef,
    dir: String,
}

impl<'a> CaBundleMount<'a> {
    fn of(source: &'a CaBundleRef) -> Self {
        let dir = match (&source.config_map, &source.secret) {
            (Some(name), _) => format!("/etc/sitecache/ca-bundle/configmap-{name}"),
            (None, Some(name)) => format!("/etc/sitecache/ca-bundle/secret-{name}"),
            (None, None) => "/etc/sitecache/ca-bundle/none".to_owned(),
        };
        CaBundleMount { source, dir }
    }

    fn env(&self) -> EnvVar {
        EnvVar {
            name: crate::storage::CA_BUNDLE_ENV.to_owned(),
            value: Some(format!("{}/{}", self.dir, self.source.key)),
            value_from: None,
        }
    }

    fn mount(&self) -> VolumeMount {
        VolumeMount {
            name: CA_BUNDLE_VOLUME.to_owned(),
            mount_path: self.dir.clone(),
            read_only: Some(true),
            ..Default::default()
        }
    }

    /// The volume: only the named key. Optional: a missing ConfigMap, Secret or key would keep
    /// the pod from starting (kubelet retries the mount until the Job's deadline, and no
    /// container reports why); the agent then fails at once instead, naming the file, whose path
    /// names the ConfigMap or Secret and the key.
    fn volume(&self) -> Volume {
        let items = Some(vec![KeyToPath {
            key: self.source.key.clone(),
            path: self.source.key.clone(),
            ..Default::default()
        }]);
        Volume {
            name: CA_BUNDLE_VOLUME.to_owned(),
            config_map: self
                .source
                .config_map
                .as_ref()
                .map(|name| ConfigMapVolumeSource {
                    name: name.clone(),
                    items: items.clone(),
                    optional: Some(true),
                    ..Default::default()
                }),
            secret: self.source.secret.as_ref().map(|name| SecretVolumeSource {
                secret_name: Some(name.clone()),
                items,
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The standard AWS variables that point the agent at the SiteCache's store.
fn storage_env(target: &Target) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    };
    let mut env = Vec::new();
    if let Some(region) = &target.region {
        env.push(var("AWS_REGION", region.clone()));
    }
    if let Some(endpoint) = &target.endpoint {
        env.push(var("AWS_ENDPOINT_URL_S3", endpoint.clone()));
    }
    if target.path_style {
        env.push(var("SITECACHE_PATH_STYLE", "true".into()));
    }
    env
}

/// The AWS credential variables of the agent containers, from the keys of Secret `name`.
fn credentials_env(name: &str) -> Vec<EnvVar> {
    let key = |var: &str, optional: bool| EnvVar {
        name: var.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: name.to_owned(),
                key: var.to_owned(),
                optional: optional.then_some(true),
            }),
            ..Default::default()
        }),
    };
    vec![
        key("AWS_ACCESS_KEY_ID", false),
        key("AWS_SECRET_ACCESS_KEY", false),
        key("AWS_SESSION_TOKEN", true),
    ]
}

/// Requests and limits of the agent containers unless the SiteCache or the Job defaults say
/// otherwise (`spec.snapshot.agentResources`, `--job-defaults`). The snapshot streams with bounded memory (tens
/// of MiB whatever the tree's size, see bench/README.md) and restore's buffers are bounded too;
/// the limit leaves room for both, and the requests let the pods into namespaces whose
/// ResourceQuota requires them.
fn agent_resources() -> ResourceRequirements {
    let q = |v: &str| Quantity(v.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q("250m")),
            ("memory".to_owned(), q("128Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), q("512Mi"))])),
        ..Default::default()
    }
}

/// A container running this project's image: non-root, unprivileged, read-only root
/// filesystem, the runtime's default seccomp profile (Pod Security "restricted").
fn agent_container(
    name: &str,
    image: &str,
    resources: &ResourceRequirements,
    args: Vec<String>,
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: name.to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![AGENT_PROGRAM.to_owned()]),
        args: Some(args),
        env: Some(env),
        volume_mounts: Some(mounts),
        resources: Some(resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What became of a snapshot Job.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    /// Created, running or retrying.
    Running { start: Option<Time> },
    Succeeded {
        start: Option<Time>,
        completion: Option<Time>,
    },
    Failed {
        start: Option<Time>,
        completion: Option<Time>,
        reason: String,
        message: String,
    },
    /// The Job the status names is gone (deleted, or removed by its TTL before the controller saw
    /// it finish): its generation decides.
    Vanished,
}

/// What a snapshot Job warmed on top of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// An empty cache: a rebuild.
    Empty,
    /// This generation, restored first.
    Generation(u64),
    /// Not recorded (a Job made by hand or by an older controller).
    Unknown,
}

/// A snapshot Job as the controller sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    pub name: String,
    /// Empty for a Job the status names that is gone.
    pub uid: String,
    pub generation: u64,
    pub request: Option<String>,
    pub base: Base,
    pub state: JobState,
    pub deleting: bool,
    /// When the Job was created (`None` for one that is gone).
    pub created: Option<Timestamp>,
    /// The pods the Job controller counts as active (pending or running), and as failed.
    pub active: i32,
    pub failed: i32,
    /// The Job still carries [`RESULT_FINALIZER`]: its result has not been released.
    pub holds_result: bool,
    /// The version the watch saw, and the finalizers it had then (to release the result).
    pub resource_version: Option<String>,
    pub finalizers: Vec<String>,
}

impl JobView {
    /// Reads a Job the controller made; `None` for one without a generation label.
    pub fn of(job: &Job) -> Option<JobView> {
        let labels = job.meta().labels.as_ref()?;
        let generation = labels.get(GENERATION_LABEL)?.parse().ok()?;
        let status = job.status.clone().unwrap_or_default();
        let condition = |t: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == t && c.status == "True")
        };
        let start = status.start_time.clone();
        let state = if condition("Complete").is_some() {
            JobState::Succeeded {
                start,
                completion: status.completion_time.clone(),
            }
        } else if let Some(c) = condition("Failed").or_else(|| condition("FailureTarget")) {
            JobState::Failed {
                start,
                completion: c.last_transition_time.clone(),
                reason: c.reason.clone().unwrap_or_else(|| "JobFailed".into()),
                message: c.message.clone().unwrap_or_default(),
            }
        } else {
            JobState::Running { start }
        };
        let annotation = |key: &str| job.meta().annotations.as_ref()?.get(key).cloned();
        let base = match annotation(BASE_ANNOTATION).as_deref() {
            Some("none") => Base::Empty,
            Some(n) => n.parse().map_or(Base::Unknown, Base::Generation),
            None => Base::Unknown,
        };
        Some(JobView {
            name: job.name_any(),
            uid: job.uid().unwrap_or_default(),
            generation,
            request: annotation(REQUEST_ANNOTATION),
            base,
            state,
            deleting: job.meta().deletion_timestamp.is_some(),
            created: job.meta().creation_timestamp.as_ref().map(|t| t.0),
            active: status.active.unwrap_or(0),
            failed: status.failed.unwrap_or(0),
            holds_result: job.finalizers().iter().any(|f| f == RESULT_FINALIZER),
            resource_version: job.resource_version(),
            finalizers: job.finalizers().to_vec(),
        })
    }

    /// Whether the Job has not finished. A Job deleted before it finished (`kubectl delete
    /// --cascade=foreground`, a GitOps prune) still runs until its pods have stopped: it keeps
    /// its snapshot slot and its generation, and the next one does not start beside it.
    pub fn is_running(&self) -> bool {
        matches!(self.state, JobState::Running { .. })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::SiteCacheSpec;
    use crate::storage::Location;

    pub(crate) fn settings() -> Settings {
        crate::controller::settings::settings_from(&[
            "--default-bucket",
            "caches",
            "--agent-image",
            "ghcr.io/sitecache/sitecache:test",
            "--job-service-account",
            "sitecache-snapshot",
        ])
    }

    fn site() -> SiteCache {
        let spec: SiteCacheSpec = serde_json::from_value(serde_json::json!({
            "site": "shop",
            "warm": {"image": "shop:1", "command": ["deno", "cache", "main.ts"],
                      "env": [{"name": "DENO_DIR", "value": "/elsewhere"}, {"name": "A", "value": "b"}]},
            "source": {"revision": "abc"},
            "snapshot": {"timeout": "15m", "backoffLimit": 2, "minFiles": 100, "compressionLevel": 5},
            "legacy": {"publishKey": "shop/cache.tgz"},
        }))
        .unwrap();
        let mut sc = SiteCache::new("shop-cache", spec);
        sc.metadata.namespace = Some("web".into());
        sc.metadata.uid = Some("uid-1".into());
        sc
    }

    pub(crate) fn target() -> Target {
        Target {
            location: Location::new("caches", "shop/").unwrap(),
            region: Some("eu-west-1".into()),
            endpoint: Some("http://minio:9000".into()),
            path_style: true,
        }
    }

    #[test]
    fn names_are_deterministic_and_short() {
        assert_eq!(job_name("shop", 7), "shop-g7");
        let long = "a".repeat(63);
        let n = job_name(&long, u64::MAX);
        assert!(n.len() <= 63, "{n}");
        assert_eq!(n, job_name(&long, u64::MAX));
        assert!(n.ends_with(&format!("-g{}", u64::MAX)));
        let other = format!("{}b", "a".repeat(62));
        assert_ne!(job_name(&other, 1), job_name(&long, 1));
        let dotted = format!("{}.{}", "x".repeat(50), "y".repeat(30));
        let n = job_name(&dotted, 3);
        assert!(n.len() <= 63 && !n.contains(".-"), "{n}");
    }

    #[test]
    fn job_spec() {
        let s = settings();
        let t = target();
        let job = snapshot_job(
            &site(),
            &JobInputs {
                settings: &s,
                target: &t,
                generation: 5,
                base: Ok(4),
                request: Some("tok"),
                timeout: Duration::from_secs(900),
                run_as: None,
                observed_user: None,
            },
        );
        assert_eq!(job.metadata.name.as_deref(), Some("shop-cache-g5"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("web"));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("SiteCache", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        let labels = job.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "sitecache");
        assert_eq!(labels[GENERATION_LABEL], "5");
        assert_eq!(labels[UID_LABEL], "uid-1");
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(900));
        assert_eq!(spec.backoff_limit, Some(2));
        assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("sitecache-snapshot")
        );
        assert!(pod.volumes.as_ref().unwrap()[0].empty_dir.is_some());
        let init = pod.init_containers.as_ref().unwrap();
        assert_eq!(init[0].name, "restore-previous");
        let restore_args = init[0].args.as_ref().unwrap().join(" ");
        assert_eq!(
            restore_args,
            "restore --url s3://caches/shop/ --dest /deno-dir --generation 4 --timeout 10m"
        );
        assert_eq!(init[1].name, "warm");
        assert_eq!(init[1].image.as_deref(), Some("shop:1"));
        let env = init[1].env.as_ref().unwrap();
        assert_eq!(env[0].name, "DENO_DIR");
        assert_eq!(env[0].value.as_deref(), Some("/deno-dir"));
        assert_eq!(env.iter().filter(|e| e.name == "DENO_DIR").count(), 1);
        assert_eq!(
            init[1].volume_mounts.as_ref().unwrap()[0].mount_path,
            "/deno-dir"
        );
        let snap = &pod.containers[0];
        assert_eq!(
            snap.image.as_deref(),
            Some("ghcr.io/sitecache/sitecache:test")
        );
        for agent in [&init[0], snap] {
            let sc = agent.security_context.as_ref().unwrap();
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            let requests = agent.resources.as_ref().unwrap().requests.as_ref().unwrap();
            assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
        }
        assert_eq!(
            snap.args.as_ref().unwrap().join(" "),
            "snapshot --source /deno-dir --url s3://caches/shop/ --generation 5 --level 5 \
             --min-files 100 --source-revision abc --legacy --report-file /dev/termination-log"
        );
        assert_eq!(
            snap.termination_message_path.as_deref(),
            Some("/dev/termination-log")
        );
        let env: Vec<_> = snap
            .env
            .iter()
            .flatten()
            .map(|e| format!("{}={}", e.name, e.value.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            env,
            [
                "AWS_REGION=eu-west-1",
                "AWS_ENDPOINT_URL_S3=http://minio:9000",
                "SITECACHE_PATH_STYLE=true"
            ]
        );
        let annotations = job.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[REQUEST_ANNOTATION], "tok");
        assert_eq!(annotations[BASE_ANNOTATION], "4");
        assert_eq!(JobView::of(&job).unwrap().base, Base::Generation(4));
    }

    #[test]
    fn agent_resources_come_from_the_sitecache_else_the_job_defaults_else_built_in() {
        let t = target();
        let resources_of =
            |s: &Settings, sc: &SiteCache| -> Vec<(String, Option<ResourceRequirements>)> {
                let mut sc = sc.clone();
                sc.spec.warm.serve =
                    Some(serde_json::from_value(serde_json::json!({"port": 8000})).unwrap());
                let job = snapshot_job(
                    &sc,
                    &JobInputs {
                        settings: s,
                        target: &t,
                        generation: 2,
                        base: Ok(1),
                        request: None,
                        timeout: Duration::from_secs(900),
                        run_as: None,
                        observed_user: None,
                    },
                );
                let pod = job.spec.unwrap().template.spec.unwrap();
                pod.init_containers
                    .unwrap()
                    .into_iter()
                    .chain(pod.containers)
                    .map(|c| (c.name, c.resources))
                    .collect()
            };
        let memory = |r: &Option<ResourceRequirements>| {
            r.as_ref()
                .and_then(|r| r.limits.as_ref())
                .map(|l| l["memory"].0.clone())
        };
        let mut s = settings();
        let built_in = resources_of(&s, &site());
        let names: Vec<&str> = built_in.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["restore-previous", "install-agent", "warm", "snapshot"]
        );
        for (name, r) in &built_in {
            let expected = (name != "warm").then(|| "512Mi".to_owned());
            assert_eq!(memory(r), expected, "{name}");
        }

        s.job_defaults = crate::controller::settings::job_defaults::JobDefaults::parse(
            "agentResources: {limits: {memory: 1Gi}}",
        )
        .unwrap();
        for (name, r) in resources_of(&s, &site()) {
            let expected = (name != "warm").then(|| "1Gi".to_owned());
            assert_eq!(memory(&r), expected, "{name}");
        }

        let mut own = site();
        own.spec.snapshot.agent_resources = Some(Box::new(
            serde_json::from_value(serde_json::json!({"limits": {"memory": "2Gi"}})).unwrap(),
        ));
        for (name, r) in resources_of(&s, &own) {
            let expected = (name != "warm").then(|| "2Gi".to_owned());
            assert_eq!(memory(&r), expected, "{name}");
        }
    }

    #[test]
    fn credentials_from_a_secret_reach_the_agent_containers_only() {
        let s = settings();
        let t = target();
        let mut sc = site();
        sc.spec.snapshot.credentials_secret = Some(crate::api::SecretRef {
            name: "shop-s3".into(),
        });
        let job = snapshot_job(
            &sc,
            &JobInputs {
                settings: &s,
                target: &t,
                generation: 5,
                base: Ok(4),
                request: None,
                timeout: Duration::from_secs(900),
                run_as: None,
                observed_user: None,
            },
        );
        let pod = job.spec.unwrap().template.spec.unwrap();
        let init = pod.init_containers.unwrap();
        let secret_vars = |c: &Container| -> Vec<String> {
            c.env
                .iter()
                .flatten()
                .filter_map(|e| {
                    let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
                    Some(format!("{}={}/{}", e.name, r.name, r.key))
                })
                .collect()
        };
        let expected = [
            "AWS_ACCESS_KEY_ID=shop-s3/AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY=shop-s3/AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN=shop-s3/AWS_SESSION_TOKEN",
        ];
        assert_eq!(init[0].name, "restore-previous");
        assert_eq!(secret_vars(&init[0]), expected);
        assert_eq!(secret_vars(&pod.containers[0]), expected);
        assert_eq!(init[1].name, "warm");
        assert!(
            init[1]
                .env
                .iter()
                .flatten()
                .all(|e| !e.name.starts_with("AWS_") && e.value_from.is_none()),
            "{:?}",
            init[1].env
        );
    }

    /// The pod of generation 5 (on top of 4) of `sc` with the controller's `flags`.
    fn pod_of(sc: &SiteCache, flags: &[&str]) -> PodSpec {
        let mut all = vec![
            "--default-bucket",
            "caches",
            "--agent-image",
            "ghcr.io/sitecache/sitecache:test",
        ];
        all.extend(flags);
        let s = crate::controller::settings::settings_from(&all);
        let t = target();
        let job = snapshot_job(
            sc,
            &JobInputs {
                settings: &s,
                target: &t,
                generation: 5,
                base: Ok(4),
                request: None,
                timeout: Duration::from_secs(900),
                run_as: None,
                observed_user: None,
            },
        );
        job.spec.unwrap().template.spec.unwrap()
    }

    /// Each container's `SITECACHE_CA_BUNDLE` and the read-only mounts of the CA volume, by
    /// container name.
    fn ca_bundles(pod: &PodSpec) -> Vec<String> {
        pod.init_containers
            .iter()
            .flatten()
            .chain(&pod.containers)
            .map(|c| {
                let env = c
                    .env
                    .iter()
                    .flatten()
                    .find(|e| e.name == "SITECACHE_CA_BUNDLE")
                    .and_then(|e| e.value.clone());
                let mounts: Vec<String> = c
                    .volume_mounts
                    .iter()
                    .flatten()
                    .filter(|m| m.name == CA_BUNDLE_VOLUME && m.read_only == Some(true))
                    .map(|m| m.mount_path.clone())
                    .collect();
                format!("{}: {env:?} {mounts:?}", c.name)
            })
            .collect()
    }

    #[test]
    fn a_ca_bundle_reaches_the_agent_containers_only() {
        let mut sc = site();
        sc.spec.warm.serve = serde_json::from_value(serde_json::json!({"port": 8000})).unwrap();
        // No default and none in the spec: nothing mounted.
        let pod = pod_of(&sc, &[]);
        assert!(
            ca_bundles(&pod).iter().all(|c| c.ends_with("None []")),
            "{:?}",
            ca_bundles(&pod)
        );

        // The controller's default: a ConfigMap key in the SiteCache's namespace.
        let pod = pod_of(
            &sc,
            &[
                "--agent-ca-bundle-config-map",
                "trust-bundle",
                "--agent-ca-bundle-key",
                "bundle.pem",
            ],
        );
        let dir = "/etc/sitecache/ca-bundle/configmap-trust-bundle";
        assert_eq!(
            ca_bundles(&pod),
            [
                format!("restore-previous: Some(\"{dir}/bundle.pem\") [\"{dir}\"]"),
                "install-agent: None []".to_owned(),
                "warm: None []".to_owned(),
                format!("snapshot: Some(\"{dir}/bundle.pem\") [\"{dir}\"]"),
            ]
        );
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == CA_BUNDLE_VOLUME)
            .expect("the CA volume");
        let cm = volume.config_map.as_ref().expect("from the ConfigMap");
        assert_eq!(cm.name, "trust-bundle");
        let items = cm.items.as_ref().unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("bundle.pem", "bundle.pem")
        );
        assert!(volume.secret.is_none());
        assert_eq!(
            cm.optional,
            Some(true),
            "a missing one fails the agent, not the mount"
        );

        // The SiteCache's own replaces the default.
        sc.spec.snapshot.ca_bundle = Some(Box::new(crate::api::CaBundleRef {
            config_map: None,
            secret: Some("shop-ca".into()),
            key: "ca.crt".into(),
        }));
        let pod = pod_of(&sc, &["--agent-ca-bundle-config-map", "trust-bundle"]);
        let dir = "/etc/sitecache/ca-bundle/secret-shop-ca";
        assert_eq!(
            ca_bundles(&pod)[3],
            format!("snapshot: Some(\"{dir}/ca.crt\") [\"{dir}\"]")
        );
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == CA_BUNDLE_VOLUME)
            .unwrap();
        assert!(volume.config_map.is_none());
        assert_eq!(
            volume
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("shop-ca")
        );
    }

    #[test]
    fn first_generation_has_nothing_to_restore() {
        let s = settings();
        let t = target();
        let job = snapshot_job(
            &site(),
            &JobInputs {
                settings: &s,
                target: &t,
                generation: 1,
                base: Err(&RebuildReason::FirstGeneration),
                request: None,
                timeout: Duration::from_secs(900),
                run_as: None,
                observed_user: None,
            },
        );
        let pod = job.spec.clone().unwrap().template.spec.unwrap();
        let names: Vec<_> = pod
            .init_containers
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["warm"]);
        let annotations = job.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[REBUILD_ANNOTATION], "first-generation");
        assert_eq!(JobView::of(&job).unwrap().base, Base::Empty);
    }

    #[test]
    fn a_warm_step_that_serves_runs_the_site_under_the_agent_it_was_given() {
        let s = settings();
        let t = target();
        let mut sc = site();
        sc.spec.warm.command = Some(vec!["deno".into(), "run".into(), "-A".into()]);
        sc.spec.warm.args = Some(vec!["main.ts".into()]);
        sc.spec.warm.serve = Some(
            serde_json::from_value(serde_json::json!({"port": 8000, "paths": ["/", "/p/1"]}))
                .unwrap(),
        );
        let job = snapshot_job(
            &sc,
            &JobInputs {
                settings: &s,
                target: &t,
                generation: 2,
                base: Ok(1),
                request: None,
                timeout: Duration::from_secs(900),
                run_as: None,
                observed_user: None,
            },
        );
        let pod = job.spec.unwrap().template.spec.unwrap();
        let init = pod.init_containers.unwrap();
        let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["restore-previous", "install-agent", "warm"]);
        let install = &init[1];
        assert_eq!(
            install.image.as_deref(),
            Some("ghcr.io/sitecache/sitecache:test")
        );
        assert_eq!(
            install.args.as_ref().unwrap(),
            &["install-self", "/sitecache-agent/sitecache"]
        );
        let warm = &init[2];
        assert_eq!(warm.image.as_deref(), Some("shop:1"));
        assert_eq!(
            warm.command.as_ref().unwrap(),
            &["/sitecache-agent/sitecache"]
        );
        assert_eq!(
            warm.args.as_ref().unwrap().join(" "),
            "warm-serve --port 8000 --ready-path / --timeout 5m --stop-grace 20s --path / \
             --path /p/1 -- deno run -A main.ts"
        );
        let mounts: Vec<(&str, Option<bool>)> = warm
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.mount_path.as_str(), m.read_only))
            .collect();
        assert_eq!(
            mounts,
            [("/deno-dir", None), ("/sitecache-agent", Some(true))]
        );
        let volumes: Vec<String> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(volumes, ["cache", "sitecache-agent"]);
    }
}
