//! The snapshot pod's settings from `spec.warm.securityContext` and `spec.snapshot.pod`: checked
//! once ([`check`], part of `validate`) and applied to the Job's pod ([`apply`], from `job`).
//!
//! Who the warm container runs as decides who the agent containers run as. The warm container
//! writes into the cache that `restore-previous` filled: a non-root warm container can only do
//! that if the tree is its own, so when the spec declares the warm user, `restore-previous` and
//! `snapshot` run as that user too (the agent binary does not care which user it is). A warm
//! container left to its image's user (commonly root) keeps today's behaviour: the agents run as
//! the image's 65532 and root writes anywhere, unless the last generation's files were all owned
//! by one non-root user (an image whose own user is non-root wrote them): the agents then run as
//! that user (`job::observed_user`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSpec, SeccompProfile, SecurityContext,
};

use crate::api::SiteCache;
use crate::controller::settings::job_defaults::JobDefaults;

/// The warm container's declared non-root user and group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: i64,
    pub gid: Option<i64>,
}

/// Label keys the controller sets on its Jobs and pods (and every `sitecache.dev/` key).
const RESERVED_LABELS: [&str; 4] = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
];

/// Checks the pod settings; returns the warm container's declared non-root user, if any.
/// Errors name the field.
pub fn check(sc: &SiteCache) -> Result<Option<RunAs>, String> {
    let pod = &sc.spec.snapshot.pod;
    for (key, value) in &pod.labels {
        let field = format!("spec.snapshot.pod.labels[{key:?}]");
        reserved(key).map_or(Ok(()), |why| Err(format!("{field}: {why}")))?;
        qualified_name(key).map_err(|e| format!("{field}: the key {e}"))?;
        label_value(value).map_err(|e| format!("{field}: the value {e}"))?;
    }
    for key in pod.annotations.keys() {
        let field = format!("spec.snapshot.pod.annotations[{key:?}]");
        if key.starts_with("sitecache.dev/") {
            return Err(format!(
                "{field}: sitecache.dev/ annotations are the controller's"
            ));
        }
        qualified_name(key).map_err(|e| format!("{field}: the key {e}"))?;
    }
    for (key, value) in &pod.node_selector {
        let field = format!("spec.snapshot.pod.nodeSelector[{key:?}]");
        qualified_name(key).map_err(|e| format!("{field}: the key {e}"))?;
        label_value(value).map_err(|e| format!("{field}: the value {e}"))?;
    }
    run_as(sc)
}

/// The warm user, from the container's security context, else the pod's.
fn run_as(sc: &SiteCache) -> Result<Option<RunAs>, String> {
    let warm = sc.spec.warm.security_context.as_ref();
    let pod = sc.spec.snapshot.pod.security_context.as_ref();
    let uid = warm
        .and_then(|c| c.run_as_user)
        .or(pod.and_then(|c| c.run_as_user));
    let gid = warm
        .and_then(|c| c.run_as_group)
        .or(pod.and_then(|c| c.run_as_group));
    let non_root = warm
        .and_then(|c| c.run_as_non_root)
        .or(pod.and_then(|c| c.run_as_non_root));
    match (uid, non_root) {
        (Some(0), Some(true)) => {
            Err("spec.warm.securityContext: runAsNonRoot is true but runAsUser is 0 (root)".into())
        }
        (Some(0), _) | (None, None | Some(false)) => Ok(None),
        (Some(uid), _) => Ok(Some(RunAs { uid, gid })),
        (None, Some(true)) => Err(
            "spec.warm.securityContext.runAsUser: required when the warm container runs as \
             non-root (runAsNonRoot), so that restore-previous fills the cache as that user"
                .into(),
        ),
    }
}

/// Why the controller keeps `key` for itself, if it does.
fn reserved(key: &str) -> Option<&'static str> {
    if key.starts_with("sitecache.dev/") {
        Some("sitecache.dev/ labels are the controller's")
    } else if RESERVED_LABELS.contains(&key) {
        Some("the controller sets this label")
    } else {
        None
    }
}

/// A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters.
pub(crate) fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(label) {
            return Err(format!("{key:?} has a prefix that is not a DNS subdomain"));
        }
    }
    if name.is_empty() || name.len() > 63 || !name_chars(name) {
        return Err(format!(
            "{key:?} must be at most 63 letters, digits, '-', '_' or '.', starting and ending \
             with a letter or digit (after an optional DNS-subdomain prefix and '/')"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters as a key's name.
pub(crate) fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && name_chars(value)) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} must be at most 63 letters, digits, '-', '_' or '.', starting and ending \
             with a letter or digit"
        ))
    }
}

fn name_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Applies the settings to the snapshot pod (the image pull secrets, node selector and
/// tolerations the SiteCache leaves unset from `defaults`): `warm` is its warm container, `agents` the
/// `restore-previous` and `snapshot` containers. The agents run as the declared warm user
/// (`run_as`), else as `observed` (the owner of the restored generation's files, see
/// `job::observed_user`, which gives none when a user is declared), else as their image's user;
/// the warm container's settings are the spec's alone unless it declared its user.
pub fn apply(
    sc: &SiteCache,
    defaults: &JobDefaults,
    run_as: Option<RunAs>,
    observed: Option<RunAs>,
    pod: &mut PodSpec,
    labels: &mut BTreeMap<String, String>,
    annotations: &mut BTreeMap<String, String>,
) {
    let settings = &sc.spec.snapshot.pod;
    for (k, v) in &settings.labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    annotations.extend(settings.annotations.clone());
    let mut security = settings.security_context.clone().unwrap_or_default();
    security.seccomp_profile.get_or_insert_with(runtime_default);
    pod.security_context = Some(security);
    // Each of these is the SiteCache's own if it sets it, else the Job defaults'.
    let effective = defaults.for_snapshot(&sc.spec.snapshot);
    pod.image_pull_secrets = non_empty(effective.image_pull_secrets.to_vec());
    pod.node_selector =
        (!effective.node_selector.is_empty()).then(|| effective.node_selector.clone());
    pod.tolerations = non_empty(effective.tolerations.to_vec());
    pod.affinity = settings.affinity.clone();
    pod.priority_class_name = settings.priority_class_name.clone();

    let containers = pod
        .init_containers
        .iter_mut()
        .flatten()
        .chain(pod.containers.iter_mut());
    for container in containers {
        if container.name == "warm" {
            warm_security(container, sc, run_as);
        } else if let Some(user) = run_as.or(observed) {
            let ctx = container
                .security_context
                .get_or_insert_with(Default::default);
            ctx.run_as_user = Some(user.uid);
            ctx.run_as_group = user.gid.or(ctx.run_as_group);
        }
    }
}

/// The warm container's security context: the spec's, with the `restricted` settings for the
/// fields it leaves unset when it runs as non-root.
fn warm_security(container: &mut Container, sc: &SiteCache, run_as: Option<RunAs>) {
    let mut ctx: SecurityContext = sc.spec.warm.security_context.clone().unwrap_or_default();
    if run_as.is_some() {
        ctx.allow_privilege_escalation.get_or_insert(false);
        ctx.capabilities.get_or_insert_with(|| Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        });
    }
    container.security_context = (ctx != SecurityContext::default()).then_some(ctx);
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests;
