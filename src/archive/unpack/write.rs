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
    umask: Option<u32>,
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

/// Whether creating with `mode` yields exactly `mode` under the process umask (when known).
pub fn kept_by_umask(mode: u32, umask: Option<u32>) -> bool {
    umask.is_some_and(|m| mode & m == 0)
}

/// The process's umask, from `/proc/self/status` (reading it with umask(2) would change it for
/// a moment under other threads). `None` when unknown: modes are then always set explicitly.
pub fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
}

/// Creates a new file (never through an existing file or link), fills it, and sets its mode and
/// modification time through the open handle. With the process `umask` known, the file is
/// created with its mode and `fchmod` is only needed when the umask masks some of it.
pub fn write_file(
    at: At,
    path: &CStr,
    mode: u32,
    mtime: i64,
    umask: Option<u32>,
    fill: impl FnOnce(&mut File) -> Result<(), UnpackError>,
) -> Result<(), UnpackError> {
    let mode_set_on_create = kept_by_umask(mode, umask);
    let fd: OwnedFd = rustix::fs::openat(
        at.fd,
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(if mode_set_on_create { mode } else { 0o600 }),
    )
    .map_err(|e| at.error(path, e))?;
    let mut file = File::from(fd);
    fill(&mut file)?;
    if !mode_set_on_create {
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(|e| at.error(path, e))?;
    }
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
