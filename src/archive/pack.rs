//! Packing a directory tree into a tar stream: scan first (so that counts and refusals come before
//! any upload), then stream every entry in sorted order.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::policy;
use super::unpack::UnpackLimits;
use super::unpack::budget::{Budget, ENTRY_LIMIT, OverLimit, Seen};
use super::walk::{Counted, Walk, WalkError};

/// Why a tree could not be scanned or packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is a symbolic link that cannot be restored safely: {why}")]
    UnsafeLink {
        path: PathBuf,
        why: policy::PolicyError,
    },
    #[error("{path} changed while it was being packed ({why})")]
    Changed { path: PathBuf, why: &'static str },
    #[error(
        "{path}: the tree exceeds {limit}, which a restore applies too \
         (--max-entries, --max-unpacked-bytes): no runner could restore it"
    )]
    OverLimit { path: PathBuf, limit: OverLimit },
    #[error("writing the archive: {0}")]
    Output(io::Error),
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File {
        size: u64,
        /// The file scanned: the one opened must be it.
        id: (u64, u64),
    },
    Symlink {
        target: PathBuf,
    },
    /// A hard link to the entry at this index, a regular file packed earlier.
    HardLink {
        first: usize,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    rel: PathBuf,
    kind: Kind,
    mode: u32,
    mtime: u64,
}

/// Top-level directories of a `DENO_DIR` that belong to the machine that warmed it, left out of
/// snapshots: `node_compat_bin/` holds Deno's `node` shim, a link to the absolute path of the
/// warming machine's `deno` (made by `deno run`/`deno eval` where no `node` is on `PATH`), which a
/// restore must refuse (it points outside the cache) and which Deno makes again where it needs
/// it.
pub const MACHINE_LOCAL: [&[u8]; 1] = [b"node_compat_bin"];

/// A scanned tree: every entry to pack, in order, and what it adds up to.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    entries: Vec<Entry>,
    root_mode: u32,
    root_mtime: u64,
    /// Regular files (hard links included).
    pub files: u64,
    /// Total size of the regular files (each hard-linked file once).
    pub uncompressed_bytes: u64,
    /// Sockets, FIFOs and device files, which are left out: the first [`SKIPPED_NAMED`] of them.
    pub skipped: Vec<PathBuf>,
    /// How many were left out. They count against the entry limit as if they were packed: a
    /// warm step that makes millions meets a clean refusal, not an out-of-memory kill.
    pub skipped_count: u64,
    /// Mount points in the tree (another filesystem): left out with what they hold.
    pub mounts: Vec<PathBuf>,
    /// What a restore of the tree counts against its limits.
    pub budget: Budget,
    /// Who owns the entries.
    owners: Owners,
}

/// The user and group that own every entry of a tree: the user the warm step ran as, when it
/// wrote the whole cache. The controller runs the next restore as that user, so that the warm
/// step can write into what is restored (see `controller::settings::podspec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Who owns a tree's entries, as the scan goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Owners {
    #[default]
    Nobody,
    One(Owner),
    Several,
}

impl Owners {
    fn add(self, owner: Owner) -> Owners {
        match self {
            Owners::Nobody => Owners::One(owner),
            Owners::One(o) if o == owner => self,
            _ => Owners::Several,
        }
    }
}

