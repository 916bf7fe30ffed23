//! `kubectl sitecache`, run by the real kubectl (plugin discovery on PATH) against the real
//! control plane, a running controller and MinIO: each command's output is checked line by line.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::json;
use sitecache_devtools::assets::Asset;

use crate::controller::harness::{Harness, Options, warm};
use crate::support;

/// A directory on PATH with the plugin's two names linked to the sitecache binary.
fn plugin_dir(h: &Harness) -> PathBuf {
    let dir = h.dir.join("plugin-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["kubectl-sitecache", "kubectl_complete-sitecache"] {
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sitecache"), &link).unwrap();
        }
    }
    dir
}

/// Runs `kubectl ARGS` as a user would: the plugin found on PATH, the kubeconfig from
/// KUBECONFIG, storage settings from the AWS environment.
async fn kubectl(h: &Harness, args: &[&str]) -> Output {
    kubectl_with(h, args, &[]).await
}

/// [`kubectl`], with more environment (after the storage settings).
async fn kubectl_with(h: &Harness, args: &[&str], env: &[(&str, &str)]) -> Output {
    let kubectl = Asset::Kubectl.path().expect("kubectl (make test-assets)");
    let path = format!(
        "{}:{}",
        plugin_dir(h).display(),
        std::env::var("PATH").unwrap_or_default()
    );
    tokio::process::Command::new(kubectl)
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", support::kubeconfig_path())
        .envs(h.s3().aws_env())
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run kubectl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "failed ({}):\n{}\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out).lines().map(str::to_owned).collect()
}

