//! Shell completion: `kubectl-sitecache completion SHELL` prints a script for the plugin's own
//! name, and `kubectl_complete-sitecache` answers kubectl's plugin completion (kubectl 1.26+):
//! kubectl runs it with the words typed after `kubectl sitecache`, the last one being the word
//! to complete, and reads Cobra's `__complete` format back: one candidate per line (a tab, then
//! a description), then `:<directive>`. Commands and flags come from the plugin's own argument
//! definitions; SiteCache names and namespaces come from the cluster.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, ResourceExt};

use super::{Kube, KubeArgs, PluginCli};

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Prints the completion script of `kubectl-sitecache`.
pub fn print_script(args: &CompletionArgs) -> ExitCode {
    let mut cmd = PluginCli::command();
    clap_complete::generate(
        args.shell,
        &mut cmd,
        super::PLUGIN_NAME,
        &mut std::io::stdout(),
    );
    ExitCode::SUCCESS
}

/// Cobra's completion directives.
const NO_FILE_COMPLETION: u8 = 4;
const DIRECTORIES_ONLY: u8 = 16;

/// What the word being completed is.
#[derive(Debug, PartialEq)]
enum Want {
    Subcommand,
    Flag(String),
    SiteCache,
    Namespace,
    Directory,
    Nothing,
}

/// Answers kubectl's completion request (`args`: the words after `kubectl sitecache`).
pub fn kubectl(args: &[String]) -> ExitCode {
    let (typed, partial) = match args.split_last() {
        Some((last, before)) => (before, last.as_str()),
        None => (&[][..], ""),
    };
    let (want, kube_args) = analyse(typed, partial);
    let mut candidates: Vec<(String, String)> = Vec::new();
    let mut directive = NO_FILE_COMPLETION;
    match want {
        Want::Subcommand => {
            for sub in PluginCli::command().get_subcommands() {
                let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
                candidates.push((sub.get_name().to_owned(), first_sentence(&about)));
            }
        }
        Want::Flag(sub) => {
            let cmd = PluginCli::command();
            let sub_cmd = cmd.find_subcommand(&sub).cloned();
            let args = cmd
                .get_arguments()
                .chain(sub_cmd.iter().flat_map(|c| c.get_arguments()));
            for arg in args.filter(|a| !a.is_hide_set()) {
                if let Some(long) = arg.get_long() {
                    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                    candidates.push((format!("--{long}"), first_sentence(&help)));
                }
            }
        }
        Want::SiteCache | Want::Namespace => {
            candidates = names(&want, &kube_args)
                .into_iter()
                .map(|n| (n, String::new()))
                .collect();
        }
        Want::Directory => directive = DIRECTORIES_ONLY,
        Want::Nothing => {}
    }
    let mut out = std::io::stdout().lock();
    for (value, help) in candidates.iter().filter(|(v, _)| v.starts_with(partial)) {
        let _ = if help.is_empty() {
            writeln!(out, "{value}")
        } else {
            writeln!(out, "{value}\t{help}")
        };
    }
    let _ = writeln!(out, ":{directive}");
    ExitCode::SUCCESS
}

/// What to complete after the words `typed`, and the cluster flags among them.
fn analyse(typed: &[String], partial: &str) -> (Want, KubeArgs) {
    let cmd = PluginCli::command();
    let mut kube = KubeArgs::default();
    let mut positionals: Vec<&str> = Vec::new();
    let mut pending: Option<String> = None;
    for word in typed {
        if let Some(flag) = pending.take() {
            set(&mut kube, &flag, word);
            continue;
        }
        if let Some((flag, value)) = word.split_once('=').filter(|(f, _)| f.starts_with('-')) {
            set(&mut kube, flag, value);
        } else if word.starts_with('-') {
            if takes_value(&cmd, positionals.first().copied(), word) {
                pending = Some(word.clone());
            }
        } else {
            positionals.push(word);
        }
    }
    let sub = positionals.first().copied();
    let want = match pending.as_deref() {
        Some("-n" | "--namespace") => Want::Namespace,
        Some("--dest") => Want::Directory,
        Some(_) => Want::Nothing,
        None if partial.starts_with('-') => Want::Flag(sub.unwrap_or_default().to_owned()),
        None => match (sub, positionals.len()) {
            (None, _) => Want::Subcommand,
            (Some("snapshot" | "restore" | "generations" | "promote" | "unpin"), 1) => {
                Want::SiteCache
            }
            // Any number of names.
            (Some("suspend" | "resume"), _) => Want::SiteCache,
            (Some("completion"), 1) => Want::Nothing,
            _ => Want::Nothing,
        },
    };
    (want, kube)
}

