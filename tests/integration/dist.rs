//! The release's files (`make dist`), checked with the tools their users check them with:
//! `sha256sum -c`; a registry (`crane registry serve`) that the image archive is pushed to and
//! validated in (every layer downloaded and digested) and that `helm push` pushes the chart
//! package to, whose manifest must be the one of the chart's OCI layout, byte for byte; krew
//! installing the plugin from the manifest and archive; `helm template` of the package against
//! `install.yaml`; `kubectl kustomize` of an overlay on the kustomize base. And a second build of
//! the same commit and binary gives the same files.
//!
//! They test a build, not the tree: `make test-dist` builds `dist/` and names it in
//! `SITECACHE_DIST` (they fail without it), then runs them with `cluster::dist`, which installs
//! the release on the real node in each of its three ways.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use sitecache_devtools::assets::Asset;
use sitecache_devtools::dist::{self, chart, image};

use crate::support::{self, ok};

/// The release under test: its directory and version.
pub struct Dist {
    pub dir: PathBuf,
    pub version: String,
}

impl Dist {
    /// The release `make test-dist` built (`SITECACHE_DIST`).
    pub fn get() -> Dist {
        let dir = std::env::var_os("SITECACHE_DIST")
            .map(PathBuf::from)
            .expect("SITECACHE_DIST is not set: these tests check a release, run make test-dist");
        let version = dist::cargo_version(&support::repo_path("Cargo.toml")).unwrap();
        assert!(
            dir.join(dist::sums::SUMS).is_file(),
            "{} is not a release (no SHA256SUMS): run make test-dist",
            dir.display()
        );
        Dist { dir, version }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        assert!(path.is_file(), "the release has no {name}");
        path
    }

    /// A file of an archive of the release (a `.tar` or `.tar.gz`).
    pub fn archive_member(&self, archive: &str, member: &str) -> Vec<u8> {
        let file = std::fs::File::open(self.path(archive)).unwrap();
        let reader: Box<dyn Read> = if archive.ends_with(".gz") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut tar = tar::Archive::new(reader);
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_string_lossy() == member {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                return bytes;
            }
        }
        panic!("{archive} has no {member}");
    }

    /// Unpacks an archive of the release into `into`.
    pub fn unpack(&self, archive: &str, into: &Path) {
        std::fs::create_dir_all(into).unwrap();
        let file = std::fs::File::open(self.path(archive)).unwrap();
        let reader: Box<dyn Read> = if archive.ends_with(".gz") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        tar::Archive::new(reader).unpack(into).unwrap();
    }
}

