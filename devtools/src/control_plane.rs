//! A local Kubernetes control plane: etcd and kube-apiserver as processes on loopback.
//!
//! There is no kubelet, scheduler or controller-manager: objects are stored and validated (OpenAPI
//! schemas, CEL rules, RBAC, server-side apply) exactly as in a cluster, but nothing runs pods
//! ([`crate::node::Node`] adds them on a control plane of its own).
//! The admin user is authenticated by a client certificate in `system:masters`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

use crate::assets::Asset;
use crate::pki::Pki;
use crate::process::ManagedProcess;

/// How long etcd and kube-apiserver get to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How to start a control plane ([`ControlPlane::start_with`]).
#[derive(Clone, Debug, Default)]
pub struct ControlPlaneOptions {
    /// Admit pods through the ServiceAccount admission plugin (each pod gets its service
    /// account's token volume): for a control plane with a real node
    /// ([`crate::node::Node`]), whose controller-manager creates the service accounts and whose
    /// kubelet mounts the tokens. Off by default: nothing else here creates service accounts.
    pub service_account_admission: bool,
    /// Where the API server reaches nodes' kubelets (`kubectl logs`, `exec`): the
    /// Unix socket of an HTTP `CONNECT` proxy, its egress selector's `cluster` connection (over
    /// TCP the API server insists on TLS to the proxy); it authenticates to kubelets with the
    /// admin's client certificate. For a control plane with a real node, whose kubelet lives in
    /// a network namespace the host cannot route to.
    pub cluster_egress: Option<PathBuf>,
}