/// The cells of a table line (columns are at least three spaces apart).
fn cells(line: &str) -> Vec<&str> {
    line.split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sitecache_snapshots_lists_restores_and_reports_the_fleet() {
    // Failed snapshots wait an hour before the next scheduled one: only requests run them.
    let h = Harness::start(Options {
        failure_backoff: "1h",
        ..Options::default()
    })
    .await;
    let ns = h.ns.as_str();
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 4), "source": {"revision": "r1"},
               "schedule": {"maxAge": "24h"}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;

    // snapshot --wait: the request, then the generation it promoted.
    let out = kubectl(
        &h,
        &[
            "sitecache",
            "snapshot",
            "shop",
            "-n",
            ns,
            "--wait",
            "--timeout",
            "2m",
        ],
    )
    .await;
    let lines = ok(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let request = lines[0]
        .strip_prefix(&format!(
            "Requested a snapshot of SiteCache {ns}/shop (request "
        ))
        .and_then(|r| r.strip_suffix(")."))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(request.starts_with("kubectl-"), "{request}");
    let sc = h.api().get("shop").await.unwrap();
    let status = sc.status.unwrap();
    assert_eq!(status.last_handled_request.as_deref(), Some(request));
    let current = status.current.unwrap();
    assert_eq!(current.generation, 2);
    assert_eq!(
        lines[1],
        format!(
            "Generation 2 promoted (Job shop-g2, {} files, {}).",
            current.files,
            bytesize::ByteSize(current.size_bytes).display().iec()
        )
    );

    // generations: newest first, the current one marked.
    let lines = ok(&kubectl(&h, &["sitecache", "generations", "shop", "-n", ns]).await);
    assert_eq!(
        cells(&lines[0]),
        [
            "GENERATION",
            "CURRENT",
            "SIZE",
            "UNPACKED",
            "FILES",
            "AGE",
            "REVISION"
        ]
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, n) in lines[1..].iter().zip([2u64, 1]) {
        let c = cells(line);
        assert_eq!(c[0], n.to_string(), "{line}");
        let g = status
            .generations
            .iter()
            .find(|g| g.generation == n)
            .unwrap();
        let current_cell = if n == 2 { vec!["yes"] } else { vec![] };
        let expected: Vec<String> = [n.to_string()]
            .into_iter()
            .chain(current_cell.into_iter().map(str::to_owned))
            .chain([
                bytesize::ByteSize(g.size_bytes).display().iec().to_string(),
                bytesize::ByteSize(g.uncompressed_bytes)
                    .display()
                    .iec()
                    .to_string(),
                g.files.to_string(),
            ])
            .collect();
        assert_eq!(c[..expected.len()], expected, "{line}");
        assert!(
            c[expected.len()].ends_with('s'),
            "an age in seconds: {line}"
        );
        assert_eq!(c[expected.len() + 1], "r1", "{line}");
    }

    // restore: the current generation into a directory, with the status's URL.
    let dest = h.dir.join("restored");
    let out = kubectl(
        &h,
        &[
            "sitecache",
            "restore",
            "shop",
            "-n",
            ns,
            "--dest",
            dest.to_str().unwrap(),
            "--path-style",
        ],
    )
    .await;
    let lines = ok(&out);
    let prefix = format!(
        "Restored generation 2 of SiteCache {ns}/shop into {}: ",
        dest.display()
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with(&prefix), "{lines:?}");
    assert!(
        lines[0].contains(&format!(" {} files, ", current.files)),
        "{lines:?}"
    );
    assert!(dest.join("warmed").is_file() && dest.join("deps/m4.js").is_file());
    // Each generation's warm step wrote its own time into its modules.
    let module_of_2 = std::fs::read_to_string(dest.join("deps/m1.js")).unwrap();
    // --generation: a retained one, replacing the tree.
    let out = kubectl(
        &h,
        &[
            "sitecache",
            "restore",
            "shop",
            "-n",
            ns,
            "--dest",
            dest.to_str().unwrap(),
            "--path-style",
            "--generation",
            "1",
        ],
    )
    .await;
    assert!(ok(&out)[0].starts_with(&format!("Restored generation 1 of SiteCache {ns}/shop")));
    let module_of_1 = std::fs::read_to_string(dest.join("deps/m1.js")).unwrap();
    assert_ne!(
        module_of_1, module_of_2,
        "generation 1's tree replaced generation 2's"
    );

    // A SiteCache that fails: snapshot --wait exits non-zero and says why.
    h.create(
        "broken",
        json!({"site": "broken", "warm": {"image": "site:test", "command": ["sh", "-c", "echo no registry >&2; exit 3"]},
               "snapshot": {"backoffLimit": 0}}),
    )
    .await;
    let out = kubectl(
        &h,
        &[
            "sitecache",
            "snapshot",
            "broken",
            "-n",
            ns,
            "--wait",
            "--timeout",
            "2m",
        ],
    )
    .await;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).starts_with(&format!("Requested a snapshot of SiteCache {ns}/broken")),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "error: the snapshot of SiteCache {ns}/broken failed (generation "
        )),
        "{err}"
    );
    assert!(err.contains("BackoffLimitExceeded"), "{err}");

    // status: counts, the stalest, the failing one.
    let sc = h.api().get("broken").await.unwrap();
    let degraded = sc
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
        .cloned()
        .unwrap();
    let lines = ok(&kubectl(&h, &["sitecache", "status", "-n", ns]).await);
    assert_eq!(
        lines[0],
        format!("SiteCaches: 2 in namespace {ns}"),
        "{lines:?}"
    );
    assert_eq!(
        lines[1], "Freshness: Fresh 1, Stale 0, Missing 1",
        "{lines:?}"
    );
    assert_eq!(lines[2], "Phase: Ready 1, Failed 1", "{lines:?}");
    assert_eq!(
        lines[3], "Snapshot Jobs: 0 running, 0 waiting for a slot",
        "{lines:?}"
    );
    assert_eq!(lines[4], "");
    assert_eq!(lines[5], "Stalest caches:");
    assert_eq!(
        cells(&lines[6]),
        ["NAME", "GENERATION", "AGE", "FRESHNESS", "WHY"]
    );
    assert_eq!(
        cells(&lines[7])[..4],
        ["broken", "-", "-", "Missing"],
        "{lines:?}"
    );
    assert_eq!(cells(&lines[8])[..2], ["shop", "2"], "{lines:?}");
    assert_eq!(lines[9], "");
    assert_eq!(lines[10], "Degraded:");
    assert_eq!(cells(&lines[11]), ["NAME", "REASON", "SINCE", "MESSAGE"]);
    let row = cells(&lines[12]);
    assert_eq!(
        (row[0], row[1]),
        ("broken", degraded.reason.as_str()),
        "{lines:?}"
    );
    assert_eq!(row[3], degraded.message, "{lines:?}");
    assert_eq!(lines.len(), 13, "{lines:?}");

    // Errors name what is wrong.
    let out = kubectl(&h, &["sitecache", "generations", "nope", "-n", ns]).await;
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: SiteCache nope not found in namespace {ns} (kubectl get scache -n {ns} lists them)"
        )
    );
    let out = kubectl(&h, &["sitecache", "restore", "shop", "-n", ns]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--dest <DIR>"), "{}", stderr(&out));

    // kubectl's own completion reaches the plugin's: commands, then SiteCache names.
    let lines = ok(&kubectl(&h, &["__complete", "sitecache", "gen"]).await);
    assert!(lines[0].starts_with("generations\t"), "{lines:?}");
    let lines = ok(&kubectl(&h, &["__complete", "sitecache", "snapshot", "-n", ns, ""]).await);
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.as_str())
        .take_while(|l| !l.starts_with(':'))
        .collect();
    assert_eq!(names, ["broken", "shop"], "{lines:?}");
    h.shutdown().await;
}

