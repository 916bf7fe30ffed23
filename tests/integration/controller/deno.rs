//! End to end with real Deno: the warm step caches a site's `npm:` imports, the controller
//! promotes the generation, a runner restores it, and the site runs from the cache alone.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::harness::{Harness, Options};

#[tokio::test]
async fn deno_site_warmed_by_the_controller_runs_cached_only_after_restore() {
    let h = Harness::start(Options::default()).await;
    let deno = sitecache_devtools::assets::Asset::Deno
        .path()
        .expect("deno (make test-assets)");
    let site = h.dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(
        site.join("main.ts"),
        "import isNumber from \"npm:is-number@7.0.0\";\n\
         import ms from \"npm:ms@2.1.3\";\n\
         console.log(`isNumber=${isNumber(42)} ms=${ms(\"2h\")}`);\n",
    )
    .unwrap();
    let main = site.join("main.ts").display().to_string();
    h.create(
        "storefront",
        json!({"site": "storefront", "source": {"revision": "v1"},
               "warm": {"image": "storefront:v1", "command": [deno.display().to_string(), "cache", main]},
               "snapshot": {"minFiles": 5}}),
    )
    .await;
    let sc = h
        .wait("storefront", "promoted", Duration::from_secs(180), |sc| {
            super::harness::current(sc) == Some(1)
        })
        .await;
    let url = sc.status.as_ref().unwrap().url.clone().unwrap();

    let fresh = h.dir.join("runner-deno-dir");
    h.restore_into(&url, &fresh);
    let run = Command::new(&deno)
        .args(["run", "--cached-only", "main.ts"])
        .current_dir(&site)
        .env("DENO_DIR", &fresh)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "deno run --cached-only: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "isNumber=true ms=7200000"
    );
    h.shutdown().await;
}
