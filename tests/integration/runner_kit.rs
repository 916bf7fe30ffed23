//! The Deno runner kit (`clients/deno/`) under `deno test`, against the real `sitecache` binary
//! and MinIO: this test commits and promotes a generation, then runs the kit's own tests
//! (`clients/deno/mod_test.ts`) with where it is.

use std::process::Command;

use crate::agent::{location, promote, snapshot, text};
use crate::support;

#[tokio::test]
async fn the_deno_runner_kit_restores_and_reports_under_deno_test() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let empty = sitecache::storage::Location::new(&loc.bucket, "nothing-promoted/").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("deno-dir");
    std::fs::create_dir_all(source.join("deps")).unwrap();
    for i in 1..=5 {
        std::fs::write(
            source.join(format!("deps/m{i}.js")),
            format!("export default {i};\n"),
        )
        .unwrap();
    }
    let out = snapshot(s3, &loc, &source, 1);
    assert!(out.status.success(), "snapshot: {}", text(&out.stderr));
    promote(s3, &loc, 1).await;

    let deno = sitecache_devtools::assets::Asset::Deno
        .path()
        .expect("deno (make test-assets)");
    let kit = support::repo_path("clients/deno");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let out = Command::new(&deno)
        .args([
            "test",
            "--no-prompt",
            "--allow-run",
            "--allow-env",
            "--allow-read",
            "--allow-write",
        ])
        .current_dir(&kit)
        // Deno's own cache for the test run: nothing to download (no remote imports).
        .env("DENO_DIR", tmp.path().join("deno-test-cache"))
        .env("NO_COLOR", "1")
        .env("SITECACHE_BIN", env!("CARGO_BIN_EXE_sitecache"))
        .env("SITECACHE_TEST_URL", loc.to_string())
        .env("SITECACHE_TEST_EMPTY", empty.to_string())
        .env("SITECACHE_TEST_FILES", "5")
        .env("SITECACHE_TEST_FILE", "deps/m3.js")
        .env("SITECACHE_TEST_DIR", &scratch)
        .envs(s3.aws_env())
        .env("SITECACHE_PATH_STYLE", "true")
        .output()
        .expect("run deno test");
    let report = format!("{}\n{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "deno test failed:\n{report}");
    // Every test of the kit ran (a filter or a missing file would pass with fewer).
    assert!(report.contains("ok | 8 passed | 0 failed"), "{report}");
}
