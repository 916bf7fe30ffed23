//! What a snapshot Job's `snapshot` container reported, read from its pods' termination messages:
//! the only account of a snapshot the controller trusts. Only that container can write its
//! termination message (kubelet mounts the file into it alone), while anything in the bucket may
//! have been written by whoever can write there.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::ResourceExt;
use serde::Deserialize;

use crate::archive::Report;

/// The container of a snapshot Job whose termination message is read.
pub const SNAPSHOT_CONTAINER: &str = "snapshot";

/// Where the snapshot container writes its report (the Kubernetes default path, set explicitly).
pub const REPORT_PATH: &str = "/dev/termination-log";

/// The label the Job controller puts on a Job's pods: the Job's uid.
pub const JOB_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

/// What a Job's pods say about its snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reported {
    /// A pod's snapshot container exited 0 and reported this commit.
    Committed(Report),
    /// Pods that succeeded reported different commits: none is trusted.
    Conflicting,
    /// The snapshot container of the latest failed pod said why it failed.
    Failed(String),
    /// No pod of the Job says anything (gone, or not written by a snapshot container).
    Nothing,
}

/// A failed snapshot's termination message.
#[derive(Deserialize)]
struct FailureLine {
    error: String,
}

/// Reads the report from the pods of the Job with uid `job_uid`: pods it controls (the owner
/// reference, not only labels, which anyone creating pods could copy).
pub fn reported(pods: &[Pod], job_uid: &str) -> Reported {
    let owned = pods.iter().filter(|p| {
        p.owner_references()
            .iter()
            .any(|o| o.uid == job_uid && o.controller == Some(true) && o.kind == "Job")
    });
    let mut commits: Vec<Report> = Vec::new();
    let mut failures: Vec<(Option<String>, String)> = Vec::new();
    for pod in owned {
        let Some(done) = terminated(pod) else {
            continue;
        };
        let message = done.message.as_deref().unwrap_or_default();
        if done.exit_code == 0 {
            if let Ok(report) = serde_json::from_str::<Report>(message)
                && !commits.contains(&report)
            {
                commits.push(report);
            }
        } else if let Ok(line) = serde_json::from_str::<FailureLine>(message) {
            let at = done.finished_at.as_ref().map(|t| t.0.to_string());
            failures.push((at, line.error));
        }
    }
    match commits.len() {
        1 => return Reported::Committed(commits.remove(0)),
        0 => {}
        _ => return Reported::Conflicting,
    }
    failures.sort();
    match failures.pop() {
        Some((_, error)) => Reported::Failed(error),
        None => Reported::Nothing,
    }
}

/// How the pod's snapshot container ended, if it did.
fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == SNAPSHOT_CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(n: u64) -> Report {
        Report {
            generation: n,
            archive_key: format!("shop/generations/{n:020}/cache-0123456789abcdef.tar.zst"),
            size_bytes: 10,
            sha256: "ab".repeat(32),
            files: 2,
            entries: 3,
            uncompressed_bytes: 20,
            legacy_archive_key: None,
        }
    }

    fn pod(owner: &str, controller: bool, exit: i32, message: &str, finished: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": "shop-g1", "uid": owner,
                "controller": controller,
            }]},
            "status": {"containerStatuses": [{
                "name": "snapshot", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit, "message": message,
                                          "finishedAt": finished}},
            }]},
        }))
        .unwrap()
    }

    #[test]
    fn the_succeeded_snapshot_container_of_the_jobs_own_pod_is_believed() {
        let line = serde_json::to_string(&report(1)).unwrap();
        let t = "2026-12-01T10:00:00Z";
        assert_eq!(
            reported(&[pod("job-uid", true, 0, &line, t)], "job-uid"),
            Reported::Committed(report(1))
        );
        // Another Job's pod, a pod that only refers to the Job, or a failed container: no.
        for p in [
            pod("other", true, 0, &line, t),
            pod("job-uid", false, 0, &line, t),
            pod("job-uid", true, 1, &line, t),
            pod("job-uid", true, 0, "not json", t),
        ] {
            assert_eq!(reported(&[p], "job-uid"), Reported::Nothing);
        }
        assert_eq!(reported(&[], "job-uid"), Reported::Nothing);
    }

    #[test]
    fn two_different_commits_are_conflicting_and_failures_say_why() {
        let t = "2026-12-01T10:00:00Z";
        let a = serde_json::to_string(&report(1)).unwrap();
        let mut other = report(1);
        other.sha256 = "cd".repeat(32);
        let b = serde_json::to_string(&other).unwrap();
        let pods = [pod("j", true, 0, &a, t), pod("j", true, 0, &b, t)];
        assert_eq!(reported(&pods, "j"), Reported::Conflicting);
        let same = [pod("j", true, 0, &a, t), pod("j", true, 0, &a, t)];
        assert_eq!(reported(&same, "j"), Reported::Committed(report(1)));

        let failed = |e: &str, at: &str| {
            pod(
                "j",
                true,
                1,
                &json!({"kind": "k", "error": e}).to_string(),
                at,
            )
        };
        let pods = [
            failed("second", "2026-12-01T10:05:00Z"),
            failed("first", "2026-12-01T10:00:00Z"),
        ];
        assert_eq!(reported(&pods, "j"), Reported::Failed("second".into()));
    }
}
