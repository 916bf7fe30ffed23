//! What an unpack counts against its limits, apart from the tree it builds: entries, bytes on
//! disk, and the memory of the paths it keeps. Shared with the snapshot's scan
//! ([`Budget::packed_entry`]), so that a snapshot refuses, with the same limits, every tree a
//! restore would refuse: nothing is committed that runners cannot restore.

use super::UnpackLimits;

/// Disk space a directory is counted for against the unpacked-size limit.
pub const DIR_BYTES: u64 = 4096;

/// Memory a path held costs beyond its bytes (a map slot, an allocation).
pub const PATH_OVERHEAD: u64 = 64;

/// What the entry limit is called wherever it is met: an unpack counts the directories it
/// creates as missing parents, a snapshot the sockets, FIFOs and devices it leaves out.
pub const ENTRY_LIMIT: &str = "the entry limit (directories created as missing parents, and sockets, FIFOs and devices a snapshot leaves out, included)";

/// The entries an archive's manifest declares, met: the archive is corrupt, not too large
/// ([`super::UnpackError::Undeclared`]).
pub const DECLARED_ENTRIES: &str = "the entries its manifest declares";

/// What the limit on the bytes of the paths held is called wherever it is met.
pub const PATH_BYTES_LIMIT: &str = "the limit on the bytes of all paths (memory)";

/// A limit that was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {limit}")]
pub struct OverLimit {
    pub what: &'static str,
    pub limit: u64,
}

/// What an entry is, for what it costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Dir,
    File,
    Symlink,
    HardLink,
}

/// The running totals, each checked against its limit as it grows (checked arithmetic: no
/// size, however large, wraps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Entries, implied directories included.
    pub entries: u64,
    /// Bytes of the paths held (entries and directories, links' targets), with their overhead.
    pub path_bytes: u64,
    /// Bytes on disk: regular files, and [`DIR_BYTES`] per directory.
    pub disk_bytes: u64,
}

impl Budget {
    /// Checks an entry's path against the path limits and counts the entry.
    pub fn admit(&mut self, rel: &[u8], limits: &UnpackLimits) -> Result<(), OverLimit> {
        if rel.len() > limits.max_path {
            return Err(OverLimit {
                what: "the path length limit (bytes)",
                limit: limits.max_path as u64,
            });
        }
        let depth = rel.iter().filter(|&&b| b == b'/').count() + 1;
        if depth > limits.max_depth {
            return Err(OverLimit {
                what: "the path depth limit (components)",
                limit: limits.max_depth as u64,
            });
        }
        self.count_entry(limits)
    }

    /// Counts one entry more (an implied directory, or through [`Budget::admit`]), before it
    /// is made.
    pub fn count_entry(&mut self, limits: &UnpackLimits) -> Result<(), OverLimit> {
        self.entries += 1;
        if self.entries > limits.max_entries {
            return Err(OverLimit {
                what: ENTRY_LIMIT,
                limit: limits.max_entries,
            });
        }
        if let Some(declared) = limits.declared
            && self.entries > declared.entries
        {
            return Err(OverLimit {
                what: DECLARED_ENTRIES,
                limit: declared.entries,
            });
        }
        Ok(())
    }

    /// Counts `n` bytes more on disk, within the unpacked-size limit: called before they are
    /// written (a file) or made (a directory).
    pub fn count_disk(&mut self, n: u64, limits: &UnpackLimits) -> Result<(), OverLimit> {
        match self.disk_bytes.checked_add(n) {
            Some(total) if total <= limits.max_bytes => {
                self.disk_bytes = total;
                Ok(())
            }
            _ => Err(OverLimit {
                what: "the unpacked size limit (bytes, directories at 4 KiB each)",
                limit: limits.max_bytes,
            }),
        }
    }

    /// Counts a path of `n` bytes more held in memory (with its bookkeeping).
    pub fn hold(&mut self, n: usize, limits: &UnpackLimits) -> Result<(), OverLimit> {
        self.path_bytes = self.path_bytes.saturating_add(n as u64 + PATH_OVERHEAD);
        if self.path_bytes > limits.max_path_bytes {
            return Err(OverLimit {
                what: PATH_BYTES_LIMIT,
                limit: limits.max_path_bytes,
            });
        }
        Ok(())
    }

    /// Checks a symbolic link's target against the link length limit.
    pub fn link(target: &[u8], limits: &UnpackLimits) -> Result<(), OverLimit> {
        if target.len() > limits.max_link {
            return Err(OverLimit {
                what: "the link target length limit (bytes)",
                limit: limits.max_link as u64,
            });
        }
        Ok(())
    }

    /// Counts what an unpack counts for one entry of a packed tree: `rel` in canonical form,
    /// every directory above it an earlier entry (so none is implied). `target` is a link's
    /// target (a symbolic link's, or the path of a hard link's file); `size` a file's bytes.
    /// The unpacker's property tests check that its totals for a packed tree are these.
    pub fn packed_entry(
        &mut self,
        rel: &[u8],
        seen: Seen,
        target: &[u8],
        size: u64,
        limits: &UnpackLimits,
    ) -> Result<(), OverLimit> {
        self.admit(rel, limits)?;
        // Recorded as seen.
        self.hold(rel.len(), limits)?;
        match seen {
            Seen::Dir => {
                // Created, then kept for its mode and time.
                self.count_disk(DIR_BYTES, limits)?;
                self.hold(rel.len(), limits)?;
                self.hold(rel.len(), limits)
            }
            Seen::File => self.count_disk(size, limits),
            Seen::Symlink => {
                Self::link(target, limits)?;
                self.hold(rel.len() + target.len(), limits)
            }
            Seen::HardLink => self.hold(rel.len() + target.len(), limits),
        }
    }
}
