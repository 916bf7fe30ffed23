//! The release's archives of the binary: `sitecache-<version>-linux-amd64.tar.gz` (the binary
//! with the licence, README and changelog) and the kubectl plugin's,
//! `kubectl-sitecache-<version>-linux-amd64.tar.gz` (the same binary as `kubectl-sitecache`: it
//! acts as the plugin by its name), with the krew manifest that installs it,
//! `sitecache-<version>.krew.yaml`.
//!
//! Linux on amd64 only: docs/releasing.md says what the other platforms need.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Options, Release, SOURCE};

/// The platform of the release's binaries (Go's and krew's names).
pub const PLATFORM: &str = "linux-amd64";

/// The binary's archive's name.
pub fn binary_archive(version: &str) -> String {
    format!("sitecache-{version}-{PLATFORM}.tar.gz")
}

/// The plugin's archive's name.
pub fn plugin_archive(version: &str) -> String {
    format!("kubectl-sitecache-{version}-{PLATFORM}.tar.gz")
}

/// The krew manifest's name.
pub fn krew_manifest(version: &str) -> String {
    format!("sitecache-{version}.krew.yaml")
}

/// `sitecache-<version>-linux-amd64.tar.gz`: `sitecache-<version>-linux-amd64/` holding the
/// binary, LICENSE, README.md and CHANGELOG.md.
pub fn binary(opts: &Options, release: &Release) -> Result<PathBuf> {
    let name = binary_archive(&release.version);
    let top = name.trim_end_matches(".tar.gz");
    let files = [
        (
            format!("{top}/sitecache"),
            opts.sitecache_bin.clone(),
            0o755,
        ),
        (format!("{top}/LICENSE"), opts.repo.join("LICENSE"), 0o644),
        (
            format!("{top}/README.md"),
            opts.repo.join("README.md"),
            0o644,
        ),
        (
            format!("{top}/CHANGELOG.md"),
            opts.repo.join("CHANGELOG.md"),
            0o644,
        ),
    ];
    let out = opts.out.join(&name);
    write_tar_gz(&out, &files, release.created_unix)?;
    Ok(out)
}

/// The plugin's archive (`kubectl-sitecache` and LICENSE at its top, as krew expects) and the
/// krew manifest naming its download address and SHA-256.
pub fn plugin(opts: &Options, release: &Release) -> Result<PathBuf> {
    let name = plugin_archive(&release.version);
    let files = [
        (
            "kubectl-sitecache".to_owned(),
            opts.sitecache_bin.clone(),
            0o755,
        ),
        ("LICENSE".to_owned(), opts.repo.join("LICENSE"), 0o644),
    ];
    let archive = opts.out.join(&name);
    write_tar_gz(&archive, &files, release.created_unix)?;
    let sha256 = sha256_file(&archive)?;
    let manifest = json!({
        "apiVersion": "krew.googlecontainertools.github.com/v1alpha2",
        "kind": "Plugin",
        "metadata": {"name": "sitecache"},
        "spec": {
            "version": release.tag(),
            "homepage": SOURCE,
            "shortDescription": "Inspect, snapshot, roll back and restore SiteCaches",
            "description": "Works with sitecache's SiteCaches: their generations, status, \
                            snapshot requests, rollbacks (promote, unpin), suspend and resume, \
                            the logs of their snapshot Jobs, and restoring a site's cache from \
                            storage with your own credentials.",
            "caveats": "The SiteCache CRD and the sitecache controller must be installed in the \
                        cluster (docs/install.md). `restore` and `logs` read storage with your \
                        own credentials (the AWS environment variables or profile).",
            "platforms": [{
                "selector": {"matchLabels": {"os": "linux", "arch": "amd64"}},
                "uri": release.download_url(&name),
                "sha256": sha256,
                "bin": "kubectl-sitecache",
                "files": [
                    {"from": "kubectl-sitecache", "to": "."},
                    {"from": "LICENSE", "to": "."},
                ],
            }],
        },
    });
    let path = opts.out.join(krew_manifest(&release.version));
    std::fs::write(&path, serde_saphyr::to_string(&manifest)?)?;
    Ok(archive)
}

/// Writes a gzip-compressed tar of `files` (name in the archive, source, mode) to `out`: entries
/// in the given order, owned by root, with time `mtime`; the gzip header has no time or name.
pub fn write_tar_gz(out: &Path, files: &[(String, PathBuf, u32)], mtime: u64) -> Result<()> {
    let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(BufWriter::new(file), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    for (name, source, mode) in files {
        let mut f = File::open(source).with_context(|| format!("open {}", source.display()))?;
        let mut h = tar::Header::new_ustar();
        h.set_size(f.metadata()?.len());
        h.set_mode(*mode);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, &mut f)
            .with_context(|| format!("add {} to {}", source.display(), out.display()))?;
    }
    let mut writer = tar.into_inner()?.finish()?;
    writer.flush()?;
    Ok(())
}

/// The SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hash = Sha256::new();
    std::io::copy(&mut f, &mut hash)?;
    Ok(format!("{:x}", hash.finalize()))
}
