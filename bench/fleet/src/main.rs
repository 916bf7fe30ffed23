//! `make bench-fleet`: the sitecache controller (the release build) with thousands of SiteCaches,
//! on a local control plane and MinIO, the snapshot Jobs run by the local job runner. In one run:
//!
//! 1. **adoption**: N SiteCaches created at once over prefixes an earlier incarnation left
//!    (marker, generation 1 promoted), so each is adopted without a Job: time until all are Ready;
//! 2. **churn**: a few hundred get a new source revision and run their Jobs: time until promoted;
//! 3. **at rest**: for a window, API requests per SiteCache-hour by verb and resource (the API
//!    server's own `apiserver_request_total`), S3 requests and status writes per SiteCache-hour
//!    (the controller's metrics);
//! 4. **backlog**: W SiteCaches due at once with few slots, for W = 100 and 1,000: API and S3
//!    requests per minute while they wait, side by side;
//! 5. the controller's peak RSS over all of it.
//!
//! Targets (bench/README.md): adoption ≤ 120 s at 10,000; at rest ≤ 1 API request and 0 S3
//! requests per SiteCache-hour; peak RSS ≤ 128 MiB; backlog traffic independent of W.

#![forbid(unsafe_code)]

mod metrics;
mod world;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use metrics::Samples;
use serde_json::json;
use world::{Fleet, World, site, spec};

struct Args {
    n: usize,
    churn: usize,
    rest: Duration,
    backlog: Vec<usize>,
    slots: u32,
    window: Duration,
    sitecache: PathBuf,
    work: PathBuf,
}

const USAGE: &str = "usage: sitecache-bench-fleet [--n N] [--churn K] [--rest SECONDS] \
[--backlog W,W] [--slots S] [--window SECONDS] [--sitecache PATH] [--work DIR]

Runs the sitecache controller with N SiteCaches on a local control plane and MinIO and reports
adoption time, traffic at rest, traffic of a backlog and peak memory (see bench/README.md).

  --n N             SiteCaches (default 10000)
  --churn K         SiteCaches that get a new revision and run a Job (default 300)
  --rest SECONDS    the window at rest (default 300)
  --backlog W,W     backlog sizes to compare (default 100,1000; 0 skips)
  --slots S         --max-concurrent-snapshots of the controller (default 10)
  --window SECONDS  how long each backlog is measured (default 60)
  --sitecache PATH  the controller binary (default target/release/sitecache)
  --work DIR        state and logs (default target/bench-fleet)";

