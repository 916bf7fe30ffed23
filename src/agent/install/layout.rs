//! Where an install keeps its staging tree, its lock and its journal.
//!
//! Beside DEST (`/cache/deno-dir`): `/cache/.deno-dir..sitecache-{journal,staging-*,old-*}` (the
//! name, a dot, and the reserved prefix, which starts with a dot too),
//! so that staging and DEST are on one filesystem and can be swapped by a rename.
//!
//! When DEST is a mount point (an emptyDir, say) nothing can be renamed over it, and its parent
//! is another filesystem: the same names go inside DEST, without the `.deno-dir` part
//! (`DEST/.sitecache-journal`, …). Archives never hold such top-level names
//! ([`crate::archive::policy::reserved`]), so a tree can never collide with them.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::archive::policy::RESERVED_PREFIX;

/// A staging directory: a tree being unpacked, or one checked out and waiting to be installed.
pub const STAGING: &str = "staging-";
/// A tree moved out of DEST, to be removed.
pub const OLD: &str = "old-";

#[derive(Debug, Clone)]
pub struct Layout {
    /// The destination, absolute.
    pub dest: PathBuf,
    /// The directory that holds the journal and the scratch trees, and whose lock is the
    /// install lock.
    pub home: PathBuf,
    /// `.{DEST's name}.sitecache-` beside DEST, `.sitecache-` inside it.
    prefix: OsString,
    /// DEST is a mount point: the scratch trees are inside it.
    pub inside: bool,
}

impl Layout {
    /// The layout for `dest`, creating its parent if missing. Fails if DEST exists and is not a
    /// directory.
    pub fn of(dest: &Path) -> io::Result<Layout> {
        let dest = std::path::absolute(dest)?;
        let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Err(io::Error::other(
                "the destination cannot be the root directory",
            ));
        };
        let parent = parent.to_owned();
        let mut prefix = OsString::from(".");
        prefix.push(name);
        prefix.push(".");
        prefix.push(RESERVED_PREFIX);
        std::fs::create_dir_all(&parent)?;
        let inside = match std::fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => is_mount_point(&dest, &parent)?,
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} exists and is not a directory",
                    dest.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        Ok(if inside {
            Layout {
                home: dest.clone(),
                dest,
                prefix: OsString::from(RESERVED_PREFIX),
                inside,
            }
        } else {
            Layout {
                home: parent,
                dest,
                prefix,
                inside,
            }
        })
    }

    /// This layout as if DEST were a mount point (unit tests mount nothing).
    #[cfg(test)]
    pub fn forced_inside(self) -> Layout {
        Layout {
            home: self.dest.clone(),
            dest: self.dest,
            prefix: OsString::from(RESERVED_PREFIX),
            inside: true,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        let mut full = self.prefix.clone();
        full.push(name);
        self.home.join(full)
    }

    /// The directory whose lock serializes installs (and recoveries, and sweeps) into DEST.
    pub fn lock(&self) -> &Path {
        &self.home
    }

    /// The journal of an install that is not atomic, while it runs.
    pub fn journal(&self) -> PathBuf {
        self.home.join(self.journal_name())
    }

    /// The journal's name in [`Layout::home`].
    pub fn journal_name(&self) -> OsString {
        let mut name = self.prefix.clone();
        name.push("journal");
        name
    }

    /// A scratch tree: `kind` is [`STAGING`] or [`OLD`], `token` random.
    pub fn scratch(&self, kind: &str, token: &str) -> PathBuf {
        self.path(&format!("{kind}{token}"))
    }

    /// Whether a name in [`Layout::home`] is a scratch tree's.
    pub fn is_scratch(&self, name: &OsStr) -> bool {
        name.as_bytes()
            .strip_prefix(self.prefix.as_bytes())
            .is_some_and(|rest| {
                rest.starts_with(STAGING.as_bytes()) || rest.starts_with(OLD.as_bytes())
            })
    }
}

/// Whether `dest` is a mount point: another filesystem than its parent's (a different device),
/// or a bind mount of the same one (a different mount id, where the kernel reports it).
fn is_mount_point(dest: &Path, parent: &Path) -> io::Result<bool> {
    if std::fs::metadata(dest)?.dev() != std::fs::metadata(parent)?.dev() {
        return Ok(true);
    }
    let mount_id = |path: &Path| {
        rustix::fs::statx(
            rustix::fs::CWD,
            path,
            rustix::fs::AtFlags::empty(),
            rustix::fs::StatxFlags::MNT_ID,
        )
        .ok()
        .filter(|s| s.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() != 0)
        .map(|s| s.stx_mnt_id)
    };
    Ok(match (mount_id(dest), mount_id(parent)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    })
}
