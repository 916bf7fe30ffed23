//! The install state machine, step by step: every path is killed before each of its steps in
//! turn, and what is left must be wholly the old tree or wholly the new one, and wholly the new
//! one once the next restore recovered, if the install had written its journal.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::ops::{Faults, Ops, is_kill};
use super::*;

/// A tree as the test sees it: paths (relative) to contents (`None` for a directory), reserved
/// top-level names left out.
type Snapshot = BTreeMap<PathBuf, Option<Vec<u8>>>;

fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    if !root.exists() {
        return out;
    }
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(root).unwrap().to_owned();
        if crate::archive::policy::reserved(&rel) {
            continue;
        }
        let content = entry
            .file_type()
            .is_file()
            .then(|| std::fs::read(entry.path()).unwrap());
        out.insert(rel, content);
    }
    out
}

fn write_tree(root: &Path, tag: &str) {
    std::fs::create_dir_all(root.join(format!("{tag}-deps/x"))).unwrap();
    std::fs::write(root.join(format!("{tag}-deps/x/mod.js")), tag).unwrap();
    std::fs::write(root.join("shared.json"), tag).unwrap();
    std::fs::create_dir_all(root.join("npm/registry")).unwrap();
    std::fs::write(root.join("npm/registry").join(tag), tag).unwrap();
    // A read-only directory, as archives may hold.
    std::fs::create_dir(root.join(format!("{tag}-ro"))).unwrap();
    std::fs::write(root.join(format!("{tag}-ro/f")), tag).unwrap();
    std::fs::set_permissions(
        root.join(format!("{tag}-ro")),
        std::fs::Permissions::from_mode(0o555),
    )
    .unwrap();
}

/// The scratch names left in `layout.home`.
fn scratch_left(layout: &Layout) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir(&layout.home)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| layout.is_scratch(n) || n.to_string_lossy().ends_with("journal"))
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    left.sort();
    left
}

#[derive(Clone, Copy, Debug)]
enum Dest {
    Missing,
    Directory,
    /// A mount point (its layout forced: unit tests mount nothing).
    MountPoint,
}

/// One scenario: DEST as given, the faults as given, killed before step `kill_at`.
struct Run {
    _dir: tempfile::TempDir,
    dest: PathBuf,
    layout: Layout,
    old: Snapshot,
    new: Snapshot,
}

fn layout_for(dest: &Path, kind: Dest) -> Layout {
    let mut layout = Layout::of(dest).unwrap();
    if let Dest::MountPoint = kind {
        layout = layout.forced_inside();
    }
    layout
}

fn scenario(kind: Dest) -> (Run, Staging) {
    scenario_of(kind, &|p| write_tree(p, "old"), &|p| write_tree(p, "new"))
}

/// DEST of `kind`, holding what `old` writes, and a staging tree holding what `new` writes.
fn scenario_of(kind: Dest, old: &dyn Fn(&Path), new: &dyn Fn(&Path)) -> (Run, Staging) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("deno-dir");
    if !matches!(kind, Dest::Missing) {
        std::fs::create_dir(&dest).unwrap();
        old(&dest);
    }
    let layout = layout_for(&dest, kind);
    let old = snapshot(&dest);
    let staging = prepare_in(&layout);
    new(&staging.path);
    let new = snapshot(&staging.path);
    (
        Run {
            _dir: dir,
            dest,
            layout,
            old,
            new,
        },
        staging,
    )
}

/// [`prepare`] on a given layout (a forced one included).
fn prepare_in(layout: &Layout) -> Staging {
    let _lock = lock::install(layout.lock(), &AtomicBool::new(false)).unwrap();
    swap::recover(layout, &mut Ops::default()).unwrap();
    let token = journal::token();
    let path = layout.scratch(STAGING, &token);
    std::fs::create_dir(&path).unwrap();
    let alive = lock::try_dir(&path).unwrap().unwrap();
    Staging {
        path,
        layout: layout.clone(),
        token,
        _alive: alive,
    }
}

