//! The two conditions GitOps tools read: `Reconciling` and `Stalled`, kstatus's "abnormal-true"
//! conditions (sigs.k8s.io/cli-utils `kstatus`, which Flux's health checks, `kubectl wait`-style
//! tools and cli-utils' appliers use). Each is present only while it is true:
//!
//! - `Reconciling`: the spec asks for a generation that is not promoted yet (the first one, or
//!   the source revision's) and the controller is on its way to it: kstatus `InProgress`;
//! - `Stalled`: it will not get there without someone acting: the spec is refused (a setting the
//!   controller does not allow, a prefix another SiteCache owns), the snapshot for it failed and
//!   waits out its backoff, or the SiteCache is suspended: kstatus `Failed`.
//!
//! Neither is set for a snapshot that only refreshes an aged generation: the spec is met, and a
//! GitOps sync should not wait for a routine refresh. `Ready`, `Fresh`, `Progressing` and
//! `Degraded` say the rest. Argo CD reads the same conditions through
//! `deploy/argocd/.../health.lua`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::{Activity, Observed, clear_condition, set_condition};
use crate::api::SiteCacheStatus;

pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Sets or clears `Reconciling` and `Stalled`.
pub fn set(status: &mut SiteCacheStatus, observed: &Observed) {
    let &Observed {
        verdict,
        activity,
        trouble,
        holds,
        observed_generation,
        now,
    } = observed;
    let unmet = verdict.is_some_and(|v| v.unmet);
    let why = || {
        verdict
            .map(|v| v.freshness_reason.clone())
            .unwrap_or_default()
    };
    let failed_last = status.consecutive_failures > 0;
    let stalled: Option<(String, String)> = match activity {
        Activity::Blocked { reason, message } => Some((reason.clone(), message.clone())),
        _ if !unmet => None,
        Activity::Idle if holds.suspended => Some((
            "Suspended".into(),
            format!("spec.suspend is true, and {}", why()),
        )),
        Activity::Idle if failed_last => {
            let last = status.last_snapshot.as_ref();
            Some((
                last.and_then(|l| l.reason.clone())
                    .unwrap_or_else(|| "SnapshotFailed".into()),
                format!(
                    "{}; {} failed snapshots in a row, the last: {}",
                    why(),
                    status.consecutive_failures,
                    last.and_then(|l| l.message.as_deref())
                        .unwrap_or("no message")
                ),
            ))
        }
        _ => match trouble {
            Some(t) if status.current.is_none() => Some((t.reason.clone(), t.message.clone())),
            _ => None,
        },
    };
    let reconciling: Option<(&str, String)> = match (&stalled, activity) {
        (Some(_), _) => None,
        _ if !unmet => None,
        (
            None,
            Activity::Running {
                job, generation, ..
            },
        ) => Some((
            "SnapshotRunning",
            format!("{}; Job {job} is producing generation {generation}", why()),
        )),
        (None, Activity::Waiting { .. }) => Some((
            "WaitingForSlot",
            format!("{}; its snapshot waits for a slot", why()),
        )),
        (None, Activity::Standby { .. }) => Some((
            "Standby",
            format!("{}; the cluster that owns the prefix makes it", why()),
        )),
        (None, _) => Some(("SnapshotDue", format!("{}; a snapshot is due", why()))),
    };
    let conditions: &mut Vec<Condition> = &mut status.conditions;
    let g = observed_generation;
    match reconciling {
        Some((reason, message)) => {
            set_condition(conditions, RECONCILING, true, reason, message, g, now)
        }
        None => clear_condition(conditions, RECONCILING),
    }
    match stalled {
        Some((reason, message)) => {
            set_condition(conditions, STALLED, true, &reason, message, g, now)
        }
        None => clear_condition(conditions, STALLED),
    }
}

#[cfg(test)]
mod tests;
