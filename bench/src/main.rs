//! `make bench`: sitecache's snapshot and restore, side by side with what the older runner did
//! and with the physical limit of extraction, on a real DENO_DIR, against a local MinIO.
//!
//! - baseline snapshot: `tar -czf` of the directory buffered whole in memory, then one PUT;
//! - baseline restore: one GET piped into `tar -xzf`;
//! - limit: extracting the uncompressed tar from page cache, the faster of one `tar -xf` and the
//!   tree split in two tars extracted by two `tar -xf` at once.
//!
//! Commands alternate run by run (the machine is noisy); each extraction goes into a fresh empty
//! directory; medians are reported with ratios against the baselines measured in the same run.

#![deny(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_s3::primitives::ByteStream;
use sitecache_devtools::S3Server;
use sitecache_devtools::assets::Asset;
use tokio::io::AsyncWriteExt;

const FIXTURE_VERSION: &str = "v1";

struct Args {
    runs: usize,
    sitecache: PathBuf,
    work: PathBuf,
    /// Where every command extracts (a fresh empty directory each run).
    dest: PathBuf,
    big: bool,
}

const USAGE: &str = "usage: sitecache-bench [--runs N] [--sitecache PATH] [--work DIR] \
[--dest-dir DIR] [--no-big]

Measures sitecache snapshot and restore against the older runner's tar + gzip and against
extracting the uncompressed tar (see bench/README.md).

  --runs N          runs per command; medians are reported (default 5)
  --sitecache PATH  the sitecache binary (default target/release/sitecache)
  --work DIR        fixtures, MinIO data and archives (default target/bench)
  --dest-dir DIR    where extractions go (default /dev/shm/sitecache-bench when there is one)
  --no-big          skip the snapshot of the 1.1 GiB tree";

