//! The Job status the runner writes: the fields and conditions of each step, in the order the
//! API server accepts them.

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::supervise::true_condition;
use super::{DEFAULT_BACKOFF_LIMIT, now, time_json};

/// A condition to add (with status True) when writing a status.
pub(super) struct NewCondition {
    type_: &'static str,
    reason: String,
    message: String,
}

pub(super) fn condition(type_: &'static str, reason: &str, message: &str) -> NewCondition {
    NewCondition {
        type_,
        reason: reason.to_owned(),
        message: message.to_owned(),
    }
}

pub(super) fn reason_of(c: &JobCondition) -> &str {
    c.reason.as_deref().unwrap_or_default()
}

pub(super) fn message_of(c: &JobCondition) -> &str {
    c.message.as_deref().unwrap_or_default()
}

pub(super) fn backoff_limit(job: &Job) -> i32 {
    job.spec
        .as_ref()
        .and_then(|s| s.backoff_limit)
        .unwrap_or(DEFAULT_BACKOFF_LIMIT)
}

/// The merge patch that sets `fields` and appends `conditions` to `current`'s status.
pub(super) fn status_patch(current: &Job, fields: &Value, conditions: &[NewCondition]) -> Value {
    let mut status = fields.clone();
    if !conditions.is_empty() {
        let existing: &[JobCondition] = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let mut list: Vec<Value> = existing
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let at = time_json(now());
        for c in conditions {
            if true_condition(current, c.type_).is_none() {
                list.push(json!({
                    "type": c.type_,
                    "status": "True",
                    "reason": c.reason,
                    "message": c.message,
                    "lastProbeTime": at,
                    "lastTransitionTime": at,
                }));
            }
        }
        status["conditions"] = Value::Array(list);
    }
    json!({
        "metadata": { "resourceVersion": current.resource_version() },
        "status": status,
    })
}
