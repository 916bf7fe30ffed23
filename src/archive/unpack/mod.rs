//! Safe, parallel extraction of a tar stream into an empty staging directory, within hard bounds.
//!
//! One thread parses the stream; small files are written by a pool of workers (creating files is
//! what costs, not the bytes), large ones are streamed by the parser. A small file's data is a
//! slice of the decompressed chunk it lies in when that is affordable, a copy when not
//! ([`held`]). Links and directory times are applied at the end ([`write`]). Every entry is
//! checked before anything is written: nothing can land outside the staging directory, whatever
//! the archive says ([`tree`]).
//!
//! An archive is parsed as it streams, before its checksum is known, so every resource an unpack
//! uses has a bound that the archive cannot talk its way past ([`UnpackLimits`]): bytes written
//! (directories counted at 4 KiB each, with checked arithmetic), entries (directories created as
//! missing parents included), path length and depth, link-name length, the bytes of all paths
//! held in memory, and the memory small files hold on their way to the writers. Each check costs
//! in proportion to the entry's own path, so work stays linear in the archive.
//!
//! Everything is created relative to a descriptor of the staging directory, so the kernel walks
//! only the entry's own path, not the staging directory's.
//!
//! Why not `tar::Archive::unpack`, which is made for archives one trusts:
//! - it creates one entry at a time on one thread, and a restore's time goes to creating tens of
//!   thousands of small files, which the workers here do side by side;
//! - it has no bounds: an archive can make it write any number of bytes and entries, and the
//!   checksum that would expose a hostile archive is only known at the end of the stream;
//! - it works by path: it creates symbolic links to anywhere as they come, and keeps later
//!   entries inside the destination by canonicalizing their parent directories first, a check
//!   by path that is easy to get wrong (RUSTSEC-2026-0067: a chmod through a symbolic link).
//!   Here each entry and link target is judged before it is written ([`tree`], `policy`),
//!   files are created with `openat(O_CREAT | O_EXCL | O_NOFOLLOW)` and the other
//!   *at() calls below the staging directory's descriptor, and links are made last, when no
//!   entry can be written through them.
//!
//! The tar format itself is read by `super::entries` (the `tar` crate's header and PAX types),
//! which also lets a small file's data stay a slice of the chunk it arrived in.

pub(super) mod budget;
mod held;
mod tree;
mod write;

use std::ffi::{CString, OsStr};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rustix::fs::{Mode, OFlags};

use super::entries::Entries;
use super::policy;
use budget::{Budget, OverLimit, Seen};
use held::{Claim, HELD_BUDGET, Held};
use tree::Tree;
use write::{At, restore_umask, worker, write_file};

/// Files up to this size are read into memory and written by a worker.
const SMALL_FILE: u64 = 1024 * 1024;
const _: () = assert!(SMALL_FILE <= super::entries::MAX_WHOLE as u64);
/// Small files go to the workers in batches (one channel hand-off per batch, not per file: with
/// tens of thousands of files, per-file hand-offs cost as much as writing them).
const BATCH_FILES: usize = 64;
const BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Batches queued for the workers at most (their memory is bounded by [`HELD_BUDGET`] anyway).
const QUEUE: usize = 16;

/// Bytes of the tar stream that are not file data (headers, GNU long names, PAX records,
/// padding) allowed per entry counted, on average, beyond [`META_BASE`]. An honest entry uses at
/// most about 11 KiB of them (a header, a 4 KiB long name and a 4 KiB long link target with
/// their own headers, and padding); most use 512 to 1,536.
pub const META_PER_ENTRY: u64 = 16 * 1024;
/// Such bytes allowed whatever the entries (PAX global headers, the archive's root entry).
pub const META_BASE: u64 = 1024 * 1024;
/// Zeros allowed after the archive's end markers (GNU tar and bsdtar pad to 10 KiB records;
/// `tar -b 2048` to 1 MiB).
pub const MAX_TRAILER: u64 = 1024 * 1024;

/// What the archive's manifest says it holds: a restore verified against a manifest stops the
/// moment the stream holds more (a corrupt archive), before its checksum can be known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Declared {
    /// Bytes of regular files (`uncompressedBytes`).
    pub file_bytes: u64,
    /// Entries of every kind (`entries`).
    pub entries: u64,
}

/// What an unpack may use at most, whatever the archive holds.
#[derive(Clone, Copy, Debug)]
pub struct UnpackLimits {
    /// Bytes written: regular files, and 4 KiB per directory.
    pub max_bytes: u64,
    /// Entries of every kind, directories created as missing parents included.
    pub max_entries: u64,
    /// Bytes of an entry's path (Linux's `PATH_MAX`).
    pub max_path: usize,
    /// Components of an entry's path.
    pub max_depth: usize,
    /// Bytes of a symbolic link's target.
    pub max_link: usize,
    /// Memory for the paths the unpack keeps until the end (their bytes, and 64 bytes of
    /// bookkeeping each).
    pub max_path_bytes: u64,
    /// Memory small files hold on their way to the writers (copies, and the chunks that slices
    /// keep alive).
    pub max_held: usize,
    /// What the manifest declares, when there is one: hard limits too.
    pub declared: Option<Declared>,
}

