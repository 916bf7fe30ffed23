//! A restore's hard bounds, end to end: hand-built archives with honest manifests (the checksum
//! matches, so only the restore's own limits stand between the bytes and the machine), restored by
//! the real binary from MinIO, its peak memory measured by the kernel.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use sitecache::storage::Location;
use tar::EntryType;

use crate::agent::{commit_declaring, commit_honestly, location, sitecache};
use crate::fixtures::RawTar;
use crate::support;

const MIB: u64 = 1024 * 1024;

/// What a restore printed and used.
struct Measured {
    line: Value,
    /// Peak resident memory, bytes (`ru_maxrss`).
    peak: u64,
    took: Duration,
}

/// Uploads `archive` (compressed already) as generation 1 with an honest manifest.
async fn upload(archive: Vec<u8>) -> Location {
    let s3 = support::s3().await;
    let loc = location(s3).await;
    commit_honestly(s3, &loc, archive).await;
    loc
}

/// Restores generation 1 of `loc` into `dest`, measuring the process's peak memory: its own
/// high-water mark (`VmHWM`), read while it runs. (`ru_maxrss` would not do: a child spawned
/// by this test process inherits the test's own high-water mark across `exec`.)
async fn restore_measured(loc: &Location, dest: &Path, extra: &[&str]) -> Measured {
    let s3 = support::s3().await;
    let out = tempfile::NamedTempFile::new().unwrap();
    let start = Instant::now();
    let mut child = sitecache(s3)
        .args(["restore", "--url", &loc.to_string(), "--generation", "1"])
        .args(["--dest", dest.to_str().unwrap(), "--timeout", "120s"])
        .args(extra)
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        // Gone once the process has exited (a zombie has no memory left to report).
        let hwm = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        });
        match hwm {
            Some(kib) => peak = peak.max(kib * 1024),
            None if child.try_wait().unwrap().is_some() => break,
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = start.elapsed();
    let stdout = std::fs::read_to_string(out.path()).unwrap();
    let line: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{e}: {stdout:?}"));
    Measured { line, peak, took }
}

/// The end of a tar stream.
fn end_blocks() -> Vec<u8> {
    vec![0; 1024]
}

/// Appends `data` to `out` as one zstd frame that declares its content size.
fn frame(out: &mut Vec<u8>, data: &[u8]) {
    let mut c = zstd::bulk::Compressor::new(1).unwrap();
    c.include_contentsize(true).unwrap();
    out.extend(c.compress(data).unwrap());
}

fn nothing_but(dir: &Path, expected: &[&Path]) {
    let found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let expected: Vec<_> = expected.iter().map(|p| p.to_path_buf()).collect();
    assert_eq!(found, expected, "left in {}", dir.display());
}

#[tokio::test]
async fn frames_that_each_declare_64_mib_stay_within_256_mib() {
    // Each frame: a tiny file, then a file of zeros to fill it (a global PAX header filled it
    // before those were bounded to 64 KiB: nothing was written, and an earlier build still held
    // 4.2 GB for 64 such frames).
    const FRAME: u64 = 64 * MIB;
    const FRAMES: u64 = 8;
    let mut archive = Vec::new();
    for i in 0..FRAMES {
        let frame = RawTar::default()
            .file(&format!("tiny-{i}"), &[i as u8; 10])
            .file(&format!("fill-{i}"), &vec![0; (FRAME - 1536) as usize])
            .into_inner();
        assert_eq!(frame.len() as u64, FRAME);
        self::frame(&mut archive, &frame);
    }
    self::frame(&mut archive, &end_blocks());
    assert!(archive.len() < 2 * MIB as usize, "{} bytes", archive.len());
    let s3 = support::s3().await;
    let loc = location(s3).await;
    commit_declaring(s3, &loc, archive, FRAMES * FRAME, 2 * FRAMES).await;
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("deno-dir");
    let m = restore_measured(&loc, &dest, &["--strict"]).await;
    assert_eq!(m.line["ok"], true, "{}", m.line);
    assert_eq!(m.line["files"], 2 * FRAMES, "{}", m.line);
    assert!(m.peak <= 256 * MIB, "peak RSS {} MiB", m.peak / MIB);
}

#[tokio::test]
async fn symlinks_with_megabyte_names_are_refused_before_they_are_held() {
    // Names and targets just under a megabyte each (what an earlier limit let through).
    let long = vec![b'a'; MIB as usize - 2];
    let mut tar = RawTar::default();
    for i in 0..300 {
        let mut name = long.clone();
        name.extend(format!("{i:03}").as_bytes());
        tar = tar
            .gnu_long_name(std::str::from_utf8(&name[3..]).unwrap())
            .gnu_long_link(&long)
            .symlink("link", "x");
    }
    let archive = zstd::encode_all(&tar.finish()[..], 3).unwrap();
    assert!(archive.len() < 256 * 1024);
    let loc = upload(archive).await;
    let work = tempfile::tempdir().unwrap();
    let m = restore_measured(&loc, &work.path().join("deno-dir"), &[]).await;
    assert_eq!(m.line["ok"], false, "{}", m.line);
    assert_eq!(m.line["reason"], "corrupt-archive", "{}", m.line);
    assert!(m.peak <= 64 * MIB, "peak RSS {} MiB", m.peak / MIB);
    nothing_but(work.path(), &[]);
}

