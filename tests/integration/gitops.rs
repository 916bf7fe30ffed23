//! What GitOps tools make of a SiteCache, computed with their own code (`gitops-status`, built
//! from cli-utils' kstatus and from gopher-lua, which runs Argo CD's health checks): the Argo CD
//! health check against its own tests, and both tools against SiteCaches the controller
//! reconciles on the real control plane, through a life of first snapshot, revision change,
//! failure, recovery and refusal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sitecache::api::SiteCache;
use sitecache_devtools::assets::Asset;

use crate::controller::harness::{Harness, Options, warm};

const MINUTE: Duration = Duration::from_secs(60);

fn check_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integrations/argocd/sitecache.dev/SiteCache")
}

/// `gitops-status ARGS < object`: the tool's answer, status and message.
fn gitops_status(args: &[&str], object: &[u8]) -> (String, String) {
    let tool = Asset::GitopsStatus
        .path()
        .expect("gitops-status (make test-assets)");
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gitops-status");
    child.stdin.take().unwrap().write_all(object).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gitops-status {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        answer["status"].as_str().unwrap().to_owned(),
        answer["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// kstatus's status of a SiteCache.
fn kstatus(sc: &SiteCache) -> String {
    gitops_status(&["kstatus"], &serde_json::to_vec(sc).unwrap()).0
}

/// Argo CD's health of a SiteCache, by the shipped check.
fn argo(sc: &SiteCache) -> (String, String) {
    let script = check_dir().join("health.lua");
    gitops_status(
        &["argocd", script.to_str().unwrap()],
        &serde_json::to_vec(sc).unwrap(),
    )
}

/// Both, as one string, for the waits' predicates and their failure messages.
fn both(sc: &SiteCache) -> String {
    format!("kstatus {}, Argo CD {}", kstatus(sc), argo(sc).0)
}

#[test]
fn the_argo_cd_health_check_passes_its_own_tests() {
    let dir = check_dir();
    let tests: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dir.join("health_test.yaml")).unwrap())
            .unwrap();
    let cases = tests["tests"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let script = dir.join("health.lua");
    for case in cases {
        let input = std::fs::read(dir.join(case["inputPath"].as_str().unwrap())).unwrap();
        let (status, message) = gitops_status(&["argocd", script.to_str().unwrap()], &input);
        let expected = &case["healthStatus"];
        assert_eq!(
            (status.as_str(), message.as_str()),
            (
                expected["status"].as_str().unwrap(),
                expected["message"].as_str().unwrap()
            ),
            "{}",
            case["inputPath"]
        );
    }
}

#[tokio::test]
async fn kstatus_and_argo_cd_follow_a_sitecache_through_its_life() {
    // Failures wait an hour: only a request retries them.
    let h = Harness::start(Options {
        failure_backoff: "1h",
        ..Options::default()
    })
    .await;
    let is = |want: &'static str| move |sc: &SiteCache| both(sc) == want;

    // The first generation: in progress while its Job runs (its warm step waits for a file).
    let gate = h.dir.join("gate");
    let hold = format!("while [ ! -e {} ]; do sleep 0.1; done", gate.display());
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm(&hold, 2), "source": {"revision": "a"}}),
    )
    .await;
    let snapshotting = |sc: &SiteCache| {
        let s = sc.status.as_ref();
        s.and_then(|s| s.observed_generation) == sc.metadata.generation
            && s.is_some_and(|s| s.active_job.is_some())
    };
    let sc = h.wait("shop", "snapshotting", MINUTE, snapshotting).await;
    assert_eq!(both(&sc), "kstatus InProgress, Argo CD Progressing");
    std::fs::write(&gate, "").unwrap();
    let sc = h
        .wait(
            "shop",
            "current",
            MINUTE,
            is("kstatus Current, Argo CD Healthy"),
        )
        .await;
    assert_eq!(argo(&sc).1, "generation 1 is promoted");

    // A new revision: in progress while its generation is made, though one is promoted and
    // Ready (kstatus alone would read Ready as Current). Its warm step then fails: failed, not
    // in progress for ever.
    let (gate, fail) = (h.dir.join("gate-b"), h.dir.join("fail"));
    let hold = format!(
        "while [ ! -e {gate} ]; do sleep 0.1; done; if [ -e {fail} ]; then echo registry unreachable; exit 3; fi",
        gate = gate.display(),
        fail = fail.display()
    );
    h.patch(
        "shop",
        json!({"spec": {"source": {"revision": "b"}, "warm": warm(&hold, 2)}}),
    )
    .await;
    let sc = h.wait("shop", "snapshotting b", MINUTE, snapshotting).await;
    assert_eq!(both(&sc), "kstatus InProgress, Argo CD Progressing");
    assert!(argo(&sc).1.contains("the source is at b"));
    std::fs::write(&fail, "").unwrap();
    std::fs::write(&gate, "").unwrap();
    let sc = h
        .wait(
            "shop",
            "failed",
            MINUTE,
            is("kstatus Failed, Argo CD Degraded"),
        )
        .await;
    let message = argo(&sc).1;
    assert!(
        message.contains("the source is at b") && message.contains("registry unreachable"),
        "{message}"
    );

    // Fixed and asked again: in progress until its generation is promoted, then current.
    h.patch("shop", json!({"spec": {"warm": warm("", 2)}}))
        .await;
    h.request_snapshot("shop", "retry").await;
    let sc = h
        .wait(
            "shop",
            "current again",
            MINUTE,
            is("kstatus Current, Argo CD Healthy"),
        )
        .await;
    let current = sc.status.as_ref().unwrap().current.as_ref().unwrap();
    assert_eq!(current.source_revision.as_deref(), Some("b"));

    // Suspended: Argo CD says so.
    h.patch("shop", json!({"spec": {"suspend": true}})).await;
    h.wait(
        "shop",
        "suspended",
        MINUTE,
        is("kstatus Current, Argo CD Suspended"),
    )
    .await;

    // Refused by the controller: failed at once.
    h.create(
        "elsewhere",
        json!({"site": "elsewhere", "warm": warm("", 2),
               "storage": {"endpoint": "http://127.0.0.1:9/"}}),
    )
    .await;
    let sc = h
        .wait(
            "elsewhere",
            "failed",
            MINUTE,
            is("kstatus Failed, Argo CD Degraded"),
        )
        .await;
    assert!(argo(&sc).1.contains("--allowed-endpoints"));
    h.shutdown().await;
}
