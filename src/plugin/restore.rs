//! `kubectl sitecache restore NAME --dest DIR`: restores a SiteCache's generation with the code
//! of `sitecache restore`, from the location in its status. Unlike a runner's restore it is
//! strict: a failure exits non-zero.
//!
//! It signs requests with the user's own credentials, so it sends them only where the user or
//! the controller chose ([`Endpoint::choose`]): never to `spec.storage.endpoint`, which anyone
//! who may edit SiteCaches in the namespace can point anywhere. It says where before it connects.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser};

use super::Kube;
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
    /// S3 endpoint URL (default: the endpoint the controller accepted, status.endpoint, else
    /// AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS). Never the spec's: it may name anything.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Region (default: the SiteCache's spec.storage.region, else the AWS environment).
    #[arg(long)]
    pub region: Option<String>,
    /// Path-style addressing (default: the SiteCache's spec.storage.forcePathStyle).
    #[arg(long)]
    pub path_style: bool,
}

/// `sitecache restore`'s arguments, parsed the way that command parses them so that every
/// default is its own.
#[derive(Parser)]
struct Agent {
    #[command(flatten)]
    args: AgentArgs,
}

/// Where the restore's requests go, and who chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `--endpoint`.
    Flag(String),
    /// `status.endpoint`: the spec's, as the controller accepted it.
    Accepted(String),
    /// The user's AWS environment (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`), else AWS.
    Environment,
}

impl Endpoint {
    /// The user's `--endpoint`, else the one the controller accepted. A spec that names an
    /// endpoint the controller has not accepted (an older controller writes no
    /// `status.endpoint`; a newer one refused it, or has not reconciled it yet) is an error,
    /// not a reason to connect to it or to the user's default store.
    pub fn choose(
        flag: Option<&str>,
        accepted: Option<&str>,
        spec: Option<&str>,
    ) -> Result<Endpoint, String> {
        if let Some(flag) = flag {
            return Ok(Endpoint::Flag(flag.to_owned()));
        }
        if let Some(accepted) = accepted {
            return Ok(Endpoint::Accepted(accepted.to_owned()));
        }
        if let Some(spec) = spec {
            return Err(format!(
                "spec.storage.endpoint names {spec}, which the controller has not accepted \
                 (status.endpoint is not set: a controller older than this plugin, or one that \
                 refused it or has not reconciled it yet). Pass --endpoint {spec} if you trust \
                 it with your credentials"
            ));
        }
        Ok(Endpoint::Environment)
    }

    /// The URL, or `None` for the environment's.
    fn url(&self) -> Option<&str> {
        match self {
            Endpoint::Flag(url) | Endpoint::Accepted(url) => Some(url),
            Endpoint::Environment => None,
        }
    }

    /// Where the requests go, in words, with `env` the user's environment.
    pub fn describe(&self, env: impl Fn(&str) -> Option<String>) -> String {
        let (url, from) = match self {
            Endpoint::Flag(url) => (url.clone(), "--endpoint"),
            Endpoint::Accepted(url) => (url.clone(), "status.endpoint, accepted by the controller"),
            Endpoint::Environment => match env("AWS_ENDPOINT_URL_S3")
                .map(|u| (u, "AWS_ENDPOINT_URL_S3"))
                .or_else(|| env("AWS_ENDPOINT_URL").map(|u| (u, "AWS_ENDPOINT_URL")))
            {
                Some(found) => found,
                None => ("AWS S3".to_owned(), "the AWS default"),
            },
        };
        let plain = if url.to_ascii_lowercase().starts_with("http://") {
            " over plain http: the data is not encrypted in transit"
        } else {
            ""
        };
        format!("{url} ({from}){plain}")
    }
}

pub async fn run(kube: &Kube, args: RestoreArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let name = &args.name;
    let ns = &kube.namespace;
    let sc = kube.sitecache(name).await?;
    let status = sc.status.clone().unwrap_or_default();
    let url = status.url.clone().with_context(|| {
        format!("SiteCache {ns}/{name} has no storage location yet (status.url): the controller has not reconciled it")
    })?;
    if args.generation.is_none() && status.current.is_none() {
        anyhow::bail!(
            "SiteCache {ns}/{name} has no current generation yet (its phase: {:?})",
            status.phase
        );
    }
    let storage = &sc.spec.storage;
    let endpoint = Endpoint::choose(
        args.endpoint.as_deref(),
        status.endpoint.as_deref(),
        storage.endpoint.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("SiteCache {ns}/{name}: {e}"))?;
    eprintln!(
        "Connecting to {} for {url}.",
        endpoint.describe(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    );
    if let (Endpoint::Accepted(accepted), Some(spec)) = (&endpoint, &storage.endpoint)
        && accepted != spec
    {
        eprintln!(
            "warning: spec.storage.endpoint names {spec}, which the controller has not accepted; \
             restoring from {accepted}"
        );
    }
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
    if let Some(endpoint) = endpoint.url() {
        argv.extend(["--endpoint".into(), endpoint.to_owned()]);
    }
    if let Some(region) = args.region.clone().or_else(|| storage.region.clone()) {
        argv.extend(["--region".into(), region]);
    }
    if args.path_style || storage.force_path_style == Some(true) {
        argv.push("--path-style".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_never_chooses_the_endpoint() {
        let evil = Some("http://evil.example");
        let ok = Some("https://s3.internal");
        assert_eq!(
            Endpoint::choose(None, ok, evil),
            Ok(Endpoint::Accepted("https://s3.internal".into()))
        );
        assert_eq!(
            Endpoint::choose(Some("http://mine"), ok, evil),
            Ok(Endpoint::Flag("http://mine".into()))
        );
        assert_eq!(
            Endpoint::choose(None, None, None),
            Ok(Endpoint::Environment)
        );
        let e = Endpoint::choose(None, None, evil).unwrap_err();
        assert!(
            e.contains("http://evil.example") && e.contains("--endpoint"),
            "{e}"
        );
    }

    #[test]
    fn says_where_and_whether_in_plain_text() {
        let none = |_: &str| None;
        let d = Endpoint::Accepted("http://minio:9000".into()).describe(none);
        assert!(
            d.contains("http://minio:9000") && d.contains("plain http"),
            "{d}"
        );
        let d = Endpoint::Flag("https://s3".into()).describe(none);
        assert!(d.contains("--endpoint") && !d.contains("plain"), "{d}");
        assert!(Endpoint::Environment.describe(none).contains("AWS S3"));
        let env = |k: &str| (k == "AWS_ENDPOINT_URL").then(|| "https://store".to_owned());
        let d = Endpoint::Environment.describe(env);
        assert!(d.contains("https://store (AWS_ENDPOINT_URL)"), "{d}");
    }
}
