//! Putting a verified tree in place: DEST is wholly the old tree or wholly the new one whatever
//! happens (kills at any step, concurrent restores, mount points, overlayfs, read-only
//! directories).
//!
//! 1. [`prepare`]: under the install lock, finish any install a dead restore left half done
//!    ([`swap::recover`]), then make a staging directory with a random name, locked for as long
//!    as this restore lives.
//! 2. The restore unpacks and verifies into it.
//! 3. [`Staging::lock_install`], then [`Staging::install`]: the state machine of [`swap`].
//! 4. [`sweep`], off the critical path and within what is left of the deadline: remove the
//!    scratch trees nobody holds (the old tree, leftovers of failed or killed restores).
//!
//! A restore also sweeps when it starts, on a thread of its own while it downloads, so that
//! restores that keep failing (on a DEST that persists: a volume, a re-run init container)
//! cannot pile their leftovers up: at most the last one's remain between two restores. Nothing
//! is removed on the critical path; with nothing to remove, the sweep is one directory listing.

mod journal;
mod layout;
mod lock;
mod ops;
mod remove;
mod swap;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

pub use layout::Layout;
use layout::STAGING;
use ops::Ops;
pub use remove::remove_tree;

/// Where a restore extracts before it installs. Locked while it lives.
#[derive(Debug)]
pub struct Staging {
    pub path: PathBuf,
    layout: Layout,
    token: String,
    _alive: File,
}

/// The install lock, held until dropped.
pub struct InstallLock(#[allow(dead_code)] File);

/// Prepares an empty staging directory for `dest`, first rolling forward an install a dead
/// restore left half done. Waits for the install lock while another restore holds it, until
/// `cancel`.
pub fn prepare(dest: &Path, cancel: &AtomicBool) -> io::Result<Staging> {
    prepare_with(dest, cancel, &mut Ops::default())
}

fn prepare_with(dest: &Path, cancel: &AtomicBool, ops: &mut Ops) -> io::Result<Staging> {
    let layout = Layout::of(dest)?;
    // Held while the staging directory is made and locked, so that no sweep takes it for stale.
    let _lock = lock::install(layout.lock(), cancel)?;
    swap::recover(&layout, ops)?;
    loop {
        let token = journal::token();
        let path = layout.scratch(STAGING, &token);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let alive = lock::try_dir(&path)?.ok_or_else(|| {
            io::Error::other(format!("{} is locked by another process", path.display()))
        })?;
        return Ok(Staging {
            path,
            layout,
            token,
            _alive: alive,
        });
    }
}

impl Staging {
    /// Waits for the install lock (another restore may be installing into DEST), until
    /// `cancel`.
    pub fn lock_install(&self, cancel: &AtomicBool) -> io::Result<InstallLock> {
        lock::install(self.layout.lock(), cancel).map(InstallLock)
    }

    /// Puts the staged tree at DEST. Returns the layout, for [`sweep`].
    pub fn install(self, lock: InstallLock) -> io::Result<Layout> {
        self.install_with(lock, &mut Ops::default())
    }

    fn install_with(self, lock: InstallLock, ops: &mut Ops) -> io::Result<Layout> {
        swap::install(&self.layout, &self.token, ops)?;
        drop(lock);
        Ok(self.layout)
    }

    /// Where the scratch trees are, to sweep.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Removes the staging directory (after a failure; a restore leaves that to its end).
    #[cfg(test)]
    pub fn discard(self) {
        let _ = remove_tree(&self.path);
    }
}

/// Removes the scratch trees of `layout` that nobody holds: trees moved out of DEST, staging
/// left by restores that failed or were killed. Skipped while another restore holds the install
/// lock (it sweeps after). Returns how many trees were removed.
pub fn sweep(layout: &Layout) -> io::Result<usize> {
    let stale = {
        let Some(_lock) = lock::try_install(layout.lock())? else {
            return Ok(0);
        };
        swap::recover(layout, &mut Ops::default())?;
        let mut stale = Vec::new();
        for entry in std::fs::read_dir(&layout.home)? {
            let entry = entry?;
            if layout.is_scratch(&entry.file_name())
                && entry.file_type()?.is_dir()
                && let Some(held) = lock::try_dir(&entry.path())?
            {
                stale.push((entry.path(), held));
            }
        }
        stale
    };
    // Each tree stays locked while it is removed, so no other sweep works on it too.
    let removed = stale.len();
    for (path, _held) in stale {
        remove_tree(&path)?;
    }
    Ok(removed)
}
