//! `kubectl sitecache generations NAME`: the retained generations, newest first, as the
//! SiteCache's status records them.

use std::io::Write;

use clap::Args;

use super::table::Table;
use super::{Kube, age, seconds_since};
use crate::api::SiteCache;

#[derive(Args, Debug)]
pub struct GenerationsArgs {
    /// The SiteCache.
    pub name: String,
}

pub async fn run(kube: &Kube, args: &GenerationsArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let sc = kube.sitecache(&args.name).await?;
    write!(out, "{}", render(&sc, jiff::Timestamp::now()))?;
    Ok(())
}

/// The table, or a line saying why there is none.
pub fn render(sc: &SiteCache, now: jiff::Timestamp) -> String {
    let Some(status) = sc.status.as_ref().filter(|s| !s.generations.is_empty()) else {
        return "No generations retained yet.\n".to_owned();
    };
    let current = status.current.as_ref().map(|g| g.generation);
    // The current generation held by spec.pin says so.
    let pinned = sc.spec.pin.as_ref().map(|p| p.generation) == current;
    let mut table = Table::new([
        "GENERATION",
        "CURRENT",
        "SIZE",
        "UNPACKED",
        "FILES",
        "AGE",
        "REVISION",
    ]);
    for g in &status.generations {
        table.row([
            g.generation.to_string(),
            if current == Some(g.generation) {
                if pinned { "pinned" } else { "yes" }
            } else {
                ""
            }
            .to_owned(),
            size(g.size_bytes),
            size(g.uncompressed_bytes),
            g.files.to_string(),
            age(seconds_since(&g.created_at, now)),
            g.source_revision.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut buf = Vec::new();
    table.write(&mut buf).expect("writing to memory");
    String::from_utf8(buf).expect("the cells are text")
}

fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_generations_newest_first_and_marks_the_current_one() {
        let g = |n: u64, size: u64, created: &str, rev: Option<&str>| {
            json!({ "generation": n, "key": format!("k/{n}"), "sizeBytes": size,
                    "uncompressedBytes": size * 3, "files": n * 1000, "sha256": "ab".repeat(32),
                    "createdAt": created, "sourceRevision": rev })
        };
        let sc: SiteCache = serde_json::from_value(json!({
            "apiVersion": "sitecache.dev/v1alpha1", "kind": "SiteCache",
            "metadata": { "name": "shop", "namespace": "a" },
            "spec": { "site": "shop", "warm": { "image": "deno" } },
            "status": {
                "current": g(12, 193_273_528, "2026-12-02T10:00:00Z", Some("v12")),
                "generations": [g(13, 2048, "2026-12-02T11:59:00Z", Some("v13")),
                                g(12, 193_273_528, "2026-12-02T10:00:00Z", Some("v12")),
                                g(11, 1_000, "2026-11-28T10:00:00Z", None)],
            },
        }))
        .unwrap();
        let now: jiff::Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        assert_eq!(
            render(&sc, now),
            "\
GENERATION   CURRENT   SIZE        UNPACKED    FILES   AGE   REVISION
13                     2.0 KiB     6.0 KiB     13000   60s   v13
12           yes       184.3 MiB   553.0 MiB   12000   2h    v12
11                     1000 B      2.9 KiB     11000   4d    -
"
        );
    }
}
