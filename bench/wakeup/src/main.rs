//! `make bench-wakeup`: a site's wake-up, from an empty `DENO_DIR` to its first HTTP responses,
//! three ways, side by side in one run against a local MinIO:
//!
//! - **seed**: what the runners did before sitecache: GET `cache.tgz` piped into `tar -xzf`
//!   (a cache made by `deno cache main.ts`), then `deno run`;
//! - **cache warm**: `sitecache restore` of a generation warmed by `deno cache main.ts`;
//! - **serve warm**: `sitecache restore` of a generation warmed by `sitecache warm-serve`, which
//!   ran the site and requested its paths: the modules it loads at run time and Deno's V8 code
//!   cache are in it.
//!
//! Each part is printed (the restore; from the site's start to its first response; to the last
//! path's response) with the medians' ratios to the seed's flow. Every cache is warmed and
//! restored at one path, as a snapshot Job's `cacheDir` and its runners' `DENO_DIR` should be:
//! Deno's V8 code cache of npm packages is keyed by their absolute paths in `DENO_DIR`. The sites are the storefront
//! example (`examples/storefront`) and a larger one of real npm packages (`site/`), each with a
//! section imported at run time by a computed specifier. Deno runs without `--cached-only`, as
//! runners do: what a cache lacks is downloaded from the registry during the wake-up.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_s3::primitives::ByteStream;
use sitecache_devtools::S3Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

const USAGE: &str = "usage: sitecache-bench-wakeup [--runs N] [--sitecache PATH] [--deno PATH] \
                     [--work DIR] [--dest-dir DIR] [--site storefront|large]";

struct Args {
    runs: usize,
    sitecache: PathBuf,
    deno: PathBuf,
    work: PathBuf,
    dest: PathBuf,
    sites: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let repo = repo();
    let mut args = Args {
        runs: 3,
        sitecache: repo.join("target/release/sitecache"),
        deno: sitecache_devtools::assets::Asset::Deno.path()?,
        work: std::env::temp_dir().join("sitecache-bench-wakeup"),
        dest: PathBuf::from("/dev/shm/sitecache-bench-wakeup"),
        sites: vec!["storefront".into(), "large".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--runs" => args.runs = value()?.parse().context("--runs")?,
            "--sitecache" => args.sitecache = value()?.into(),
            "--deno" => args.deno = value()?.into(),
            "--work" => args.work = value()?.into(),
            "--dest-dir" => args.dest = value()?.into(),
            "--site" => args.sites = vec![value()?],
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok(args)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A site: where it is, how it runs, what a wake-up asks of it.
struct Site {
    name: &'static str,
    dir: PathBuf,
    /// Deno's flags for it.
    flags: &'static [&'static str],
    /// What a wake-up requests, in order: the first is the page that woke it.
    paths: &'static [&'static str],
}

fn site(name: &str) -> Result<Site> {
    Ok(match name {
        "storefront" => Site {
            name: "storefront",
            dir: repo().join("examples/storefront"),
            // A module imported by a computed specifier is read with read permission.
            flags: &["--allow-net", "--allow-read"],
            paths: &["/", "/product/TEE-01"],
        },
        "large" => Site {
            name: "large",
            dir: repo().join("bench/wakeup/site"),
            // TypeScript reads its environment and files.
            flags: &["--allow-net", "--allow-env", "--allow-read"],
            paths: &["/", "/report"],
        },
        other => bail!("unknown site {other}\n{USAGE}"),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Seed,
    CacheWarm,
    ServeWarm,
}

impl Flow {
    const ALL: [Flow; 3] = [Flow::Seed, Flow::CacheWarm, Flow::ServeWarm];

    fn label(self) -> &'static str {
        match self {
            Flow::Seed => "(a) seed: GET cache.tgz | tar -xzf",
            Flow::CacheWarm => "(b) sitecache, deno cache warm",
            Flow::ServeWarm => "(c) sitecache, warmed by serving",
        }
    }
}

/// One wake-up's parts.
#[derive(Clone, Copy, Debug, Default)]
struct Wakeup {
    restore: Duration,
    first: Duration,
    last: Duration,
}

impl Wakeup {
    fn total(&self) -> Duration {
        self.restore + self.last
    }
}

fn run_std(cmd: &mut std::process::Command) -> Result<()> {
    let status = cmd.status()?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn fresh(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir.parent().context("a parent")?)?;
    Ok(dir.to_owned())
}

async fn run_ok(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().await.with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One GET on the loopback: the status, once the whole answer is read.
async fn get(port: u16, path: &str) -> Result<u16> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await?;
    let line = String::from_utf8_lossy(&answer);
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line: {:?}", line.lines().next()))?;
    Ok(status)
}

struct Bench<'a> {
    args: &'a Args,
    s3: &'a S3Server,
    bucket: String,
}

impl Bench<'_> {
    fn sitecache(&self) -> Command {
        let mut cmd = Command::new(&self.args.sitecache);
        cmd.envs(self.s3.aws_env())
            .env("SITECACHE_PATH_STYLE", "true")
            .env("RUST_LOG", "warn");
        cmd
    }

