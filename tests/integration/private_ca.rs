//! `sitecache snapshot` and `sitecache restore` against a store behind a private CA (MinIO
//! serving TLS with a certificate of a CA made for the run): refused plainly without the CA,
//! trusted with `--ca-bundle` / `SITECACHE_CA_BUNDLE` on top of the platform's roots, and a
//! bundle that cannot be used is an error naming the flag and the file, before any request.

use crate::agent::{location, promote, restore, result_line, run, sitecache, snapshot, text};
use crate::{fixtures, support};

#[tokio::test]
async fn agents_trust_a_private_ca_only_when_given_its_certificate() {
    let private = support::private_store().await;
    let s3 = &private.s3;
    let ca = private.ca_file.to_str().unwrap();
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    fixtures::rich_tree(&source, 256);

    // Without the CA: the snapshot fails and says why, and how to fix it.
    let out = snapshot(s3, &loc, &source, 1);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("snapshot failed (untrusted-certificate): storage: HEAD s3://")
            && stderr.contains(
                "the storage endpoint's certificate is not trusted (unknown issuer): give the CA \
             that issued it with --ca-bundle or SITECACHE_CA_BUNDLE"
            ),
        "{stderr}"
    );

    // With it: committed, and restored.
    let out = run(sitecache(s3).args(["snapshot", "--ca-bundle", ca]).args([
        "--source",
        source.to_str().unwrap(),
        "--url",
        &loc.to_string(),
        "--generation",
        "1",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    promote(s3, &loc, 1).await;

    // A runner without it: advisory (exit 0), the reason says what is wrong, at once (a
    // refused certificate is not retried until a wake-up's deadline ends it as a timeout).
    let dest = tmp.path().join("restored");
    let (out, line) = restore(s3, &loc, &dest, &["--timeout", "4s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(line["ok"], false, "{line}");
    assert_eq!(line["reason"], "untrusted-certificate", "{line}");
    let message = line["message"].as_str().unwrap();
    assert!(
        message.contains("not trusted (unknown issuer)") && message.contains("--ca-bundle"),
        "{line}"
    );
    assert!(line["ms"].as_u64().unwrap() < 1000, "{line}");
    assert!(!dest.exists());

    // With the flag, and with the variable.
    let (out, line) = restore(s3, &loc, &dest, &["--strict", "--ca-bundle", ca]);
    assert_eq!(line["ok"], true, "{line} {}", text(&out.stderr));
    fixtures::assert_same_tree(&source, &dest);
    let again = tmp.path().join("again");
    let out = run(sitecache(s3)
        .env("SITECACHE_CA_BUNDLE", ca)
        .args(["restore", "--strict", "--url", &loc.to_string()])
        .arg("--dest")
        .arg(&again));
    assert_eq!(result_line(&out)["ok"], true, "{}", text(&out.stderr));

    // The bundle is added to the platform's roots, not put in their place: with the private CA
    // as the "platform's" (SSL_CERT_FILE) and an unrelated CA as the bundle, the store is
    // still trusted.
    let other = sitecache_devtools::TestCa::new("unrelated").unwrap();
    let other_file = tmp.path().join("unrelated.crt");
    std::fs::write(&other_file, other.cert_pem()).unwrap();
    let both = tmp.path().join("both");
    let out = run(sitecache(s3)
        .env("SSL_CERT_FILE", ca)
        .args(["restore", "--strict", "--url", &loc.to_string()])
        .arg("--ca-bundle")
        .arg(&other_file)
        .arg("--dest")
        .arg(&both));
    assert_eq!(result_line(&out)["ok"], true, "{}", text(&out.stderr));
}

#[tokio::test]
async fn a_ca_bundle_that_cannot_be_used_is_named_and_never_breaks_a_wake_up() {
    let private = support::private_store().await;
    let s3 = &private.s3;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.crt");
    let empty = tmp.path().join("empty.crt");
    std::fs::write(&empty, "").unwrap();
    let key = tmp.path().join("key.pem");
    let server = sitecache_devtools::TestCa::new("k")
        .unwrap()
        .server(&["localhost"])
        .unwrap();
    std::fs::write(&key, server.key).unwrap();
    let dest = tmp.path().join("dest");

    for (file, why) in [
        (&missing, "cannot read it"),
        (&empty, "holds no certificate"),
        (&key, "holds a private key"),
    ] {
        let flag = ["--ca-bundle", file.to_str().unwrap()];
        let expected = format!("--ca-bundle {}: {why}", file.display());
        // Advisory: exit 0, the result line names the flag and the file.
        let (out, line) = restore(s3, &loc, &dest, &flag);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(line["reason"], "invalid-arguments", "{line}");
        assert!(
            line["message"].as_str().unwrap().starts_with(&expected),
            "{line}"
        );
        // Strict: exit 1.
        let (out, _) = restore(s3, &loc, &dest, &["--strict", flag[0], flag[1]]);
        assert_eq!(out.status.code(), Some(1));
        assert!(!dest.exists());

        // The snapshot fails before packing or uploading anything.
        let source = tmp.path().join("source");
        fixtures::rich_tree(&source, 8);
        let out = run(sitecache(s3).arg("snapshot").args(flag).args([
            "--source",
            source.to_str().unwrap(),
            "--url",
            &loc.to_string(),
            "--generation",
            "1",
        ]));
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("snapshot failed (invalid-ca-bundle): {expected}")),
            "{stderr}"
        );
        assert_eq!(
            s3.list_keys(&loc.bucket, &loc.prefix).await.unwrap(),
            Vec::<String>::new()
        );
        let _ = std::fs::remove_dir_all(&source);
    }
}