fn set(kube: &mut KubeArgs, flag: &str, value: &str) {
    match flag {
        "-n" | "--namespace" => kube.namespace = Some(value.to_owned()),
        "--context" => kube.context = Some(value.to_owned()),
        "--kubeconfig" => kube.kubeconfig = Some(value.into()),
        _ => {}
    }
}

/// Whether `flag` of the subcommand `sub` (or a global one) takes a value.
fn takes_value(cmd: &clap::Command, sub: Option<&str>, flag: &str) -> bool {
    let sub_cmd = sub.and_then(|s| cmd.find_subcommand(s));
    cmd.get_arguments()
        .chain(sub_cmd.into_iter().flat_map(|c| c.get_arguments()))
        .find(|a| {
            a.get_long().is_some_and(|l| flag == format!("--{l}"))
                || a.get_short().is_some_and(|s| flag == format!("-{s}"))
        })
        .is_some_and(|a| a.get_action().takes_values())
}

fn first_sentence(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.split(". ")
        .next()
        .unwrap_or(line)
        .trim_end_matches('.')
        .to_owned()
}

/// Names from the cluster; none when it cannot be reached (completion must never hang on
/// errors or print them into the command line).
fn names(want: &Want, kube_args: &KubeArgs) -> Vec<String> {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    runtime.block_on(async {
        let lookup = async {
            let kube = Kube::connect(kube_args).await?;
            let names = if *want == Want::Namespace {
                let api: Api<Namespace> = Api::all(kube.client.clone());
                api.list_metadata(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .map(|n| n.name_any())
                    .collect()
            } else {
                kube.sitecaches()
                    .list_metadata(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .map(|n| n.name_any())
                    .collect()
            };
            anyhow::Ok(names)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), lookup).await {
            Ok(Ok(names)) => names,
            _ => Vec::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn knows_what_each_position_wants() {
        let want = |typed: &str, partial: &str| analyse(&words(typed), partial).0;
        assert_eq!(want("", ""), Want::Subcommand);
        assert_eq!(want("", "sn"), Want::Subcommand);
        assert_eq!(want("snapshot", ""), Want::SiteCache);
        assert_eq!(want("suspend shop", ""), Want::SiteCache);
        assert_eq!(want("promote", ""), Want::SiteCache);
        assert_eq!(want("-n shop generations", "w"), Want::SiteCache);
        assert_eq!(want("restore -n", ""), Want::Namespace);
        assert_eq!(want("restore web --dest", ""), Want::Directory);
        assert_eq!(want("restore web", ""), Want::Nothing);
        assert_eq!(want("snapshot web", "--w"), Want::Flag("snapshot".into()));
        assert_eq!(want("status --top", ""), Want::Nothing);
        // A flag without a value does not swallow the next word.
        assert_eq!(want("snapshot --wait", ""), Want::SiteCache);
    }

    #[test]
    fn reads_the_cluster_flags_typed_so_far() {
        let (_, kube) = analyse(&words("--context=dev -n shop generations"), "");
        assert_eq!(kube.context.as_deref(), Some("dev"));
        assert_eq!(kube.namespace.as_deref(), Some("shop"));
    }
}
