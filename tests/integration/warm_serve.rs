//! `sitecache warm-serve` with the real Deno: a site that answers is warmed by what it loads at
//! run time (a module imported by a computed specifier, its V8 code cache) and stopped with
//! SIGTERM; a site that never answers, exits first, or fails a path fails the warm step with the
//! end of its log; a site that ignores SIGTERM is killed after the grace.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::agent::text;

fn deno() -> std::path::PathBuf {
    sitecache_devtools::assets::Asset::Deno
        .path()
        .expect("deno (make test-assets)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `warm-serve` on the site `main` (written to a fresh directory, with `files` beside it).
fn warm(main: &str, files: &[(&str, &str)], flags: &[&str], deno_dir: &Path) -> Output {
    let site = deno_dir.parent().unwrap().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("main.ts"), main).unwrap();
    for (name, body) in files {
        std::fs::write(site.join(name), body).unwrap();
    }
    let port = free_port().to_string();
    Command::new(env!("CARGO_BIN_EXE_sitecache"))
        .args(["warm-serve", "--port", &port])
        .args(flags)
        .arg("--")
        .arg(deno())
        .args(["run", "--allow-net", "--allow-env", "main.ts"])
        .current_dir(&site)
        .env("PORT", &port)
        .env("DENO_DIR", deno_dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run sitecache warm-serve")
}

const SERVER: &str = "const port = Number(Deno.env.get('PORT'));\n";

#[test]
fn a_served_site_leaves_what_it_loaded_at_run_time_and_is_stopped_with_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let deno_dir = tmp.path().join("deno-dir");
    let main = format!(
        "{SERVER}Deno.serve({{ port }}, async (req) => {{\n\
           const path = new URL(req.url).pathname;\n\
           if (path === '/late') {{\n\
             const name = 'late';\n\
             const m = await import(`./${{name}}.ts`);\n\
             return new Response(m.late());\n\
           }}\n\
           return new Response('home');\n\
         }});\n\
         Deno.addSignalListener('SIGTERM', () => {{ console.log('stopping cleanly'); Deno.exit(0); }});\n"
    );
    let late = "export function late(): string { return 'x'.repeat(1000); }\n";
    let out = warm(
        &main,
        &[("late.ts", late)],
        &["--path", "/", "--path", "/late", "--timeout", "60s"],
        &deno_dir,
    );
    assert!(
        out.status.success(),
        "warm-serve failed: {}",
        text(&out.stderr)
    );
    let line: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(line["ok"], true, "{line}");
    assert_eq!(line["paths"][1]["path"], "/late");
    assert_eq!(line["paths"][1]["status"], 200);
    // Stopped by SIGTERM, which it handled and exited 0 from.
    assert_eq!(line["stopped"], "exited", "{line}");
    assert_eq!(line["exit_code"], 0, "{line}");
    assert!(text(&out.stdout).contains("stopping cleanly"));
    // The module imported at run time was compiled, and its code cached, in DENO_DIR.
    let code_cache = std::fs::read(deno_dir.join("v8_code_cache_v2")).unwrap_or_default();
    let wal = std::fs::read(deno_dir.join("v8_code_cache_v2-wal")).unwrap_or_default();
    let needle = b"late.ts";
    let holds = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle);
    assert!(
        holds(&code_cache) || holds(&wal),
        "late.ts is not in Deno's code cache ({} + {} bytes)",
        code_cache.len(),
        wal.len()
    );
}

#[test]
fn a_site_that_never_answers_fails_with_the_end_of_its_log() {
    let tmp = tempfile::tempdir().unwrap();
    let main = "console.log('booting: waiting for the database');\nsetInterval(() => {}, 1000);\n";
    let out = warm(
        main,
        &[],
        &["--timeout", "3s", "--stop-grace", "1s"],
        &tmp.path().join("d"),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("did not answer GET / on port") && err.contains("within --timeout 3s"),
        "{err}"
    );
    assert!(err.contains("booting: waiting for the database"), "{err}");
}