impl UnpackLimits {
    pub const DEFAULT: UnpackLimits = UnpackLimits {
        max_bytes: 8 * 1024 * 1024 * 1024,
        max_entries: 500_000,
        max_path: 4096,
        max_depth: 256,
        max_link: 4095,
        max_path_bytes: 64 * 1024 * 1024,
        max_held: HELD_BUDGET,
        declared: None,
    };
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What an unpack wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries, directories created as missing parents included.
    pub entries: u64,
    /// Regular files and hard links.
    pub files: u64,
    /// Bytes of regular files.
    pub bytes: u64,
    /// Directories created.
    pub dirs: u64,
    /// The most memory small files held at once on their way to the writers.
    pub held_peak: usize,
    /// What the unpack counted against its limits.
    pub budget: Budget,
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
    #[error("the archive exceeds {what}: {limit}")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("the archive holds more {what} than its manifest declares ({declared})")]
    Undeclared { what: &'static str, declared: u64 },
    #[error("cancelled")]
    Cancelled,
}

impl From<OverLimit> for UnpackError {
    fn from(o: OverLimit) -> Self {
        if o.what == budget::DECLARED_ENTRIES {
            return UnpackError::Undeclared {
                what: "entries",
                declared: o.limit,
            };
        }
        UnpackError::TooLarge {
            what: o.what,
            limit: o.limit,
        }
    }
}

impl UnpackError {
    /// A short machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            UnpackError::Unsafe { .. } => "unsafe-entry",
            UnpackError::Read(_) | UnpackError::Undeclared { .. } => "corrupt-archive",
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
    /// What restored modes leave out; `None`: the process's umask ([`write::restore_umask`]).
    pub umask: Option<u32>,
}

struct FileJob {
    /// Relative to the root.
    path: CString,
    data: Bytes,
    mode: u32,
    mtime: i64,
}

/// Small files on their way to a worker, and the memory they hold.
#[derive(Default)]
struct Batch {
    jobs: Vec<FileJob>,
    bytes: usize,
    claim: Claim,
}

impl Batch {
    fn full(&self) -> bool {
        self.jobs.len() >= BATCH_FILES || self.bytes >= BATCH_BYTES
    }
}

/// What the last step applies.
#[derive(Default)]
struct Deferred {
    /// Directories' modes (`None`: created with it) and times.
    dir_times: Vec<(CString, Option<u32>, i64)>,
    /// Link, target and time.
    symlinks: Vec<(CString, CString, i64)>,
    /// Link and the file it links to.
    hardlinks: Vec<(CString, CString)>,
}

impl Unpacker {
    /// Unpacks an uncompressed tar stream, arriving in chunks, into the root. Reads the whole
    /// stream: after the archive's end, only zeros may follow, [`MAX_TRAILER`] bytes at most.
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
        let held = Held::new(self.limits.max_held);
        let (tx, rx) = sync_channel::<Batch>(QUEUE);
        let rx = Mutex::new(rx);
        let umask = self.umask.unwrap_or_else(restore_umask);
        let mut parse = Parse {
            unpacker: self,
            at: At {
                fd: root.as_fd(),
                path: &self.root,
            },
            tree: Tree::default(),
            deferred: Deferred::default(),
            umask,
            stats: UnpackStats::default(),
            held: &held,
            failure: &failure,
        };
        let parsed = std::thread::scope(|scope| {
            for _ in 0..self.workers.max(1) {
                let (rx, failure, cancel, held, at) =
                    (&rx, &failure, &self.cancel, &held, parse.at);
                scope.spawn(move || worker(at, rx, failure, cancel, held, umask));
            }
            // `tx` is moved in and dropped when parsing ends, which lets the workers finish.
            parse.entries(&mut entries, tx)
        });
        if let Some(e) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(e);
        }
        parsed?;
        let finish = std::time::Instant::now();
        write::finish_links_and_dirs(parse.at, &mut parse.deferred)?;
        tracing::debug!(
            ms = finish.elapsed().as_millis() as u64,
            "links and directory times applied"
        );
        let stats = UnpackStats {
            entries: parse.tree.budget.entries,
            dirs: parse.tree.dirs_created,
            budget: parse.tree.budget,
            held_peak: held.peak(),
            ..parse.stats
        };
        // Tens of thousands of paths: freed off the critical path.
        let (tree, deferred) = (parse.tree, parse.deferred);
        let _ = std::thread::Builder::new().spawn(move || drop((tree, deferred)));
        Ok(stats)
    }

    /// The clean relative path of an entry, after the strip prefix; `None` for the root itself.
    fn relative(&self, raw: &[u8]) -> Result<Option<PathBuf>, UnpackError> {
        let Some(path) = policy::entry_path(raw).map_err(|e| unsafe_entry(raw, e))? else {
            return Ok(None);
        };
        let rel = match &self.strip_prefix {
            None => path,
            Some(prefix) => match path.strip_prefix(prefix) {
                Ok(rest) if rest.as_os_str().is_empty() => return Ok(None),
                Ok(rest) => rest.to_owned(),
                Err(_) => return Err(unsafe_entry(raw, format!("outside {}/", prefix.display()))),
            },
        };
        if policy::reserved(&rel) {
            return Err(unsafe_entry(raw, policy::PolicyError::Reserved));
        }
        Ok(Some(rel))
    }
}

