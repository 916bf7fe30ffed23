//! Two clusters on one bucket: a disaster-recovery standby, a blue/green migration, a restore of
//! the manifests into a second cluster. Each SiteCache's marker names its cluster; the second
//! cluster never takes over the first's prefix, follows it read-only as a standby, and a claim
//! taken away is noticed before anything is promoted.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sitecache_devtools::{ControlPlane, control_plane};

use super::harness::{
    Harness, Options, Place, cond, condition, condition_reason, current, eventually, warm,
};
use crate::support;

const MINUTE: Duration = Duration::from_secs(60);

/// Creates namespace `name` unless it exists.
async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

/// The UID of a cluster's `kube-system` namespace: its identity in ownership markers.
async fn cluster_id(client: &Client) -> String {
    let api: Api<Namespace> = Api::all(client.clone());
    api.get("kube-system").await.unwrap().uid().unwrap()
}

fn place(client: Client, kubeconfig: PathBuf, bucket: &str, label: &str) -> Place {
    Place {
        client,
        kubeconfig,
        namespace: "web".into(),
        bucket: bucket.into(),
        label: label.into(),
    }
}

async fn marker(h: &Harness) -> Value {
    let bytes = h
        .get("shop/.sitecache-owner.json")
        .await
        .expect("the ownership marker");
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_cluster_on_the_same_bucket_never_takes_the_prefix_and_follows_as_a_standby() {
    let bucket = support::s3()
        .await
        .create_bucket("two")
        .await
        .expect("bucket");
    // Cluster A: the shared control plane.
    let cp_a = support::control_plane().await;
    let client_a = cp_a.client().await.unwrap();
    ensure_namespace(&client_a, "web").await;
    let a = Harness::start(Options {
        place: Some(place(
            client_a.clone(),
            cp_a.kubeconfig().to_path_buf(),
            &bucket,
            "cluster-a",
        )),
        ..Options::default()
    })
    .await;
    // Cluster B: a control plane of its own, with the same namespace.
    let cp_b = ControlPlane::start(&support::run_dir().join("cluster-b"))
        .await
        .unwrap_or_else(|e| panic!("the second control plane did not start: {e:#}"));
    let client_b = cp_b.client().await.unwrap();
    control_plane::install_crds(&client_b, &support::repo_path("crds"))
        .await
        .unwrap();
    ensure_namespace(&client_b, "web").await;
    let mut b = Harness::start(Options {
        place: Some(place(
            client_b.clone(),
            cp_b.kubeconfig().to_path_buf(),
            &bucket,
            "cluster-b",
        )),
        ..Options::default()
    })
    .await;
    let (id_a, id_b) = (cluster_id(&client_a).await, cluster_id(&client_b).await);
    assert_ne!(id_a, id_b);

    let spec = json!({"site": "shop", "warm": warm("", 3)});
    let shop_a = a.create("shop", spec.clone()).await;
    a.wait_promoted("shop", 1).await;
    let claimed = marker(&a).await;
    assert_eq!(claimed["cluster"], json!(id_a), "{claimed}");
    assert_eq!(claimed["uid"], json!(shop_a.uid().unwrap()));

    // The same web/shop in cluster B is refused, naming cluster A; it writes nothing.
    b.create("shop", spec.clone()).await;
    let refused = b
        .wait("shop", "refused", MINUTE, |sc| {
            condition_reason(sc, "Ready") == Some("PrefixOwnedByAnotherCluster")
        })
        .await;
    let message = cond(&refused, "Ready").message;
    assert!(message.contains(&id_a), "{message}");
    assert!(message.contains("--standby"), "{message}");
    assert_eq!(current(&refused), None);
    assert_eq!(marker(&a).await, claimed, "cluster B rewrote the marker");
    let before = a.keys("shop/").await;

    // Cluster A goes on promoting; B stays refused and starts no Job.
    a.request_and_wait("shop", "a2").await;
    a.wait_promoted("shop", 2).await;
    assert!(
        b.jobs()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        condition_reason(&b.api().get("shop").await.unwrap(), "Ready"),
        Some("PrefixOwnedByAnotherCluster")
    );
    assert_eq!(marker(&a).await, claimed);

    // Cluster B as a standby follows what A promotes, with storage rights to read and nothing
    // more (docs/iam.md): a write would fail and show in its status.
    let before_standby = a.keys("shop/").await;
    assert!(before_standby.len() > before.len(), "{before_standby:?}");
    let reader = format!("standby-{bucket}");
    let read_only = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
        }]
    });
    b.s3()
        .put_policy(&reader, &read_only)
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.s3()
        .add_user(&reader, &format!("{reader}-secret"), &reader)
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.use_credentials_of(&reader, &format!("{reader}-secret"));
    b.restart_controller_with(&["--standby", "--standby-poll", "1s"]);
    let followed = b
        .wait("shop", "following generation 2", MINUTE, |sc| {
            current(sc) == Some(2) && condition(sc, "Ready") == Some("True")
        })
        .await;
    assert_eq!(condition_reason(&followed, "Progressing"), Some("Standby"));
    assert_eq!(condition(&followed, "Degraded"), Some("False"));
    let progressing = cond(&followed, "Progressing").message;
    assert!(progressing.contains(&id_a), "{progressing}");
    assert_eq!(followed.status.as_ref().unwrap().latest_generation, Some(2));
    a.request_and_wait("shop", "a3").await;
    a.wait_promoted("shop", 3).await;
    b.wait("shop", "following generation 3", MINUTE, |sc| {
        current(sc) == Some(3)
    })
    .await;
    assert!(
        b.event_reasons("shop")
            .await
            .contains(&"Followed".to_owned())
    );
    assert!(
        b.jobs()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(marker(&a).await, claimed);

    // Deleting the standby's SiteCache deletes nothing of A's.
    let kept = a.keys("shop/").await;
    b.delete("shop").await;
    b.wait_gone("shop", MINUTE).await;
    assert_eq!(a.keys("shop/").await, kept);
    let sc = a.api().get("shop").await.unwrap();
    assert_eq!(current(&sc), Some(3));
    assert_eq!(condition(&sc, "Ready"), Some("True"));

    b.shutdown().await;
    a.shutdown().await;
    drop(cp_b);
}

