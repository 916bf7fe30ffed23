//! The real node (`sitecache_devtools::node`): kubelet, containerd and runc run pods from the
//! locally built images, kube-controller-manager's Job and TTL controllers run Jobs, all in the
//! node's own network namespace. A part that cannot start fails the test with its log.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use sitecache_devtools::node::{Node, NodeConfig};

use crate::support;

async fn start_node() -> Node {
    let dir = support::run_dir().join("node");
    let started = Instant::now();
    let node = Node::start(
        &dir,
        &NodeConfig {
            sitecache_bin: env!("CARGO_BIN_EXE_sitecache").into(),
            dockerfile: support::repo_path("Dockerfile"),
            other_agents: Vec::new(),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("the real node did not start: {e:#}"));
    eprintln!(
        "the real node was ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    node
}

/// Waits until the pod `name` has finished; returns it. Panics with the node's logs when it
/// does not finish within `timeout`.
async fn wait_pod_finished(node: &Node, pods: &Api<Pod>, name: &str, timeout: Duration) -> Pod {
    let deadline = Instant::now() + timeout;
    loop {
        let pod = pods.get(name).await.unwrap();
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return pod;
        }
        if Instant::now() > deadline {
            panic!(
                "pod {name} not finished within {}s: {:#?}\n{}",
                timeout.as_secs(),
                pod.status,
                node.log_tails()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The log kubelet wrote for `container` of `pod` (`<ns>_<pod>_<uid>/<container>/0.log`).
fn container_log(node: &Node, pod: &Pod, container: &str) -> String {
    let meta = &pod.metadata;
    let dir = node.pod_logs_dir().join(format!(
        "{}_{}_{}",
        meta.namespace.as_deref().unwrap(),
        meta.name.as_deref().unwrap(),
        meta.uid.as_deref().unwrap()
    ));
    std::fs::read_to_string(dir.join(container).join("0.log")).unwrap_or_else(|e| {
        panic!(
            "no log of {container} in {}: {e}",
            Path::new(&dir).display()
        )
    })
}

fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Restricted-profile security settings for a container of the local images.
fn restricted() -> serde_json::Value {
    json!({
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_jobs_run_on_the_real_node() {
    let test_started = Instant::now();
    let node = start_node().await;
    let client = node.client().await.unwrap();
    let ns = node.create_namespace("node").await.unwrap();
    let images = node.images().clone();

    // A pod from the agent image: the image's entrypoint, user 65532, a read-only root.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "agent-version" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "agent",
                "image": images.agent,
                // Never pull: the image was imported, and no registry is reachable.
                "imagePullPolicy": "Never",
                "args": ["--version"],
                "securityContext": restricted(),
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod = wait_pod_finished(&node, &pods, "agent-version", Duration::from_secs(180)).await;
    let status = pod.status.clone().unwrap();
    assert_eq!(
        status.phase.as_deref(),
        Some("Succeeded"),
        "{status:#?}\n{}",
        node.log_tails()
    );
    let pod_ip = status.pod_ip.clone().unwrap_or_default();
    assert!(
        pod_ip.starts_with("10.88."),
        "the pod's address {pod_ip} is not from the node's CNI bridge"
    );
    let log = container_log(&node, &pod, "agent");
    assert!(
        log.contains(&format!("sitecache {}", env!("CARGO_PKG_VERSION"))),
        "sitecache --version printed: {log}"
    );
    // The same through the API server, which reaches kubelet inside the namespace through the
    // node's CONNECT proxy (its egress selector): `kubectl logs`, then `kubectl exec`.
    let kubectl = |args: &[&str]| {
        let kubeconfig = format!("--kubeconfig={}", node.kubeconfig().display());
        let mut all = vec![kubeconfig.as_str(), "-n", ns.as_str()];
        all.extend_from_slice(args);
        let program = sitecache_devtools::assets::Asset::Kubectl.path().unwrap();
        let out = support::run_with_input(&program, &all, None);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            text(&out.stderr),
            node.log_tails()
        );
        text(&out.stdout)
    };
    let logs = kubectl(&["logs", "agent-version"]);
    assert_eq!(
        logs.trim(),
        format!("sitecache {}", env!("CARGO_PKG_VERSION"))
    );
    let sleeper: Pod = serde_json::from_value(json!({
        "metadata": { "name": "sleeper" },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "deno",
                "image": images.deno,
                "imagePullPolicy": "Never",
                "args": ["eval", "await new Promise((r) => setTimeout(r, 600_000))"],
                "env": [{ "name": "DENO_DIR", "value": "/work/deno-dir" }],
                "volumeMounts": [{ "name": "work", "mountPath": "/work" }],
                "securityContext": restricted(),
            }],
            "volumes": [{ "name": "work", "emptyDir": {} }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &sleeper).await.unwrap();
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/sleeper",
        "--timeout=60s",
    ]);
    let said = kubectl(&[
        "exec",
        "sleeper",
        "--",
        "deno",
        "eval",
        "console.log(Deno.uid())",
    ]);
    assert_eq!(said.trim(), "1000");
    kubectl(&["delete", "pod", "sleeper", "--wait=false"]);

    // A Job (run by the real Job controller) whose pod is the Deno image as uid 1000: it checks
    // its uid, that the API server answers at the `kubernetes` Service's address (TLS, its
    // service account's token) and MinIO at the address the node forwards it to, both inside
    // the node's network namespace. The TTL
    // controller deletes the Job once finished.
    let s3 = support::s3().await;
    let minio: std::net::SocketAddr = s3.endpoint().trim_start_matches("http://").parse().unwrap();
    let minio_in_node = node.forward(minio).unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let script = r#"
        if (Deno.uid() !== 1000) throw new Error(`running as uid ${Deno.uid()}`);
        const host = Deno.env.get("KUBERNETES_SERVICE_HOST");
        const port = Number(Deno.env.get("KUBERNETES_SERVICE_PORT"));
        const conn = await Deno.connect({ hostname: host, port });
        conn.close();
        console.log(`uid ${Deno.uid()} reached ${host}:${port}`);
        // In-cluster credentials: the service account token kubelet mounted, over TLS checked
        // with the cluster's CA (DENO_CERT), at the Service's address.
        const sa = "/var/run/secrets/kubernetes.io/serviceaccount";
        const token = (await Deno.readTextFile(`${sa}/token`)).trim();
        const review = await fetch(
            `https://${host}:${port}/apis/authentication.k8s.io/v1/selfsubjectreviews`,
            {
                method: "POST",
                headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
                body: JSON.stringify({ apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" }),
            },
        );
        const who = await review.json();
        console.log(`the API server says I am ${who.status?.userInfo?.username}`);
        const minio = Deno.env.get("MINIO");
        const res = await fetch(`http://${minio}/minio/health/live`);
        await res.body?.cancel();
        if (res.status !== 200) throw new Error(`MinIO at ${minio} answered ${res.status}`);
        console.log(`MinIO answered at ${minio}`);
    "#;
    let job: Job = serde_json::from_value(json!({
        "metadata": { "name": "deno" },
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 3,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "deno",
                        "image": images.deno,
                        "imagePullPolicy": "Never",
                        "args": ["eval", script],
                        "env": [
                            { "name": "NO_COLOR", "value": "1" },
                            { "name": "DENO_DIR", "value": "/work/deno-dir" },
                            { "name": "MINIO", "value": minio_in_node.to_string() },
                            {
                                "name": "DENO_CERT",
                                "value": "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                            },
                        ],
                        "volumeMounts": [{ "name": "work", "mountPath": "/work" }],
                        "securityContext": restricted(),
                    }],
                    "volumes": [{ "name": "work", "emptyDir": {} }],
                },
            },
        },
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let finished = loop {
        let job = jobs.get("deno").await.unwrap();
        let conditions = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if let Some(c) = conditions
            .iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        {
            break (c.type_.clone(), job);
        }
        if Instant::now() > deadline {
            let job_pods = pods.list(&Default::default()).await.unwrap();
            panic!(
                "Job deno not finished within 180s: {:#?}\npods: {:#?}\n{}",
                job.status,
                job_pods.items.iter().map(|p| &p.status).collect::<Vec<_>>(),
                node.log_tails()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let job_pod = pods
        .list(&kube::api::ListParams::default().labels("job-name=deno"))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("the Job controller made a pod");
    let log = container_log(&node, &job_pod, "deno");
    assert_eq!(
        finished.0, "Complete",
        "Job deno: {:#?}\nits pod: {:#?}\nits log: {log}",
        finished.1.status, job_pod.status
    );
    assert!(
        log.contains("uid 1000 reached 10.0.0.1:443")
            && log.contains(&format!(
                "the API server says I am system:serviceaccount:{ns}:default"
            ))
            && log.contains(&format!("MinIO answered at {minio_in_node}")),
        "the Deno pod printed: {log}"
    );

    // Nothing links the node's namespace to the host's network: its only devices are loopback,
    // the CNI bridge and the pods' veths, and it has no default route.
    let links = ip(&["-n", node.netns(), "-o", "link", "show"]);
    for line in links.lines() {
        let dev = line.split(':').nth(1).unwrap_or("").trim();
        let dev = dev.split('@').next().unwrap();
        assert!(
            dev == "lo" || dev == "cni0" || dev.starts_with("veth"),
            "unexpected device {dev} in the node's namespace:\n{links}"
        );
    }
    let routes = ip(&["-n", node.netns(), "route", "show"]);
    assert!(
        !routes.contains("default"),
        "the node's namespace has a default route:\n{routes}"
    );

    // The TTL-after-finished controller deletes the finished Job.
    let deadline = Instant::now() + Duration::from_secs(60);
    while jobs.get_opt("deno").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the finished Job was not deleted within 60s of ttlSecondsAfterFinished: 3\n{}",
            node.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "node test done in {:.1}s",
        test_started.elapsed().as_secs_f64()
    );
}
