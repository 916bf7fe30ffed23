//! Safe, parallel extraction of a tar stream into an empty staging directory.
//!
//! One thread parses the stream; small files are written by a pool of workers (creating files is
//! what costs, not the bytes), large ones are streamed by the parser. File contents are not copied
//! on the way: a small file's data is a slice of the decompressed chunk it lies in. Links and
//! directory times are applied at the end. Every entry is checked before anything is written: nothing can land
//! outside the staging directory, whatever the archive says.

use std::ffi::OsString;

use bytes::Bytes;
use foldhash::{HashMap, HashSet};
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use filetime::FileTime;

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
    path: PathBuf,
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
    dir_times: Vec<(PathBuf, Option<u32>, i64)>,
    umask: Option<u32>,
    deferred_symlinks: Vec<(PathBuf, PathBuf, i64)>,
    deferred_hardlinks: Vec<(PathBuf, PathBuf)>,
    stats: UnpackStats,
}

impl Unpacker {
    /// Unpacks an uncompressed tar stream, arriving in chunks, into the root. Reads up to the
    /// archive's end: the chunks after the one it ends in are left in `input`.
    pub fn unpack<I>(&self, input: &mut I) -> Result<UnpackStats, UnpackError>
    where
        I: Iterator<Item = io::Result<Bytes>>,
    {
        let mut entries = Entries::new(input);
        let failure: Mutex<Option<UnpackError>> = Mutex::new(None);
        let (tx, rx) = sync_channel::<Vec<FileJob>>(QUEUE);
        let rx = Mutex::new(rx);
        let umask = process_umask();
        let mut state = State {
            umask,
            ..State::default()
        };
        let parsed = std::thread::scope(|scope| {
            for _ in 0..self.workers.max(1) {
                scope.spawn(|| worker(&rx, &failure, &self.cancel, umask));
            }
            // `tx` is moved in and dropped when parsing ends, which lets the workers finish.
            self.parse(&mut entries, tx, &failure, &mut state)
        });
        if let Some(e) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(e);
        }
        parsed?;
        let finish = std::time::Instant::now();
        self.finish(&mut state)?;
        tracing::debug!(
            ms = finish.elapsed().as_millis() as u64,
            "links and directory times applied"
        );
        Ok(state.stats)
    }

    fn parse<I: Iterator<Item = io::Result<Bytes>>>(
        &self,
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
            let dest = self.root.join(&rel);
            match kind {
                tar::EntryType::Directory => {
                    self.ensure_parent(state, &rel)?;
                    // Created with its own mode when that lets the owner write into it and the
                    // umask keeps it; otherwise owner-only until the end, then chmod.
                    let mut chmod = Some(mode);
                    if !state.dirs.contains(rel.as_os_str()) {
                        let final_mode = mode & 0o700 == 0o700 && kept_by_umask(mode, state.umask);
                        std::fs::DirBuilder::new()
                            .mode(if final_mode { mode } else { 0o700 })
                            .create(&dest)
                            .map_err(|source| UnpackError::Write {
                                path: dest.clone(),
                                source,
                            })?;
                        state.dirs.insert(rel.clone().into_os_string());
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
                    self.ensure_parent(state, &rel)?;
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
                        write_file(&dest, mode, mtime, None, |file| {
                            entries
                                .data_pieces(|piece| file.write_all(piece))
                                .map_err(UnpackError::Read)?
                                .map_err(|source| UnpackError::Write {
                                    path: dest.clone(),
                                    source,
                                })
                        })?;
                    }
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link
                        .ok_or_else(|| unsafe_entry(&raw, "symbolic link without a target"))?;
                    policy::symlink_target(&rel, &target).map_err(|e| unsafe_entry(&raw, e))?;
                    self.ensure_parent(state, &rel)?;
                    state.any_symlink = true;
                    let target =
                        PathBuf::from(<std::ffi::OsString as OsStringExt>::from_vec(target));
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
                    self.ensure_parent(state, &rel)?;
                    state.stats.files += 1;
                    state
                        .deferred_hardlinks
                        .push((dest, self.root.join(target)));
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

    /// Links, then directory modes and times, deepest first (writing into a directory changes
    /// its mtime).
    fn finish(&self, state: &mut State) -> Result<(), UnpackError> {
        for (link, target) in &state.deferred_hardlinks {
            std::fs::hard_link(target, link).map_err(|source| UnpackError::Write {
                path: link.clone(),
                source,
            })?;
        }
        for (link, target, mtime) in &state.deferred_symlinks {
            std::os::unix::fs::symlink(target, link).map_err(|source| UnpackError::Write {
                path: link.clone(),
                source,
            })?;
            let t = FileTime::from_unix_time(*mtime, 0);
            filetime::set_symlink_file_times(link, t, t).map_err(|source| UnpackError::Write {
                path: link.clone(),
                source,
            })?;
        }
        state
            .dir_times
            .sort_by_key(|(path, _, _)| std::cmp::Reverse(path.components().count()));
        for (dir, mode, mtime) in &state.dir_times {
            if let Some(mode) = mode {
                std::fs::set_permissions(dir, Permissions::from_mode(*mode)).map_err(|source| {
                    UnpackError::Write {
                        path: dir.clone(),
                        source,
                    }
                })?;
            }
            let t = FileTime::from_unix_time(*mtime, 0);
            filetime::set_file_times(dir, t, t).map_err(|source| UnpackError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

fn worker(
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
            let written = write_file(&job.path, job.mode, job.mtime, umask, |file| {
                file.write_all(&job.data)
                    .map_err(|source| UnpackError::Write {
                        path: job.path.clone(),
                        source,
                    })
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
    path: &Path,
    mode: u32,
    mtime: i64,
    umask: Option<u32>,
    fill: impl FnOnce(&mut File) -> Result<(), UnpackError>,
) -> Result<(), UnpackError> {
    let werr = |source| UnpackError::Write {
        path: path.to_owned(),
        source,
    };
    let mode_set_on_create = kept_by_umask(mode, umask);
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if mode_set_on_create { mode } else { 0o600 })
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(werr)?;
    fill(&mut file)?;
    if !mode_set_on_create {
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(werr)?;
    }
    filetime::set_file_handle_times(&file, None, Some(FileTime::from_unix_time(mtime, 0)))
        .map_err(werr)?;
    Ok(())
}
