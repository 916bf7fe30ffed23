//! The conditions against kstatus's rules, written down here as cli-utils (v0.37) applies them to
//! a resource it has no rules of its own for (`pkg/kstatus/status`, `checkGenericProperties`);
//! the integration tests check the same SiteCaches with kstatus itself.

use jiff::Timestamp;

use super::super::{Activity, Holds, Observed, Trouble, derive};
use crate::api::{Freshness, GenerationInfo, LastSnapshot, SiteCacheStatus, SnapshotResult};
use crate::controller::settings::schedule::Verdict;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

#[derive(Debug, PartialEq, Eq)]
enum KStatus {
    InProgress,
    Failed,
    Current,
}

/// kstatus: `observedGeneration` behind `metadata.generation` is `InProgress`; then the first
/// condition `Reconciling=True` (`InProgress`) or `Stalled=True` (`Failed`); else `Current`.
fn kstatus(generation: i64, status: &SiteCacheStatus) -> KStatus {
    if status.observed_generation.is_some_and(|g| g != generation) {
        return KStatus::InProgress;
    }
    for c in &status.conditions {
        match (c.type_.as_str(), c.status.as_str()) {
            ("Reconciling", "True") => return KStatus::InProgress,
            ("Stalled", "True") => return KStatus::Failed,
            _ => {}
        }
    }
    KStatus::Current
}

fn now() -> Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

fn generation(n: u64, revision: &str) -> GenerationInfo {
    GenerationInfo {
        generation: n,
        key: "k".into(),
        size_bytes: 1,
        uncompressed_bytes: 1,
        files: 1,
        sha256: "00".into(),
        created_at: Time(now()),
        promoted_at: None,
        source_revision: Some(revision.into()),
        base_generation: None,
        cache_owner: None,
        runtime: None,
    }
}

fn verdict(unmet: bool, freshness: Freshness) -> Verdict {
    Verdict {
        freshness,
        freshness_reason: if unmet {
            "generation 1 was built from source revision a, the source is at b".into()
        } else {
            "fresh".into()
        },
        due: None,
        next_due: None,
        backoff_until: None,
        due_since: None,
        fresh_until: None,
        unmet,
    }
}

fn running() -> Activity {
    Activity::Running {
        job: "shop-g2".into(),
        generation: 2,
        stall: None,
    }
}

/// The status `derive` makes, and what kstatus reads in it.
fn read(
    current: Option<GenerationInfo>,
    verdict: Option<Verdict>,
    activity: Activity,
    failures: u32,
    suspended: bool,
) -> (SiteCacheStatus, KStatus) {
    let mut status = SiteCacheStatus {
        current,
        consecutive_failures: failures,
        last_snapshot: (failures > 0).then(|| LastSnapshot {
            result: Some(SnapshotResult::Failed),
            reason: Some("WarmFailed".into()),
            message: Some("npm registry unreachable".into()),
            ..LastSnapshot::default()
        }),
        ..SiteCacheStatus::default()
    };
    derive(
        &mut status,
        &Observed {
            verdict: verdict.as_ref(),
            activity: &activity,
            trouble: None::<&Trouble>,
            holds: Holds {
                suspended,
                pinned: None,
            },
            observed_generation: Some(3),
            now: now(),
        },
    );
    let k = kstatus(3, &status);
    (status, k)
}

#[test]
fn the_first_generation_is_in_progress_until_it_is_promoted() {
    let (_, k) = read(
        None,
        Some(verdict(true, Freshness::Missing)),
        running(),
        0,
        false,
    );
    assert_eq!(k, KStatus::InProgress);
    let (s, k) = read(
        Some(generation(1, "a")),
        Some(verdict(false, Freshness::Fresh)),
        Activity::Idle,
        0,
        false,
    );
    assert_eq!(k, KStatus::Current);
    assert!(
        s.conditions
            .iter()
            .all(|c| c.type_ != "Reconciling" && c.type_ != "Stalled")
    );
}

#[test]
fn a_revision_change_is_in_progress_while_its_snapshot_is_due_waits_or_runs() {
    let current = Some(generation(1, "a"));
    for activity in [running(), Activity::Waiting { limit: 2 }, Activity::Idle] {
        let (s, k) = read(
            current.clone(),
            Some(verdict(true, Freshness::Stale)),
            activity.clone(),
            0,
            false,
        );
        assert_eq!(k, KStatus::InProgress, "{activity:?}");
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Reconciling")
            .unwrap();
        assert!(c.message.contains("source is at b"), "{c:?}");
    }
}

#[test]
fn a_refresh_of_an_aged_generation_is_not_in_progress() {
    let (_, k) = read(
        Some(generation(1, "a")),
        Some(verdict(false, Freshness::Stale)),
        running(),
        0,
        false,
    );
    assert_eq!(k, KStatus::Current);
}

#[test]
fn a_refused_spec_a_failed_revision_and_a_suspended_one_are_failed() {
    let blocked = Activity::Blocked {
        reason: "EndpointNotAllowed".into(),
        message: "spec.storage.endpoint …".into(),
    };
    let (s, k) = read(None, None, blocked, 0, false);
    assert_eq!(k, KStatus::Failed);
    let c = s.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(c.reason, "EndpointNotAllowed");

    let current = Some(generation(1, "a"));
    let (s, k) = read(
        current.clone(),
        Some(verdict(true, Freshness::Stale)),
        Activity::Idle,
        2,
        false,
    );
    assert_eq!(k, KStatus::Failed);
    let c = s.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(c.reason, "WarmFailed");
    assert!(c.message.contains("npm registry unreachable"), "{c:?}");
    // Its retry running: in progress again.
    let (_, k) = read(
        current.clone(),
        Some(verdict(true, Freshness::Stale)),
        running(),
        2,
        false,
    );
    assert_eq!(k, KStatus::InProgress);

    let (s, k) = read(
        current,
        Some(verdict(true, Freshness::Stale)),
        Activity::Idle,
        0,
        true,
    );
    assert_eq!(k, KStatus::Failed);
    assert_eq!(
        s.conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .unwrap()
            .reason,
        "Suspended"
    );
}

#[test]
fn a_spec_change_not_yet_observed_is_in_progress() {
    let (mut s, _) = read(
        Some(generation(1, "a")),
        Some(verdict(false, Freshness::Fresh)),
        Activity::Idle,
        0,
        false,
    );
    s.observed_generation = Some(2);
    assert_eq!(kstatus(3, &s), KStatus::InProgress);
}

#[test]
fn conditions_go_once_they_are_false() {
    let (mut s, k) = read(
        None,
        Some(verdict(true, Freshness::Missing)),
        running(),
        0,
        false,
    );
    assert_eq!(k, KStatus::InProgress);
    s.current = Some(generation(2, "b"));
    derive(
        &mut s,
        &Observed {
            verdict: Some(&verdict(false, Freshness::Fresh)),
            activity: &Activity::Idle,
            trouble: None,
            holds: Holds {
                suspended: false,
                pinned: None,
            },
            observed_generation: Some(3),
            now: now(),
        },
    );
    assert_eq!(kstatus(3, &s), KStatus::Current);
    assert!(s.conditions.iter().all(|c| c.type_ != "Reconciling"));
}
