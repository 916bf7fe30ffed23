//! Safe, parallel extraction of a tar stream into an empty staging directory.
//!
//! One thread parses the stream; small files are written by a pool of workers (creating files is
//! what costs, not the bytes), large ones are streamed by the parser. File contents are not copied
//! on the way: a small file's data is a slice of the decompressed chunk it lies in. Links and
//! directory times are applied at the end. Every entry is checked before anything is written:
//! nothing can land outside the staging directory, whatever the archive says.
//!
//! Everything is created relative to a descriptor of the staging directory, so the kernel walks
//! only the entry's own path, not the staging directory's.

use std::ffi::{CStr, CString, OsStr, OsString};

use bytes::Bytes;
use foldhash::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use super::entries::Entries;
use super::policy;

/// Files up to this size are read into memory and written by a worker.
const SMALL_FILE: u64 = 1024 * 1024;
/// Small files go to the workers in batches (one channel hand-off per batch, not per file: with
/// tens of thousands of files, per-file hand-offs cost as much as writing them).
const BATCH_FILES: usize = 64;
const BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Batches queued for the workers at most (with the batch limits, bounds memory to ~32 MiB).
const QUEUE: usize = 16;

/// Limits that protect the destination's disk from a hostile or broken archive.
#[derive(Clone, Copy, Debug)]
pub struct UnpackLimits {
    /// Total bytes of regular files.
    pub max_bytes: u64,
    /// Entries of every kind.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024 * 1024,
            max_entries: 2_000_000,
        }
    }
}

/// What an unpack wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// Regular files and hard links.
    pub files: u64,
    /// Bytes of regular files.
    pub bytes: u64,
}

/// Why an unpack stopped. The staging directory is then incomplete and must be discarded.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("refused entry {path:?}: {why}")]
    Unsafe { path: String, why: String },
    #[error("reading the archive failed: {0}")]
    Read(io::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("the archive exceeds {what} (limit {limit})")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("cancelled")]
    Cancelled,
}

impl UnpackError {
    /// A short machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            UnpackError::Unsafe { .. } => "unsafe-entry",
            UnpackError::Read(_) => "corrupt-archive",
            UnpackError::Write { .. } => "write-failed",
            UnpackError::TooLarge { .. } => "too-large",
            UnpackError::Cancelled => "cancelled",
        }
    }
}

fn unsafe_entry(raw: &[u8], why: impl ToString) -> UnpackError {
    UnpackError::Unsafe {
        path: String::from_utf8_lossy(raw).into_owned(),
        why: why.to_string(),
    }
}

/// Extracts a tar stream into `root`, an existing empty directory.
pub struct Unpacker {
    pub root: PathBuf,
    /// Entries must be below this directory, which is stripped (legacy archives: `deno-dir`).
    pub strip_prefix: Option<PathBuf>,
    /// Threads writing small files.
    pub workers: usize,
    pub limits: UnpackLimits,
    /// Set to stop an unpack early (it then fails with [`UnpackError::Cancelled`]).
    pub cancel: Arc<AtomicBool>,
}

struct FileJob {
    /// Relative to the root.
    path: CString,
    data: Bytes,
    mode: u32,
    mtime: i64,
}

/// Small files on their way to a worker.
#[derive(Default)]
struct Batch {
    jobs: Vec<FileJob>,
    bytes: usize,
}

impl Batch {
    fn full(&self) -> bool {
        self.jobs.len() >= BATCH_FILES || self.bytes >= BATCH_BYTES
    }
}

/// What an archive path was, for duplicate, hard-link and below-a-link checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Dir,
    File,
    Symlink,
    HardLink,
}

