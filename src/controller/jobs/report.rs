//! What a snapshot Job's `snapshot` container reported, read from its pods' termination messages:
//! the only account of a snapshot the controller trusts. Only that container can write its
//! termination message (kubelet mounts the file into it alone), while anything in the bucket may
//! have been written by whoever can write there.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::ResourceExt;
use serde::Deserialize;

use crate::archive::Report;
use crate::controller::jobs::quote;

/// The container of a snapshot Job whose termination message is read.
pub const SNAPSHOT_CONTAINER: &str = "snapshot";
/// The init container that runs the site's warm step; its termination message (the end of its
/// log, `FallbackToLogsOnError`) is quoted when it fails, never trusted for anything else.
pub const WARM_CONTAINER: &str = "warm";

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
    /// The warm container of the latest pod that got that far failed (its exit code, and the end
    /// of its log, which kubelet keeps as its termination message): the snapshot never ran.
    WarmFailed(String),
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
    let owned = pods_of(pods, job_uid);
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
    if let Some((_, error)) = failures.pop() {
        return Reported::Failed(error);
    }
    let mut warm: Vec<(Option<String>, String)> = pods_of(pods, job_uid)
        .filter_map(|pod| container_end(pod, WARM_CONTAINER, true))
        .filter(|done| done.exit_code != 0)
        .map(|done| {
            let at = done.finished_at.as_ref().map(|t| t.0.to_string());
            (at, warm_failure(done))
        })
        .collect();
    warm.sort();
    match warm.pop() {
        Some((_, said)) => Reported::WarmFailed(said),
        None => Reported::Nothing,
    }
}

/// The longest part of a warm container's log quoted in a status message.
const WARM_LOG_QUOTE: usize = 400;

/// "the warm container exited with code N: <the end of its log, on one line>" ([`quote`]).
fn warm_failure(done: &ContainerStateTerminated) -> String {
    let line = quote::one_line(done.message.as_deref().unwrap_or_default());
    let quote = match line.is_empty() {
        true => String::new(),
        false => format!(": {}", quote::tail(&line, WARM_LOG_QUOTE)),
    };
    format!(
        "the warm container exited with code {}{quote}",
        done.exit_code
    )
}

/// How the pod's snapshot container ended, if it did.
fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    container_end(pod, SNAPSHOT_CONTAINER, false)
}

/// The pods the Job with uid `job_uid` controls.
fn pods_of<'a>(pods: &'a [Pod], job_uid: &'a str) -> impl Iterator<Item = &'a Pod> {
    pods.iter().filter(move |p| {
        p.owner_references()
            .iter()
            .any(|o| o.uid == job_uid && o.controller == Some(true) && o.kind == "Job")
    })
}

/// How container `name` (an init container when `init`) of the pod ended, if it did.
/// The image the warm step ran in the Job's pod whose snapshot committed (exit 0), by digest as
/// kubelet reported it: `…@sha256:…`, or a local image's `sha256:…`. `None` when no such pod is
/// left or kubelet gave no digest.
pub fn warm_image(pods: &[Pod], job_uid: &str) -> Option<String> {
    pods_of(pods, job_uid)
        .filter(|pod| terminated(pod).is_some_and(|t| t.exit_code == 0))
        .find_map(|pod| {
            let id = &pod
                .status
                .as_ref()?
                .init_container_statuses
                .as_ref()?
                .iter()
                .find(|c| c.name == WARM_CONTAINER)?
                .image_id;
            (id.contains("@sha256:") || id.starts_with("sha256:")).then(|| id.clone())
        })
}

