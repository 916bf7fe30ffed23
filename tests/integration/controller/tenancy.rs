//! Namespaces as tenants of one controller and one bucket: a prefix per namespace from
//! `--default-prefix-template` (a changed template moves no cache that has a location), and the
//! snapshot Jobs' ServiceAccount made where it is missing, a user's left alone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::harness::{Harness, Options, Place, cond, condition_reason, warm};
use crate::support;

const TEMPLATE: &str = "{namespace}/{site}/";

fn site(name: &str) -> Value {
    json!({"site": name, "warm": warm("", 2)})
}

/// Two namespaces of the control plane sharing one bucket, each with its job runner: the first
/// runs the controller, watching both, with `args` besides the harness's; the second runs none.
async fn two_namespaces(args: &[&str]) -> (Harness, Harness) {
    let b = Harness::start(Options {
        start_controller: false,
        ..Default::default()
    })
    .await;
    let (client, ns) = support::kube().await;
    let a = Harness::start(Options {
        place: Some(Place {
            client,
            kubeconfig: support::control_plane().await.kubeconfig().to_path_buf(),
            namespace: ns.clone(),
            bucket: b.bucket.clone(),
            label: ns,
        }),
        extra_args: watching(&b, args),
        ..Default::default()
    })
    .await;
    (a, b)
}

