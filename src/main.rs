//! The `sitecache` binary: controller, snapshot and restore agents, CRD generation, and (called
//! as `kubectl-sitecache`) the kubectl plugin.

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sitecache::agent::{restore, serve, snapshot};
use sitecache::plugin;
use sitecache::telemetry::{self, LogFormat};

/// Keeps Deno module caches of storefront sites in S3-compatible object storage.
#[derive(Parser, Debug)]
#[command(name = "sitecache", version, about, propagate_version = true)]
struct Cli {
    /// Log format (logs go to stderr).
    #[arg(
        long,
        global = true,
        env = "SITECACHE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Reconcile SiteCache objects (runs in the operator Deployment).
    Controller(Box<sitecache::controller::ControllerArgs>),
    /// Pack a directory and upload it as a new generation (runs in the snapshot Job).
    Snapshot(snapshot::SnapshotArgs),
    /// Fetch, verify and extract a generation (runs in a site runner at cold start).
    Restore(restore::RestoreArgs),
    /// Warm a cache by serving the site: start it, request paths, stop it (the snapshot Job's
    /// warm step, with spec.warm.serve).
    WarmServe(serve::WarmServeArgs),
    /// Copy this binary to PATH (the snapshot Job's init container that gives a warm step that
    /// serves the agent: the agent image has no shell or cp).
    #[command(hide = true)]
    InstallSelf {
        /// Where to put it (its directory must exist).
        path: std::path::PathBuf,
    },
    /// Print the SiteCache CustomResourceDefinition as YAML (what crds/ holds).
    Crd {
        /// Serve these versions, each with this release's schema (a release that adds a
        /// version; see docs/api-versions.md).
        #[arg(
            long,
            value_delimiter = ',',
            value_name = "VERSION,…",
            requires = "storage"
        )]
        serve: Vec<String>,
        /// Store this one of the served versions.
        #[arg(long, value_name = "VERSION", requires = "serve")]
        storage: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Called as the kubectl plugin (a link named kubectl-sitecache), or for its completion.
    let called_as = raw
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if called_as == plugin::COMPLETION_NAME {
        let words: Vec<String> = raw[1..]
            .iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect();
        return plugin::complete::kubectl(&words);
    }
    if called_as == plugin::PLUGIN_NAME {
        return plugin::main(plugin::PluginCli::parse_from(&raw));
    }
    let cli = match Cli::try_parse_from(&raw) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, &raw),
    };
    match cli.command {
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "sitecache", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Crd { serve, storage } => {
            let yaml = match storage {
                None => sitecache::api::crd_yaml(),
                Some(storage) => {
                    let served: Vec<&str> = serve.iter().map(String::as_str).collect();
                    match sitecache::api::crd_serving(&served, &storage) {
                        Ok(crd) => sitecache::api::yaml_of(&crd),
                        Err(e) => {
                            eprintln!("error: --storage: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            let mut out = std::io::stdout().lock();
            match out.write_all(yaml.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: writing the CRD to stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Snapshot(args) => {
            telemetry::init(cli.log_format, "info");
            let result = runtime().block_on(snapshot::run(args));
            match result {
                Ok(report) => {
                    println!("{}", serde_json::to_string(&report).expect("serializes"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: snapshot failed ({}): {e}", e.kind());
                    ExitCode::FAILURE
                }
            }
        }
        Command::InstallSelf { path } => match install_self(&path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot put the agent at {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        Command::WarmServe(args) => {
            telemetry::init(cli.log_format, "info");
            match runtime().block_on(serve::run(args)) {
                Ok(served) => {
                    println!("{}", serde_json::to_string(&served).expect("serializes"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: warm-serve failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Restore(args) => {
            telemetry::init(cli.log_format, "warn");
            let strict = args.strict;
            let runtime = runtime();
            let report = runtime.block_on(restore::run(args));
            let code = restore::report(&report, strict);
            // Work the deadline cut short (removing a previous or abandoned tree) must not hold
            // the wake-up: dropping the runtime would wait for it. The next restore removes what
            // is left.
            runtime.shutdown_background();
            code
        }
        Command::Controller(args) => {
            telemetry::init(cli.log_format, "info");
            match runtime().block_on(sitecache::controller::main(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: controller: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime")
}

/// Bad arguments: an error, except for an advisory restore, which must never break a wake-up.
fn usage_error(e: clap::Error, raw: &[std::ffi::OsString]) -> ExitCode {
    use clap::error::ErrorKind;
    let is_restore = raw.iter().skip(1).any(|a| a == "restore");
    let informational = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    if informational || !is_restore || restore::strict_in_args(raw) {
        e.exit();
    }
    let report = restore::RestoreReport {
        ok: false,
        reason: "invalid-arguments".to_owned(),
        generation: None,
        bytes: 0,
        files: 0,
        ms: 0,
        message: e.render().to_string().trim().to_owned(),
        runtime: None,
        runtime_mismatch: None,
        cache_dir_mismatch: None,
    };
    restore::report(&report, false)
}

/// Copies this binary to `path`, executable by anyone (the warm container's user is the site's):
/// written beside it and renamed, so that no one runs a half-written binary.
fn install_self(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe()?;
    let tmp = path.with_extension("partial");
    std::fs::copy(&exe, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, path)
}
