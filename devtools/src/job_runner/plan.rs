//! A Job's pod template turned into processes: the attempt's emptyDir directories, each
//! container's program, arguments and environment, with mount paths and termination-message
//! paths rewritten to host paths (see the [module documentation](super) for the rules).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Container;

use super::JobRunnerConfig;

/// The Secrets a pod's env refers to, by name, with their data (`None`: not found).
pub(super) type Secrets = HashMap<String, Option<BTreeMap<String, String>>>;

/// The names of the Secrets that `job`'s containers take env values from.
pub(super) fn secret_names(job: &Job) -> BTreeSet<String> {
    let Some(pod) = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return BTreeSet::new();
    };
    pod.init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .flat_map(|c| c.env.iter().flatten())
        .filter_map(|e| Some(e.value_from.as_ref()?.secret_key_ref.as_ref()?.name.clone()))
        .collect()
}

/// A container made ready to run as a process.
#[derive(Clone, Debug)]
pub(super) struct Prepared {
    pub(super) container: String,
    pub(super) program: String,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) working_dir: Option<String>,
    pub(super) log: PathBuf,
    /// The host file that stands for the container's `terminationMessagePath`.
    pub(super) termination: PathBuf,
    /// `terminationMessagePolicy: FallbackToLogsOnError`.
    pub(super) fallback_to_logs: bool,
}

/// An attempt's processes, in order.
pub(super) struct Plan {
    pub(super) init: Vec<Prepared>,
    pub(super) main: Vec<Prepared>,
}

/// Why an attempt cannot run, and the log to say it in.
pub(super) struct PlanError {
    pub(super) log: PathBuf,
    pub(super) message: String,
}

/// Checks the pod template, creates the attempt's emptyDir directories and prepares each
/// container.
pub(super) fn plan_pod(
    job: &Job,
    config: &JobRunnerConfig,
    secrets: &Secrets,
    dir: &Path,
    k: i32,
    volumes_dir: &Path,
) -> Result<Plan, PlanError> {
    let pod_log = dir.join(format!("attempt-{k}-pod.log"));
    let pod_error = |message: String| PlanError {
        log: pod_log.clone(),
        message,
    };
    let Some(spec) = job.spec.as_ref() else {
        return Err(pod_error("the Job has no spec".into()));
    };
    let completions = spec.completions.unwrap_or(1);
    let parallelism = spec.parallelism.unwrap_or(1);
    if completions != 1 || (spec.completions.is_none() && parallelism > 1) {
        return Err(pod_error(format!(
            "completions {:?} and parallelism {:?}: the local job runner runs Jobs of one \
             completion and one pod only",
            spec.completions, spec.parallelism
        )));
    }
    if spec.completion_mode.as_deref() == Some("Indexed") {
        return Err(pod_error(
            "Indexed completion mode is not supported by the local job runner".into(),
        ));
    }
    let Some(pod) = spec.template.spec.as_ref() else {
        return Err(pod_error("the Job's pod template has no spec".into()));
    };

    let _ = std::fs::remove_dir_all(volumes_dir);
    let mut volumes = HashMap::new();
    for v in pod.volumes.iter().flatten() {
        if v.empty_dir.is_none() {
            return Err(pod_error(format!(
                "volume {}: only emptyDir volumes are supported by the local job runner",
                v.name
            )));
        }
        let host = volumes_dir.join(&v.name);
        std::fs::create_dir_all(&host).map_err(|e| {
            pod_error(format!(
                "volume {}: cannot create {}: {e}",
                v.name,
                host.display()
            ))
        })?;
        volumes.insert(v.name.clone(), host);
    }

    let prepare_all = |containers: &[Container], init: bool| -> Result<Vec<Prepared>, PlanError> {
        containers
            .iter()
            .map(|c| {
                let log = dir.join(format!("attempt-{k}-{}.log", c.name));
                if init && c.restart_policy.as_deref() == Some("Always") {
                    return Err(PlanError {
                        log,
                        message: format!(
                            "init container {}: sidecar containers (restartPolicy: Always) are not \
                             supported by the local job runner",
                            c.name
                        ),
                    });
                }
                prepare(c, config, secrets, &volumes, log.clone()).map_err(|message| PlanError {
                    log,
                    message: format!("container {}: {message}", c.name),
                })
            })
            .collect()
    };
    let init = prepare_all(pod.init_containers.as_deref().unwrap_or_default(), true)?;
    let main = prepare_all(&pod.containers, false)?;
    if main.is_empty() {
        return Err(pod_error("the pod template has no containers".into()));
    }
    Ok(Plan { init, main })
}

