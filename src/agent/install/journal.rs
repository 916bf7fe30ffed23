//! The journal of an install that takes more than one rename: written (atomically, by a rename)
//! once the staged tree has checked out and before DEST is touched, removed when DEST is whole
//! again. A journal left behind means a restore died half way; the next one rolls it forward.

use std::io;

use serde::{Deserialize, Serialize};

use super::layout::Layout;

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
    /// The journal at `layout`, if an install left one.
    pub fn read(layout: &Layout) -> io::Result<Option<Journal>> {
        let path = layout.journal();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let unreadable = |why: String| {
            io::Error::other(format!(
                "{}: {why}; it is an interrupted install's journal, which a restore rolls \
                 forward: remove it to let restores go on",
                path.display()
            ))
        };
        let journal: Journal =
            serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
        let (Journal::Renames { staging, old } | Journal::Entries { staging, old, .. }) = &journal;
        for token in [staging, old] {
            if !is_token(token) {
                return Err(unreadable(format!(
                    "{token:?} is not a scratch tree's token"
                )));
            }
        }
        Ok(Some(journal))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a journal serializes")
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
