//! Tenants sharing a bucket: prefixes that nest, a legacy publish key aimed at another site's
//! objects, and manifests that name keys outside their generation.

use std::time::Duration;

use serde_json::{Value, json};
use sitecache::api::SnapshotResult;

use super::harness::{
    Harness, Options, cond, condition, condition_reason, current, report_of, report_script, warm,
};

const MINUTE: Duration = Duration::from_secs(60);

fn spec(site: &str, prefix: &str) -> Value {
    json!({"site": site, "warm": warm("", 2), "storage": {"prefix": prefix}})
}

/// Waits until `name` is refused for overlapping another SiteCache's prefix, and returns the
/// message of its Ready condition.
async fn refused(h: &Harness, name: &str) -> String {
    let sc = h
        .wait(name, "refused for an overlapping prefix", MINUTE, |sc| {
            condition_reason(sc, "Ready") == Some("PrefixOverlaps")
        })
        .await;
    assert_eq!(condition(&sc, "Degraded"), Some("True"));
    assert_eq!(
        sc.status.as_ref().unwrap().phase,
        Some(sitecache::api::Phase::Failed)
    );
    let uid = sc.metadata.uid.clone().unwrap();
    let jobs = h
        .jobs()
        .list(&kube::api::ListParams::default().labels(&format!("sitecache.dev/uid={uid}")))
        .await
        .unwrap();
    assert!(jobs.items.is_empty(), "no Job for {name}");
    cond(&sc, "Ready").message
}

#[tokio::test]
async fn nested_prefixes_are_refused_in_either_order_and_deleting_the_refused_one_touches_nothing()
{
    let h = Harness::start(Options::default()).await;
    // The outer prefix first: a SiteCache inside it is refused.
    h.create("outer", spec("outer", "teams/")).await;
    h.wait_promoted("outer", 1).await;
    h.create("inner", spec("inner", "teams/b/")).await;
    let message = refused(&h, "inner").await;
    assert!(
        message.contains("outer") && message.contains("teams/"),
        "{message}"
    );

    // The inner prefix first: a SiteCache around it is refused.
    h.create("deep", spec("deep", "orgs/x/")).await;
    h.wait_promoted("deep", 1).await;
    h.create("wide", spec("wide", "orgs/")).await;
    let message = refused(&h, "wide").await;
    assert!(
        message.contains("deep") && message.contains("orgs/x/"),
        "{message}"
    );

    // Deleting the refused ones deletes nothing of the others.
    let (teams, orgs) = (h.keys("teams/").await, h.keys("orgs/").await);
    h.delete("inner").await;
    h.delete("wide").await;
    h.wait_gone("inner", MINUTE).await;
    h.wait_gone("wide", MINUTE).await;
    assert_eq!(h.keys("teams/").await, teams);
    assert_eq!(h.keys("orgs/").await, orgs);
    h.shutdown().await;
}

