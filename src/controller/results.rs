//! Releasing a snapshot Job's result: the finalizer [`RESULT_FINALIZER`] keeps a finished Job
//! and its pods (whose termination messages are the snapshot's report) until the controller has
//! recorded the Job's result in the status. Then it is removed from the pods first and the Job
//! last, so that a Job without the finalizer never has pods that still hold it.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::error::Error;
use super::job::{JobView, RESULT_FINALIZER};
use super::report::JOB_UID_LABEL;

/// Removes the result finalizer from `job`'s pods, then from `job`.
pub async fn release(client: &kube::Client, ns: &str, job: &JobView) -> Result<(), Error> {
    if job.uid.is_empty() {
        return Ok(());
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("{JOB_UID_LABEL}={}", job.uid);
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list snapshot pods"))?;
    for pod in listed.items.iter().filter(|p| holds(*p)) {
        let uid = pod.uid().unwrap_or_default();
        remove_finalizer(&pods, &pod.name_any(), &uid)
            .await
            .map_err(Error::kube("release a snapshot pod"))?;
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    remove_finalizer(&jobs, &job.name, &job.uid)
        .await
        .map_err(Error::kube("release a snapshot Job"))?;
    tracing::debug!(job = %job.name, "released the snapshot Job's result");
    Ok(())
}

/// Whether a snapshot pod has stopped: it ended (`Succeeded`, `Failed`), or it is being deleted
/// and its grace period is over (kubelet has killed its containers; the result finalizer keeps
/// the object).
pub fn stopped(pod: &Pod, now: jiff::Timestamp) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
        || pod
            .metadata
            .deletion_timestamp
            .as_ref()
            .is_some_and(|t| t.0 <= now)
}

fn holds<K: Resource>(obj: &K) -> bool {
    obj.meta()
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == RESULT_FINALIZER)
}

/// Removes [`RESULT_FINALIZER`] from object `name` if it is still the one with `uid`, keeping
/// any other finalizer (the write carries the version read, so that a finalizer added meanwhile
/// is not lost). Gone already is done.
async fn remove_finalizer<K>(api: &Api<K>, name: &str, uid: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    // A few tries; a finalizer left now is released by a later reconcile.
    for _ in 0..5 {
        let Some(obj) = api.get_opt(name).await? else {
            return Ok(());
        };
        if obj.uid().as_deref() != Some(uid) || !holds(&obj) {
            return Ok(());
        }
        let keep: Vec<&String> = obj
            .finalizers()
            .iter()
            .filter(|f| *f != RESULT_FINALIZER)
            .collect();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": obj.resource_version(), "finalizers": keep}
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            // Changed since it was read: read it again.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
