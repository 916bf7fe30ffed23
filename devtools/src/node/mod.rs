//! A real single-node cluster for the tests: the local control plane ([`ControlPlane`]: etcd,
//! kube-apiserver) plus kube-controller-manager, kube-scheduler and a kubelet that runs pods
//! with containerd, runc and the CNI bridge. Pods run the images that [`images`] builds here
//! (the agent, Deno, the sandbox's pause) and never pull: no registry is reachable.
//!
//! Layout:
//! - [`netns`]: the node tier (containerd, kubelet, every pod) lives in a network namespace of
//!   its own with no link out; pods reach the API server at the `kubernetes` Service's address
//!   ([`netns::API_SERVICE_IP`]`:443`) and other host services at the node's address
//!   ([`Node::forward`]), through forwarders of this process; the API server reaches kubelet
//!   (logs, exec) the other way, through a `CONNECT` proxy that dials from inside
//!   ([`netns::Forwarder::proxy_into`]).
//! - [`cgroups`]: the node's cgroup (kubelet's `cgroupRoot`, containerd and its shims in it).
//! - [`janitor`]: kills and unmounts whatever the node left, when the node is dropped or this
//!   process ends however it ends. Besides the node's directory, each node has a short one
//!   ([`janitor::short_dir`], `/run/sitecache-nodes/<node>`) for containerd's sockets and
//!   kubelet's root directory, whose sockets' paths must stay short.
//! - [`containerd`], [`kubelet`], [`controllers`]: the parts, each a [`ManagedProcess`] logging
//!   to a file in the node's directory.
//! - [`images`]: the local images as OCI archives ([`crate::image`]), imported into containerd (the
//!   agent, and optionally an earlier release's, pause, Deno, and a site: Deno plus
//!   `examples/storefront/` at `/site`).
//!
//! Needs root (kubelet, containerd, network namespaces), cgroups, overlayfs, and the assets of
//! `hack/test-assets.sh` (kube-node, Debian's containerd, runc and CNI plugins); a C compiler
//! with static glibc for the pause program.

pub mod cgroups;
pub mod containerd;
pub mod controllers;
pub mod images;
pub mod janitor;
pub mod kubelet;
pub mod netns;

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Node as NodeObject, ServiceAccount};
use kube::Client;
use kube::api::Api;

use crate::control_plane::{ControlPlane, ControlPlaneOptions};
use crate::process::ManagedProcess;
pub use images::{AgentImage, Images};
pub use kubelet::NODE_NAME;
use netns::{API_SERVICE_IP, NODE_IP};

/// How long the node gets to register and become Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What the node's images are made of.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The `sitecache` binary of the agent image (a test's `env!("CARGO_BIN_EXE_sitecache")`).
    pub sitecache_bin: PathBuf,
    /// The Dockerfile whose final stage the agent image follows (user, entrypoint, command,
    /// where the binary is copied).
    pub dockerfile: PathBuf,
    /// More agent images, each from its own binary and Dockerfile (an earlier release's, which
    /// the upgrade test installs first), at [`Images::agent_tagged`].
    pub other_agents: Vec<AgentImage>,
}

/// A running single-node cluster. Dropping it stops every part and removes what the node left
/// (containers, mounts, cgroups, the network namespace); so does the end of this process.
pub struct Node {
    // Field order is drop order: kubelet first (it would restart what is killed under it),
    // the runtime, the forwarders, then the janitor's teardown, and the control plane last.
    kubelet: ManagedProcess,
    scheduler: ManagedProcess,
    controller_manager: ManagedProcess,
    containerd: containerd::Containerd,
    // Held for the API server (kubectl logs, exec); stops when dropped.
    _kubelet_proxy: crate::connect_proxy::ConnectProxy,
    forwarder: netns::Forwarder,
    janitor: janitor::Janitor,
    netns: netns::NetNs,
    _cgroup: cgroups::NodeCgroup,
    images: Images,
    dir: PathBuf,
    control_plane: ControlPlane,
}

