//! Defaults of the snapshot Jobs (`--job-defaults FILE`, the chart's `jobDefaults`): the agent
//! containers' resources, and the pod's image pull secrets, node selector and tolerations, for
//! the SiteCaches that set none of their own.
//!
//! A SiteCache's own field wins, per field: a field it sets (`spec.snapshot.agentResources`, a
//! non-empty `spec.snapshot.pod.imagePullSecrets`, `nodeSelector` or `tolerations`) replaces the
//! default as a whole, and a default fills only a field it leaves unset or empty. Nothing is
//! merged within a field: a node selector of the SiteCache's own does not get the default's other
//! keys, and its own requests come without the default's limits. A whole field is what its owner
//! decided as one (a request and the limit it must stay under; the taints of one node pool).
//!
//! The file is read and checked once, at start-up ([`JobDefaults::load`]): one that does not
//! parse, or has a field the API server would refuse on every Job, stops the controller with
//! the file and the field named, instead of failing each SiteCache later.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements, Toleration};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::SnapshotSpec;
use crate::controller::settings::podspec;

/// The fields of a defaults file, as written there.
const FIELDS: [&str; 4] = [
    "agentResources",
    "imagePullSecrets",
    "nodeSelector",
    "tolerations",
];

/// Defaults of the snapshot Jobs (empty: none, the controller's built-in behaviour).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobDefaults {
    /// Resources of the agent containers; `None`: the controller's built-in ones.
    pub agent_resources: Option<ResourceRequirements>,
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

/// What one snapshot Job gets: each field the SiteCache's own if it sets it, else the default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Effective<'a> {
    /// `None`: neither sets them (the controller's built-in resources).
    pub agent_resources: Option<&'a ResourceRequirements>,
    pub image_pull_secrets: &'a [LocalObjectReference],
    pub node_selector: &'a BTreeMap<String, String>,
    pub tolerations: &'a [Toleration],
}

/// A defaults file that cannot be used: the file, the field (if one is to blame) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--job-defaults {file}: {}{why}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct JobDefaultsError {
    pub file: String,
    pub field: Option<String>,
    pub why: String,
}

impl JobDefaults {
    /// Reads and checks the defaults file at `path` (YAML or JSON).
    pub fn load(path: &Path) -> Result<JobDefaults, JobDefaultsError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| JobDefaultsError {
            file: file.clone(),
            field: None,
            why: format!("cannot be read: {e}"),
        })?;
        Self::parse(&text).map_err(|(field, why)| JobDefaultsError { file, field, why })
    }

    /// Parses and checks a defaults document; an error names the field, if one is to blame.
    pub fn parse(text: &str) -> Result<JobDefaults, (Option<String>, String)> {
        // An empty file (the chart's `jobDefaults: {}`) is no defaults.
        if text.trim().is_empty() {
            return Ok(JobDefaults::default());
        }
        let doc: Value = serde_saphyr::from_str(text)
            .map_err(|e| (None, format!("is not a YAML or JSON document: {e}")))?;
        let fields = match doc {
            Value::Null => return Ok(JobDefaults::default()),
            Value::Object(fields) => fields,
            other => {
                return Err((
                    None,
                    format!("must be a mapping of {}, not {other}", FIELDS.join(", ")),
                ));
            }
        };
        let mut defaults = JobDefaults::default();
        for (name, value) in fields {
            let field = |why: String| (Some(name.clone()), why);
            if value.is_null() {
                continue;
            }
            match name.as_str() {
                "agentResources" => {
                    let mut value = value;
                    quantities_as_strings(&mut value);
                    let resources: ResourceRequirements = strict(&value).map_err(field)?;
                    check_resources(&name, &resources).map_err(|(f, why)| (Some(f), why))?;
                    defaults.agent_resources = Some(resources);
                }
                "imagePullSecrets" => {
                    defaults.image_pull_secrets = list(&name, &value)?;
                    for (i, secret) in defaults.image_pull_secrets.iter().enumerate() {
                        dns_subdomain(&secret.name)
                            .map_err(|why| (Some(format!("{name}[{i}].name")), why))?;
                    }
                }
                "nodeSelector" => {
                    defaults.node_selector = strict(&value).map_err(field)?;
                    for (key, value) in &defaults.node_selector {
                        let field = Some(format!("{name}[{key:?}]"));
                        podspec::qualified_name(key)
                            .map_err(|e| (field.clone(), format!("the key {e}")))?;
                        podspec::label_value(value)
                            .map_err(|e| (field.clone(), format!("the value {e}")))?;
                    }
                }
                "tolerations" => {
                    defaults.tolerations = list(&name, &value)?;
                    for (i, toleration) in defaults.tolerations.iter().enumerate() {
                        check_toleration(toleration)
                            .map_err(|(f, why)| (Some(format!("{name}[{i}]{f}")), why))?;
                    }
                }
                _ => {
                    return Err(field(format!(
                        "unknown field (the fields are {})",
                        FIELDS.join(", ")
                    )));
                }
            }
        }
        Ok(defaults)
    }

    /// What the snapshot Jobs of a SiteCache with `snapshot` get: per field, its own if set,
    /// else the default.
    pub fn for_snapshot<'a>(&'a self, snapshot: &'a SnapshotSpec) -> Effective<'a> {
        let pod = &snapshot.pod;
        Effective {
            agent_resources: snapshot
                .agent_resources
                .as_deref()
                .or(self.agent_resources.as_ref()),
            image_pull_secrets: own_or(&pod.image_pull_secrets, &self.image_pull_secrets),
            node_selector: if pod.node_selector.is_empty() {
                &self.node_selector
            } else {
                &pod.node_selector
            },
            tolerations: own_or(&pod.tolerations, &self.tolerations),
        }
    }
}

