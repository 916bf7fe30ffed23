//! The status the controller writes: phase, freshness and conditions derived from what it found
//! and did (pure functions).

pub mod events;
pub mod gitops;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{Freshness, GenerationInfo, Phase, Runtime, SiteCacheStatus};
use crate::archive::Manifest;
use crate::controller::jobs::stall::Stall;
use crate::controller::settings::schedule::Verdict;

pub const READY: &str = "Ready";
pub const FRESH: &str = "Fresh";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const DELETION_BLOCKED: &str = "DeletionBlocked";

/// What the SiteCache is doing, as far as its status is concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum Activity {
    /// A snapshot Job is producing a generation, or is stalled ([`Stall`]).
    Running {
        job: String,
        generation: u64,
        stall: Option<Stall>,
    },
    /// A snapshot is due but every slot is taken: it waits in the queue. (How many Jobs run is
    /// not said: the waiting SiteCache is not reconciled as that changes.)
    Waiting { limit: u32 },
    /// Nothing to do until the schedule says so.
    Idle,
    /// The SiteCache cannot be served: a storage setting the controller refuses, or a prefix
    /// another SiteCache owns.
    Blocked { reason: String, message: String },
    /// The controller is a standby (`--standby`): it follows what the cluster that owns the
    /// prefix promotes (`owner`, as its marker names it) and writes nothing.
    Standby {
        location: String,
        owner: Option<String>,
    },
}

/// An error the reconcile ran into, reported in `Ready` (when no generation is promoted) and
/// `Degraded` until a reconcile goes through.
#[derive(Clone, Debug, PartialEq)]
pub struct Trouble {
    pub reason: String,
    pub message: String,
}

/// Sets condition `type_`, keeping its `lastTransitionTime` unless its status changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    observed_generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// Removes condition `type_`.
pub fn clear_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The status view of a committed generation.
pub fn generation_info(m: &Manifest) -> GenerationInfo {
    GenerationInfo {
        generation: m.generation,
        key: m.archive_key.clone(),
        size_bytes: m.size_bytes,
        uncompressed_bytes: m.uncompressed_bytes,
        files: m.files,
        sha256: m.sha256.clone(),
        created_at: Time(truncate(m.created_at)),
        promoted_at: None,
        source_revision: m.source_revision.clone(),
        base_generation: None,
        cache_owner: None,
        runtime: m.deno_version.clone().map(|deno| {
            Box::new(Runtime {
                deno: Some(deno),
                warm_image: None,
            })
        }),
    }
}

/// What the spec holds back, whatever the schedule says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holds {
    /// `spec.suspend`: nothing new starts.
    pub suspended: bool,
    /// `spec.pin.generation`: that generation is current, and nothing is promoted over it.
    pub pinned: Option<u64>,
}

impl Holds {
    pub fn of(spec: &crate::api::SiteCacheSpec) -> Self {
        Holds {
            suspended: spec.suspend,
            pinned: spec.pin.as_ref().map(|p| p.generation),
        }
    }
}

/// What a reconcile found and did, from which the status is derived.
pub struct Observed<'a> {
    /// The schedule's verdict (absent when the spec is refused).
    pub verdict: Option<&'a Verdict>,
    pub activity: &'a Activity,
    /// The error the reconcile ran into, if any.
    pub trouble: Option<&'a Trouble>,
    pub holds: Holds,
    /// The SiteCache's `metadata.generation`.
    pub observed_generation: Option<i64>,
    pub now: Timestamp,
}

