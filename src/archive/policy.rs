//! What an archive entry may be: the rules shared by packing (refuse to make an archive that
//! could not be restored) and unpacking (refuse anything that could write outside the
//! destination).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why an entry path or link target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("empty path")]
    Empty,
    #[error("absolute path")]
    Absolute,
    #[error("'..' component")]
    ParentComponent,
    #[error("link target {0:?} points outside the destination")]
    LinkEscapes(String),
    #[error("absolute link target {0:?}")]
    AbsoluteLink(String),
    #[error("path contains a NUL byte")]
    Nul,
    #[error("top-level name reserved for the restore's own files (`.sitecache-*`, `lost+found`)")]
    Reserved,
}

/// The start of the top-level names a restore keeps for itself in DEST when DEST is a mount
/// point (its lock, journal and scratch trees).
pub const RESERVED_PREFIX: &str = ".sitecache-";

/// Whether a clean relative path is under a reserved top-level name: the restore's own
/// ([`RESERVED_PREFIX`]) or the filesystem's (`lost+found`, at the root of a volume). Snapshots
/// leave such entries out and restores refuse them, so a tree never collides with an install's
/// files and an install never moves a volume's `lost+found`.
pub fn reserved(rel: &Path) -> bool {
    rel.components().next().is_some_and(|first| {
        let name = first.as_os_str().as_bytes();
        name.starts_with(RESERVED_PREFIX.as_bytes()) || name == b"lost+found"
    })
}

/// Checks an entry path (as bytes, from the archive) and returns it as a clean relative path:
/// no root, no `..`, `.` components dropped. An archive root entry (`.` or `./`) gives `Ok(None)`.
pub fn entry_path(raw: &[u8]) -> Result<Option<PathBuf>, PolicyError> {
    if raw.is_empty() {
        return Err(PolicyError::Empty);
    }
    if raw.contains(&0) {
        return Err(PolicyError::Nul);
    }
    // Most paths are clean already (`a/b`, a directory's with a trailing `/`): taken as they are.
    let trimmed = raw.strip_suffix(b"/").unwrap_or(raw);
    if !trimmed.is_empty()
        && trimmed
            .split(|&b| b == b'/')
            .all(|name| !name.is_empty() && name != b"." && name != b"..")
    {
        return Ok(Some(PathBuf::from(OsStr::from_bytes(trimmed))));
    }
    let path = Path::new(OsStr::from_bytes(raw));
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => clean.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err(PolicyError::ParentComponent),
            Component::RootDir | Component::Prefix(_) => return Err(PolicyError::Absolute),
        }
    }
    Ok((!clean.as_os_str().is_empty()).then_some(clean))
}

/// Checks the target of a symbolic link at `link` (a clean relative path): it must be relative,
/// of the form `../../down/the/tree` (`..` only as a leading run), and not climb above the root.
///
/// That form makes the check hold physically, not just lexically: the unpacker refuses entries
/// below a symbolic link, so the link's own directory and its ancestors are real directories and
/// the leading `..` run stays inside; every name after it descends, and a symbolic link met on
/// the way is itself of this form. A `..` after a name (`x/..`) is refused because `x` could be a
/// link to `.`, making `x/..` the root's parent.
pub fn symlink_target(link: &Path, target: &[u8]) -> Result<(), PolicyError> {
    let shown = || String::from_utf8_lossy(target).into_owned();
    if target.is_empty() {
        return Err(PolicyError::Empty);
    }
    if target.contains(&0) {
        return Err(PolicyError::Nul);
    }
    let target_path = Path::new(OsStr::from_bytes(target));
    if target_path.is_absolute() {
        return Err(PolicyError::AbsoluteLink(shown()));
    }
    // Depth of the link's directory below the root.
    let mut depth = link.components().count().saturating_sub(1) as i64;
    let mut descended = false;
    for component in target_path.components() {
        match component {
            Component::Normal(_) => descended = true,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 || descended {
                    return Err(PolicyError::LinkEscapes(shown()));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(PolicyError::AbsoluteLink(shown()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_entry_paths() {
        assert_eq!(
            entry_path(b"a/b.txt").unwrap(),
            Some(PathBuf::from("a/b.txt"))
        );
        assert_eq!(entry_path(b"./a/./b/").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(entry_path(b"a/b/").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(entry_path(b"a//b//").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(
            entry_path(b"a/.b/..c").unwrap(),
            Some(PathBuf::from("a/.b/..c"))
        );
        assert_eq!(entry_path(b"./").unwrap(), None);
        assert_eq!(entry_path(b".").unwrap(), None);
    }

    #[test]
    fn reserved_names_are_top_level_ones() {
        for rel in [
            ".sitecache-lock",
            ".sitecache-staging-1/a",
            "lost+found",
            "lost+found/x",
        ] {
            assert!(reserved(Path::new(rel)), "{rel}");
        }
        for rel in [
            "a/.sitecache-lock",
            "a/lost+found",
            ".sitecache",
            "lost+found2",
            "deps",
        ] {
            assert!(!reserved(Path::new(rel)), "{rel}");
        }
    }

    #[test]
    fn refused_entry_paths() {
        assert_eq!(entry_path(b"/etc/passwd"), Err(PolicyError::Absolute));
        assert_eq!(entry_path(b"a/../../x"), Err(PolicyError::ParentComponent));
        assert_eq!(entry_path(b".."), Err(PolicyError::ParentComponent));
        assert_eq!(entry_path(b"a/b/../"), Err(PolicyError::ParentComponent));
        assert_eq!(entry_path(b"/"), Err(PolicyError::Absolute));
        assert_eq!(entry_path(b""), Err(PolicyError::Empty));
        assert_eq!(entry_path(b"a\0b"), Err(PolicyError::Nul));
    }

    #[test]
    fn symlink_targets() {
        let link = Path::new("npm/pkg/node_modules/dep");
        assert!(symlink_target(link, b"../../other/1.0.0").is_ok());
        assert!(symlink_target(link, b"../../../top").is_ok());
        assert!(symlink_target(Path::new("a"), b"b/c").is_ok());
        assert!(symlink_target(Path::new("a"), b".").is_ok());
        assert!(matches!(
            symlink_target(link, b"../../../../escape"),
            Err(PolicyError::LinkEscapes(_))
        ));
        assert!(matches!(
            symlink_target(Path::new("a"), b".."),
            Err(PolicyError::LinkEscapes(_))
        ));
        assert!(matches!(
            symlink_target(Path::new("a"), b"/etc/passwd"),
            Err(PolicyError::AbsoluteLink(_))
        ));
        // `x/..` is refused even when it looks inside: `x` could be a link to `.`.
        assert!(matches!(
            symlink_target(Path::new("a"), b"x/../y"),
            Err(PolicyError::LinkEscapes(_))
        ));
        assert!(matches!(
            symlink_target(Path::new("a"), b"../x"),
            Err(PolicyError::LinkEscapes(_))
        ));
    }
}