impl Tree {
    /// Entries of every kind.
    pub fn entries(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The owner of every entry, if they have one owner.
    pub fn owner(&self) -> Option<Owner> {
        match self.owners {
            Owners::One(o) => Some(o),
            Owners::Nobody | Owners::Several => None,
        }
    }
}

/// What [`pack`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    pub entries: u64,
    pub files: u64,
    pub uncompressed_bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How many of the entries left out a scan names ([`Tree::skipped`]); the rest are counted.
pub const SKIPPED_NAMED: usize = 100;

/// Scans `root` without following symbolic links. Refuses links that could not be restored
/// safely (absolute, or leaving the tree) and trees that a restore with `limits` would refuse
/// (stopping at the first entry past a limit); leaves out sockets, FIFOs and devices.
pub fn scan(root: &Path, limits: &UnpackLimits) -> Result<Tree, PackError> {
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PackError::Missing(root.to_owned()));
        }
        Err(e) => return Err(io_err(root)(e)),
    };
    if !meta.is_dir() {
        return Err(PackError::NotADirectory(root.to_owned()));
    }
    let mut tree = Tree {
        root: root.to_owned(),
        entries: Vec::new(),
        root_mode: meta.mode() & 0o7777,
        root_mtime: meta.mtime().max(0) as u64,
        files: 0,
        uncompressed_bytes: 0,
        skipped: Vec::new(),
        skipped_count: 0,
        mounts: Vec::new(),
        budget: Budget::default(),
        owners: Owners::Nobody,
    };
    let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
    let root_dev = meta.dev();
    // A restore refuses these (its own files when DEST is a mount point, a volume's
    // `lost+found`): left out, as a restore's scratch left in a snapshotted DEST would be. So are
    // the warming machine's own shims (see `MACHINE_LOCAL`).
    let leave_out = |name: &[u8]| {
        policy::reserved(Path::new(OsStr::from_bytes(name))) || MACHINE_LOCAL.contains(&name)
    };
    let mut walker = Walk::new(root, limits, &leave_out);
    loop {
        let counted = Counted {
            entries: tree.budget.entries.saturating_add(tree.skipped_count),
            path_bytes: tree.budget.path_bytes,
        };
        let Some(item) = walker.next(counted) else {
            break;
        };
        let (path, _depth) = item.map_err(|e| match e {
            WalkError::Io { path, source } => PackError::Io { path, source },
            WalkError::OverLimit { path, limit } => PackError::OverLimit { path, limit },
        })?;
        let path = path.as_path();
        let rel = path
            .strip_prefix(root)
            .expect("the walk yields paths under its root");
        let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
        let ft = meta.file_type();
        // Another filesystem mounted in the cache directory (a Secret or a ServiceAccount token
        // mounted under `cacheDir`) is not the cache: never packed. Directories only: overlayfs
        // may report a lower layer's device for files, never for directories.
        if ft.is_dir() && meta.dev() != root_dev {
            tree.mounts.push(path.to_owned());
            continue;
        }
        let kind = if ft.is_dir() {
            walker.descend(path);
            Kind::Dir
        } else if ft.is_file() {
            tree.files += 1;
            let id = (meta.dev(), meta.ino());
            match inodes.get(&id) {
                Some(&first) if meta.nlink() > 1 => Kind::HardLink { first },
                _ => {
                    if meta.nlink() > 1 {
                        inodes.insert(id, tree.entries.len());
                    }
                    tree.uncompressed_bytes += meta.len();
                    Kind::File {
                        size: meta.len(),
                        id,
                    }
                }
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(io_err(path))?;
            policy::symlink_target(rel, target.as_os_str().as_bytes()).map_err(|why| {
                PackError::UnsafeLink {
                    path: path.to_owned(),
                    why,
                }
            })?;
            Kind::Symlink { target }
        } else {
            tree.skipped_count += 1;
            if tree.budget.entries.saturating_add(tree.skipped_count) > limits.max_entries {
                return Err(PackError::OverLimit {
                    path: path.to_owned(),
                    limit: OverLimit {
                        what: ENTRY_LIMIT,
                        limit: limits.max_entries,
                    },
                });
            }
            if tree.skipped.len() < SKIPPED_NAMED {
                tree.skipped.push(path.to_owned());
            }
            continue;
        };
        let (seen, target, size): (_, &[u8], _) = match &kind {
            Kind::Dir => (Seen::Dir, b"", 0),
            Kind::File { size, .. } => (Seen::File, b"", *size),
            Kind::Symlink { target } => (Seen::Symlink, target.as_os_str().as_bytes(), 0),
            Kind::HardLink { first } => (
                Seen::HardLink,
                tree.entries[*first].rel.as_os_str().as_bytes(),
                0,
            ),
        };
        tree.budget
            .packed_entry(rel.as_os_str().as_bytes(), seen, target, size, limits)
            .map_err(|limit| PackError::OverLimit {
                path: path.to_owned(),
                limit,
            })?;
        tree.owners = tree.owners.add(Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        });
        tree.entries.push(Entry {
            rel: rel.to_owned(),
            kind,
            mode: meta.mode() & 0o7777,
            mtime: meta.mtime().max(0) as u64,
        });
    }
    Ok(tree)
}