#[derive(Default)]
struct State {
    /// Every entry of the archive so far. Keyed by the path's bytes: entry paths are normalized
    /// (no `.`, `..` or repeated `/`), so bytes compare as paths do, and hashing bytes is much
    /// cheaper than hashing a `Path` component by component.
    seen: HashMap<OsString, Seen>,
    /// Whether `seen` has a symbolic link (most caches have none: skip the ancestor walk).
    any_symlink: bool,
    /// Directories on disk, created by an entry or as a missing parent.
    dirs: HashSet<OsString>,
    /// Directories' modes (`None`: created with it) and times, applied at the end.
    dir_times: Vec<(CString, Option<u32>, i64)>,
    umask: Option<u32>,
    /// Link, target and time.
    deferred_symlinks: Vec<(CString, CString, i64)>,
    /// Link and the file it links to.
    deferred_hardlinks: Vec<(CString, CString)>,
    stats: UnpackStats,
}

impl Unpacker {
    /// Unpacks an uncompressed tar stream, arriving in chunks, into the root. Reads up to the
    /// archive's end: the chunks after the one it ends in are left in `input`.
    pub fn unpack<I>(&self, input: &mut I) -> Result<UnpackStats, UnpackError>
    where
        I: Iterator<Item = io::Result<Bytes>>,
    {
        let root = rustix::fs::open(
            &self.root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| UnpackError::Write {
            path: self.root.clone(),
            source: e.into(),
        })?;
        let mut entries = Entries::new(input);
        let failure: Mutex<Option<UnpackError>> = Mutex::new(None);
        let (tx, rx) = sync_channel::<Vec<FileJob>>(QUEUE);
        let rx = Mutex::new(rx);
        let umask = process_umask();
        let mut state = State {
            umask,
            ..State::default()
        };
        let at = At {
            fd: root.as_fd(),
            path: &self.root,
        };
        let parsed = std::thread::scope(|scope| {
            for _ in 0..self.workers.max(1) {
                let (rx, failure, cancel) = (&rx, &failure, &self.cancel);
                scope.spawn(move || worker(at, rx, failure, cancel, umask));
            }
            // `tx` is moved in and dropped when parsing ends, which lets the workers finish.
            self.parse(at, &mut entries, tx, &failure, &mut state)
        });
        if let Some(e) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(e);
        }
        parsed?;
        let finish = std::time::Instant::now();
        finish_links_and_dirs(at, &mut state)?;
        tracing::debug!(
            ms = finish.elapsed().as_millis() as u64,
            "links and directory times applied"
        );
        let stats = state.stats;
        // Tens of thousands of paths: freed off the critical path.
        let _ = std::thread::Builder::new().spawn(move || drop(state));
        Ok(stats)
    }

    fn parse<I: Iterator<Item = io::Result<Bytes>>>(
        &self,
        at: At,
        entries: &mut Entries<I>,
        tx: SyncSender<Vec<FileJob>>,
        failure: &Mutex<Option<UnpackError>>,
        state: &mut State,
    ) -> Result<(), UnpackError> {
        let mut batch = Batch::default();
        while let Some(entry) = entries.next_entry().map_err(UnpackError::Read)? {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(UnpackError::Cancelled);
            }
            if failure.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                // A worker failed; its error is reported by the caller.
                return Ok(());
            }
            let kind = entry.kind;
            if kind == tar::EntryType::XGlobalHeader {
                // Global PAX records would apply to every later entry; none is honoured.
                continue;
            }
            let raw = entry.path;
            let Some(rel) = self.relative(&raw)? else {
                continue; // the archive's root directory itself
            };
            state.stats.entries += 1;
            if state.stats.entries > self.limits.max_entries {
                return Err(UnpackError::TooLarge {
                    what: "the entry limit",
                    limit: self.limits.max_entries,
                });
            }
            let seen = match kind {
                tar::EntryType::Directory => Seen::Dir,
                tar::EntryType::Symlink => Seen::Symlink,
                tar::EntryType::Link => Seen::HardLink,
                // Anything else is a regular file or refused below.
                _ => Seen::File,
            };
            if state
                .seen
                .insert(rel.clone().into_os_string(), seen)
                .is_some()
            {
                return Err(unsafe_entry(&raw, "duplicate entry"));
            }
            if state.any_symlink
                && rel
                    .ancestors()
                    .skip(1)
                    .any(|a| state.seen.get(a.as_os_str()) == Some(&Seen::Symlink))
            {
                return Err(unsafe_entry(&raw, "below a symbolic link"));
            }
            let header = &entry.header;
            let mode = header.mode().map_err(UnpackError::Read)? & 0o777;
            let mtime = header
                .mtime()
                .map_err(UnpackError::Read)?
                .min(i64::MAX as u64) as i64;
            self.ensure_parent(state, &rel)?;
            let known_dir =
                kind == tar::EntryType::Directory && state.dirs.contains(rel.as_os_str());
            let dest = CString::new(rel.into_os_string().into_vec())
                .map_err(|_| unsafe_entry(&raw, "NUL in the path"))?;
            match kind {
                tar::EntryType::Directory => {
                    // Created with its own mode when that lets the owner write into it and the
                    // umask keeps it; otherwise owner-only until the end, then chmod.
                    let mut chmod = Some(mode);
                    if !known_dir {
                        let final_mode = mode & 0o700 == 0o700 && kept_by_umask(mode, state.umask);
                        let create = if final_mode { mode } else { 0o700 };
                        rustix::fs::mkdirat(at.fd, dest.as_c_str(), Mode::from_raw_mode(create))
                            .map_err(|e| at.error(&dest, e))?;
                        state
                            .dirs
                            .insert(OsStr::from_bytes(dest.to_bytes()).to_owned());
                        if final_mode {
                            chmod = None;
                        }
                    }
                    state.dir_times.push((dest, chmod, mtime));
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size;
                    state.stats.bytes += size;
                    state.stats.files += 1;
                    if state.stats.bytes > self.limits.max_bytes {
                        return Err(UnpackError::TooLarge {
                            what: "the unpacked size limit",
                            limit: self.limits.max_bytes,
                        });
                    }
                    if size <= SMALL_FILE {
                        let data = entries.data().map_err(UnpackError::Read)?;
                        batch.bytes += data.len();
                        batch.jobs.push(FileJob {
                            path: dest,
                            data,
                            mode,
                            mtime,
                        });
                        if batch.full() && tx.send(std::mem::take(&mut batch).jobs).is_err() {
                            return Ok(()); // workers are gone: a failure is recorded
                        }
                    } else {
                        write_file(at, &dest, mode, mtime, state.umask, |file| {
                            entries
                                .data_pieces(|piece| file.write_all(piece))
                                .map_err(UnpackError::Read)?
                                .map_err(|e| at.error(&dest, e))
                        })?;
                    }
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link
                        .ok_or_else(|| unsafe_entry(&raw, "symbolic link without a target"))?;
                    let link = Path::new(OsStr::from_bytes(dest.to_bytes()));
                    policy::symlink_target(link, &target).map_err(|e| unsafe_entry(&raw, e))?;
                    state.any_symlink = true;
                    // The policy refuses NUL.
                    let target = CString::new(target)
                        .map_err(|_| unsafe_entry(&raw, "NUL in the link target"))?;
                    state.deferred_symlinks.push((dest, target, mtime));
                }
                tar::EntryType::Link => {
                    let raw_target = entry
                        .link
                        .ok_or_else(|| unsafe_entry(&raw, "hard link without a target"))?;
                    let target = self.relative(&raw_target)?.ok_or_else(|| {
                        unsafe_entry(&raw, "hard link to the archive's root directory")
                    })?;
                    if state.seen.get(target.as_os_str()) != Some(&Seen::File) {
                        return Err(unsafe_entry(
                            &raw,
                            "hard link to something that is not a regular file earlier in the archive",
                        ));
                    }
                    state.stats.files += 1;
                    let target = CString::new(target.into_os_string().into_vec())
                        .map_err(|_| unsafe_entry(&raw, "NUL in the link target"))?;
                    state.deferred_hardlinks.push((dest, target));
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    return Err(unsafe_entry(&raw, "device file"));
                }
                tar::EntryType::Fifo => return Err(unsafe_entry(&raw, "FIFO")),
                other => {
                    return Err(unsafe_entry(
                        &raw,
                        format!("unsupported entry type {:?}", other),
                    ));
                }
            }
        }
        if !batch.jobs.is_empty() {
            let _ = tx.send(batch.jobs);
        }
        Ok(())
    }

    /// The clean relative path of an entry, after the strip prefix; `None` for the root itself.
    fn relative(&self, raw: &[u8]) -> Result<Option<PathBuf>, UnpackError> {
        let Some(path) = policy::entry_path(raw).map_err(|e| unsafe_entry(raw, e))? else {
            return Ok(None);
        };
        match &self.strip_prefix {
            None => Ok(Some(path)),
            Some(prefix) => match path.strip_prefix(prefix) {
                Ok(rest) if rest.as_os_str().is_empty() => Ok(None),
                Ok(rest) => Ok(Some(rest.to_owned())),
                Err(_) => Err(unsafe_entry(raw, format!("outside {}/", prefix.display()))),
            },
        }
    }

    /// Makes sure the directories above `rel` exist (archives from other tools may list a file
    /// before its directory).
    fn ensure_parent(&self, state: &mut State, rel: &Path) -> Result<(), UnpackError> {
        let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        if state.dirs.contains(parent.as_os_str()) {
            return Ok(());
        }
        if matches!(
            state.seen.get(parent.as_os_str()),
            Some(Seen::File | Seen::Symlink | Seen::HardLink)
        ) {
            return Err(unsafe_entry(
                rel.as_os_str().as_encoded_bytes(),
                "below a non-directory entry",
            ));
        }
        let dest = self.root.join(parent);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dest)
            .map_err(|source| UnpackError::Write { path: dest, source })?;
        for a in parent.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            state.dirs.insert(a.as_os_str().to_owned());
        }
        Ok(())
    }
}