/// One unpack's parsing side.
struct Parse<'a> {
    unpacker: &'a Unpacker,
    at: At<'a>,
    tree: Tree,
    deferred: Deferred,
    /// What restored modes leave out ([`write::restore_umask`]).
    umask: u32,
    stats: UnpackStats,
    held: &'a Held,
    failure: &'a Mutex<Option<UnpackError>>,
}

impl Parse<'_> {
    fn limits(&self) -> &UnpackLimits {
        &self.unpacker.limits
    }

    fn failed(&self) -> bool {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn entries<I: Iterator<Item = io::Result<Bytes>>>(
        &mut self,
        entries: &mut Entries<I>,
        tx: SyncSender<Batch>,
    ) -> Result<(), UnpackError> {
        let mut batch = Batch::default();
        while let Some(entry) = entries.next_entry().map_err(UnpackError::Read)? {
            if self.unpacker.cancel.load(Ordering::Relaxed) {
                return Err(UnpackError::Cancelled);
            }
            if self.failed() {
                // A worker failed; its error is reported by the caller.
                return Ok(());
            }
            self.count_meta(entries.position())?;
            let kind = entry.kind;
            if kind == tar::EntryType::XGlobalHeader {
                // Global PAX records would apply to every later entry; none is honoured. Their
                // data (64 KiB at most) is skipped, counted as metadata.
                continue;
            }
            let raw = entry.path;
            let is_file = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
            if !is_file && entry.size > 0 {
                // Only files have data; a size elsewhere would hide the entries after it from
                // readers that skip it and show them to readers that do not.
                return Err(unsafe_entry(&raw, format!("a {kind:?} entry with data")));
            }
            let Some(rel) = self.unpacker.relative(&raw)? else {
                // The archive's root directory itself: nothing to write.
                if kind != tar::EntryType::Directory {
                    return Err(unsafe_entry(
                        &raw,
                        format!("the archive's root as a {kind:?}"),
                    ));
                }
                continue;
            };
            let rel = rel.into_os_string().into_vec();
            let limits = *self.limits();
            self.tree.admit(&rel, &limits)?;
            let seen = match kind {
                tar::EntryType::Directory => Seen::Dir,
                tar::EntryType::Symlink => Seen::Symlink,
                tar::EntryType::Link => Seen::HardLink,
                // Anything else is a regular file or refused below.
                _ => Seen::File,
            };
            // Implied directories are counted (against what the manifest declares too) before
            // they are made.
            self.tree.parent(self.at, &rel, &limits)?;
            self.tree.record(&rel, seen, &limits)?;
            let header = &entry.header;
            let mode = header.mode().map_err(UnpackError::Read)? & 0o777;
            let mtime = header
                .mtime()
                .map_err(UnpackError::Read)?
                .min(i64::MAX as u64) as i64;
            match kind {
                tar::EntryType::Directory => self.directory(&rel, mode, mtime)?,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size;
                    self.tree.count_disk(size, &limits)?;
                    if let Some(declared) = limits.declared
                        && self.stats.bytes + size > declared.file_bytes
                    {
                        return Err(UnpackError::Undeclared {
                            what: "bytes of regular files",
                            declared: declared.file_bytes,
                        });
                    }
                    self.stats.bytes += size;
                    self.stats.files += 1;
                    let dest = CString::new(rel).map_err(|_| unsafe_entry(&raw, "NUL"))?;
                    if size <= SMALL_FILE {
                        let data = entries.data().map_err(UnpackError::Read)?;
                        let data = loop {
                            if let Some((bytes, _)) = self.held.keep(&data, &mut batch.claim) {
                                break bytes;
                            }
                            // The writers hold the budget: hand them this batch and wait.
                            if !batch.jobs.is_empty()
                                && tx.send(std::mem::take(&mut batch)).is_err()
                            {
                                return Ok(()); // workers are gone: a failure is recorded
                            }
                            if self.failed() {
                                return Ok(());
                            }
                            self.held.wait();
                        };
                        batch.bytes += data.len();
                        batch.jobs.push(FileJob {
                            path: dest,
                            data,
                            mode,
                            mtime,
                        });
                        if batch.full() && tx.send(std::mem::take(&mut batch)).is_err() {
                            return Ok(()); // workers are gone: a failure is recorded
                        }
                    } else {
                        let (at, cancel) = (self.at, &self.unpacker.cancel);
                        write_file(at, &dest, mode, mtime, self.umask, |file| {
                            // Once cancelled (the deadline), a large file stops at its next
                            // piece, not at its end.
                            entries
                                .data_pieces(|piece| {
                                    if cancel.load(Ordering::Relaxed) {
                                        return Err(None);
                                    }
                                    file.write_all(piece).map_err(Some)
                                })
                                .map_err(UnpackError::Read)?
                                .map_err(|e| match e {
                                    Some(e) => at.error(&dest, e),
                                    None => UnpackError::Cancelled,
                                })
                        })?;
                    }
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link
                        .ok_or_else(|| unsafe_entry(&raw, "symbolic link without a target"))?;
                    Budget::link(&target, &limits)?;
                    let link = Path::new(OsStr::from_bytes(&rel));
                    policy::symlink_target(link, &target).map_err(|e| unsafe_entry(&raw, e))?;
                    self.tree.hold(rel.len() + target.len(), &limits)?;
                    // The policy refuses NUL.
                    let target = CString::new(target)
                        .map_err(|_| unsafe_entry(&raw, "NUL in the link target"))?;
                    let link = CString::new(rel).map_err(|_| unsafe_entry(&raw, "NUL"))?;
                    self.deferred.symlinks.push((link, target, mtime));
                }
                tar::EntryType::Link => {
                    let raw_target = entry
                        .link
                        .ok_or_else(|| unsafe_entry(&raw, "hard link without a target"))?;
                    let target = self.unpacker.relative(&raw_target)?.ok_or_else(|| {
                        unsafe_entry(&raw, "hard link to the archive's root directory")
                    })?;
                    let target = target.into_os_string().into_vec();
                    if self.tree.get(&target) != Some(Seen::File) {
                        return Err(unsafe_entry(
                            &raw,
                            "hard link to something that is not a regular file earlier in the archive",
                        ));
                    }
                    self.stats.files += 1;
                    self.tree.hold(rel.len() + target.len(), &limits)?;
                    let target = CString::new(target)
                        .map_err(|_| unsafe_entry(&raw, "NUL in the link target"))?;
                    let link = CString::new(rel).map_err(|_| unsafe_entry(&raw, "NUL"))?;
                    self.deferred.hardlinks.push((link, target));
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
            let _ = tx.send(batch);
        }
        // What follows the end is read too, within a bound: the decompressor runs to the end
        // of the stream, and every byte it makes is counted.
        entries.finish(MAX_TRAILER).map_err(UnpackError::Read)
    }

    /// Checks the bytes of the stream that were not file data, `position` bytes in: at most
    /// [`META_BASE`] plus [`META_PER_ENTRY`] per entry counted so far, so that the work spent on
    /// headers, extensions and skipped data stays in proportion to what is counted.
    fn count_meta(&self, position: u64) -> Result<(), UnpackError> {
        // Every file's data is read by now (the next header is read only after it).
        let meta = position.saturating_sub(self.stats.bytes);
        let allowed = META_PER_ENTRY
            .saturating_mul(self.tree.budget.entries)
            .saturating_add(META_BASE);
        if meta > allowed {
            return Err(UnpackError::TooLarge {
                what: "the bytes of headers, long names and PAX records (16 KiB per entry and 1 MiB)",
                limit: allowed,
            });
        }
        Ok(())
    }

    /// A directory entry: created (unless created already as a missing parent) with its own
    /// mode, less what the umask masks, when that lets the owner write into it; otherwise
    /// owner-only until the end, then chmod.
    fn directory(&mut self, rel: &[u8], mode: u32, mtime: i64) -> Result<(), UnpackError> {
        let limits = *self.limits();
        let mode = mode & !self.umask;
        let mut chmod = Some(mode);
        let path = if self.tree.is_dir(rel) {
            CString::new(rel).map_err(|_| unsafe_entry(rel, "NUL"))?
        } else {
            let final_mode = mode & 0o700 == 0o700;
            let create = if final_mode { mode } else { 0o700 };
            let path = self.tree.create_dir(self.at, rel, create, &limits)?;
            if final_mode {
                chmod = None;
            }
            path
        };
        self.tree.hold(rel.len(), &limits)?;
        self.deferred.dir_times.push((path, chmod, mtime));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