/// A running etcd + kube-apiserver pair. Dropping it stops both.
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    /// How each process was started, to start it again ([`ControlPlane::restart_apiserver`],
    /// [`ControlPlane::restart_etcd`]).
    apiserver_cmd: (PathBuf, Vec<String>),
    etcd_cmd: (PathBuf, Vec<String>, u16),
    // Field order is drop order: the API server goes before its storage.
    apiserver: ManagedProcess,
    etcd: ManagedProcess,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver with their state and logs in `dir` (created, emptied
    /// first), and waits until the API server is ready.
    pub async fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, &ControlPlaneOptions::default()).await
    }

    /// [`ControlPlane::start`] with `options`.
    pub async fn start_with(dir: &Path, options: &ControlPlaneOptions) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let etcd_bin = Asset::Etcd.path()?;
        let apiserver_bin = Asset::KubeApiserver.path()?;

        let pki = Pki::generate()?;
        let write = |name: &str, contents: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, contents).with_context(|| format!("write {}", p.display()))?;
            Ok(p)
        };
        let ca = write("ca.crt", &pki.ca_cert)?;
        let serving_cert = write("apiserver.crt", &pki.serving_cert)?;
        let serving_key = write("apiserver.key", &pki.serving_key)?;
        let admin_cert = write("admin.crt", &pki.admin_cert)?;
        let admin_key = write("admin.key", &pki.admin_key)?;
        let sa_key = write("service-account.key", &pki.service_account_key)?;
        let sa_pub = write("service-account.pub", &pki.service_account_public_key)?;

        let mut last_err = None;
        for _attempt in 0..3 {
            let etcd = match start_etcd(&etcd_bin, dir).await {
                Ok(e) => e,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let (etcd, etcd_url, etcd_cmd) = etcd;
            let port = crate::free_port()?;
            let server = format!("https://127.0.0.1:{port}");
            let mut args: Vec<String> = [
                "--advertise-address=127.0.0.1",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={port}"),
                &format!("--etcd-servers={etcd_url}"),
                &format!("--cert-dir={}", dir.join("certs").display()),
                &format!("--tls-cert-file={}", serving_cert.display()),
                &format!("--tls-private-key-file={}", serving_key.display()),
                &format!("--client-ca-file={}", ca.display()),
                &format!("--service-account-key-file={}", sa_pub.display()),
                &format!("--service-account-signing-key-file={}", sa_key.display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                // No kubernetes Service endpoints for a loopback address.
                "--endpoint-reconciler-type=none",
                "--v=1",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            if let Some(proxy) = &options.cluster_egress {
                let egress = write(
                    "egress-selector.yaml",
                    &format!(
                        "apiVersion: apiserver.k8s.io/v1beta1\n\
                         kind: EgressSelectorConfiguration\n\
                         egressSelections:\n\
                         - name: cluster\n  \
                           connection:\n    \
                             proxyProtocol: HTTPConnect\n    \
                             transport:\n      \
                               uds:\n        \
                                 udsName: {}\n",
                        proxy.display()
                    ),
                )?;
                args.extend([
                    format!("--egress-selector-config-file={}", egress.display()),
                    format!("--kubelet-client-certificate={}", admin_cert.display()),
                    format!("--kubelet-client-key={}", admin_key.display()),
                    "--kubelet-preferred-address-types=InternalIP".to_owned(),
                ]);
            }
            if !options.service_account_admission {
                // Nothing here issues service account tokens into pods; the plugin would refuse
                // pods whose service account has no token controller behind it.
                args.push("--disable-admission-plugins=ServiceAccount".to_owned());
            }
            let mut cmd = Command::new(&apiserver_bin);
            cmd.args(&args);
            let apiserver =
                ManagedProcess::spawn("kube-apiserver", cmd, &dir.join("kube-apiserver.log"))?;
            let kubeconfig = dir.join("kubeconfig");
            std::fs::write(
                &kubeconfig,
                kubeconfig_yaml(&server, &ca, &admin_cert, &admin_key),
            )?;
            let mut cp = Self {
                dir: dir.to_owned(),
                kubeconfig,
                server,
                apiserver_cmd: (apiserver_bin.clone(), args),
                etcd_cmd,
                apiserver,
                etcd,
            };
            match cp.wait_ready().await {
                Ok(()) => return Ok(cp),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("control plane did not start")))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = self.client().await?;
        loop {
            if self.apiserver.exited().is_some() {
                return Err(self.apiserver.failure("exited during start-up"));
            }
            if self.etcd.exited().is_some() {
                return Err(self.etcd.failure("exited during start-up"));
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if let Ok(body) = client.request_text(req).await
                && body.trim() == "ok"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self
                    .apiserver
                    .failure(&format!("not ready within {}s", START_TIMEOUT.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An admin client. Make one per test (a client belongs to the tokio runtime it was made in).
    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// The admin kubeconfig file (for kubectl and for processes under test).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster's CA certificate (it signed the API server's serving certificate and the
    /// admin's client certificate).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The private key that signs service account tokens (the API server verifies them with its
    /// public half): kube-controller-manager's `--service-account-private-key-file`.
    pub fn service_account_key_file(&self) -> PathBuf {
        self.dir.join("service-account.key")
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The directory holding state and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Log files of etcd and kube-apiserver.
    pub fn logs(&self) -> [&Path; 2] {
        [self.etcd.log(), self.apiserver.log()]
    }

    /// Process ids of etcd and kube-apiserver.
    pub fn pids(&self) -> [u32; 2] {
        [self.etcd.pid(), self.apiserver.pid()]
    }

    /// Kills kube-apiserver and starts it again with the same flags (same port, same etcd);
    /// returns once it is ready. Clients reconnect as they would to a restarted API server.
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        self.apiserver.kill();
        let (bin, args) = &self.apiserver_cmd;
        let mut cmd = Command::new(bin);
        cmd.args(args);
        self.apiserver =
            ManagedProcess::spawn("kube-apiserver", cmd, &self.dir.join("kube-apiserver.log"))?;
        self.wait_ready().await
    }

    /// Kills etcd and starts it again on its data (same ports); returns once it is healthy and
    /// the API server is ready again.
    pub async fn restart_etcd(&mut self) -> Result<()> {
        self.etcd.kill();
        let (bin, args, port) = &self.etcd_cmd;
        let mut cmd = Command::new(bin);
        cmd.args(args);
        self.etcd = ManagedProcess::spawn("etcd", cmd, &self.dir.join("etcd.log"))?;
        wait_etcd(&mut self.etcd, *port).await?;
        self.wait_ready().await
    }

    /// An error with the end of its log if etcd or kube-apiserver has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if self.etcd.exited().is_some() {
            return Err(self.etcd.failure("exited"));
        }
        if self.apiserver.exited().is_some() {
            return Err(self.apiserver.failure("exited"));
        }
        Ok(())
    }
}

/// Starts etcd on fresh data; returns it, its client URL and how to start it again.
async fn start_etcd(
    bin: &Path,
    dir: &Path,
) -> Result<(ManagedProcess, String, (PathBuf, Vec<String>, u16))> {
    let client_port = crate::free_port()?;
    let peer_port = crate::free_port()?;
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let data = dir.join("etcd-data");
    let _ = std::fs::remove_dir_all(&data);
    let args: Vec<String> = vec![
        "--name=default".into(),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
        "--listen-metrics-urls=".into(),
        // Test data: durability is not worth the fsync latency.
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ];
    let mut cmd = Command::new(bin);
    cmd.args(&args);
    let mut etcd = ManagedProcess::spawn("etcd", cmd, &dir.join("etcd.log"))?;
    wait_etcd(&mut etcd, client_port).await?;
    Ok((etcd, client_url, (bin.to_owned(), args, client_port)))
}

async fn wait_etcd(etcd: &mut ManagedProcess, client_port: u16) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if etcd.exited().is_some() {
            return Err(etcd.failure("exited during start-up"));
        }
        if let Ok(true) = etcd_healthy(client_port).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(etcd.failure("not healthy in time"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /health` on etcd's client port, with a bare HTTP/1.0 request.
async fn etcd_healthy(port: u16) -> Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf.contains("\"health\":\"true\""))
}

fn kubeconfig_yaml(server: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: sitecache-local
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: sitecache-local
  context:
    cluster: sitecache-local
    user: admin
    namespace: default
current-context: sitecache-local
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display()
    )
}

/// Applies every CRD in the YAML files of `dir` (server-side apply) and waits until each is
/// established.
pub async fn install_crds(client: &Client, dir: &Path) -> Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path)?;
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
            .with_context(|| format!("parse {} as a CustomResourceDefinition", path.display()))?;
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(
            &name,
            &PatchParams::apply("sitecache-devtools").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("apply CRD {name} from {}", path.display()))?;
        names.push(name);
    }
    if names.is_empty() {
        bail!("no CRD files in {}", dir.display());
    }
    for name in &names {
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not established within 30s"))??;
    }
    Ok(names)
}

/// Creates a namespace named `<prefix>-<unique suffix>` and returns its name.
pub async fn create_namespace(client: &Client, prefix: &str) -> Result<String> {
    let name = crate::unique_name(prefix);
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("create namespace {name}"))?;
    Ok(name)
}
