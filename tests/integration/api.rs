//! The SiteCache API on a real API server: the CRD from `crds/`, schema defaults, validation
//! (OpenAPI + CEL) and printer columns.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sitecache::api::{SiteCache, SiteCacheStatus};

use crate::support;

fn dynamic_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<SiteCache>(&()))
}

fn object(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "sitecache.dev/v1alpha1",
        "kind": "SiteCache",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .expect("a well-formed object")
}

fn minimal_spec() -> Value {
    json!({ "site": "shop", "warm": { "image": "denoland/deno:2.5.0" } })
}

/// `minimal_spec()` with `path` (dotted) set to `value`; `Value::Null` removes the field.
fn spec_with(path: &str, value: Value) -> Value {
    let mut spec = minimal_spec();
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap();
    let mut cursor = &mut spec;
    for p in parts {
        cursor = cursor
            .as_object_mut()
            .unwrap()
            .entry(p)
            .or_insert_with(|| json!({}));
    }
    if value.is_null() {
        cursor.as_object_mut().unwrap().remove(last);
    } else {
        cursor[last] = value;
    }
    spec
}

#[tokio::test]
async fn crd_from_crds_dir_is_established() {
    let (client, _) = support::kube().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd = crds.get("sitecaches.sitecache.dev").await.unwrap();
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    for wanted in ["NamesAccepted", "Established"] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == wanted && c.status == "True"),
            "{wanted} is not True: {conditions:?}"
        );
    }
    assert_eq!(crd.spec.names.short_names, Some(vec!["scache".into()]));
}

#[tokio::test]
async fn minimal_sitecache_gets_schema_defaults() {
    let (client, ns) = support::kube().await;
    let api = dynamic_api(&client, &ns);
    api.create(&PostParams::default(), &object("minimal", minimal_spec()))
        .await
        .expect("a minimal SiteCache is accepted");

    // Read the raw object: typed deserialization would fill the same defaults client-side and
    // hide a server that applied none.
    let stored = api.get("minimal").await.unwrap();
    let spec = &stored.data["spec"];
    assert_eq!(spec["site"], "shop");
    assert_eq!(spec["warm"]["cacheDir"], "/deno-dir");
    assert_eq!(spec["retention"]["keep"], 3);
    assert_eq!(spec["schedule"]["maxAge"], "24h");
    assert_eq!(spec["schedule"]["jitter"], "10m");
    assert_eq!(spec["snapshot"]["timeout"], "30m");
    assert_eq!(spec["snapshot"]["backoffLimit"], 1);
    assert_eq!(spec["snapshot"]["minFiles"], 1);
    assert_eq!(spec["snapshot"]["compressionLevel"], 3);
    assert_eq!(spec["suspend"], false);
    assert_eq!(spec["deletionPolicy"], "Delete");
    assert_eq!(spec["storage"], json!({}));

    // And the typed view agrees.
    let typed: Api<SiteCache> = Api::namespaced(client, &ns);
    let sc = typed.get("minimal").await.unwrap();
    assert_eq!(sc.spec.retention.keep, 3);
}

#[tokio::test]
async fn a_full_valid_sitecache_is_accepted() {
    let (client, ns) = support::kube().await;
    let spec = json!({
        "site": "shop-eu-1",
        "storage": { "bucket": "site-caches", "region": "eu-west-1",
                     "endpoint": "https://s3.eu-west-1.amazonaws.com", "prefix": "tenants/shop-eu-1/",
                     "forcePathStyle": false },
        "warm": { "image": "registry.example/shop:abc", "command": ["deno"],
                  "args": ["cache", "main.ts"], "env": [{ "name": "NPM_CONFIG_REGISTRY", "value": "http://npm" }],
                  "resources": { "limits": { "memory": "1Gi" }, "requests": { "cpu": "500m" } },
                  "cacheDir": "/cache/deno", "serviceAccountName": "shop-snapshot" },
        "source": { "revision": "git:0123abcd" },
        "schedule": { "maxAge": "12h30m", "cron": "0 3 * * *", "jitter": "15m" },
        "retention": { "keep": 5 },
        "snapshot": { "timeout": "45m", "backoffLimit": 2, "minFiles": 100, "compressionLevel": 9 },
        "suspend": true,
        "deletionPolicy": "Retain",
        "legacy": { "publishKey": "shop-eu-1/cache.tgz" }
    });
    dynamic_api(&client, &ns)
        .create(&PostParams::default(), &object("full", spec))
        .await
        .expect("a SiteCache using every field is accepted");
    let sc = Api::<SiteCache>::namespaced(client, &ns)
        .get("full")
        .await
        .unwrap();
    assert_eq!(sc.spec.snapshot.min_files, 100);
    assert_eq!(sc.spec.schedule.cron.as_deref(), Some("0 3 * * *"));
}