fn container_end<'a>(pod: &'a Pod, name: &str, init: bool) -> Option<&'a ContainerStateTerminated> {
    let status = pod.status.as_ref()?;
    let statuses = if init {
        status.init_container_statuses.as_ref()
    } else {
        status.container_statuses.as_ref()
    };
    statuses?
        .iter()
        .find(|c| c.name == name)?
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
            cache_owner: None,
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
    fn the_warm_image_is_the_committing_pods_by_digest() {
        let with_warm = |exit: i32, image_id: &str| {
            let mut p = pod("job-uid", true, exit, "{}", "2026-12-01T10:00:00Z");
            p.status.as_mut().unwrap().init_container_statuses = Some(vec![
                serde_json::from_value(json!({
                    "name": "warm", "image": "shop:1", "imageID": image_id, "ready": false,
                    "restartCount": 0, "state": {"terminated": {"exitCode": 0}},
                }))
                .unwrap(),
            ]);
            p
        };
        let digest = "registry.example.com/shop@sha256:0123";
        assert_eq!(
            warm_image(
                &[with_warm(1, "x@sha256:9"), with_warm(0, digest)],
                "job-uid"
            ),
            Some(digest.to_owned())
        );
        assert_eq!(
            warm_image(&[with_warm(0, "sha256:27972663")], "job-uid").as_deref(),
            Some("sha256:27972663")
        );
        // No digest, or only a failed attempt's pod: not known.
        assert_eq!(warm_image(&[with_warm(0, "shop:1")], "job-uid"), None);
        assert_eq!(warm_image(&[with_warm(1, digest)], "job-uid"), None);
        assert_eq!(warm_image(&[with_warm(0, digest)], "other"), None);
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

    fn warm_failed(owner: &str, exit: i32, log: &str, finished: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": "shop-g1", "uid": owner,
                "controller": true,
            }]},
            "status": {"initContainerStatuses": [{
                "name": "warm", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit, "message": log, "finishedAt": finished}},
            }]},
        }))
        .unwrap()
    }

    #[test]
    fn a_failed_warm_step_is_quoted_from_the_end_of_its_log() {
        let pods = [
            warm_failed("u", 1, "old attempt", "2026-01-01T00:00:00Z"),
            warm_failed(
                "u",
                3,
                "Download https://registry.npmjs.org/x\nerror: npm registry\n  unreachable\n",
                "2026-01-01T00:01:00Z",
            ),
            warm_failed("someone-else", 9, "not ours", "2026-01-01T00:02:00Z"),
        ];
        assert_eq!(
            reported(&pods, "u"),
            Reported::WarmFailed(
                "the warm container exited with code 3: Download https://registry.npmjs.org/x \
                 error: npm registry unreachable"
                    .into()
            )
        );
        // A long log: its end, whole characters, bounded.
        let long = format!("start {} é end", "x".repeat(2000));
        let Reported::WarmFailed(said) =
            reported(&[warm_failed("u", 2, &long, "2026-01-01T00:00:00Z")], "u")
        else {
            panic!("not a warm failure");
        };
        assert!(
            said.starts_with("the warm container exited with code 2: …x"),
            "{said}"
        );
        assert!(said.ends_with("x é end") && said.len() < 500, "{said}");
        // Escape sequences of a hostile log reach the status as text.
        let Reported::WarmFailed(said) = reported(
            &[warm_failed(
                "u",
                1,
                "\u{1b}]0;owned\u{7}\u{1b}[2Jgone",
                "2026-01-01T00:00:00Z",
            )],
            "u",
        ) else {
            panic!("not a warm failure");
        };
        assert_eq!(said, "the warm container exited with code 1: gone");
        // Deno's coloured error, as kubelet keeps it: the text, without the colours.
        let deno = "\u{1b}[0m\u{1b}[1m\u{1b}[31merror\u{1b}[0m: Uncaught PermissionDenied: \
                    writefile '/deno-dir/a'\n    \u{1b}[0m\u{1b}[2m\u{1b}[38;5;245mat \
                    \u{1b}[0m\u{1b}[36m$deno$eval.mts\u{1b}[0m:\u{1b}[33m2\u{1b}[0m\u{1b}P+q\u{1b}\\ \
                    \u{1b}=end\u{1b}[3";
        let Reported::WarmFailed(said) =
            reported(&[warm_failed("u", 1, deno, "2026-01-01T00:00:00Z")], "u")
        else {
            panic!("not a warm failure");
        };
        assert_eq!(
            said,
            "the warm container exited with code 1: error: Uncaught PermissionDenied: \
             writefile '/deno-dir/a' at $deno$eval.mts:2 end"
        );
        // A warm step that succeeded, or a snapshot that said something, is not quoted.
        assert_eq!(
            reported(&[warm_failed("u", 0, "fine", "2026-01-01T00:00:00Z")], "u"),
            Reported::Nothing
        );
    }
}
