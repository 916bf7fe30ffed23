//! The node's images, built locally (no registry is reachable and no image builder runs here):
//! the sandbox ("pause") image, the agent image (this project's `sitecache` binary laid out as
//! the Dockerfile's final stage lays it out; optionally more, each from its own binary and
//! Dockerfile, such as an earlier release's), a Deno image and a site image (Deno plus the example
//! storefront). They are OCI archives (`oci`) imported into containerd under full references, so
//! that nothing is ever pulled; the Deno and site images share their Deno layer.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::image::agent::{self, CA_CERTIFICATES, add_libraries};
use crate::image::oci::{self, ImageConfig, ImageSpec, Layer};

/// The repository part of every local image's reference.
const REPOSITORY: &str = "docker.io/sitecache-test";
/// The tag of the images built from this checkout (never `latest`, which kubelet would pull).
const LOCAL_TAG: &str = "local";

/// The references of the node's images, as pods name them (already normalized: containerd
/// stores them under exactly these names).
#[derive(Clone, Debug)]
pub struct Images {
    /// The sandbox image (containerd's `sandbox_image`).
    pub pause: String,
    /// `sitecache` as the Dockerfile's final stage has it: user 65532:65532, entrypoint
    /// `/usr/local/bin/sitecache`, command `controller`.
    pub agent: String,
    /// The pinned Deno (`hack/versions.env`) as `/usr/local/bin/deno`, user 1000:1000, trusting
    /// this machine's CA certificates (`DENO_TLS_CA_STORE=system`).
    pub deno: String,
    /// A site's image: the Deno image plus `examples/storefront/` at `/site` (owned by root),
    /// user 1000:1000, working directory `/site`, entrypoint `deno`.
    pub site: String,
}

impl Images {
    /// The reference of an agent image that [`AgentImage`] `tag` builds.
    pub fn agent_tagged(tag: &str) -> String {
        format!("{REPOSITORY}/sitecache:{tag}")
    }

    pub fn new() -> Result<Self> {
        Ok(Self {
            pause: format!("{REPOSITORY}/pause:{LOCAL_TAG}"),
            agent: format!("{REPOSITORY}/sitecache:{LOCAL_TAG}"),
            deno: format!(
                "{REPOSITORY}/deno:{}",
                crate::assets::pinned_version("DENO_VERSION")?
            ),
            site: format!("{REPOSITORY}/site:{LOCAL_TAG}"),
        })
    }
}

/// The uid and gid of the Deno image's user: non-root, and not the agent's 65532.
pub const DENO_UID: u64 = 1000;
/// The agent image's user (distroless' `nonroot`).
pub const NONROOT_UID: u64 = agent::NONROOT_UID;

/// The source of the pause program (`hack/node/pause.c`).
const PAUSE_C: &str = include_str!("../../../hack/node/pause.c");

/// The example site that the site image holds at `/site`.
const SITE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/storefront");

/// An agent image besides [`Images::agent`], built the same way from another `sitecache` binary
/// and the Dockerfile that goes with it (an earlier release's), as [`Images::agent_tagged`]`(tag)`.
#[derive(Clone, Debug)]
pub struct AgentImage {
    /// The tag, neither [`LOCAL_TAG`] (the working tree's agent) nor `latest` (which kubelet
    /// would pull).
    pub tag: String,
    pub sitecache_bin: PathBuf,
    pub dockerfile: PathBuf,
}

