//! Writing the tree: the small-file writers, creating one file, and the last step (links, then
//! directories' modes and times).

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use super::held::Held;
use super::{Batch, Deferred, UnpackError};

/// The staging directory: a descriptor everything is created relative to, and its path (for
/// error messages).
#[derive(Clone, Copy)]
pub struct At<'a> {
    pub fd: BorrowedFd<'a>,
    pub path: &'a Path,
}

impl At<'_> {
    pub fn error(&self, rel: &CStr, e: impl Into<io::Error>) -> UnpackError {
        UnpackError::Write {
            path: self.path.join(OsStr::from_bytes(rel.to_bytes())),
            source: e.into(),
        }
    }
}

fn seconds(secs: i64) -> Timespec {
    Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    }
}

/// Access and modification times both `mtime`.
fn timestamps(mtime: i64) -> Timestamps {
    Timestamps {
        last_access: seconds(mtime),
        last_modification: seconds(mtime),
    }
}

/// Links, then directory modes and times, deepest first (writing into a directory changes
/// its mtime). One call each, by path relative to the root.
pub fn finish_links_and_dirs(at: At, state: &mut Deferred) -> Result<(), UnpackError> {
    for (link, target) in &state.hardlinks {
        rustix::fs::linkat(
            at.fd,
            target.as_c_str(),
            at.fd,
            link.as_c_str(),
            AtFlags::empty(),
        )
        .map_err(|e| at.error(link, e))?;
    }
    for (link, target, mtime) in &state.symlinks {
        rustix::fs::symlinkat(target.as_c_str(), at.fd, link.as_c_str())
            .map_err(|e| at.error(link, e))?;
        rustix::fs::utimensat(
            at.fd,
            link.as_c_str(),
            &timestamps(*mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| at.error(link, e))?;
    }
    state.dir_times.sort_by_key(|(path, _, _)| {
        std::cmp::Reverse(path.to_bytes().iter().filter(|&&b| b == b'/').count())
    });
    for (dir, mode, mtime) in &state.dir_times {
        if let Some(mode) = mode {
            rustix::fs::chmodat(
                at.fd,
                dir.as_c_str(),
                Mode::from_raw_mode(*mode),
                AtFlags::empty(),
            )
            .map_err(|e| at.error(dir, e))?;
        }
        rustix::fs::utimensat(at.fd, dir.as_c_str(), &timestamps(*mtime), AtFlags::empty())
            .map_err(|e| at.error(dir, e))?;
    }
    Ok(())
}

pub fn worker(
    at: At,
    rx: &Mutex<Receiver<Batch>>,
    failure: &Mutex<Option<UnpackError>>,
    cancel: &AtomicBool,
    held: &Held,
    umask: u32,
) {
    loop {
        let batch = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(batch) => batch,
            Err(_) => return, // the parser is done
        };
        let mut failed = None;
        if !cancel.load(Ordering::Relaxed) {
            for job in &batch.jobs {
                let written = write_file(at, &job.path, job.mode, job.mtime, umask, |file| {
                    file.write_all(&job.data)
                        .map_err(|e| at.error(&job.path, e))
                });
                if let Err(e) = written {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Whatever happened, the batch's memory is free now.
        held.release(batch.claim);
        if let Some(e) = failed {
            let mut slot = failure.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(e);
            return;
        }
    }
}

/// The process's umask, from `/proc/self/status` (reading it with umask(2) would change it for
/// a moment under other threads). `None` when unknown.
pub fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
}

/// The umask restored modes obey: the process's, as every file the runner writes does, or 022
/// (no write for group and others) when it cannot be read. An archive packed under umask 000
/// would otherwise restore world-writable, and on a shared runner anyone could swap a module
/// Deno runs.
pub fn restore_umask() -> u32 {
    process_umask().unwrap_or(0o022)
}

/// Creates a new file (never through an existing file or link) with `mode` less what `umask`
/// masks, fills it, and sets its modification time through the open handle.
pub fn write_file(
    at: At,
    path: &CStr,
    mode: u32,
    mtime: i64,
    umask: u32,
    fill: impl FnOnce(&mut File) -> Result<(), UnpackError>,
) -> Result<(), UnpackError> {
    let fd: OwnedFd = rustix::fs::openat(
        at.fd,
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & !umask),
    )
    .map_err(|e| at.error(path, e))?;
    let mut file = File::from(fd);
    fill(&mut file)?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: seconds(mtime),
    };
    rustix::fs::futimens(&file, &times).map_err(|e| at.error(path, e))?;
    Ok(())
}
