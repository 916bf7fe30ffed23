//! The example site of `examples/storefront`: its SiteCache manifest and its `main.ts`.
//!
//! The warm step caches an explicit list of `npm:` specifiers (it must work without the site's
//! files, see `examples/README.md`), so that list and `main.ts`'s imports must agree, or the site
//! would not run from the cache alone; [`Example::check`] says which one is missing before
//! anything starts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::EXAMPLE_DIR;

/// The example site.
#[derive(Clone, Debug)]
pub struct Example {
    /// `examples/storefront`, absolute.
    pub dir: PathBuf,
    /// Its `main.ts`.
    pub main: PathBuf,
    /// Its `sitecache.yaml`.
    pub manifest: PathBuf,
    /// The SiteCache's name and namespace.
    pub name: String,
    pub namespace: String,
    /// `spec.warm.image`.
    pub warm_image: String,
    /// `spec.warm.command` followed by `spec.warm.args`.
    pub warm_command: Vec<String>,
    /// The `npm:` and `jsr:` specifiers `main.ts` imports.
    pub imports: Vec<String>,
}

impl Example {
    /// Reads the example of the checkout at `repo`.
    pub fn load(repo: &Path) -> Result<Self> {
        let dir = repo.join(EXAMPLE_DIR);
        let main = dir.join("main.ts");
        let manifest = dir.join("sitecache.yaml");
        let source =
            std::fs::read_to_string(&main).with_context(|| format!("read {}", main.display()))?;
        let yaml = std::fs::read_to_string(&manifest)
            .with_context(|| format!("read {}", manifest.display()))?;
        let doc: Value = serde_saphyr::from_str(&yaml)
            .with_context(|| format!("parse {} as YAML", manifest.display()))?;
        if doc["kind"] != "SiteCache" {
            bail!(
                "{} is not a SiteCache (kind: {})",
                manifest.display(),
                doc["kind"]
            );
        }
        let text = |v: &Value, what: &str| -> Result<String> {
            v.as_str()
                .map(str::to_owned)
                .with_context(|| format!("{} has no {what}", manifest.display()))
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let warm = &doc["spec"]["warm"];
        let mut warm_command = strings(&warm["command"]);
        warm_command.extend(strings(&warm["args"]));
        Ok(Self {
            name: text(&doc["metadata"]["name"], "metadata.name")?,
            namespace: doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned(),
            warm_image: text(&warm["image"], "spec.warm.image")?,
            warm_command,
            imports: remote_imports(&source),
            dir,
            main,
            manifest,
        })
    }

    /// Checks that the job runner can run the warm step with the pinned Deno and that it caches
    /// every package `main.ts` imports.
    pub fn check(&self, deno_image: &str) -> Result<()> {
        if self.warm_image != deno_image {
            bail!(
                "{}: spec.warm.image is {:?}, but the local job runner runs {deno_image:?} (the \
                 pinned DENO_VERSION of hack/versions.env); make them agree",
                self.manifest.display(),
                self.warm_image
            );
        }
        if self.imports.is_empty() {
            bail!("{} imports no npm: or jsr: package", self.main.display());
        }
        let missing: Vec<&str> = self
            .imports
            .iter()
            .filter(|i| !self.warm_command.contains(i))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} imports {} but the warm command of {} does not cache {}: the site could not \
                 run from the cache alone; add them to spec.warm.command",
                self.main.display(),
                missing.join(", "),
                self.manifest.display(),
                if missing.len() == 1 { "it" } else { "them" }
            );
        }
        Ok(())
    }
}

/// The quoted `npm:` and `jsr:` specifiers of a module's source, in order, without duplicates.
pub fn remote_imports(source: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for quote in ['"', '\''] {
        for (i, _) in source.match_indices(quote) {
            let rest = &source[i + 1..];
            if !(rest.starts_with("npm:") || rest.starts_with("jsr:")) {
                continue;
            }
            if let Some(end) = rest.find(quote) {
                let spec = rest[..end].to_owned();
                if !spec.contains(char::is_whitespace) && !out.contains(&spec) {
                    out.push(spec);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_remote_imports() {
        let src = "import { h } from \"npm:preact@11.2.0\";\nimport x from 'jsr:@std/fmt@1.0.0';\n\
                   import y from \"./local.ts\";\nimport ms from \"npm:ms@2.1.3\";\n";
        assert_eq!(
            remote_imports(src),
            ["npm:preact@11.2.0", "npm:ms@2.1.3", "jsr:@std/fmt@1.0.0"]
        );
    }

    /// The example that `make dev` runs: its warm step caches what `main.ts` imports, with the
    /// pinned Deno.
    #[test]
    fn the_storefront_example_is_consistent() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let example = Example::load(&repo).unwrap();
        example.check(&super::super::deno_image().unwrap()).unwrap();
        assert_eq!(example.warm_command[..2], ["deno", "cache"]);
    }
}
