//! Who this controller is: its field manager on the API server, and the cluster it works for,
//! whose identity its ownership markers record so that two clusters on one bucket never take
//! each other's prefixes.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::controller::settings::valid_cluster_id;

/// The field manager of every write the controller makes.
pub const MANAGER: &str = "sitecache-controller";

/// The namespace whose UID names the cluster: every cluster has it, it is never deleted, and a
/// new cluster (even one restored from the same manifests) gets a new UID.
const IDENTITY_NAMESPACE: &str = "kube-system";

/// `--cluster-id` if set, else the UID of the `kube-system` namespace.
pub async fn cluster_identity(client: &Client, flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(id) = flag {
        return Ok(id.to_owned());
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces.get(IDENTITY_NAMESPACE).await.map_err(|e| {
        anyhow::anyhow!(
            "reading the UID of namespace {IDENTITY_NAMESPACE}, this cluster's identity in \
             ownership markers: {e} (grant get on namespaces/{IDENTITY_NAMESPACE}, or set \
             --cluster-id)"
        )
    })?;
    match ns.uid() {
        Some(uid) if valid_cluster_id(&uid) => Ok(uid),
        other => anyhow::bail!(
            "namespace {IDENTITY_NAMESPACE} has no usable UID ({other:?}); set --cluster-id"
        ),
    }
}
