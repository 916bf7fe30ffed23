//! The chart in the release:
//! - `sitecache-<version>.tgz`: `helm package` of charts/sitecache with the release's version and
//!   appVersion (so the image tag defaults to the release's), every file dated at the commit:
//!   the same commit gives the same package;
//! - `sitecache-chart-<version>.oci.tar`: the OCI image layout of the chart artifact exactly as
//!   `helm push` sends it (the manifest, the config with the chart's metadata, the package as
//!   its layer; tagged `<version>`), for registries reached without Helm (`oras cp
//!   --from-oci-layout`), mirrors and air-gapped copies;
//! - `install.yaml`: the chart rendered (`helm template`) into the namespace `sitecache-system`
//!   for `kubectl apply --server-side -f`, with that Namespace first, so the two cannot drift;
//!   its controller reads its storage settings from the ConfigMap `sitecache-config` and the
//!   Secret `sitecache-storage`, both optional (docs/install.md);
//! - `sitecache-kustomize-<version>.tar.gz`: a kustomize base (`sitecache/kustomization.yaml`
//!   and `sitecache/install.yaml`) for overlays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest;

use super::archives::write_tar_gz;
use super::{IMAGE_REPOSITORY, INSTALL_NAMESPACE, Options, Release, output};
use crate::image::oci;

/// The chart's name (Chart.yaml).
pub const CHART: &str = "sitecache";
/// The media types of a Helm chart in an OCI registry (Helm's `pkg/registry`).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.helm.config.v1+json";
pub const CHART_MEDIA_TYPE: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
/// The ConfigMap and Secret `install.yaml`'s controller takes its environment from.
pub const INSTALL_CONFIG: &str = "sitecache-config";
pub const INSTALL_SECRET: &str = "sitecache-storage";

/// The package's name.
pub fn package_name(version: &str) -> String {
    format!("{CHART}-{version}.tgz")
}

/// The chart layout archive's name.
pub fn layout_name(version: &str) -> String {
    format!("{CHART}-chart-{version}.oci.tar")
}

/// The kustomize base's archive's name.
pub fn kustomize_name(version: &str) -> String {
    format!("sitecache-kustomize-{version}.tar.gz")
}

/// Builds the package, its layout, `install.yaml` and the kustomize base into `opts.out`.
pub fn build(opts: &Options, release: &Release, work: &Path) -> Result<()> {
    let package = package(opts, release, work)?;
    layout(
        &package,
        &opts.out.join(layout_name(&release.version)),
        release,
    )?;
    let install = opts.out.join("install.yaml");
    std::fs::write(&install, install_yaml(&opts.helm, &package, work)?)?;
    let kustomization = work.join("kustomization.yaml");
    std::fs::write(&kustomization, KUSTOMIZATION)?;
    write_tar_gz(
        &opts.out.join(kustomize_name(&release.version)),
        &[
            ("sitecache/kustomization.yaml".into(), kustomization, 0o644),
            ("sitecache/install.yaml".into(), install, 0o644),
        ],
        release.created_unix,
    )
}

/// The kustomize base: `install.yaml` as it is (overlays set the namespace, images, replicas,
/// the storage ConfigMap and Secret: docs/install.md).
const KUSTOMIZATION: &str = "\
# The sitecache release's kustomize base: install.yaml, rendered from the chart.
# Use it from an overlay (resources: [path/to/sitecache]); docs/install.md has an example.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - install.yaml
";

/// `helm package` of a copy of the chart with the release's version and appVersion, every file
/// (and the package) dated at the commit. Returns the package.
fn package(opts: &Options, release: &Release, work: &Path) -> Result<PathBuf> {
    let staged = work.join("chart").join(CHART);
    copy_dir(&opts.repo.join("charts").join(CHART), &staged)?;
    let chart_yaml = staged.join("Chart.yaml");
    let text = std::fs::read_to_string(&chart_yaml)?;
    std::fs::write(&chart_yaml, stamp_chart_yaml(&text, &release.version)?)?;
    set_times(&staged, release.created_unix)?;
    output(
        Command::new(&opts.helm)
            .arg("package")
            .arg(&staged)
            .arg("--destination")
            .arg(&opts.out),
    )?;
    let package = opts.out.join(package_name(&release.version));
    if !package.is_file() {
        bail!("helm package did not write {}", package.display());
    }
    // `helm push` dates the artifact by the package's time.
    set_time(&package, release.created_unix)?;
    Ok(package)
}

