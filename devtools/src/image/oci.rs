//! OCI image archives built without an image builder: tar layers of given files (uncompressed, or
//! gzip-compressed for a release) and an image config (user, entrypoint, command, environment,
//! working directory, labels), written as an OCI image layout in a tar (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) that `ctr images import`, `skopeo copy oci-archive:…` and
//! registries' clients read.
//!
//! Every entry is written with a fixed modification time and numeric owners, the JSON documents
//! with sorted keys and the compression without a timestamp, so the same inputs give the same
//! image, to the digest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

/// What a container of the image runs as and with (the `config` of the OCI image config).
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    /// `uid:gid`.
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value`.
    pub env: Vec<String>,
    pub working_dir: String,
    /// The config's `Labels` (what `docker inspect` shows).
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
enum Contents {
    Dir,
    File(PathBuf),
    Bytes(Vec<u8>),
    Symlink(String),
}

#[derive(Clone, Debug)]
struct Entry {
    /// Relative to the image's root, without a leading `/`.
    path: String,
    contents: Contents,
    mode: u32,
    uid: u64,
    gid: u64,
}

/// The files of a one-layer image. Parent directories are added as `0755 root:root` when not
/// given.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: Vec<Entry>,
}

impl Layer {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, path: &str, contents: Contents, mode: u32, owner: (u64, u64)) {
        let path = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_owned();
        self.entries.retain(|e| e.path != path);
        self.entries.push(Entry {
            path,
            contents,
            mode,
            uid: owner.0,
            gid: owner.1,
        });
    }

    /// A directory with `mode`, owned by `owner` (uid, gid).
    pub fn dir(&mut self, path: &str, mode: u32, owner: (u64, u64)) -> &mut Self {
        self.push(path, Contents::Dir, mode, owner);
        self
    }

    /// A copy of the host file `source`, owned by root.
    pub fn file(&mut self, path: &str, source: &Path, mode: u32) -> &mut Self {
        self.push(path, Contents::File(source.to_owned()), mode, (0, 0));
        self
    }

    /// A file with the given contents, owned by root.
    pub fn bytes(&mut self, path: &str, contents: &[u8], mode: u32) -> &mut Self {
        self.push(path, Contents::Bytes(contents.to_vec()), mode, (0, 0));
        self
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.push(path, Contents::Symlink(target.to_owned()), 0o777, (0, 0));
        self
    }

    /// Whether the layer has an entry at `path`.
    pub fn contains(&self, path: &str) -> bool {
        let path = path.trim_start_matches('/').trim_end_matches('/');
        self.entries.iter().any(|e| e.path == path)
    }

    /// The entries in tar order: every directory before what it holds, missing parents added.
    fn ordered(&self) -> Vec<Entry> {
        let mut all: Vec<Entry> = self.entries.clone();
        // Missing parents, until none is.
        loop {
            let missing: Vec<String> = all
                .iter()
                .filter_map(|e| Path::new(&e.path).parent())
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| p.to_string_lossy().into_owned())
                .filter(|p| !all.iter().any(|x| &x.path == p))
                .collect();
            if missing.is_empty() {
                break;
            }
            for p in missing {
                if !all.iter().any(|x| x.path == p) {
                    all.push(Entry {
                        path: p,
                        contents: Contents::Dir,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    });
                }
            }
        }
        // A path sorts after its parent: compare component lists.
        all.sort_by(|a, b| Path::new(&a.path).cmp(Path::new(&b.path)));
        all
    }

    /// Writes the layer as a tar to `out`.
    fn write_tar<W: Write>(&self, out: W) -> Result<W> {
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        for e in self.ordered() {
            let mut h = tar::Header::new_ustar();
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(0);
            match &e.contents {
                Contents::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    tar.append_data(&mut h, format!("{}/", e.path), io::empty())?;
                }
                Contents::File(source) => {
                    let f =
                        File::open(source).with_context(|| format!("open {}", source.display()))?;
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(f.metadata()?.len());
                    tar.append_data(&mut h, &e.path, f)
                        .with_context(|| format!("add {} to a layer", source.display()))?;
                }
                Contents::Bytes(b) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(b.len() as u64);
                    tar.append_data(&mut h, &e.path, b.as_slice())?;
                }
                Contents::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    tar.append_link(&mut h, &e.path, target)?;
                }
            }
        }
        Ok(tar.into_inner()?)
    }
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A content-addressed blob: `sha256:<hex>` and its size.
struct Blob {
    digest: String,
    size: u64,
}

fn blob_of(bytes: &[u8]) -> Blob {
    Blob {
        digest: format!("sha256:{:x}", Sha256::digest(bytes)),
        size: bytes.len() as u64,
    }
}

/// One image of an archive: its full reference (such as `docker.io/sitecache-test/agent:local`:
/// the name containerd files it under), its layers (the first at the bottom) and its config.
pub struct ImageSpec<'a> {
    pub reference: &'a str,
    pub layers: Vec<&'a Layer>,
    pub config: &'a ImageConfig,
    /// The manifest's annotations (`org.opencontainers.image.*`), repeated on its descriptor in
    /// `index.json`. `org.opencontainers.image.created`, when given, is also the config's
    /// `created` (else the epoch).
    pub annotations: BTreeMap<String, String>,
    /// Compress the layers with gzip (a release's image); uncompressed otherwise (the node's,
    /// which containerd would only decompress again).
    pub gzip: bool,
}

/// The annotation of the image's creation time.
pub const CREATED: &str = "org.opencontainers.image.created";

/// Writes an OCI image archive of `layer` and `config` to `out`, named `reference` (a full
/// reference such as `docker.io/sitecache-test/agent:local`: the name containerd files it under).
/// `work` holds the layer while the archive is written (removed after).
pub fn write_archive(
    out: &Path,
    reference: &str,
    layer: &Layer,
    config: &ImageConfig,
    work: &Path,
) -> Result<()> {
    write_images(
        out,
        &[ImageSpec {
            reference,
            layers: vec![layer],
            config,
            annotations: BTreeMap::new(),
            gzip: false,
        }],
        work,
    )
}

/// Writes an OCI image archive holding every image of `images` to `out`. A layer that several
/// images share (the same [`Layer`]) is written once: containerd stores and unpacks it once.
/// `work` holds the layers while the archive is written (removed after).
pub fn write_images(out: &Path, images: &[ImageSpec], work: &Path) -> Result<()> {
    std::fs::create_dir_all(work)?;
    // Each distinct layer (by address and compression), written to `work` once: (layer, its
    // file, its blob, its diff id).
    let mut layers: Vec<((*const Layer, bool), PathBuf, Blob, String)> = Vec::new();
    let mut blobs: Vec<(Blob, Vec<u8>)> = Vec::new();
    let mut manifests = Vec::new();
    for image in images {
        let Some((_, tag)) = image
            .reference
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
        else {
            bail!("image reference {} has no tag", image.reference);
        };
        let mut diff_ids = Vec::new();
        let mut descriptors = Vec::new();
        for layer in &image.layers {
            let key: (*const Layer, bool) = (*layer, image.gzip);
            if !layers.iter().any(|(k, ..)| *k == key) {
                let path = work.join(format!(
                    "layer-{}-{}.tar",
                    out.file_name().unwrap_or_default().to_string_lossy(),
                    layers.len()
                ));
                let blob = write_layer(layer, &path)?;
                let diff_id = blob.digest.clone();
                let (path, blob) = if image.gzip {
                    let compressed = path.with_extension("tar.gz");
                    let blob = gzip(&path, &compressed)?;
                    std::fs::remove_file(&path)?;
                    (compressed, blob)
                } else {
                    (path, blob)
                };
                layers.push((key, path, blob, diff_id));
            }
            let (_, _, blob, diff_id) = layers.iter().find(|(k, ..)| *k == key).unwrap();
            diff_ids.push(json!(diff_id));
            descriptors.push(json!({
                "mediaType": if image.gzip {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                } else {
                    "application/vnd.oci.image.layer.v1.tar"
                },
                "digest": blob.digest,
                "size": blob.size,
            }));
        }
        let config = image.config;
        let mut cfg = serde_json::Map::new();
        if !config.user.is_empty() {
            cfg.insert("User".into(), json!(config.user));
        }
        if !config.env.is_empty() {
            cfg.insert("Env".into(), json!(config.env));
        }
        if !config.entrypoint.is_empty() {
            cfg.insert("Entrypoint".into(), json!(config.entrypoint));
        }
        if !config.cmd.is_empty() {
            cfg.insert("Cmd".into(), json!(config.cmd));
        }
        if !config.working_dir.is_empty() {
            cfg.insert("WorkingDir".into(), json!(config.working_dir));
        }
        if !config.labels.is_empty() {
            cfg.insert("Labels".into(), json!(config.labels));
        }
        let created = image
            .annotations
            .get(CREATED)
            .map_or("1970-01-01T00:00:00Z", String::as_str);
        let history: Vec<_> = image
            .layers
            .iter()
            .map(|_| json!({ "created": created, "created_by": "sitecache-devtools image::oci" }))
            .collect();
        let image_config = serde_json::to_vec(&json!({
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": cfg,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        }))?;
        let config_blob = blob_of(&image_config);
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_blob.digest,
                "size": config_blob.size,
            },
            "layers": descriptors,
        });
        if !image.annotations.is_empty() {
            manifest["annotations"] = json!(image.annotations);
        }
        let manifest = serde_json::to_vec(&manifest)?;
        let manifest_blob = blob_of(&manifest);
        let mut annotations = image.annotations.clone();
        annotations.insert("io.containerd.image.name".into(), image.reference.into());
        annotations.insert("org.opencontainers.image.ref.name".into(), tag.into());
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_blob.digest,
            "size": manifest_blob.size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": annotations,
        }));
        blobs.push((config_blob, image_config));
        blobs.push((manifest_blob, manifest));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))?;

    let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    add_file(&mut tar, "oci-layout", OCI_LAYOUT)?;
    add_file(&mut tar, "index.json", &index)?;
    let mut written = std::collections::BTreeSet::new();
    for (blob, bytes) in &blobs {
        if written.insert(blob.digest.clone()) {
            add_file(&mut tar, &blob_path(&blob.digest), bytes)?;
        }
    }
    for (_, path, blob, _) in &layers {
        // Two layers with the same files are one blob.
        if !written.insert(blob.digest.clone()) {
            continue;
        }
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(blob.size);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, blob_path(&blob.digest), File::open(path)?)?;
    }
    tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    for (_, path, ..) in &layers {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Writes `layer` as a tar at `path`; returns its blob (digest and size).
fn write_layer(layer: &Layer, path: &Path) -> Result<Blob> {
    let hashing = layer.write_tar(Hashing {
        inner: BufWriter::new(
            File::create(path).with_context(|| format!("create {}", path.display()))?,
        ),
        hash: Sha256::new(),
        len: 0,
    })?;
    let blob = Blob {
        digest: format!("sha256:{:x}", hashing.hash.finalize()),
        size: hashing.len,
    };
    hashing
        .inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(blob)
}

/// Writes an OCI image layout archive of one artifact (a Helm chart, say) to `out`: its
/// `manifest`, tagged `tag` (`org.opencontainers.image.ref.name`), and the `blobs` it names.
pub fn write_artifact(out: &Path, tag: &str, manifest: &[u8], blobs: &[Vec<u8>]) -> Result<()> {
    let manifest_blob = blob_of(manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_blob.digest,
            "size": manifest_blob.size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    }))?;
    let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    add_file(&mut tar, "oci-layout", OCI_LAYOUT)?;
    add_file(&mut tar, "index.json", &index)?;
    let mut written = std::collections::BTreeSet::new();
    for bytes in std::iter::once(manifest).chain(blobs.iter().map(Vec::as_slice)) {
        let blob = blob_of(bytes);
        if written.insert(blob.digest.clone()) {
            add_file(&mut tar, &blob_path(&blob.digest), bytes)?;
        }
    }
    tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    Ok(())
}

/// The `oci-layout` file of an image layout.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Adds a regular file of the layout (mode 0644, time 0) to its tar.
fn add_file<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_size(bytes.len() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, bytes)
}

/// Compresses the file `from` into `to` with gzip (no name, no time in its header: the same
/// input gives the same bytes); returns the compressed blob.
fn gzip(from: &Path, to: &Path) -> Result<Blob> {
    let mut input = File::open(from).with_context(|| format!("open {}", from.display()))?;
    let out = Hashing {
        inner: BufWriter::new(
            File::create(to).with_context(|| format!("create {}", to.display()))?,
        ),
        hash: Sha256::new(),
        len: 0,
    };
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(out, flate2::Compression::default());
    io::copy(&mut input, &mut encoder)?;
    let out = encoder.finish()?;
    let blob = Blob {
        digest: format!("sha256:{:x}", out.hash.finalize()),
        size: out.len,
    };
    out.inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(blob)
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_bytes: &[u8]) -> Vec<(String, u32, u64, u64)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                )
            })
            .collect()
    }

    /// The files of an OCI archive by name, each once.
    fn archive_files(archive: &Path) -> std::collections::HashMap<String, Vec<u8>> {
        let mut files = std::collections::HashMap::new();
        let mut a = tar::Archive::new(File::open(archive).unwrap());
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut buf = Vec::new();
            io::Read::read_to_end(&mut e, &mut buf).unwrap();
            assert!(files.insert(name.clone(), buf).is_none(), "{name} twice");
        }
        files
    }

    #[test]
    fn layer_lists_parents_first_with_owners() {
        let mut l = Layer::new();
        l.bytes("/usr/local/bin/tool", b"x", 0o755)
            .dir("/home/app", 0o700, (1000, 1000))
            .symlink("/bin", "usr/bin");
        let bytes = l.write_tar(Vec::new()).unwrap();
        let got = entries(&bytes);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "home/",
                "home/app/",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/tool"
            ]
        );
        let home = got.iter().find(|e| e.0 == "home/app/").unwrap();
        assert_eq!((home.1, home.2, home.3), (0o700, 1000, 1000));
    }

    #[test]
    fn archive_is_an_oci_layout_with_matching_digests() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Layer::new();
        l.bytes("/hello", b"hi", 0o644);
        let cfg = ImageConfig {
            user: "1000:1000".into(),
            entrypoint: vec!["/hello".into()],
            ..Default::default()
        };
        let out = dir.path().join("image.tar");
        write_archive(&out, "docker.io/x/y:t", &l, &cfg, dir.path()).unwrap();
        let files = archive_files(&out);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "docker.io/x/y:t"
        );
        let digest = m["digest"].as_str().unwrap();
        let manifest = &files[&blob_path(digest)];
        assert_eq!(blob_of(manifest).digest, digest);
        let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        let config = &files[&blob_path(manifest["config"]["digest"].as_str().unwrap())];
        let config: serde_json::Value = serde_json::from_slice(config).unwrap();
        assert_eq!(config["config"]["User"], "1000:1000");
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);
        let layer = &files[&blob_path(layer_digest)];
        assert_eq!(blob_of(layer).digest, layer_digest);
        assert_eq!(entries(layer)[0].0, "hello");
    }

    #[test]
    fn images_of_one_archive_share_their_common_layer() {
        let dir = tempfile::tempdir().unwrap();
        let mut base = Layer::new();
        base.bytes("/bin/tool", b"tool", 0o755);
        let mut top = Layer::new();
        top.bytes("/site/main.ts", b"main", 0o644);
        let cfg = ImageConfig {
            user: "1000:1000".into(),
            ..Default::default()
        };
        let out = dir.path().join("images.tar");
        write_images(
            &out,
            &[
                ImageSpec {
                    reference: "docker.io/x/base:t",
                    layers: vec![&base],
                    config: &cfg,
                    annotations: BTreeMap::new(),
                    gzip: false,
                },
                ImageSpec {
                    reference: "docker.io/x/site:t",
                    layers: vec![&base, &top],
                    config: &cfg,
                    annotations: BTreeMap::new(),
                    gzip: false,
                },
            ],
            dir.path(),
        )
        .unwrap();
        let files = archive_files(&out);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let layers_of = |n: usize| -> Vec<String> {
            let m = &index["manifests"][n];
            let manifest: serde_json::Value =
                serde_json::from_slice(&files[&blob_path(m["digest"].as_str().unwrap())]).unwrap();
            let config: serde_json::Value = serde_json::from_slice(
                &files[&blob_path(manifest["config"]["digest"].as_str().unwrap())],
            )
            .unwrap();
            let layers: Vec<String> = manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(config["rootfs"]["diff_ids"], json!(layers));
            for l in &layers {
                assert_eq!(&blob_of(&files[&blob_path(l)]).digest, l);
            }
            layers
        };
        let (first, second) = (layers_of(0), layers_of(1));
        assert_eq!(first.len(), 1);
        assert_eq!(second.len(), 2);
        assert_eq!(first[0], second[0]);
        assert_eq!(
            index["manifests"][1]["annotations"]["io.containerd.image.name"],
            "docker.io/x/site:t"
        );
        // oci-layout, index.json, two configs, two manifests, two layers.
        assert_eq!(files.len(), 8, "{:?}", files.keys().collect::<Vec<_>>());
    }
}
