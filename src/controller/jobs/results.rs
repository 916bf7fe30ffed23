//! Releasing a snapshot Job's result: the finalizer [`RESULT_FINALIZER`] keeps a finished Job
//! and its pods (whose termination messages are the snapshot's report) until the controller has
//! recorded the Job's result in the status. Then it is removed from the pods first and the Job
//! last, so that a Job without the finalizer never has pods that still hold it.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::controller::error::Error;
use crate::controller::jobs::report::JOB_UID_LABEL;
use crate::controller::jobs::{JobView, RESULT_FINALIZER};

/// Removes the result finalizer from `job`'s pods, then from `job`. `pods` are the Job's pods
/// if the caller has just listed them (they are listed otherwise). Each object is patched at
/// the version it was seen at, and read again only if it changed since.
pub async fn release(
    client: &kube::Client,
    ns: &str,
    job: &JobView,
    pods: Option<&[Pod]>,
) -> Result<(), Error> {
    if job.uid.is_empty() {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed;
    let pods = match pods {
        Some(pods) => pods,
        None => {
            let selector = format!("{JOB_UID_LABEL}={}", job.uid);
            listed = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(Error::kube("list snapshot pods"))?
                .items;
            &listed
        }
    };
    for pod in pods.iter().filter(|p| holds(*p)) {
        let seen = Seen {
            version: pod.resource_version(),
            finalizers: pod.finalizers().to_vec(),
        };
        remove_finalizer(
            &api,
            &pod.name_any(),
            &pod.uid().unwrap_or_default(),
            Some(seen),
        )
        .await
        .map_err(Error::kube("release a snapshot pod"))?;
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let seen = Seen {
        version: job.resource_version.clone(),
        finalizers: job.finalizers.clone(),
    };
    remove_finalizer(&jobs, &job.name, &job.uid, Some(seen))
        .await
        .map_err(Error::kube("release a snapshot Job"))?;
    tracing::debug!(job = %job.name, "released the snapshot Job's result");
    Ok(())
}

/// An object as last seen: its version and finalizers.
struct Seen {
    version: Option<String>,
    finalizers: Vec<String>,
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
/// any other finalizer. The write carries the version `seen` (or read), so that a finalizer
/// added meanwhile is not lost: a conflict reads the object again. Gone already is done.
async fn remove_finalizer<K>(
    api: &Api<K>,
    name: &str,
    uid: &str,
    mut seen: Option<Seen>,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    // A few tries; a finalizer left now is released by a later reconcile.
    for _ in 0..5 {
        let seen = match seen.take() {
            Some(seen) => seen,
            None => {
                let Some(obj) = api.get_opt(name).await? else {
                    return Ok(());
                };
                if obj.uid().as_deref() != Some(uid) || !holds(&obj) {
                    return Ok(());
                }
                Seen {
                    version: obj.resource_version(),
                    finalizers: obj.finalizers().to_vec(),
                }
            }
        };
        let keep: Vec<&String> = seen
            .finalizers
            .iter()
            .filter(|f| *f != RESULT_FINALIZER)
            .collect();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": seen.version, "finalizers": keep}
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            // Changed since it was seen: read it again.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
