//! The snapshot Jobs' ServiceAccount in a SiteCache's namespace (`--job-service-account`): made
//! by the controller where it is missing (`--create-job-service-account`), as K8up does, so that
//! a namespace needs nothing made by hand before its first SiteCache snapshots.
//!
//! Rules:
//! - only the controller's own account is made, and only when a Job is about to run as it: a
//!   SiteCache that names another in `spec.warm.serviceAccountName` gets nothing;
//! - an account the controller did not make (no [`MANAGED_LABEL`] with [`MANAGED_BY`]: made by
//!   hand, by Helm, by another tool) is never changed, whatever it says;
//! - one the controller made is kept as the configuration says: its annotations (an IRSA role,
//!   a workload identity) follow `--job-service-account-annotations`, and it mounts no token
//!   (the agents never call the Kubernetes API; an identity webhook projects its own token);
//! - it is looked at once per namespace and controller process, when the first Job there is
//!   created, not on every reconcile: a namespace of 1,000 SiteCaches costs one read per
//!   controller start. A Job whose pod is refused for want of the account (someone deleted it, or
//!   the namespace was deleted and made again) makes the controller look again;
//! - it is not deleted: it lives as long as its namespace, like the account a user would make.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::controller::jobs::MANAGED_BY;
use crate::controller::settings::identity::MANAGER;

/// The label that marks the accounts the controller made (and so may change).
pub const MANAGED_LABEL: &str = "app.kubernetes.io/managed-by";

/// What the controller found, or did, in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// It made the account.
    Created,
    /// It brought its own account up to date with the configuration.
    Updated,
    /// Its own account was up to date.
    UpToDate,
    /// The account is someone else's: left as it is.
    Foreign,
}

/// The account as the controller makes it in `namespace`.
pub fn desired(
    name: &str,
    namespace: &str,
    annotations: &BTreeMap<String, String>,
) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_LABEL.to_owned(), MANAGED_BY.to_owned()),
                (
                    "app.kubernetes.io/component".to_owned(),
                    "snapshot".to_owned(),
                ),
            ])),
            annotations: (!annotations.is_empty()).then(|| annotations.clone()),
            ..Default::default()
        },
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// Whether the controller made `sa`.
pub fn is_managed(sa: &ServiceAccount) -> bool {
    sa.labels().get(MANAGED_LABEL).map(String::as_str) == Some(MANAGED_BY)
}

/// What an account the controller made lacks of the configuration: `None` when up to date. An
/// annotation that left the configuration is left on the account (the controller cannot tell it
/// from one a user added).
pub fn update_for(
    existing: &ServiceAccount,
    annotations: &BTreeMap<String, String>,
) -> Option<serde_json::Value> {
    let has = existing.annotations();
    let missing: BTreeMap<&String, &String> = annotations
        .iter()
        .filter(|(k, v)| has.get(*k) != Some(*v))
        .collect();
    let automount = existing.automount_service_account_token != Some(false);
    if missing.is_empty() && !automount {
        return None;
    }
    let mut patch = serde_json::json!({"automountServiceAccountToken": false});
    if !missing.is_empty() {
        patch["metadata"] = serde_json::json!({"annotations": missing});
    }
    Some(patch)
}

/// Makes sure account `name` exists in `namespace` for the snapshot Jobs (see the module's rules).
pub async fn ensure(
    client: &Client,
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Ensured, kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await? {
        Some(sa) if !is_managed(&sa) => Ok(Ensured::Foreign),
        Some(sa) => match update_for(&sa, annotations) {
            None => Ok(Ensured::UpToDate),
            Some(patch) => {
                api.patch(
                    name,
                    &PatchParams {
                        field_manager: Some(MANAGER.into()),
                        ..Default::default()
                    },
                    &Patch::Merge(&patch),
                )
                .await?;
                Ok(Ensured::Updated)
            }
        },
        None => {
            let params = PostParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            };
            match api
                .create(&params, &desired(name, namespace, annotations))
                .await
            {
                Ok(_) => Ok(Ensured::Created),
                // Made meanwhile, by someone else: theirs.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Ensured::Foreign),
                Err(e) => Err(e),
            }
        }
    }
}

/// Whether a `FailedCreate` message says the pod was refused because account `name` is missing
/// in `namespace` (the API server's ServiceAccount admission).
pub fn refused_for_missing(message: &str, namespace: &str, name: &str) -> bool {
    message.contains(&format!(
        "error looking up service account {namespace}/{name}"
    )) || message.contains(&format!("serviceaccount \"{name}\" not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations() -> BTreeMap<String, String> {
        BTreeMap::from([(
            "eks.amazonaws.com/role-arn".to_owned(),
            "arn:aws:iam::1:role/snap".to_owned(),
        )])
    }

    #[test]
    fn the_account_is_labelled_annotated_and_mounts_no_token() {
        let sa = desired("sitecache-snapshot", "team-a", &annotations());
        assert_eq!(sa.metadata.namespace.as_deref(), Some("team-a"));
        assert!(is_managed(&sa));
        assert_eq!(sa.automount_service_account_token, Some(false));
        assert_eq!(
            sa.annotations()["eks.amazonaws.com/role-arn"],
            "arn:aws:iam::1:role/snap"
        );
        assert!(
            desired("s", "n", &BTreeMap::new())
                .metadata
                .annotations
                .is_none()
        );
        assert_eq!(update_for(&sa, &annotations()), None);
    }

    #[test]
    fn only_the_controllers_own_account_is_its_to_change() {
        let mut users = desired("sitecache-snapshot", "team-a", &BTreeMap::new());
        users.metadata.labels = Some(BTreeMap::from([(
            MANAGED_LABEL.to_owned(),
            "Helm".to_owned(),
        )]));
        assert!(!is_managed(&users));
        users.metadata.labels = None;
        assert!(!is_managed(&users));
    }

    #[test]
    fn a_changed_configuration_updates_the_controllers_account() {
        let old = desired("s", "n", &BTreeMap::new());
        let patch = update_for(&old, &annotations()).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({
                "automountServiceAccountToken": false,
                "metadata": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/snap"}}
            })
        );
        let mut mounting = desired("s", "n", &annotations());
        mounting.automount_service_account_token = None;
        assert_eq!(
            update_for(&mounting, &annotations()),
            Some(serde_json::json!({"automountServiceAccountToken": false}))
        );
    }

    #[test]
    fn a_pod_refused_for_a_missing_account_is_recognized() {
        let m = "pods \"shop-g1-abcde\" is forbidden: error looking up service account \
                 team-a/sitecache-snapshot: serviceaccount \"sitecache-snapshot\" not found";
        assert!(refused_for_missing(m, "team-a", "sitecache-snapshot"));
        assert!(!refused_for_missing(m, "team-a", "other"));
        assert!(!refused_for_missing(
            "exceeded quota: compute-resources",
            "team-a",
            "sitecache-snapshot"
        ));
    }
}
