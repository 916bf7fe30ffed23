//! The unpacker's invariants on archives no honest writer makes: random entries of every kind,
//! with escaping paths and link targets, reserved names, lying sizes and random damage, cut
//! into random chunks, under random limits. Whatever the outcome (most are refusals), nothing is
//! outside the root, every link stays inside it, every bound holds, and nothing panics.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use proptest::prelude::*;

use super::*;

/// Writes one raw entry: any name, link and type; `claimed` bytes of size in the header
/// (`None`: the data's length), then the data and its padding. Names and links longer than a
/// header holds go first as GNU long-name and long-link entries.
pub fn raw_entry(
    out: &mut Vec<u8>,
    kind: u8,
    name: &[u8],
    link: &[u8],
    data: &[u8],
    claimed: Option<u64>,
) {
    if name.len() > 100 {
        raw_entry(out, b'L', b"././@LongLink", b"", name, None);
    }
    if link.len() > 100 {
        raw_entry(out, b'K', b"././@LongLink", b"", link, None);
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_mode(if kind == b'5' { 0o555 } else { 0o644 });
    h.set_mtime(1_700_000_000);
    h.set_size(claimed.unwrap_or(data.len() as u64));
    let old = h.as_old_mut();
    old.name.fill(0);
    old.name[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    old.linkname.fill(0);
    old.linkname[..link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// A path a hostile writer might try.
fn path() -> impl Strategy<Value = Vec<u8>> {
    let component = prop_oneof![
        Just("a"),
        Just("b"),
        Just("c"),
        Just(".."),
        Just("."),
        Just(""),
        Just("d/e"),
        Just(".sitecache-staging-1"),
        Just("lost+found"),
    ];
    (
        any::<bool>(),
        prop::collection::vec(component, 1..7),
        any::<bool>(),
    )
        .prop_map(|(absolute, parts, slash)| {
            let mut p = if absolute { "/" } else { "" }.to_owned() + &parts.join("/");
            if slash {
                p.push('/');
            }
            p.into_bytes()
        })
}

#[derive(Debug, Clone)]
struct Raw {
    kind: u8,
    name: Vec<u8>,
    link: Vec<u8>,
    data: Vec<u8>,
    claimed: Option<u64>,
}

fn raw() -> impl Strategy<Value = Raw> {
    let kind = prop_oneof![
        4 => Just(b'0'),
        2 => Just(b'5'),
        2 => Just(b'2'),
        2 => Just(b'1'),
        1 => Just(b'3'),
        1 => Just(b'6'),
        1 => Just(b'S'),
        1 => Just(b'x'),
        1 => Just(b'Z'),
    ];
    let claimed = prop_oneof![
        8 => Just(None),
        1 => (0u64..5000).prop_map(Some),
        1 => Just(Some(u64::MAX)),
        1 => Just(Some(u64::MAX - 511)),
    ];
    (
        kind,
        path(),
        prop_oneof![path(), Just(b"/etc/passwd".to_vec())],
        prop::collection::vec(any::<u8>(), 0..3000),
        claimed,
    )
        .prop_map(|(kind, name, link, data, claimed)| Raw {
            kind,
            name,
            link,
            data,
            claimed,
        })
}

fn limits() -> impl Strategy<Value = UnpackLimits> {
    let declared =
        prop::option::of(
            (0u64..20_000, 0u64..40).prop_map(|(file_bytes, entries)| Declared {
                file_bytes,
                entries,
            }),
        );
    (
        (1u64..60, 0u64..40_000, 1usize..40, 1usize..8, 1usize..40),
        declared,
    )
        .prop_map(
            |((max_entries, max_bytes, max_path, max_depth, max_link), declared)| UnpackLimits {
                max_entries,
                max_bytes,
                max_path,
                max_depth,
                max_link,
                max_path_bytes: 4096,
                max_held: 64 * 1024,
                declared,
            },
        )
}

/// Resolves `target` from the directory `from` (both relative to the root) without touching
/// the disk; `None` if it climbs above the root.
fn lexically(from: &Path, target: &Path) -> Option<PathBuf> {
    let mut at: Vec<Component> = from.components().collect();
    for c in target.components() {
        match c {
            Component::Normal(_) => at.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                at.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(at.iter().collect())
}

/// What must hold after any unpack, refused or not, of anything.
pub fn check_invariants(dir: &Path, limits: &UnpackLimits) -> Result<(), String> {
    let root = dir.join("root");
    let beside: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    if beside != [std::ffi::OsString::from("root")] {
        return Err(format!("written outside the root: {beside:?}"));
    }
    let real_root = root.canonicalize().unwrap();
    let (mut entries, mut bytes, mut file_bytes) = (0u64, 0u64, 0u64);
    let mut inodes = std::collections::HashSet::new();
    let mut links: HashMap<u64, (u64, u64)> = HashMap::new();
    for e in walkdir::WalkDir::new(&root).min_depth(1) {
        let e = e.map_err(|e| e.to_string())?;
        let rel = e.path().strip_prefix(&root).unwrap().to_owned();
        let meta = e.path().symlink_metadata().unwrap();
        entries += 1;
        if rel.as_os_str().len() > limits.max_path {
            return Err(format!("{rel:?}: over the path limit"));
        }
        if rel.components().count() > limits.max_depth {
            return Err(format!("{rel:?}: over the depth limit"));
        }
        if policy::reserved(&rel) {
            return Err(format!("{rel:?}: a reserved name"));
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path()).unwrap();
            if target.as_os_str().len() > limits.max_link {
                return Err(format!("{rel:?}: over the link limit"));
            }
            if lexically(rel.parent().unwrap(), &target).is_none() {
                return Err(format!("{rel:?} -> {target:?} leaves the root"));
            }
        } else if meta.is_file() {
            bytes += meta.len();
            if inodes.insert(meta.ino()) {
                file_bytes += meta.len();
            }
            if meta.nlink() > 1 {
                links.entry(meta.ino()).or_insert((meta.nlink(), 0)).1 += 1;
            }
        } else if meta.is_dir() {
            bytes += budget::DIR_BYTES;
        } else {
            return Err(format!("{rel:?}: neither a file, a directory nor a link"));
        }
        // Followed all the way, every link lands inside the root. (The walk follows no link,
        // so every other path is inside it as it is.)
        if meta.file_type().is_symlink()
            && let Ok(real) = e.path().canonicalize()
            && !real.starts_with(&real_root)
        {
            return Err(format!("{rel:?} resolves to {real:?}, outside the root"));
        }
    }
    if entries > limits.max_entries {
        return Err(format!("{entries} entries, over {}", limits.max_entries));
    }
    if bytes > limits.max_bytes {
        return Err(format!("{bytes} bytes, over {}", limits.max_bytes));
    }
    if let Some(d) = limits.declared
        && (file_bytes > d.file_bytes || entries > d.entries)
    {
        return Err(format!(
            "{entries} entries and {file_bytes} bytes of files, over the declared {d:?}"
        ));
    }
    for (ino, (nlink, seen)) in links {
        if nlink != seen {
            return Err(format!(
                "inode {ino} has {nlink} links, {seen} inside the root"
            ));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn hostile_entries_never_break_the_invariants(
        entries in prop::collection::vec(raw(), 1..14),
        limits in limits(),
        cuts in prop::collection::vec(1usize..2000, 1..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let mut archive = Vec::new();
        for e in &entries {
            raw_entry(&mut archive, e.kind, &e.name, &e.link, &e.data, e.claimed);
        }
        for (at, xor) in &flips {
            let i = at.index(archive.len());
            archive[i] ^= xor;
        }
        let (dir, result) = unpack_cut(&archive, &cuts, limits);
        if let Ok(stats) = &result {
            prop_assert!(stats.entries <= limits.max_entries, "{stats:?}");
        }
        if let Err(why) = check_invariants(dir.path(), &limits) {
            prop_assert!(false, "{why} (unpack: {result:?})");
        }
    }
}
