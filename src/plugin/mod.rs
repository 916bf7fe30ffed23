//! `kubectl sitecache`: the kubectl plugin for people who run sitecache. It reads SiteCaches with
//! the user's kubeconfig and context and acts on them the way the controller expects:
//!
//! - [`status`]: the fleet at a glance;
//! - [`snapshot`]: an on-demand snapshot through the request annotation, optionally followed to
//!   its end;
//! - [`restore`]: a SiteCache's generation into a directory, with `sitecache restore`'s code;
//! - [`generations`]: the retained generations;
//! - [`suspend`]: `suspend` and `resume`, by name, label selector or all;
//! - [`migrate`]: `migrate-storage`, between releases that change the API's storage version;
//! - [`complete`]: shell completion, including kubectl's plugin completion protocol.
//!
//! It is the `sitecache` binary under another name: `main` dispatches on the name it was called
//! by (`kubectl-sitecache`, or `kubectl_complete-sitecache` for kubectl's completion), so
//! installing it is a link on `PATH`.

pub mod complete;
mod generations;
mod logs;
mod migrate;
mod pin;
mod restore;
mod snapshot;
mod status;
mod store;
mod suspend;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::api::SiteCache;

/// The name kubectl finds the plugin by.
pub const PLUGIN_NAME: &str = "kubectl-sitecache";
/// The name kubectl runs for the plugin's shell completion.
pub const COMPLETION_NAME: &str = "kubectl_complete-sitecache";

/// Inspect and operate SiteCaches: fleet status, on-demand snapshots, restores, generations.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-sitecache",
    bin_name = "kubectl sitecache",
    version,
    after_help = "Install: put the sitecache binary on PATH under the name kubectl-sitecache \
                  (a link is enough), and kubectl_complete-sitecache for kubectl's completion."
)]
pub struct PluginCli {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// Which cluster and namespace, as kubectl takes them.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// The kubeconfig file (default: KUBECONFIG, else ~/.kube/config; in a pod, its
    /// ServiceAccount).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// The fleet at a glance: freshness and phases, the stalest caches, what is failing, Jobs
    /// running and waiting.
    Status(status::StatusArgs),
    /// Request a snapshot now (the sitecache.dev/snapshot-request annotation), and with --wait
    /// follow it to its end.
    Snapshot(snapshot::SnapshotArgs),
    /// Restore a SiteCache's current generation (or --generation N) into a directory.
    Restore(restore::RestoreArgs),
    /// List a SiteCache's retained generations.
    Generations(generations::GenerationsArgs),
    /// What the snapshot Job of a generation printed (kept in the bucket past the Job's TTL).
    Logs(logs::LogsArgs),
    /// Stop new snapshots (spec.suspend): runners keep restoring the promoted generation.
    Suspend(suspend::SuspendArgs),
    /// Let snapshots run again.
    Resume(suspend::SuspendArgs),
    /// Roll back (or forward) to a retained generation and hold it there (spec.pin).
    Promote(pin::PromoteArgs),
    /// Remove the pin: the pinned generation stays current until the next snapshot.
    Unpin(pin::UnpinArgs),
    /// Write every SiteCache back in the CRD's storage version and record it as the only one
    /// stored (between releases that change it; docs/api-versions.md).
    MigrateStorage(migrate::MigrateArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(complete::CompletionArgs),
}

/// Runs the plugin with its parsed arguments.
pub fn main(cli: PluginCli) -> ExitCode {
    if let PluginCommand::Completion(args) = &cli.command {
        return complete::print_script(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    let result = runtime.block_on(async {
        let kube = Kube::connect(&cli.kube).await?;
        let mut out = std::io::stdout().lock();
        match cli.command {
            PluginCommand::Status(args) => status::run(&kube, &args, &mut out).await,
            PluginCommand::Snapshot(args) => snapshot::run(&kube, &args, &mut out).await,
            PluginCommand::Restore(args) => restore::run(&kube, args, &mut out).await,
            PluginCommand::Generations(args) => generations::run(&kube, &args, &mut out).await,
            PluginCommand::Logs(args) => logs::run(&kube, &args, &mut out).await,
            PluginCommand::Suspend(args) => suspend::run(&kube, &args, true, &mut out).await,
            PluginCommand::Resume(args) => suspend::run(&kube, &args, false, &mut out).await,
            PluginCommand::Promote(args) => pin::promote(&kube, &args, &mut out).await,
            PluginCommand::Unpin(args) => pin::unpin(&kube, &args, &mut out).await,
            PluginCommand::MigrateStorage(args) => migrate::run(&kube, &args, &mut out).await,
            PluginCommand::Completion(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A client of the user's cluster and the namespace the command acts in.
pub struct Kube {
    pub client: Client,
    pub namespace: String,
}

impl Kube {
    /// Connects the way kubectl does: the kubeconfig (`--kubeconfig`, KUBECONFIG, ~/.kube/config)
    /// and its context, or in a pod its ServiceAccount.
    pub async fn connect(args: &KubeArgs) -> anyhow::Result<Kube> {
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &args.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("--kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .with_context(|| format!("--kubeconfig {}", path.display()))?
            }
            None if args.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .with_context(|| format!("--context {}", args.context.as_deref().unwrap_or("")))?,
            None => Config::infer()
                .await
                .context("no kubeconfig (KUBECONFIG, ~/.kube/config) and not in a pod")?,
        };
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).context("building the Kubernetes client")?;
        Ok(Kube { client, namespace })
    }

    /// SiteCaches of the command's namespace.
    pub fn sitecaches(&self) -> Api<SiteCache> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// One SiteCache, or an error that says which one is missing.
    pub async fn sitecache(&self, name: &str) -> anyhow::Result<SiteCache> {
        self.sitecaches()
            .get_opt(name)
            .await
            .with_context(|| format!("reading SiteCache {}/{name}", self.namespace))?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "SiteCache {name} not found in namespace {} (kubectl get scache -n {} lists them)",
                    self.namespace,
                    self.namespace
                )
            })
    }
}

/// An age the way kubectl prints one (`45s`, `12m`, `5h`, `3d`).
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Seconds from `then` to `now`.
pub fn seconds_since(
    then: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    now: jiff::Timestamp,
) -> i64 {
    now.as_second() - then.0.as_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(120), "2m");
        assert_eq!(age(7199), "119m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(48 * 3600), "2d");
    }

    #[test]
    fn the_plugin_parses_kubectl_style_flags_anywhere() {
        let cli =
            PluginCli::try_parse_from(["kubectl-sitecache", "generations", "shop", "-n", "sites"])
                .unwrap();
        assert_eq!(cli.kube.namespace.as_deref(), Some("sites"));
        let err = PluginCli::try_parse_from(["kubectl-sitecache", "snapshot"]).unwrap_err();
        assert!(err.to_string().contains("<NAME>"), "{err}");
    }
}
