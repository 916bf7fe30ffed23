//! The logs of a finished snapshot Job, read from its pods before they go ([`capture`]): the
//! result finalizer keeps the pods until the Job is handled, and the Job's handling is when its
//! logs are kept (`objects::logs`). The end of each container's log, bounded; a log that cannot
//! be read is recorded as such, never an error of the reconcile.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;
use kube::api::{Api, LogParams};

use crate::storage::joblog::{ContainerLog, PodLog, tail};

/// The newest pods of a Job whose logs are kept (a Job that retried has one pod per attempt).
pub const PODS_KEPT: usize = 3;
/// Lines asked of kubelet per container, before the byte bound.
const TAIL_LINES: i64 = 2000;
/// How long one container's log may take to read.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Why a log was not read when kubelet did not answer in time.
const SILENT: &str = "kubelet did not answer in time";

/// The logs of the last [`PODS_KEPT`] of `pods` (oldest first), each container's end bounded by
/// `limit` bytes, and how many older pods were left out.
pub async fn capture(api: &Api<Pod>, pods: &[Pod], limit: usize) -> (Vec<PodLog>, u32) {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let left_out = pods.len().saturating_sub(PODS_KEPT);
    let mut out = Vec::new();
    for pod in &pods[left_out..] {
        let mut containers = Vec::new();
        // Once kubelet has not answered for one container, the pod's others are not asked.
        let mut silent = false;
        for (name, status) in containers_of(pod) {
            let state = describe(status);
            let started = status.is_some_and(|s| {
                s.state
                    .as_ref()
                    .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
            });
            let read = if !started {
                Err("the container did not start".to_owned())
            } else if silent {
                Err(SILENT.to_owned())
            } else {
                read_log(api, &pod.name_any(), &name, limit).await
            };
            silent |= read.as_ref().is_err_and(|why| why == SILENT);
            containers.push(match read {
                Ok((log, truncated)) => ContainerLog {
                    name,
                    state,
                    log,
                    truncated,
                    unavailable: None,
                },
                Err(why) => ContainerLog {
                    name,
                    state,
                    log: String::new(),
                    truncated: false,
                    unavailable: Some(why),
                },
            });
        }
        out.push(PodLog {
            name: pod.name_any(),
            containers,
        });
    }
    (out, left_out as u32)
}

/// The pod's containers in the order they run (init containers first), with their statuses.
fn containers_of(pod: &Pod) -> Vec<(String, Option<&ContainerStatus>)> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            let st = find(
                status.and_then(|s| s.init_container_statuses.as_ref()),
                &c.name,
            );
            (c.name.clone(), st)
        });
    let main = spec.into_iter().flat_map(|s| &s.containers).map(|c| {
        let st = find(status.and_then(|s| s.container_statuses.as_ref()), &c.name);
        (c.name.clone(), st)
    });
    init.chain(main).collect()
}

fn find<'a>(statuses: Option<&'a Vec<ContainerStatus>>, name: &str) -> Option<&'a ContainerStatus> {
    statuses.and_then(|s| s.iter().find(|c| c.name == name))
}

/// How a container ended or where it is, in a few words.
fn describe(status: Option<&ContainerStatus>) -> String {
    let Some(state) = status.and_then(|s| s.state.as_ref()) else {
        return "not started".into();
    };
    if let Some(t) = &state.terminated {
        return match t.reason.as_deref() {
            Some(reason) if reason != "Completed" => format!("exit {} ({reason})", t.exit_code),
            _ => format!("exit {}", t.exit_code),
        };
    }
    if state.running.is_some() {
        return "running".into();
    }
    match state.waiting.as_ref().and_then(|w| w.reason.as_deref()) {
        Some(reason) => format!("waiting ({reason})"),
        None => "waiting".into(),
    }
}

/// The end of one container's log: at most `limit` bytes of its last [`TAIL_LINES`] lines.
/// Kubelet is asked for four times `limit` (its byte limit cuts the end off, not the start), of
/// which the end is kept.
async fn read_log(
    api: &Api<Pod>,
    pod: &str,
    container: &str,
    limit: usize,
) -> Result<(String, bool), String> {
    let params = LogParams {
        container: Some(container.to_owned()),
        tail_lines: Some(TAIL_LINES),
        limit_bytes: Some((limit as i64).saturating_mul(4).max(1)),
        ..LogParams::default()
    };
    let text = tokio::time::timeout(READ_TIMEOUT, api.logs(pod, &params))
        .await
        .map_err(|_| SILENT.to_owned())?
        .map_err(|e| match e {
            kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
            other => other.to_string(),
        })?;
    let (end, truncated) = tail(&text, limit);
    Ok((end.to_owned(), truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_run_init_first_and_say_how_they_ended() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "shop-g7-x"},
            "spec": {
                "initContainers": [{"name": "restore-previous"}, {"name": "warm"}],
                "containers": [{"name": "snapshot"}],
            },
            "status": {
                "initContainerStatuses": [
                    {"name": "restore-previous", "ready": false, "restartCount": 0, "image": "a",
                     "imageID": "", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                    {"name": "warm", "ready": false, "restartCount": 0, "image": "a",
                     "imageID": "", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}},
                ],
                "containerStatuses": [
                    {"name": "snapshot", "ready": false, "restartCount": 0, "image": "a",
                     "imageID": "", "state": {"waiting": {"reason": "PodInitializing"}}},
                ],
            },
        }))
        .unwrap();
        let described: Vec<(String, String)> = containers_of(&pod)
            .into_iter()
            .map(|(name, status)| (name, describe(status)))
            .collect();
        assert_eq!(
            described,
            [
                ("restore-previous".to_owned(), "exit 0".to_owned()),
                ("warm".to_owned(), "exit 1 (Error)".to_owned()),
                (
                    "snapshot".to_owned(),
                    "waiting (PodInitializing)".to_owned()
                ),
            ]
        );
        assert_eq!(describe(None), "not started");
    }
}