#[tokio::test]
async fn a_claim_taken_away_is_confirmed_before_anything_is_promoted() {
    let h = Harness::start(Options::default()).await;
    h.create("shop", json!({"site": "shop", "warm": warm("", 3)}))
        .await;
    h.wait_promoted("shop", 1).await;
    let current_json = h.get("shop/current.json").await.unwrap();

    // Another cluster's controller, or a hand, takes the marker while this one runs.
    let mut theirs = marker(&h).await;
    theirs["cluster"] = json!("another-cluster");
    theirs["uid"] = json!("another-uid");
    h.put(
        "shop/.sitecache-owner.json",
        serde_json::to_vec(&theirs).unwrap(),
    )
    .await;
    h.request_snapshot("shop", "after-the-takeover").await;
    // Generation 1 stays available (Ready); the refusal is Degraded.
    let refused = h
        .wait("shop", "refused", MINUTE, |sc| {
            condition_reason(sc, "Degraded") == Some("PrefixOwnedByAnotherCluster")
        })
        .await;
    assert_eq!(condition(&refused, "Ready"), Some("True"));
    assert!(
        cond(&refused, "Degraded")
            .message
            .contains("another-cluster"),
        "{:?}",
        refused.status
    );
    // No Job ran, nothing was promoted or deleted, and the marker is theirs.
    assert!(h.jobs().get_opt("shop-g2").await.unwrap().is_none());
    assert_eq!(h.get("shop/current.json").await.unwrap(), current_json);
    assert_eq!(marker(&h).await, theirs);
    assert_eq!(h.stored_generations("shop/").await, [1]);
    h.shutdown().await;
}

#[tokio::test]
async fn a_controller_turned_standby_releases_the_jobs_it_started_and_records_none() {
    let mut h = Harness::start(Options::default()).await;
    h.create("shop", json!({"site": "shop", "warm": warm("sleep 3", 3)}))
        .await;
    h.wait("shop", "snapshotting", MINUTE, |sc| {
        condition_reason(sc, "Progressing") == Some("SnapshotRunning")
    })
    .await;
    // The cluster becomes the standby while its Job runs.
    h.restart_controller_with(&["--standby", "--standby-poll", "1s"]);
    eventually("Job shop-g1 finished and released", MINUTE, || async {
        let job = h.jobs().get("shop-g1").await.unwrap();
        let done = job
            .status
            .as_ref()
            .and_then(|s| s.succeeded)
            .is_some_and(|n| n > 0);
        done && !job.finalizers().iter().any(|f| f == "sitecache.dev/result")
    })
    .await;
    // Nothing was promoted: current.json is the active cluster's to write.
    assert!(h.get("shop/current.json").await.is_none());
    let sc = h.api().get("shop").await.unwrap();
    assert_eq!(condition_reason(&sc, "Progressing"), Some("Standby"));
    h.shutdown().await;
}
