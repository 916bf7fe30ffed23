//! The Pod object of an attempt, as the Job controller creates it and kubelet reports it: the
//! pod template with the Job's labels and controller reference, bound to the runner's node name;
//! `Running` while its containers run; then `Succeeded` or `Failed` with a terminated state per
//! container, exit code and termination message included. Readers of pods (a controller that
//! trusts a container's termination message, one that waits for a Job's pods to stop) see what
//! they would see on a cluster.

use std::io::Read;
use std::path::Path;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::plan::Prepared;
use super::time_json;

/// The node name the runner's pods are bound to (there is no Node object).
pub const NODE_NAME: &str = "sitecache-job-runner";

/// The most of a termination message kubelet keeps.
const MESSAGE_LIMIT: u64 = 4096;
/// What `FallbackToLogsOnError` takes from the end of the log at most.
const LOG_TAIL_BYTES: usize = 2048;
const LOG_TAIL_LINES: usize = 80;

/// The Pod for an attempt of `job` (uid `uid`): named by the API server from `<job>-`.
pub fn pod_for(job: &Job, uid: &str) -> Result<Pod, String> {
    let name = job.name_any();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or("the Job has no spec")?;
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", uid),
        ("job-name", &name),
    ] {
        labels.insert(k.to_owned(), v.to_owned());
    }
    let mut spec = serde_json::to_value(template.spec.ok_or("the pod template has no spec")?)
        .map_err(|e| e.to_string())?;
    spec["nodeName"] = json!(NODE_NAME);
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{name}-"),
            "namespace": job.namespace(),
            "labels": labels,
            "annotations": meta.annotations,
            // As the Job controller does (GetPodFromTemplate): the template's finalizers.
            "finalizers": meta.finalizers,
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
    }))
    .map_err(|e| e.to_string())
}

/// How a container ended.
pub struct ContainerEnd {
    pub name: String,
    pub exit_code: i32,
    pub started: Timestamp,
    pub finished: Timestamp,
    pub message: String,
}

impl ContainerEnd {
    /// A container's end: its exit code (128 + the signal when killed, as kubelet reports it)
    /// and its termination message.
    pub fn of(p: &Prepared, status: std::process::ExitStatus, started: Timestamp) -> Self {
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(1);
        ContainerEnd {
            name: p.container.clone(),
            exit_code,
            started,
            finished: super::now(),
            message: message(p, exit_code != 0),
        }
    }
}

/// The termination message: the file's first 4 KiB, or with `FallbackToLogsOnError` and a
/// failure and an empty file, the end of the log.
fn message(p: &Prepared, failed: bool) -> String {
    let mut bytes = Vec::new();
    if let Ok(f) = std::fs::File::open(&p.termination) {
        let _ = f.take(MESSAGE_LIMIT).read_to_end(&mut bytes);
    }
    if bytes.is_empty() && failed && p.fallback_to_logs {
        return log_tail(&p.log);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL_BYTES);
    let tail = String::from_utf8_lossy(&text[start..]).into_owned();
    let lines: Vec<&str> = tail.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// The status of a pod whose containers started running at `start`.
pub fn running(start: Timestamp) -> Value {
    json!({ "phase": "Running", "startTime": time_json(start) })
}

/// The final status: `phase` (`Succeeded` or `Failed`) and a status per container of `pod`'s
/// spec, terminated for those in `ends`, waiting for those that never ran.
pub fn finished(pod: &Pod, phase: &str, start: Timestamp, ends: &[ContainerEnd]) -> Value {
    let status_of = |c: &k8s_openapi::api::core::v1::Container| {
        let state = match ends.iter().find(|e| e.name == c.name) {
            Some(e) => json!({ "terminated": {
                "exitCode": e.exit_code,
                "reason": if e.exit_code == 0 { "Completed" } else { "Error" },
                "message": e.message,
                "startedAt": time_json(e.started),
                "finishedAt": time_json(e.finished),
            }}),
            None => json!({ "waiting": { "reason": "PodInitializing" } }),
        };
        json!({
            "name": c.name,
            "image": c.image.clone().unwrap_or_default(),
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "started": false,
            "state": state,
        })
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let init: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(status_of)
        .collect();
    let main: Vec<Value> = spec.containers.iter().map(status_of).collect();
    json!({
        "phase": phase,
        "startTime": time_json(start),
        "initContainerStatuses": init,
        "containerStatuses": main,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_carries_the_jobs_labels_and_controller_reference() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "shop-g1", "namespace": "web"},
            "spec": {"template": {
                "metadata": {"labels": {"app": "x"}, "annotations": {"a": "b"}, "finalizers": ["x.dev/keep"]},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]},
            }},
        }))
        .unwrap();
        let pod = pod_for(&job, "u1").unwrap();
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app"], "x");
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], "u1");
        assert_eq!(labels["job-name"], "shop-g1");
        assert_eq!(
            pod.metadata.finalizers.as_deref(),
            Some(&["x.dev/keep".to_owned()][..])
        );
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Job", "u1"));
        assert_eq!(owner.controller, Some(true));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("shop-g1-"));
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some(NODE_NAME)
        );

        let start = Timestamp::from_second(1_800_000_000).unwrap();
        let ends = [ContainerEnd {
            name: "c".into(),
            exit_code: 0,
            started: start,
            finished: start,
            message: "done".into(),
        }];
        let status = finished(&pod, "Succeeded", start, &ends);
        let c = &status["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(
            (c["exitCode"].as_i64(), c["message"].as_str()),
            (Some(0), Some("done"))
        );
        assert_eq!(c["reason"], "Completed");
    }
}