fn parse_args() -> Result<Args> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = Args {
        n: 10_000,
        churn: 300,
        rest: Duration::from_secs(300),
        backlog: vec![100, 1000],
        slots: 10,
        window: Duration::from_secs(60),
        sitecache: root.join("target/release/sitecache"),
        work: root.join("target/bench-fleet"),
    };
    let mut it = std::env::args().skip(1);
    let number = |flag: &str, v: Option<String>| -> Result<usize> {
        let v = v.with_context(|| format!("{flag} needs a number"))?;
        v.parse()
            .with_context(|| format!("{flag} {v}: not a whole number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => args.n = number("--n", it.next())?,
            "--churn" => args.churn = number("--churn", it.next())?,
            "--rest" => args.rest = Duration::from_secs(number("--rest", it.next())? as u64),
            "--window" => args.window = Duration::from_secs(number("--window", it.next())? as u64),
            "--slots" => args.slots = number("--slots", it.next())? as u32,
            "--backlog" => {
                let v = it.next().context("--backlog needs sizes (100,1000)")?;
                args.backlog = v
                    .split(',')
                    .map(|w| {
                        w.trim()
                            .parse()
                            .with_context(|| format!("--backlog {v}: {w:?} is not a number"))
                    })
                    .collect::<Result<Vec<usize>>>()?
                    .into_iter()
                    .filter(|&w| w > 0)
                    .collect();
            }
            "--sitecache" => args.sitecache = it.next().context("--sitecache PATH")?.into(),
            "--work" => args.work = it.next().context("--work DIR")?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if args.n == 0 || args.churn > args.n || args.backlog.iter().sum::<usize>() > args.n {
        bail!("--n must be at least 1, --churn and the sum of the --backlog sizes");
    }
    if args.slots == 0 {
        bail!("--slots must be at least 1");
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Per SiteCache-hour, from a count over `window` for `n` SiteCaches.
fn per_hour(count: f64, n: usize, window: Duration) -> f64 {
    count / n as f64 / (window.as_secs_f64() / 3600.0)
}

const MIB: f64 = 1024.0 * 1024.0;

async fn run() -> Result<()> {
    let args = parse_args()?;
    anyhow::ensure!(
        args.sitecache.is_file(),
        "--sitecache {}: no such binary (make bench-fleet builds it)",
        args.sitecache.display()
    );
    let _ = std::fs::remove_dir_all(&args.work);
    eprintln!("starting the control plane, MinIO and the controller");
    let mut w = World::start(&args.work, &args.sitecache, args.slots).await?;
    let mut report = Report::default();

    // 1. Adoption.
    let seeded = w.seed_storage(args.n, 64).await?;
    eprintln!(
        "seeded {} prefixes in {:.0} s",
        args.n,
        seeded.as_secs_f64()
    );
    let fleet = Fleet::watch(w.api());
    let s3_before = metrics::controller(w.metrics_port).await?;
    let start = Instant::now();
    w.create(0..args.n, 32).await?;
    let created = start.elapsed();
    let adopted = fleet
        .wait_for("Ready", args.n, start, Duration::from_secs(1800), |_, s| {
            s.ready && s.current == Some(1)
        })
        .await?;
    w.check_running()?;
    let after = metrics::controller(w.metrics_port).await?.since(&s3_before);
    report.push(format!(
        "adoption: {} SiteCaches created in {:.1} s, all Ready at generation 1 after {:.1} s \
         [target <= 120 s at 10,000]",
        args.n,
        created.as_secs_f64(),
        adopted.as_secs_f64()
    ));
    report.push(format!(
        "  S3 requests per adopted SiteCache: {:.2} ({}); status writes: {:.2}",
        after.total("sitecache_storage_requests_total") / args.n as f64,
        by_operation(&after, args.n as f64),
        after.total("sitecache_status_writes_total") / args.n as f64,
    ));

    // 2. Churn.
    if let Some(step) = args.n.checked_div(args.churn) {
        let churned: Vec<String> = (0..args.churn).map(|i| site(i * step)).collect();
        let start = Instant::now();
        w.patch_all(
            &churned,
            |name| json!({"spec": spec(name, "r2", "sleep 0")}),
            32,
        )
        .await?;
        let set: std::collections::HashSet<&str> = churned.iter().map(String::as_str).collect();
        let promoted = fleet
            .wait_for(
                "promoted at generation 2",
                args.churn,
                start,
                Duration::from_secs(1800),
                |name, s| set.contains(name) && s.current == Some(2),
            )
            .await?;
        report.push(format!(
            "churn: {} new revisions, their Jobs run and promoted after {:.1} s ({} slots)",
            args.churn,
            promoted.as_secs_f64(),
            args.slots
        ));
    }
    w.check_running()?;

    // 3. At rest: nothing but the controller talks to the API server.
    drop(fleet);
    w.stop_runner().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    eprintln!("at rest for {} s", args.rest.as_secs());
    let (api0, ctl0) = (
        metrics::apiserver(&w.client).await?,
        metrics::controller(w.metrics_port).await?,
    );
    tokio::time::sleep(args.rest).await;
    let (api1, ctl1) = (
        metrics::apiserver(&w.client).await?,
        metrics::controller(w.metrics_port).await?,
    );
    w.check_running()?;
    let (api, ctl) = (api1.since(&api0), ctl1.since(&ctl0));
    let requests = api.sum_by(
        "apiserver_request_total",
        &["verb", "resource", "subresource"],
    );
    let mut rows: Vec<String> = requests
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| {
            let resource = if k[2].is_empty() {
                k[1].clone()
            } else {
                format!("{}/{}", k[1], k[2])
            };
            format!(
                "{} {resource}: {} ({:.4}/SiteCache-hour)",
                k[0],
                v,
                per_hour(*v, args.n, args.rest)
            )
        })
        .collect();
    rows.sort();
    let ours = ["sitecaches", "jobs", "pods", "events"];
    let controller_api: f64 = requests
        .iter()
        .filter(|(k, _)| ours.contains(&k[1].as_str()))
        .map(|(_, v)| v)
        .sum();
    report.push(format!(
        "at rest ({} s, {} SiteCaches): API requests per SiteCache-hour on the controller's \
         resources (sitecaches, jobs, pods, events): {:.4} [target <= 1]; S3 requests: {:.4} \
         [target 0]; status writes: {:.4}; reconciles: {:.3}",
        args.rest.as_secs(),
        args.n,
        per_hour(controller_api, args.n, args.rest),
        per_hour(
            ctl.total("sitecache_storage_requests_total"),
            args.n,
            args.rest
        ),
        per_hour(
            ctl.total("sitecache_status_writes_total"),
            args.n,
            args.rest
        ),
        per_hour(ctl.total("sitecache_reconciles_total"), args.n, args.rest),
    ));
    report.push(format!(
        "  every API request in the window, by verb and resource (the API server's own \
         housekeeping included): {}",
        if rows.is_empty() {
            "none".to_owned()
        } else {
            rows.join("; ")
        }
    ));

    // 4. Backlogs.
    let mut backlog_rows = Vec::new();
    if !args.backlog.is_empty() {
        w.start_runner();
        let fleet = Fleet::watch(w.api());
        fleet
            .wait_for(
                "listed",
                args.n,
                Instant::now(),
                Duration::from_secs(300),
                |_, _| true,
            )
            .await?;
        let mut end = args.n;
        for (round, &size) in args.backlog.iter().enumerate() {
            // The last `size` SiteCaches before those of the previous round.
            let names: Vec<String> = (end - size..end).map(site).collect();
            end -= size;
            let token = format!("backlog-{round}");
            w.patch_all(
                &names,
                |name| {
                    json!({"metadata": {"annotations": {"sitecache.dev/snapshot-request": token}},
                           "spec": spec(name, "r1", "sleep 20")})
                },
                32,
            )
            .await?;
            let set: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
            // Every one has taken the request up: waiting, snapshotting or done.
            fleet
                .wait_for(
                    "taking the request up",
                    size,
                    Instant::now(),
                    Duration::from_secs(600),
                    |name, s| {
                        set.contains(name)
                            && (s.waiting
                                || s.snapshotting
                                || s.handled.as_deref() == Some(token.as_str()))
                    },
                )
                .await?;
            // Once the first Jobs have ended, slots free at a steady pace.
            tokio::time::sleep(Duration::from_secs(25)).await;
            let (api0, ctl0) = (
                metrics::apiserver(&w.client).await?,
                metrics::controller(w.metrics_port).await?,
            );
            tokio::time::sleep(args.window).await;
            let (api1, ctl1) = (
                metrics::apiserver(&w.client).await?,
                metrics::controller(w.metrics_port).await?,
            );
            let waiting_at_end = fleet.count(|name, s| set.contains(name) && s.waiting);
            let (api, ctl) = (api1.since(&api0), ctl1.since(&ctl0));
            let minutes = args.window.as_secs_f64() / 60.0;
            let api_total = api.total("apiserver_request_total");
            let controller_api: f64 = api
                .sum_by("apiserver_request_total", &["resource"])
                .iter()
                .filter(|(k, _)| k[0] == "sitecaches")
                .map(|(_, v)| v)
                .sum();
            let breakdown: Vec<String> = api
                .sum_by(
                    "apiserver_request_total",
                    &["verb", "resource", "subresource"],
                )
                .into_iter()
                .filter(|(_, v)| *v > 0.0)
                .map(|(k, v)| {
                    let sub = if k[2].is_empty() {
                        String::new()
                    } else {
                        format!("/{}", k[2])
                    };
                    format!("{} {}{sub} {:.0}", k[0], k[1], v / minutes)
                })
                .collect();
            eprintln!(
                "  backlog of {size}, API requests per minute: {}",
                breakdown.join(", ")
            );
            backlog_rows.push((
                size,
                api_total / minutes,
                controller_api / minutes,
                ctl.total("sitecache_storage_requests_total") / minutes,
                ctl.total("sitecache_reconciles_total") / minutes,
                ctl.total("sitecache_snapshot_jobs_total") / minutes,
                waiting_at_end,
            ));
            // Out of the queue: the next round starts from an empty one.
            w.patch_all(&names, |_| json!({"spec": {"suspend": true}}), 32)
                .await?;
            fleet
                .wait_for(
                    "leaving the queue",
                    size,
                    Instant::now(),
                    Duration::from_secs(600),
                    |name, s| set.contains(name) && !s.waiting,
                )
                .await?;
        }
        w.check_running()?;
    }
    for (size, api, sitecaches, s3, reconciles, jobs, left) in &backlog_rows {
        let per_job = |v: f64| if *jobs > 0.0 { v / jobs } else { f64::NAN };
        report.push(format!(
            "backlog of {size} due at once, {} slots, {} s measured while {left} still wait: \
             per minute {jobs:.0} Jobs finished, {api:.0} API requests (sitecaches \
             {sitecaches:.0}), {s3:.0} S3 requests, {reconciles:.0} reconciles; per finished \
             Job {:.1} API and {:.1} S3 requests, {:.1} reconciles",
            args.slots,
            args.window.as_secs(),
            per_job(*api),
            per_job(*s3),
            per_job(*reconciles),
        ));
    }
    if let [first, .., last] = backlog_rows.as_slice() {
        let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::NAN };
        let per_job = |row: &(usize, f64, f64, f64, f64, f64, usize), v: f64| v / row.5;
        report.push(format!(
            "  {}x the waiters: {:.2}x the API requests, {:.2}x the S3 requests, {:.2}x the \
             reconciles per minute; per finished Job {:.2}x, {:.2}x, {:.2}x [target: \
             independent of the waiters]",
            last.0 / first.0,
            ratio(first.1, last.1),
            ratio(first.3, last.3),
            ratio(first.4, last.4),
            ratio(per_job(first, first.1), per_job(last, last.1)),
            ratio(per_job(first, first.3), per_job(last, last.3)),
            ratio(per_job(first, first.4), per_job(last, last.4)),
        ));
    }

    // 5. Memory.
    let (peak, now) = metrics::memory(w.controller.pid())?;
    report.push(format!(
        "controller memory: peak RSS {:.1} MiB, now {:.1} MiB [target peak <= 128 MiB at 10,000]",
        peak as f64 / MIB,
        now as f64 / MIB
    ));

    println!("\n{}", report.0.join("\n"));
    Ok(())
}

/// The report's lines, each also printed on stderr as soon as it is known.
#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    fn push(&mut self, line: String) {
        eprintln!("{line}");
        self.0.push(line);
    }
}

/// `GetObject 3.00, …` per SiteCache.
fn by_operation(samples: &Samples, n: f64) -> String {
    samples
        .sum_by("sitecache_storage_requests_total", &["operation"])
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{} {:.2}", k[0], v / n))
        .collect::<Vec<_>>()
        .join(", ")
}