/// Fills in the derived parts of `status` (phase, freshness, next snapshot time, size and the
/// conditions) from what the reconcile found and did, and the error it ran into, if any.
pub fn derive(status: &mut SiteCacheStatus, observed: &Observed) {
    let &Observed {
        verdict,
        activity,
        trouble,
        holds,
        observed_generation,
        now,
    } = observed;
    status.observed_generation = observed_generation;
    status.size = status
        .current
        .as_ref()
        .map(|c| bytesize::ByteSize(c.size_bytes).display().iec().to_string());
    if let Some(v) = verdict {
        status.freshness = Some(v.freshness);
        status.freshness_reason = Some(v.freshness_reason.clone());
    }
    status.next_snapshot_time = match activity {
        Activity::Idle => verdict.and_then(|v| v.next_due).map(Time),
        _ => None,
    };
    status.phase = Some(match activity {
        Activity::Blocked { .. } => Phase::Failed,
        _ if trouble.is_some() && status.current.is_none() => Phase::Failed,
        Activity::Running { .. } => Phase::Snapshotting,
        Activity::Waiting { .. } => Phase::Pending,
        Activity::Idle | Activity::Standby { .. } if status.current.is_some() => Phase::Ready,
        Activity::Standby { .. } => Phase::Pending,
        Activity::Idle if status.consecutive_failures > 0 => Phase::Failed,
        Activity::Idle => Phase::Pending,
    });

    let g = observed_generation;
    let conditions = &mut status.conditions;
    match (&status.current, activity) {
        (Some(c), _) => set_condition(
            conditions,
            READY,
            true,
            "GenerationAvailable",
            format!("generation {} is promoted", c.generation),
            g,
            now,
        ),
        (None, Activity::Blocked { reason, message }) => {
            set_condition(conditions, READY, false, reason, message.clone(), g, now)
        }
        (None, _) if trouble.is_some() => {
            let t = trouble.expect("checked");
            set_condition(
                conditions,
                READY,
                false,
                &t.reason,
                t.message.clone(),
                g,
                now,
            )
        }
        (None, _) => set_condition(
            conditions,
            READY,
            false,
            "NoGeneration",
            "no generation has been promoted yet".into(),
            g,
            now,
        ),
    }
    if let Some(v) = verdict {
        let reason = match v.freshness {
            Freshness::Fresh => "Fresh",
            Freshness::Stale => "Stale",
            Freshness::Missing => "Missing",
        };
        set_condition(
            conditions,
            FRESH,
            v.freshness == Freshness::Fresh,
            reason,
            v.freshness_reason.clone(),
            g,
            now,
        );
    }
    let (progressing, reason, message) = match activity {
        Activity::Running {
            stall: Some(stall), ..
        } => (true, stall.reason(), stall.message()),
        Activity::Running {
            job, generation, ..
        } => (
            true,
            "SnapshotRunning",
            format!("Job {job} is producing generation {generation}"),
        ),
        Activity::Waiting { limit } => (
            false,
            "WaitingForSlot",
            format!(
                "a snapshot is due; all {limit} snapshot slots (--max-concurrent-snapshots) are \
                 taken, so it waits in the queue: on-demand requests first, then the earliest due"
            ),
        ),
        Activity::Blocked { reason, message } => (false, reason.as_str(), message.clone()),
        Activity::Standby { location, owner } => (
            false,
            "Standby",
            format!(
                "this controller is a standby (--standby): it follows the generations {} \
                 promotes under {location}, and writes and deletes nothing there",
                owner.as_deref().unwrap_or("the prefix's owner")
            ),
        ),
        Activity::Idle if holds.suspended => (
            false,
            "Suspended",
            "spec.suspend is true: no new snapshots".into(),
        ),
        Activity::Idle if let Some(n) = holds.pinned => (
            false,
            "Pinned",
            format!(
                "spec.pin holds generation {n}: no scheduled snapshots, and an on-demand one is \
                 verified and kept, not promoted"
            ),
        ),
        Activity::Idle => match verdict {
            Some(Verdict {
                backoff_until: Some(t),
                ..
            }) => (
                false,
                "BackingOff",
                format!(
                    "{} failed snapshots in a row; next attempt at {}",
                    status.consecutive_failures,
                    t.round(jiff::Unit::Second).unwrap_or(*t)
                ),
            ),
            Some(Verdict {
                next_due: Some(t), ..
            }) => (
                false,
                "Idle",
                format!(
                    "next snapshot due at {}",
                    t.round(jiff::Unit::Second).unwrap_or(*t)
                ),
            ),
            _ => (
                false,
                "Idle",
                "no snapshot is scheduled; change the source revision or request one".into(),
            ),
        },
    };
    set_condition(
        conditions,
        PROGRESSING,
        progressing,
        reason,
        message,
        g,
        now,
    );
    match (activity, &status.last_snapshot) {
        (Activity::Blocked { reason, message }, _) => {
            set_condition(conditions, DEGRADED, true, reason, message.clone(), g, now)
        }
        _ if trouble.is_some() => {
            let t = trouble.expect("checked");
            set_condition(
                conditions,
                DEGRADED,
                true,
                &t.reason,
                t.message.clone(),
                g,
                now,
            )
        }
        (
            Activity::Running {
                stall: Some(stall), ..
            },
            _,
        ) => set_condition(
            conditions,
            DEGRADED,
            true,
            stall.reason(),
            stall.message(),
            g,
            now,
        ),
        // A retry is running: the failure stays reported until it succeeds (a stall of the
        // retry that has passed gives way to the failures).
        (Activity::Running { job, .. }, _) if status.consecutive_failures > 0 => {
            let stalled = conditions
                .iter()
                .any(|c| c.type_ == DEGRADED && Stall::is_stall_reason(&c.reason));
            if stalled {
                set_condition(
                    conditions,
                    DEGRADED,
                    true,
                    "SnapshotRetrying",
                    format!(
                        "{} failed snapshots in a row; Job {job} is trying again",
                        status.consecutive_failures
                    ),
                    g,
                    now,
                )
            }
        }
        (_, Some(last)) if status.consecutive_failures > 0 => set_condition(
            conditions,
            DEGRADED,
            true,
            last.reason.as_deref().unwrap_or("SnapshotFailed"),
            format!(
                "{} failed snapshots in a row; last: {}",
                status.consecutive_failures,
                last.message.as_deref().unwrap_or("no message")
            ),
            g,
            now,
        ),
        _ => set_condition(
            conditions,
            DEGRADED,
            false,
            "AsExpected",
            "the last snapshot succeeded or none has failed".into(),
            g,
            now,
        ),
    }
    gitops::set(status, observed);
}

