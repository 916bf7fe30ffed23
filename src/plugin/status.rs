//! `kubectl sitecache status`: the fleet at a glance. Everything it prints comes from the
//! SiteCaches' status (one list call), so it shows what the controller last wrote.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::Context as _;
use clap::Args;
use kube::api::{Api, ListParams, ResourceExt};

use super::table::Table;
use super::{Kube, age, seconds_since};
use crate::api::{Freshness, Phase, SiteCache};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Every namespace instead of one.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// How many of the stalest caches to list.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub top: usize,
}

pub async fn run(kube: &Kube, args: &StatusArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let api: Api<SiteCache> = if args.all_namespaces {
        Api::all(kube.client.clone())
    } else {
        kube.sitecaches()
    };
    let where_ = if args.all_namespaces {
        "all namespaces".to_owned()
    } else {
        format!("namespace {}", kube.namespace)
    };
    let list = api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing SiteCaches in {where_}"))?;
    let scope = Scope {
        all_namespaces: args.all_namespaces,
        namespace: &kube.namespace,
    };
    write!(
        out,
        "{}",
        render(&list.items, scope, args.top, jiff::Timestamp::now())
    )?;
    Ok(())
}

/// Which SiteCaches were listed.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub all_namespaces: bool,
    pub namespace: &'a str,
}

/// The report, from the listed SiteCaches at `now`.
pub fn render(items: &[SiteCache], scope: Scope, top: usize, now: jiff::Timestamp) -> String {
    let mut out = String::new();
    if scope.all_namespaces {
        let namespaces: BTreeSet<String> = items.iter().filter_map(|sc| sc.namespace()).collect();
        out += &format!(
            "SiteCaches: {} in {} namespaces\n",
            items.len(),
            namespaces.len()
        );
    } else {
        out += &format!(
            "SiteCaches: {} in namespace {}\n",
            items.len(),
            scope.namespace
        );
    }
    if items.is_empty() {
        return out;
    }
    let freshness = |f: Option<Freshness>| {
        items
            .iter()
            .filter(|sc| sc.status.as_ref().and_then(|s| s.freshness) == f)
            .count()
    };
    let mut counts = vec![
        format!("Fresh {}", freshness(Some(Freshness::Fresh))),
        format!("Stale {}", freshness(Some(Freshness::Stale))),
        format!("Missing {}", freshness(Some(Freshness::Missing))),
    ];
    if freshness(None) > 0 {
        counts.push(format!("not reconciled yet {}", freshness(None)));
    }
    out += &format!("Freshness: {}\n", counts.join(", "));
    let phases: Vec<String> = [
        Phase::Pending,
        Phase::Snapshotting,
        Phase::Ready,
        Phase::Failed,
        Phase::Deleting,
    ]
    .into_iter()
    .map(|p| (p, items.iter().filter(|sc| phase(sc) == Some(p)).count()))
    .filter(|(_, n)| *n > 0)
    .map(|(p, n)| format!("{p:?} {n}"))
    .collect();
    if !phases.is_empty() {
        out += &format!("Phase: {}\n", phases.join(", "));
    }
    let running: Vec<&SiteCache> = items.iter().filter(|sc| active_job(sc).is_some()).collect();
    let waiting: Vec<&SiteCache> = items
        .iter()
        .filter(|sc| condition(sc, "Progressing").is_some_and(|c| c.reason == "WaitingForSlot"))
        .collect();
    out += &format!(
        "Snapshot Jobs: {} running, {} waiting for a slot\n",
        running.len(),
        waiting.len()
    );

    let ns = |sc: &SiteCache| sc.namespace().unwrap_or_default();
    let section = |out: &mut String, title: &str, table: Table| {
        if !table.is_empty() {
            let mut buf = Vec::new();
            table.write(&mut buf).expect("writing to memory");
            *out += &format!("\n{title}:\n{}", String::from_utf8_lossy(&buf));
        }
    };

    // The stalest first: no generation at all, then the oldest current generations.
    let mut stalest: Vec<&SiteCache> = items.iter().collect();
    stalest.sort_by_key(|sc| {
        let created = current(sc).map(|g| g.created_at.0);
        (created.is_some(), created, ns(sc), sc.name_any())
    });
    let mut table = table_for(scope, ["NAME", "GENERATION", "AGE", "FRESHNESS", "WHY"]);
    for sc in stalest.into_iter().take(top) {
        let status = sc.status.as_ref();
        let (generation, created) = match current(sc) {
            Some(g) => (
                g.generation.to_string(),
                age(seconds_since(&g.created_at, now)),
            ),
            None => ("-".into(), "-".into()),
        };
        let fresh = status
            .and_then(|s| s.freshness)
            .map(|f| format!("{f:?}"))
            .unwrap_or_else(|| "-".into());
        let why = status
            .and_then(|s| s.freshness_reason.clone())
            .unwrap_or_default();
        push(
            &mut table,
            scope,
            ns(sc),
            [sc.name_any(), generation, created, fresh, why],
        );
    }
    section(&mut out, "Stalest caches", table);

    for (type_, title) in [
        ("Degraded", "Degraded"),
        ("DeletionBlocked", "Deletion blocked"),
    ] {
        let mut table = table_for(scope, ["NAME", "REASON", "SINCE", "MESSAGE"]);
        for sc in items {
            if let Some(c) = condition(sc, type_).filter(|c| c.status == "True") {
                let since = age(seconds_since(&c.last_transition_time, now));
                push(
                    &mut table,
                    scope,
                    ns(sc),
                    [sc.name_any(), c.reason.clone(), since, c.message.clone()],
                );
            }
        }
        section(&mut out, title, table);
    }

    let mut table = table_for(scope, ["NAME", "JOB"]);
    for sc in &running {
        push(
            &mut table,
            scope,
            ns(sc),
            [sc.name_any(), active_job(sc).unwrap_or_default().to_owned()],
        );
    }
    section(&mut out, "Snapshot Jobs running", table);
    let mut table = table_for(scope, ["NAME", "WAITING"]);
    for sc in &waiting {
        let since = condition(sc, "Progressing")
            .map(|c| age(seconds_since(&c.last_transition_time, now)))
            .unwrap_or_default();
        push(&mut table, scope, ns(sc), [sc.name_any(), since]);
    }
    section(&mut out, "Waiting for a snapshot slot", table);
    out
}

