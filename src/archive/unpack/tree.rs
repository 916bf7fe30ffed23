//! The tree an unpack is building: every entry path seen so far, the directories on disk, and the
//! checks and limits that hold on paths. Each check costs time in proportion to the entry's own
//! path (or, for directories created as missing parents, to theirs): work stays linear in the
//! archive and its implied directories, whatever their depth.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use foldhash::{HashMap, HashSet};
use rustix::fs::Mode;

use super::budget::{Budget, DIR_BYTES, Seen};
use super::{At, UnpackError, UnpackLimits, unsafe_entry};

#[derive(Default)]
pub struct Tree {
    /// Every entry of the archive so far. Keyed by the path's bytes: entry paths are normalized
    /// (no `.`, `..` or repeated `/`), so bytes compare as paths do, and hashing bytes is much
    /// cheaper than hashing a `Path` component by component.
    seen: HashMap<OsString, Seen>,
    /// Directories on disk, created by an entry or as a missing parent. Each one's ancestors are
    /// directories on disk too, so an entry whose parent is here is not below a link or a file.
    dirs: HashSet<OsString>,
    /// Directories created, implied ones included.
    pub dirs_created: u64,
    /// What the tree has counted against the limits.
    pub budget: Budget,
}

impl Tree {
    /// Checks an entry's clean relative path against the path limits and counts it. Its parent
    /// must then be made ready with [`Tree::parent`].
    pub fn admit(&mut self, rel: &[u8], limits: &UnpackLimits) -> Result<(), UnpackError> {
        Ok(self.budget.admit(rel, limits)?)
    }

    /// Counts `n` bytes more on disk (see [`Budget::count_disk`]).
    pub fn count_disk(&mut self, n: u64, limits: &UnpackLimits) -> Result<(), UnpackError> {
        Ok(self.budget.count_disk(n, limits)?)
    }

    /// Counts a path of `n` bytes more held in memory (with its bookkeeping).
    pub fn hold(&mut self, n: usize, limits: &UnpackLimits) -> Result<(), UnpackError> {
        Ok(self.budget.hold(n, limits)?)
    }

    /// Records entry `rel` of kind `seen`. A second entry with the same path is refused, and so
    /// is anything but a directory where a directory was created.
    pub fn record(
        &mut self,
        rel: &[u8],
        seen: Seen,
        limits: &UnpackLimits,
    ) -> Result<(), UnpackError> {
        let key = OsStr::from_bytes(rel);
        if seen != Seen::Dir && self.dirs.contains(key) {
            return Err(unsafe_entry(rel, "a directory is already there"));
        }
        if self.seen.insert(key.to_owned(), seen).is_some() {
            return Err(unsafe_entry(rel, "duplicate entry"));
        }
        self.hold(rel.len(), limits)
    }

    pub fn get(&self, rel: &[u8]) -> Option<Seen> {
        self.seen.get(OsStr::from_bytes(rel)).copied()
    }

    pub fn is_dir(&self, rel: &[u8]) -> bool {
        self.dirs.contains(OsStr::from_bytes(rel))
    }

    /// Makes sure the directories above `rel` exist: below neither a link nor a file, created
    /// (mode 0755) where missing, each counted as an entry and as a directory.
    pub fn parent(&mut self, at: At, rel: &[u8], limits: &UnpackLimits) -> Result<(), UnpackError> {
        let Some(end) = rel.iter().rposition(|&b| b == b'/') else {
            return Ok(()); // at the root
        };
        if self.is_dir(&rel[..end]) {
            return Ok(());
        }
        // The ancestors that are not directories yet, nearest first, up to one that is.
        let mut missing = Vec::new();
        let mut end = Some(end);
        while let Some(e) = end {
            let ancestor = &rel[..e];
            if self.is_dir(ancestor) {
                break;
            }
            match self.get(ancestor) {
                Some(Seen::Symlink) => return Err(unsafe_entry(rel, "below a symbolic link")),
                Some(Seen::File | Seen::HardLink) => {
                    return Err(unsafe_entry(rel, "below a non-directory entry"));
                }
                Some(Seen::Dir) | None => missing.push(e),
            }
            end = ancestor.iter().rposition(|&b| b == b'/');
        }
        for &e in missing.iter().rev() {
            self.budget.count_entry(limits)?;
            self.create_dir(at, &rel[..e], 0o755, limits)?;
        }
        Ok(())
    }

    /// Creates directory `rel` (its parent exists) with `mode`, and records it.
    pub fn create_dir(
        &mut self,
        at: At,
        rel: &[u8],
        mode: u32,
        limits: &UnpackLimits,
    ) -> Result<CString, UnpackError> {
        let path = CString::new(rel).map_err(|_| unsafe_entry(rel, "NUL in the path"))?;
        self.count_disk(DIR_BYTES, limits)?;
        self.dirs_created += 1;
        rustix::fs::mkdirat(at.fd, path.as_c_str(), Mode::from_raw_mode(mode))
            .map_err(|e| at.error(&path, e))?;
        self.dirs.insert(OsString::from_vec(rel.to_vec()));
        self.hold(rel.len(), limits)?;
        Ok(path)
    }
}
