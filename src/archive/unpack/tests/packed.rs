//! A snapshot's scan admits exactly what a restore admits: for random trees on disk under random
//! limits, a tree the scan accepts unpacks under the same limits with the same totals, and a tree
//! the scan refuses is refused by the unpack at the same limit. So a snapshot never commits what
//! runners (with the same limits) would refuse.

use std::path::PathBuf;

use proptest::prelude::*;

use super::*;
use crate::archive::{PackError, pack, scan};

/// What to make at a path.
#[derive(Debug, Clone)]
enum Make {
    File(usize),
    Dir,
    /// A symbolic link climbing this many levels (at most to the root), then to `a` or `b/c`.
    Symlink(usize, bool),
    /// A hard link to the n-th file made before it, if any.
    HardLink(usize),
}

fn tree() -> impl Strategy<Value = Vec<(Vec<&'static str>, Make)>> {
    let component = prop_oneof![Just("a"), Just("b"), Just("c"), Just("long-name-x")];
    let make = prop_oneof![
        4 => (0usize..3000).prop_map(Make::File),
        3 => Just(Make::Dir),
        2 => (0usize..4, any::<bool>()).prop_map(|(up, deep)| Make::Symlink(up, deep)),
        1 => (0usize..4).prop_map(Make::HardLink),
    ];
    prop::collection::vec((prop::collection::vec(component, 1..6), make), 1..24)
}

fn limits() -> impl Strategy<Value = UnpackLimits> {
    (
        1u64..60,
        0u64..60_000,
        1usize..40,
        1usize..7,
        1usize..12,
        0u64..6000,
    )
        .prop_map(
            |(max_entries, max_bytes, max_path, max_depth, max_link, max_path_bytes)| {
                UnpackLimits {
                    max_entries,
                    max_bytes,
                    max_path,
                    max_depth,
                    max_link,
                    max_path_bytes,
                    max_held: 64 * 1024,
                    declared: None,
                }
            },
        )
}

/// Makes what it can of `spec` under `root` (a path already taken by another kind is skipped).
fn make(root: &Path, spec: &[(Vec<&str>, Make)]) {
    let mut files: Vec<PathBuf> = Vec::new();
    for (parts, what) in spec {
        let rel: PathBuf = parts.iter().collect();
        let path = root.join(&rel);
        // Never through a link made earlier: what is made must be where the spec says.
        let through_a_link = (1..parts.len()).any(|i| {
            let above: PathBuf = parts[..i].iter().collect();
            root.join(above)
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
        });
        if through_a_link
            || std::fs::create_dir_all(path.parent().unwrap()).is_err()
            || path.symlink_metadata().is_ok()
        {
            continue;
        }
        let made = match what {
            Make::File(size) => std::fs::write(&path, vec![b'x'; *size]).is_ok(),
            Make::Dir => std::fs::create_dir(&path).is_ok(),
            Make::Symlink(up, deep) => {
                let up = (*up).min(parts.len() - 1);
                let target = "../".repeat(up) + if *deep { "b/c" } else { "a" };
                std::os::unix::fs::symlink(target, &path).is_ok()
            }
            Make::HardLink(n) => files
                .get(*n)
                .is_some_and(|f| std::fs::hard_link(f, &path).is_ok()),
        };
        if made && matches!(what, Make::File(_)) {
            files.push(path);
        }
    }
}

proptest! {
    #[test]
    fn a_snapshot_admits_exactly_what_a_restore_admits(spec in tree(), limits in limits()) {
        let source = tempfile::tempdir().unwrap();
        make(source.path(), &spec);
        // Packed with no limits but restore's own, unpacked with the random ones.
        let everything = scan(source.path(), &UnpackLimits::DEFAULT).unwrap();
        let (archive, _) = pack(&everything, Vec::new(), None).unwrap();
        let (_dir, unpacked) = unpack(&archive, 700, limits);
        match (scan(source.path(), &limits), unpacked) {
            (Ok(tree), Ok(stats)) => prop_assert_eq!(tree.budget, stats.budget),
            // The same limit, or one the scan met first because it counts a directory's entries
            // as it reads them, before it walks them (a restore counts them one by one).
            (Err(PackError::OverLimit { limit, .. }), Err(UnpackError::TooLarge { what, .. })) => {
                prop_assert!(
                    limit.what == what
                        || [budget::ENTRY_LIMIT, budget::PATH_BYTES_LIMIT].contains(&limit.what),
                    "the scan met {:?}, the unpack {:?}",
                    limit.what,
                    what
                )
            }
            (scanned, unpacked) => prop_assert!(
                false,
                "the scan says {:?}, the unpack {:?}",
                scanned.map(|t| t.budget),
                unpacked
            ),
        }
    }
}