/// Whether two statuses differ in more than the order of their conditions.
/// Compared as they are stored: times to the second, as the API server keeps them.
pub fn changed(old: Option<&SiteCacheStatus>, new: &SiteCacheStatus) -> bool {
    let Some(old) = old else { return true };
    let stored = |s: &SiteCacheStatus| {
        let mut s = s.clone();
        s.conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
        serde_json::to_value(s).expect("a status serializes")
    };
    stored(old) != stored(new)
}

/// The current time to the second: every time the status records is stored to the second, and
/// what a reconcile derives from the times it wrote must not change once they are read back.
pub fn now() -> Timestamp {
    truncate(Timestamp::now())
}

/// `t` to the second, as a status stores it.
pub fn truncate(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LastSnapshot, SnapshotResult};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cond<'a>(s: &'a SiteCacheStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    /// A promoted generation of `size_bytes`.
    fn promoted(generation: u64, size_bytes: u64) -> GenerationInfo {
        GenerationInfo {
            generation,
            key: "k".into(),
            size_bytes,
            uncompressed_bytes: 1,
            files: 1,
            sha256: "00".into(),
            created_at: Time(ts("2026-01-01T00:00:00Z")),
            promoted_at: None,
            source_revision: None,
            base_generation: None,
            cache_owner: None,
            runtime: None,
        }
    }

    fn verdict(freshness: Freshness) -> Verdict {
        Verdict {
            freshness,
            freshness_reason: "why".into(),
            due: None,
            next_due: Some(ts("2026-01-02T00:00:00Z")),
            backoff_until: None,
            due_since: None,
            fresh_until: None,
            unmet: false,
        }
    }

    #[test]
    fn transition_times_move_only_on_status_changes() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            READY,
            false,
            "A",
            "m".into(),
            Some(1),
            ts("2026-01-01T00:00:00Z"),
        );
        set_condition(
            &mut c,
            READY,
            false,
            "B",
            "n".into(),
            Some(2),
            ts("2026-01-01T01:00:00Z"),
        );
        assert_eq!(c[0].last_transition_time.0, ts("2026-01-01T00:00:00Z"));
        assert_eq!(c[0].reason, "B");
        set_condition(
            &mut c,
            READY,
            true,
            "C",
            "o".into(),
            Some(2),
            ts("2026-01-01T02:00:00Z"),
        );
        assert_eq!(c[0].last_transition_time.0, ts("2026-01-01T02:00:00Z"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn first_snapshot_running() {
        let mut s = SiteCacheStatus::default();
        let now = ts("2026-01-01T00:00:00Z");
        let activity = Activity::Running {
            job: "shop-g1".into(),
            generation: 1,
            stall: None,
        };
        derive(
            &mut s,
            &Observed {
                verdict: Some(&verdict(Freshness::Missing)),
                activity: &activity,
                trouble: None,
                holds: Holds {
                    suspended: false,
                    pinned: None,
                },
                observed_generation: Some(1),
                now,
            },
        );
        assert_eq!(s.phase, Some(Phase::Snapshotting));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, FRESH).reason, "Missing");
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(s.next_snapshot_time, None);
    }

    #[test]
    fn waiting_for_a_slot_is_pending_and_says_so() {
        let mut s = SiteCacheStatus::default();
        let activity = Activity::Waiting { limit: 2 };
        derive(
            &mut s,
            &Observed {
                verdict: Some(&verdict(Freshness::Missing)),
                activity: &activity,
                trouble: None,
                holds: Holds {
                    suspended: false,
                    pinned: None,
                },
                observed_generation: None,
                now: ts("2026-01-01T00:00:00Z"),
            },
        );
        assert_eq!(s.phase, Some(Phase::Pending));
        let p = cond(&s, PROGRESSING);
        assert_eq!(p.reason, "WaitingForSlot");
        assert!(p.message.contains("all 2 snapshot slots"), "{}", p.message);
    }

    #[test]
    fn failures_degrade_but_keep_ready() {
        let mut s = SiteCacheStatus {
            current: Some(promoted(2, 3 * 1024 * 1024)),
            consecutive_failures: 2,
            last_snapshot: Some(LastSnapshot {
                generation: 4,
                job: "j".into(),
                result: Some(SnapshotResult::Failed),
                reason: Some("BackoffLimitExceeded".into()),
                message: Some("warm failed".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        derive(
            &mut s,
            &Observed {
                verdict: Some(&verdict(Freshness::Fresh)),
                activity: &Activity::Idle,
                trouble: None,
                holds: Holds {
                    suspended: false,
                    pinned: None,
                },
                observed_generation: None,
                now: ts("2026-01-01T00:00:00Z"),
            },
        );
        assert_eq!(s.phase, Some(Phase::Ready));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(cond(&s, DEGRADED).reason, "BackoffLimitExceeded");
        assert_eq!(s.size.as_deref(), Some("3.0 MiB"));
        assert_eq!(s.next_snapshot_time, Some(Time(ts("2026-01-02T00:00:00Z"))));
    }

    #[test]
    fn a_stalled_job_degrades_while_it_runs_and_a_recovered_retry_reports_the_failures() {
        let stalled = |stall: Option<Stall>| Activity::Running {
            job: "shop-g5".into(),
            generation: 5,
            stall,
        };
        let no_pod = Stall::NoPod {
            job: "shop-g5".into(),
            seconds: 130,
            cause: Some("Error creating: exceeded quota".into()),
        };
        let mut s = SiteCacheStatus {
            current: Some(promoted(4, 1)),
            ..Default::default()
        };
        let run = |s: &mut SiteCacheStatus, activity: &Activity| {
            derive(
                s,
                &Observed {
                    verdict: Some(&verdict(Freshness::Fresh)),
                    activity,
                    trouble: None,
                    holds: Holds::default(),
                    observed_generation: None,
                    now: ts("2026-01-01T00:00:00Z"),
                },
            )
        };
        run(&mut s, &stalled(Some(no_pod.clone())));
        assert_eq!(s.phase, Some(Phase::Snapshotting));
        assert_eq!(cond(&s, READY).status, "True");
        for type_ in [PROGRESSING, DEGRADED] {
            let c = cond(&s, type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("True", "SnapshotPodNotCreated")
            );
            assert_eq!(c.message, no_pod.message());
        }
        // The pod gets created: back to running, nothing degraded.
        run(&mut s, &stalled(None));
        assert_eq!(cond(&s, PROGRESSING).reason, "SnapshotRunning");
        assert_eq!(cond(&s, DEGRADED).status, "False");

        // A retry after failures stalls, then gets going: the failures are what is degraded.
        s.consecutive_failures = 2;
        run(&mut s, &stalled(Some(no_pod)));
        assert_eq!(cond(&s, DEGRADED).reason, "SnapshotPodNotCreated");
        run(&mut s, &stalled(None));
        let d = cond(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "SnapshotRetrying")
        );
        assert_eq!(
            d.message,
            "2 failed snapshots in a row; Job shop-g5 is trying again"
        );
    }

    #[test]
    fn blocked_is_failed() {
        let mut s = SiteCacheStatus::default();
        let activity = Activity::Blocked {
            reason: "PrefixOwnedByAnother".into(),
            message: "owned by x".into(),
        };
        derive(
            &mut s,
            &Observed {
                verdict: None,
                activity: &activity,
                trouble: None,
                holds: Holds {
                    suspended: false,
                    pinned: None,
                },
                observed_generation: None,
                now: ts("2026-01-01T00:00:00Z"),
            },
        );
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(cond(&s, READY).reason, "PrefixOwnedByAnother");
        assert_eq!(cond(&s, DEGRADED).status, "True");
    }

    #[test]
    fn errors_show_in_ready_and_degraded() {
        let trouble = Trouble {
            reason: "NoSuchBucket".into(),
            message: "GET s3://missing/shop/.sitecache-owner.json: NoSuchBucket".into(),
        };
        let mut s = SiteCacheStatus::default();
        derive(
            &mut s,
            &Observed {
                verdict: None,
                activity: &Activity::Idle,
                trouble: Some(&trouble),
                holds: Holds {
                    suspended: false,
                    pinned: None,
                },
                observed_generation: None,
                now: ts("2026-01-01T00:00:00Z"),
            },
        );
        assert_eq!(s.phase, Some(Phase::Failed));
        for t in [READY, DEGRADED] {
            assert_eq!(cond(&s, t).reason, "NoSuchBucket");
            assert_eq!(cond(&s, t).message, trouble.message);
        }
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "True");
        // With a promoted generation the cache is still Ready; Degraded says what is wrong.
        let mut s = SiteCacheStatus {
            current: Some(promoted(2, 1)),
            ..Default::default()
        };
        derive(
            &mut s,
            &Observed {
                verdict: Some(&verdict(Freshness::Fresh)),
                activity: &Activity::Idle,
                trouble: Some(&trouble),
                holds: Holds {
                    suspended: false,
                    pinned: None,
                },
                observed_generation: None,
                now: ts("2026-01-01T00:00:00Z"),
            },
        );
        assert_eq!(s.phase, Some(Phase::Ready));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, DEGRADED).reason, "NoSuchBucket");
    }

    #[test]
    fn change_detection_ignores_condition_order() {
        let mut a = SiteCacheStatus::default();
        let now = ts("2026-01-01T00:00:00Z");
        set_condition(&mut a.conditions, READY, true, "r", "m".into(), None, now);
        set_condition(&mut a.conditions, FRESH, true, "r", "m".into(), None, now);
        let mut b = a.clone();
        b.conditions.reverse();
        assert!(!changed(Some(&a), &b));
        b.consecutive_failures = 1;
        assert!(changed(Some(&a), &b));
        assert!(changed(None, &b));
        // What the API server stores to the second is no change.
        let mut c = a.clone();
        c.next_snapshot_time = Some(Time(ts("2026-01-01T00:00:00.250Z")));
        let mut d = a.clone();
        d.next_snapshot_time = Some(Time(ts("2026-01-01T00:00:00Z")));
        assert!(!changed(Some(&d), &c));
        assert_eq!(
            truncate(ts("2026-01-01T00:00:00.999Z")),
            ts("2026-01-01T00:00:00Z")
        );
    }
}