impl Node {
    /// Starts the control plane and the node with their state and logs under `dir` (emptied
    /// first), imports the images and waits until the node is Ready.
    pub async fn start(dir: &Path, config: &NodeConfig) -> Result<Self> {
        let started = Instant::now();
        if !rustix::process::geteuid().is_root() {
            bail!("the real node needs root (kubelet, containerd, network namespaces)");
        }
        // Nodes of runs that ended with their janitor (their mounts may be under `dir`).
        janitor::sweep_stale();
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let name = node_id();
        // First, so that whatever is made next is torn down however this ends.
        let janitor = janitor::Janitor::start(&name, &dir, &name)?;

        let cgroup = cgroups::NodeCgroup::create(&name)?;
        let netns = netns::NetNs::create(&name)?;
        let forwarder = netns::Forwarder::start(&netns)?;
        // The API server reaches kubelet (logs, exec) through this, from the host.
        let short = janitor::short_dir(&name);
        std::fs::create_dir_all(&short).with_context(|| format!("create {}", short.display()))?;
        let kubelet_proxy_socket = short.join("kubelet-proxy.sock");
        let kubelet_proxy = forwarder
            .proxy_into(
                &kubelet_proxy_socket,
                &[SocketAddrV4::new(NODE_IP, kubelet::PORT)],
            )
            .await?;
        let control_plane = ControlPlane::start_with(
            &dir.join("control-plane"),
            &ControlPlaneOptions {
                service_account_admission: true,
                cluster_egress: Some(kubelet_proxy_socket),
            },
        )
        .await
        .context("the control plane did not start")?;
        let apiserver: SocketAddr = control_plane
            .server()
            .trim_start_matches("https://")
            .parse()
            .with_context(|| format!("the API server's address {}", control_plane.server()))?;
        forwarder.forward(SocketAddrV4::new(API_SERVICE_IP, 443), apiserver)?;

        let images = Images::new()?;
        let archives = {
            let (dir, images, config) = (dir.join("images"), images.clone(), config.clone());
            tokio::task::spawn_blocking(move || {
                images::build(
                    &dir,
                    &images,
                    &config.sitecache_bin,
                    &config.dockerfile,
                    &config.other_agents,
                )
            })
        };
        let containerd_dir = dir.join("containerd");
        std::fs::create_dir_all(&containerd_dir)?;
        let containerd =
            containerd::Containerd::start(&containerd_dir, &short, &netns, &cgroup, &images.pause)
                .await?;
        let archives = archives.await.context("building the images")??;
        for (references, archive) in &archives {
            containerd.import(references, archive)?;
        }

        let kubelet_dir = dir.join("kubelet");
        std::fs::create_dir_all(&kubelet_dir)?;
        let kubelet_kubeconfig = kubelet_dir.join("kubeconfig");
        std::fs::write(
            &kubelet_kubeconfig,
            admin_kubeconfig_for(&control_plane, &format!("https://{API_SERVICE_IP}:443"))?,
        )?;
        let controllers_dir = dir.join("controllers");
        std::fs::create_dir_all(&controllers_dir)?;
        let controller_manager =
            controllers::start_controller_manager(&controllers_dir, &control_plane)?;
        let scheduler = controllers::start_scheduler(&controllers_dir, &control_plane)?;
        let kubelet = kubelet::start(
            &kubelet_dir,
            &short.join("kubelet"),
            &netns,
            &kubelet_kubeconfig,
            &control_plane.ca_file(),
            &containerd.endpoint(),
            &cgroup.root(),
        )?;
        let mut node = Self {
            kubelet,
            scheduler,
            controller_manager,
            containerd,
            _kubelet_proxy: kubelet_proxy,
            forwarder,
            janitor,
            netns,
            _cgroup: cgroup,
            images,
            dir,
            control_plane,
        };
        node.wait_ready().await?;
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "the real node is ready"
        );
        Ok(node)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let client = self.client().await?;
        let nodes: Api<NodeObject> = Api::all(client.clone());
        let default_sa: Api<ServiceAccount> = Api::namespaced(client, "default");
        loop {
            self.check_running()?;
            let ready = nodes
                .get_opt(NODE_NAME)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            // The service account controller is up once `default` has its account.
            let accounts = default_sa.get_opt("default").await.ok().flatten().is_some();
            if ready && accounts {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the node was not Ready (node Ready: {ready}, default service account: \
                     {accounts}) within {}s\n{}",
                    READY_TIMEOUT.as_secs(),
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An error with the end of the part's log if a part has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.control_plane.check_running()?;
        for p in [
            &mut self.containerd.process,
            &mut self.controller_manager,
            &mut self.scheduler,
            &mut self.kubelet,
        ] {
            if p.exited().is_some() {
                return Err(p.failure("exited"));
            }
        }
        Ok(())
    }

    /// The end of every part's log (kubelet, containerd, the controller-manager, the scheduler,
    /// the forwarders' errors), for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for p in [
            &self.kubelet,
            &self.containerd.process,
            &self.controller_manager,
            &self.scheduler,
        ] {
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                p.log().display(),
                p.log_tail(1500)
            ));
        }
        let errors = self.forwarder.errors();
        if !errors.is_empty() {
            out.push_str(&format!("--- forwarders ---\n{}\n", errors.join("\n")));
        }
        out
    }

    /// An admin client (from the host). Make one per test.
    pub async fn client(&self) -> Result<Client> {
        self.control_plane.client().await
    }

    /// The control plane under the node.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// The admin kubeconfig (from the host: the API server on loopback).
    pub fn kubeconfig(&self) -> &Path {
        self.control_plane.kubeconfig()
    }

    /// Imports an OCI image archive made elsewhere (a release's image, `make dist`) into the
    /// node's containerd, and checks that it lists the image as `reference` (the archive's
    /// `io.containerd.image.name`).
    pub fn import_image(&self, reference: &str, archive: &Path) -> Result<()> {
        self.containerd.import(&[reference.to_owned()], archive)
    }

    /// The references of the local images, for pod specs.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// The directory of the node's state and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where kubelet writes containers' logs (`<namespace>_<pod>_<uid>/<container>/<n>.log`).
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir.join("kubelet").join("pod-logs")
    }

    /// The node's network namespace (`ip netns` name).
    pub fn netns(&self) -> &str {
        self.netns.name()
    }

    /// Makes the host service at `target` (on this host's loopback, such as MinIO) reachable
    /// from pods at the returned address: the node's address, on the same port. Pods reach
    /// nothing else of the host.
    pub fn forward(&self, target: SocketAddr) -> Result<SocketAddr> {
        let listen = SocketAddrV4::new(NODE_IP, target.port());
        self.forwarder.forward(listen, target)?;
        Ok(listen.into())
    }

    /// `ctr` on the node's containerd (namespace `k8s.io`), for diagnostics.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        self.containerd.ctr(args)
    }

    /// Creates a namespace named `<prefix>-<unique suffix>` and waits until its `default`
    /// service account and its `kube-root-ca.crt` exist (pods are refused before).
    pub async fn create_namespace(&self, prefix: &str) -> Result<String> {
        let client = self.client().await?;
        let ns = crate::control_plane::create_namespace(&client, prefix).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let maps: Api<ConfigMap> = Api::namespaced(client, &ns);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sa = accounts.get_opt("default").await?.is_some();
            let ca = maps.get_opt("kube-root-ca.crt").await?.is_some();
            if sa && ca {
                return Ok(ns);
            }
            if Instant::now() > deadline {
                bail!(
                    "namespace {ns}: no default service account ({sa}) or kube-root-ca.crt \
                     ({ca}) after 30s\n{}",
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kubelet.kill();
        self.scheduler.kill();
        self.controller_manager.kill();
        self.containerd.process.kill();
        self.janitor.finish();
    }
}

/// A name for the node's cgroup and network namespace, unique on this machine while this
/// process lives: `scnode-<pid>-<n>`.
fn node_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "scnode-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The admin kubeconfig of `cp` with `server` as the API server's address.
fn admin_kubeconfig_for(cp: &ControlPlane, server: &str) -> Result<String> {
    let text = std::fs::read_to_string(cp.kubeconfig())?;
    let mut config: serde_json::Value = serde_saphyr::from_str(&text)?;
    for cluster in config["clusters"]
        .as_array_mut()
        .context("a kubeconfig without clusters")?
    {
        cluster["cluster"]["server"] = server.into();
    }
    Ok(serde_json::to_string_pretty(&config)?)
}