#[tokio::test]
async fn deletion_never_removes_objects_under_another_sitecaches_marker() {
    let h = Harness::start(Options::default()).await;
    h.create("outer", spec("outer", "teams/")).await;
    h.wait_promoted("outer", 1).await;
    // Another SiteCache's prefix inside it, claimed before overlaps were refused.
    let marker = json!({"namespace": "elsewhere", "name": "inner", "uid": "0000-inner",
                        "claimedAt": "2026-01-01T00:00:00Z"});
    h.put(
        "teams/b/.sitecache-owner.json",
        serde_json::to_vec(&marker).unwrap(),
    )
    .await;
    h.put("teams/b/current.json", "{}").await;
    h.put(
        "teams/b/generations/00000000000000000001/cache.tar.zst",
        "x",
    )
    .await;
    let inner = h.keys("teams/b/").await;

    h.delete("outer").await;
    h.wait_gone("outer", MINUTE).await;
    assert_eq!(
        h.keys("teams/").await,
        inner,
        "only the inner prefix is left"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_legacy_publish_key_outside_the_prefix_or_on_its_layout_is_refused() {
    let h = Harness::start(Options::default()).await;
    h.create("victim", json!({"site": "victim", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("victim", 1).await;
    let victim = h.get("victim/current.json").await.unwrap();

    for (name, key) in [
        ("thief", "victim/current.json"),
        ("clobber", "clobber/current.json"),
        ("marker", "marker/.sitecache-owner.json"),
        (
            "archive",
            "archive/generations/00000000000000000001/cache.tar.zst",
        ),
    ] {
        h.create(
            name,
            json!({"site": name, "warm": warm("", 2), "legacy": {"publishKey": key}}),
        )
        .await;
        let sc = h
            .wait(name, "refusing its publish key", MINUTE, |sc| {
                condition_reason(sc, "Ready") == Some("InvalidLegacyKey")
            })
            .await;
        let ready = cond(&sc, "Ready");
        assert!(
            ready.message.contains("spec.legacy.publishKey") && ready.message.contains(key),
            "{ready:?}"
        );
        assert!(
            h.jobs()
                .get_opt(&format!("{name}-g1"))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(h.get("victim/current.json").await.unwrap(), victim);
    h.shutdown().await;
}

#[tokio::test]
async fn a_manifest_naming_a_key_outside_its_generation_is_rejected() {
    let h = Harness::start(Options::default()).await;
    h.create("victim", json!({"site": "victim", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("victim", 1).await;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 2), "legacy": {"publishKey": "shop/cache.tgz"}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;
    let published = h.get("shop/cache.tgz").await.expect("the legacy copy");

    // Generation 2 as the site's own code could write it: a valid archive, and a manifest whose
    // legacy copy is another site's object.
    let g1 = "shop/generations/00000000000000000001/";
    let g2 = "shop/generations/00000000000000000002/";
    let mut manifest: Value =
        serde_json::from_slice(&h.get(&format!("{g1}manifest.json")).await.unwrap()).unwrap();
    manifest["generation"] = json!(2);
    manifest["archiveKey"] = json!(format!("{g2}cache.tar.zst"));
    manifest["legacyArchiveKey"] = json!("victim/current.json");
    let archive = h.get(&h.archive_key_of("shop/", 1).await).await.unwrap();
    h.put(&format!("{g2}cache.tar.zst"), archive.clone()).await;
    h.put(
        &format!("{g2}manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .await;
    let report = report_of(2, &format!("{g2}cache.tar.zst"), &archive);
    h.create_job("shop", 2, &report_script(&report)).await;

    let sc = h
        .wait("shop", "rejecting generation 2", MINUTE, |sc| {
            sc.status
                .as_ref()
                .and_then(|s| s.last_snapshot.as_ref())
                .is_some_and(|l| l.generation == 2 && l.result == Some(SnapshotResult::Rejected))
        })
        .await;
    let last = sc.status.as_ref().unwrap().last_snapshot.clone().unwrap();
    assert_eq!(last.reason.as_deref(), Some("ManifestMismatch"), "{last:?}");
    assert!(
        last.message
            .as_deref()
            .unwrap()
            .contains("victim/current.json"),
        "{last:?}"
    );
    assert_eq!(current(&sc), Some(1));
    assert_eq!(
        h.get("shop/cache.tgz").await.unwrap(),
        published,
        "the legacy copy is still generation 1's"
    );
    assert_eq!(h.stored_generations("shop/").await, [1]);
    h.shutdown().await;
}

#[tokio::test]
async fn a_legacy_key_under_another_sitecaches_prefix_is_never_written_even_when_allowed_outside() {
    let h = Harness::start(Options {
        extra_args: vec!["--allow-legacy-keys-outside-prefix".into()],
        ..Options::default()
    })
    .await;
    h.create("victim", json!({"site": "victim", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("victim", 1).await;
    let before = h.keys("victim/").await;
    // Outside its own prefix is allowed here, but not into another SiteCache's.
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 2),
               "legacy": {"publishKey": "victim/legacy/cache.tgz"}}),
    )
    .await;
    let sc = h
        .wait("shop", "refusing to publish", MINUTE, |sc| {
            condition_reason(sc, "Degraded") == Some("InvalidLegacyKey")
        })
        .await;
    let degraded = cond(&sc, "Degraded").message;
    assert!(degraded.contains("victim"), "{degraded}");
    assert_eq!(current(&sc), None, "nothing promoted");
    assert_eq!(h.keys("victim/").await, before, "nothing written there");

    // A key outside every SiteCache's prefix is published.
    h.create(
        "free",
        json!({"site": "free", "warm": warm("", 2),
               "legacy": {"publishKey": "legacy/free.tgz"}}),
    )
    .await;
    h.wait_promoted("free", 1).await;
    assert!(h.get("legacy/free.tgz").await.is_some());
    h.shutdown().await;
}