/// Writes `tree` as a tar stream to `out` (which is returned, for compressors to finish). With
/// `name_prefix`, every entry is placed under that directory (the legacy layout), which gets an
/// entry of its own first.
pub fn pack<W: Write>(
    tree: &Tree,
    out: W,
    name_prefix: Option<&Path>,
) -> Result<(W, PackStats), PackError> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut stats = PackStats::default();
    let name = |rel: &Path| match name_prefix {
        Some(p) => p.join(rel),
        None => rel.to_owned(),
    };
    if let Some(prefix) = name_prefix {
        let mut h = header(tar::EntryType::Directory, tree.root_mode, tree.root_mtime);
        builder
            .append_data(&mut h, prefix, io::empty())
            .map_err(PackError::Output)?;
        stats.entries += 1;
    }
    let mut opener = Opener::new(&tree.root)?;
    for entry in &tree.entries {
        let path = tree.root.join(&entry.rel);
        let target_name = name(&entry.rel);
        match &entry.kind {
            Kind::Dir => {
                let mut h = header(tar::EntryType::Directory, entry.mode, entry.mtime);
                builder
                    .append_data(&mut h, &target_name, io::empty())
                    .map_err(PackError::Output)?;
            }
            Kind::File { size, id } => {
                let file = opener.open(&entry.rel, *id, &path)?;
                let mut h = header(tar::EntryType::Regular, entry.mode, entry.mtime);
                h.set_size(*size);
                let mut reader = ExactReader {
                    inner: file,
                    remaining: *size,
                    error: None,
                };
                let result = builder.append_data(&mut h, &target_name, &mut reader);
                if let Some(why) = reader.error {
                    return Err(PackError::Changed { path, why });
                }
                result.map_err(PackError::Output)?;
                stats.files += 1;
                stats.uncompressed_bytes += size;
            }
            Kind::Symlink { target } => {
                let mut h = header(tar::EntryType::Symlink, entry.mode, entry.mtime);
                builder
                    .append_link(&mut h, &target_name, target)
                    .map_err(PackError::Output)?;
            }
            Kind::HardLink { first } => {
                let mut h = header(tar::EntryType::Link, entry.mode, entry.mtime);
                builder
                    .append_link(&mut h, &target_name, name(&tree.entries[*first].rel))
                    .map_err(PackError::Output)?;
                stats.files += 1;
            }
        }
        stats.entries += 1;
    }
    let out = builder.into_inner().map_err(PackError::Output)?;
    Ok((out, stats))
}

/// Opens a tree's files without following symbolic links anywhere below the root: each directory
/// is opened below its parent's descriptor with `O_NOFOLLOW` (kept open while its entries are
/// packed, which come right after it), and each file below its directory's. A file or directory
/// swapped for a symbolic link since the scan is refused, not followed; a file swapped for a FIFO
/// is opened without blocking and refused, as is any file that is not the one scanned.
struct Opener {
    root: OwnedFd,
    /// The directories open, outermost first, each with its path below the root.
    dirs: Vec<(PathBuf, OwnedFd)>,
}

impl Opener {
    fn new(root: &Path) -> Result<Self, PackError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root_fd =
            rustix::fs::open(root, flags, Mode::empty()).map_err(|e| io_err(root)(e.into()))?;
        Ok(Self {
            root: root_fd,
            dirs: Vec::new(),
        })
    }

    /// Opens the regular file `rel`, which must be the file `id` (device, inode) scanned.
    fn open(&mut self, rel: &Path, id: (u64, u64), path: &Path) -> Result<File, PackError> {
        let changed = |why| PackError::Changed {
            path: path.to_owned(),
            why,
        };
        let refused = |e: rustix::io::Errno| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
                changed("a symbolic link or a file is now on its path")
            }
            rustix::io::Errno::NOENT => changed("it was removed"),
            e => io_err(path)(e.into()),
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        while self
            .dirs
            .last()
            .is_some_and(|(p, _)| !parent.starts_with(p))
        {
            self.dirs.pop();
        }
        let open_dirs = self.dirs.len();
        for name in parent.components().skip(open_dirs) {
            let at = self
                .dirs
                .last()
                .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd =
                rustix::fs::openat(at, name.as_os_str(), flags, Mode::empty()).map_err(refused)?;
            let below = self.dirs.last().map_or(PathBuf::new(), |(p, _)| p.clone());
            self.dirs.push((below.join(name), fd));
        }
        let at = self
            .dirs
            .last()
            .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
        let name = rel.file_name().ok_or_else(|| changed("it has no name"))?;
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(at, name, flags, Mode::empty()).map_err(refused)?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| io_err(path)(e.into()))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
            || (stat.st_dev, stat.st_ino) != id
        {
            return Err(changed("it was replaced"));
        }
        Ok(File::from(fd))
    }
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h
}

