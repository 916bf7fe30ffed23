//! The corpus of hostile archives (`corpus/`, in the repository): each one a way an archive
//! tried to get past a restore, with the refusal it must meet. The files are generated here
//! (`SITECACHE_WRITE_CORPUS=1 cargo test --lib corpus` rewrites them) and checked against the
//! generator, so they stay what their names say; they seed the mutation property below and any
//! external fuzzer.

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;

use super::props::{check_invariants, raw_entry};
use super::*;

/// Name, what the unpacker must say (its error kind) under the default limits (but for the
/// named exceptions, [`limits_for`]), the archive.
fn hostile() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let one = |kind: u8, name: &[u8], link: &[u8], data: &[u8], claimed: Option<u64>| {
        let mut out = Vec::new();
        raw_entry(&mut out, kind, name, link, data, claimed);
        out
    };
    let mut cases = vec![
        (
            "absolute-path.tar",
            "unsafe-entry",
            one(b'0', b"/tmp/sitecache-evil", b"", b"x", None),
        ),
        (
            "parent-components.tar",
            "unsafe-entry",
            one(b'0', b"a/../../x", b"", b"x", None),
        ),
        (
            "symlink-out.tar",
            "unsafe-entry",
            one(b'2', b"l", b"../../etc", b"", None),
        ),
        (
            "hardlink-out.tar",
            "unsafe-entry",
            one(b'1', b"l", b"/etc/passwd", b"", None),
        ),
        ("fifo.tar", "unsafe-entry", one(b'6', b"f", b"", b"", None)),
        (
            "device.tar",
            "unsafe-entry",
            one(b'3', b"tty", b"", b"", None),
        ),
        (
            "reserved-name.tar",
            "unsafe-entry",
            one(b'0', b".sitecache-staging-0/a", b"", b"x", None),
        ),
        (
            "sparse.tar",
            "corrupt-archive",
            one(b'S', b"s", b"", b"", None),
        ),
        (
            // A 1 MiB link target: refused before it is held.
            "long-link-target.tar.zst",
            "corrupt-archive",
            zstd::bulk::compress(&one(b'2', b"l", &vec![b'a'; 1 << 20], b"", None), 3).unwrap(),
        ),
        (
            // A size near 2^64 (base-256): refused, not wrapped.
            "size-near-2-64.tar",
            "too-large",
            one(b'0', b"huge", b"", &[0; 512], Some(u64::MAX - 511)),
        ),
        (
            // A directory with data, hiding the header after it from readers that skip it.
            "directory-with-data.tar",
            "unsafe-entry",
            [
                one(
                    b'5',
                    b"d/",
                    b"",
                    &one(b'0', b"hidden", b"", b"x", None),
                    None,
                ),
                one(b'0', b"after", b"", b"y", None),
            ]
            .concat(),
        ),
    ];
    // A link to `.`, then one path of 2,000 components through it: linear work, refused (with
    // the depth limit raised, so that the link check is what refuses it).
    let mut through_dot = one(b'2', b"s", b".", b"", None);
    let deep = (0..2000).map(|_| "s/").collect::<String>() + "f";
    raw_entry(&mut through_dot, b'0', deep.as_bytes(), b"", b"x", None);
    cases.push(("link-to-dot-deep-path.tar", "unsafe-entry", through_dot));
    // Deep paths of 250 directories each, implied, over the entry limit together (lowered to
    // 2,000 here, to keep the test fast: the default limit is met the same way).
    let mut deep_dirs = Vec::new();
    for i in 0..12 {
        let path = format!("{i}/") + &"d/".repeat(249) + "f";
        raw_entry(&mut deep_dirs, b'0', path.as_bytes(), b"", b"", None);
    }
    cases.push((
        "implied-directories.tar.zst",
        "too-large",
        zstd::bulk::compress(&deep_dirs, 3).unwrap(),
    ));
    // Bytes no entry is counted for: after the end, in PAX global headers and extension
    // records, in the archive's root entry. Each compresses to almost nothing.
    let zst = |tar: &[u8]| zstd::bulk::compress(tar, 19).unwrap();
    let end = [0u8; 1024];
    let small = one(b'0', b"a", b"", b"x", None);
    cases.push((
        // 8 MiB of zeros after the end markers (GNU tar pads to 10 KiB).
        "zeros-after-end.tar.zst",
        "corrupt-archive",
        zst(&[&small[..], &end, &vec![0; 8 << 20]].concat()),
    ));
    cases.push((
        // An entry after the end markers: `tar -i` would extract it, a restore would not.
        "data-after-end.tar",
        "corrupt-archive",
        [&small[..], &end, &one(b'0', b"hidden", b"", b"x", None)].concat(),
    ));
    cases.push((
        // A global header larger than any extension.
        "large-global-header.tar.zst",
        "corrupt-archive",
        zst(&one(b'g', b"g", b"", &vec![b'\n'; 1 << 20], None)),
    ));
    let mut globals = Vec::new();
    for _ in 0..100 {
        raw_entry(&mut globals, b'g', b"g", b"", &vec![b'\n'; 60 << 10], None);
    }
    globals.extend_from_slice(&small);
    cases.push(("global-headers.tar.zst", "too-large", zst(&globals)));
    let mut records = Vec::new();
    for i in 0..100 {
        raw_entry(&mut records, b'x', b"p", b"", &vec![b'\n'; 60 << 10], None);
        raw_entry(
            &mut records,
            b'0',
            format!("f{i}").as_bytes(),
            b"",
            b"",
            None,
        );
    }
    cases.push(("large-pax-records.tar.zst", "too-large", zst(&records)));
    cases.push((
        // The root as a file with data, skipped by an earlier build without counting.
        "root-file-with-data.tar.zst",
        "unsafe-entry",
        zst(&one(b'0', b"./", b"", &vec![0; 8 << 20], None)),
    ));
    cases.push((
        "root-directory-with-data.tar.zst",
        "unsafe-entry",
        zst(&one(b'5', b"./", b"", &vec![0; 8 << 20], None)),
    ));
    cases.push((
        // More than its manifest declares (checked with `declared`, [`limits_for`]).
        "more-than-declared.tar.zst",
        "corrupt-archive",
        zst(&one(b'0', b"big", b"", &vec![0; 8 << 20], None)),
    ));
    cases
}