/// Chart.yaml with `version` and `appVersion` set to `version`, and the release's image in
/// Artifact Hub's `artifacthub.io/images` tagged with it.
pub fn stamp_chart_yaml(text: &str, version: &str) -> Result<String> {
    let mut seen = (false, false);
    let image = format!("image: {IMAGE_REPOSITORY}:");
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if let Some(at) = l.find(&image) {
                format!("{}{image}{version}", &l[..at])
            } else if l.starts_with("version:") {
                seen.0 = true;
                format!("version: {version}")
            } else if l.starts_with("appVersion:") {
                seen.1 = true;
                format!("appVersion: \"{version}\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    if seen != (true, true) {
        bail!("Chart.yaml has no top-level version or appVersion line to set");
    }
    Ok(lines.join("\n") + "\n")
}

/// The chart's metadata as Helm stores it as the artifact's config (Go's `chart.Metadata`,
/// fields in its order, empty ones left out).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    home: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sources: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    maintainers: Vec<Maintainer>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    icon: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    condition: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    tags: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    app_version: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deprecated: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    kube_version: String,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    chart_type: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct Maintainer {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    email: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    url: String,
}

/// An OCI image manifest, its fields in the order of Go's `ocispec.Manifest` (what Helm
/// marshals; the unset ones it leaves out).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
}

/// An OCI descriptor, its fields in the order of Go's `ocispec.Descriptor`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

impl Descriptor {
    fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: format!("sha256:{:x}", sha2::Sha256::digest(bytes)),
            size: bytes.len() as u64,
        }
    }
}

/// JSON as Go's `encoding/json` writes it: `<`, `>` and `&` escaped (serde_json sorts map keys
/// as Go does, and writes everything else the same).
fn go_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let text = serde_json::to_string(value)?;
    Ok(text
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .into_bytes())
}

/// Writes the OCI layout archive of the chart artifact `helm push` would push from `package`
/// (Helm's `registry.Client.Push`: the metadata as config, the package as the one layer, the
/// annotations it derives from the metadata, dated by the package's time, which is the commit's).
fn layout(package: &Path, out: &Path, release: &Release) -> Result<()> {
    let chart_yaml = read_chart_yaml(package)?;
    let meta: Metadata = serde_saphyr::from_str(&chart_yaml)
        .with_context(|| format!("the Chart.yaml in {}", package.display()))?;
    let config = go_json(&meta)?;
    let layer = std::fs::read(package)?;
    let mut annotations = BTreeMap::new();
    let mut add = |k: &str, v: &str| {
        if !v.is_empty() {
            annotations.insert(k.to_owned(), v.to_owned());
        }
    };
    add("org.opencontainers.image.description", &meta.description);
    add("org.opencontainers.image.title", &meta.name);
    add("org.opencontainers.image.version", &meta.version);
    add("org.opencontainers.image.url", &meta.home);
    add(oci::CREATED, &release.created);
    if let Some(source) = meta.sources.first() {
        add("org.opencontainers.image.source", source);
    }
    if !meta.maintainers.is_empty() {
        let authors: Vec<String> = meta
            .maintainers
            .iter()
            .map(|m| match (m.name.is_empty(), m.email.is_empty()) {
                (_, true) => m.name.clone(),
                (true, false) => format!(" ({})", m.email),
                (false, false) => format!("{} ({})", m.name, m.email),
            })
            .collect();
        add("org.opencontainers.image.authors", &authors.join(", "));
    }
    for (k, v) in &meta.annotations {
        if k != "org.opencontainers.image.version" && k != "org.opencontainers.image.title" {
            annotations.insert(k.clone(), v.clone());
        }
    }
    let manifest = go_json(&Manifest {
        schema_version: 2,
        config: Descriptor::of(CONFIG_MEDIA_TYPE, &config),
        layers: vec![Descriptor::of(CHART_MEDIA_TYPE, &layer)],
        annotations,
    })?;
    oci::write_artifact(out, &release.version, &manifest, &[config, layer])
}

