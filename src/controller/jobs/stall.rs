//! A running snapshot Job that makes no progress: the Job controller cannot create its pod
//! (admission such as Pod Security, a ResourceQuota, a missing ServiceAccount), the pod cannot be
//! scheduled, or a container cannot start (an image that cannot be pulled, a Secret key that is
//! missing). The Job's deadline ends such a Job eventually; until then the SiteCache says why, so
//! that nobody waits for the deadline to learn it (see `docs/controller.md`, "Stalled snapshots").
//!
//! Pure: the Job as the watch shows it and its pods in, a [`Stall`] out. The Job controller's
//! `FailedCreate` message, the only account of a refused pod, is read by the caller.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::controller::jobs::JobView;
use crate::controller::jobs::quote;

/// Why a running snapshot Job makes no progress.
#[derive(Clone, Debug, PartialEq)]
pub enum Stall {
    /// The Job has had no pod for `seconds` (after its creation, or its last pod's end and the
    /// Job controller's back-off). `cause`: the Job controller's latest `FailedCreate` message.
    NoPod {
        job: String,
        seconds: u64,
        cause: Option<String>,
    },
    /// The scheduler finds no node for the pod.
    Unschedulable { pod: String, message: String },
    /// A container of the pod waits for a reason that does not pass by itself.
    ContainerWaiting {
        pod: String,
        container: String,
        reason: String,
        message: String,
    },
}

/// Waiting reasons of a container that cannot start until something changes (kubelet's): the
/// ones it passes through on its way (`ContainerCreating`, `PodInitializing`) are not here.
const STUCK_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "PreCreateHookError",
    "PreStartHookError",
];

/// The Job controller's back-off before it replaces a failed pod: 10 s doubling per failure, at
/// most 6 min.
fn retry_backoff(failed: i32) -> Duration {
    if failed <= 0 {
        return Duration::ZERO;
    }
    let doublings = (failed - 1).min(6) as u32;
    (Duration::from_secs(10) * 2u32.pow(doublings)).min(Duration::from_secs(360))
}

/// The reasons of the stalls, in the order of [`Stall`]'s variants.
const REASONS: [&str; 3] = [
    "SnapshotPodNotCreated",
    "SnapshotPodUnschedulable",
    "SnapshotContainerNotStarting",
];

impl Stall {
    /// The reason of the Warning Event and of the `Degraded` and `Progressing` conditions.
    pub fn reason(&self) -> &'static str {
        REASONS[match self {
            Stall::NoPod { .. } => 0,
            Stall::Unschedulable { .. } => 1,
            Stall::ContainerWaiting { .. } => 2,
        }]
    }

    /// Whether `reason` is one of a stall's.
    pub fn is_stall_reason(reason: &str) -> bool {
        REASONS.contains(&reason)
    }

    /// The message of the conditions and the Event; what kubelet, the scheduler or the Job
    /// controller said is quoted on one line ([`quote`]).
    pub fn message(&self) -> String {
        let q = quote::one_line;
        match self {
            Stall::NoPod {
                job,
                seconds,
                cause,
            } => format!(
                "Job {job} has had no pod for {seconds} s: {}; it fails at its deadline \
                 (spec.snapshot.timeout) unless this is resolved",
                cause.as_deref().map_or_else(
                    || "the Job controller cannot create it (see the Job's FailedCreate Events)"
                        .to_owned(),
                    q
                )
            ),
            Stall::Unschedulable { pod, message } => {
                format!("pod {pod} cannot be scheduled: {}", q(message))
            }
            Stall::ContainerWaiting {
                pod,
                container,
                reason,
                message,
            } => format!(
                "container {container} of pod {pod} cannot start: {}: {}",
                q(reason),
                q(message)
            ),
        }
    }
}

/// When the pods of a Job that has run for at least `after` show a [`Stall`] that has lasted
/// `after`. A `NoPod` stall has no cause yet.
pub fn diagnose(job: &JobView, pods: &[Pod], now: Timestamp, after: Duration) -> Option<Stall> {
    let age = |t: Option<Timestamp>| {
        t.and_then(|t| Duration::try_from(now.duration_since(t)).ok())
            .unwrap_or(Duration::ZERO)
    };
    let mut live: Vec<&Pod> = pods.iter().filter(|p| is_live(p)).collect();
    if live.is_empty() {
        // The watch may show the pod counted before the list shows it; a pod that succeeded
        // leaves the Job to be marked complete.
        if job.active > 0 || pods.iter().any(|p| phase(p) == Some("Succeeded")) {
            return None;
        }
        // Quiet since the Job's creation or the latest end of one of its pods.
        let quiet_since = pods.iter().flat_map(pod_times).chain(job.created).max()?;
        let quiet = age(Some(quiet_since));
        return (quiet >= after + retry_backoff(job.failed)).then(|| Stall::NoPod {
            job: job.name.clone(),
            seconds: quiet.as_secs(),
            cause: None,
        });
    }
    live.sort_by_key(|p| std::cmp::Reverse(created(p)));
    for pod in live {
        if age(created(pod)) < after {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let unschedulable = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
        if let Some(c) = unschedulable {
            return Some(Stall::Unschedulable {
                pod: name,
                message: c.message.clone().unwrap_or_default(),
            });
        }
        let containers = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        if let Some((container, reason, message)) = containers.filter_map(stuck).next() {
            return Some(Stall::ContainerWaiting {
                pod: name,
                container,
                reason,
                message,
            });
        }
    }
    None
}

/// A pod that has not finished and is not being deleted.
fn is_live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase(pod), Some("Succeeded" | "Failed"))
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

fn created(pod: &Pod) -> Option<Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// A pod's creation and the ends of its containers.
fn pod_times(pod: &Pod) -> Vec<Timestamp> {
    let status = pod.status.clone().unwrap_or_default();
    let ends = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter_map(|c| {
            let t = c
                .state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()?;
            Some(t.0)
        });
    created(pod).into_iter().chain(ends).collect()
}

/// A container waiting for a reason of [`STUCK_WAITING`]: its name, the reason, the message.
fn stuck(c: &ContainerStatus) -> Option<(String, String, String)> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    STUCK_WAITING.contains(&reason).then(|| {
        (
            c.name.clone(),
            reason.to_owned(),
            waiting.message.clone().unwrap_or_default(),
        )
    })
}

#[cfg(test)]
mod tests;
