//! The unpacker against hand-built archives: every bound holds, is named when it refuses, and
//! nothing lands outside the root.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;

use super::*;

mod corpus;
mod packed;
mod props;

/// A tar archive built entry by entry.
struct Archive(tar::Builder<Vec<u8>>);

impl Archive {
    fn new() -> Self {
        Archive(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    fn file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0);
        self.0.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    /// A header claiming `size` bytes, followed by `data` (the rest of the stream, whatever it
    /// is): what a hostile writer can put.
    fn raw(mut self, kind: tar::EntryType, path: &str, size: u64, data: &[u8]) -> Self {
        let mut h = Self::header(kind, size);
        h.set_path(path).unwrap();
        h.set_cksum();
        let out = self.0.get_mut();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// The umask the tests' unpacks obey (the process's may be anything).
const TEST_UMASK: u32 = 0o027;

/// Unpacks `archive`, cut into chunks of `chunk` bytes, into a fresh directory.
fn unpack(
    archive: &[u8],
    chunk: usize,
    limits: UnpackLimits,
) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
    unpack_cut(archive, &[chunk], limits)
}

/// Unpacks `archive`, cut into chunks of the sizes in `cuts` in turn, into `root` in a fresh
/// directory.
fn unpack_cut(
    archive: &[u8],
    cuts: &[usize],
    limits: UnpackLimits,
) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let unpacker = Unpacker {
        root,
        strip_prefix: None,
        workers: 2,
        limits,
        cancel: Arc::new(AtomicBool::new(false)),
        umask: Some(TEST_UMASK),
    };
    let mut pieces: Vec<io::Result<Bytes>> = Vec::new();
    let mut rest = archive;
    for cut in cuts.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at((*cut).clamp(1, rest.len()));
        pieces.push(Ok(Bytes::copy_from_slice(piece)));
        rest = after;
    }
    let mut chunks = pieces.into_iter();
    let result = unpacker.unpack(&mut chunks);
    (dir, result)
}

fn too_large(result: Result<UnpackStats, UnpackError>) -> String {
    match result {
        Err(UnpackError::TooLarge { what, .. }) => what.to_owned(),
        other => panic!("not refused as too large: {other:?}"),
    }
}

fn refused(result: Result<UnpackStats, UnpackError>) -> String {
    match result {
        Err(UnpackError::Unsafe { why, .. }) => why,
        other => panic!("not refused as unsafe: {other:?}"),
    }
}

fn deep(depth: usize) -> String {
    (0..depth).map(|i| format!("d{i}/")).collect::<String>() + "f"
}

#[test]
fn implied_directories_count_as_entries() {
    let archive = Archive::new().file(&deep(100), b"x").bytes();
    let (_d, ok) = unpack(&archive, 4096, UnpackLimits::default());
    let stats = ok.unwrap();
    assert_eq!((stats.entries, stats.dirs, stats.files), (101, 100, 1));
    // One entry in the archive, a hundred directories on disk: over a limit of 50 entries.
    let limits = UnpackLimits {
        max_entries: 50,
        ..UnpackLimits::default()
    };
    let (_d, refused) = unpack(&archive, 4096, limits);
    assert!(too_large(refused).contains("directories created as missing parents"));
}

#[test]
fn directories_count_against_the_unpacked_size() {
    let archive = Archive::new().file(&deep(40), b"x").bytes();
    let limits = UnpackLimits {
        max_bytes: 20 * 4096,
        ..UnpackLimits::default()
    };
    let (_d, refused) = unpack(&archive, 4096, limits);
    assert!(too_large(refused).contains("unpacked size"));
}

#[test]
fn path_length_depth_and_link_targets_are_bounded() {
    let long = format!("{}/f", "x".repeat(5000));
    let (_d, r) = unpack(
        &Archive::new().file(&long, b"x").bytes(),
        4096,
        UnpackLimits::default(),
    );
    assert!(too_large(r).contains("path length"));
    let (_d, r) = unpack(
        &Archive::new().file(&deep(300), b"x").bytes(),
        4096,
        UnpackLimits::default(),
    );
    assert!(too_large(r).contains("depth"));
    let target = "t/".repeat(2500) + "x";
    let (_d, r) = unpack(
        &Archive::new().symlink("l", &target).bytes(),
        4096,
        UnpackLimits::default(),
    );
    assert!(too_large(r).contains("link target"));
    // A GNU long link of a megabyte is refused before it is held.
    let huge = "t/".repeat(500_000);
    let (_d, r) = unpack(
        &Archive::new().symlink("l", &huge).bytes(),
        1 << 20,
        UnpackLimits::default(),
    );
    assert!(matches!(r, Err(UnpackError::Read(_))), "{r:?}");
}