/// The default limits, but for entries: low enough that the tests stay fast.
const TIGHT: UnpackLimits = UnpackLimits {
    max_entries: 2_000,
    ..UnpackLimits::DEFAULT
};

/// The limits a corpus archive is checked under.
fn limits_for(name: &str) -> UnpackLimits {
    match name {
        "link-to-dot-deep-path.tar" => UnpackLimits {
            max_depth: 5000,
            ..UnpackLimits::default()
        },
        "implied-directories.tar.zst" => TIGHT,
        "more-than-declared.tar.zst" => UnpackLimits {
            declared: Some(Declared {
                file_bytes: 1 << 20,
                entries: 1,
            }),
            ..UnpackLimits::default()
        },
        _ => UnpackLimits::default(),
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/archive/unpack/tests/corpus")
}

/// The tar stream of a corpus file (`.tar.zst` ones decompressed, within a bound).
fn tar_of(name: &str, bytes: &[u8]) -> Vec<u8> {
    if name.ends_with(".zst") {
        zstd::bulk::decompress(bytes, 64 << 20).unwrap()
    } else {
        bytes.to_vec()
    }
}

/// The corpus as it is on disk: each file's name and tar stream.
fn corpus() -> &'static [(String, Vec<u8>)] {
    static CORPUS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                let tar = tar_of(&name, &std::fs::read(e.path()).unwrap());
                (name, tar)
            })
            .collect();
        files.sort();
        files
    })
}

#[test]
fn the_corpus_is_what_the_generator_makes() {
    let dir = corpus_dir();
    if std::env::var_os("SITECACHE_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, _, bytes) in hostile() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut made: Vec<String> = hostile().iter().map(|c| c.0.to_owned()).collect();
    made.sort();
    assert_eq!(
        on_disk, made,
        "rewrite the corpus: SITECACHE_WRITE_CORPUS=1"
    );
    for (name, _, bytes) in hostile() {
        let file = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(
            tar_of(name, &file),
            tar_of(name, &bytes),
            "{name} differs from the generator's"
        );
    }
}

#[test]
fn every_corpus_archive_meets_its_refusal() {
    // Every archive is tried, and every one that is not refused as it must be is named.
    let mut wrong = Vec::new();
    for (name, kind, _) in hostile() {
        let archive = tar_of(name, &std::fs::read(corpus_dir().join(name)).unwrap());
        let limits = limits_for(name);
        for chunk in [1000, 1 << 20] {
            let (dir, result) = unpack(&archive, chunk, limits);
            match &result {
                Err(e) if e.kind() == kind => {}
                Err(e) => wrong.push(format!("{name}: {e} (expected {kind})")),
                Ok(stats) => wrong.push(format!("{name} was unpacked: {stats:?}")),
            }
            if let Err(why) = check_invariants(dir.path(), &limits) {
                wrong.push(format!("{name}: {why}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

proptest! {
    /// The corpus, damaged at random (bytes flipped, cut, spliced into each other), under the
    /// default limits (but for entries): no panic, every invariant.
    #[test]
    fn damaged_corpus_archives_never_break_the_invariants(
        pick in any::<prop::sample::Index>(),
        splice in prop::option::of((any::<prop::sample::Index>(), any::<prop::sample::Index>())),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut_at in prop::option::of(any::<prop::sample::Index>()),
        cuts in prop::collection::vec(1usize..5000, 1..4),
    ) {
        let files = corpus();
        let mut archive = files[pick.index(files.len())].1.clone();
        if let Some((other, at)) = splice {
            let at = at.index(archive.len() / 512 + 1) * 512;
            let tail = archive.split_off(at);
            archive.extend_from_slice(&files[other.index(files.len())].1);
            archive.extend(tail);
        }
        for (at, xor) in &flips {
            let i = at.index(archive.len());
            archive[i] ^= xor;
        }
        if let Some(at) = cut_at {
            archive.truncate(at.index(archive.len()));
        }
        let (dir, result) = unpack_cut(&archive, &cuts, TIGHT);
        if let Err(why) = check_invariants(dir.path(), &TIGHT) {
            prop_assert!(false, "{why} (unpack: {result:?})");
        }
    }
}