#[tokio::test]
async fn deep_paths_count_their_directories_and_a_refusal_leaves_nothing_that_slows_the_next() {
    // A few hundred entries, each forty new directories deep: a kilobyte or two compressed.
    let mut tar = RawTar::default();
    for i in 0..500 {
        let path: String = (0..40).map(|d| format!("{i}-{d}/")).collect::<String>() + "f";
        tar = tar.gnu_long_name(&path).file("f", b"");
    }
    let archive = zstd::encode_all(&tar.finish()[..], 19).unwrap();
    let loc = upload(archive).await;
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("deno-dir");
    let m = restore_measured(&loc, &dest, &["--max-entries", "5000"]).await;
    assert_eq!(m.line["ok"], false, "{}", m.line);
    assert_eq!(m.line["reason"], "too-large", "{}", m.line);
    assert!(
        m.line["message"]
            .as_str()
            .unwrap()
            .contains("directories created as missing parents"),
        "{}",
        m.line
    );
    nothing_but(work.path(), &[]);
    // The next restore, of a harmless tree, is not slowed by anything the first left.
    let harmless = zstd::encode_all(&RawTar::default().file("ok", b"1").finish()[..], 3).unwrap();
    let loc = upload(harmless).await;
    let m = restore_measured(&loc, &dest, &["--strict"]).await;
    assert_eq!(m.line["ok"], true, "{}", m.line);
    assert!(m.took < Duration::from_secs(10));
}

#[tokio::test]
async fn sizes_near_two_to_the_sixty_four_do_not_wrap_the_unpacked_limit() {
    let tar = RawTar::default()
        .file("a", &[1; 600])
        .sized(
            b"b",
            EntryType::Regular,
            b"",
            u64::MAX - 511,
            &vec![0; 4 * MIB as usize],
        )
        .into_inner();
    let archive = zstd::encode_all(&tar[..], 3).unwrap();
    let loc = upload(archive).await;
    let work = tempfile::tempdir().unwrap();
    let m = restore_measured(
        &loc,
        &work.path().join("deno-dir"),
        &["--max-unpacked-bytes", "1MiB"],
    )
    .await;
    assert_eq!(m.line["reason"], "too-large", "{}", m.line);
    nothing_but(work.path(), &[]);
}

#[tokio::test]
async fn a_directory_with_data_cannot_hide_the_entry_after_it() {
    let hidden = RawTar::default().file("hidden", b"x").into_inner();
    let tar = RawTar::default()
        .sized(b"d/", EntryType::Directory, b"", 1024, &hidden[..1024])
        .finish();
    let loc = upload(zstd::encode_all(&tar[..], 3).unwrap()).await;
    let work = tempfile::tempdir().unwrap();
    let m = restore_measured(&loc, &work.path().join("deno-dir"), &[]).await;
    assert_eq!(m.line["reason"], "unsafe-entry", "{}", m.line);
    assert!(
        m.line["message"].as_str().unwrap().contains("with data"),
        "{}",
        m.line
    );
}

#[tokio::test]
async fn a_link_to_itself_and_one_long_path_cost_no_time() {
    // 128k components below a link to `.`.
    let below = (0..128 * 1024).map(|_| "s/").collect::<String>() + "f";
    let tar = RawTar::default()
        .symlink("s", ".")
        .gnu_long_name(&below)
        .file("f", b"x")
        .finish();
    let loc = upload(zstd::encode_all(&tar[..], 3).unwrap()).await;
    let work = tempfile::tempdir().unwrap();
    let m = restore_measured(&loc, &work.path().join("deno-dir"), &[]).await;
    assert_eq!(m.line["ok"], false, "{}", m.line);
    // Refused as soon as the path is read (the name is longer than any path may be).
    assert_eq!(m.line["reason"], "corrupt-archive", "{}", m.line);
    assert!(
        m.line["ms"].as_u64().unwrap() < 1000,
        "took {:?}: {}",
        m.took,
        m.line
    );
    nothing_but(work.path(), &[]);
}

/// A manifest is a hard limit: an archive that holds more than its manifest declares (1 MiB
/// here, and 256 MiB of zeros in 40 KB) is refused the moment it passes it, before its checksum
/// can be known, and leaves nothing. (An earlier build wrote all 256 MiB, then restored it: the
/// checksum was the archive's own.)
#[tokio::test]
async fn an_archive_holding_more_than_its_manifest_declares_stops_there() {
    let tar = RawTar::default()
        .file("big", &vec![0; 256 * MIB as usize])
        .finish();
    let archive = zstd::encode_all(&tar[..], 3).unwrap();
    assert!(archive.len() < 64 * 1024);
    let loc = upload(archive).await;
    let work = tempfile::tempdir().unwrap();
    let m = restore_measured(&loc, &work.path().join("deno-dir"), &[]).await;
    assert_eq!(m.line["reason"], "corrupt-archive", "{}", m.line);
    assert!(
        m.line["message"]
            .as_str()
            .unwrap()
            .contains("than its manifest declares"),
        "{}",
        m.line
    );
    nothing_but(work.path(), &[]);
}
