//! The `sitecache` binary: controller, snapshot and restore agents, and CRD generation.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    Controller,
    /// Pack a directory and upload it as a new generation (runs in the snapshot Job).
    Snapshot,
    /// Fetch, verify and extract a generation (runs in a site runner at cold start).
    Restore,
    /// Print the SiteCache CustomResourceDefinition as YAML (what crds/ holds).
    Crd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            let mut out = std::io::stdout().lock();
            match out.write_all(sitecache::api::crd_yaml().as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: writing the CRD to stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Controller | Command::Snapshot | Command::Restore => {
            telemetry::init(cli.log_format, "info");
            eprintln!(
                "error: `sitecache {:?}` is not yet implemented",
                cli.command
            );
            ExitCode::from(2)
        }
    }
}