/// A table with a NAMESPACE column first when every namespace is listed.
fn table_for<const N: usize>(scope: Scope, header: [&str; N]) -> Table {
    if scope.all_namespaces {
        let mut with: Vec<&str> = vec!["NAMESPACE"];
        with.extend(header);
        Table::dynamic(with)
    } else {
        Table::new(header)
    }
}

fn push<const N: usize>(table: &mut Table, scope: Scope, ns: String, cells: [String; N]) {
    if scope.all_namespaces {
        let mut with = vec![ns];
        with.extend(cells);
        table.dynamic_row(with);
    } else {
        table.row(cells);
    }
}

fn phase(sc: &SiteCache) -> Option<Phase> {
    sc.status.as_ref().and_then(|s| s.phase)
}

fn active_job(sc: &SiteCache) -> Option<&str> {
    sc.status.as_ref().and_then(|s| s.active_job.as_deref())
}

fn current(sc: &SiteCache) -> Option<&crate::api::GenerationInfo> {
    sc.status.as_ref().and_then(|s| s.current.as_ref())
}

fn condition<'a>(
    sc: &'a SiteCache,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    sc.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sc(ns: &str, name: &str, status: serde_json::Value) -> SiteCache {
        serde_json::from_value(json!({
            "apiVersion": "sitecache.dev/v1alpha1", "kind": "SiteCache",
            "metadata": { "name": name, "namespace": ns },
            "spec": { "site": name, "warm": { "image": "deno", "command": ["deno", "cache", "main.ts"] } },
            "status": status,
        }))
        .unwrap()
    }

    fn generation(n: u64, created: &str) -> serde_json::Value {
        json!({ "generation": n, "key": format!("k/{n}"), "sizeBytes": 1, "uncompressedBytes": 1,
                "files": 1, "sha256": "ab".repeat(32), "createdAt": created })
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str, at: &str) -> serde_json::Value {
        json!({ "type": type_, "status": status, "reason": reason, "message": message,
                "lastTransitionTime": at })
    }

    #[test]
    fn reports_counts_the_stalest_failures_and_slots() {
        let now: jiff::Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        let items = [
            sc(
                "a",
                "fresh",
                json!({ "phase": "Ready", "freshness": "Fresh",
                "current": generation(4, "2026-12-02T11:00:00Z") }),
            ),
            sc(
                "a",
                "old",
                json!({ "phase": "Snapshotting", "freshness": "Stale",
                "freshnessReason": "older than maxAge (1d)", "activeJob": "old-snapshot-9",
                "current": generation(8, "2026-11-29T12:00:00Z"),
                "conditions": [cond("Degraded", "True", "BackoffLimitExceeded", "warm failed", "2026-12-02T11:30:00Z")] }),
            ),
            sc(
                "b",
                "new",
                json!({ "phase": "Pending", "freshness": "Missing",
                "conditions": [cond("Progressing", "True", "WaitingForSlot", "3 ahead", "2026-12-02T11:58:00Z"),
                               cond("Degraded", "False", "AsExpected", "", "2026-12-02T11:00:00Z")] }),
            ),
            sc(
                "b",
                "gone",
                json!({ "phase": "Deleting", "freshness": "Fresh",
                "current": generation(2, "2026-12-02T10:00:00Z"),
                "conditions": [cond("DeletionBlocked", "True", "AccessDenied", "DeleteObjects: AccessDenied", "2026-12-02T11:00:00Z")] }),
            ),
        ];
        let scope = Scope {
            all_namespaces: true,
            namespace: "a",
        };
        let text = render(&items, scope, 3, now);
        let expected = "\
SiteCaches: 4 in 2 namespaces
Freshness: Fresh 2, Stale 1, Missing 1
Phase: Pending 1, Snapshotting 1, Ready 1, Deleting 1
Snapshot Jobs: 1 running, 1 waiting for a slot

Stalest caches:
NAMESPACE   NAME   GENERATION   AGE   FRESHNESS   WHY
b           new    -            -     Missing
a           old    8            3d    Stale       older than maxAge (1d)
b           gone   2            2h    Fresh

Degraded:
NAMESPACE   NAME   REASON                 SINCE   MESSAGE
a           old    BackoffLimitExceeded   30m     warm failed

Deletion blocked:
NAMESPACE   NAME   REASON         SINCE   MESSAGE
b           gone   AccessDenied   60m     DeleteObjects: AccessDenied

Snapshot Jobs running:
NAMESPACE   NAME   JOB
a           old    old-snapshot-9

Waiting for a snapshot slot:
NAMESPACE   NAME   WAITING
b           new    2m
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn one_namespace_has_no_namespace_column_and_an_empty_one_says_so() {
        let now: jiff::Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        let scope = Scope {
            all_namespaces: false,
            namespace: "shop",
        };
        assert_eq!(
            render(&[], scope, 5, now),
            "SiteCaches: 0 in namespace shop\n"
        );
        let items = [sc(
            "shop",
            "x",
            json!({ "freshness": "Fresh", "current": generation(1, "2026-12-02T11:59:00Z") }),
        )];
        let text = render(&items, scope, 5, now);
        assert!(
            text.contains(
                "\nNAME   GENERATION   AGE   FRESHNESS   WHY\nx      1            60s   Fresh\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("Snapshot Jobs: 0 running, 0 waiting for a slot\n"),
            "{text}"
        );
    }
}
