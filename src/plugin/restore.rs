//! `kubectl sitecache restore NAME --dest DIR`: restores a SiteCache's generation with the code
//! of `sitecache restore`, from the location in its status. Unlike a runner's restore it is
//! strict: a failure exits non-zero.
//!
//! It signs requests with the user's own credentials, so it sends them only where the user or
//! the controller chose ([`Store::of`]).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

use super::Kube;
use super::store::{Store, StoreArgs};
use crate::agent::restore::{self as agent, RestoreArgs as AgentArgs};

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The SiteCache.
    pub name: String,
    /// The directory to restore into (created; an existing cache there is replaced whole, only
    /// once the new one is complete).
    #[arg(long, value_name = "DIR")]
    pub dest: PathBuf,
    /// A retained generation instead of the current one (`kubectl sitecache generations` lists
    /// them).
    #[arg(long, value_name = "N")]
    pub generation: Option<u64>,
    /// How long the whole restore may take.
    #[arg(long, default_value = "10m", value_parser = crate::agent::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `sitecache restore`'s arguments, parsed the way that command parses them so that every
/// default is its own.
#[derive(Parser)]
struct Agent {
    #[command(flatten)]
    args: AgentArgs,
}

pub async fn run(kube: &Kube, args: RestoreArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let name = &args.name;
    let ns = &kube.namespace;
    let sc = kube.sitecache(name).await?;
    let status = sc.status.clone().unwrap_or_default();
    if args.generation.is_none() && status.current.is_none() {
        anyhow::bail!(
            "SiteCache {ns}/{name} has no current generation yet (its phase: {:?})",
            status.phase
        );
    }
    let store = Store::of(&sc, &args.store, ns)?;
    let url = store.url.to_string();
    let mut argv: Vec<String> = vec![
        "restore".into(),
        "--strict".into(),
        "--url".into(),
        url.clone(),
        "--dest".into(),
        args.dest.to_string_lossy().into_owned(),
        "--timeout".into(),
        format!("{}ms", args.timeout.as_millis()),
    ];
    if let Some(n) = args.generation {
        argv.extend(["--generation".into(), n.to_string()]);
    }
    if let Some(endpoint) = store.endpoint.url() {
        argv.extend(["--endpoint".into(), endpoint.to_owned()]);
    }
    if let Some(region) = store.region {
        argv.extend(["--region".into(), region]);
    }
    if store.path_style {
        argv.push("--path-style".into());
    }
    if let Some(bundle) = &store.ca_bundle {
        argv.extend(["--ca-bundle".into(), bundle.to_string_lossy().into_owned()]);
    }
    let agent_args = Agent::try_parse_from(&argv)
        .map_err(|e| anyhow::anyhow!("{}", e.render().to_string().trim()))?
        .args;
    let report = agent::run(agent_args).await;
    if !report.ok {
        anyhow::bail!(
            "restoring SiteCache {ns}/{name} from {url} failed ({}): {}",
            report.reason,
            report.message
        );
    }
    writeln!(
        out,
        "Restored generation {} of SiteCache {ns}/{name} into {}: {} files, {} in {:.1} s.",
        report
            .generation
            .map(|g| g.to_string())
            .unwrap_or_else(|| "?".into()),
        args.dest.display(),
        report.files,
        bytesize::ByteSize(report.bytes).display().iec(),
        report.ms as f64 / 1000.0
    )?;
    Ok(())
}