fn parse_args() -> Result<Args> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = Args {
        runs: 5,
        sitecache: root.join("target/release/sitecache"),
        work: root.join("target/bench"),
        // tmpfs when there is one: on a virtual disk, writeback of earlier runs swings a run
        // from 1 s to 30 s and buries what is measured. --dest-dir measures on a disk.
        dest: if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm/sitecache-bench")
        } else {
            root.join("target/bench/dest")
        },
        big: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                let n = it.next().context("--runs needs a number")?;
                args.runs = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("--runs {n}: not a number of runs"))?;
            }
            "--sitecache" => args.sitecache = it.next().context("--sitecache PATH")?.into(),
            "--work" => args.work = it.next().context("--work DIR")?.into(),
            "--dest-dir" => args.dest = it.next().context("--dest-dir DIR")?.into(),
            "--no-big" => args.big = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if !args.sitecache.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release`",
            args.sitecache.display()
        );
    }
    Ok(args)
}

/// A wall time, the peak RSS of the measured child process if it was one, and the CPU time
/// (user + system) of the measured processes and of MinIO meanwhile.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: Duration,
    max_rss_kib: Option<u64>,
    cpu: Duration,
    server_cpu: Duration,
}

/// CPU time (user + system) a process has used so far, from /proc/<pid>/stat.
fn process_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_micros(ticks * 1_000_000 / hz)
}

fn rusage_cpu(usage: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs a command to completion, measuring wall time and its peak RSS (wait4).
fn measure(cmd: &mut Command) -> Result<Sample> {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let (status, usage) = wait4(child.id())?;
    let wall = start.elapsed();
    if status != 0 {
        bail!("{cmd:?} failed with status {status}");
    }
    Ok(Sample {
        wall,
        max_rss_kib: Some(usage.ru_maxrss as u64),
        cpu: rusage_cpu(&usage),
        server_cpu: Duration::ZERO,
    })
}

/// Waits for the child `pid` and returns its wait status and its resource usage: wait4(2) is
/// the one call that gives a single child's peak RSS and CPU time while other children run.
/// Neither std (`Child::wait` discards the rusage) nor rustix (`waitpid` passes no rusage; no
/// `getrusage`, and `RUSAGE_CHILDREN` would mix the children) offers it, so this is libc's.
#[allow(unsafe_code)]
fn wait4(pid: u32) -> Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: `rusage` is plain integers and `timeval`s, for which all zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both out-pointers are to live, writable locals of the right types; `pid` is a
    // child of this process that nothing else waits for (its `Child` is never waited on), so
    // its pid cannot have been reused.
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok((status, usage))
}

fn fresh(work: &Path, name: &str) -> Result<PathBuf> {
    let p = work.join(name);
    if p.exists() {
        std::fs::remove_dir_all(&p)?;
    }
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// The Deno fixture, built once per fixture version and cached.
fn deno_fixture() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME")?;
    let dir = PathBuf::from(home).join(format!(
        ".cache/sitecache/bench/deno-fixture-{FIXTURE_VERSION}"
    ));
    let deno_dir = dir.join("deno-dir");
    if dir.join("complete").exists() {
        return Ok(deno_dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("site"))?;
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixture/main.ts"),
        dir.join("site/main.ts"),
    )?;
    eprintln!("building the fixture with deno cache (once)…");
    let status = Command::new(Asset::Deno.path()?)
        .args(["cache", "main.ts"])
        .current_dir(dir.join("site"))
        .env("DENO_DIR", &deno_dir)
        .env("NO_COLOR", "1")
        .status()?;
    if !status.success() {
        bail!("deno cache failed");
    }
    std::fs::write(dir.join("complete"), "")?;
    Ok(deno_dir)
}

/// A ~1 GiB tree: the fixture copied (not linked) several times.
fn big_fixture(work: &Path, base: &Path) -> Result<PathBuf> {
    let dir = work.join("big-fixture");
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for i in 0..5 {
        let status = Command::new("cp")
            .args([
                "-a",
                base.to_str().unwrap(),
                dir.join(format!("copy-{i}")).to_str().unwrap(),
            ])
            .status()?;
        if !status.success() {
            bail!("cp failed");
        }
    }
    std::fs::write(dir.join(".complete"), "")?;
    Ok(dir)
}

fn tree_stats(root: &Path) -> Result<(u64, u64)> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -type f | wc -l; du -sb . | cut -f1")
        .current_dir(root)
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines();
    let files = lines.next().context("find")?.trim().parse()?;
    let bytes = lines.next().context("du")?.trim().parse()?;
    Ok((files, bytes))
}

/// Tars for the limit: the whole tree, and its top-level entries in two halves of similar size.
fn limit_tars(work: &Path, fixture: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let full = work.join("limit-full.tar");
    let (a, b) = (work.join("limit-half-a.tar"), work.join("limit-half-b.tar"));
    run_ok(Command::new("tar").args([
        "-cf",
        full.to_str().unwrap(),
        "-C",
        fixture.to_str().unwrap(),
        ".",
    ]))?;
    // Split below npm/registry.npmjs.org (where the packages are) by size, greedily.
    let mut entries: Vec<(u64, PathBuf)> = Vec::new();
    let reg = Path::new("npm/registry.npmjs.org");
    for e in std::fs::read_dir(fixture)? {
        let rel = PathBuf::from(e?.file_name());
        if rel != Path::new("npm") {
            entries.push((du(&fixture.join(&rel))?, rel));
        }
    }
    for e in std::fs::read_dir(fixture.join(reg))? {
        let rel = reg.join(e?.file_name());
        entries.push((du(&fixture.join(&rel))?, rel));
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    let (mut sa, mut sb, mut la, mut lb) = (0u64, 0u64, Vec::new(), Vec::new());
    for (size, rel) in entries {
        if sa <= sb {
            sa += size;
            la.push(rel);
        } else {
            sb += size;
            lb.push(rel);
        }
    }
    for (tar, list) in [(&a, la), (&b, lb)] {
        let mut cmd = Command::new("tar");
        cmd.args([
            "-cf",
            tar.to_str().unwrap(),
            "-C",
            fixture.to_str().unwrap(),
        ]);
        cmd.args(list.iter().map(|p| p.to_str().unwrap()));
        run_ok(&mut cmd)?;
    }
    Ok((full, a, b))
}

fn du(p: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-sb", p.to_str().unwrap()])
        .output()?;
    Ok(String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .context("du")?
        .parse()?)
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let status = cmd.status()?;
    if !status.success() {
        bail!("{cmd:?} failed");
    }
    Ok(())
}

fn warm_page_cache(paths: &[&Path]) {
    for p in paths {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find '{}' -type f -exec cat {{}} + > /dev/null",
                p.display()
            ))
            .status();
    }
}

struct Bench<'a> {
    args: &'a Args,
    s3: &'a S3Server,
    bucket: String,
    fixture: PathBuf,
}

impl Bench<'_> {
    fn sitecache(&self) -> Command {
        let mut cmd = Command::new(&self.args.sitecache);
        cmd.envs(self.s3.aws_env())
            .env("SITECACHE_PATH_STYLE", "true")
            .env("RUST_LOG", "warn");
        cmd
    }

    fn url(&self, run: usize) -> String {
        format!("s3://{}/bench-{run}/", self.bucket)
    }

    fn baseline_key(&self, run: usize) -> String {
        format!("baseline-{run}/cache.tgz")
    }

    async fn baseline_snapshot(&self, run: usize) -> Result<Sample> {
        let start = Instant::now();
        let out = Command::new("tar")
            .args(["-czf", "-", "-C", self.fixture.to_str().unwrap(), "."])
            .output()?;
        if !out.status.success() {
            bail!("tar -czf failed");
        }
        self.s3
            .client()
            .put_object()
            .bucket(&self.bucket)
            .key(self.baseline_key(run))
            .body(ByteStream::from(out.stdout))
            .send()
            .await?;
        Ok(Sample {
            wall: start.elapsed(),
            max_rss_kib: None,
            cpu: Duration::ZERO,
            server_cpu: Duration::ZERO,
        })
    }

    async fn baseline_restore(&self, run: usize) -> Result<Sample> {
        let dest = fresh(&self.args.dest, "baseline")?;
        let start = Instant::now();
        let mut tar = tokio::process::Command::new("tar")
            .args(["-xzf", "-", "-C", dest.to_str().unwrap()])
            .stdin(Stdio::piped())
            .spawn()?;
        let mut stdin = tar.stdin.take().context("stdin")?;
        let mut body = self
            .s3
            .client()
            .get_object()
            .bucket(&self.bucket)
            .key(self.baseline_key(run))
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
        Ok(Sample {
            wall: start.elapsed(),
            max_rss_kib: None,
            cpu: Duration::ZERO,
            server_cpu: Duration::ZERO,
        })
    }

    fn snapshot(&self, run: usize) -> Result<Sample> {
        measure(self.sitecache().args([
            "snapshot",
            "--source",
            self.fixture.to_str().unwrap(),
            "--url",
            &self.url(run),
            "--generation",
            "1",
        ]))
    }

    fn restore(&self, run: usize) -> Result<Sample> {
        let dest = self.args.dest.join("sitecache");
        if dest.exists() {
            std::fs::remove_dir_all(&dest)?;
        }
        let server = self.s3.process().map(|p| p.pid());
        let before = server.map(process_cpu).unwrap_or_default();
        let mut sample = measure(self.sitecache().args([
            "restore",
            "--url",
            &self.url(run),
            "--generation",
            "1",
            "--dest",
            dest.to_str().unwrap(),
            "--strict",
            "--timeout",
            "10m",
        ]))?;
        sample.server_cpu = server.map(process_cpu).unwrap_or_default() - before;
        Ok(sample)
    }

    fn limit_one(&self, full: &Path) -> Result<Sample> {
        let dest = fresh(&self.args.dest, "limit")?;
        measure(Command::new("tar").args([
            "-xf",
            full.to_str().unwrap(),
            "-C",
            dest.to_str().unwrap(),
        ]))
    }

    fn limit_two(&self, a: &Path, b: &Path) -> Result<Sample> {
        let dest = fresh(&self.args.dest, "limit2")?;
        // The halves split npm/registry.npmjs.org between them: make the shared parent first,
        // or the two tars race to create it.
        std::fs::create_dir_all(dest.join("npm/registry.npmjs.org"))?;
        let start = Instant::now();
        let ca = Command::new("tar")
            .args(["-xf", a.to_str().unwrap(), "-C", dest.to_str().unwrap()])
            .spawn()?;
        let cb = Command::new("tar")
            .args(["-xf", b.to_str().unwrap(), "-C", dest.to_str().unwrap()])
            .spawn()?;
        let (sa, ua) = wait4(ca.id())?;
        let (sb, ub) = wait4(cb.id())?;
        if sa != 0 || sb != 0 {
            bail!("tar -xf failed");
        }
        Ok(Sample {
            wall: start.elapsed(),
            max_rss_kib: None,
            cpu: rusage_cpu(&ua) + rusage_cpu(&ub),
            server_cpu: Duration::ZERO,
        })
    }
}

/// CPU seconds the extractions used, and what they imply on this machine's cores: a restore
/// cannot finish before its CPU work and the S3 server's, spread over every core, is done.
fn cpu_report(cpus: &BTreeMap<&str, Vec<(Duration, Duration)>>, limit: f64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let med = |name: &str, server: bool| {
        median(
            cpus.get(name)
                .map(|v| v.iter().map(|&(c, s)| if server { s } else { c }).collect())
                .unwrap_or_else(|| vec![Duration::ZERO]),
        )
        .as_secs_f64()
    };
    println!("\nCPU, user + system (medians)");
    for name in ["limit: 1 tar -xf", "limit: 2 tar -xf", "sitecache snapshot"] {
        println!("  {name:<22} {:>8.3} s", med(name, false));
    }
    let (restore, server) = (
        med("sitecache restore", false),
        med("sitecache restore", true),
    );
    println!("  sitecache restore      {restore:>8.3} s, and MinIO serving it {server:.3} s");
    let floor = (restore + server) / cores;
    println!(
        "  restore's CPU floor on {cores} cores: {floor:.3} s = {:.2} x the limit",
        floor / limit
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
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
    std::fs::create_dir_all(&args.dest)?;
    let fixture = deno_fixture()?;
    let (files, bytes) = tree_stats(&fixture)?;
    eprintln!(
        "fixture: {} ({files} files, {:.1} MiB)",
        fixture.display(),
        bytes as f64 / 1048576.0
    );
    eprintln!("extracting into {}", args.dest.display());
    let s3 = S3Server::start(&args.work.join("minio")).await?;
    let bucket = s3.create_bucket("bench").await?;
    let (full, half_a, half_b) = limit_tars(&args.work, &fixture)?;
    warm_page_cache(&[&fixture, &full, &half_a, &half_b]);
    let bench = Bench {
        args: &args,
        s3: &s3,
        bucket,
        fixture: fixture.clone(),
    };

    let names = [
        "baseline snapshot",
        "sitecache snapshot",
        "baseline restore",
        "sitecache restore",
        "limit: 1 tar -xf",
        "limit: 2 tar -xf",
    ];
    let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut cpus: BTreeMap<&str, Vec<(Duration, Duration)>> = BTreeMap::new();
    let mut snapshot_rss = 0u64;
    let mut restore_rss = 0u64;
    for run in 0..args.runs {
        // Rotate the order run by run.
        for k in 0..names.len() {
            let which = (k + run) % names.len();
            sync();
            let sample = match which {
                0 => bench.baseline_snapshot(run).await?,
                1 => {
                    let s = bench.snapshot(run)?;
                    snapshot_rss = snapshot_rss.max(s.max_rss_kib.unwrap_or(0));
                    s
                }
                // Restores need this run's uploads: run them after, in the same rotation slot.
                2 | 3 => continue,
                4 => bench.limit_one(&full)?,
                _ => bench.limit_two(&half_a, &half_b)?,
            };
            times.entry(names[which]).or_default().push(sample.wall);
            cpus.entry(names[which])
                .or_default()
                .push((sample.cpu, sample.server_cpu));
        }
        for k in 0..2 {
            let which = 2 + (k + run) % 2;
            sync();
            let sample = if which == 2 {
                bench.baseline_restore(run).await?
            } else {
                let s = bench.restore(run)?;
                restore_rss = restore_rss.max(s.max_rss_kib.unwrap_or(0));
                s
            };
            times.entry(names[which]).or_default().push(sample.wall);
            cpus.entry(names[which])
                .or_default()
                .push((sample.cpu, sample.server_cpu));
        }
        eprintln!("run {}/{} done", run + 1, args.runs);
    }
    let med: BTreeMap<&str, Duration> = times.into_iter().map(|(k, v)| (k, median(v))).collect();
    let s = |k: &str| med[k].as_secs_f64();
    println!(
        "\nfixture: {files} files, {:.1} MiB; {} runs, medians; extracting into {}",
        bytes as f64 / 1048576.0,
        args.runs,
        args.dest.display()
    );
    for name in names {
        println!("  {name:<22} {:>8.3} s", s(name));
    }
    let limit = s("limit: 1 tar -xf").min(s("limit: 2 tar -xf"));
    let r1 = s("sitecache restore") / s("baseline restore");
    let r2 = s("sitecache restore") / limit;
    let r3 = s("sitecache snapshot") / s("baseline snapshot");
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!("\nratios (target in brackets)");
    println!(
        "  restore / baseline restore   {r1:.3}  [<= 0.50] {}",
        verdict(r1 <= 0.5)
    );
    println!(
        "  restore / limit              {r2:.3}  [<= 1.30] {}",
        verdict(r2 <= 1.3)
    );
    println!(
        "  snapshot / baseline snapshot {r3:.3}  [<= 0.25] {}",
        verdict(r3 <= 0.25)
    );
    println!(
        "  snapshot peak RSS            {:.1} MiB  [<= 128] {}",
        snapshot_rss as f64 / 1024.0,
        verdict(snapshot_rss <= 128 * 1024)
    );
    println!(
        "  restore peak RSS             {:.1} MiB",
        restore_rss as f64 / 1024.0
    );
    cpu_report(&cpus, limit);

    if args.big {
        let big = big_fixture(&args.work, &fixture)?;
        let (bfiles, bbytes) = tree_stats(&big)?;
        let bench = Bench {
            fixture: big,
            ..bench
        };
        let sample = bench.snapshot(10_000)?;
        let rss = sample.max_rss_kib.unwrap_or(0);
        println!(
            "\n1 GiB tree ({bfiles} files, {:.1} MiB): snapshot {:.2} s, peak RSS {:.1} MiB  [<= 128] {}",
            bbytes as f64 / 1048576.0,
            sample.wall.as_secs_f64(),
            rss as f64 / 1024.0,
            verdict(rss <= 128 * 1024)
        );
    }
    Ok(())
}