#[test]
fn sizes_near_two_to_the_sixty_four_are_refused_not_wrapped() {
    let limits = UnpackLimits {
        max_bytes: 1024 * 1024,
        ..UnpackLimits::default()
    };
    // A size that is a multiple of the block: the sum with the first file would wrap.
    let huge = u64::MAX - 511;
    let archive = Archive::new()
        .file("a", &[1; 600])
        .raw(tar::EntryType::Regular, "b", huge, &vec![0; 64 * 1024])
        .bytes();
    let (dir, r) = unpack(&archive, 4096, limits);
    assert!(too_large(r).contains("unpacked size"));
    assert!(
        !dir.path().join("root/b").exists(),
        "nothing written for the huge entry"
    );
    // One whose padding would overflow: refused as a corrupt archive.
    let archive = Archive::new()
        .raw(tar::EntryType::Regular, "c", u64::MAX - 3, &[0; 512])
        .bytes();
    let (_d, r) = unpack(&archive, 4096, limits);
    assert!(matches!(r, Err(UnpackError::Read(_))), "{r:?}");
}

#[test]
fn only_files_have_data() {
    // A directory claiming 1,024 bytes, followed by a header that a reader skipping those
    // bytes would never see, and one that does would.
    let hidden = Archive::new().file("hidden", b"x").bytes();
    let archive = Archive::new()
        .raw(tar::EntryType::Directory, "d/", 1024, &hidden[..1024])
        .bytes();
    let (_d, r) = unpack(&archive, 4096, UnpackLimits::default());
    assert!(refused(r).contains("with data"));
}

#[test]
fn entries_below_a_link_are_refused_whatever_their_depth() {
    let below = (0..1990).map(|_| "s/").collect::<String>() + "f";
    let archive = Archive::new().symlink("s", ".").file(&below, b"x").bytes();
    let limits = UnpackLimits {
        max_depth: 5000,
        ..UnpackLimits::default()
    };
    let start = std::time::Instant::now();
    let (dir, r) = unpack(&archive, 4096, limits);
    assert!(refused(r).contains("below a symbolic link"));
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert!(!dir.path().join("root/s").exists());
    // A link where a directory was made is refused too.
    let archive = Archive::new().file("a/x", b"1").symlink("a", ".").bytes();
    let (_d, r) = unpack(&archive, 4096, UnpackLimits::default());
    assert!(refused(r).contains("a directory is already there"));
}

#[test]
fn small_files_hold_no_more_memory_than_the_budget() {
    // Each chunk: one tiny file and most of a large one, so that slicing the tiny file would
    // keep the whole chunk alive.
    const CHUNK: usize = 2 << 20;
    let mut archive = Archive::new();
    for i in 0..12 {
        archive = archive
            .file(&format!("tiny-{i}"), &[i as u8; 10])
            .file(&format!("large-{i}"), &vec![7; CHUNK - 2048]);
    }
    let archive = archive.bytes();
    let budget = 5 << 20;
    let limits = UnpackLimits {
        max_held: budget,
        ..UnpackLimits::default()
    };
    let (dir, r) = unpack(&archive, CHUNK, limits);
    let stats = r.unwrap();
    assert!(stats.held_peak <= budget, "held {} bytes", stats.held_peak);
    assert_eq!(
        std::fs::read(dir.path().join("root/tiny-11")).unwrap(),
        [11; 10]
    );
    // With room, slices keep chunks alive instead of copying.
    let (_d, r) = unpack(&archive, CHUNK, UnpackLimits::default());
    assert!(r.unwrap().held_peak >= CHUNK);
}

