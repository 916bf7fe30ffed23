//! `kubectl sitecache logs NAME [--generation N]`: what the containers of the snapshot Job of a
//! generation printed (`restore-previous`, `warm`, `snapshot`), as the controller kept it in the
//! bucket when it handled the Job (`P/logs/<n>.json`): still there long after the Job's TTL.
//! The end of each log only (`--job-log-bytes` of the controller); kept for the retained
//! generations and the newest ten others. By default, the most recent snapshot's.

use std::io::Write;

use anyhow::Context as _;
use clap::Args;

use super::Kube;
use super::store::{Store, StoreArgs};
use crate::storage::joblog::{JOB_LOG_FORMAT, JobLog};

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The SiteCache.
    pub name: String,
    /// The generation whose Job's logs to show (default: the most recent snapshot's,
    /// status.lastSnapshot).
    #[arg(long, value_name = "N")]
    pub generation: Option<u64>,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(kube: &Kube, args: &LogsArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let (ns, name) = (&kube.namespace, &args.name);
    let sc = kube.sitecache(name).await?;
    let status = sc.status.clone().unwrap_or_default();
    let n = match args.generation {
        Some(n) => n,
        None => status
            .last_snapshot
            .as_ref()
            .map(|l| l.generation)
            .with_context(|| format!("SiteCache {ns}/{name} has run no snapshot yet"))?,
    };
    let store = Store::of(&sc, &args.store, ns)?;
    let client = store.client().await?;
    let key = store.url.log_key(n);
    let log: Option<JobLog> = crate::storage::get_json(&client, &store.url.bucket, &key)
        .await
        .with_context(|| format!("reading s3://{}/{key}", store.url.bucket))?;
    let Some(log) = log else {
        let running = status.last_snapshot.as_ref().is_some_and(|l| {
            l.generation == n && l.result == Some(crate::api::SnapshotResult::Running)
        });
        anyhow::bail!(
            "no logs are kept for generation {n} of SiteCache {ns}/{name} (s3://{}/{key}): {}",
            store.url.bucket,
            if running {
                "its Job is still running; `kubectl logs -l job-name=…` shows it live"
            } else {
                "the controller keeps them for the retained generations and the newest ten others, \
                 when it handles their Job (not with --job-log-bytes 0)"
            }
        );
    };
    if log.format_version > JOB_LOG_FORMAT {
        writeln!(
            out,
            "(written by a newer controller, format {}: shown as far as this plugin reads it)",
            log.format_version
        )?;
    }
    write!(out, "{}", log.render())?;
    Ok(())
}