#[tokio::test]
async fn invalid_sitecaches_are_rejected_naming_the_field() {
    let (client, ns) = support::kube().await;
    let api = dynamic_api(&client, &ns);
    let long_site = "a".repeat(64);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "uppercase site",
            spec_with("site", json!("Bad_Site")),
            "spec.site",
        ),
        (
            "site too long",
            spec_with("site", json!(long_site)),
            "spec.site",
        ),
        (
            "site ends with -",
            spec_with("site", json!("shop-")),
            "spec.site",
        ),
        ("missing site", spec_with("site", Value::Null), "spec.site"),
        (
            "serve without a command",
            spec_with("warm.serve", json!({"port": 8000})),
            "spec.warm.serve needs spec.warm.command",
        ),
        (
            "serve path not absolute",
            spec_with(
                "warm",
                json!({"image": "i", "command": ["deno"], "serve": {"port": 8000, "paths": ["cart"]}}),
            ),
            "spec.warm.serve.paths[0]",
        ),
        (
            "empty prefix",
            spec_with("storage.prefix", json!("")),
            "spec.storage.prefix",
        ),
        (
            "absolute prefix",
            spec_with("storage.prefix", json!("/shop/")),
            "spec.storage.prefix",
        ),
        (
            "prefix with ..",
            spec_with("storage.prefix", json!("a/../b/")),
            "spec.storage.prefix",
        ),
        (
            "prefix with //",
            spec_with("storage.prefix", json!("a//b/")),
            "spec.storage.prefix",
        ),
        (
            "prefix without trailing /",
            spec_with("storage.prefix", json!("shop")),
            "spec.storage.prefix",
        ),
        (
            "bad bucket",
            spec_with("storage.bucket", json!("Bad_Bucket")),
            "spec.storage.bucket",
        ),
        (
            "endpoint not http(s)",
            spec_with("storage.endpoint", json!("ftp://host")),
            "spec.storage.endpoint",
        ),
        (
            "keep 0",
            spec_with("retention.keep", json!(0)),
            "spec.retention.keep",
        ),
        (
            "maxAge in days",
            spec_with("schedule.maxAge", json!("1d")),
            "spec.schedule.maxAge",
        ),
        (
            "maxAge zero",
            spec_with("schedule.maxAge", json!("0s")),
            "spec.schedule.maxAge",
        ),
        (
            "cron with words",
            spec_with("schedule.cron", json!("every day")),
            "spec.schedule.cron",
        ),
        (
            "jitter unparseable",
            spec_with("schedule.jitter", json!("soon")),
            "spec.schedule.jitter",
        ),
        (
            "missing warm.image",
            spec_with("warm.image", Value::Null),
            "spec.warm.image",
        ),
        (
            "relative cacheDir",
            spec_with("warm.cacheDir", json!("deno-dir")),
            "spec.warm.cacheDir",
        ),
        (
            "cacheDir with ..",
            spec_with("warm.cacheDir", json!("/a/../etc")),
            "spec.warm.cacheDir",
        ),
        (
            "cacheDir with an empty component",
            spec_with("warm.cacheDir", json!("/a//b")),
            "spec.warm.cacheDir",
        ),
        (
            "cacheDir with a trailing slash",
            spec_with("warm.cacheDir", json!("/deno/")),
            "spec.warm.cacheDir",
        ),
        (
            "cacheDir with .",
            spec_with("warm.cacheDir", json!("/a/./b")),
            "spec.warm.cacheDir",
        ),
        (
            "cacheDir above the service account token",
            spec_with("warm.cacheDir", json!("/var/run/secrets")),
            "spec.warm.cacheDir",
        ),
        (
            "cacheDir in /etc",
            spec_with("warm.cacheDir", json!("/etc/deno")),
            "spec.warm.cacheDir",
        ),
        (
            "cacheDir /proc",
            spec_with("warm.cacheDir", json!("/proc")),
            "spec.warm.cacheDir",
        ),
        (
            "unknown deletionPolicy",
            spec_with("deletionPolicy", json!("Destroy")),
            "spec.deletionPolicy",
        ),
        (
            "timeout unparseable",
            spec_with("snapshot.timeout", json!("30 minutes")),
            "spec.snapshot.timeout",
        ),
        (
            "compression level 30",
            spec_with("snapshot.compressionLevel", json!(30)),
            "spec.snapshot.compressionLevel",
        ),
        (
            "negative backoffLimit",
            spec_with("snapshot.backoffLimit", json!(-1)),
            "spec.snapshot.backoffLimit",
        ),
        (
            "minFiles 0",
            spec_with("snapshot.minFiles", json!(0)),
            "spec.snapshot.minFiles",
        ),
        (
            "absolute publishKey",
            spec_with("legacy.publishKey", json!("/shop/cache.tgz")),
            "spec.legacy.publishKey",
        ),
    ];
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for (i, (what, spec, field)) in cases.into_iter().enumerate() {
        match api
            .create(&PostParams::default(), &object(&format!("bad-{i}"), spec))
            .await
        {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(status)) => {
                if status.code != 422 || !status.message.contains(field) {
                    failures.push(format!(
                        "{what}: expected a 422 naming {field}, got {}: {}",
                        status.code, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{what}: unexpected error {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn site_and_storage_are_immutable() {
    let (client, ns) = support::kube().await;
    let api = dynamic_api(&client, &ns);
    api.create(
        &PostParams::default(),
        &object("fixed", spec_with("storage.prefix", json!("shop/"))),
    )
    .await
    .unwrap();
    for (patch, field) in [
        (json!({ "spec": { "site": "other" } }), "spec.site"),
        (
            json!({ "spec": { "storage": { "prefix": "elsewhere/" } } }),
            "spec.storage",
        ),
    ] {
        let err = api
            .patch("fixed", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("the change is refused");
        let kube::Error::Api(status) = err else {
            panic!("unexpected error {err}")
        };
        assert_eq!(status.code, 422, "{}", status.message);
        assert!(
            status.message.contains(field) && status.message.contains("immutable"),
            "{}",
            status.message
        );
    }
    // Other fields stay editable.
    api.patch(
        "fixed",
        &PatchParams::default(),
        &Patch::Merge(&json!({ "spec": { "source": { "revision": "r2" } } })),
    )
    .await
    .expect("source.revision can change");
}

fn kubectl(args: &[&str]) -> String {
    let out = support::kubectl(args, None);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn kubectl_get_shows_printer_columns() {
    let (client, ns) = support::kube().await;
    let api: Api<SiteCache> = Api::namespaced(client.clone(), &ns);
    dynamic_api(&client, &ns)
        .create(&PostParams::default(), &object("shop", minimal_spec()))
        .await
        .unwrap();
    let status: SiteCacheStatus = serde_json::from_value(json!({
        "current": { "generation": 7, "key": "shop/generations/00000000000000000007/cache.tar.zst",
                     "sizeBytes": 193_273_528u64, "uncompressedBytes": 612_000_000u64, "files": 23_456,
                     "sha256": "ab".repeat(32), "createdAt": "2026-11-23T10:00:00Z" },
        "size": "184.3 MiB",
        "freshness": "Fresh",
        "phase": "Snapshotting",
        "url": "s3://caches/shop/",
        "activeJob": "shop-snapshot-8",
        "nextSnapshotTime": "2126-11-23T10:00:00Z",
        "lastSnapshot": { "generation": 7, "job": "shop-snapshot-7", "completionTime": "2026-11-23T10:00:00Z",
                          "result": "Succeeded" },
        "conditions": [{ "type": "Ready", "status": "True", "reason": "GenerationPromoted",
                         "message": "generation 7 is current", "lastTransitionTime": "2026-11-23T10:00:00Z" }]
    }))
    .unwrap();
    api.patch_status(
        "shop",
        &PatchParams::apply("sitecache-test").force(),
        &Patch::Apply(&json!({
            "apiVersion": "sitecache.dev/v1alpha1", "kind": "SiteCache", "status": status
        })),
    )
    .await
    .expect("the status subresource takes a full status");

    let out = kubectl(&["get", "scache", "-n", &ns]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "SITE",
            "GENERATION",
            "FRESHNESS",
            "SIZE",
            "LAST SNAPSHOT",
            "READY",
            "AGE"
        ],
        "{out}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..6],
        ["shop", "shop", "7", "Fresh", "184.3", "MiB"],
        "{out}"
    );
    assert_eq!(row[row.len() - 2], "True", "{out}");

    // `-o wide` adds where runners restore from and what the controller does next.
    let out = kubectl(&["get", "scache", "-n", &ns, "-o", "wide"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header[8..],
        ["PHASE", "URL", "ACTIVE JOB", "NEXT SNAPSHOT"],
        "{out}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[row.len() - 4..],
        [
            "Snapshotting",
            "s3://caches/shop/",
            "shop-snapshot-8",
            "2126-11-23T10:00:00Z"
        ],
        "{out}"
    );
}

#[tokio::test]
async fn kubectl_explain_describes_fields() {
    support::control_plane().await;
    let out = kubectl(&["explain", "sitecache.spec.storage.prefix"]);
    assert!(out.contains("never contains '..'"), "{out}");
    let out = kubectl(&["explain", "scache.spec"]);
    for field in [
        "site",
        "storage",
        "warm",
        "schedule",
        "retention",
        "deletionPolicy",
        "legacy",
    ] {
        assert!(out.contains(field), "{field} missing from:\n{out}");
    }
}

/// The versioning mechanism, proved on a control plane of its own (the CRD is cluster-wide):
/// SiteCaches stored in `v1alpha1`; a release that serves `v1beta1` too and stores it (`sitecache
/// crd --serve … --storage …`); the API server refuses to drop `v1alpha1` while objects may be
/// stored in it; `kubectl sitecache migrate-storage` writes each back and records `v1beta1` alone;
/// then `v1alpha1` can go, and every object reads in `v1beta1`, spec and status as they were.
#[tokio::test]
async fn a_second_version_is_served_stored_and_migrated_to() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::GroupVersionKind;
    use sitecache_devtools::assets::Asset;
    use sitecache_devtools::control_plane::{self, ControlPlane};

    let cp =
        ControlPlane::start(&support::run_dir().join(sitecache_devtools::unique_name("versions")))
            .await
            .unwrap_or_else(|e| panic!("the control plane did not start: {e:#}"));
    let client = cp.client().await.unwrap();
    control_plane::install_crds(&client, &support::repo_path("crds"))
        .await
        .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let apply = |crd: CustomResourceDefinition| {
        let crds = crds.clone();
        async move {
            crds.patch(
                "sitecaches.sitecache.dev",
                &PatchParams::apply("release").force(),
                &Patch::Apply(&crd),
            )
            .await
        }
    };
    let stored = || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("sitecaches.sitecache.dev").await.unwrap();
            crd.status.unwrap().stored_versions.unwrap_or_default()
        }
    };
    let version = |v: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("sitecache.dev", v, "SiteCache"),
            "sitecaches",
        )
    };
    let mut written = Vec::new();
    for ns in ["shops", "outlets"] {
        written.push(control_plane::create_namespace(&client, ns).await.unwrap());
    }
    for (i, ns) in written.iter().enumerate() {
        let api = dynamic_api(&client, ns);
        for name in ["a", "b"] {
            api.create(
                &PostParams::default(),
                &object(name, spec_with("source.revision", json!(format!("r{i}")))),
            )
            .await
            .unwrap();
            api.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"url": format!("s3://b/{name}/"), "latestGeneration": 7}}),
                ),
            )
            .await
            .unwrap();
        }
    }

    // The next release: both served, v1beta1 stored.
    let next = sitecache::api::crd_serving(&["v1alpha1", "v1beta1"], "v1beta1").unwrap();
    apply(next).await.unwrap();
    assert_eq!(stored().await, ["v1alpha1", "v1beta1"]);
    let beta_of =
        |ns: &str| Api::<DynamicObject>::namespaced_with(client.clone(), ns, &version("v1beta1"));
    let read = beta_of(&written[0]).get("a").await.unwrap();
    assert_eq!(
        read.types.as_ref().unwrap().api_version,
        "sitecache.dev/v1beta1"
    );
    // The one after: v1alpha1 is refused while it may still be stored.
    let last = sitecache::api::crd_serving(&["v1beta1"], "v1beta1").unwrap();
    let refused = apply(last.clone())
        .await
        .expect_err("v1alpha1 is still recorded as stored");
    assert!(refused.to_string().contains("storedVersions"), "{refused}");

    // The migration, through kubectl.
    let kubectl = Asset::Kubectl.path().expect("kubectl (make test-assets)");
    let plugin_dir = support::run_dir().join(sitecache_devtools::unique_name("plugin"));
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_sitecache"),
        plugin_dir.join("kubectl-sitecache"),
    )
    .unwrap();
    let out = std::process::Command::new(kubectl)
        .args(["sitecache", "migrate-storage"])
        .env(
            "PATH",
            format!(
                "{}:{}",
                plugin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("KUBECONFIG", cp.kubeconfig())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Wrote 4 SiteCaches in v1beta1"), "{stdout}");
    assert_eq!(stored().await, ["v1beta1"]);

    // Now v1alpha1 can go, and every object reads as it was.
    apply(last).await.unwrap();
    for (i, ns) in written.iter().enumerate() {
        for name in ["a", "b"] {
            let sc = beta_of(ns).get(name).await.unwrap();
            assert_eq!(sc.data["spec"]["source"]["revision"], format!("r{i}"));
            assert_eq!(sc.data["status"]["url"], format!("s3://b/{name}/"));
            assert_eq!(sc.data["status"]["latestGeneration"], 7);
        }
    }
}
