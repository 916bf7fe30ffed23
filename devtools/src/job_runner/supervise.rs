//! The watch of Jobs: a task per Job to run ([`super::job`]), told of the Job's updates and of
//! its deletion.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::JobRunnerConfig;
use super::job::run_job;

/// What the task running a Job learns from the watch.
#[derive(Clone)]
pub(super) enum Update {
    /// The Job's latest version.
    Live(Arc<Job>),
    /// The Job was deleted (or is being deleted), or the runner stops.
    Gone,
}

/// A Job being run (or that was run) by a task.
pub(super) struct Entry {
    updates: watch::Sender<Update>,
    task: JoinHandle<()>,
}

pub(super) struct Shared {
    pub(super) client: Client,
    pub(super) config: Arc<JobRunnerConfig>,
}

/// The watch loop: starts a task per Job to run, forwards it the Job's updates, stops it when the
/// Job goes away.
pub(super) async fn supervise(
    client: Client,
    config: Arc<JobRunnerConfig>,
    mut stop: oneshot::Receiver<()>,
) {
    let api: Api<Job> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut watch_config = watcher::Config::default();
    if !config.label_selector.is_empty() {
        watch_config = watch_config.labels(&config.label_selector);
    }
    let mut events = std::pin::pin!(watcher(api, watch_config));
    let shared = Arc::new(Shared {
        client,
        config: config.clone(),
    });
    // By uid: a Job deleted and created again under the same name is another Job.
    let mut jobs: HashMap<String, Entry> = HashMap::new();
    let mut retired: Vec<JoinHandle<()>> = Vec::new();
    // Uids seen since the watch (re)started with a full list.
    let mut listed: Option<HashSet<String>> = None;
    tracing::info!(
        namespace = config.namespace.as_deref().unwrap_or("<all>"),
        selector = %config.label_selector,
        work_dir = %config.work_dir.display(),
        "job runner started"
    );
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = events.next() => event,
        };
        match event {
            None => {
                tracing::error!("the Job watch ended");
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching Jobs failed; retrying");
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Some(Ok(watcher::Event::Init)) => listed = Some(HashSet::new()),
            Some(Ok(watcher::Event::InitApply(job))) => {
                if let (Some(listed), Some(uid)) = (listed.as_mut(), job.uid()) {
                    listed.insert(uid);
                }
                observe(&shared, &mut jobs, job);
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if let Some(listed) = listed.take() {
                    let vanished: Vec<String> = jobs
                        .keys()
                        .filter(|uid| !listed.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in vanished {
                        if let Some(entry) = jobs.remove(&uid) {
                            let _ = entry.updates.send(Update::Gone);
                            retired.push(entry.task);
                        }
                    }
                }
            }
            Some(Ok(watcher::Event::Apply(job))) => observe(&shared, &mut jobs, job),
            Some(Ok(watcher::Event::Delete(job))) => {
                if let Some(entry) = job.uid().and_then(|uid| jobs.remove(&uid)) {
                    let _ = entry.updates.send(Update::Gone);
                    retired.push(entry.task);
                }
            }
        }
        retired.retain(|task| !task.is_finished());
    }
    for (_, entry) in jobs.drain() {
        let _ = entry.updates.send(Update::Gone);
        retired.push(entry.task);
    }
    for task in retired {
        let _ = task.await;
    }
    tracing::info!("job runner stopped");
}

/// Handles a Job from the watch: forwards it to its task, or starts one if it is to be run.
pub(super) fn observe(shared: &Arc<Shared>, jobs: &mut HashMap<String, Entry>, job: Job) {
    let Some(uid) = job.uid() else {
        return;
    };
    let deleting = job.metadata.deletion_timestamp.is_some();
    if let Some(entry) = jobs.get(&uid) {
        // A finished task has no receiver left; the entry stays so the Job is not run again.
        let _ = entry.updates.send(if deleting {
            Update::Gone
        } else {
            Update::Live(Arc::new(job))
        });
        return;
    }
    let spec = job.spec.as_ref();
    let suspended = spec.and_then(|s| s.suspend).unwrap_or(false);
    let no_pods = spec.and_then(|s| s.parallelism) == Some(0);
    if deleting || is_finished(&job) || suspended || no_pods {
        return;
    }
    let job = Arc::new(job);
    let (updates, rx) = watch::channel(Update::Live(job.clone()));
    let task = tokio::spawn(run_job(shared.clone(), job, rx));
    jobs.insert(uid, Entry { updates, task });
}

pub(super) fn true_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// `Complete=True` or `Failed=True`: the Job controller's "finished".
fn is_finished(job: &Job) -> bool {
    true_condition(job, "Complete").is_some() || true_condition(job, "Failed").is_some()
}