    fn url(&self, site: &Site, flow: Flow) -> String {
        let kind = match flow {
            Flow::CacheWarm => "cache",
            _ => "serve",
        };
        format!("s3://{}/{}-{kind}/", self.bucket, site.name)
    }

    fn seed_key(site: &Site) -> String {
        format!("{}/cache.tgz", site.name)
    }

    /// Where every cache is warmed and restored: one path, as in a snapshot Job
    /// (`spec.warm.cacheDir`) and its runners. Deno keys its V8 code cache of npm packages by
    /// their absolute paths, which lie in `DENO_DIR`: restored elsewhere, that cache misses.
    fn deno_dir(&self) -> PathBuf {
        self.args.dest.join("deno-dir")
    }

    /// Moves what was warmed at [`deno_dir`](Self::deno_dir) to `to`.
    fn keep(&self, to: &Path) -> Result<PathBuf> {
        let to = fresh(to)?;
        run_std(
            std::process::Command::new("mv")
                .arg(self.deno_dir())
                .arg(&to),
        )?;
        Ok(to)
    }

    /// The three caches of `site`: made once per run of the benchmark (the registry's current
    /// answers, as a warm step would get them).
    async fn prepare(&self, site: &Site) -> Result<()> {
        let work = self.args.work.join(site.name);
        // (a) and (b): deno cache main.ts.
        let cached = fresh(&self.deno_dir())?;
        run_ok(
            Command::new(&self.args.deno)
                .args(["cache", "main.ts"])
                .current_dir(&site.dir)
                .env("DENO_DIR", &cached)
                .env("NO_COLOR", "1"),
            "deno cache main.ts",
        )
        .await?;
        let cached = self.keep(&work.join("deno-cache"))?;
        // (c): served, its paths requested, stopped.
        let served = fresh(&self.deno_dir())?;
        let port = free_port()?.to_string();
        let mut cmd = self.sitecache();
        cmd.arg("warm-serve").args(["--port", &port]);
        for p in site.paths {
            cmd.args(["--path", p]);
        }
        cmd.arg("--")
            .arg(&self.args.deno)
            .arg("run")
            .args(site.flags)
            .args(["main.ts", "--port", &port])
            .current_dir(&site.dir)
            .env("DENO_DIR", &served)
            .env("NO_COLOR", "1");
        run_ok(&mut cmd, "sitecache warm-serve").await?;
        let served = self.keep(&work.join("deno-serve"))?;
        // The seed's tarball.
        let out = Command::new("tar")
            .args(["-czf", "-", "-C"])
            .arg(&cached)
            .arg(".")
            .output()
            .await?;
        if !out.status.success() {
            bail!("tar -czf failed");
        }
        self.s3
            .client()
            .put_object()
            .bucket(&self.bucket)
            .key(Self::seed_key(site))
            .body(ByteStream::from(out.stdout))
            .send()
            .await?;
        for (flow, source) in [(Flow::CacheWarm, &cached), (Flow::ServeWarm, &served)] {
            run_ok(
                self.sitecache()
                    .arg("snapshot")
                    .arg("--source")
                    .arg(source)
                    .args(["--url", &self.url(site, flow), "--generation", "1"]),
                "sitecache snapshot",
            )
            .await?;
        }
        Ok(())
    }

    async fn restore(&self, site: &Site, flow: Flow, dest: &Path) -> Result<Duration> {
        let started = Instant::now();
        match flow {
            Flow::Seed => {
                std::fs::create_dir_all(dest)?;
                let mut tar = Command::new("tar")
                    .arg("-xzf")
                    .arg("-")
                    .arg("-C")
                    .arg(dest)
                    .stdin(Stdio::piped())
                    .spawn()?;
                let mut stdin = tar.stdin.take().context("stdin")?;
                let mut body = self
                    .s3
                    .client()
                    .get_object()
                    .bucket(&self.bucket)
                    .key(Self::seed_key(site))
                    .send()
                    .await?
                    .body;
                while let Some(chunk) = body.try_next().await? {
                    stdin.write_all(&chunk).await?;
                }
                drop(stdin);
                if !tar.wait().await?.success() {
                    bail!("tar -xzf failed");
                }
            }
            _ => {
                run_ok(
                    self.sitecache()
                        .args([
                            "restore",
                            "--strict",
                            "--generation",
                            "1",
                            "--timeout",
                            "5m",
                        ])
                        .args(["--url", &self.url(site, flow), "--dest"])
                        .arg(dest),
                    "sitecache restore",
                )
                .await?
            }
        }
        Ok(started.elapsed())
    }

