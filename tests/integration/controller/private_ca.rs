//! A store behind a private CA (MinIO serving TLS with a certificate of a CA made for the run):
//! the controller says plainly that it does not trust it until `--ca-bundle` gives the CA, and a
//! bundle it cannot use stops it at start-up.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::harness::{Harness, Options, cond, condition, eventually, warm};
use crate::support;

const MINUTE: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_store_behind_a_private_ca_is_untrusted_until_the_controller_gets_the_ca() {
    let mut h = Harness::start(Options {
        private_ca: true,
        ..Options::default()
    })
    .await;
    h.create(
        "shop",
        json!({"site": "shop", "warm": warm("", 3), "snapshot": {"minFiles": 2}}),
    )
    .await;
    let sc = h
        .wait(
            "shop",
            "Degraded by the untrusted certificate",
            MINUTE,
            |sc| condition(sc, "Degraded") == Some("True"),
        )
        .await;
    let degraded = cond(&sc, "Degraded");
    assert_eq!(
        degraded.reason, "StorageCertificateUntrusted",
        "{degraded:?}"
    );
    assert!(
        degraded.message.contains(
            "the storage endpoint's certificate is not trusted (unknown issuer): give the CA \
             that issued it with --ca-bundle"
        ),
        "{degraded:?}"
    );
    // The Event follows the status write; it is not in the same request.
    eventually(
        "a StorageCertificateUntrusted Event",
        30 * SECOND,
        || async {
            h.event_reasons("shop")
                .await
                .contains(&"StorageCertificateUntrusted".to_owned())
        },
    )
    .await;
    assert!(h.jobs().get_opt("shop-g1").await.unwrap().is_none());

    let ca = support::private_store().await.ca_file.display().to_string();
    h.restart_controller_with(&["--ca-bundle", &ca]);
    let sc = h.wait_promoted("shop", 1).await;
    assert_eq!(condition(&sc, "Degraded"), Some("False"));
    h.shutdown().await;
}

#[tokio::test]
async fn a_ca_bundle_the_controller_cannot_use_stops_it_at_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("ca.crt");
    let no_certificate = tmp.path().join("empty.pem");
    std::fs::write(&no_certificate, "# no certificate here\n").unwrap();
    for (file, why) in [
        (&missing, "cannot read it"),
        (&no_certificate, "holds no certificate"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sitecache"))
            .args(["controller", "--listen-address", "127.0.0.1:0"])
            .env("SITECACHE_CA_BUNDLE", file)
            // Never reached: the configuration is checked first.
            .env("KUBECONFIG", tmp.path().join("no-kubeconfig"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "error: controller: --ca-bundle {}: {why}",
                file.display()
            )),
            "{stderr}"
        );
    }
}
