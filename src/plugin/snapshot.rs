//! `kubectl sitecache snapshot NAME [--wait]`: sets the `sitecache.dev/snapshot-request`
//! annotation to a fresh token, which the controller answers with one snapshot (recording the
//! token in `status.lastHandledRequest` whatever its result). With `--wait` it follows the
//! SiteCache until the controller answered this token, then says what came of it.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

use super::Kube;
use crate::api::{SNAPSHOT_REQUEST_ANNOTATION, SiteCache, SnapshotResult};

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// The SiteCache.
    pub name: String,
    /// Wait until the controller has answered the request, print the generation it promoted,
    /// and exit non-zero if the snapshot failed.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (for a slot, then for the snapshot Job) before giving up.
    #[arg(long, default_value = "30m", value_parser = crate::agent::parse_duration, requires = "wait")]
    pub timeout: Duration,
}

pub async fn run(kube: &Kube, args: &SnapshotArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let name = &args.name;
    let ns = &kube.namespace;
    // Fails with a clear error if the SiteCache does not exist (a patch would say only 404).
    kube.sitecache(name).await?;
    let token = request_token();
    let patch = json!({ "metadata": { "annotations": { SNAPSHOT_REQUEST_ANNOTATION: token } } });
    kube.sitecaches()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating SiteCache {ns}/{name}"))?;
    writeln!(
        out,
        "Requested a snapshot of SiteCache {ns}/{name} (request {token})."
    )?;
    if !args.wait {
        return Ok(());
    }
    out.flush()?;
    let answered = |sc: Option<&SiteCache>| {
        sc.is_none_or(|sc| {
            sc.status
                .as_ref()
                .and_then(|s| s.last_handled_request.as_deref())
                == Some(&token)
        })
    };
    let sc = tokio::time::timeout(
        args.timeout,
        await_condition(kube.sitecaches(), name, answered),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "request {token} not answered within --timeout {}: `kubectl sitecache status -n {ns}` \
                 shows whether it waits for a snapshot slot",
            crate::api::duration::format(args.timeout)
        )
    })?
    .with_context(|| format!("watching SiteCache {ns}/{name}"))?
    .ok_or_else(|| anyhow::anyhow!("SiteCache {ns}/{name} was deleted while waiting"))?;
    let status = sc.status.unwrap_or_default();
    let last = status
        .last_snapshot
        .context("the controller answered the request without recording a snapshot")?;
    match last.result {
        Some(SnapshotResult::Succeeded) => {
            let size = status
                .current
                .as_ref()
                .filter(|c| c.generation == last.generation)
                .map(|c| {
                    format!(
                        ", {} files, {}",
                        c.files,
                        bytesize::ByteSize(c.size_bytes).display().iec()
                    )
                })
                .unwrap_or_default();
            writeln!(
                out,
                "Generation {} promoted (Job {}{size}).",
                last.generation, last.job
            )?;
            Ok(())
        }
        result => anyhow::bail!(
            "the snapshot of SiteCache {ns}/{name} {} (generation {}, Job {}): {}: {}",
            match result {
                Some(SnapshotResult::Rejected) => "was rejected",
                _ => "failed",
            },
            last.generation,
            last.job,
            last.reason.unwrap_or_default(),
            last.message.unwrap_or_default()
        ),
    }
}

/// A token no earlier request used: the time, and random bits for two requests in one second.
fn request_token() -> String {
    let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    format!("kubectl-{now}-{:08x}", fastrand::u32(..))
}