/// Reads exactly `remaining` bytes: a file that shrank or grew since it was scanned would
/// otherwise make a tar entry whose data does not match its header.
struct ExactReader {
    inner: File,
    remaining: u64,
    error: Option<&'static str>,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // One probe for growth past the scanned size.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? > 0 {
                self.error = Some("it grew");
                return Err(io::Error::other("file grew while being packed"));
            }
            return Ok(0);
        }
        let max = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            self.error = Some("it shrank");
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being packed",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_the_one_user_and_group_of_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("npm/registry")).unwrap();
        std::fs::write(root.join("npm/registry/a.js"), "a").unwrap();
        std::os::unix::fs::symlink("registry/a.js", root.join("npm/link")).unwrap();
        let limits = UnpackLimits::DEFAULT;
        // Who this test is: the owner of what it just made.
        let made = std::fs::metadata(root.join("npm/registry/a.js")).unwrap();
        let me = Owner {
            uid: made.uid(),
            gid: made.gid(),
        };
        assert_eq!(scan(root, &limits).unwrap().owner(), Some(me));
        assert_eq!(
            scan(&root.join("npm/registry"), &limits).unwrap().owner(),
            Some(me)
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(scan(empty.path(), &limits).unwrap().owner(), None);
        if me.uid != 0 {
            return; // changing owners takes root
        }
        // The warm step's user wrote it all (the root directory itself is the volume's).
        let all = |uid, gid| {
            for e in walkdir::WalkDir::new(root).min_depth(1) {
                std::os::unix::fs::lchown(e.unwrap().path(), Some(uid), Some(gid)).unwrap();
            }
        };
        all(1000, 1001);
        std::os::unix::fs::chown(root, Some(0), Some(0)).unwrap();
        let warm = Owner {
            uid: 1000,
            gid: 1001,
        };
        assert_eq!(scan(root, &limits).unwrap().owner(), Some(warm));
        // One entry of another user (a link included) or group: no one owner.
        std::os::unix::fs::lchown(root.join("npm/link"), Some(0), None).unwrap();
        assert_eq!(scan(root, &limits).unwrap().owner(), None);
        all(1000, 1001);
        std::os::unix::fs::lchown(root.join("npm/registry/a.js"), None, Some(0)).unwrap();
        assert_eq!(scan(root, &limits).unwrap().owner(), None);
    }

    #[test]
    fn scan_leaves_out_reserved_top_level_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [".sitecache-staging-01", "lost+found", "deps/lost+found"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join(".sitecache-lock"), "").unwrap();
        std::fs::write(root.join(".sitecache-staging-01/f"), "").unwrap();
        std::fs::write(root.join("deps/.sitecache-lock"), "").unwrap();
        let tree = scan(root, &UnpackLimits::DEFAULT).unwrap();
        let rels: Vec<&Path> = tree.entries.iter().map(|e| e.rel.as_path()).collect();
        assert_eq!(
            rels,
            [
                Path::new("deps"),
                Path::new("deps/.sitecache-lock"),
                Path::new("deps/lost+found")
            ]
        );
    }

    #[test]
    fn scan_leaves_out_denos_node_shim_of_the_warming_machine() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("node_compat_bin")).unwrap();
        std::os::unix::fs::symlink("/usr/local/bin/deno", root.join("node_compat_bin/node"))
            .unwrap();
        // Only the top-level one: a package's own directory of that name is the package's.
        std::fs::create_dir_all(root.join("npm/node_compat_bin")).unwrap();
        std::fs::write(root.join("npm/node_compat_bin/x.js"), "").unwrap();
        let tree = scan(root, &UnpackLimits::DEFAULT).unwrap();
        let rels: Vec<&Path> = tree.entries.iter().map(|e| e.rel.as_path()).collect();
        assert_eq!(
            rels,
            [
                Path::new("npm"),
                Path::new("npm/node_compat_bin"),
                Path::new("npm/node_compat_bin/x.js")
            ]
        );
    }

    /// A tree scanned, then changed by `change` before it is packed: the pack's error.
    fn pack_after(change: impl FnOnce(&Path)) -> PackError {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("deps/x")).unwrap();
        std::fs::write(root.join("deps/x/mod.js"), "ours").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("x")).unwrap();
        std::fs::write(outside.join("x/mod.js"), "evil").unwrap();
        let tree = scan(&root, &UnpackLimits::DEFAULT).unwrap();
        change(&root);
        // On a thread: a pack that blocks on a FIFO fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(pack(&tree, Vec::new(), None).map(|(out, _)| out));
        });
        let packed = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the pack blocked");
        let out = match packed {
            Err(e) => return e,
            Ok(out) => out,
        };
        panic!(
            "packed after the change (the outside file inside: {})",
            out.windows(4).any(|w| w == b"evil")
        );
    }

    #[test]
    fn a_file_swapped_for_a_link_after_the_scan_is_refused_not_followed() {
        let e = pack_after(|root| {
            let file = root.join("deps/x/mod.js");
            std::fs::remove_file(&file).unwrap();
            std::os::unix::fs::symlink(root.join("../outside/x/mod.js"), &file).unwrap();
        });
        assert!(matches!(e, PackError::Changed { .. }), "{e}");
    }

    #[test]
    fn a_directory_swapped_for_a_link_after_the_scan_is_refused_not_followed() {
        let e = pack_after(|root| {
            std::fs::remove_dir_all(root.join("deps")).unwrap();
            std::os::unix::fs::symlink(root.join("../outside"), root.join("deps")).unwrap();
        });
        assert!(
            matches!(e, PackError::Changed { why, .. } if why.contains("symbolic link")),
            "{e}"
        );
    }

    #[test]
    fn a_file_swapped_for_a_fifo_after_the_scan_is_refused_without_blocking() {
        let e = pack_after(|root| {
            let file = root.join("deps/x/mod.js");
            std::fs::remove_file(&file).unwrap();
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &file,
                FileType::Fifo,
                Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap();
        });
        assert!(
            matches!(
                e,
                PackError::Changed {
                    why: "it was replaced",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn what_is_left_out_counts_against_the_entry_limit_and_only_the_first_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("f"), "x").unwrap();
        for i in 0..150 {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                root.join(format!("fifo-{i}")),
                FileType::Fifo,
                Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap();
        }
        let limits = |max_entries| UnpackLimits {
            max_entries,
            ..UnpackLimits::DEFAULT
        };
        let tree = scan(root, &limits(151)).unwrap();
        assert_eq!(tree.entries(), 1);
        assert_eq!(tree.skipped_count, 150);
        assert_eq!(tree.skipped.len(), SKIPPED_NAMED);
        let e = scan(root, &limits(150)).unwrap_err();
        assert!(
            e.to_string()
                .contains("FIFOs and devices a snapshot leaves out"),
            "{e}"
        );
    }

    /// A directory of more names than the limits allow is refused while it is read, naming the
    /// directory (an earlier build read all its names into memory first, and named the entry
    /// after the limit).
    #[test]
    fn a_directory_past_the_entry_limit_is_refused_while_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::create_dir(&big).unwrap();
        for i in 0..300 {
            std::fs::write(big.join(format!("f{i:03}")), "").unwrap();
        }
        let limits = UnpackLimits {
            max_entries: 100,
            ..UnpackLimits::DEFAULT
        };
        match scan(dir.path(), &limits) {
            Err(PackError::OverLimit { path, limit }) => {
                assert_eq!(path, big);
                assert_eq!(limit.what, ENTRY_LIMIT);
            }
            other => panic!("not refused as it should be: {other:?}"),
        }
    }

    #[test]
    fn a_tree_a_restore_would_refuse_is_refused_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b/c/d")).unwrap();
        std::fs::write(root.join("a/b/c/d/f"), "x").unwrap();
        let limits = |max_depth, max_entries| UnpackLimits {
            max_depth,
            max_entries,
            ..UnpackLimits::DEFAULT
        };
        assert!(scan(root, &limits(5, 5)).is_ok());
        let e = scan(root, &limits(4, 5)).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("the path depth limit (components): 4"),
            "{text}"
        );
        assert!(text.contains("a/b/c/d/f"), "{text}");
        let e = scan(root, &limits(5, 4)).unwrap_err().to_string();
        assert!(e.contains("the entry limit"), "{e}");
        assert!(e.contains("--max-entries"), "{e}");
    }
}