fn install_killed(staging: Staging, faults: Faults) -> Result<usize, std::io::Error> {
    let lock = staging.lock_install(&AtomicBool::new(false)).unwrap();
    let mut ops = Ops {
        faults,
        ..Ops::default()
    };
    staging.install_with(lock, &mut ops).map(|_| ops.steps)
}

/// Kills the install of `kind` under `faults` before each step in turn; checks each outcome and
/// the recovery after. Returns the steps of a whole install.
fn every_kill(kind: Dest, faults: Faults) -> usize {
    (0..)
        .find_map(|kill_at| {
            let (run, staging) = scenario(kind);
            killed_at(run, staging, kind, faults, kill_at)
        })
        .unwrap()
}

/// Installs `staging`, killed before step `kill_at`, and checks: DEST wholly old or new (or a
/// journal to roll forward); after the next restore's recovery, wholly new if there was a
/// journal; after a sweep, nothing left. Returns the steps taken if the install finished.
fn killed_at(
    run: Run,
    staging: Staging,
    kind: Dest,
    faults: Faults,
    kill_at: usize,
) -> Option<usize> {
    let outcome = install_killed(
        staging,
        Faults {
            kill_at: Some(kill_at),
            ..faults
        },
    );
    let whole = snapshot(&run.dest);
    match outcome {
        Ok(steps) => {
            assert_eq!(whole, run.new, "{kind:?} {faults:?}: a whole install");
            finish(&run);
            return Some(steps);
        }
        Err(e) => assert!(is_kill(&e), "{kind:?} {faults:?} at {kill_at}: {e}"),
    }
    let journaled = run.layout.journal().exists();
    if !journaled {
        assert!(
            whole == run.old || whole == run.new,
            "{kind:?} {faults:?} killed at {kill_at}: DEST is neither tree: {whole:?}"
        );
    }
    // The next restore recovers before anything else.
    let next = prepare_in(&run.layout);
    let recovered = snapshot(&run.dest);
    if journaled {
        assert_eq!(
            recovered, run.new,
            "{kind:?} {faults:?} killed at {kill_at}: rolled forward"
        );
    } else {
        assert_eq!(recovered, whole, "{kind:?} {faults:?} killed at {kill_at}");
    }
    next.discard();
    finish(&run);
    None
}

/// After the sweep, nothing of the install is left but its lock.
fn finish(run: &Run) {
    assert!(!run.layout.journal().exists());
    sweep(&run.layout).unwrap();
    assert_eq!(scratch_left(&run.layout), Vec::<String>::new());
}

#[test]
fn a_missing_destination_is_one_rename() {
    assert_eq!(every_kill(Dest::Missing, Faults::default()), 1);
}

#[test]
fn an_existing_destination_is_one_exchange() {
    assert_eq!(every_kill(Dest::Directory, Faults::default()), 1);
}

#[test]
fn without_exchange_two_renames_under_a_journal() {
    let faults = Faults {
        no_exchange: true,
        ..Faults::default()
    };
    // exchange, journal, rename, rename, journal removed
    assert_eq!(every_kill(Dest::Directory, faults), 5);
}

#[test]
fn a_pinned_destination_moves_its_entries_under_a_journal() {
    let faults = Faults {
        pinned_dest: true,
        ..Faults::default()
    };
    // exchange, mkdir old, journal, 4 evictions each failing over to a removal, journal,
    // 4 moves, journal removed, staging removed
    assert_eq!(
        every_kill(Dest::Directory, faults),
        1 + 1 + 1 + 8 + 1 + 4 + 2
    );
}

#[test]
fn a_mount_point_moves_its_entries_under_a_journal() {
    // mkdir old, journal, 4 evictions, journal, 4 moves, journal removed, staging removed
    assert_eq!(
        every_kill(Dest::MountPoint, Faults::default()),
        1 + 1 + 4 + 1 + 4 + 2
    );
}

#[test]
fn a_mount_point_whose_entries_cannot_move_removes_them() {
    let faults = Faults {
        pinned_dest: true,
        ..Faults::default()
    };
    assert_eq!(every_kill(Dest::MountPoint, faults), 1 + 1 + 8 + 1 + 4 + 2);
}