#[test]
fn completion_scripts_name_both_binaries() {
    let bin = Path::new(env!("CARGO_BIN_EXE_sitecache"));
    let out = std::process::Command::new(bin)
        .args(["completion", "bash"])
        .output()
        .unwrap();
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && script.contains("complete -F _sitecache"),
        "{script}"
    );
    assert!(
        script.contains("restore") && script.contains("--max-unpacked-bytes"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("kubectl-sitecache");
    std::os::unix::fs::symlink(bin, &link).unwrap();
    let out = std::process::Command::new(&link)
        .args(["completion", "zsh"])
        .output()
        .unwrap();
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && script.starts_with("#compdef kubectl-sitecache"),
        "{script}"
    );
    assert!(script.contains("generations"), "{script}");
    let out = std::process::Command::new(&link)
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'tcsh' for '<SHELL>'"));
}

/// `kubectl sitecache restore NAME` into `dest`, the user's own default store (`AWS_ENDPOINT_URL_S3`)
/// being `elsewhere`.
async fn restore_as(
    h: &Harness,
    name: &str,
    dest: &Path,
    elsewhere: &str,
    more: &[&str],
) -> Output {
    let ns = h.ns.as_str();
    let mut args = vec![
        "sitecache",
        "restore",
        name,
        "-n",
        ns,
        "--dest",
        dest.to_str().unwrap(),
    ];
    args.extend(["--path-style", "--timeout", "5s"]);
    args.extend(more);
    kubectl_with(h, &args, &[("AWS_ENDPOINT_URL_S3", elsewhere)]).await
}

