//! `kubectl sitecache suspend|resume (NAME… | -l SELECTOR | --all)`: sets `spec.suspend`, which
//! stops new snapshots (a running one finishes; runners keep restoring the promoted generation).
//! Under Argo CD or Flux the spec is theirs: suspend it in Git, or this change is reverted at the
//! next sync.

use std::io::Write;

use anyhow::Context as _;
use clap::Args;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

use super::Kube;

/// The field manager of the plugin's writes.
const MANAGER: &str = "kubectl-sitecache";

#[derive(Args, Debug)]
pub struct SuspendArgs {
    /// SiteCaches by name.
    #[arg(required_unless_present_any = ["selector", "all"], conflicts_with_all = ["selector", "all"])]
    pub names: Vec<String>,
    /// Those of the namespace that match a label selector (`site=shop,tier!=canary`).
    #[arg(short = 'l', long, conflicts_with = "all")]
    pub selector: Option<String>,
    /// Every SiteCache of the namespace.
    #[arg(long)]
    pub all: bool,
}

/// Sets `spec.suspend` to `suspend` on the SiteCaches `args` names, one line each.
pub async fn run(
    kube: &Kube,
    args: &SuspendArgs,
    suspend: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let ns = &kube.namespace;
    let api = kube.sitecaches();
    let targets = if args.names.is_empty() {
        let mut params = ListParams::default();
        if let Some(selector) = &args.selector {
            params = params.labels(selector);
        }
        let list = api
            .list(&params)
            .await
            .with_context(|| format!("listing SiteCaches in namespace {ns}"))?;
        let names: Vec<String> = list.items.iter().map(|sc| sc.name_any()).collect();
        if names.is_empty() {
            anyhow::bail!(
                "no SiteCache in namespace {ns}{}",
                args.selector
                    .as_ref()
                    .map(|s| format!(" matches -l {s}"))
                    .unwrap_or_default()
            );
        }
        names
    } else {
        args.names.clone()
    };
    let (verb, already) = if suspend {
        ("suspended", "was suspended already")
    } else {
        ("resumed", "was not suspended")
    };
    let patch = json!({ "spec": { "suspend": suspend } });
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    };
    for name in &targets {
        // A clear error for a missing one (a patch would say only 404).
        let sc = kube.sitecache(name).await?;
        if sc.spec.suspend == suspend {
            writeln!(out, "SiteCache {ns}/{name} {already}.")?;
            continue;
        }
        api.patch(name, &params, &Patch::Merge(&patch))
            .await
            .with_context(|| format!("patching SiteCache {ns}/{name}"))?;
        writeln!(out, "SiteCache {ns}/{name} {verb}.")?;
    }
    Ok(())
}
