//! The journal of an install that takes more than one rename: written (atomically, by a rename)
//! once the staged tree has checked out and before DEST is touched, removed when DEST is whole
//! again. A journal left behind means a restore died half way; the next one rolls it forward.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::layout::Layout;
use super::remove::remove_tree;

/// The largest journal a restore reads: one an install wrote is under 200 bytes.
pub const MAX_JOURNAL: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Journal {
    /// DEST is moved to the old tree, then staging to DEST (no atomic exchange here).
    Renames { staging: String, old: String },
    /// DEST cannot be renamed (a mount point, an overlayfs lower directory): its entries are
    /// moved out to the old tree, then staging's moved in.
    Entries {
        staging: String,
        old: String,
        phase: Phase,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Every entry still in DEST belongs to the old tree.
    Evicting,
    /// Every entry in DEST belongs to the new tree.
    Moving,
}

impl Journal {
    /// The journal at `layout`, if an install left one. The journal and its `.new` are opened
    /// relative to the install's directory, never through a link, never blocking. What is there
    /// under the journal's name and is not a journal an install wrote (a link, a FIFO, a device,
    /// a directory, a file over [`MAX_JOURNAL`] bytes, or one that names anything but scratch
    /// trees: planted by whatever can write beside DEST, or inside it when DEST is a mount point)
    /// is removed, not obeyed. An install writes its journal whole (beside it, then renamed), so
    /// nothing it wrote is ever partial.
    pub fn read(layout: &Layout) -> io::Result<Option<Journal>> {
        let home = open_home(layout)?;
        let name = layout.journal_name();
        let planted = match read_bounded(&home, &name)? {
            Found::Missing => return Ok(None),
            Found::Bytes(bytes) => match parse(&bytes) {
                Ok(journal) => return Ok(Some(journal)),
                Err(why) => why,
            },
            Found::Planted(why) => why,
        };
        tracing::warn!(
            path = %layout.journal().display(),
            "removing what is not an install's journal: {planted}"
        );
        remove_entry(&home, layout, &name)?;
        Ok(None)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a journal serializes")
    }
}

/// Writes `journal` at `layout` at once: into a fresh `.new` beside it (created exclusively, so
/// never through a link planted under that name, which is removed), then renamed over the
/// journal.
pub fn write(layout: &Layout, journal: &Journal) -> io::Result<()> {
    let home = open_home(layout)?;
    let name = layout.journal_name();
    let mut fresh = name.clone();
    fresh.push(".new");
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o600);
    let fd = match rustix::fs::openat(&home, &fresh, flags, mode) {
        Err(Errno::EXIST) => {
            remove_entry(&home, layout, &fresh)?;
            rustix::fs::openat(&home, &fresh, flags, mode)?
        }
        other => other?,
    };
    File::from(fd).write_all(&journal.to_bytes())?;
    rustix::fs::renameat(&home, &fresh, &home, &name)?;
    Ok(())
}

/// The install's directory (DEST's parent, or DEST when it is a mount point), not through a link.
fn open_home(layout: &Layout) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::open(&layout.home, flags, Mode::empty())?)
}

enum Found {
    Missing,
    Bytes(Vec<u8>),
    /// Something that is not a journal an install wrote, and why.
    Planted(String),
}

/// The regular file `name` in `home`, at most [`MAX_JOURNAL`] bytes of it; anything else is
/// [`Found::Planted`]. Its kind is looked at before it is opened (opening a device or a FIFO may
/// block or act), and again once it is open.
fn read_bounded(home: &OwnedFd, name: &OsStr) -> io::Result<Found> {
    let planted = |why: String| Ok(Found::Planted(why));
    let seen = match rustix::fs::statat(home, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(Found::Missing),
        Err(e) => return Err(e.into()),
    };
    let kind = FileType::from_raw_mode(seen.st_mode);
    if kind != FileType::RegularFile {
        return planted(format!("{} (not a regular file)", describe(kind)));
    }
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(home, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Found::Missing),
        Err(Errno::LOOP | Errno::NXIO) => return planted("swapped for a link or a socket".into()),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return planted(format!(
            "{} (not a regular file)",
            describe(FileType::from_raw_mode(st.st_mode))
        ));
    }
    let mut bytes = Vec::new();
    File::from(fd)
        .take(MAX_JOURNAL + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_JOURNAL {
        return planted(format!("larger than {MAX_JOURNAL} bytes"));
    }
    Ok(Found::Bytes(bytes))
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Symlink => "a symbolic link",
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        _ => "a file of an unknown kind",
    }
}

/// A journal, or why the bytes are not one.
fn parse(bytes: &[u8]) -> Result<Journal, String> {
    let journal: Journal =
        serde_json::from_slice(bytes).map_err(|e| format!("not a journal: {e}"))?;
    let (Journal::Renames { staging, old } | Journal::Entries { staging, old, .. }) = &journal;
    for token in [staging, old] {
        if !is_token(token) {
            return Err(format!("{token:?} is not a scratch tree's token"));
        }
    }
    Ok(journal)
}

/// Removes the entry `name` of `home`, whatever it is (a directory with what it holds); a link
/// is removed, never followed.
fn remove_entry(home: &OwnedFd, layout: &Layout, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(home, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => remove_tree(&layout.home.join(name)),
        Err(e) => Err(e.into()),
    }
}

/// A random token that names a scratch tree.
pub fn token() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Whether `s` could be a [`token`]: a journal names nothing else.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