/// The plugin signs requests with the user's own credentials: it sends them to the endpoint the
/// controller accepted (`status.endpoint`) or to the user's `--endpoint`, never to whatever a
/// namespace editor writes into `spec.storage.endpoint` (an earlier build sent them there), and
/// says where before it connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_sends_credentials_only_where_the_controller_or_the_user_chose() {
    let mut h = Harness::start(Options::default()).await;
    let store = h.s3().endpoint();
    // Something that counts who connects to it.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://127.0.0.1:{}/", trap.local_addr().unwrap().port());
    let nobody_came = |trap: &std::net::TcpListener| matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    let dest = h.dir.join("restored");

    // An endpoint the controller accepted: there, whatever the user's environment says.
    h.create(
        "named",
        json!({"site": "named", "warm": warm("", 2), "storage": {"endpoint": store}}),
    )
    .await;
    let sc = h.wait_promoted("named", 1).await;
    assert_eq!(sc.status.unwrap().endpoint.as_deref(), Some(store.as_str()));
    let out = restore_as(&h, "named", &dest, &trap_url, &[]).await;
    ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("Connecting to {store} (status.endpoint"))
            && err.contains("plain http"),
        "{err}"
    );
    assert!(dest.join("warmed").is_file());
    assert!(nobody_came(&trap));

    // A spec that names an endpoint the controller has not accepted, with a location in its
    // status (a controller of an earlier version wrote none of `status.endpoint`; or it refused
    // the endpoint once its allow-list changed): refused, nothing sent there.
    h.stop_controller();
    h.create(
        "open",
        json!({"site": "open", "warm": warm("", 2), "storage": {"endpoint": trap_url}}),
    )
    .await;
    let url = format!("s3://{}/open/", h.bucket);
    h.api()
        .patch_status(
            "open",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"url": url}})),
        )
        .await
        .unwrap();
    let out = restore_as(&h, "open", &dest, &trap_url, &["--generation", "1"]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&trap_url) && err.contains("has not accepted") && err.contains("--endpoint"),
        "{err}"
    );
    assert!(
        nobody_came(&trap),
        "the plugin connected to spec.storage.endpoint"
    );
    // Told where by the user: there (and nothing is there).
    let out = restore_as(
        &h,
        "open",
        &dest,
        &trap_url,
        &["--generation", "1", "--endpoint", &store],
    )
    .await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("Connecting to {store} (--endpoint)")),
        "{err}"
    );
    assert!(err.contains("not committed"), "{err}");
    h.shutdown().await;
}

/// A store behind a private CA: the plugin refuses its certificate, saying so, until the user
/// gives the CA (`--ca-bundle`, or `SITECACHE_CA_BUNDLE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_trusts_a_private_ca_given_with_ca_bundle() {
    let ca = support::private_store().await.ca_file.display().to_string();
    let h = Harness::start(Options {
        private_ca: true,
        extra_args: vec!["--ca-bundle".into(), ca.clone()],
        ..Options::default()
    })
    .await;
    h.create("shop", json!({"site": "shop", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("shop", 1).await;
    let store = h.s3().endpoint();
    let dest = h.dir.join("restored");

    let out = restore_as(&h, "shop", &dest, &store, &[]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("untrusted-certificate")
            && err.contains("the storage endpoint's certificate is not trusted (unknown issuer)"),
        "{err}"
    );
    assert!(!dest.exists());

    ok(&restore_as(&h, "shop", &dest, &store, &["--ca-bundle", &ca]).await);
    assert!(dest.join("warmed").is_file());
    let again = h.dir.join("again");
    let args = [
        "sitecache",
        "restore",
        "shop",
        "-n",
        &h.ns,
        "--dest",
        again.to_str().unwrap(),
        "--path-style",
    ];
    ok(&kubectl_with(&h, &args, &[("SITECACHE_CA_BUNDLE", &ca)]).await);
    assert!(again.join("warmed").is_file());
    h.shutdown().await;
}

/// `suspend` and `resume` set `spec.suspend` by name, label selector or all, and say what each
/// SiteCache was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_by_name_selector_or_all() {
    let h = Harness::start(Options {
        start_controller: false,
        ..Options::default()
    })
    .await;
    let ns = h.ns.as_str();
    for (name, tier) in [("a", "canary"), ("b", "canary"), ("c", "main")] {
        h.create(name, json!({"site": name, "warm": warm("", 1)}))
            .await;
        h.api()
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"metadata": {"labels": {"tier": tier}}})),
            )
            .await
            .unwrap();
    }
    let suspended = || async {
        let mut names = Vec::new();
        for sc in h.api().list(&Default::default()).await.unwrap() {
            if sc.spec.suspend {
                names.push(sc.metadata.name.unwrap());
            }
        }
        names.sort();
        names
    };
    let lines = ok(&kubectl(&h, &["sitecache", "suspend", "-n", ns, "-l", "tier=canary"]).await);
    assert_eq!(
        lines,
        [
            format!("SiteCache {ns}/a suspended."),
            format!("SiteCache {ns}/b suspended.")
        ]
    );
    assert_eq!(suspended().await, ["a", "b"]);
    let lines = ok(&kubectl(&h, &["sitecache", "suspend", "-n", ns, "b", "c"]).await);
    assert_eq!(
        lines,
        [
            format!("SiteCache {ns}/b was suspended already."),
            format!("SiteCache {ns}/c suspended.")
        ]
    );
    ok(&kubectl(&h, &["sitecache", "resume", "-n", ns, "--all"]).await);
    assert!(suspended().await.is_empty());
    let out = kubectl(&h, &["sitecache", "suspend", "-n", ns, "nosuch"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("SiteCache nosuch not found"),
        "{}",
        stderr(&out)
    );
    let out = kubectl(&h, &["sitecache", "suspend", "-n", ns]).await;
    assert!(!out.status.success(), "no names, no selector, no --all");
    h.shutdown().await;
}

