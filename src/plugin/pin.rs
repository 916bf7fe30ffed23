//! `kubectl sitecache promote NAME --generation N` and `kubectl sitecache unpin NAME`: set and
//! remove `spec.pin`, the rollback. The controller promotes the pinned generation (runners
//! restore it from their next start) and holds it: nothing scheduled starts and nothing is
//! promoted over it until `unpin`, after which it stays current until the next snapshot replaces
//! it. `promote` waits until the controller has promoted it, or says why it did not.
//!
//! Under Argo CD or Flux the spec is theirs: pin in Git, or this change is reverted at the next
//! sync.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

use super::Kube;
use crate::api::SiteCache;

/// The field manager of the plugin's writes.
const MANAGER: &str = "kubectl-sitecache";

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// The SiteCache.
    pub name: String,
    /// The retained generation to promote and hold (`kubectl sitecache generations NAME` lists
    /// them).
    #[arg(long, value_name = "N")]
    pub generation: u64,
    /// How long to wait for the controller to promote it (0: do not wait).
    #[arg(long, default_value = "2m", value_parser = crate::agent::parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct UnpinArgs {
    /// The SiteCache.
    pub name: String,
}

/// What the controller made of a pin, as its status says.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Not yet looked at.
    Pending,
    Promoted,
    /// Refused, with the `Degraded` condition's reason and message.
    Refused(String, String),
}

/// The controller's answer to `spec.pin.generation == n` in `sc`, once it has seen that spec.
fn outcome(sc: &SiteCache, n: u64) -> Outcome {
    let Some(status) = &sc.status else {
        return Outcome::Pending;
    };
    if status.observed_generation < sc.metadata.generation {
        return Outcome::Pending;
    }
    if status.current.as_ref().map(|c| c.generation) == Some(n) {
        return Outcome::Promoted;
    }
    match status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
    {
        Some(c) if c.reason == "InvalidPin" || c.reason == "PinUnavailable" => {
            Outcome::Refused(c.reason.clone(), c.message.clone())
        }
        _ => Outcome::Pending,
    }
}

pub async fn promote(kube: &Kube, args: &PromoteArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let (ns, name, n) = (&kube.namespace, &args.name, args.generation);
    let sc = kube.sitecache(name).await?;
    // A clear refusal before anything changes (the controller would refuse it too).
    let status = sc.status.clone().unwrap_or_default();
    if !status.pinnable().contains(&n) {
        anyhow::bail!(
            "generation {n} of SiteCache {ns}/{name} is not retained ({}): only those can be \
             promoted",
            status.pinnable_text()
        );
    }
    let patch = json!({ "spec": { "pin": { "generation": n } } });
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    };
    kube.sitecaches()
        .patch(name, &params, &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching SiteCache {ns}/{name}"))?;
    writeln!(out, "SiteCache {ns}/{name} pinned to generation {n}.")?;
    if args.timeout.is_zero() {
        return Ok(());
    }
    out.flush()?;
    let answered = |sc: Option<&SiteCache>| sc.is_none_or(|sc| outcome(sc, n) != Outcome::Pending);
    let sc = tokio::time::timeout(
        args.timeout,
        await_condition(kube.sitecaches(), name, answered),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "the controller did not promote generation {n} within --timeout {}: is it running?",
            crate::api::duration::format(args.timeout)
        )
    })?
    .with_context(|| format!("watching SiteCache {ns}/{name}"))?
    .ok_or_else(|| anyhow::anyhow!("SiteCache {ns}/{name} was deleted while waiting"))?;
    match outcome(&sc, n) {
        Outcome::Promoted => {
            writeln!(
                out,
                "Generation {n} promoted: runners restore it from their next start. Nothing is \
                 promoted over it until `kubectl sitecache unpin {name}`."
            )?;
            Ok(())
        }
        Outcome::Refused(reason, message) => {
            anyhow::bail!("the controller refused the pin: {reason}: {message}")
        }
        Outcome::Pending => unreachable!("waited for an answer"),
    }
}

pub async fn unpin(kube: &Kube, args: &UnpinArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let (ns, name) = (&kube.namespace, &args.name);
    let sc = kube.sitecache(name).await?;
    let Some(pin) = &sc.spec.pin else {
        writeln!(out, "SiteCache {ns}/{name} was not pinned.")?;
        return Ok(());
    };
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    };
    kube.sitecaches()
        .patch(
            name,
            &params,
            &Patch::Merge(&json!({ "spec": { "pin": null } })),
        )
        .await
        .with_context(|| format!("patching SiteCache {ns}/{name}"))?;
    writeln!(
        out,
        "SiteCache {ns}/{name} unpinned: generation {} stays current until the next snapshot \
         replaces it.",
        pin.generation
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SiteCacheSpec, SiteCacheStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn sc(generation: i64, observed: Option<i64>, current: Option<u64>) -> SiteCache {
        let spec: SiteCacheSpec =
            serde_json::from_value(json!({"site": "shop", "warm": {"image": "deno"}})).unwrap();
        let mut sc = SiteCache::new("shop", spec);
        sc.metadata.generation = Some(generation);
        let info = |n| {
            serde_json::from_value(json!({
                "generation": n, "key": "k", "sizeBytes": 1, "uncompressedBytes": 1,
                "files": 1, "sha256": "00", "createdAt": "2026-01-01T00:00:00Z"
            }))
            .unwrap()
        };
        sc.status = Some(SiteCacheStatus {
            observed_generation: observed,
            current: current.map(info),
            ..Default::default()
        });
        sc
    }

    fn degraded(reason: &str) -> Condition {
        serde_json::from_value(json!({
            "type": "Degraded", "status": "True", "reason": reason, "message": "why",
            "lastTransitionTime": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn the_answer_is_read_only_from_a_status_that_saw_the_pin() {
        // The status is of the spec before the pin, whatever it says.
        assert_eq!(outcome(&sc(3, Some(2), Some(4)), 4), Outcome::Pending);
        assert_eq!(outcome(&sc(3, Some(3), Some(4)), 4), Outcome::Promoted);
        let mut refused = sc(3, Some(3), Some(5));
        refused
            .status
            .as_mut()
            .unwrap()
            .conditions
            .push(degraded("InvalidPin"));
        assert_eq!(
            outcome(&refused, 4),
            Outcome::Refused("InvalidPin".into(), "why".into())
        );
        // Another trouble (storage, say) is not the pin's answer: still waiting.
        let mut other = sc(3, Some(3), Some(5));
        other
            .status
            .as_mut()
            .unwrap()
            .conditions
            .push(degraded("StorageUnreachable"));
        assert_eq!(outcome(&other, 4), Outcome::Pending);
    }
}
