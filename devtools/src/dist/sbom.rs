//! `sitecache-<version>.cdx.json`: the CycloneDX SBOM (JSON, spec 1.5) of the `sitecache`
//! package's Rust dependency graph for the release's target, written by cargo-cyclonedx
//! (`hack/versions.env`) from Cargo.lock. `SOURCE_DATE_EPOCH` (the commit's time) makes it
//! reproducible: its timestamp is the commit's, it has no random serial number, and the checkout's
//! path in its references is replaced by `/sitecache`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{Options, Release, output};

/// The target the release's binary is built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The SBOM's name.
pub fn sbom_name(version: &str) -> String {
    format!("sitecache-{version}.cdx.json")
}

/// Writes the SBOM into `opts.out`. cargo-cyclonedx writes one beside the manifest of every
/// package of the workspace: the `sitecache` package's (the checkout's root) is moved into the
/// release at once, and the others (the test and bench tools') are removed, whatever happened.
pub fn build(opts: &Options, release: &Release) -> Result<PathBuf> {
    let stem = "sitecache-sbom";
    let written = opts.repo.join(format!("{stem}.json"));
    let leftovers: Vec<PathBuf> = workspace_members(&opts.repo)?
        .iter()
        .map(|m| opts.repo.join(m).join(format!("{stem}.json")))
        .collect();
    if let Some(old) = leftovers.iter().find(|p| p.exists()) {
        bail!(
            "{} exists: remove it (a leftover of a failed make dist)",
            old.display()
        );
    }
    let result = output(
        Command::new(&opts.cargo_cyclonedx)
            .arg("cyclonedx")
            .arg("--manifest-path")
            .arg(opts.repo.join("Cargo.toml"))
            .args([
                "--format",
                "json",
                "--spec-version",
                "1.5",
                "--target",
                TARGET,
            ])
            .args(["--override-filename", stem, "--quiet"])
            .env("SOURCE_DATE_EPOCH", release.created_unix.to_string()),
    );
    let out = opts.out.join(sbom_name(&release.version));
    let moved = result.and_then(|_| {
        let text = std::fs::read_to_string(&written)
            .with_context(|| format!("cargo-cyclonedx did not write {}", written.display()))?;
        std::fs::write(&out, without_checkout_path(&text, &opts.repo))?;
        Ok(())
    });
    // Nothing of it stays in the checkout, whatever happened.
    for path in &leftovers {
        let _ = std::fs::remove_file(path);
    }
    moved?;
    Ok(out)
}

/// The SBOM with the checkout's path in its references (`path+file:///home/…/sitecache#sitecache@…`)
/// replaced by `/sitecache`, as the release binary has it (`--remap-path-prefix`): two clones
/// give the same SBOM.
pub fn without_checkout_path(sbom: &str, repo: &std::path::Path) -> String {
    sbom.replace(
        &format!("path+file://{}#", repo.display()),
        "path+file:///sitecache#",
    )
}

/// The directories of the workspace's packages (`[workspace] members` of the root Cargo.toml,
/// one line in this repository's).
fn workspace_members(repo: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(repo.join("Cargo.toml"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("members = ["))
        .context("Cargo.toml has no one-line `members = [...]`")?;
    Ok(line
        .trim_start_matches("members = [")
        .trim_end_matches(']')
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkout_path_leaves_the_references() {
        let sbom = r#"{"bom-ref":"path+file:///tmp/clone-a#sitecache@0.1.0 bin-target-0","ref":"path+file:///tmp/clone-a#sitecache@0.1.0","other":"path+file:///tmp/clone-ab#x@1"}"#;
        assert_eq!(
            without_checkout_path(sbom, std::path::Path::new("/tmp/clone-a")),
            r#"{"bom-ref":"path+file:///sitecache#sitecache@0.1.0 bin-target-0","ref":"path+file:///sitecache#sitecache@0.1.0","other":"path+file:///tmp/clone-ab#x@1"}"#
        );
    }
}
