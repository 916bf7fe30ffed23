//! A Deno site in a namespace that enforces Pod Security `restricted`: generations warmed by
//! Deno from real `npm:` packages (the second as uid 1000 on top of `restore-previous`, the
//! third by serving the site), and runner pods that serve the site from the restored cache
//! alone.

use sitecache_devtools::assets::pinned_version;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deno_site_in_a_restricted_namespace() {
    let s = Scenario::new("deno").await;
    s.enforce_restricted().await;
    let images = s.node().images().clone();
    // The warm step reaches the npm registry through the proxy; nothing else leaves the node.
    let proxy = ConnectProxy::start(&PACKAGE_REGISTRIES).await.unwrap();
    let proxy_in_node = s.node().forward(proxy.addr()).unwrap();
    let site = "storefront";
    s.storage_secret("snapshot-storage", snapshot_policy(&s.bucket, site))
        .await;
    s.storage_secret("runner-storage", runner_policy(&s.bucket, site))
        .await;

    // Generation 1: the site's image caches main.ts's npm: imports as its user, 1000, declared
    // so that the pod is admitted (the agents then run as 1000 too).
    let warm_env = json!([
        {"name": "HTTPS_PROXY", "value": format!("http://{proxy_in_node}")},
        {"name": "NO_COLOR", "value": "1"},
    ]);
    s.create(
        site,
        json!({
            "site": site,
            "storage": {"bucket": s.bucket},
            "source": {"revision": "storefront-deps-1"},
            "warm": {
                "image": images.site,
                "command": ["deno", "cache", "/site/main.ts"],
                "env": warm_env,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000},
            },
            "snapshot": {
                "minFiles": 50,
                "timeout": "5m",
                "backoffLimit": 0,
                "credentialsSecret": {"name": "snapshot-storage"},
            },
        }),
    )
    .await;
    let sc = s.wait_promoted(site, 1, Duration::from_secs(240)).await;
    let first = sc.status.as_ref().unwrap().current.clone().unwrap();
    let url = sc.status.as_ref().unwrap().url.clone().unwrap();
    // The real Job controller ran the Job to completion, its pod on the node.
    let job = s.jobs().get(&format!("{site}-g1")).await.unwrap();
    let complete = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        });
    let pod = s.job_pod(site, 1).await;
    if !complete || pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(NODE_NAME) {
        s.fail(&format!(
            "Job {site}-g1: {:?}; its pod: {:?}",
            job.status,
            pod.spec.as_ref().and_then(|s| s.node_name.clone())
        ))
        .await;
    }
    let warm_log = s.log(&pod, "warm").await;
    ensure!(
        s,
        warm_log.contains("Download https://registry.npmjs.org/preact"),
        "the warm step did not download preact: {warm_log}"
    );

    // A runner pod: an init container restores the generation into an emptyDir, then the site
    // runs from it alone (--cached-only), both admitted under `restricted`. The restore runs as
    // the agent image's user (65532), the site as its own (1000): it only reads the tree.
    let runner = |name: &str, extra: Vec<Value>| {
        let mut containers = vec![json!({
            "name": "site",
            "image": images.site,
            "imagePullPolicy": "Never",
            "args": ["run", "--cached-only", "/site/main.ts"],
            "env": [{"name": "DENO_DIR", "value": DENO_DIR}, {"name": "NO_COLOR", "value": "1"}],
            "volumeMounts": [{"name": "deno-dir", "mountPath": DENO_DIR}],
            "securityContext": restricted(),
        })];
        containers.extend(extra);
        json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "initContainers": [{
                    "name": "restore",
                    "image": images.agent,
                    "imagePullPolicy": "Never",
                    "args": ["restore", "--strict", "--url", url, "--dest", DENO_DIR],
                    "env": s.agent_env("runner-storage"),
                    "volumeMounts": [{"name": "deno-dir", "mountPath": DENO_DIR}],
                    "securityContext": restricted(),
                }],
                "containers": containers,
                "volumes": [{"name": "deno-dir", "emptyDir": {}}],
            },
        })
    };
    let pod = s
        .run_pod(runner("runner-g1", vec![]), Duration::from_secs(120))
        .await;
    let restored = s.log(&pod, "restore").await;
    let page = s.log(&pod, "site").await;
    if !restored.contains("\"generation\":1") || !page.contains("<h1>Storefront</h1>") {
        s.fail(&format!(
            "the runner did not serve the storefront from generation 1:\nrestore: {restored}\nsite: {page}"
        ))
        .await;
    }

    // Generation 2 warms on top of generation 1: restore-previous fills the cache as 1000 and
    // the warm step, as 1000, adds a package into that tree.
    s.request_snapshot(
        site,
        "second",
        json!({"warm": {"command": ["deno", "cache", "/site/main.ts", "npm:is-number@7.0.0"]}}),
    )
    .await;
    let sc = s.wait_promoted(site, 2, Duration::from_secs(240)).await;
    let second = sc.status.as_ref().unwrap().current.clone().unwrap();
    ensure_eq!(s, second.base_generation, Some(1), "{second:?}");
    ensure!(s, second.files > first.files, "{first:?} then {second:?}");
    let pod = s.job_pod(site, 2).await;
    ensure_eq!(s, run_as_user(&pod, "restore-previous"), Some(1000));
    ensure_eq!(s, run_as_user(&pod, "warm"), Some(1000));
    ensure_eq!(s, run_as_user(&pod, "snapshot"), Some(1000));
    let warm_log = s.log(&pod, "warm").await;
    // What generation 1 held came from restore-previous: only the new package was downloaded.
    if !warm_log.contains("Download https://registry.npmjs.org/is-number")
        || warm_log.contains("Download https://registry.npmjs.org/preact")
    {
        s.fail(&format!(
            "generation 2's warm step did not warm on top of generation 1: {warm_log}"
        ))
        .await;
    }
    let check = "const { default: isNumber } = await import('npm:is-number@7.0.0'); \
                 console.log(`is-number: ${isNumber(42)}`);";
    let pod = s
        .run_pod(
            runner(
                "runner-g2",
                vec![json!({
                    "name": "added",
                    "image": images.site,
                    "imagePullPolicy": "Never",
                    "args": ["eval", "--cached-only", check],
                    "env": [{"name": "DENO_DIR", "value": DENO_DIR}, {"name": "NO_COLOR", "value": "1"}],
                    "volumeMounts": [{"name": "deno-dir", "mountPath": DENO_DIR}],
                    "securityContext": restricted(),
                })],
            ),
            Duration::from_secs(120),
        )
        .await;
    let restored = s.log(&pod, "restore").await;
    let page = s.log(&pod, "site").await;
    let added = s.log(&pod, "added").await;
    if !restored.contains("\"generation\":2")
        || !page.contains("<h1>Storefront</h1>")
        || !added.contains("is-number: true")
    {
        s.fail(&format!(
            "the runner did not run from generation 2:\nrestore: {restored}\nsite: {page}\nadded: {added}"
        ))
        .await;
    }

    // Generation 3 is warmed by serving the site (spec.warm.serve): the agent, put in the warm
    // container by an init container, starts the storefront's server as uid 1000, requests a
    // product page, whose section the site imports by a computed specifier (npm:marked, which
    // no `deno cache` of main.ts sees), and stops it with SIGTERM.
    s.request_snapshot(
        site,
        "served",
        json!({"warm": {
            "command": ["deno", "run", "--allow-net", "--allow-read", "/site/main.ts", "--port", "8000"],
            "serve": {"port": 8000, "paths": ["/", "/product/TEE-01"], "timeout": "3m"},
        }}),
    )
    .await;
    let sc = s.wait_promoted(site, 3, Duration::from_secs(240)).await;
    let pod = s.job_pod(site, 3).await;
    ensure_eq!(s, run_as_user(&pod, "install-agent"), Some(1000));
    let warm_log = s.log(&pod, "warm").await;
    ensure!(
        s,
        warm_log.contains("Download https://registry.npmjs.org/marked")
            && warm_log.contains("\"path\":\"/product/TEE-01\",\"status\":200"),
        "generation 3's warm step did not serve the product page: {warm_log}"
    );
    let third = sc.status.as_ref().unwrap().current.clone().unwrap();
    ensure!(s, third.files > second.files);
    // The runtime that warmed it: the Deno its caches record, the image by digest.
    let deno = pinned_version("DENO_VERSION").unwrap();
    let runtime = third.runtime.clone().unwrap_or_default();
    ensure_eq!(s, runtime.deno.as_deref(), Some(deno), "{third:?}");
    ensure!(
        s,
        runtime
            .warm_image
            .as_deref()
            .is_some_and(|i| i.starts_with("sha256:")),
        "{third:?}"
    );
    // The section, and its npm package, load from the restored cache alone.
    let section = "const { render } = await import('/site/sections/product.ts'); \
                   console.log(`section: ${typeof render}`);";
    let pod = s
        .run_pod(
            runner(
                "runner-g3",
                vec![json!({
                    "name": "section",
                    "image": images.site,
                    "imagePullPolicy": "Never",
                    "args": ["eval", "--cached-only", section],
                    "env": [{"name": "DENO_DIR", "value": DENO_DIR}, {"name": "NO_COLOR", "value": "1"}],
                    "volumeMounts": [{"name": "deno-dir", "mountPath": DENO_DIR}],
                    "securityContext": restricted(),
                })],
            ),
            Duration::from_secs(120),
        )
        .await;
    let restored = s.log(&pod, "restore").await;
    let loaded = s.log(&pod, "section").await;
    if !restored.contains("\"generation\":3") || !loaded.contains("section: function") {
        s.fail(&format!(
            "the runner did not load the section from generation 3:\nrestore: {restored}\nsection: {loaded}"
        ))
        .await;
    }
    // Wake-ups on the node, both ways: a runner pod restores a generation, then serves the site
    // (a native sidecar, with the registry proxy for what the cache lacks) while a probe asks
    // for the product page until it answers. Printed (kubelet's log timestamps), not asserted.
    let wakeup = |name: &str, generation: u64| {
        let probe = "const end = Date.now() + 90000; while (Date.now() < end) { try { \
                     const r = await fetch('http://127.0.0.1:8000/product/TEE-01'); \
                     const body = await r.text(); if (r.ok) { console.log(`answered ${r.status}`); \
                     Deno.exit(0); } console.log(`${r.status}: ${body.slice(0, 200)}`); } \
                     catch { /* not listening yet */ } await new Promise((r) => setTimeout(r, 10)); } \
                     Deno.exit(1);";
        let env = json!([
            {"name": "DENO_DIR", "value": DENO_DIR},
            {"name": "NO_COLOR", "value": "1"},
            {"name": "HTTPS_PROXY", "value": format!("http://{proxy_in_node}")},
        ]);
        json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "initContainers": [
                    {
                        "name": "restore",
                        "image": images.agent,
                        "imagePullPolicy": "Never",
                        "args": ["restore", "--strict", "--url", url, "--dest", DENO_DIR,
                                 "--generation", generation.to_string()],
                        "env": s.agent_env("runner-storage"),
                        "volumeMounts": [{"name": "deno-dir", "mountPath": DENO_DIR}],
                        // As the site's user: the site adds what the cache lacks to the tree.
                        "securityContext": restricted_as(1000),
                    },
                    {
                        "name": "site",
                        "image": images.site,
                        "imagePullPolicy": "Never",
                        "restartPolicy": "Always",
                        "args": ["run", "--allow-net", "--allow-read", "/site/main.ts", "--port", "8000"],
                        "env": env,
                        "volumeMounts": [{"name": "deno-dir", "mountPath": DENO_DIR}],
                        "securityContext": restricted(),
                    },
                ],
                "containers": [{
                    "name": "probe",
                    "image": images.site,
                    "imagePullPolicy": "Never",
                    "args": ["eval", probe],
                    "env": [{"name": "DENO_DIR", "value": "/tmp/probe"}, {"name": "NO_COLOR", "value": "1"}],
                    "securityContext": restricted(),
                }],
                "volumes": [{"name": "deno-dir", "emptyDir": {}}],
            },
        })
    };
    // `2026-12-06T14:00:00.123456789Z stdout F …`: the time kubelet read the line that holds
    // `needle`.
    let logged_at = |log: &str, needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split(' ').next())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    // Three of each, alternating; medians (one pod's start on this node varies by a second).
    let mut samples: std::collections::BTreeMap<u64, Vec<(i128, i128, i64)>> = Default::default();
    for run in 0..3 {
        for generation in [2, 3] {
            let name = format!("wakeup-g{generation}-{run}");
            let created = jiff::Timestamp::now();
            let pod = s
                .run_pod(wakeup(&name, generation), Duration::from_secs(180))
                .await;
            let restored = s.log(&pod, "restore").await;
            let probed = s.log(&pod, "probe").await;
            let (Some(restore_end), Some(answered)) = (
                logged_at(&restored, "\"ok\":true"),
                logged_at(&probed, "answered 200"),
            ) else {
                s.fail(&format!(
                    "no wake-up in {name}:\nrestore: {restored}\nprobe: {probed}"
                ))
                .await
            };
            let restore_ms = restored
                .split("\"ms\":")
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|ms| ms.parse::<i64>().ok())
                .unwrap_or(0);
            let ms = |a: jiff::Timestamp, b: jiff::Timestamp| b.duration_since(a).as_millis();
            samples.entry(generation).or_default().push((
                ms(created, answered),
                ms(restore_end, answered),
                restore_ms,
            ));
        }
    }
    for (generation, mut runs) in samples {
        let how = if generation == 2 {
            "a deno cache warm"
        } else {
            "a warm that served the site"
        };
        let median = |runs: &mut Vec<(i128, i128, i64)>, k: usize| {
            let mut v: Vec<i128> = runs.iter().map(|r| [r.0, r.1, r.2 as i128][k]).collect();
            v.sort();
            v[v.len() / 2]
        };
        eprintln!(
            "wake-up on the node from {how} (generation {generation}), medians of 3: pod created \
             to the product page's first answer {} ms; the restore {} ms, its end to the answer {} \
             ms",
            median(&mut runs, 0),
            median(&mut runs, 2),
            median(&mut runs, 1)
        );
    }
    ensure!(
        s,
        proxy.tunnels() > 0,
        "no tunnel through the registry proxy"
    );
    // Its Jobs ran for seconds, looked at every second (the stall delay): containers waiting on
    // one another as kubelet reports them (`PodInitializing`), a pod between its success and
    // the Job's completion; never taken for stalled.
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    let listed = match events.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => s.fail(&format!("list the Events of {}: {e}", s.ns)).await,
    };
    let stalls: Vec<String> = listed
        .into_iter()
        .filter(|e| {
            e.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("SnapshotPod") || r.starts_with("SnapshotContainer"))
        })
        .map(|e| format!("{:?}: {:?}", e.reason, e.note))
        .collect();
    ensure!(s, stalls.is_empty(), "{stalls:?}");
    s.done("the Deno site in a restricted namespace");
}
