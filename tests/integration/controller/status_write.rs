//! The controller's status write is conditional on the version it read: a status computed from
//! an object that changed meanwhile is refused, not written over the change.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sitecache::api::{SiteCache, SiteCacheStatus};
use sitecache::controller::{Error, write_status};

use crate::support;

#[tokio::test]
async fn a_status_computed_from_a_stale_read_is_refused() {
    let (client, ns) = support::kube().await;
    let api: Api<SiteCache> = Api::namespaced(client, &ns);
    let sc: SiteCache = serde_json::from_value(json!({
        "apiVersion": "sitecache.dev/v1alpha1",
        "kind": "SiteCache",
        "metadata": {"name": "shop"},
        "spec": {"site": "shop", "warm": {"image": "denoland/deno:2.5.0"}},
    }))
    .unwrap();
    let read = api.create(&PostParams::default(), &sc).await.unwrap();
    let status = SiteCacheStatus {
        latest_generation: Some(7),
        ..Default::default()
    };

    // Someone else changes the object after the controller read it.
    api.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"source": {"revision": "r2"}}})),
    )
    .await
    .unwrap();
    let refused = write_status(&api, &read, &status).await;
    assert!(
        matches!(refused, Err(Error::Conflict)),
        "a stale write was not refused: {refused:?}"
    );
    let now = api.get("shop").await.unwrap();
    assert_eq!(now.status.and_then(|s| s.latest_generation), None);

    // From the current version, the same write goes through.
    let fresh = api.get("shop").await.unwrap();
    write_status(&api, &fresh, &status).await.unwrap();
    let written = api.get("shop").await.unwrap();
    assert_eq!(written.status.as_ref().unwrap().latest_generation, Some(7));
    assert_ne!(written.resource_version(), fresh.resource_version());
}