/// The rollback: `promote --generation N` pins a retained generation, which the controller
/// promotes (`current.json` names it: what runners restore) and holds: a revision change starts
/// nothing, an on-demand snapshot is verified and kept but not promoted, retention keeps it.
/// `unpin` lets the schedule go on from it. A generation that is not retained is refused by
/// the plugin, and by the controller when the spec names it anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_pins_a_retained_generation_and_unpin_lets_it_go() {
    let h = Harness::start(Options::default()).await;
    let ns = h.ns.as_str();
    let minute = std::time::Duration::from_secs(60);
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 2), "source": {"revision": "r1"},
               "retention": {"keep": 2}}),
    )
    .await;
    h.wait_promoted("shop", 1).await;
    for (rev, n) in [("r2", 2), ("r3", 3)] {
        h.patch("shop", json!({"spec": {"source": {"revision": rev}}}))
            .await;
        h.wait_promoted("shop", n).await;
    }
    let current_json = async || {
        let bytes = h.get("shop/current.json").await.expect("current.json");
        let c: sitecache::archive::Current = serde_json::from_slice(&bytes).unwrap();
        c.manifest.generation
    };
    assert_eq!(current_json().await, 3);

    // Generation 1 went with retention (keep 2): not retained, refused before anything changes.
    let out = kubectl(
        &h,
        &[
            "sitecache",
            "promote",
            "-n",
            ns,
            "shop",
            "--generation",
            "1",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("generation 1 of SiteCache")
            && stderr(&out).contains("(retained: 3, 2)"),
        "{}",
        stderr(&out)
    );
    assert!(h.api().get("shop").await.unwrap().spec.pin.is_none());

    let lines = ok(&kubectl(
        &h,
        &[
            "sitecache",
            "promote",
            "-n",
            ns,
            "shop",
            "--generation",
            "2",
        ],
    )
    .await);
    assert_eq!(
        lines,
        [
            format!("SiteCache {ns}/shop pinned to generation 2."),
            "Generation 2 promoted: runners restore it from their next start. Nothing is \
             promoted over it until `kubectl sitecache unpin shop`."
                .to_owned(),
        ]
    );
    assert_eq!(
        current_json().await,
        2,
        "current.json names the pinned generation"
    );
    let sc = h.api().get("shop").await.unwrap();
    assert_eq!(
        crate::controller::harness::condition_reason(&sc, "Progressing"),
        Some("Pinned")
    );
    assert!(h.event_reasons("shop").await.iter().any(|r| r == "Pinned"));
    let listed = ok(&kubectl(&h, &["sitecache", "generations", "-n", ns, "shop"]).await);
    assert!(
        listed[2].starts_with("2") && listed[2].contains("pinned"),
        "{listed:?}"
    );

    // A revision change starts nothing under the pin.
    h.patch("shop", json!({"spec": {"source": {"revision": "r4"}}}))
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        h.jobs().get_opt("shop-g4").await.unwrap().is_none(),
        "a Job started under the pin"
    );

    // A request runs: generation 4 is verified and kept, not promoted; 2 stays, as does 3.
    h.request_snapshot("shop", "try-a-fix").await;
    let sc = h
        .wait(
            "shop",
            "with generation 4 verified and kept",
            minute,
            |sc| {
                sc.status.as_ref().is_some_and(|s| {
                    s.last_handled_request.as_deref() == Some("try-a-fix")
                        && s.last_snapshot.as_ref().and_then(|l| l.reason.as_deref())
                            == Some("Verified")
                })
            },
        )
        .await;
    let status = sc.status.unwrap();
    assert_eq!(status.current.as_ref().map(|c| c.generation), Some(2));
    let retained: Vec<u64> = status.generations.iter().map(|g| g.generation).collect();
    assert_eq!(retained, [4, 3, 2]);
    assert_eq!(current_json().await, 2);
    assert_eq!(h.stored_generations("shop/").await, [2, 3, 4]);

    // A pin the controller cannot serve (written past the plugin): refused, nothing changes.
    h.patch("shop", json!({"spec": {"pin": {"generation": 1}}}))
        .await;
    let sc = h
        .wait("shop", "refusing the pin", minute, |sc| {
            crate::controller::harness::condition_reason(sc, "Degraded") == Some("InvalidPin")
        })
        .await;
    assert_eq!(crate::controller::harness::current(&sc), Some(2));
    assert_eq!(current_json().await, 2);

    // Forward to 4, then unpin: 4 stays current, and the schedule goes on from it (r4's
    // generation 4 is current: nothing is due).
    ok(&kubectl(
        &h,
        &[
            "sitecache",
            "promote",
            "-n",
            ns,
            "shop",
            "--generation",
            "4",
        ],
    )
    .await);
    assert_eq!(current_json().await, 4);
    let lines = ok(&kubectl(&h, &["sitecache", "unpin", "-n", ns, "shop"]).await);
    assert_eq!(
        lines,
        [format!(
            "SiteCache {ns}/shop unpinned: generation 4 stays current until the next snapshot \
             replaces it."
        )]
    );
    h.patch("shop", json!({"spec": {"source": {"revision": "r5"}}}))
        .await;
    let sc = h.wait_promoted("shop", 5).await;
    let retained: Vec<u64> = sc
        .status
        .unwrap()
        .generations
        .iter()
        .map(|g| g.generation)
        .collect();
    assert_eq!(retained, [5, 4]);
    h.shutdown().await;
}