/// Builds the archives into `dir` and returns each with the references of its images.
pub fn build(
    dir: &Path,
    images: &Images,
    sitecache_bin: &Path,
    dockerfile: &Path,
    other_agents: &[AgentImage],
) -> Result<Vec<(Vec<String>, PathBuf)>> {
    std::fs::create_dir_all(dir)?;
    let work = dir.join("work");
    let mut out = Vec::new();

    // pause: a static C program, so the image holds one file.
    let src = dir.join("pause.c");
    std::fs::write(&src, PAUSE_C)?;
    let pause_bin = dir.join("pause");
    run(Command::new("cc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&pause_bin)
        .arg(&src))
    .context("compile hack/node/pause.c (a C compiler and static glibc, libc6-dev, are needed)")?;
    let mut layer = Layer::new();
    layer.file("/pause", &pause_bin, 0o755);
    let archive = dir.join("pause.tar");
    oci::write_archive(
        &archive,
        &images.pause,
        &layer,
        &ImageConfig {
            user: "65535:65535".into(),
            entrypoint: vec!["/pause".into()],
            ..Default::default()
        },
        &work,
    )?;
    out.push((vec![images.pause.clone()], archive));

    // The agents: the Dockerfile's final stage over a base like its distroless one.
    out.push((
        vec![images.agent.clone()],
        agent_image(
            dir,
            &work,
            "agent",
            &images.agent,
            sitecache_bin,
            dockerfile,
        )?,
    ));
    for other in other_agents {
        if other.tag == LOCAL_TAG || other.tag == "latest" {
            bail!("an agent image may not be tagged {:?}", other.tag);
        }
        let reference = Images::agent_tagged(&other.tag);
        let archive = agent_image(
            dir,
            &work,
            &format!("agent-{}", other.tag),
            &reference,
            &other.sitecache_bin,
            &other.dockerfile,
        )?;
        out.push((vec![reference], archive));
    }

    // Deno: the pinned binary and its libraries, as uid 1000; the site adds its files on top.
    let deno = crate::assets::Asset::Deno.path()?;
    let deno = deno
        .canonicalize()
        .with_context(|| format!("resolve {}", deno.display()))?;
    let mut layer = Layer::new();
    layer
        .file("/usr/local/bin/deno", &deno, 0o755)
        .bytes(
            "/etc/passwd",
            format!("root:x:0:0:root:/root:/sbin/nologin\ndeno:x:{DENO_UID}:{DENO_UID}:deno:/home/deno:/sbin/nologin\n").as_bytes(),
            0o644,
        )
        .bytes(
            "/etc/group",
            format!("root:x:0:\ndeno:x:{DENO_UID}:\n").as_bytes(),
            0o644,
        )
        .dir("/home/deno", 0o755, (DENO_UID, DENO_UID))
        .dir("/tmp", 0o1777, (0, 0))
        // As a Debian-based image has them: Deno reads them with DENO_TLS_CA_STORE=system (its
        // bundled roots do not know a TLS-intercepting egress proxy this machine may trust).
        .file(CA_CERTIFICATES, Path::new(CA_CERTIFICATES), 0o644);
    add_libraries(&mut layer, &deno)?;
    let deno_config = ImageConfig {
        user: format!("{DENO_UID}:{DENO_UID}"),
        entrypoint: vec!["/usr/local/bin/deno".into()],
        env: vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            "HOME=/home/deno".into(),
            "DENO_NO_UPDATE_CHECK=1".into(),
            "DENO_TLS_CA_STORE=system".into(),
        ],
        working_dir: "/home/deno".into(),
        ..Default::default()
    };
    let site_layer = site_layer(Path::new(SITE_DIR))?;
    let site_config = ImageConfig {
        working_dir: "/site".into(),
        ..deno_config.clone()
    };
    let archive = dir.join("deno.tar");
    oci::write_images(
        &archive,
        &[
            ImageSpec {
                reference: &images.deno,
                layers: vec![&layer],
                config: &deno_config,
                annotations: Default::default(),
                gzip: false,
            },
            ImageSpec {
                reference: &images.site,
                layers: vec![&layer, &site_layer],
                config: &site_config,
                annotations: Default::default(),
                gzip: false,
            },
        ],
        &work,
    )?;
    out.push((vec![images.deno.clone(), images.site.clone()], archive));
    let _ = std::fs::remove_dir_all(&work);
    Ok(out)
}

/// Writes `<name>.tar` into `dir` (working in `work`): the agent image `reference`,
/// `sitecache_bin` laid out as the final stage of `dockerfile` lays it out ([`agent`]).
fn agent_image(
    dir: &Path,
    work: &Path,
    name: &str,
    reference: &str,
    sitecache_bin: &Path,
    dockerfile: &Path,
) -> Result<PathBuf> {
    let (layer, config) = agent::layer_and_config(sitecache_bin, dockerfile)?;
    let archive = dir.join(format!("{name}.tar"));
    oci::write_archive(&archive, reference, &layer, &config, work)?;
    Ok(archive)
}

/// The files of `site` (the example storefront) at `/site`, owned by root and readable by all:
/// the site's user can read its code but not change it.
fn site_layer(site: &Path) -> Result<Layer> {
    let mut layer = Layer::new();
    layer.dir("/site", 0o755, (0, 0));
    let mut pending = vec![(site.to_owned(), "/site".to_owned())];
    while let Some((from, to)) = pending.pop() {
        for entry in std::fs::read_dir(&from).with_context(|| format!("read {}", from.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let dest = format!("{to}/{name}");
            if entry.file_type()?.is_dir() {
                layer.dir(&dest, 0o755, (0, 0));
                pending.push((entry.path(), dest));
            } else {
                layer.file(&dest, &entry.path(), 0o644);
            }
        }
    }
    if !layer.contains("/site/main.ts") {
        bail!("{}: no main.ts", site.display());
    }
    Ok(layer)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
