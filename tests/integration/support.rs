//! Shared real parts for the integration tests, started on first use and stopped when the test
//! binary exits (the kernel kills them: see `sitecache_devtools::process`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kube::Client;
use serde_json::{Value, json};
use sitecache_devtools::{ControlPlane, S3Server, Store, control_plane};
use tokio::sync::OnceCell;

/// Where this run keeps the parts' state and logs: `target/tmp/envtest/run-<pid>`.
pub fn run_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("envtest");
    let dir = root.join(format!("run-{}", std::process::id()));
    static CLEANED: std::sync::Once = std::sync::Once::new();
    CLEANED.call_once(|| {
        // A real node of a run killed with its janitor left mounts and files under its run
        // directory: tear it down from its record first, then remove the directory.
        sitecache_devtools::node::janitor::sweep_stale();
        // Earlier runs' state is of no use; their logs are overwritten run by run.
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = e.file_name();
                let pid = name
                    .to_string_lossy()
                    .strip_prefix("run-")
                    .map(str::to_owned);
                let alive = pid.is_some_and(|p| PathBuf::from(format!("/proc/{p}")).exists());
                if !alive {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    });
    dir
}

/// The admin kubeconfig of the shared control plane ([`control_plane`] starts it).
pub fn kubeconfig_path() -> PathBuf {
    run_dir().join("control-plane").join("kubeconfig")
}

/// Runs `program` to completion with `stdin` as its input, capturing its output.
pub fn run_with_input(program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// The real kubectl against the shared control plane, as its admin.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let kubectl = sitecache_devtools::assets::Asset::Kubectl
        .path()
        .expect("kubectl (make test-assets)");
    let kubeconfig = format!("--kubeconfig={}", kubeconfig_path().display());
    let mut all = vec![kubeconfig.as_str()];
    all.extend_from_slice(args);
    run_with_input(&kubectl, &all, stdin)
}

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The shared control plane, with the CRDs from `crds/` installed.
pub async fn control_plane() -> &'static ControlPlane {
    static CP: OnceCell<ControlPlane> = OnceCell::const_new();
    CP.get_or_init(|| async {
        let cp = ControlPlane::start(&run_dir().join("control-plane"))
            .await
            .unwrap_or_else(|e| panic!("the local control plane did not start: {e:#}"));
        let client = cp.client().await.expect("admin client");
        control_plane::install_crds(&client, &repo_path("crds"))
            .await
            .unwrap_or_else(|e| panic!("installing crds/ failed: {e:#}"));
        cp
    })
    .await
}

/// An admin client and a fresh namespace on the shared control plane.
pub async fn kube() -> (Client, String) {
    let cp = control_plane().await;
    let client = cp.client().await.expect("admin client");
    let ns = control_plane::create_namespace(&client, "t")
        .await
        .expect("create test namespace");
    (client, ns)
}

/// The shared S3 server (MinIO).
pub async fn s3() -> &'static S3Server {
    s3_of(Store::Minio).await
}

/// MinIO serving TLS only, with a certificate issued by a CA made for this run, as a company's
/// store behind its private CA: nothing trusts it but a client given that CA.
pub struct PrivateStore {
    pub s3: S3Server,
    /// The CA's certificate (PEM), and a file holding it (a CA bundle).
    pub ca_pem: String,
    pub ca_file: PathBuf,
}

/// The shared [`PrivateStore`]. Its certificate names 127.0.0.1 and the real node's address,
/// where the node forwards it to (`Node::forward`), so that pods reach it by a name it has.
pub async fn private_store() -> &'static PrivateStore {
    static STORE: OnceCell<PrivateStore> = OnceCell::const_new();
    STORE
        .get_or_init(|| async {
            let dir = run_dir().join("minio-private-ca");
            let ca = sitecache_devtools::TestCa::new("sitecache-test-private-ca").expect("a CA");
            let node_ip = sitecache_devtools::node::netns::NODE_IP.to_string();
            let cert = ca
                .server(&["127.0.0.1", "localhost", &node_ip])
                .expect("a serving certificate");
            let s3 = S3Server::start_tls(&dir, cert, &ca.cert_pem())
                .await
                .unwrap_or_else(|e| panic!("MinIO serving TLS did not start: {e:#}"));
            let ca_file = run_dir().join("private-ca.crt");
            std::fs::write(&ca_file, ca.cert_pem()).expect("write the CA bundle");
            PrivateStore {
                s3,
                ca_pem: ca.cert_pem(),
                ca_file,
            }
        })
        .await
}

/// The shared server of `store`: the storage tests that run against both implementations ask
/// for each.
pub async fn s3_of(store: Store) -> &'static S3Server {
    static MINIO: OnceCell<S3Server> = OnceCell::const_new();
    static SEAWEEDFS: OnceCell<S3Server> = OnceCell::const_new();
    let cell = match store {
        Store::Minio => &MINIO,
        Store::Seaweedfs => &SEAWEEDFS,
    };
    cell.get_or_init(|| async {
        S3Server::start_store(store, &run_dir().join(store.name()))
            .await
            .unwrap_or_else(|e| panic!("the local {} server did not start: {e:#}", store.name()))
    })
    .await
}

/// The admin kubeconfig, acting as `system:serviceaccount:<ns>:<name>` (user impersonation).
pub fn impersonating_kubeconfig(dir: &Path, ns: &str, name: &str) -> PathBuf {
    let admin = std::fs::read_to_string(kubeconfig_path()).unwrap();
    let mut config: Value = serde_saphyr::from_str(&admin).unwrap();
    for user in config["users"].as_array_mut().unwrap() {
        user["user"]["as"] = json!(format!("system:serviceaccount:{ns}:{name}"));
        user["user"]["as-groups"] = json!([
            "system:serviceaccounts",
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated"
        ]);
    }
    let path = dir.join(format!("kubeconfig-as-{name}"));
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    path
}

/// The standard output of a command that must have succeeded; otherwise panics naming `what`
/// with its status and both outputs.
pub fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