/// `logs` prints what the controller kept of a generation's Job in the bucket, the most recent
/// snapshot's by default. The fast tier's job runner has no kubelet to serve containers' logs,
/// so here each container says why its log is missing; the real node's scenario
/// (`cluster::undeclared_user`) checks the logs themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_show_what_the_controller_kept_of_a_generations_job() {
    let h = Harness::start(Options {
        failure_backoff: "1h",
        ..Options::default()
    })
    .await;
    let ns = h.ns.as_str();
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("echo 'npm registry unreachable' >&2; exit 3", 2),
               "snapshot": {"backoffLimit": 0}}),
    )
    .await;
    h.wait(
        "shop",
        "failed once",
        std::time::Duration::from_secs(60),
        |sc| {
            sc.status
                .as_ref()
                .is_some_and(|s| s.consecutive_failures == 1)
        },
    )
    .await;
    let lines = ok(&kubectl(&h, &["sitecache", "logs", "-n", ns, "shop"]).await);
    assert!(
        lines[0].starts_with(
            "Generation 1, Job shop-g1: Failed (BackoffLimitExceeded): Job shop-g1 failed"
        ),
        "{lines:#?}"
    );
    // Generation 1 restores nothing first: warm, then snapshot, which never started.
    let headers: Vec<&String> = lines.iter().filter(|l| l.starts_with("==> ")).collect();
    assert_eq!(headers.len(), 2, "{lines:#?}");
    assert!(
        headers[0].contains("container warm (exit 3 (Error))")
            && headers[1].contains("container snapshot (waiting (PodInitializing))"),
        "{headers:?}"
    );
    assert!(
        lines.contains(&"(no log: the container did not start)".to_owned()),
        "{lines:#?}"
    );
    let out = kubectl(
        &h,
        &["sitecache", "logs", "-n", ns, "shop", "--generation", "9"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no logs are kept for generation 9 of SiteCache"),
        "{}",
        stderr(&out)
    );
    h.shutdown().await;
}
