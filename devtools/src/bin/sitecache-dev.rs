//! `sitecache-dev`: the local dev environment (`make dev`, `make dev-down`). See
//! [`sitecache_devtools::dev`].

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sitecache_devtools::assets::Asset;
use sitecache_devtools::dev::{self, StateDir};
use sitecache_devtools::dist;

/// Runs sitecache locally: a control plane (etcd + kube-apiserver), an S3 server (MinIO), the
/// controller and a local job runner, with the example site of examples/. Dev tooling only.
#[derive(Parser, Debug)]
#[command(name = "sitecache-dev")]
struct Cli {
    /// State directory: the parts' data, logs, kubeconfig (default: <repo>/.dev).
    #[arg(long, global = true, env = "SITECACHE_DEV_DIR")]
    dir: Option<PathBuf>,

    /// The sitecache checkout (crds/, examples/).
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    repo: PathBuf,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start the environment in the background (or reuse the running one), run the example site
    /// through it and print where everything is.
    Up {
        /// The sitecache binary: the controller and the snapshot Jobs' agent (default: the
        /// `sitecache` next to this program).
        #[arg(long, env = "SITECACHE_BIN")]
        sitecache_bin: Option<PathBuf>,
    },
    /// Stop everything `up` started and remove the state directory.
    Down,
    /// Build a release into a directory (`make dist`, docs/releasing.md): the binary's archive,
    /// the image as an OCI layout archive, the chart package and its OCI layout, install.yaml,
    /// a kustomize base, the kubectl plugin with its krew manifest, the SBOM, the release notes
    /// and SHA256SUMS.
    Dist {
        /// The sitecache binary to release (linux-amd64, built from this checkout).
        #[arg(long)]
        sitecache_bin: PathBuf,
        /// The output directory (emptied first).
        #[arg(long, default_value = "dist")]
        out: PathBuf,
        /// A release proper: a clean tree and CHANGELOG.md's section for the version required.
        #[arg(long)]
        strict: bool,
    },
    /// Say whether the environment runs, and where it is.
    Status,
    /// Run the environment in the foreground until SIGTERM (what `up` starts in the background).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        sitecache_bin: PathBuf,
        /// Stop if this process (the `up` that started it) goes away before everything is ready.
        #[arg(long)]
        parent_pid: Option<u32>,
    },
}

fn main() -> ExitCode {
    // Output piped into `head` ends this program quietly, as it does any command-line tool.
    // Neither std (`-Zon-broken-pipe` is unstable) nor rustix (only its unsafe `runtime`
    // sigaction) has a safe way to restore SIGPIPE's default, so this is libc's signal(3).
    // SAFETY: called before any thread starts; SIG_DFL is a valid disposition for SIGPIPE.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let repo = std::path::absolute(&cli.repo)
        .with_context(|| format!("resolve --repo {}", cli.repo.display()))?;
    let repo = repo.canonicalize().unwrap_or(repo);
    if let Cmd::Dist {
        sitecache_bin,
        out,
        strict,
    } = cli.command
    {
        let files = dist::build(&dist::Options {
            repo,
            sitecache_bin: std::path::absolute(&sitecache_bin)?,
            out: std::path::absolute(&out)?,
            strict,
            helm: Asset::Helm.path()?,
            cargo_cyclonedx: Asset::CargoCyclonedx.path()?,
        })?;
        println!("{}:", out.display());
        for f in files {
            println!("  {f}");
        }
        println!("  {}", dist::sums::SUMS);
        return Ok(());
    }
    let dir = cli.dir.filter(|d| !d.as_os_str().is_empty());
    let dir = StateDir::new(&dir.unwrap_or_else(|| dev::default_dir(&repo)))?;
    match cli.command {
        Cmd::Up { sitecache_bin } => {
            let sitecache_bin = match sitecache_bin {
                Some(p) => p,
                None => std::env::current_exe()
                    .context("find the sitecache-dev executable")?
                    .with_file_name("sitecache"),
            };
            let sitecache_bin = std::path::absolute(&sitecache_bin)?;
            runtime()?.block_on(dev::up::run(dev::up::UpOptions {
                dir,
                repo,
                sitecache_bin,
            }))
        }
        Cmd::Dist { .. } => unreachable!("handled above"),
        Cmd::Down => dev::down::down(&dir),
        Cmd::Status => dev::down::status(&dir),
        Cmd::Serve {
            sitecache_bin,
            parent_pid,
        } => runtime()?.block_on(dev::serve::run(dev::serve::ServeOptions {
            dir,
            repo,
            sitecache_bin: std::path::absolute(&sitecache_bin)?,
            parent_pid,
        })),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")
}
