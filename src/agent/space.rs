//! Whether a generation fits where it is about to be restored, checked before anything is
//! downloaded: a restore that cannot fit is refused at once (`no-space`), not when the disk (or,
//! on a tmpfs, the container's memory) runs out part way.
//!
//! What a generation needs is known from its manifest: its files' bytes, and its entries. Each
//! entry is counted for one 4 KiB block more (a file's last partial block, a directory), an
//! upper bound on filesystems with blocks of 4 KiB or less. The tree DEST holds stays until the
//! new one is in place, so the space must be free beside it.

use std::io;
use std::path::Path;

/// What a tree to be restored needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub bytes: u64,
    pub inodes: u64,
}

impl Need {
    /// Block size each entry is counted for beyond its bytes.
    pub const BLOCK: u64 = 4096;

    /// What a tree of `file_bytes` bytes of regular files and `entries` entries needs.
    pub fn of(file_bytes: u64, entries: u64) -> Need {
        Need {
            bytes: file_bytes.saturating_add(entries.saturating_mul(Self::BLOCK)),
            inodes: entries,
        }
    }
}

/// What a filesystem (and, for a tmpfs, the memory of the container that writes it) has free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Free {
    /// Bytes an unprivileged process may still write.
    pub bytes: u64,
    /// Inodes it may still create; `None` where the filesystem does not count them.
    pub inodes: Option<u64>,
    /// For a tmpfs: the memory the container's cgroup may still use, less what the restore
    /// itself may use ([`RESTORE_MEMORY`]); `None` without a limit or off a tmpfs.
    pub memory: Option<u64>,
}

/// The memory a restore itself uses at most (docs/runner.md, "Limits"): on a tmpfs, the tree's
/// pages and the restore's own are charged to the same cgroup.
pub const RESTORE_MEMORY: u64 = 256 * 1024 * 1024;

/// Why a tree does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Shortfall {
    #[error(
        "the generation needs {need} bytes ({what}) and {dir} has {free} free; nothing was \
         downloaded"
    )]
    Space {
        dir: String,
        what: &'static str,
        need: u64,
        free: u64,
    },
}

impl Free {
    /// What `dir`'s filesystem has free, for an unprivileged writer.
    pub fn of(dir: &Path) -> io::Result<Free> {
        let vfs = rustix::fs::statvfs(dir)?;
        let bytes = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        // A filesystem that does not count inodes (btrfs, some overlays) reports none at all.
        let inodes = (vfs.f_files > 0).then_some(vfs.f_favail);
        let memory = if is_tmpfs(dir)? {
            cgroup_memory_left().map(|left| left.saturating_sub(RESTORE_MEMORY))
        } else {
            None
        };
        Ok(Free {
            bytes,
            inodes,
            memory,
        })
    }

    /// Whether `need` fits; the error names `dir` and what is short.
    pub fn check(&self, need: Need, dir: &Path) -> Result<(), Shortfall> {
        let short = |what, need, free| Shortfall::Space {
            dir: dir.display().to_string(),
            what,
            need,
            free,
        };
        if need.bytes > self.bytes {
            return Err(short("disk space", need.bytes, self.bytes));
        }
        if let Some(inodes) = self.inodes
            && need.inodes > inodes
        {
            return Err(short("inodes", need.inodes, inodes));
        }
        if let Some(memory) = self.memory
            && need.bytes > memory
        {
            return Err(short(
                "the container's memory, which a tmpfs is written to, less 256 MiB for the restore",
                need.bytes,
                memory,
            ));
        }
        Ok(())
    }
}

fn is_tmpfs(dir: &Path) -> io::Result<bool> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let fs = rustix::fs::statfs(dir)?;
    #[allow(clippy::unnecessary_cast)] // its type differs between targets
    Ok(fs.f_type as i64 == TMPFS_MAGIC)
}

/// The memory this process's cgroup may still use (its limit less its usage), cgroup v2 or v1;
/// `None` without a limit or where it cannot be read.
fn cgroup_memory_left() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let (limit, usage) = if let Some(limit) = read("/sys/fs/cgroup/memory.max") {
        (limit, read("/sys/fs/cgroup/memory.current")?)
    } else {
        (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
            read("/sys/fs/cgroup/memory/memory.usage_in_bytes")?,
        )
    };
    memory_left(&limit, &usage)
}

/// A cgroup's limit less its usage, from the files' contents: `max` (v2) or a limit near 2^63
/// (v1's "none") is no limit.
fn memory_left(limit: &str, usage: &str) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    Some(limit.saturating_sub(usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_counts_a_block_per_entry() {
        assert_eq!(
            Need::of(10, 3),
            Need {
                bytes: 10 + 3 * 4096,
                inodes: 3
            }
        );
        assert_eq!(Need::of(u64::MAX, u64::MAX).bytes, u64::MAX);
    }

    #[test]
    fn cgroup_limits() {
        assert_eq!(memory_left("max\n", "100\n"), None);
        assert_eq!(memory_left("9223372036854771712\n", "100\n"), None);
        assert_eq!(memory_left("1000\n", "100\n"), Some(900));
        assert_eq!(memory_left("1000", "2000"), Some(0));
        assert_eq!(memory_left("lots", "1"), None);
    }

    #[test]
    fn each_shortfall_is_named() {
        let free = Free {
            bytes: 1 << 30,
            inodes: Some(1000),
            memory: Some(1 << 20),
        };
        let dir = Path::new("/cache");
        let e = free.check(Need::of(2 << 30, 1), dir).unwrap_err();
        assert!(e.to_string().contains("disk space"), "{e}");
        assert!(e.to_string().contains("/cache"), "{e}");
        let e = free.check(Need::of(0, 2000), dir).unwrap_err();
        assert!(e.to_string().contains("inodes"), "{e}");
        let e = free.check(Need::of(2 << 20, 1), dir).unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
        let no_memory_limit = Free {
            memory: None,
            ..free
        };
        assert_eq!(no_memory_limit.check(Need::of(2 << 20, 1), dir), Ok(()));
    }

    #[test]
    fn the_free_space_of_a_real_filesystem() {
        // A real filesystem: the test's temporary directory (statvfs works anywhere).
        let dir = tempfile::tempdir().unwrap();
        let free = Free::of(dir.path()).unwrap();
        assert!(free.bytes > 0);
        assert!(free.check(Need::of(u64::MAX / 2, 1), dir.path()).is_err());
    }
}