/// The controller's extra flags: `b`'s namespace watched too, then `args`.
fn watching(b: &Harness, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--namespace".to_owned(), b.ns.clone()];
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

fn url(sc: &sitecache::api::SiteCache) -> String {
    sc.status.as_ref().unwrap().url.clone().unwrap_or_default()
}

#[tokio::test]
async fn the_same_site_in_two_namespaces_gets_a_prefix_per_namespace() {
    let (a, b) = two_namespaces(&["--default-prefix-template", TEMPLATE]).await;
    a.create("shop", site("shop")).await;
    b.create("shop", site("shop")).await;
    let in_a = a.wait_promoted("shop", 1).await;
    let in_b = b.wait_promoted("shop", 1).await;
    assert_eq!(url(&in_a), format!("s3://{}/{}/shop/", a.bucket, a.ns));
    assert_eq!(url(&in_b), format!("s3://{}/{}/shop/", b.bucket, b.ns));
    assert_eq!(a.stored_generations(&format!("{}/shop/", a.ns)).await, [1]);
    assert_eq!(b.stored_generations(&format!("{}/shop/", b.ns)).await, [1]);
    assert!(a.keys("shop/").await.is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_collision_says_how_to_avoid_it_and_a_changed_template_moves_no_existing_cache() {
    // The default template: the site's name, as before the template existed.
    let (mut a, b) = two_namespaces(&[]).await;
    a.create("shop", site("shop")).await;
    let first = a.wait_promoted("shop", 1).await;
    assert_eq!(url(&first), format!("s3://{}/shop/", a.bucket));
    b.create("shop", site("shop")).await;
    let refused = b
        .wait(
            "shop",
            "refused: the prefix is the other namespace's",
            std::time::Duration::from_secs(60),
            |sc| condition_reason(sc, "Ready") == Some("PrefixOwnedByAnother"),
        )
        .await;
    let message = cond(&refused, "Ready").message;
    for part in [
        "--default-prefix-template \"{site}/\"",
        "'{namespace}/{site}/'",
        "spec.storage.prefix",
        &format!("{}/shop", a.ns),
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    // Refused from the start, it recorded no location: the template may still give it one.
    assert_eq!(refused.status.as_ref().unwrap().url, None);

    // The template changes on the live install.
    a.restart_controller_with(
        &watching(&b, &["--default-prefix-template", TEMPLATE])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    // The refused one takes the template's prefix.
    let moved = b.wait_promoted("shop", 1).await;
    assert_eq!(url(&moved), format!("s3://{}/{}/shop/", b.bucket, b.ns));
    // The one with a location stays there: its next generation goes beside its first.
    let kept = a.request_and_wait("shop", "after-the-change").await;
    assert_eq!(url(&kept), format!("s3://{}/shop/", a.bucket));
    assert_eq!(super::harness::current(&kept), Some(2));
    assert_eq!(a.stored_generations("shop/").await, [1, 2]);
    assert!(a.keys(&format!("{}/shop/", a.ns)).await.is_empty());
    // A new SiteCache takes the template's prefix.
    a.create("blog", site("blog")).await;
    let blog = a.wait_promoted("blog", 1).await;
    assert_eq!(url(&blog), format!("s3://{}/{}/blog/", a.bucket, a.ns));
    a.shutdown().await;
    b.shutdown().await;
}

fn accounts(h: &Harness) -> Api<ServiceAccount> {
    Api::namespaced(h.client.clone(), &h.ns)
}

#[tokio::test]
async fn the_job_account_is_made_where_it_is_missing_and_a_users_is_left_alone() {
    let account = "snap";
    let args = |role: &str| {
        vec![
            "--default-prefix-template".to_owned(),
            TEMPLATE.to_owned(),
            "--job-service-account".to_owned(),
            account.to_owned(),
            "--job-service-account-annotations".to_owned(),
            format!("example.com/role={role}"),
        ]
    };
    let b = Harness::start(Options {
        start_controller: false,
        ..Default::default()
    })
    .await;
    // B's account is the user's own: it mounts a token and names another role.
    let users: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": account, "annotations": {"example.com/role": "the-users"}},
        "automountServiceAccountToken": true,
    }))
    .unwrap();
    let users = accounts(&b)
        .create(&PostParams::default(), &users)
        .await
        .unwrap();
    let (client, ns) = support::kube().await;
    let mut extra = vec!["--namespace".to_owned(), b.ns.clone()];
    extra.extend(args("r1"));
    let mut a = Harness::start(Options {
        place: Some(Place {
            client,
            kubeconfig: support::control_plane().await.kubeconfig().to_path_buf(),
            namespace: ns.clone(),
            bucket: b.bucket.clone(),
            label: ns,
        }),
        extra_args: extra,
        ..Default::default()
    })
    .await;
    assert!(accounts(&a).get_opt(account).await.unwrap().is_none());

    a.create("shop", site("shop")).await;
    b.create("shop", site("shop")).await;
    a.wait_promoted("shop", 1).await;
    b.wait_promoted("shop", 1).await;
    for h in [&a, &b] {
        let job = h.jobs().get("shop-g1").await.unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(account));
    }
    // A's was made: the controller's, with the configured annotations and no token.
    let made = accounts(&a).get(account).await.unwrap();
    assert_eq!(
        made.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("sitecache")
    );
    assert_eq!(made.annotations()["example.com/role"], "r1");
    assert_eq!(made.automount_service_account_token, Some(false));
    assert!(
        a.event_reasons("shop")
            .await
            .contains(&"ServiceAccountCreated".to_owned())
    );
    // B's is as the user made it.
    let after = accounts(&b).get(account).await.unwrap();
    assert_eq!(after.resource_version(), users.resource_version());
    assert_eq!(after.labels(), &BTreeMap::new());
    assert!(
        !b.event_reasons("shop")
            .await
            .contains(&"ServiceAccountCreated".to_owned())
    );

    // The role changes: the controller's account follows, the user's does not.
    let mut restart = vec!["--namespace".to_owned(), b.ns.clone()];
    restart.extend(args("r2"));
    a.restart_controller_with(&restart.iter().map(String::as_str).collect::<Vec<_>>());
    a.request_and_wait("shop", "r2").await;
    b.request_and_wait("shop", "r2").await;
    let made = accounts(&a).get(account).await.unwrap();
    assert_eq!(made.annotations()["example.com/role"], "r2");
    let after = accounts(&b).get(account).await.unwrap();
    assert_eq!(after.resource_version(), users.resource_version());
    assert_eq!(after.annotations()["example.com/role"], "the-users");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn no_account_is_made_when_creation_is_off_or_a_sitecache_names_its_own() {
    let h = Harness::start(Options {
        extra_args: vec![
            "--job-service-account".into(),
            "snap".into(),
            "--create-job-service-account=false".into(),
        ],
        ..Default::default()
    })
    .await;
    h.create("shop", site("shop")).await;
    h.wait_promoted("shop", 1).await;
    assert!(accounts(&h).get_opt("snap").await.unwrap().is_none());
    h.shutdown().await;

    let h = Harness::start(Options {
        extra_args: vec!["--job-service-account".into(), "snap".into()],
        ..Default::default()
    })
    .await;
    let mut spec = site("shop");
    spec["warm"]["serviceAccountName"] = json!("shop-own");
    h.create("shop", spec).await;
    h.wait_promoted("shop", 1).await;
    assert!(accounts(&h).get_opt("snap").await.unwrap().is_none());
    assert!(accounts(&h).get_opt("shop-own").await.unwrap().is_none());
    h.shutdown().await;
}
