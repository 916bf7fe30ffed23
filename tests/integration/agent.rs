//! `sitecache snapshot` and `sitecache restore` as processes, against the real S3 server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sitecache::archive::{Current, FORMAT_TAR_ZSTD, FORMAT_VERSION, FRAME_INPUT, Manifest};
use sitecache::storage::Location;
use sitecache_devtools::{S3Server, Store};
use tar::EntryType;

use crate::fixtures::{self, RawTar};
use crate::support;

// The snapshot and restore round trips, on every S3 implementation (`NAME::minio`,
// `NAME::seaweedfs`).
on_every_store!(
    round_trip_is_byte_and_metadata_identical,
    two_attempts_of_one_generation_never_mix_archive_and_manifest,
    generations_are_immutable,
    truncated_grown_or_missing_archive_is_refused_and_leaves_dest_untouched,
    corrupted_archive_fails_verification_and_leaves_dest_untouched,
    snapshot_refuses_an_empty_or_cold_source_before_uploading,
);

/// The `sitecache` binary, pointed at `s3` through the standard AWS environment. Path style is
/// asked for with `1`, as shell scripts often write booleans (the Jobs write `true`).
pub(crate) fn sitecache(s3: &S3Server) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitecache"));
    cmd.envs(s3.aws_env()).env("SITECACHE_PATH_STYLE", "1");
    cmd
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run sitecache")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON result line a command printed on stdout.
pub(crate) fn result_line(out: &Output) -> Value {
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no result line; stderr:\n{}", text(&out.stderr)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

pub(crate) async fn location(s3: &S3Server) -> Location {
    let bucket = s3.create_bucket("agent").await.unwrap();
    Location::new(&bucket, "shop/").unwrap()
}

pub(crate) fn snapshot(s3: &S3Server, loc: &Location, source: &Path, generation: u64) -> Output {
    run(sitecache(s3).args([
        "snapshot",
        "--source",
        source.to_str().unwrap(),
        "--url",
        &loc.to_string(),
        "--generation",
        &generation.to_string(),
    ]))
}

pub(crate) fn restore(
    s3: &S3Server,
    loc: &Location,
    dest: &Path,
    extra: &[&str],
) -> (Output, Value) {
    let out = run(sitecache(s3)
        .args([
            "restore",
            "--url",
            &loc.to_string(),
            "--dest",
            dest.to_str().unwrap(),
        ])
        .args(extra));
    let line = result_line(&out);
    (out, line)
}

/// Promotes generation `n` the way the controller does: current.json from the manifest.
pub(crate) async fn promote(s3: &S3Server, loc: &Location, n: u64) {
    let manifest: Manifest =
        sitecache::storage::get_json(&s3.client(), &loc.bucket, &loc.manifest_key(n))
            .await
            .unwrap()
            .expect("the manifest exists");
    let current = Current {
        manifest,
        promoted_at: jiff::Timestamp::now(),
    };
    sitecache::storage::put_json(
        &s3.client(),
        &loc.bucket,
        &loc.current_key(),
        &current,
        false,
    )
    .await
    .unwrap();
}

async fn round_trip_is_byte_and_metadata_identical(store: Store) {
    let s3 = support::s3_of(store).await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("deno-dir");
    // Larger than one 8 MiB upload part, and than the unpacker's small-file threshold.
    fixtures::rich_tree(&source, 20 * 1024 * 1024 + 123);

    let out = snapshot(s3, &loc, &source, 1);
    assert!(
        out.status.success(),
        "snapshot failed: {}",
        text(&out.stderr)
    );
    let report = result_line(&out);
    assert_eq!(report["ok"], true);
    assert_eq!(report["generation"], 1);

    // The manifest describes the archive exactly.
    let manifest: Manifest =
        sitecache::storage::get_json(&s3.client(), &loc.bucket, &loc.manifest_key(1))
            .await
            .unwrap()
            .unwrap();
    let archive = archive_bytes(s3, &loc, 1).await;
    assert_eq!(manifest.format_version, FORMAT_VERSION);
    assert_eq!(manifest.format, FORMAT_TAR_ZSTD);
    assert_eq!(manifest.size_bytes, archive.len() as u64);
    assert_eq!(manifest.sha256, hex::encode(Sha256::digest(&archive)));
    assert_eq!(manifest.files, 11, "regular files, hard link included");
    assert!(manifest.uncompressed_bytes > 20 * 1024 * 1024);
    // Independent frames of FRAME_INPUT tar bytes, each declaring its size (docs/formats.md).
    let sizes = frame_content_sizes(&archive);
    assert!(sizes.len() >= 5, "{sizes:?}");
    let (last, whole) = sizes.split_last().unwrap();
    assert!(
        whole.iter().all(|s| *s == Some(FRAME_INPUT as u64)),
        "{sizes:?}"
    );
    assert!(
        matches!(last, Some(n) if *n <= FRAME_INPUT as u64),
        "{sizes:?}"
    );

    // By generation number, into a directory that does not exist yet.
    let dest = tmp.path().join("restored/deno-dir");
    let (out, line) = restore(s3, &loc, &dest, &["--generation", "1", "--strict"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(line["ok"], true, "{line}");
    assert_eq!(line["reason"], "restored");
    assert_eq!(line["generation"], 1);
    assert_eq!(line["files"], 11);
    assert_eq!(line["bytes"], manifest.size_bytes);
    fixtures::assert_same_tree(&source, &dest);

    // The promoted generation (current.json), over an existing cache, which it replaces whole.
    promote(s3, &loc, 1).await;
    let dest2 = tmp.path().join("existing");
    std::fs::create_dir_all(dest2.join("stale/dir")).unwrap();
    std::fs::write(dest2.join("stale/dir/old"), "old").unwrap();
    let (_, line) = restore(s3, &loc, &dest2, &[]);
    assert_eq!(line["ok"], true, "{line}");
    fixtures::assert_same_tree(&source, &dest2);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("sitecache"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

/// The content size each zstd frame of an archive declares.
fn frame_content_sizes(archive: &[u8]) -> Vec<Option<u64>> {
    use zstd::zstd_safe;
    let mut rest = archive;
    let mut sizes = Vec::new();
    while !rest.is_empty() {
        sizes.push(zstd_safe::get_frame_content_size(rest).unwrap());
        rest = &rest[zstd_safe::find_frame_compressed_size(rest).unwrap()..];
    }
    sizes
}

#[tokio::test]
async fn restores_an_archive_of_one_zstd_frame() {
    // What builds before frames were cut wrote: one frame, no content size, made by the
    // streaming encoder. Restored through the streaming decoder.
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("deno-dir");
    fixtures::rich_tree(&source, 9 * 1024 * 1024);
    let out = snapshot(s3, &loc, &source, 1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tar = zstd::stream::decode_all(&archive_bytes(s3, &loc, 1).await[..]).unwrap();
    let one_frame = zstd::stream::encode_all(&tar[..], 3).unwrap();
    assert_eq!(frame_content_sizes(&one_frame), [None]);
    put(s3, &loc, "shop/one-frame.tar.zst", one_frame).await;
    let dest = tmp.path().join("restored");
    let (_, line) = restore(s3, &loc, &dest, &["--key", "shop/one-frame.tar.zst"]);
    assert_eq!(line["ok"], true, "{line}");
    assert_eq!(line["files"], 11);
    fixtures::assert_same_tree(&source, &dest);
}

async fn snapshot_refuses_an_empty_or_cold_source_before_uploading(store: Store) {
    let s3 = support::s3_of(store).await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = snapshot(s3, &loc, &empty, 1);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--source") && text(&out.stderr).contains("empty"));

    let missing = tmp.path().join("missing");
    let out = snapshot(s3, &loc, &missing, 1);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );

    let cold = tmp.path().join("cold");
    std::fs::create_dir_all(cold.join("npm")).unwrap();
    std::fs::write(cold.join("npm/one"), "1").unwrap();
    let out = run(sitecache(s3).args([
        "snapshot",
        "--source",
        cold.to_str().unwrap(),
        "--url",
        &loc.to_string(),
        "--generation",
        "1",
        "--min-files",
        "5",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--min-files 5") && stderr.contains("1 regular files"),
        "{stderr}"
    );

    assert!(
        s3.list_keys(&loc.bucket, &loc.prefix)
            .await
            .unwrap()
            .is_empty(),
        "nothing may be uploaded for a refused snapshot"
    );
}

#[tokio::test]
async fn snapshot_refuses_a_tree_a_restore_would_refuse_before_uploading() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();

    // Deeper than a restore's depth limit (256 components).
    let deep = tmp.path().join("deep");
    let path = (0..300).fold(deep.clone(), |p, _| p.join("d"));
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("f"), "x").unwrap();
    let out = snapshot(s3, &loc, &deep, 1);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the path depth limit (components): 256")
            && stderr.contains("no runner could restore it"),
        "{stderr}"
    );

    // More entries than --max-entries, as runners would be told.
    let many = tmp.path().join("many");
    fixtures::rich_tree(&many, 100);
    let out = run(sitecache(s3).args([
        "snapshot",
        "--source",
        many.to_str().unwrap(),
        "--url",
        &loc.to_string(),
        "--generation",
        "1",
        "--max-entries",
        "5",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("the entry limit"), "{stderr}");

    assert!(
        s3.list_keys(&loc.bucket, &loc.prefix)
            .await
            .unwrap()
            .is_empty(),
        "nothing may be uploaded for a refused snapshot"
    );
}

/// Two attempts of one generation, as a Job's retry beside a pod that is not dead yet: attempt A
/// is paused mid-upload while B commits, then finishes. The committed manifest and the archive it
/// names are B's, whole: A's bytes went elsewhere and are removed.
async fn two_attempts_of_one_generation_never_mix_archive_and_manifest(store: Store) {
    let s3 = support::s3_of(store).await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fixtures::rich_tree(&a, 1000);
    std::fs::write(a.join("large"), fixtures::noise(48 << 20, 7)).unwrap();
    fixtures::rich_tree(&b, 2000);

    let mut slow = sitecache(s3)
        .args([
            "snapshot",
            "--source",
            a.to_str().unwrap(),
            "--url",
            &loc.to_string(),
            "--generation",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let uploads = s3
            .client()
            .list_multipart_uploads()
            .bucket(&loc.bucket)
            .send()
            .await
            .unwrap();
        if !uploads.uploads().is_empty() {
            break;
        }
        assert!(
            slow.try_wait().unwrap().is_none(),
            "attempt A ended before it could be paused"
        );
        assert!(Instant::now() < deadline, "attempt A started no upload");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = slow.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );

    let out = snapshot(s3, &loc, &b, 1);
    assert!(out.status.success(), "attempt B: {}", text(&out.stderr));
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = slow.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "attempt A: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );

    let manifest = committed(s3, &loc, 1).await;
    let keys = s3.list_keys(&loc.bucket, &loc.prefix).await.unwrap();
    let archives: Vec<_> = keys.iter().filter(|k| k.contains(".tar.")).collect();
    assert_eq!(archives, [&manifest.archive_key], "A's archive is removed");
    promote(s3, &loc, 1).await;
    let dest = tmp.path().join("dest");
    let (out, line) = restore(s3, &loc, &dest, &["--strict"]);
    assert_eq!(line["ok"], true, "{line} {}", text(&out.stderr));
    fixtures::assert_same_tree(&b, &dest);
}

async fn generations_are_immutable(store: Store) {
    let s3 = support::s3_of(store).await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("src");
    fixtures::rich_tree(&source, 1000);
    assert!(snapshot(s3, &loc, &source, 1).status.success());
    let before = s3.list_keys(&loc.bucket, &loc.prefix).await.unwrap();
    std::fs::write(source.join("a/hello.txt"), "changed").unwrap();
    let out = snapshot(s3, &loc, &source, 1);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        s3.list_keys(&loc.bucket, &loc.prefix).await.unwrap(),
        before
    );
}

#[tokio::test]
async fn restore_is_advisory_unless_strict() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("deno-dir");

    let (out, line) = restore(s3, &loc, &dest, &[]);
    assert_eq!(out.status.code(), Some(0), "advisory: exit 0");
    assert_eq!(line["ok"], false);
    assert_eq!(line["reason"], "no-current-generation");
    assert!(text(&out.stderr).contains("warning"));

    let (out, line) = restore(s3, &loc, &dest, &["--strict"]);
    assert_eq!(out.status.code(), Some(1), "strict: exit non-zero");
    assert_eq!(line["reason"], "no-current-generation");
    // The variable reads booleans as shell scripts write them (docs/runner.md#flags).
    for yes in ["true", "1", "yes", "on"] {
        let out = run(sitecache(s3).env("SITECACHE_STRICT", yes).args([
            "restore",
            "--url",
            &loc.to_string(),
            "--dest",
            dest.to_str().unwrap(),
        ]));
        assert_eq!(out.status.code(), Some(1), "SITECACHE_STRICT={yes}");
    }
    let out = run(sitecache(s3).env("SITECACHE_STRICT", "maybe").args([
        "restore",
        "--url",
        &loc.to_string(),
        "--dest",
        dest.to_str().unwrap(),
    ]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "a usage error, in the advisory mode"
    );
    assert_eq!(result_line(&out)["reason"], "invalid-arguments");

    // Bad arguments are advisory too.
    let out = run(sitecache(s3).args(["restore", "--url", "not-a-url", "--dest", "/tmp/x"]));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(result_line(&out)["reason"], "invalid-arguments");
    let out = run(sitecache(s3).args(["restore", "--bogus-flag"]));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(result_line(&out)["reason"], "invalid-arguments");
    let out = run(sitecache(s3).args(["restore", "--bogus-flag", "--strict"]));
    assert_eq!(out.status.code(), Some(2));

    assert!(!dest.exists(), "a failed restore never creates DEST");
}

/// A machine without CA certificates (an image without a CA bundle) restores from an `http`
/// endpoint; a machine without credentials is told so, not that the store is unreachable.
#[tokio::test]
async fn restore_needs_no_ca_certificates_for_http_and_names_missing_credentials() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    fixtures::rich_tree(&source, 1024);
    let out = snapshot(s3, &loc, &source, 1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    promote(s3, &loc, 1).await;

    let empty = tmp.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let dest = tmp.path().join("restored");
    let out = run(sitecache(s3)
        .env("SSL_CERT_FILE", empty.join("none.pem"))
        .env("SSL_CERT_DIR", &empty)
        .args(["restore", "--strict", "--url", &loc.to_string()])
        .arg("--dest")
        .arg(&dest));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(result_line(&out)["ok"], true, "{stderr}");
    assert!(stderr.contains("no CA certificates found"), "{stderr}");
    fixtures::assert_same_tree(&source, &dest);

    let out = run(sitecache(s3)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["restore", "--strict", "--url", &loc.to_string()])
        .arg("--dest")
        .arg(tmp.path().join("never")));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = result_line(&out);
    let message = line["message"].as_str().unwrap();
    assert!(
        message.contains("no storage credentials found") && !message.contains("unreachable"),
        "{line}"
    );
}

/// DEST with a marker, to prove failed restores leave it as it was.
fn existing_dest(root: &Path) -> PathBuf {
    let dest = root.join("deno-dir");
    std::fs::create_dir_all(dest.join("npm")).unwrap();
    std::fs::write(dest.join("npm/marker"), "previous cache").unwrap();
    dest
}

fn assert_untouched(dest: &Path) {
    let entries: Vec<_> = walkdir::WalkDir::new(dest)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap().path().strip_prefix(dest).unwrap().to_owned())
        .collect();
    assert_eq!(entries, [PathBuf::from("npm"), PathBuf::from("npm/marker")]);
    assert_eq!(
        std::fs::read_to_string(dest.join("npm/marker")).unwrap(),
        "previous cache"
    );
    let siblings: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(siblings.len(), 1, "staging left beside DEST: {siblings:?}");
}

/// The manifest generation `n` committed.
pub(crate) async fn committed(s3: &S3Server, loc: &Location, n: u64) -> Manifest {
    let bytes = s3
        .get_bytes(&loc.bucket, &loc.manifest_key(n))
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn replace_archive(s3: &S3Server, loc: &Location, n: u64, data: Vec<u8>) {
    put(s3, loc, &committed(s3, loc, n).await.archive_key, data).await;
}

/// Writes an object in the location's bucket.
pub(crate) async fn put(s3: &S3Server, loc: &Location, key: &str, data: Vec<u8>) {
    s3.client()
        .put_object()
        .bucket(&loc.bucket)
        .key(key)
        .body(ByteStream::from(data))
        .send()
        .await
        .unwrap();
}

async fn archive_bytes(s3: &S3Server, loc: &Location, n: u64) -> Vec<u8> {
    let key = committed(s3, loc, n).await.archive_key;
    s3.get_bytes(&loc.bucket, &key).await.unwrap()
}

async fn corrupted_archive_fails_verification_and_leaves_dest_untouched(store: Store) {
    let s3 = support::s3_of(store).await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("src");
    fixtures::rich_tree(&source, 3 * 1024 * 1024);
    assert!(snapshot(s3, &loc, &source, 1).status.success());
    promote(s3, &loc, 1).await;

    let mut data = archive_bytes(s3, &loc, 1).await;
    let middle = data.len() / 2;
    data[middle] ^= 0x55;
    replace_archive(s3, &loc, 1, data).await;

    let work = tempfile::tempdir().unwrap();
    let dest = existing_dest(work.path());
    let (out, line) = restore(s3, &loc, &dest, &["--strict"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(line["ok"], false);
    let reason = line["reason"].as_str().unwrap();
    assert!(
        reason == "checksum-mismatch" || reason == "corrupt-archive",
        "{line}"
    );
    assert_untouched(&dest);
}

#[tokio::test]
async fn archive_over_max_bytes_is_refused_before_download() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("src");
    fixtures::rich_tree(&source, 512 * 1024);
    assert!(snapshot(s3, &loc, &source, 1).status.success());
    promote(s3, &loc, 1).await;
    let work = tempfile::tempdir().unwrap();
    let dest = existing_dest(work.path());
    let (_, line) = restore(s3, &loc, &dest, &["--max-bytes", "64KiB"]);
    assert_eq!(line["ok"], false);
    assert_eq!(line["reason"], "too-large", "{line}");
    assert!(
        line["message"].as_str().unwrap().contains("--max-bytes"),
        "{line}"
    );
    assert_untouched(&dest);
    let (_, line) = restore(s3, &loc, &dest, &["--max-unpacked-bytes", "100KiB"]);
    assert_eq!(line["reason"], "too-large", "{line}");
    assert_untouched(&dest);
}

/// The restore takes the archive's size from the manifest (no HEAD): every ranged GET checks it.
async fn truncated_grown_or_missing_archive_is_refused_and_leaves_dest_untouched(store: Store) {
    let s3 = support::s3_of(store).await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("src");
    fixtures::rich_tree(&source, 1024 * 1024);
    assert!(snapshot(s3, &loc, &source, 1).status.success());
    promote(s3, &loc, 1).await;
    let original = archive_bytes(s3, &loc, 1).await;

    for (case, reason) in [
        ("truncated", "size-mismatch"),
        ("grown", "size-mismatch"),
        ("deleted", "not-found"),
    ] {
        match case {
            "truncated" => {
                let data = original[..original.len() * 2 / 3].to_vec();
                replace_archive(s3, &loc, 1, data).await;
            }
            "grown" => {
                let data = [&original[..], &[0u8; 4096][..]].concat();
                replace_archive(s3, &loc, 1, data).await;
            }
            _ => {
                s3.client()
                    .delete_object()
                    .bucket(&loc.bucket)
                    .key(committed(s3, &loc, 1).await.archive_key)
                    .send()
                    .await
                    .unwrap();
            }
        }
        let work = tempfile::tempdir().unwrap();
        let dest = existing_dest(work.path());
        let (_, line) = restore(s3, &loc, &dest, &[]);
        assert_eq!(line["ok"], false, "{case}: {line}");
        assert_eq!(line["reason"], reason, "{case}: {line}");
        assert_untouched(&dest);
    }
}

#[tokio::test]
async fn stalled_server_hits_the_deadline_and_leaves_dest_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&support::run_dir().join(sitecache_devtools::unique_name("s3-stall")))
        .await
        .unwrap();
    let loc = location(&s3).await;
    let source = tmp.path().join("src");
    fixtures::rich_tree(&source, 48 * 1024 * 1024);
    assert!(snapshot(&s3, &loc, &source, 1).status.success());
    promote(&s3, &loc, 1).await;

    let work = tempfile::tempdir().unwrap();
    let dest = existing_dest(work.path());
    // Small ranges one at a time, so that the download is still going when the server freezes.
    let child = sitecache(&s3)
        .args([
            "restore",
            "--url",
            &loc.to_string(),
            "--dest",
            dest.to_str().unwrap(),
            "--timeout",
            "4s",
            "--chunk-size",
            "256KiB",
            "--download-concurrency",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // The staging directory appears when the download starts.
    let staging_seen = loop {
        let staging = std::fs::read_dir(work.path()).unwrap().flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("sitecache-staging")
        });
        if staging || started.elapsed() > Duration::from_secs(3) {
            break staging;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    s3.process().unwrap().signal(libc::SIGSTOP).unwrap();
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    s3.process().unwrap().signal(libc::SIGCONT).unwrap();

    assert!(staging_seen, "the restore never started downloading");
    let line = result_line(&out);
    assert_eq!(out.status.code(), Some(0), "advisory");
    assert_eq!(line["ok"], false);
    assert_eq!(line["reason"], "timeout", "{line}");
    assert!(
        elapsed < Duration::from_secs(7),
        "the 4s deadline was overrun: {elapsed:?}"
    );
    assert_untouched(&dest);
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [dest.file_name().unwrap()], "left beside DEST");
}

#[tokio::test]
async fn s3_killed_mid_upload_commits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s3 =
        S3Server::start(&support::run_dir().join(sitecache_devtools::unique_name("s3-kill")))
            .await
            .unwrap();
    let loc = location(&s3).await;
    let source = tmp.path().join("src");
    fixtures::rich_tree(&source, 96 * 1024 * 1024);
    let child = sitecache(&s3)
        .args([
            "snapshot",
            "--source",
            source.to_str().unwrap(),
            "--url",
            &loc.to_string(),
            "--generation",
            "1",
            "--upload-concurrency",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server once parts are being uploaded.
    let client = s3.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let uploads = client
            .list_multipart_uploads()
            .bucket(&loc.bucket)
            .send()
            .await
            .unwrap();
        if !uploads.uploads().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no multipart upload started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s3.stop();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("snapshot failed"), "{stderr}");

    s3.restart().await.unwrap();
    // The attempt's record may stay (it could not be deleted with the server down): it is how
    // the controller finds what the attempt left.
    let keys = s3.list_keys(&loc.bucket, &loc.prefix).await.unwrap();
    assert!(
        keys.iter().all(|k| k.contains("/attempts/")),
        "no archive and no manifest may exist after a failed upload: {keys:?}"
    );
}

/// What [`commit_honestly`]'s manifests declare the archive holds: as much as every test's
/// flags allow (`--max-unpacked-bytes 1MiB`, `--max-entries 5000`), as a hostile writer would,
/// so that the unpack's own limits are what refuse an archive.
pub(crate) const HONEST_FILE_BYTES: u64 = 1024 * 1024;
pub(crate) const HONEST_ENTRIES: u64 = 5000;

/// Uploads `archive` (compressed already) as generation 1 of `loc`, with a manifest whose size
/// and SHA-256 are the archive's: whatever it holds, only the restore's own checks judge it.
pub(crate) async fn commit_honestly(s3: &S3Server, loc: &Location, archive: Vec<u8>) {
    commit_declaring(s3, loc, archive, HONEST_FILE_BYTES, HONEST_ENTRIES).await
}

/// [`commit_honestly`], the manifest declaring `file_bytes` and `entries`.
pub(crate) async fn commit_declaring(
    s3: &S3Server,
    loc: &Location,
    archive: Vec<u8>,
    file_bytes: u64,
    entries: u64,
) {
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        generation: 1,
        archive_key: loc.archive_key(1),
        format: FORMAT_TAR_ZSTD.into(),
        size_bytes: archive.len() as u64,
        sha256: hex::encode(Sha256::digest(&archive)),
        files: 1,
        entries,
        uncompressed_bytes: file_bytes,
        created_at: jiff::Timestamp::now(),
        source_revision: None,
        legacy_archive_key: None,
        deno_version: None,
        cache_dir: None,
        writer: "test".into(),
    };
    put(s3, loc, &loc.archive_key(1), archive).await;
    let manifest = serde_json::to_vec(&manifest).unwrap();
    put(s3, loc, &loc.manifest_key(1), manifest).await;
}

/// Uploads `tar` (zstd-compressed) as generation 1 with an honest manifest, so that only the
/// unpacker's checks stand between the archive and the disk, and restores it.
async fn restore_hostile(tar: Vec<u8>) -> (Value, tempfile::TempDir) {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let archive = zstd::encode_all(&tar[..], 3).unwrap();
    commit_honestly(s3, &loc, archive).await;
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("deep/deno-dir");
    let (_, line) = restore(s3, &loc, &dest, &["--generation", "1"]);
    assert!(!dest.exists(), "DEST must not be created: {line}");
    // Nothing anywhere in the work area but the (empty) parent of DEST.
    let written: Vec<_> = walkdir::WalkDir::new(work.path())
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    assert_eq!(written, [work.path().join("deep")], "{line}");
    (line, work)
}

async fn assert_refused(tar: Vec<u8>, why: &str) {
    let (line, _work) = restore_hostile(tar).await;
    assert_eq!(line["ok"], false, "{line}");
    assert_eq!(line["reason"], "unsafe-entry", "{line}");
    assert!(
        line["message"].as_str().unwrap().contains(why),
        "expected {why:?} in {line}"
    );
}

#[tokio::test]
async fn refuses_absolute_paths() {
    assert_refused(
        RawTar::default().file("/tmp/sitecache-evil", b"x").finish(),
        "absolute",
    )
    .await;
}

#[tokio::test]
async fn refuses_parent_components() {
    let tar = RawTar::default()
        .dir("ok")
        .file("ok/../../escape", b"x")
        .finish();
    assert_refused(tar, "'..'").await;
}

#[tokio::test]
async fn refuses_symlinks_pointing_outside() {
    assert_refused(
        RawTar::default().symlink("etc", "/etc").finish(),
        "absolute link",
    )
    .await;
    assert_refused(
        RawTar::default()
            .dir("a")
            .symlink("a/up", "../../..")
            .finish(),
        "outside",
    )
    .await;
    // `x -> .` is inside, but `y -> x/..` would be the parent of DEST.
    assert_refused(
        RawTar::default()
            .symlink("x", ".")
            .symlink("y", "x/..")
            .finish(),
        "outside",
    )
    .await;
}

#[tokio::test]
async fn refuses_writing_through_a_symlink() {
    let tar = RawTar::default()
        .dir("real")
        .symlink("link", "real")
        .file("link/file", b"x")
        .finish();
    assert_refused(tar, "below a symbolic link").await;
}

#[tokio::test]
async fn refuses_hardlinks_pointing_outside() {
    let abs = RawTar::default()
        .entry(b"h", EntryType::Link, b"/etc/passwd", b"")
        .finish();
    assert_refused(abs, "absolute").await;
    let up = RawTar::default()
        .entry(b"h", EntryType::Link, b"../outside", b"")
        .finish();
    assert_refused(up, "'..'").await;
    let not_file = RawTar::default()
        .dir("d")
        .entry(b"h", EntryType::Link, b"d", b"")
        .finish();
    assert_refused(not_file, "not a regular file").await;
}

#[tokio::test]
async fn refuses_top_level_names_reserved_for_the_install() {
    // A tree holding these would collide with the install's own files when DEST is a mount
    // point (or move a volume's lost+found).
    for name in [
        ".sitecache-staging-0123/a",
        ".sitecache-journal",
        "lost+found/x",
    ] {
        assert_refused(RawTar::default().file(name, b"x").finish(), "reserved").await;
    }
}

#[tokio::test]
async fn refuses_device_files_and_fifos() {
    let dev = RawTar::default()
        .entry(b"null", EntryType::Char, b"", b"")
        .finish();
    assert_refused(dev, "device file").await;
    let blk = RawTar::default()
        .entry(b"sda", EntryType::Block, b"", b"")
        .finish();
    assert_refused(blk, "device file").await;
    let fifo = RawTar::default()
        .entry(b"pipe", EntryType::Fifo, b"", b"")
        .finish();
    assert_refused(fifo, "FIFO").await;
}

#[tokio::test]
async fn refuses_pax_and_gnu_name_tricks() {
    // The header says `innocent`; a PAX record renames it.
    let pax = RawTar::default()
        .pax(&[("path", "../pax-escape")])
        .file("innocent", b"x")
        .finish();
    assert_refused(pax, "'..'").await;
    let pax_link = RawTar::default()
        .pax(&[("linkpath", "/etc")])
        .symlink("innocent", "ok")
        .finish();
    assert_refused(pax_link, "absolute link").await;
    let long = RawTar::default()
        .gnu_long_name("../gnu-escape")
        .file("innocent", b"x")
        .finish();
    assert_refused(long, "'..'").await;
    // A later entry replacing an earlier one (a directory turned into a link, say).
    let dup = RawTar::default().dir("d").symlink("d", "../..").finish();
    let (line, _work) = restore_hostile(dup).await;
    assert_eq!(line["reason"], "unsafe-entry", "{line}");
}

#[tokio::test]
async fn restores_a_legacy_gzip_tarball() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("deno-dir");
    fixtures::rich_tree(&source, 100_000);
    // What the older runner code made: `tar -czf` of /deno-dir, entries under deno-dir/.
    let tgz = tmp.path().join("cache.tgz");
    let status = Command::new("tar")
        .args([
            "-czf",
            tgz.to_str().unwrap(),
            "-C",
            tmp.path().to_str().unwrap(),
            "deno-dir",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    put(s3, &loc, "shop/cache.tgz", std::fs::read(&tgz).unwrap()).await;
    let dest = tmp.path().join("restored");
    let (_, line) = restore(s3, &loc, &dest, &["--key", "shop/cache.tgz"]);
    assert_eq!(line["ok"], true, "{line}");
    assert_eq!(line["generation"], Value::Null);
    fixtures::assert_same_tree(&source, &dest);
}

#[tokio::test]
async fn legacy_copy_restores_with_the_old_runner_command() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("src");
    fixtures::rich_tree(&source, 100_000);
    let out = run(sitecache(s3).args([
        "snapshot",
        "--source",
        source.to_str().unwrap(),
        "--url",
        &loc.to_string(),
        "--generation",
        "1",
        "--legacy",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = committed(s3, &loc, 1).await.legacy_archive_key.unwrap();
    let data = s3.get_bytes(&loc.bucket, &key).await.unwrap();
    // `tar -xzf - -C /` in a scratch root.
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut tar = Command::new("tar")
        .args(["-xzf", "-", "-C", root.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &data).unwrap();
    drop(tar.stdin.take());
    assert!(tar.wait().unwrap().success());
    fixtures::assert_same_tree(&source, &root.join("deno-dir"));
}

#[tokio::test]
async fn real_deno_dir_runs_cached_only_after_restore() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let deno = sitecache_devtools::assets::Asset::Deno.path().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(
        site.join("main.ts"),
        "import isNumber from \"npm:is-number@7.0.0\";\n\
         import ms from \"npm:ms@2.1.3\";\n\
         console.log(`isNumber=${isNumber(42)} ms=${ms(\"2h\")}`);\n",
    )
    .unwrap();
    let deno_dir = tmp.path().join("deno-dir");
    let out = Command::new(&deno)
        .arg("cache")
        .arg("main.ts")
        .current_dir(&site)
        .env("DENO_DIR", &deno_dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "deno cache: {}", text(&out.stderr));

    // Warmed by running the site: Deno's caches record its version.
    let out = Command::new(&deno)
        .args(["run", "--cached-only", "main.ts"])
        .current_dir(&site)
        .env("DENO_DIR", &deno_dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "deno run: {}", text(&out.stderr));
    assert!(snapshot(s3, &loc, &deno_dir, 1).status.success());
    promote(s3, &loc, 1).await;
    let manifest: Manifest =
        sitecache::storage::get_json(&s3.client(), &loc.bucket, &loc.manifest_key(1))
            .await
            .unwrap()
            .unwrap();
    let version = sitecache_devtools::assets::pinned_version("DENO_VERSION")
        .unwrap()
        .to_owned();
    assert_eq!(manifest.deno_version.as_deref(), Some(version.as_str()));
    assert_eq!(
        manifest.cache_dir.as_deref(),
        Some(deno_dir.to_str().unwrap())
    );
    let fresh = tmp.path().join("fresh-deno-dir");
    let (_, line) = restore(
        s3,
        &loc,
        &fresh,
        &["--strict", "--runtime-version", &version],
    );
    assert_eq!(line["ok"], true, "{line}");
    assert_eq!(line["runtime"], version.as_str(), "{line}");
    assert_eq!(line["runtimeMismatch"], false, "{line}");
    // Restored elsewhere than it was warmed: said, as Deno's code cache does not apply there.
    assert_eq!(line["cacheDirMismatch"], true, "{line}");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("applies only there"),
        "{line}"
    );
    // The same path, by another Deno.
    std::fs::remove_dir_all(&deno_dir).unwrap();
    let (_, line) = restore(s3, &loc, &deno_dir, &["--runtime-version", "1.46.3"]);
    assert_eq!(line["runtimeMismatch"], true, "{line}");
    assert_eq!(line["cacheDirMismatch"], false, "{line}");
    assert!(
        line["message"].as_str().unwrap().contains(&format!(
            "warmed by Deno {version}, this runner's is 1.46.3"
        )),
        "{line}"
    );

    let run_cached = |dir: &Path| {
        Command::new(&deno)
            .args(["run", "--cached-only", "main.ts"])
            .current_dir(&site)
            .env("DENO_DIR", dir)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let out = run_cached(&fresh);
    assert!(
        out.status.success(),
        "deno run --cached-only: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), "isNumber=true ms=7200000");
    // And the check is real: without the restored cache, --cached-only fails.
    let out = run_cached(&tmp.path().join("empty-deno-dir"));
    assert!(!out.status.success());
}

/// What the site (or anything else that writes beside DEST) planted under the install's own
/// name: a FIFO where the journal of an interrupted install would be (a plain read blocks on it
/// until the deadline). The restore removes it and restores. (Writing the journal through a
/// planted link is the install's unit tests': this filesystem swaps DEST without a journal.)
#[tokio::test]
async fn a_planted_journal_is_removed_not_waited_on() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    fixtures::rich_tree(&source, 4096);
    let out = snapshot(s3, &loc, &source, 1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dest = tmp.path().join("deno-dir");
    let journal = tmp.path().join(".deno-dir..sitecache-journal");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &journal,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let (out, line) = restore(
        s3,
        &loc,
        &dest,
        &["--generation", "1", "--strict", "--timeout", "20s"],
    );
    assert!(out.status.success(), "{line} {}", text(&out.stderr));
    assert_eq!(line["reason"], "restored", "{line}");
    fixtures::assert_same_tree(&source, &dest);
    assert!(
        std::fs::symlink_metadata(&journal).is_err(),
        "the FIFO is left: {}",
        text(&out.stderr)
    );
}

/// A manifest rewritten by whoever can write to the bucket to name another generation's archive
/// (with that archive's size and hash, so that verification alone would pass) or a key outside
/// the prefix: `--generation N` and `current.json` restore only an archive of the generation
/// the manifest is for.
#[tokio::test]
async fn a_manifest_naming_an_archive_of_another_generation_is_refused() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    fixtures::rich_tree(&one, 1000);
    fixtures::rich_tree(&two, 2000);
    for (source, n) in [(&one, 1), (&two, 2)] {
        let out = snapshot(s3, &loc, source, n);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let first: Manifest =
        sitecache::storage::get_json(&s3.client(), &loc.bucket, &loc.manifest_key(1))
            .await
            .unwrap()
            .unwrap();
    let outside = format!("elsewhere/{}", first.archive_key);
    for forged_key in [first.archive_key.clone(), outside] {
        let forged = Manifest {
            generation: 2,
            archive_key: forged_key.clone(),
            ..first.clone()
        };
        sitecache::storage::put_json(
            &s3.client(),
            &loc.bucket,
            &loc.manifest_key(2),
            &forged,
            false,
        )
        .await
        .unwrap();
        promote(s3, &loc, 2).await;
        for args in [&["--generation", "2"][..], &[]] {
            let dest = tmp.path().join(format!("dest-{}", fastrand::u32(..)));
            let (_, line) = restore(s3, &loc, &dest, args);
            assert_eq!(line["ok"], false, "{forged_key} {args:?}: {line}");
            assert_eq!(line["reason"], "not-found", "{line}");
            assert!(
                line["message"].as_str().unwrap().contains(&forged_key),
                "{line}"
            );
            assert!(!dest.exists(), "{forged_key} {args:?}: restored");
        }
    }
}

/// An archive larger than the runners' `--max-bytes` is never committed: every runner would
/// refuse it before downloading (the default is 4 GiB on both sides; a small limit here).
#[tokio::test]
async fn snapshot_never_commits_an_archive_over_the_runners_max_bytes() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    fixtures::rich_tree(&source, 64 * 1024);
    let out = run(sitecache(s3).args([
        "snapshot",
        "--source",
        source.to_str().unwrap(),
        "--url",
        &loc.to_string(),
        "--generation",
        "1",
        "--max-bytes",
        "16KiB",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("over --max-bytes 16384") && stderr.contains("not committed"),
        "{stderr}"
    );
    let keys = s3.list_keys(&loc.bucket, &loc.prefix).await.unwrap();
    assert!(
        !keys.contains(&loc.manifest_key(1)),
        "committed anyway: {keys:?}"
    );
    // Within the limit, the same tree commits.
    let out = snapshot(s3, &loc, &source, 1);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Another filesystem mounted in the cache directory (as a ServiceAccount token is when
/// `cacheDir` is above `/var/run/secrets`) is not the cache: the snapshot leaves it out with what
/// it holds, and says so.
#[tokio::test]
async fn snapshot_never_packs_another_filesystem_mounted_in_the_cache() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    fixtures::rich_tree(&source, 1024);
    let secrets = source.join("secrets/serviceaccount");
    std::fs::create_dir_all(&secrets).unwrap();
    let _mounted = fixtures::Tmpfs::mount(&secrets, None);
    std::fs::write(secrets.join("token"), "a service account's token").unwrap();

    let out = snapshot(s3, &loc, &source, 1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("another filesystem is mounted here") && stderr.contains("serviceaccount"),
        "{stderr}"
    );
    let dest = tmp.path().join("restored");
    let (_, line) = restore(s3, &loc, &dest, &["--generation", "1"]);
    assert_eq!(line["ok"], true, "{line}");
    assert!(dest.join("a/hello.txt").exists());
    assert!(dest.join("secrets").is_dir());
    assert!(
        !dest.join("secrets/serviceaccount").exists(),
        "the mounted filesystem was packed"
    );
}

/// A generation that cannot fit beside DEST (a 16 MiB tmpfs here: an `emptyDir` with `medium:
/// Memory` and a `sizeLimit`) is refused from its manifest before anything is downloaded, as
/// `no-space`; one that fits restores there.
#[tokio::test]
async fn a_generation_that_cannot_fit_is_refused_before_it_is_downloaded() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    fixtures::rich_tree(&source, 24 * 1024 * 1024);
    assert!(snapshot(s3, &loc, &source, 1).status.success());
    let small = tmp.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let _small = fixtures::Tmpfs::mount(&small, Some("16m"));
    let dest = small.join("deno-dir");
    let (_, line) = restore(s3, &loc, &dest, &["--generation", "1"]);
    assert_eq!(line["ok"], false, "{line}");
    assert_eq!(line["reason"], "no-space", "{line}");
    let message = line["message"].as_str().unwrap();
    assert!(
        message.contains("disk space") && message.contains("--dest"),
        "{line}"
    );
    assert_eq!(line["bytes"], 0, "{line}");
    let left: Vec<_> = std::fs::read_dir(&small).unwrap().collect();
    assert!(left.is_empty(), "left beside DEST: {left:?}");

    let large = tmp.path().join("large");
    std::fs::create_dir(&large).unwrap();
    let _large = fixtures::Tmpfs::mount(&large, Some("64m"));
    let (_, line) = restore(s3, &loc, &large.join("deno-dir"), &["--generation", "1"]);
    assert_eq!(line["ok"], true, "{line}");
}

/// Restores that keep failing on a DEST that persists (a volume, a re-run init container) do not
/// pile their staging trees up: a restore removes what earlier ones left when it starts, while it
/// downloads, and nothing of its own stays after it fails. (An earlier build swept only after a
/// successful install, so every failed cold start added a tree.)
#[tokio::test]
async fn failed_restores_leave_nothing_and_remove_what_earlier_ones_left() {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    // Refused after the download started: an absolute path.
    let tar = fixtures::RawTar::default()
        .file("ok", b"1")
        .file("/etc/evil", b"x")
        .finish();
    commit_honestly(s3, &loc, zstd::encode_all(&tar[..], 3).unwrap()).await;
    let work = tempfile::tempdir().unwrap();
    let dest = existing_dest(work.path());
    // What killed restores left: a staging tree (read-only inside, as archives may make them)
    // and a tree moved out of DEST.
    let staging = work
        .path()
        .join(".deno-dir..sitecache-staging-0123456789abcdef");
    let old = work
        .path()
        .join(".deno-dir..sitecache-old-fedcba9876543210");
    for tree in [&staging, &old] {
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/file"), "left").unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(staging.join("a"), std::fs::Permissions::from_mode(0o555)).unwrap();
    for _ in 0..2 {
        let (_, line) = restore(s3, &loc, &dest, &["--generation", "1"]);
        assert_eq!(line["reason"], "unsafe-entry", "{line}");
        assert_untouched(&dest);
        let left: Vec<_> = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [dest.file_name().unwrap()], "left beside DEST");
    }
}