    /// Starts the site on `deno_dir` and times its answers to the wake-up's paths.
    async fn serve(&self, site: &Site, deno_dir: &Path) -> Result<(Duration, Duration)> {
        let port = free_port()?;
        let started = Instant::now();
        let mut deno = Command::new(&self.args.deno)
            .arg("run")
            .args(site.flags)
            .args(["main.ts", "--port", &port.to_string()])
            .current_dir(&site.dir)
            .env("DENO_DIR", deno_dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let deadline = started + Duration::from_secs(300);
        let first = loop {
            if let Some(status) = deno.try_wait()? {
                bail!("{} exited ({status}) before it answered", site.name);
            }
            match get(port, site.paths[0]).await {
                Ok(status) if status < 400 => break started.elapsed(),
                Ok(status) => bail!("{} answered {} with {status}", site.name, site.paths[0]),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => bail!("{} never answered: {e}", site.name),
            }
        };
        for path in &site.paths[1..] {
            let status = get(port, path).await?;
            if status >= 400 {
                bail!("{} answered {path} with {status}", site.name);
            }
        }
        let last = started.elapsed();
        deno.kill().await?;
        Ok((first, last))
    }

    async fn wakeup(&self, site: &Site, flow: Flow) -> Result<Wakeup> {
        let dest = fresh(&self.deno_dir())?;
        let restore = self.restore(site, flow, &dest).await?;
        let (first, last) = self.serve(site, &dest).await?;
        std::fs::remove_dir_all(&dest)?;
        Ok(Wakeup {
            restore,
            first,
            last,
        })
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Prints the medians of each flow and their ratios to the seed's; returns the ratios of the
/// serve warm to the seed's and to the cache warm's.
fn report(site: &Site, runs: usize, samples: &[(Flow, Vec<Wakeup>)]) -> (f64, f64) {
    println!(
        "\n{}: {runs} runs, medians (restore; start to first response {}; to the last, {})",
        site.name,
        site.paths[0],
        site.paths.last().unwrap()
    );
    let med = |flow: Flow, f: fn(&Wakeup) -> Duration| {
        let s = &samples.iter().find(|(g, _)| *g == flow).unwrap().1;
        median(s.iter().map(f).collect())
    };
    let seed = med(Flow::Seed, Wakeup::total);
    for flow in Flow::ALL {
        let total = med(flow, Wakeup::total);
        println!(
            "  {:<36} restore {:>9}  first {:>9}  last {:>9}  wake-up {:>9}  ratio {:.3}",
            flow.label(),
            secs(med(flow, |w| w.restore)),
            secs(med(flow, |w| w.first)),
            secs(med(flow, |w| w.last)),
            secs(total),
            total.as_secs_f64() / seed.as_secs_f64()
        );
    }
    let serve = med(Flow::ServeWarm, Wakeup::total).as_secs_f64();
    let cache = med(Flow::CacheWarm, Wakeup::total).as_secs_f64();
    (serve / seed.as_secs_f64(), serve / cache)
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

async fn run() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.work)?;
    let s3 = S3Server::start(&args.work.join("minio")).await?;
    let bucket = s3.create_bucket("wakeup").await?;
    let bench = Bench {
        args: &args,
        s3: &s3,
        bucket,
    };
    let mut verdicts = Vec::new();
    for name in &args.sites {
        let site = site(name)?;
        eprintln!("{}: warming the three caches", site.name);
        bench.prepare(&site).await?;
        let mut samples: Vec<(Flow, Vec<Wakeup>)> =
            Flow::ALL.iter().map(|&f| (f, Vec::new())).collect();
        for run in 0..args.runs {
            // The order rotates, so that no flow always follows the same one.
            for k in 0..Flow::ALL.len() {
                let flow = Flow::ALL[(run + k) % Flow::ALL.len()];
                let w = bench.wakeup(&site, flow).await?;
                eprintln!(
                    "  run {} {:<36} restore {} first {} last {}",
                    run + 1,
                    flow.label(),
                    secs(w.restore),
                    secs(w.first),
                    secs(w.last)
                );
                samples
                    .iter_mut()
                    .find(|(f, _)| *f == flow)
                    .unwrap()
                    .1
                    .push(w);
            }
        }
        verdicts.push((site.name, report(&site, args.runs, &samples)));
    }
    println!(
        "\ntargets: a wake-up warmed by serving at least 3x faster than the seed's (ratio <= 0.333), 2x faster than a deno cache warm (<= 0.5)"
    );
    for (name, (to_seed, to_cache)) in verdicts {
        let ok = |r: f64, max: f64| if r <= max { "ok" } else { "MISSED" };
        println!(
            "  {name:<10} serve/seed {to_seed:.3} {}   serve/cache-warm {to_cache:.3} {}",
            ok(to_seed, 1.0 / 3.0),
            ok(to_cache, 0.5)
        );
    }
    Ok(())
}