/// The Chart.yaml inside a chart package.
fn read_chart_yaml(package: &Path) -> Result<String> {
    let file = std::fs::File::open(package)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.as_ref() == Path::new(CHART).join("Chart.yaml") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text)?;
            return Ok(text);
        }
    }
    bail!("{} has no {CHART}/Chart.yaml", package.display())
}

/// The values `install.yaml` is rendered with: the chart's defaults, plus the controller's
/// environment from the optional ConfigMap and Secret, where a plain manifest's users put the
/// storage settings and keys.
fn install_values() -> serde_json::Value {
    json!({
        "controller": {
            "envFrom": [
                {"configMapRef": {"name": INSTALL_CONFIG, "optional": true}},
                {"secretRef": {"name": INSTALL_SECRET, "optional": true}},
            ],
        },
    })
}

/// `install.yaml`: the Namespace, then `helm template` of the chart package `package` (with
/// `helm`) in it; `work` holds the values file.
pub fn install_yaml(helm: &Path, package: &Path, work: &Path) -> Result<String> {
    let values = work.join("install-values.json");
    std::fs::write(&values, serde_json::to_vec_pretty(&install_values())?)?;
    let rendered = output(
        Command::new(helm)
            .args(["template", CHART])
            .arg(package)
            .args(["--namespace", INSTALL_NAMESPACE])
            .arg("--values")
            .arg(&values),
    )?;
    Ok(format!(
        "# sitecache: the CRD, RBAC, ServiceAccount and controller Deployment, rendered from the\n\
         # chart with its default values into the namespace {INSTALL_NAMESPACE}.\n\
         # kubectl apply --server-side -f install.yaml (docs/install.md); the storage settings come\n\
         # from the ConfigMap {INSTALL_CONFIG} and the Secret {INSTALL_SECRET} in that namespace.\n\
         ---\n\
         apiVersion: v1\n\
         kind: Namespace\n\
         metadata:\n  name: {INSTALL_NAMESPACE}\n\
         {}",
        rendered.trim_start()
    ))
}

/// Copies the directory `from` to `to` (files and directories only).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)
                .with_context(|| format!("copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Sets the modification time of everything under `dir` (and `dir`) to `unix`.
fn set_times(dir: &Path, unix: u64) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            set_times(&path, unix)?;
        } else {
            set_time(&path, unix)?;
        }
    }
    set_time(dir, unix)
}

fn set_time(path: &Path, unix: u64) -> Result<()> {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    std::fs::File::open(path)
        .and_then(|f| f.set_times(std::fs::FileTimes::new().set_modified(time)))
        .with_context(|| format!("set the time of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_sets_the_versions_and_the_artifact_hub_image_and_nothing_else() {
        let text = "apiVersion: v2\nname: sitecache\nversion: 0.1.0\nappVersion: \"0.1.0\"\nannotations:\n  version: keep\n  artifacthub.io/images: |\n    - name: sitecache\n      image: ghcr.io/sitecache/sitecache:0.1.0\n";
        assert_eq!(
            stamp_chart_yaml(text, "1.2.3").unwrap(),
            "apiVersion: v2\nname: sitecache\nversion: 1.2.3\nappVersion: \"1.2.3\"\nannotations:\n  version: keep\n  artifacthub.io/images: |\n    - name: sitecache\n      image: ghcr.io/sitecache/sitecache:1.2.3\n"
        );
        assert!(stamp_chart_yaml("name: x\nversion: 1\n", "2").is_err());
    }

    #[test]
    fn metadata_is_written_as_go_writes_it() {
        let meta: Metadata = serde_saphyr::from_str(
            "apiVersion: v2\nname: c\nversion: 1.0.0\ndescription: a <b> & c\nkubeVersion: \">=1.30.0-0\"\ntype: application\nannotations:\n  z: \"1\"\n  a: \"2\"\n",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(go_json(&meta).unwrap()).unwrap(),
            r#"{"name":"c","version":"1.0.0","description":"a \u003cb\u003e \u0026 c","apiVersion":"v2","annotations":{"a":"2","z":"1"},"kubeVersion":"\u003e=1.30.0-0","type":"application"}"#
        );
    }
}