/// The staging directory: a descriptor everything is created relative to, and its path (for
/// error messages).
#[derive(Clone, Copy)]
struct At<'a> {
    fd: BorrowedFd<'a>,
    path: &'a Path,
}

impl At<'_> {
    fn error(&self, rel: &CStr, e: impl Into<io::Error>) -> UnpackError {
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
fn finish_links_and_dirs(at: At, state: &mut State) -> Result<(), UnpackError> {
    for (link, target) in &state.deferred_hardlinks {
        rustix::fs::linkat(
            at.fd,
            target.as_c_str(),
            at.fd,
            link.as_c_str(),
            AtFlags::empty(),
        )
        .map_err(|e| at.error(link, e))?;
    }
    for (link, target, mtime) in &state.deferred_symlinks {
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

fn worker(
    at: At,
    rx: &Mutex<Receiver<Vec<FileJob>>>,
    failure: &Mutex<Option<UnpackError>>,
    cancel: &AtomicBool,
    umask: Option<u32>,
) {
    loop {
        let jobs = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(jobs) => jobs,
            Err(_) => return, // the parser is done
        };
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        for job in jobs {
            let written = write_file(at, &job.path, job.mode, job.mtime, umask, |file| {
                file.write_all(&job.data)
                    .map_err(|e| at.error(&job.path, e))
            });
            if let Err(e) = written {
                let mut slot = failure.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(e);
                return;
            }
        }
    }
}

/// Whether creating with `mode` yields exactly `mode` under the process umask (when known).
fn kept_by_umask(mode: u32, umask: Option<u32>) -> bool {
    umask.is_some_and(|m| mode & m == 0)
}

/// The process's umask, from `/proc/self/status` (reading it with umask(2) would change it for
/// a moment under other threads). `None` when unknown: modes are then always set explicitly.
fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
}

/// Creates a new file (never through an existing file or link), fills it, and sets its mode and
/// modification time through the open handle. With the process `umask` known, the file is
/// created with its mode and `fchmod` is only needed when the umask masks some of it.
fn write_file(
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