/// A list field: the SiteCache's own unless it is empty.
fn own_or<'a, T>(own: &'a [T], default: &'a [T]) -> &'a [T] {
    if own.is_empty() { default } else { own }
}

/// Deserializes a list item by item, so that an error names the item.
fn list<T: DeserializeOwned + serde::Serialize>(
    name: &str,
    value: &Value,
) -> Result<Vec<T>, (Option<String>, String)> {
    let Value::Array(items) = value else {
        return Err((
            Some(name.to_owned()),
            format!("must be a list, not {value}"),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| strict(item).map_err(|why| (Some(format!("{name}[{i}]")), why)))
        .collect()
}

/// Deserializes `value`, refusing keys the type does not have: the Kubernetes types ignore
/// unknown keys, and a misspelt one (`tolerations: [{keys: …}]`) would silently become a
/// different default.
fn strict<T: DeserializeOwned + serde::Serialize>(value: &Value) -> Result<T, String> {
    let parsed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
    match unknown_key(value, &back) {
        Some(path) => Err(format!("unknown field {path}")),
        None => Ok(parsed),
    }
}

/// The first key of `input` (as a path) that did not survive deserializing into `parsed`.
fn unknown_key(input: &Value, parsed: &Value) -> Option<String> {
    match (input, parsed) {
        (Value::Object(i), Value::Object(p)) => i.iter().find_map(|(k, v)| {
            if v.is_null() {
                return None;
            }
            match p.get(k) {
                None => Some(format!("{k:?}")),
                Some(pv) => unknown_key(v, pv).map(|rest| format!("{k:?}.{rest}")),
            }
        }),
        (Value::Object(i), _) => i.keys().next().map(|k| format!("{k:?}")),
        (Value::Array(i), Value::Array(p)) => i
            .iter()
            .zip(p)
            .enumerate()
            .find_map(|(n, (iv, pv))| unknown_key(iv, pv).map(|rest| format!("[{n}].{rest}"))),
        _ => None,
    }
}

/// YAML writes `cpu: 1` as a number; Kubernetes takes it as the quantity "1".
fn quantities_as_strings(resources: &mut Value) {
    for list in ["requests", "limits"] {
        if let Some(Value::Object(map)) = resources.get_mut(list) {
            for v in map.values_mut() {
                if let Value::Number(n) = v {
                    *v = Value::String(n.to_string());
                }
            }
        }
    }
}

fn check_resources(name: &str, resources: &ResourceRequirements) -> Result<(), (String, String)> {
    if resources.claims.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err((
            format!("{name}.claims"),
            "the agent containers claim no dynamic resources".into(),
        ));
    }
    for (list, map) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        for (resource, quantity) in map.iter().flatten() {
            if !is_quantity(&quantity.0) {
                return Err((
                    format!("{name}.{list}[{resource:?}]"),
                    format!(
                        "{:?} is not a quantity (such as 250m, 0.5, 128Mi, 1G)",
                        quantity.0
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A Kubernetes quantity: a decimal number with an optional binary (Ki…Ei), decimal (n, u, m,
/// k, M…E) or exponent suffix.
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.bytes().any(|b| b.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    number_ok && suffix_ok
}

/// The API server's rules for a toleration; the error's field is relative to the toleration.
fn check_toleration(t: &Toleration) -> Result<(), (String, String)> {
    let operator = t.operator.as_deref().unwrap_or("Equal");
    let effect = t.effect.as_deref().unwrap_or("");
    if !matches!(operator, "" | "Equal" | "Exists") {
        return Err((
            ".operator".into(),
            format!("{operator:?} is not Equal or Exists"),
        ));
    }
    if !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err((
            ".effect".into(),
            format!("{effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"),
        ));
    }
    let key = t.key.as_deref().unwrap_or("");
    if key.is_empty() && operator != "Exists" {
        return Err((
            ".operator".into(),
            "a toleration without a key must have the operator Exists".into(),
        ));
    }
    if !key.is_empty() {
        podspec::qualified_name(key).map_err(|e| (".key".to_owned(), format!("the key {e}")))?;
    }
    if operator == "Exists" && t.value.as_deref().is_some_and(|v| !v.is_empty()) {
        return Err((
            ".value".into(),
            "must be empty with the operator Exists".into(),
        ));
    }
    if t.toleration_seconds.is_some() && effect != "NoExecute" {
        return Err((
            ".tolerationSeconds".into(),
            "only a NoExecute toleration has tolerationSeconds".into(),
        ));
    }
    Ok(())
}

/// A Secret's name: a DNS subdomain.
fn dns_subdomain(name: &str) -> Result<(), String> {
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.is_empty() && name.len() <= 253 && name.split('.').all(label) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a Secret name (a DNS subdomain: lower-case letters, digits, '-' and \
             '.')"
        ))
    }
}

#[cfg(test)]
mod tests;
