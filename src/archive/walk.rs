//! The snapshot's walk of a cache directory: depth first, each directory before its contents,
//! the entries of a directory in byte order of their names (so that the archive's order is the
//! same whoever packs the same tree), without following symbolic links.
//!
//! Sorting needs a directory's names all at once, and a warm step may have made a directory of
//! millions. So names are counted as they are read, before the rest of the directory is: every
//! name read and not yet walked counts against the entry limit and the limit on paths held in
//! memory, together with what the scan has counted already ([`Walk::next`]'s `counted`). A
//! directory past them is refused after reading as many names as the limits allow, not after
//! reading all of them (`walkdir`'s sort reads a whole directory first).

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::unpack::UnpackLimits;
use super::unpack::budget::{ENTRY_LIMIT, OverLimit, PATH_BYTES_LIMIT, PATH_OVERHEAD};

/// Why the walk stopped.
#[derive(Debug)]
pub enum WalkError {
    /// Reading `path` failed.
    Io { path: PathBuf, source: io::Error },
    /// Reading the directory `path` went past a limit.
    OverLimit { path: PathBuf, limit: OverLimit },
}

/// What the caller has counted so far: entries (those it left out too) and bytes of paths held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub entries: u64,
    pub path_bytes: u64,
}

/// A directory being walked: its path, and the names below it still to walk, sorted.
struct Open {
    path: PathBuf,
    names: std::vec::IntoIter<OsString>,
}

pub struct Walk<'a> {
    limits: &'a UnpackLimits,
    /// Top-level names left out (not read, not counted).
    leave_out: &'a dyn Fn(&[u8]) -> bool,
    stack: Vec<Open>,
    /// Names read and not walked yet, and their bytes as paths held (with their overhead).
    pending: u64,
    pending_bytes: u64,
    /// The directory to read before the next entry (the last one walked, if the caller
    /// descends into it).
    descend: Option<PathBuf>,
    root: PathBuf,
    started: bool,
}

impl<'a> Walk<'a> {
    /// A walk of what is below `root` (not `root` itself), leaving out the top-level names for
    /// which `leave_out` holds.
    pub fn new(
        root: &Path,
        limits: &'a UnpackLimits,
        leave_out: &'a dyn Fn(&[u8]) -> bool,
    ) -> Walk<'a> {
        Walk {
            limits,
            leave_out,
            stack: Vec::new(),
            pending: 0,
            pending_bytes: 0,
            descend: None,
            root: root.to_owned(),
            started: false,
        }
    }

    /// Walks into the directory [`Walk::next`] gave last: its entries come next.
    pub fn descend(&mut self, dir: &Path) {
        self.descend = Some(dir.to_owned());
    }

    /// The next path and its depth (1 for the root's entries), or `None` at the end. `counted`
    /// is what the caller has counted so far; the names read and not walked yet count on top
    /// of it.
    pub fn next(&mut self, counted: Counted) -> Option<Result<(PathBuf, usize), WalkError>> {
        if !self.started {
            self.started = true;
            let root = self.root.clone();
            if let Err(e) = self.read(&root, true, counted) {
                return Some(Err(e));
            }
        }
        if let Some(dir) = self.descend.take()
            && let Err(e) = self.read(&dir, false, counted)
        {
            return Some(Err(e));
        }
        loop {
            let open = self.stack.last_mut()?;
            match open.names.next() {
                Some(name) => {
                    let path = open.path.join(&name);
                    self.pending -= 1;
                    self.pending_bytes -= held(&path, &self.root);
                    return Some(Ok((path, self.stack.len())));
                }
                None => {
                    self.stack.pop();
                }
            }
        }
    }

    /// Reads the names in `dir`, counting each as it is read, sorts them and makes them next.
    fn read(&mut self, dir: &Path, top: bool, counted: Counted) -> Result<(), WalkError> {
        let io_err = |source| WalkError::Io {
            path: dir.to_owned(),
            source,
        };
        let over = |what, limit| WalkError::OverLimit {
            path: dir.to_owned(),
            limit: OverLimit { what, limit },
        };
        let mut names = Vec::new();
        // A name's path below the root, without building it: the directory's, a '/', the name.
        let dir_rel = dir
            .strip_prefix(&self.root)
            .unwrap_or(dir)
            .as_os_str()
            .len() as u64;
        let held_below = |name: &OsString| {
            let sep = u64::from(dir_rel > 0);
            dir_rel + sep + name.len() as u64 + PATH_OVERHEAD
        };
        for entry in std::fs::read_dir(dir).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name();
            if top && (self.leave_out)(name.as_bytes()) {
                continue;
            }
            self.pending += 1;
            if counted.entries.saturating_add(self.pending) > self.limits.max_entries {
                return Err(over(ENTRY_LIMIT, self.limits.max_entries));
            }
            self.pending_bytes += held_below(&name);
            if counted.path_bytes.saturating_add(self.pending_bytes) > self.limits.max_path_bytes {
                return Err(over(PATH_BYTES_LIMIT, self.limits.max_path_bytes));
            }
            names.push(name);
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        self.stack.push(Open {
            path: dir.to_owned(),
            names: names.into_iter(),
        });
        Ok(())
    }
}

/// What a path below `root` costs held in memory, as the unpack counts it.
fn held(path: &Path, root: &Path) -> u64 {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.as_os_str().len() as u64 + PATH_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk_all(root: &Path, limits: &UnpackLimits) -> Result<Vec<String>, WalkError> {
        let leave_out = |name: &[u8]| name == b"skip";
        let mut walk = Walk::new(root, limits, &leave_out);
        let mut out = Vec::new();
        while let Some(item) = walk.next(Counted::default()) {
            let (path, _) = item?;
            if path.symlink_metadata().unwrap().is_dir() {
                walk.descend(&path);
            }
            out.push(path.strip_prefix(root).unwrap().display().to_string());
        }
        Ok(out)
    }

    #[test]
    fn depth_first_sorted_by_bytes_each_directory_before_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["b/y", "a", "B", "skip", "b/x/deep"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("b/x/deep/f"), "").unwrap();
        std::fs::write(root.join("a.txt"), "").unwrap();
        let got = walk_all(root, &UnpackLimits::default()).unwrap();
        assert_eq!(
            got,
            [
                "B",
                "a",
                "a.txt",
                "b",
                "b/x",
                "b/x/deep",
                "b/x/deep/f",
                "b/y"
            ]
        );
    }

    #[test]
    fn a_large_directory_is_refused_while_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::create_dir(&big).unwrap();
        for i in 0..300 {
            std::fs::write(big.join(format!("f{i}")), "").unwrap();
        }
        let limits = UnpackLimits {
            max_entries: 100,
            ..UnpackLimits::default()
        };
        match walk_all(dir.path(), &limits) {
            Err(WalkError::OverLimit { path, limit }) => {
                // Named with the directory, after 101 of its 300 names.
                assert_eq!(path, big);
                assert_eq!(limit.what, ENTRY_LIMIT);
            }
            other => panic!("not refused: {other:?}"),
        }
        let limits = UnpackLimits {
            max_path_bytes: 2000,
            ..UnpackLimits::default()
        };
        assert!(matches!(
            walk_all(dir.path(), &limits),
            Err(WalkError::OverLimit { .. })
        ));
        // Within the limits, all of it.
        assert_eq!(
            walk_all(dir.path(), &UnpackLimits::default())
                .unwrap()
                .len(),
            301
        );
    }
}