/// Turns a container into a process: program, arguments, environment, working directory.
fn prepare(
    c: &Container,
    config: &JobRunnerConfig,
    secrets: &Secrets,
    volumes: &HashMap<String, PathBuf>,
    log: PathBuf,
) -> Result<Prepared, String> {
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(host) = volumes.get(&m.name) else {
            return Err(format!("volume mount {}: no such emptyDir volume", m.name));
        };
        if m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(format!(
                "volume mount {}: subPathExpr is not supported",
                m.name
            ));
        }
        let mut host = host.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            let sub = Path::new(sub);
            if !sub.components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(format!(
                    "volume mount {}: bad subPath {}",
                    m.name,
                    sub.display()
                ));
            }
            host = host.join(sub);
            std::fs::create_dir_all(&host).map_err(|e| {
                format!(
                    "volume mount {}: cannot create {}: {e}",
                    m.name,
                    host.display()
                )
            })?;
        }
        let path = m.mount_path.trim_end_matches('/');
        if !path.starts_with('/') {
            return Err(format!(
                "volume mount {}: mount path {:?} cannot be simulated (it must be absolute and not /)",
                m.name, m.mount_path
            ));
        }
        mounts.push((path.to_owned(), host.to_string_lossy().into_owned()));
    }
    // The termination message file, an empty file of the attempt's own, as kubelet mounts one.
    let termination = log.with_extension("termination-log");
    std::fs::write(&termination, "")
        .map_err(|e| format!("cannot create {}: {e}", termination.display()))?;
    let message_path = c
        .termination_message_path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("/dev/termination-log");
    mounts.push((
        message_path.to_owned(),
        termination.to_string_lossy().into_owned(),
    ));
    // Longest first, so that a mount inside another mount wins.
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));

    if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err("envFrom is not supported by the local job runner".into());
    }
    let mut vars: HashMap<String, String> = HashMap::new();
    let mut env: Vec<(String, String)> = Vec::new();
    for (name, value) in &config.env {
        vars.insert(name.clone(), value.clone());
        env.push((name.clone(), value.clone()));
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => expand(e.value.as_deref().unwrap_or_default(), &vars),
            Some(from) => {
                let Some(r) = &from.secret_key_ref else {
                    return Err(format!(
                        "env var {} uses a valueFrom other than secretKeyRef, which the local \
                         job runner does not support",
                        e.name
                    ));
                };
                match secrets.get(&r.name).and_then(|s| s.as_ref()) {
                    Some(data) => match data.get(&r.key) {
                        Some(v) => v.clone(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(format!(
                                "env var {}: secret {:?} has no key {:?}",
                                e.name, r.name, r.key
                            ));
                        }
                    },
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(format!("env var {}: secret {:?} not found", e.name, r.name));
                    }
                }
            }
        };
        vars.insert(e.name.clone(), value.clone());
        env.push((e.name.clone(), value));
    }
    let env = env
        .into_iter()
        .map(|(name, value)| (name, rewrite_mounts(&value, &mounts)))
        .collect();
    let rewrite = |s: &String| rewrite_mounts(&expand(s, &vars), &mounts);
    let command: Vec<String> = c.command.iter().flatten().map(rewrite).collect();
    let args: Vec<String> = c.args.iter().flatten().map(rewrite).collect();

    let image = c.image.as_deref().unwrap_or_default();
    let (program, args) = match config.images.get(image) {
        Some(binary) => {
            let mut all: Vec<String> = command.into_iter().skip(1).collect();
            all.extend(args);
            (binary.to_string_lossy().into_owned(), all)
        }
        None => {
            let mut all = command.into_iter();
            let Some(program) = all.next() else {
                return Err(format!(
                    "no command, and image {image:?} is not mapped to a local binary \
                     (JobRunnerConfig::images): the image's entrypoint is unknown here"
                ));
            };
            let mut rest: Vec<String> = all.collect();
            rest.extend(args);
            (program, rest)
        }
    };
    Ok(Prepared {
        container: c.name.clone(),
        program,
        args,
        env,
        working_dir: c
            .working_dir
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(|d| rewrite_mounts(d, &mounts)),
        log,
        termination,
        fallback_to_logs: c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"),
    })
}

