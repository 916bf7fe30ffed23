//! Putting a verified tree in place: a staging directory beside DEST, swapped in atomically.
//!
//! - DEST missing: the staging directory is renamed to DEST.
//! - DEST an existing directory: the two are exchanged atomically (`renameat2(RENAME_EXCHANGE)`),
//!   then the old tree is removed.
//! - DEST a mount point (an emptyDir, say): staging cannot be beside it (another filesystem), so
//!   it is made inside DEST, which must be empty, and its top-level entries are renamed into DEST
//!   at the end (a handful of renames; DEST gains nothing until the tree checked out).
//!
//! Staging directories are named after the process; ones left by a process that died are removed
//! by the next restore.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const STAGING_TAG: &str = ".sitecache-staging-";
const OLD_TAG: &str = ".sitecache-old-";

/// Where a restore extracts before it installs.
#[derive(Debug)]
pub struct Staging {
    pub path: PathBuf,
    dest: PathBuf,
    inside: bool,
}

fn tag_name(dest: &Path, tag: &str) -> OsString {
    let mut name = OsString::from(".");
    name.push(dest.file_name().unwrap_or_default());
    name.push(tag);
    name.push(format!("{}", std::process::id()));
    name
}

/// Removes staging and old trees left by restores that died (their pid is gone).
fn clean_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let pid = [STAGING_TAG, OLD_TAG]
            .iter()
            .find_map(|tag| name.split_once(tag).map(|(_, pid)| pid.to_owned()));
        if let Some(pid) = pid
            && pid.parse::<u32>().is_ok()
            && pid != std::process::id().to_string()
            && !Path::new("/proc").join(&pid).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn is_mount_point(dest: &Path, parent: &Path) -> io::Result<bool> {
    Ok(std::fs::metadata(dest)?.dev() != std::fs::metadata(parent)?.dev())
}

/// Prepares an empty staging directory for `dest`.
pub fn prepare(dest: &Path) -> io::Result<Staging> {
    let dest = std::path::absolute(dest)?;
    let parent = dest
        .parent()
        .ok_or_else(|| io::Error::other("the destination cannot be the root directory"))?
        .to_owned();
    std::fs::create_dir_all(&parent)?;
    clean_stale(&parent);
    let meta = std::fs::symlink_metadata(&dest);
    let inside = match &meta {
        Ok(m) if m.is_dir() => is_mount_point(&dest, &parent)?,
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{} exists and is not a directory",
                dest.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io::Error::new(e.kind(), e.to_string())),
    };
    let path = if inside {
        clean_stale(&dest);
        let foreign = std::fs::read_dir(&dest)?
            .flatten()
            .any(|e| !e.file_name().to_string_lossy().contains(STAGING_TAG));
        if foreign {
            return Err(io::Error::other(format!(
                "{} is a mount point that is not empty: refusing to mix a restore into it",
                dest.display()
            )));
        }
        dest.join(tag_name(&dest, STAGING_TAG))
    } else {
        parent.join(tag_name(&dest, STAGING_TAG))
    };
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir(&path)?;
    Ok(Staging { path, dest, inside })
}

impl Staging {
    /// Puts the staged tree at DEST. Returns an old tree to remove, if DEST had one.
    pub fn install(self) -> io::Result<Option<PathBuf>> {
        if self.inside {
            for entry in std::fs::read_dir(&self.path)? {
                let entry = entry?;
                std::fs::rename(entry.path(), self.dest.join(entry.file_name()))?;
            }
            std::fs::remove_dir(&self.path)?;
            return Ok(None);
        }
        match std::fs::symlink_metadata(&self.dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::rename(&self.path, &self.dest)?;
                Ok(None)
            }
            Err(e) => Err(e),
            Ok(_) => match exchange(&self.path, &self.dest) {
                // The staging path now holds the old tree.
                Ok(()) => Ok(Some(self.path)),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                    // No atomic exchange on this filesystem: move the old tree aside first.
                    let parent = self.dest.parent().unwrap_or(Path::new("/"));
                    let old = parent.join(tag_name(&self.dest, OLD_TAG));
                    std::fs::rename(&self.dest, &old)?;
                    std::fs::rename(&self.path, &self.dest)?;
                    Ok(Some(old))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Removes the staging directory (after a failure).
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Atomically exchanges two paths (Linux `renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; the syscall does not keep them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_into_a_missing_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("deno-dir");
        let staging = prepare(&dest).unwrap();
        std::fs::write(staging.path.join("a"), "new").unwrap();
        assert_eq!(staging.install().unwrap(), None);
        assert_eq!(std::fs::read_to_string(dest.join("a")).unwrap(), "new");
    }

    #[test]
    fn swaps_an_existing_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("deno-dir");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("old"), "old").unwrap();
        let staging = prepare(&dest).unwrap();
        std::fs::write(staging.path.join("a"), "new").unwrap();
        let old = staging.install().unwrap().expect("an old tree to remove");
        assert!(old.join("old").exists());
        assert!(dest.join("a").exists() && !dest.join("old").exists());
    }

    #[test]
    fn removes_stale_staging_of_dead_processes() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("deno-dir");
        // A pid that cannot be alive.
        let stale = dir.path().join(".deno-dir.sitecache-staging-4294967");
        std::fs::create_dir(&stale).unwrap();
        let staging = prepare(&dest).unwrap();
        assert!(!stale.exists());
        staging.discard();
        assert!(!staging.path.exists());
        assert!(!dest.exists(), "a failed restore never creates DEST");
    }

    #[test]
    fn refuses_a_file_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("deno-dir");
        std::fs::write(&dest, "x").unwrap();
        assert!(prepare(&dest).is_err());
    }
}