/// `sitecache-dev`, which `make dist` built beside this test's binary (`target/debug/`).
fn sitecache_dev() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("sitecache-dev");
    assert!(
        path.is_file(),
        "no {}: make test-dist builds it",
        path.display()
    );
    path
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn blob(dist: &Dist, archive: &str, digest: &str) -> Vec<u8> {
    dist.archive_member(archive, &format!("blobs/{}", digest.replacen(':', "/", 1)))
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn git_head() -> String {
    ok(
        "git rev-parse HEAD",
        Command::new("git")
            .arg("-C")
            .arg(support::repo_path(""))
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap(),
    )
    .trim()
    .to_owned()
}

/// `crane registry serve` on a free loopback port, stopped when dropped.
struct Registry {
    child: Child,
    host: String,
}

impl Registry {
    fn start() -> Registry {
        let port = sitecache_devtools::free_port().unwrap();
        let host = format!("127.0.0.1:{port}");
        let child = Command::new(Asset::Crane.path().expect("crane (make test-assets)"))
            .args(["registry", "serve", "--address", &host])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let begun = Instant::now();
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(
                begun.elapsed() < Duration::from_secs(20),
                "crane registry serve did not listen on {host}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, host }
    }

    fn crane(&self, args: &[&str]) -> String {
        let out = Command::new(Asset::Crane.path().unwrap())
            .args(args)
            .arg("--insecure")
            .output()
            .unwrap();
        ok(&format!("crane {}", args.join(" ")), out)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "checks a release: make test-dist"]
fn sha256sums_lists_every_file_and_each_matches() {
    let dist = Dist::get();
    let out = ok(
        "sha256sum -c SHA256SUMS",
        Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(&dist.dir)
            .output()
            .unwrap(),
    );
    let listed: Vec<&str> = out
        .lines()
        .map(|l| l.strip_suffix(": OK").expect(l))
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(&dist.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "SHA256SUMS")
        .collect();
    files.sort();
    assert_eq!(listed, files);
    let v = &dist.version;
    for expected in [
        format!("sitecache-{v}-linux-amd64.tar.gz"),
        format!("kubectl-sitecache-{v}-linux-amd64.tar.gz"),
        format!("sitecache-{v}.krew.yaml"),
        format!("sitecache-image-{v}.oci.tar"),
        format!("sitecache-{v}.tgz"),
        format!("sitecache-chart-{v}.oci.tar"),
        "install.yaml".to_owned(),
        format!("sitecache-kustomize-{v}.tar.gz"),
        format!("sitecache-{v}.cdx.json"),
        "RELEASE_NOTES.md".to_owned(),
    ] {
        assert!(files.contains(&expected), "no {expected} in {files:?}");
    }
}

#[test]
#[ignore = "checks a release: make test-dist"]
fn the_binary_archive_holds_the_binary_of_this_version_and_its_licence() {
    let dist = Dist::get();
    let v = &dist.version;
    let dir = tempfile::tempdir().unwrap();
    dist.unpack(&format!("sitecache-{v}-linux-amd64.tar.gz"), dir.path());
    let top = dir.path().join(format!("sitecache-{v}-linux-amd64"));
    let version = ok(
        "sitecache --version",
        Command::new(top.join("sitecache"))
            .arg("--version")
            .output()
            .unwrap(),
    );
    assert_eq!(version.trim(), format!("sitecache {v}"));
    let license = std::fs::read_to_string(top.join("LICENSE")).unwrap();
    assert!(license.contains("Apache License") && license.contains("Version 2.0"));
    for f in ["README.md", "CHANGELOG.md"] {
        assert!(top.join(f).is_file(), "no {f}");
    }
}

#[test]
#[ignore = "checks a release: make test-dist"]
fn the_image_is_an_annotated_oci_layout_a_registry_accepts_and_validates() {
    let dist = Dist::get();
    let v = &dist.version;
    let archive = image::archive_name(v);
    let index = json(&dist.archive_member(&archive, "index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let descriptor = &manifests[0];
    assert_eq!(
        descriptor["annotations"]["org.opencontainers.image.ref.name"],
        v.as_str()
    );
    assert_eq!(
        descriptor["annotations"]["io.containerd.image.name"],
        format!("{}:{v}", dist::IMAGE_REPOSITORY)
    );
    let digest = descriptor["digest"].as_str().unwrap();
    let manifest_bytes = blob(&dist, &archive, digest);
    assert_eq!(sha256(&manifest_bytes), digest);
    let manifest = json(&manifest_bytes);
    let annotations = &manifest["annotations"];
    assert_eq!(annotations["org.opencontainers.image.version"], v.as_str());
    // A clean checkout (CI's) builds from its commit; a tree with changes says so.
    let revision = annotations["org.opencontainers.image.revision"]
        .as_str()
        .unwrap();
    assert!(
        revision == git_head() || revision == format!("{}-dirty", git_head()),
        "revision {revision} is not HEAD {}",
        git_head()
    );
    assert_eq!(annotations["org.opencontainers.image.source"], dist::SOURCE);
    assert_eq!(
        annotations["org.opencontainers.image.licenses"],
        "Apache-2.0"
    );
    let created = annotations["org.opencontainers.image.created"]
        .as_str()
        .unwrap();
    let config = json(&blob(
        &dist,
        &archive,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    assert_eq!(config["created"], created);
    assert_eq!(config["config"]["Labels"], *annotations);
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"][0],
        "/usr/local/bin/sitecache"
    );
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }

    // A registry takes the layout as it is (its manifest's digest unchanged) and validates it:
    // every layer downloaded, decompressed and digested against the config's diff ids.
    let registry = Registry::start();
    let layout = tempfile::tempdir().unwrap();
    dist.unpack(&archive, layout.path());
    let reference = format!("{}/sitecache:{v}", registry.host);
    registry.crane(&["push", &layout.path().to_string_lossy(), &reference]);
    assert_eq!(registry.crane(&["digest", &reference]).trim(), digest);
    registry.crane(&["validate", "--remote", &reference]);
}

#[test]
#[ignore = "checks a release: make test-dist"]
fn the_chart_layout_is_what_helm_push_sends() {
    let dist = Dist::get();
    let v = &dist.version;
    let layout = chart::layout_name(v);
    let index = json(&dist.archive_member(&layout, "index.json"));
    let descriptor = &index["manifests"][0];
    assert_eq!(
        descriptor["annotations"]["org.opencontainers.image.ref.name"],
        v.as_str()
    );
    let ours = blob(&dist, &layout, descriptor["digest"].as_str().unwrap());
    let manifest = json(&ours);
    assert_eq!(manifest["config"]["mediaType"], chart::CONFIG_MEDIA_TYPE);
    assert_eq!(manifest["layers"][0]["mediaType"], chart::CHART_MEDIA_TYPE);
    let package = std::fs::read(dist.path(&format!("sitecache-{v}.tgz"))).unwrap();
    assert_eq!(manifest["layers"][0]["digest"], sha256(&package));
    let config = json(&blob(
        &dist,
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    assert_eq!(config["version"], v.as_str());
    assert_eq!(config["appVersion"], v.as_str());

    let registry = Registry::start();
    let helm = Asset::Helm.path().unwrap();
    let home = tempfile::tempdir().unwrap();
    ok(
        "helm push",
        Command::new(&helm)
            .arg("push")
            .arg(dist.path(&format!("sitecache-{v}.tgz")))
            .arg(format!("oci://{}/charts", registry.host))
            .arg("--plain-http")
            .env("HELM_CONFIG_HOME", home.path())
            .env("HELM_CACHE_HOME", home.path())
            .output()
            .unwrap(),
    );
    let pushed = registry.crane(&[
        "manifest",
        &format!("{}/charts/sitecache:{v}", registry.host),
    ]);
    assert_eq!(
        pushed,
        String::from_utf8(ours).unwrap(),
        "helm push sent another manifest than the chart's layout holds"
    );
}

#[test]
#[ignore = "checks a release: make test-dist"]
fn krew_installs_the_plugin_from_its_manifest_and_archive() {
    let dist = Dist::get();
    let v = &dist.version;
    let root = tempfile::tempdir().unwrap();
    let manifest = dist.path(&format!("sitecache-{v}.krew.yaml"));
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(
        text.contains(&format!(
            "{}/releases/download/v{v}/kubectl-sitecache-{v}-linux-amd64.tar.gz",
            dist::SOURCE
        )),
        "{text}"
    );
    ok(
        "krew install",
        Command::new(Asset::Krew.path().expect("krew (make test-assets)"))
            .arg("install")
            .arg(format!("--manifest={}", manifest.display()))
            .arg(format!(
                "--archive={}",
                dist.path(&format!("kubectl-sitecache-{v}-linux-amd64.tar.gz"))
                    .display()
            ))
            .env("KREW_ROOT", root.path())
            .env("KREW_NO_UPGRADE_CHECK", "1")
            .output()
            .unwrap(),
    );
    let plugin = root.path().join("bin/kubectl-sitecache");
    let help = ok(
        "kubectl-sitecache --help",
        Command::new(&plugin).arg("--help").output().unwrap(),
    );
    assert!(help.contains("SiteCache"), "{help}");
    let version = ok(
        "kubectl-sitecache --version",
        Command::new(&plugin).arg("--version").output().unwrap(),
    );
    assert!(version.contains(v.as_str()), "{version}");
}

#[test]
#[ignore = "checks a release: make test-dist"]
fn the_sbom_is_cyclonedx_of_the_rust_dependency_graph() {
    let dist = Dist::get();
    let v = &dist.version;
    let sbom = json(&std::fs::read(dist.path(&format!("sitecache-{v}.cdx.json"))).unwrap());
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.5");
    assert_eq!(sbom["metadata"]["component"]["name"], "sitecache");
    assert_eq!(sbom["metadata"]["component"]["version"], v.as_str());
    // Reproducible: no random serial number.
    assert!(
        sbom.get("serialNumber").is_none(),
        "{}",
        sbom["serialNumber"]
    );
    let components = sbom["components"].as_array().unwrap();
    let lock = std::fs::read_to_string(support::repo_path("Cargo.lock")).unwrap();
    for name in ["aws-sdk-s3", "kube", "tokio", "tar", "zstd"] {
        let c = components
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no component {name}"));
        let version = c["version"].as_str().unwrap();
        assert!(
            lock.contains(&format!("name = \"{name}\"\nversion = \"{version}\"")),
            "{name} {version} is not in Cargo.lock"
        );
        assert!(
            c["purl"]
                .as_str()
                .unwrap()
                .starts_with(&format!("pkg:cargo/{name}@{version}")),
            "{c}"
        );
    }
}

#[test]
#[ignore = "checks a release: make test-dist"]
fn install_yaml_is_the_chart_package_rendered_and_the_kustomize_base_builds() {
    let dist = Dist::get();
    let v = &dist.version;
    let install = std::fs::read_to_string(dist.path("install.yaml")).unwrap();
    // What the release's chart package renders, to the byte: the two cannot drift.
    let work = tempfile::tempdir().unwrap();
    let rendered = chart::install_yaml(
        &Asset::Helm.path().unwrap(),
        &dist.path(&chart::package_name(v)),
        work.path(),
    )
    .unwrap();
    assert!(
        rendered == install,
        "install.yaml is not the chart package rendered"
    );
    let objects: Vec<Value> = serde_saphyr::from_multiple(&install).unwrap();
    let objects: Vec<&Value> = objects.iter().filter(|o| !o.is_null()).collect();
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "Namespace");
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "ValidatingAdmissionPolicy",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    let position = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    assert!(
        position("CustomResourceDefinition") < position("ValidatingAdmissionPolicy"),
        "kubectl delete -f must meet the CRD's guard before deleting it: {kinds:?}"
    );
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        format!("{}:{v}", dist::IMAGE_REPOSITORY)
    );
    assert_eq!(
        container["envFrom"],
        serde_json::json!([
            {"configMapRef": {"name": chart::INSTALL_CONFIG, "optional": true}},
            {"secretRef": {"name": chart::INSTALL_SECRET, "optional": true}},
        ])
    );
    for o in &objects {
        let ns = o["metadata"]["namespace"].as_str();
        assert!(
            ns.is_none() || ns == Some(dist::INSTALL_NAMESPACE),
            "{} {} is in {ns:?}",
            o["kind"],
            o["metadata"]["name"]
        );
    }

    // The base as an overlay uses it: the image moved to a mirror, the storage settings from a
    // generated ConfigMap.
    let dir = tempfile::tempdir().unwrap();
    dist.unpack(&format!("sitecache-kustomize-{v}.tar.gz"), dir.path());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sitecache/install.yaml")).unwrap(),
        install
    );
    let overlay = dir.path().join("overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../sitecache\nimages:\n  - name: {}\n    newName: registry.example.com/mirror/sitecache\nconfigMapGenerator:\n  - name: sitecache-config\n    namespace: sitecache-system\n    literals: [SITECACHE_DEFAULT_BUCKET=site-caches]\n    options: {{disableNameSuffixHash: true}}\n",
            dist::IMAGE_REPOSITORY
        ),
    )
    .unwrap();
    let built = ok(
        "kubectl kustomize",
        Command::new(Asset::Kubectl.path().unwrap())
            .arg("kustomize")
            .arg(&overlay)
            .output()
            .unwrap(),
    );
    assert!(
        built.contains(&format!("image: registry.example.com/mirror/sitecache:{v}")),
        "{built}"
    );
    assert!(
        built.contains("SITECACHE_DEFAULT_BUCKET: site-caches"),
        "{built}"
    );
}

#[test]
#[ignore = "checks a release: make test-dist"]
fn a_second_build_of_the_same_commit_and_binary_is_the_same() {
    let dist = Dist::get();
    let v = &dist.version;
    let bin = tempfile::tempdir().unwrap();
    dist.unpack(&format!("sitecache-{v}-linux-amd64.tar.gz"), bin.path());
    let out = tempfile::tempdir().unwrap();
    let again = out.path().join("dist");
    ok(
        "sitecache-dev dist",
        Command::new(sitecache_dev())
            .arg("--repo")
            .arg(support::repo_path(""))
            .arg("dist")
            .arg("--sitecache-bin")
            .arg(
                bin.path()
                    .join(format!("sitecache-{v}-linux-amd64/sitecache")),
            )
            .arg("--out")
            .arg(&again)
            .output()
            .unwrap(),
    );
    assert_eq!(
        std::fs::read_to_string(again.join("SHA256SUMS")).unwrap(),
        std::fs::read_to_string(dist.path("SHA256SUMS")).unwrap(),
        "a second build differs"
    );
}