#[test]
fn a_site_that_exits_first_or_fails_a_path_fails_the_warm_step() {
    let tmp = tempfile::tempdir().unwrap();
    let out = warm(
        "console.error('missing SHOP_ID');\nDeno.exit(3);\n",
        &[],
        &["--timeout", "30s"],
        &tmp.path().join("a/d"),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("the site exited (exit status: 3) before it answered GET /"),
        "{err}"
    );
    assert!(err.contains("missing SHOP_ID"), "{err}");

    let main = format!(
        "{SERVER}Deno.serve({{ port }}, (req) => new URL(req.url).pathname === '/broken'\n\
           ? new Response('boom', {{ status: 500 }}) : new Response('ok'));\n"
    );
    let out = warm(
        &main,
        &[],
        &["--path", "/", "--path", "/broken"],
        &tmp.path().join("b/d"),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("answered /broken with HTTP 500"), "{err}");
}

#[test]
fn a_site_that_ignores_sigterm_is_killed_after_the_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let main = format!(
        "{SERVER}Deno.addSignalListener('SIGTERM', () => console.log('not stopping'));\n\
         Deno.serve({{ port }}, () => new Response('ok'));\n"
    );
    let started = std::time::Instant::now();
    let out = warm(&main, &[], &["--stop-grace", "1s"], &tmp.path().join("d"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(line["stopped"], "killed", "{line}");
    assert_eq!(line["signal"], 9, "{line}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// The storefront's product section, imported by a computed specifier, runs `--cached-only`
/// from a generation warmed by serving the site, restored; from one warmed by `deno cache
/// main.ts` it cannot (the import is not in the module graph that command follows).
#[tokio::test]
async fn a_section_imported_at_run_time_is_served_cached_only_only_when_warmed_by_serving() {
    let s3 = crate::support::s3().await;
    let loc = crate::agent::location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let site = crate::support::repo_path("examples/storefront");
    let deno_dir = tmp.path().join("deno-dir");
    let run_deno = |args: &[&str], dir: &Path| {
        Command::new(deno())
            .args(args)
            .current_dir(&site)
            .env("DENO_DIR", dir)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    // Generation 1: deno cache main.ts. Generation 2: served, the product page asked for.
    let out = run_deno(&["cache", "main.ts"], &deno_dir);
    assert!(out.status.success(), "deno cache: {}", text(&out.stderr));
    assert!(
        crate::agent::snapshot(s3, &loc, &deno_dir, 1)
            .status
            .success()
    );
    std::fs::remove_dir_all(&deno_dir).unwrap();
    let port = free_port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_sitecache"))
        .args([
            "warm-serve",
            "--port",
            &port,
            "--path",
            "/product/TEE-01",
            "--",
        ])
        .arg(deno())
        .args([
            "run",
            "--allow-net",
            "--allow-read",
            "main.ts",
            "--port",
            &port,
        ])
        .current_dir(&site)
        .env("DENO_DIR", &deno_dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "warm-serve: {}", text(&out.stderr));
    assert!(
        crate::agent::snapshot(s3, &loc, &deno_dir, 2)
            .status
            .success()
    );

    let section = "const { render } = await import(new URL('./sections/product.ts', \
                   `file://${Deno.cwd()}/`).href); console.log(typeof render);";
    for (generation, served) in [(1, false), (2, true)] {
        let restored = tmp.path().join(format!("restored-{generation}"));
        let (_, line) = crate::agent::restore(
            s3,
            &loc,
            &restored,
            &["--generation", &generation.to_string(), "--strict"],
        );
        assert_eq!(line["ok"], true, "{line}");
        let out = run_deno(&["eval", "--cached-only", section], &restored);
        assert_eq!(
            out.status.success(),
            served,
            "generation {generation}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        if served {
            assert_eq!(text(&out.stdout).trim(), "function");
        } else {
            assert!(
                text(&out.stderr).contains("marked"),
                "{}",
                text(&out.stderr)
            );
        }
    }
}
