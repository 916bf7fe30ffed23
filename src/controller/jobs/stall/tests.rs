use serde_json::{Value, json};

use super::*;
use crate::controller::jobs::{Base, JobState};

const AFTER: Duration = Duration::from_secs(120);

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A running Job created at 10:00, with `active` and `failed` pods counted.
fn job(active: i32, failed: i32) -> JobView {
    JobView {
        name: "shop-g2".into(),
        uid: "u".into(),
        generation: 2,
        request: None,
        base: Base::Generation(1),
        state: JobState::Running { start: None },
        deleting: false,
        created: Some(ts("2026-01-01T10:00:00Z")),
        active,
        failed,
        holds_result: true,
        resource_version: None,
        finalizers: Vec::new(),
    }
}

fn pod(name: &str, created: &str, status: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "creationTimestamp": created},
        "status": status,
    }))
    .unwrap()
}

fn waiting(container: &str, reason: &str) -> Value {
    json!({"name": container, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
           "state": {"waiting": {"reason": reason, "message": format!("{reason} details")}}})
}

#[test]
fn no_pod_is_a_stall_only_after_the_grace() {
    let j = job(0, 0);
    assert_eq!(diagnose(&j, &[], ts("2026-01-01T10:01:59Z"), AFTER), None);
    let stall = diagnose(&j, &[], ts("2026-01-01T10:02:00Z"), AFTER).unwrap();
    assert_eq!(
        stall,
        Stall::NoPod {
            job: "shop-g2".into(),
            seconds: 120,
            cause: None
        }
    );
    assert_eq!(stall.reason(), "SnapshotPodNotCreated");
    assert!(Stall::is_stall_reason(stall.reason()));
    let with_cause = Stall::NoPod {
        job: "shop-g2".into(),
        seconds: 120,
        cause: Some("Error creating: pods \"x\" is forbidden: exceeded quota: q".into()),
    };
    assert_eq!(
        with_cause.message(),
        "Job shop-g2 has had no pod for 120 s: Error creating: pods \"x\" is forbidden: \
         exceeded quota: q; it fails at its deadline (spec.snapshot.timeout) unless this is \
         resolved"
    );
    // The watch may show the pod counted before the list shows it: no stall then.
    assert_eq!(
        diagnose(&job(1, 0), &[], ts("2026-01-01T11:00:00Z"), AFTER),
        None
    );
}

#[test]
fn a_retry_gets_the_job_controllers_back_off_before_it_counts_as_missing() {
    // The first pod failed at 10:05; after one failure the Job controller waits 10 s.
    let failed = pod(
        "shop-g2-a",
        "2026-01-01T10:00:00Z",
        json!({"phase": "Failed", "containerStatuses": [{
            "name": "snapshot", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T10:05:00Z"}}}]}),
    );
    let j = job(0, 1);
    let pods = [failed];
    assert_eq!(diagnose(&j, &pods, ts("2026-01-01T10:07:09Z"), AFTER), None);
    assert!(matches!(
        diagnose(&j, &pods, ts("2026-01-01T10:07:10Z"), AFTER),
        Some(Stall::NoPod { seconds: 130, .. })
    ));
    assert_eq!(retry_backoff(3), Duration::from_secs(40));
    // A pod that succeeded: the Job controller has yet to mark the Job complete, however long
    // that takes.
    let succeeded = pod(
        "shop-g2-b",
        "2026-01-01T10:00:00Z",
        json!({"phase": "Succeeded", "containerStatuses": [{
            "name": "snapshot", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "finishedAt": "2026-01-01T10:01:00Z"}}}]}),
    );
    assert_eq!(
        diagnose(&job(0, 0), &[succeeded], ts("2026-01-01T11:00:00Z"), AFTER),
        None
    );
    assert_eq!(retry_backoff(30), Duration::from_secs(360));
}

#[test]
fn an_unschedulable_pod_and_a_container_that_cannot_start() {
    let unschedulable = pod(
        "shop-g2-a",
        "2026-01-01T10:00:01Z",
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
               "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
    );
    let now = ts("2026-01-01T10:03:00Z");
    assert_eq!(
        diagnose(&job(1, 0), &[unschedulable], now, AFTER)
            .unwrap()
            .message(),
        "pod shop-g2-a cannot be scheduled: 0/3 nodes are available: 3 Insufficient cpu."
    );

    let pulling = pod(
        "shop-g2-a",
        "2026-01-01T10:00:01Z",
        json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "restore-previous", "image": "i", "imageID": "", "ready": false,
             "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
            waiting("warm", "ImagePullBackOff"),
        ], "containerStatuses": [waiting("snapshot", "PodInitializing")]}),
    );
    let stall = diagnose(&job(1, 0), &[pulling], now, AFTER).unwrap();
    assert_eq!(stall.reason(), "SnapshotContainerNotStarting");
    assert_eq!(
        stall.message(),
        "container warm of pod shop-g2-a cannot start: ImagePullBackOff: ImagePullBackOff details"
    );
    // What a registry answered reaches kubelet's message: quoted as text on one line.
    let hostile = Stall::ContainerWaiting {
        pod: "p".into(),
        container: "warm".into(),
        reason: "ErrImagePull".into(),
        message: "denied:\n\u{1b}]0;owned\u{7}\u{1b}[31mno\u{1b}[0m access".into(),
    };
    assert_eq!(
        hostile.message(),
        "container warm of pod p cannot start: ErrImagePull: denied: no access"
    );
}

#[test]
fn containers_on_their_way_and_young_pods_are_no_stall() {
    let now = ts("2026-01-01T10:03:00Z");
    let on_its_way = pod(
        "shop-g2-a",
        "2026-01-01T10:00:01Z",
        json!({"phase": "Pending", "initContainerStatuses": [waiting("warm", "ContainerCreating")]}),
    );
    assert_eq!(diagnose(&job(1, 0), &[on_its_way], now, AFTER), None);
    let young = pod(
        "shop-g2-b",
        "2026-01-01T10:02:00Z",
        json!({"phase": "Pending", "initContainerStatuses": [waiting("warm", "ErrImagePull")]}),
    );
    assert_eq!(diagnose(&job(1, 0), &[young], now, AFTER), None);
    let running = pod(
        "shop-g2-c",
        "2026-01-01T10:00:01Z",
        json!({"phase": "Running"}),
    );
    assert_eq!(diagnose(&job(1, 0), &[running], now, AFTER), None);
}
