//! The local job runner (`sitecache_devtools::JobRunner`) on the real API server: it runs Jobs as
//! host processes and writes statuses that the API server of Kubernetes 1.37 accepts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use serde_json::{Value, json};
use sitecache_devtools::{JobRunner, JobRunnerConfig};

use crate::support;

const SELECTOR_KEY: &str = "test.sitecache.dev/job-runner";

/// The runner's log lines, shown with the output of a failed test.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("sitecache_devtools=debug")
        .try_init();
}

/// A runner for the Jobs of `ns` labelled by `job()`, with its work directory.
fn runner(
    client: &Client,
    ns: &str,
    images: HashMap<String, PathBuf>,
    env: Vec<(String, String)>,
) -> (JobRunner, PathBuf) {
    init_tracing();
    let work_dir = support::run_dir().join("job-runner");
    std::fs::create_dir_all(&work_dir).unwrap();
    let runner = JobRunner::start(
        client.clone(),
        JobRunnerConfig {
            namespace: Some(ns.to_owned()),
            label_selector: format!("{SELECTOR_KEY}=yes"),
            images,
            env,
            work_dir: work_dir.clone(),
        },
    );
    (runner, work_dir)
}

/// A Job named `name` with pod spec `pod`; `spec` is merged into the Job spec.
fn job(name: &str, pod: Value, spec: Value) -> Job {
    let mut job_spec = json!({ "template": { "spec": pod } });
    for (k, v) in spec.as_object().unwrap() {
        job_spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name, "labels": { SELECTOR_KEY: "yes" } },
        "spec": job_spec,
    }))
    .expect("a well-formed Job")
}

/// A pod spec with one container running `sh -c script`.
fn shell_pod(script: &str) -> Value {
    json!({
        "restartPolicy": "Never",
        "containers": [{ "name": "main", "image": "busybox", "command": ["sh", "-c", script] }],
    })
}

async fn create(api: &Api<Job>, job: &Job) {
    api.create(&PostParams::default(), job)
        .await
        .expect("the API server accepts the Job");
}

fn condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn is_true(job: &Job, type_: &str) -> bool {
    condition(job, type_).is_some_and(|c| c.status == "True")
}

/// Every log of the Job, for failure messages.
fn logs(runner: &JobRunner, ns: &str, name: &str) -> String {
    let dir = runner.log_dir(ns, name);
    let mut out = String::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files.iter().filter(|f| f.is_file()) {
        out.push_str(&format!(
            "--- {}\n{}",
            f.display(),
            std::fs::read_to_string(f).unwrap_or_default()
        ));
    }
    out
}