/// Expands `$(NAME)` references to variables of `vars` as kubelet does: `$$` is a `$`, a reference
/// to an unknown variable and any other `$` stay as they are.
fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Replaces each mount path (`(path, host)`, longest first) occurring as a whole path in `s` by
/// its host directory (see the module documentation for what "whole" means).
fn rewrite_mounts(s: &str, mounts: &[(String, String)]) -> String {
    if mounts.is_empty() {
        return s.to_owned();
    }
    let starts_path = |prev: Option<char>| match prev {
        None => true,
        Some(c) => c.is_whitespace() || "'\"=:<>(;|&,".contains(c),
    };
    let ends_path = |next: Option<char>| match next {
        None => true,
        Some(c) => c == '/' || !(c.is_alphanumeric() || "._-".contains(c)),
    };
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut prev: Option<char> = None;
    let mut skip_to = 0;
    for (i, ch) in s.char_indices() {
        if i < skip_to {
            prev = Some(ch);
            continue;
        }
        if ch == '/' && starts_path(prev) {
            let found = mounts.iter().find(|(path, _)| {
                s[i..].starts_with(path.as_str()) && ends_path(s[i + path.len()..].chars().next())
            });
            if let Some((path, host)) = found {
                out.push_str(&s[copied..i]);
                out.push_str(host);
                copied = i + path.len();
                skip_to = copied;
            }
        }
        prev = Some(ch);
    }
    out.push_str(&s[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubelet() {
        let vars = HashMap::from([("A".to_owned(), "x".to_owned())]);
        assert_eq!(expand("$(A)/y", &vars), "x/y");
        assert_eq!(expand("$(B)/y", &vars), "$(B)/y");
        assert_eq!(expand("$$(A) $a $", &vars), "$(A) $a $");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn mount_paths_are_rewritten_as_whole_paths_only() {
        let mounts = vec![
            ("/cache/inner".to_owned(), "/h/inner".to_owned()),
            ("/cache".to_owned(), "/h/cache".to_owned()),
        ];
        let r = |s: &str| rewrite_mounts(s, &mounts);
        assert_eq!(r("/cache"), "/h/cache");
        assert_eq!(r("/cache/x"), "/h/cache/x");
        assert_eq!(r("/cache/inner/y"), "/h/inner/y");
        assert_eq!(r("--source=/cache/x"), "--source=/h/cache/x");
        assert_eq!(r("PATH=/bin:/cache/bin"), "PATH=/bin:/h/cache/bin");
        assert_eq!(r("echo hi > /cache/x"), "echo hi > /h/cache/x");
        assert_eq!(
            r("cat '/cache/x' \"/cache\""),
            "cat '/h/cache/x' \"/h/cache\""
        );
        assert_eq!(r("/var/cache/x"), "/var/cache/x");
        assert_eq!(
            r("/cache-old /cachex /cache.d"),
            "/cache-old /cachex /cache.d"
        );
        assert_eq!(r("x/cache"), "x/cache");
        assert_eq!(r("é /cache"), "é /h/cache");
    }
}