#[test]
fn a_tree_within_the_limits_unpacks_whole() {
    let archive = Archive::new()
        .dir("a/")
        .file("a/b/c.js", b"export {}")
        .symlink("a/link", "b/c.js")
        .bytes();
    let (dir, r) = unpack(&archive, 7, UnpackLimits::default());
    let stats = r.unwrap();
    assert_eq!((stats.entries, stats.files), (4, 1), "{stats:?}");
    let root = dir.path().join("root");
    assert_eq!(
        std::fs::read_link(root.join("a/link")).unwrap(),
        Path::new("b/c.js")
    );
    assert_eq!(std::fs::read(root.join("a/link")).unwrap(), b"export {}");
}

#[test]
fn reserved_top_level_names_are_refused() {
    for name in [
        ".sitecache-staging-0123/f",
        "./.sitecache-lock",
        "lost+found/x",
    ] {
        let archive = Archive::new().file("ok.js", b"1").file(name, b"x").bytes();
        let (_dir, r) = unpack(&archive, 512, UnpackLimits::default());
        assert!(refused(r).contains("reserved"), "{name}");
    }
    // Below the top level, the names are the tree's own.
    let archive = Archive::new()
        .file("a/.sitecache-lock", b"1")
        .file("a/lost+found", b"2")
        .bytes();
    let (_dir, r) = unpack(&archive, 512, UnpackLimits::default());
    assert_eq!(r.unwrap().files, 2);
}

/// An archive packed under umask 000 holds world-writable modes; what is restored obeys the
/// restore's umask instead (on a shared runner, anyone could otherwise swap a module Deno runs).
#[test]
fn restored_modes_obey_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let mut archive = tar::Builder::new(Vec::new());
    let entry = |kind, mode, size| {
        let mut h = Archive::header(kind, size);
        h.set_mode(mode);
        h
    };
    let dir = |archive: &mut tar::Builder<Vec<u8>>, path: &str, mode| {
        let mut h = entry(tar::EntryType::Directory, mode, 0);
        archive.append_data(&mut h, path, io::empty()).unwrap();
    };
    let file = |archive: &mut tar::Builder<Vec<u8>>, path: &str, mode| {
        let mut h = entry(tar::EntryType::Regular, mode, 1);
        archive.append_data(&mut h, path, &b"x"[..]).unwrap();
    };
    dir(&mut archive, "open", 0o777);
    file(&mut archive, "open/shared.js", 0o666);
    file(&mut archive, "open/run.sh", 0o777);
    dir(&mut archive, "ro", 0o555);
    file(&mut archive, "ro/f", 0o444);
    let archive = archive.into_inner().unwrap();
    let (dir, result) = unpack(&archive, 4096, UnpackLimits::default());
    result.unwrap();
    let root = dir.path().join("root");
    let mode = |rel: &str| {
        std::fs::symlink_metadata(root.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    // TEST_UMASK is 027.
    assert_eq!(mode("open"), 0o750);
    assert_eq!(mode("open/shared.js"), 0o640);
    assert_eq!(mode("open/run.sh"), 0o750);
    assert_eq!(mode("ro"), 0o550);
    assert_eq!(mode("ro/f"), 0o440);
}

/// Cancelled (the restore's deadline) in the middle of a large file, the unpack stops at the
/// file's next piece: it neither reads nor writes the rest of the file first.
#[test]
fn a_cancelled_unpack_stops_within_a_large_file() {
    let size = 32 * 1024 * 1024;
    let archive = Archive::new().file("big.bin", &vec![7u8; size]).bytes();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let unpacker = Unpacker {
        root,
        strip_prefix: None,
        workers: 2,
        limits: UnpackLimits::default(),
        cancel: cancel.clone(),
        umask: Some(TEST_UMASK),
    };
    let chunk = 64 * 1024;
    let total = archive.len().div_ceil(chunk);
    let fed = std::cell::Cell::new(0);
    let mut chunks = archive.chunks(chunk).map(|c| {
        fed.set(fed.get() + 1);
        // The deadline passes once a few pieces of the file are in.
        if fed.get() == 8 {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Bytes::copy_from_slice(c))
    });
    let result = unpacker.unpack(&mut chunks);
    assert!(matches!(result, Err(UnpackError::Cancelled)), "{result:?}");
    assert!(
        fed.get() < 16,
        "read {} of {total} chunks after the cancel",
        fed.get()
    );
}