/// Waits until the Job is Complete or Failed.
async fn wait_finished(
    api: &Api<Job>,
    runner: &JobRunner,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Job {
    let deadline = Instant::now() + timeout;
    loop {
        let job = api.get(name).await.expect("get the Job");
        if is_true(&job, "Complete") || is_true(&job, "Failed") {
            return job;
        }
        if Instant::now() > deadline {
            panic!(
                "Job {name} not finished within {timeout:?}; status: {:#?}\nlogs:\n{}",
                job.status,
                logs(runner, ns, name)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `path` holds a process id.
async fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a process runs (a zombie does not: its parent may be an init that does not reap).
fn running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X"))
}

async fn wait_dead(pid: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) still runs 10 s after"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A script that records its pid and the pid of a child it forks, then sleeps. (`$$$$`: kubelet,
/// and so the runner, turns `$$` into `$` in commands.)
const SLEEPER: &str =
    r#"sleep 61 & echo $! > "$PIDS/child"; echo $$$$ > "$PIDS/main"; exec sleep 60"#;

#[tokio::test]
async fn init_container_fills_an_empty_dir_that_the_container_reads() {
    let (client, ns) = support::kube().await;
    let (runner, work_dir) = runner(&client, &ns, HashMap::new(), vec![]);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let mount = json!([{ "name": "cache", "mountPath": "/cache" }]);
    let pod = json!({
        "restartPolicy": "Never",
        "volumes": [{ "name": "cache", "emptyDir": {} }],
        "initContainers": [{
            "name": "fill", "image": "busybox",
            "command": ["sh", "-c", "echo hi > /cache/x"],
            "volumeMounts": mount,
        }],
        "containers": [{
            "name": "check", "image": "busybox",
            "command": ["sh", "-c", r#"test "$(cat /cache/x)" = hi && echo checked"#],
            "volumeMounts": mount,
        }],
    });
    create(&api, &job("share", pod, json!({}))).await;

    let done = wait_finished(&api, &runner, &ns, "share", Duration::from_secs(30)).await;
    let explain = format!(
        "status: {:#?}\nlogs:\n{}",
        done.status,
        logs(&runner, &ns, "share")
    );
    assert!(is_true(&done, "Complete"), "{explain}");
    let status = done.status.clone().unwrap();
    assert_eq!(status.succeeded, Some(1), "{explain}");
    assert_eq!(status.active.unwrap_or(0), 0, "{explain}");
    assert_eq!(status.ready, Some(0), "{explain}");
    assert_eq!(status.failed.unwrap_or(0), 0, "{explain}");
    let start = status.start_time.expect("startTime");
    let completion = status.completion_time.expect("completionTime");
    assert!(completion.0 >= start.0);
    let types: Vec<&str> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(types, ["SuccessCriteriaMet", "Complete"], "{explain}");
    for c in status.conditions.iter().flatten() {
        assert_eq!(c.status, "True");
        assert_eq!(c.reason.as_deref(), Some("CompletionsReached"));
        assert_eq!(
            c.message.as_deref(),
            Some("Reached expected number of succeeded pods")
        );
    }

    let dir = runner.log_dir(&ns, "share");
    assert_eq!(dir, work_dir.join(&ns).join("share"));
    assert!(dir.join("attempt-1-fill.log").is_file(), "{explain}");
    let check = std::fs::read_to_string(dir.join("attempt-1-check.log")).unwrap();
    assert_eq!(check, "checked\n");
    assert!(
        !dir.join("attempt-1-volumes").exists(),
        "emptyDirs outlive the attempt"
    );
    runner.stop().await;
}

#[tokio::test]
async fn failing_container_fails_the_job_after_backoff_limit() {
    let (client, ns) = support::kube().await;
    let (runner, _) = runner(&client, &ns, HashMap::new(), vec![]);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    create(
        &api,
        &job(
            "fails",
            shell_pod("echo failing; exit 3"),
            json!({ "backoffLimit": 1 }),
        ),
    )
    .await;

    let done = wait_finished(&api, &runner, &ns, "fails", Duration::from_secs(30)).await;
    let explain = format!(
        "status: {:#?}\nlogs:\n{}",
        done.status,
        logs(&runner, &ns, "fails")
    );
    assert!(is_true(&done, "Failed"), "{explain}");
    assert!(is_true(&done, "FailureTarget"), "{explain}");
    assert!(!is_true(&done, "Complete"), "{explain}");
    let status = done.status.clone().unwrap();
    assert_eq!(status.failed, Some(2), "{explain}");
    assert_eq!(status.succeeded.unwrap_or(0), 0, "{explain}");
    assert_eq!(status.active.unwrap_or(0), 0, "{explain}");
    assert!(status.completion_time.is_none(), "{explain}");
    let failed = condition(&done, "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(
        failed.message.as_deref(),
        Some("Job has reached the specified backoff limit")
    );
    let dir = runner.log_dir(&ns, "fails");
    for k in 1..=2 {
        let log = std::fs::read_to_string(dir.join(format!("attempt-{k}-main.log"))).unwrap();
        assert_eq!(log, "failing\n");
    }
    assert!(!dir.join("attempt-3-main.log").exists());
    runner.stop().await;
}

#[tokio::test]
async fn active_deadline_kills_the_process_and_fails_the_job() {
    let (client, ns) = support::kube().await;
    let (runner, _) = runner(&client, &ns, HashMap::new(), vec![]);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pod = json!({
        "restartPolicy": "Never",
        "containers": [{ "name": "main", "image": "busybox", "command": ["sleep", "60"] }],
    });
    let started = Instant::now();
    create(
        &api,
        &job("slow", pod, json!({ "activeDeadlineSeconds": 2 })),
    )
    .await;

    let done = wait_finished(&api, &runner, &ns, "slow", Duration::from_secs(20)).await;
    let elapsed = started.elapsed();
    let explain = format!(
        "status: {:#?}\nlogs:\n{}",
        done.status,
        logs(&runner, &ns, "slow")
    );
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    assert!(is_true(&done, "FailureTarget"), "{explain}");
    let failed = condition(&done, "Failed").filter(|c| c.status == "True");
    let failed = failed.unwrap_or_else(|| panic!("not Failed: {explain}"));
    assert_eq!(failed.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        failed.message.as_deref(),
        Some("Job was active longer than specified deadline")
    );
    let status = done.status.clone().unwrap();
    assert_eq!(status.failed, Some(1), "{explain}");
    assert_eq!(status.active.unwrap_or(0), 0, "{explain}");
    let log =
        std::fs::read_to_string(runner.log_dir(&ns, "slow").join("attempt-1-main.log")).unwrap();
    assert!(log.contains("activeDeadlineSeconds"), "{log}");
    runner.stop().await;
}

/// A pod the API server refuses (Pod Security `restricted` here; a quota would do the same) is
/// tried again with a `FailedCreate` Event on the Job, as the Job controller does: the Job shows
/// no active pod, and its deadline fails it without a failed pod.
#[tokio::test]
async fn a_refused_pod_is_retried_with_failed_create_events_until_the_deadline() {
    let (client, ns) = support::kube().await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
            }}})),
        )
        .await
        .unwrap();
    let (runner, _) = runner(&client, &ns, HashMap::new(), vec![]);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    create(
        &api,
        &job(
            "refused",
            shell_pod("touch ran"),
            json!({ "activeDeadlineSeconds": 4 }),
        ),
    )
    .await;

    // While refused: started, no active pod, the refusal in an Event on the Job.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(3);
    let event = loop {
        let found = events
            .list(&kube::api::ListParams::default().fields("involvedObject.name=refused"))
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedCreate"));
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no FailedCreate Event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let message = event.message.unwrap_or_default();
    assert!(
        message.starts_with("Error creating: ") && message.contains("violates PodSecurity"),
        "{message}"
    );
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let running = api.get("refused").await.unwrap();
    let status = running.status.clone().unwrap_or_default();
    assert!(status.start_time.is_some(), "{status:?}");
    assert_eq!(status.active.unwrap_or(0), 0, "{status:?}");

    let done = wait_finished(&api, &runner, &ns, "refused", Duration::from_secs(20)).await;
    let failed = condition(&done, "Failed").filter(|c| c.status == "True");
    assert_eq!(
        failed.and_then(|c| c.reason.as_deref()),
        Some("DeadlineExceeded"),
        "{:?}",
        done.status
    );
    let status = done.status.unwrap();
    assert_eq!(
        status.failed.unwrap_or(0),
        0,
        "no pod ran, none failed: {status:?}"
    );
    assert_eq!(status.active.unwrap_or(0), 0);
    runner.stop().await;
}

