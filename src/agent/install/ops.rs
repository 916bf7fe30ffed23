//! The operations that change DEST or its scratch trees during an install, each one a step. The
//! tests stop an install before any step, as a kill would, and check what is left.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::journal::Journal;
use super::layout::Layout;
use super::remove;

#[derive(Default)]
pub struct Ops {
    /// Steps taken.
    pub steps: usize,
    #[cfg(test)]
    pub faults: Faults,
}

/// What a test makes an install meet.
#[cfg(test)]
#[derive(Default, Clone, Copy, Debug)]
pub struct Faults {
    /// Fail this step (0-based) and every later one, as if the process died there.
    pub kill_at: Option<usize>,
    /// The filesystem has no atomic exchange (`EINVAL`).
    pub no_exchange: bool,
    /// DEST and its entries cannot be renamed away (`EXDEV`, as an overlayfs lower directory).
    pub pinned_dest: bool,
}

/// An error only a test injects.
#[cfg(test)]
pub fn is_kill(e: &io::Error) -> bool {
    e.to_string().starts_with("killed before step")
}

impl Ops {
    fn step(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.kill_at.is_some_and(|at| self.steps >= at) {
            return Err(io::Error::other(format!(
                "killed before step {}",
                self.steps
            )));
        }
        self.steps += 1;
        Ok(())
    }

    #[cfg(test)]
    fn pinned(&self) -> io::Result<()> {
        if self.faults.pinned_dest {
            return Err(rustix::io::Errno::XDEV.into());
        }
        Ok(())
    }

    #[cfg(not(test))]
    fn pinned(&self) -> io::Result<()> {
        Ok(())
    }

    pub fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        std::fs::rename(from, to)
    }

    /// Atomically exchanges two paths (`renameat2(RENAME_EXCHANGE)`).
    pub fn exchange(&mut self, a: &Path, b: &Path) -> io::Result<()> {
        self.step()?;
        #[cfg(test)]
        if self.faults.no_exchange {
            return Err(rustix::io::Errno::INVAL.into());
        }
        self.pinned()?;
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            a,
            rustix::fs::CWD,
            b,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(io::Error::from)
    }

    /// Moves an entry of DEST out of it.
    pub fn evict(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        self.pinned()?;
        rename_any_mode(from, to)
    }

    /// Moves an entry of the staged tree into DEST.
    pub fn move_in(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        rename_any_mode(from, to)
    }

    pub fn create_dir(&mut self, path: &Path) -> io::Result<()> {
        self.step()?;
        std::fs::create_dir(path)
    }

    pub fn remove_tree(&mut self, path: &Path) -> io::Result<()> {
        self.step()?;
        remove::remove_tree(path)
    }

    /// Puts `journal` in place at once: written beside, then renamed over the previous one.
    pub fn write_journal(&mut self, layout: &Layout, journal: &Journal) -> io::Result<()> {
        self.step()?;
        super::journal::write(layout, journal)
    }

    pub fn remove_journal(&mut self, layout: &Layout) -> io::Result<()> {
        self.step()?;
        match std::fs::remove_file(layout.journal()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// Renames `from` to `to`. Moving a directory to another parent rewrites its `..`, which takes
/// write permission on the directory itself: a read-only one (an archive's 0555) gets its write
/// bit for the rename and its mode back after.
fn rename_any_mode(from: &Path, to: &Path) -> io::Result<()> {
    let denied = match std::fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => e,
        other => return other,
    };
    let meta = std::fs::symlink_metadata(from)?;
    let mode = meta.permissions().mode();
    if !meta.is_dir() || mode & 0o200 != 0 {
        return Err(denied);
    }
    std::fs::set_permissions(from, std::fs::Permissions::from_mode(mode | 0o200))?;
    let moved = std::fs::rename(from, to);
    let now = if moved.is_ok() { to } else { from };
    std::fs::set_permissions(now, std::fs::Permissions::from_mode(mode))?;
    moved
}