#[test]
fn a_mount_point_keeps_its_lost_and_found() {
    let (run, staging) = scenario(Dest::MountPoint);
    std::fs::create_dir(run.dest.join("lost+found")).unwrap();
    install_killed(staging, Faults::default()).unwrap();
    assert_eq!(snapshot(&run.dest), run.new);
    assert!(run.dest.join("lost+found").is_dir());
    finish(&run);
}

#[test]
fn concurrent_installs_leave_one_whole_tree() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("deno-dir");
    write_tree(&dest, "old");
    let layout = Layout::of(&dest).unwrap();
    let trees: Vec<Snapshot> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let dest = dest.clone();
                s.spawn(move || {
                    let staging = prepare(&dest, &AtomicBool::new(false)).unwrap();
                    write_tree(&staging.path, &format!("t{i}"));
                    let tree = snapshot(&staging.path);
                    let lock = staging.lock_install(&AtomicBool::new(false)).unwrap();
                    staging.install(lock).unwrap();
                    tree
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(trees.contains(&snapshot(&dest)));
    sweep(&layout).unwrap();
    assert_eq!(scratch_left(&layout), Vec::<String>::new());
}

#[test]
fn the_sweep_removes_only_trees_nobody_holds() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("deno-dir");
    let layout = Layout::of(&dest).unwrap();
    let dead = layout.scratch(layout::STAGING, "dead");
    write_tree(&dead, "dead");
    let live = prepare(&dest, &AtomicBool::new(false)).unwrap();
    // Preparing removes nothing: leftovers never slow a restore down.
    assert!(dead.exists());
    assert_eq!(sweep(&layout).unwrap(), 1);
    assert!(!dead.exists() && live.path.exists());
    live.discard();
    assert_eq!(scratch_left(&layout), Vec::<String>::new());
}

#[test]
fn the_sweep_waits_for_a_journal_to_be_rolled_forward() {
    let (run, staging) = scenario(Dest::MountPoint);
    // Killed right after the journal: the staging tree is nobody's, but the journal needs it.
    let err = install_killed(
        staging,
        Faults {
            kill_at: Some(2),
            ..Faults::default()
        },
    )
    .unwrap_err();
    assert!(is_kill(&err));
    assert!(run.layout.journal().exists());
    sweep(&run.layout).unwrap();
    assert_eq!(snapshot(&run.dest), run.new);
    assert_eq!(scratch_left(&run.layout), Vec::<String>::new());
}

/// A file outside the install that planted names point at: it must never change.
fn victim(dir: &Path) -> PathBuf {
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    victim
}

/// What can be planted under the journal's name, each made by hand.
fn plant(kind: &str, journal: &Path, victim: &Path) {
    match kind {
        "outside" => std::fs::write(
            journal,
            r#"{"mode":"renames","staging":"../../etc","old":"00"}"#,
        )
        .unwrap(),
        "not json" => std::fs::write(journal, "{").unwrap(),
        "too large" => std::fs::write(
            journal,
            format!(
                r#"{{"mode":"renames","staging":"0a","old":"0b"}}{}"#,
                " ".repeat(journal::MAX_JOURNAL as usize)
            ),
        )
        .unwrap(),
        "link" => std::os::unix::fs::symlink(victim, journal).unwrap(),
        "dangling link" => std::os::unix::fs::symlink("/nonexistent/journal", journal).unwrap(),
        "fifo" => rustix::fs::mknodat(
            rustix::fs::CWD,
            journal,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap(),
        "directory" => {
            std::fs::create_dir(journal).unwrap();
            std::fs::write(journal.join("inside"), "x").unwrap();
        }
        other => unreachable!("{other}"),
    }
}

const PLANTED: [&str; 7] = [
    "outside",
    "not json",
    "too large",
    "link",
    "dangling link",
    "fifo",
    "directory",
];

#[test]
fn what_is_planted_under_the_journals_name_is_removed_not_obeyed() {
    for kind in PLANTED {
        for dest_kind in [Dest::Missing, Dest::Directory, Dest::MountPoint] {
            let dir = tempfile::tempdir().unwrap();
            let victim = victim(dir.path());
            let (run, staging) = scenario(dest_kind);
            staging.discard();
            plant(kind, &run.layout.journal(), &victim);
            // A FIFO would block a plain read until a writer came: this one never does.
            let started = std::time::Instant::now();
            let staging = prepare_in(&run.layout);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{kind}"
            );
            assert!(
                std::fs::symlink_metadata(run.layout.journal()).is_err(),
                "{kind} {dest_kind:?}: still there"
            );
            assert_eq!(snapshot(&run.dest), run.old, "{kind} {dest_kind:?}");
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
            staging.discard();
            finish(&run);
        }
    }
}

