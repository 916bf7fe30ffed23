//! A release of sitecache, built into one directory (`make dist`, docs/releasing.md) from a
//! checkout and a `sitecache` binary, with nothing but this machine's tools: no container engine
//! and no registry. Every file is reproducible: the same commit and binary give the same bytes
//! (times are the commit's, archives carry no host names, owners or build times), so a second
//! build checks the first.
//!
//! The steps, in order (each a module):
//! 1. [`Release::identify`]: the version (Cargo's, which the binary must report) and the commit;
//! 2. [`archives`]: the binary's archive, and the kubectl plugin's with its krew manifest;
//! 3. [`image`]: the container image as an OCI image layout archive;
//! 4. [`chart`]: the chart package, its OCI layout (what `helm push` sends), `install.yaml`
//!    rendered from it and a kustomize base;
//! 5. [`sbom`]: the CycloneDX SBOM of the Rust dependency graph;
//! 6. [`notes`]: the release notes, from CHANGELOG.md;
//! 7. [`sums`]: `SHA256SUMS` over every file.

pub mod archives;
pub mod chart;
pub mod image;
pub mod notes;
pub mod sbom;
pub mod sums;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Where the source lives (the image's `org.opencontainers.image.source`, the krew manifest's
/// homepage, the download addresses).
pub const SOURCE: &str = "https://github.com/sitecache/sitecache";
/// The repository of the release's image (the chart's and the controller's default).
pub const IMAGE_REPOSITORY: &str = "ghcr.io/sitecache/sitecache";
/// Where the release's chart is pushed (`helm install oci://…/sitecache`).
pub const CHART_REPOSITORY: &str = "oci://ghcr.io/sitecache/charts";
/// The namespace `install.yaml` installs into.
pub const INSTALL_NAMESPACE: &str = "sitecache-system";
/// The licence of every artifact (Cargo.toml, Chart.yaml, LICENSE).
pub const LICENSE: &str = "Apache-2.0";

/// What `make dist` is given.
#[derive(Clone, Debug)]
pub struct Options {
    /// The checkout (Cargo.toml, charts/, Dockerfile, LICENSE, CHANGELOG.md).
    pub repo: PathBuf,
    /// The `sitecache` binary to release (linux-amd64).
    pub sitecache_bin: PathBuf,
    /// The output directory, emptied first.
    pub out: PathBuf,
    /// A release proper (the release workflow): the tree must be clean and CHANGELOG.md must
    /// have the version's section. Without it, a build of any commit (CI, a try), whose notes
    /// are the Unreleased section.
    pub strict: bool,
    /// Helm, which packages and renders the chart.
    pub helm: PathBuf,
    /// cargo-cyclonedx, which writes the SBOM.
    pub cargo_cyclonedx: PathBuf,
}

/// The release being built: its version and where it comes from.
#[derive(Clone, Debug)]
pub struct Release {
    /// `0.1.0` (no `v`); the tag is `v<version>`.
    pub version: String,
    /// The commit (40 hex digits), `-dirty` appended when the tree has changes.
    pub revision: String,
    /// The commit's time, RFC 3339 in UTC: every time the release records.
    pub created: String,
    /// The same, in seconds since the epoch (archive entries' times).
    pub created_unix: u64,
}

impl Release {
    /// The version (Cargo.toml's `package.version`, which `sitecache --version` must print) and
    /// the commit of `repo`.
    pub fn identify(opts: &Options) -> Result<Release> {
        let version = cargo_version(&opts.repo.join("Cargo.toml"))?;
        let reported = output(Command::new(&opts.sitecache_bin).arg("--version"))
            .with_context(|| format!("run {} --version", opts.sitecache_bin.display()))?;
        if reported.trim() != format!("sitecache {version}") {
            bail!(
                "{} reports {:?}, not version {version} of Cargo.toml: build it from this checkout",
                opts.sitecache_bin.display(),
                reported.trim()
            );
        }
        let git = |args: &[&str]| output(Command::new("git").arg("-C").arg(&opts.repo).args(args));
        let commit = git(&["rev-parse", "HEAD"])?.trim().to_owned();
        let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?
            .trim()
            .is_empty();
        if dirty && opts.strict {
            bail!("the tree has uncommitted changes: a release is built from a clean checkout");
        }
        let created_unix: u64 = git(&["log", "-1", "--format=%ct"])?
            .trim()
            .parse()
            .context("the commit's time")?;
        let created = jiff::Timestamp::from_second(created_unix as i64)?
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        Ok(Release {
            version,
            revision: if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            },
            created,
            created_unix,
        })
    }

    /// The release's tag.
    pub fn tag(&self) -> String {
        format!("v{}", self.version)
    }

    /// Where a file of the release is downloaded from once published.
    pub fn download_url(&self, file: &str) -> String {
        format!("{SOURCE}/releases/download/{}/{file}", self.tag())
    }

    /// The image's reference.
    pub fn image(&self) -> String {
        format!("{IMAGE_REPOSITORY}:{}", self.version)
    }
}

/// Builds the release into `opts.out` and returns its files (relative names, sorted).
pub fn build(opts: &Options) -> Result<Vec<String>> {
    let release = Release::identify(opts)?;
    eprintln!(
        "dist: sitecache {} from {} ({})",
        release.version, release.revision, release.created
    );
    if opts.out.exists() {
        std::fs::remove_dir_all(&opts.out)
            .with_context(|| format!("empty {}", opts.out.display()))?;
    }
    std::fs::create_dir_all(&opts.out)?;
    let work = opts.out.join(".work");
    std::fs::create_dir_all(&work)?;

    archives::binary(opts, &release)?;
    archives::plugin(opts, &release)?;
    image::build(opts, &release, &work)?;
    chart::build(opts, &release, &work)?;
    sbom::build(opts, &release)?;
    notes::build(opts, &release)?;
    std::fs::remove_dir_all(&work)?;
    sums::write(&opts.out)
}

/// `package.version` of a Cargo.toml (the first `version = "…"` line, which is the package's
/// in this repository's manifests).
pub fn cargo_version(manifest: &Path) -> Result<String> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("read {}", manifest.display()))?;
    text.lines()
        .take_while(|l| !l.starts_with("[dependencies]"))
        .find_map(|l| {
            l.strip_prefix("version = \"")
                .and_then(|r| r.strip_suffix('"'))
                .map(str::to_owned)
        })
        .with_context(|| format!("{}: no package version", manifest.display()))
}

/// The standard output of `cmd`, which must succeed.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("the output is not UTF-8")
}