/// Deletes a Job whose process (and the child it forked) runs, with `propagation`, and checks
/// that both die and that the runner writes no status afterwards.
async fn deleting_kills(propagation: PropagationPolicy) {
    let (client, ns) = support::kube().await;
    let pids = support::run_dir()
        .join("job-runner")
        .join(format!("{ns}-pids"));
    std::fs::create_dir_all(&pids).unwrap();
    let env = vec![("PIDS".to_owned(), pids.to_string_lossy().into_owned())];
    let (runner, _) = runner(&client, &ns, HashMap::new(), env);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    create(&api, &job("doomed", shell_pod(SLEEPER), json!({}))).await;

    let main = read_pid(&pids.join("main")).await;
    let child = read_pid(&pids.join("child")).await;
    assert!(running(main) && running(child));
    // Running and ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = api.get("doomed").await.unwrap().status.unwrap_or_default();
        if status.ready == Some(1) {
            assert_eq!(status.active, Some(1));
            assert!(status.start_time.is_some());
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {status:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let params = DeleteParams {
        propagation_policy: Some(propagation),
        ..Default::default()
    };
    api.delete("doomed", &params).await.unwrap();
    wait_dead(main, "the container's process").await;
    wait_dead(child, "the process it forked").await;
    // A dead process is reaped by the runner's task a moment later: wait for it, boundedly.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{main}")).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !Path::new(&format!("/proc/{main}")).exists(),
        "the container's process was not reaped"
    );

    // With foreground propagation and no garbage collector, the Job stays, being deleted: the
    // runner must leave its status alone.
    if let Some(left) = api.get_opt("doomed").await.unwrap() {
        let before = left.status.clone();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = api.get("doomed").await.unwrap().status;
        assert_eq!(before, after, "status written after deletion");
        let after = after.unwrap_or_default();
        assert_eq!(after.failed, None);
        assert_eq!(after.conditions, None);
    }
    runner.stop().await;
}

#[tokio::test]
async fn deleting_a_job_kills_its_processes() {
    deleting_kills(PropagationPolicy::Background).await;
}

#[tokio::test]
async fn a_job_being_deleted_has_its_processes_killed() {
    deleting_kills(PropagationPolicy::Foreground).await;
}

/// The pod of a deleted Job is deleted even when the API server refuses that for a while (it is
/// restarting, in the soak): as the garbage collector, the runner keeps at it. Here the refusal
/// is a ValidatingAdmissionPolicy denying the deletion of the namespace's pods until its binding
/// goes.
#[tokio::test]
async fn a_pod_whose_deletion_was_refused_is_deleted_once_allowed() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::DynamicObject;
    use kube::discovery::ApiResource;

    let (client, ns) = support::kube().await;
    let pids = support::run_dir()
        .join("job-runner")
        .join(format!("{ns}-pids"));
    std::fs::create_dir_all(&pids).unwrap();
    let env = vec![("PIDS".to_owned(), pids.to_string_lossy().into_owned())];
    let (runner, _) = runner(&client, &ns, HashMap::new(), env);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    create(&api, &job("stubborn", shell_pod(SLEEPER), json!({}))).await;
    let main = read_pid(&pids.join("main")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pods
        .list(&kube::api::ListParams::default().labels("job-name=stubborn"))
        .await
        .unwrap()
        .items
        .pop()
        .expect("the Job's pod");
    let pod_name = kube::ResourceExt::name_any(&pod);

    let resource = |kind: &str, plural: &str| ApiResource {
        group: "admissionregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "admissionregistration.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    let policies: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &resource("ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
    );
    let bindings: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &resource(
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
        ),
    );
    let name = format!("no-pod-deletions-{ns}");
    let policy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"],
                "resources": ["pods"],
            }]},
            "validations": [{"expression": "false", "message": "pod deletions are paused"}],
        },
    }))
    .unwrap();
    let binding: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": ns,
            }}},
        },
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // In force once a dry run of the deletion is refused.
    let dry = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while pods.delete(&pod_name, &dry).await.is_ok() {
        assert!(Instant::now() < deadline, "the policy never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    api.delete("stubborn", &DeleteParams::background())
        .await
        .unwrap();
    wait_dead(main, "the container's process").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = pods.get(&pod_name).await.unwrap();
    assert!(
        refused.metadata.deletion_timestamp.is_none(),
        "the pod was deleted through the policy"
    );

    bindings
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match pods.get_opt(&pod_name).await.unwrap() {
            None => break,
            Some(p) if p.metadata.deletion_timestamp.is_some() => break,
            Some(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the pod of the deleted Job was never deleted:\n{}",
            logs(&runner, &ns, "stubborn")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    policies
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    runner.stop().await;
}

#[tokio::test]
async fn stopping_the_runner_kills_processes_and_leaves_status() {
    let (client, ns) = support::kube().await;
    let pids = support::run_dir()
        .join("job-runner")
        .join(format!("{ns}-pids"));
    std::fs::create_dir_all(&pids).unwrap();
    let env = vec![("PIDS".to_owned(), pids.to_string_lossy().into_owned())];
    let (runner, _) = runner(&client, &ns, HashMap::new(), env);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    create(&api, &job("running", shell_pod(SLEEPER), json!({}))).await;
    let main = read_pid(&pids.join("main")).await;
    let child = read_pid(&pids.join("child")).await;

    runner.stop().await;
    assert!(
        !Path::new(&format!("/proc/{main}")).exists(),
        "the process outlives JobRunner::stop"
    );
    wait_dead(child, "the process it forked").await;
    let status = api.get("running").await.unwrap().status.unwrap_or_default();
    assert_eq!(status.conditions, None, "{status:#?}");
    assert_eq!(status.failed, None, "{status:#?}");
}

#[tokio::test]
async fn mapped_image_runs_the_local_binary() {
    let (client, ns) = support::kube().await;
    let out = support::run_dir()
        .join("job-runner")
        .join(format!("{ns}-out"));
    let _ = std::fs::remove_file(&out);
    let image = "example.com/sitecache:dev";
    let images = HashMap::from([(image.to_owned(), PathBuf::from("/bin/sh"))]);
    let env = vec![
        ("OUT".to_owned(), out.to_string_lossy().into_owned()),
        ("A".to_owned(), "config".to_owned()),
        ("B".to_owned(), "config".to_owned()),
    ];
    let (runner, _) = runner(&client, &ns, images, env);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pod = json!({
        "restartPolicy": "Never",
        "initContainers": [{
            // No command: the mapped binary is the program, `args` its arguments.
            "name": "no-command", "image": image,
            "args": ["-c", r#"echo "init A=$A B=$B" >> "$OUT""#],
            "env": [{ "name": "B", "value": "container" }],
        }],
        "containers": [{
            // command[0] does not exist here: the mapped binary replaces it.
            "name": "command", "image": image,
            "command": ["/usr/local/bin/sitecache", "-c"],
            "args": [r#"echo "main $1 $2" >> "$OUT""#, "sh", "$(C)", "$(UNKNOWN)"],
            "env": [{ "name": "C", "value": "expanded-$(A)" }],
        }],
    });
    create(&api, &job("mapped", pod, json!({}))).await;

    let done = wait_finished(&api, &runner, &ns, "mapped", Duration::from_secs(30)).await;
    assert!(
        is_true(&done, "Complete"),
        "status: {:#?}\nlogs:\n{}",
        done.status,
        logs(&runner, &ns, "mapped")
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "init A=config B=container\nmain expanded-config $(UNKNOWN)\n"
    );
    runner.stop().await;
}

#[tokio::test]
async fn unsupported_pod_features_fail_the_attempt_with_a_message() {
    let (client, ns) = support::kube().await;
    let (runner, _) = runner(&client, &ns, HashMap::new(), vec![]);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let value_from = json!({
        "restartPolicy": "Never",
        "containers": [{
            "name": "main", "image": "busybox", "command": ["true"],
            "env": [{ "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } }],
        }],
    });
    let host_path = json!({
        "restartPolicy": "Never",
        "volumes": [{ "name": "host", "hostPath": { "path": "/tmp" } }],
        "containers": [{ "name": "main", "image": "busybox", "command": ["true"] }],
    });
    let no_command = json!({
        "restartPolicy": "Never",
        "containers": [{ "name": "main", "image": "busybox" }],
    });
    let cases = [
        ("value-from", value_from, "attempt-1-main.log", "valueFrom"),
        ("host-path", host_path, "attempt-1-pod.log", "only emptyDir"),
        ("no-command", no_command, "attempt-1-main.log", "no command"),
    ];
    for (name, pod, _, _) in &cases {
        create(&api, &job(name, pod.clone(), json!({ "backoffLimit": 0 }))).await;
    }
    for (name, _, log, needle) in &cases {
        let done = wait_finished(&api, &runner, &ns, name, Duration::from_secs(30)).await;
        let failed = condition(&done, "Failed").expect("Failed");
        assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(done.status.as_ref().unwrap().failed, Some(1));
        let text = std::fs::read_to_string(runner.log_dir(&ns, name).join(log)).unwrap();
        assert!(
            text.starts_with("[job runner] ") && text.contains(needle),
            "{name}: {text}"
        );
    }
    runner.stop().await;
}

#[tokio::test]
async fn suspended_job_waits_until_resumed() {
    let (client, ns) = support::kube().await;
    let (runner, _) = runner(&client, &ns, HashMap::new(), vec![]);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    create(
        &api,
        &job("later", shell_pod("exit 0"), json!({ "suspend": true })),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = api.get("later").await.unwrap();
    assert!(
        job.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .is_none(),
        "a suspended Job was started: {:#?}",
        job.status
    );
    assert!(!runner.log_dir(&ns, "later").exists());

    api.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "suspend": false } })),
    )
    .await
    .unwrap();
    let done = wait_finished(&api, &runner, &ns, "later", Duration::from_secs(30)).await;
    assert!(is_true(&done, "Complete"), "{:#?}", done.status);
    runner.stop().await;
}

#[tokio::test]
async fn finished_jobs_are_not_run_again_by_a_new_runner() {
    let (client, ns) = support::kube().await;
    let runs = support::run_dir()
        .join("job-runner")
        .join(format!("{ns}-runs"));
    let _ = std::fs::remove_file(&runs);
    let env = vec![("RUNS".to_owned(), runs.to_string_lossy().into_owned())];
    let (first, _) = runner(&client, &ns, HashMap::new(), env.clone());
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    create(
        &api,
        &job("ok", shell_pod(r#"echo run >> "$RUNS""#), json!({})),
    )
    .await;
    create(
        &api,
        &job(
            "ko",
            shell_pod(r#"echo run >> "$RUNS"; exit 1"#),
            json!({ "backoffLimit": 0 }),
        ),
    )
    .await;
    let ok = wait_finished(&api, &first, &ns, "ok", Duration::from_secs(30)).await;
    let ko = wait_finished(&api, &first, &ns, "ko", Duration::from_secs(30)).await;
    first.stop().await;
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\nrun\n");

    let (second, _) = runner(&client, &ns, HashMap::new(), env);
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.stop().await;
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\nrun\n");
    for before in [ok, ko] {
        let after = api
            .get(&before.metadata.name.clone().unwrap())
            .await
            .unwrap();
        assert_eq!(
            before.metadata.resource_version,
            after.metadata.resource_version
        );
    }
}

#[tokio::test]
async fn each_attempt_is_a_pod_with_its_containers_exit_codes_and_termination_messages() {
    use k8s_openapi::api::core::v1::Pod;
    let (client, ns) = support::kube().await;
    let (runner, _) = runner(&client, &ns, HashMap::new(), vec![]);
    let api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pod = json!({
        "restartPolicy": "Never",
        "containers": [
            {"name": "says", "image": "busybox", "command": ["sh", "-c",
             "printf done > /dev/termination-log; exit 3"]},
            {"name": "logs", "image": "busybox", "terminationMessagePolicy": "FallbackToLogsOnError",
             "command": ["sh", "-c", "echo from the log; exit 4"]},
        ],
    });
    create(&api, &job("pods", pod, json!({ "backoffLimit": 0 }))).await;
    let done = wait_finished(&api, &runner, &ns, "pods", Duration::from_secs(30)).await;
    assert!(is_true(&done, "Failed"));
    let uid = done.metadata.uid.clone().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list = pods
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("batch.kubernetes.io/controller-uid={uid}")),
        )
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1, "one pod for the one attempt");
    let pod = &list.items[0];
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Job", uid.as_str())
    );
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let ended: HashMap<_, _> = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| {
            let t = c.state.as_ref().unwrap().terminated.clone().unwrap();
            (c.name.clone(), (t.exit_code, t.message.unwrap_or_default()))
        })
        .collect();
    assert_eq!(ended["says"], (3, "done".to_owned()));
    assert_eq!(ended["logs"], (4, "from the log".to_owned()));

    // Deleting the Job removes its pods, as the garbage collector would.
    api.delete("pods", &DeleteParams::background())
        .await
        .unwrap();
    runner.stop().await;
}