#[test]
fn the_journal_is_never_written_through_a_planted_link() {
    let faults = Faults {
        no_exchange: true,
        ..Faults::default()
    };
    for planted in ["journal.new", "journal"] {
        let dir = tempfile::tempdir().unwrap();
        let victim = victim(dir.path());
        let (run, staging) = scenario(Dest::Directory);
        let mut name = run.layout.journal().into_os_string();
        name.push(&planted["journal".len()..]);
        std::os::unix::fs::symlink(&victim, &name).unwrap();
        // Planted after the restore prepared (and recovered): the install meets it.
        install_killed(staging, faults).unwrap();
        assert_eq!(snapshot(&run.dest), run.new, "{planted}");
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "precious",
            "{planted}: written through"
        );
        finish(&run);
    }
}

#[test]
fn waiting_for_the_install_lock_ends_with_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("deno-dir");
    let layout = Layout::of(&dest).unwrap();
    let _held = lock::install(layout.lock(), &AtomicBool::new(false)).unwrap();
    let err = prepare(&dest, &AtomicBool::new(true)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
}

#[test]
fn refuses_a_file_destination() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("deno-dir");
    std::fs::write(&dest, "x").unwrap();
    let err = prepare(&dest, &AtomicBool::new(false)).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn a_failed_restore_never_creates_dest() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("deno-dir");
    let staging = prepare(&dest, &AtomicBool::new(false)).unwrap();
    write_tree(&staging.path, "new");
    staging.discard();
    assert!(!dest.exists());
    assert_eq!(
        scratch_left(&Layout::of(&dest).unwrap()),
        Vec::<String>::new()
    );
}

mod props {
    use proptest::prelude::*;

    use super::*;

    /// A top-level entry of a tree: a file, a directory holding a file, a read-only one, a
    /// link. Names are few, so that old and new trees share some.
    fn entry() -> impl Strategy<Value = (u8, &'static str)> {
        (
            0u8..4,
            prop::sample::select(&["npm", "deps", "gen", "remote", "x.json", "y"][..]),
        )
    }

    fn write(root: &Path, entries: &[(u8, &'static str)], tag: &str) {
        for (kind, name) in entries {
            let path = root.join(name);
            if path.symlink_metadata().is_ok() {
                continue;
            }
            match kind {
                0 => std::fs::write(&path, tag).unwrap(),
                1 | 2 => {
                    std::fs::create_dir(&path).unwrap();
                    std::fs::write(path.join(tag), tag).unwrap();
                    if *kind == 2 {
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555))
                            .unwrap();
                    }
                }
                _ => std::os::unix::fs::symlink(tag, &path).unwrap(),
            }
        }
    }

    fn dest() -> impl Strategy<Value = Dest> {
        prop_oneof![
            Just(Dest::Missing),
            Just(Dest::Directory),
            Just(Dest::MountPoint)
        ]
    }

    proptest! {
        /// Any trees, any DEST, any filesystem, killed before any step: DEST is wholly one
        /// tree, and wholly the new one once a journal was rolled forward.
        #[test]
        fn any_install_killed_anywhere_leaves_one_whole_tree(
            old in prop::collection::vec(entry(), 0..6),
            new in prop::collection::vec(entry(), 0..6),
            kind in dest(),
            no_exchange in any::<bool>(),
            pinned_dest in any::<bool>(),
            kill_at in 0usize..24,
        ) {
            let (run, staging) = scenario_of(
                kind,
                &|p| write(p, &old, "old"),
                &|p| write(p, &new, "new"),
            );
            let faults = Faults { kill_at: None, no_exchange, pinned_dest };
            killed_at(run, staging, kind, faults, kill_at);
        }
    }
}
