//! Advisory locks (`flock`), which the kernel releases when their holder dies, however it dies:
//! nothing is keyed on process ids, which two containers can share.
//!
//! - The install lock serializes the steps that change DEST or its scratch trees: recovering,
//!   creating a staging directory, installing, choosing what to sweep. It is taken on the
//!   directory that holds them (DEST's parent, or DEST when it is a mount point): no lock file
//!   is left behind.
//! - Each scratch tree a restore is working in is locked by it while it lives: a tree nobody
//!   holds is stale, and any restore may remove it.

use std::fs::{File, TryLockError};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

/// How often a restore waiting for the install lock looks again.
const POLL: Duration = Duration::from_millis(5);

fn open_dir(path: &Path) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?.into())
}

/// Takes the install lock on the directory `path`, waiting while another restore holds it, until `cancel`.
pub fn install(path: &Path, cancel: &AtomicBool) -> io::Result<File> {
    let file = open_dir(path)?;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if cancel.load(Ordering::Relaxed) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("another restore held {} until the deadline", path.display()),
                ));
            }
            Err(TryLockError::WouldBlock) => std::thread::sleep(POLL),
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Takes the install lock on the directory `path` if it is free.
pub fn try_install(path: &Path) -> io::Result<Option<File>> {
    try_lock(open_dir(path)?)
}

/// Locks the directory at `path` if nobody holds it. `None`: it is in use (or unreadable).
pub fn try_dir(path: &Path) -> io::Result<Option<File>> {
    let dir = match open_dir(path) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) => return Err(e),
    };
    try_lock(dir)
}

fn try_lock(file: File) -> io::Result<Option<File>> {
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}
