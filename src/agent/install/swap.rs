//! The install state machine. Each path keeps DEST wholly the old tree or wholly the new one
//! across a kill at any step, with the journal's help where one rename cannot do it:
//!
//! ```text
//! DEST missing      rename(staging, DEST)                                   one step
//! DEST a directory  exchange(staging, DEST); the old tree is left at the    one step
//!                   staging name, for the sweep
//!   no exchange     journal{renames} → rename(DEST, old) → rename(staging, DEST) → no journal
//!   DEST pinned     (a mount point, or EXDEV/EBUSY from the exchange: an overlayfs lower
//!                   directory, a bind mount)
//!                   mkdir old → journal{entries, evicting} → each entry of DEST to old (or
//!                   removed where it cannot move) → journal{entries, moving} → each entry of
//!                   staging into DEST → no journal → staging removed
//! ```
//!
//! Every journal is written after the staged tree checked out, so recovery rolls forward: it
//! finishes the install the journal describes.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use rustix::io::Errno;

use super::journal::{self, Journal, Phase};
use super::layout::{Layout, OLD, STAGING};
use super::ops::Ops;
use crate::archive::policy;

/// Finishes the install a dead restore left a journal for, if any. Called with the install
/// lock held, before anything else touches DEST.
pub fn recover(layout: &Layout, ops: &mut Ops) -> io::Result<()> {
    match Journal::read(layout)? {
        None => Ok(()),
        Some(Journal::Renames { staging, old }) => finish_renames(layout, ops, &staging, &old),
        Some(Journal::Entries {
            staging,
            old,
            phase,
        }) => finish_entries(layout, ops, &staging, &old, phase),
    }
}

/// Puts the staging tree named `token` at DEST. Called with the install lock held.
pub fn install(layout: &Layout, token: &str, ops: &mut Ops) -> io::Result<()> {
    recover(layout, ops)?;
    if layout.inside {
        return entries(layout, ops, token);
    }
    let staging = layout.scratch(STAGING, token);
    match std::fs::symlink_metadata(&layout.dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => ops.rename(&staging, &layout.dest),
        Err(e) => Err(e),
        Ok(m) if !m.is_dir() => Err(io::Error::other(format!(
            "{} exists and is not a directory",
            layout.dest.display()
        ))),
        Ok(_) => match ops.exchange(&staging, &layout.dest) {
            Ok(()) => Ok(()),
            Err(e) => match Errno::from_io_error(&e) {
                Some(Errno::INVAL | Errno::NOSYS) => renames(layout, ops, token),
                Some(Errno::XDEV | Errno::BUSY) => entries(layout, ops, token),
                _ => Err(e),
            },
        },
    }
}

fn exists(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn renames(layout: &Layout, ops: &mut Ops, token: &str) -> io::Result<()> {
    let old = journal::token();
    ops.write_journal(
        layout,
        &Journal::Renames {
            staging: token.to_owned(),
            old: old.clone(),
        },
    )?;
    finish_renames(layout, ops, token, &old)
}

fn finish_renames(layout: &Layout, ops: &mut Ops, staging: &str, old: &str) -> io::Result<()> {
    let staging = layout.scratch(STAGING, staging);
    // No staging tree: it is DEST already.
    if exists(&staging)? {
        if exists(&layout.dest)? {
            ops.rename(&layout.dest, &layout.scratch(OLD, old))?;
        }
        ops.rename(&staging, &layout.dest)?;
    }
    ops.remove_journal(layout)
}

fn entries(layout: &Layout, ops: &mut Ops, token: &str) -> io::Result<()> {
    let old = journal::token();
    ops.create_dir(&layout.scratch(OLD, &old))?;
    ops.write_journal(
        layout,
        &Journal::Entries {
            staging: token.to_owned(),
            old: old.clone(),
            phase: Phase::Evicting,
        },
    )?;
    finish_entries(layout, ops, token, &old, Phase::Evicting)
}

fn finish_entries(
    layout: &Layout,
    ops: &mut Ops,
    staging_token: &str,
    old_token: &str,
    phase: Phase,
) -> io::Result<()> {
    let staging = layout.scratch(STAGING, staging_token);
    if !exists(&staging)? {
        // Removed only after the journal: someone else removed it. DEST is left as it is, and
        // the install under way replaces it.
        tracing::warn!(
            journal = %layout.journal().display(),
            "the staging tree of an interrupted install is gone; dropping its journal"
        );
        return ops.remove_journal(layout);
    }
    if phase == Phase::Evicting {
        let old = layout.scratch(OLD, old_token);
        for name in top_level(&layout.dest)? {
            let from = layout.dest.join(&name);
            match ops.evict(&from, &old.join(&name)) {
                Ok(()) => {}
                // Cannot be moved (an overlayfs lower directory), or the old tree is gone:
                // removed in place. A kill during the removal leaves a part of an old entry,
                // which the recovery removes.
                Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::XDEV | Errno::NOENT)) => {
                    ops.remove_tree(&from)?
                }
                Err(e) => return Err(e),
            }
        }
        ops.write_journal(
            layout,
            &Journal::Entries {
                staging: staging_token.to_owned(),
                old: old_token.to_owned(),
                phase: Phase::Moving,
            },
        )?;
    }
    for name in top_level(&staging)? {
        ops.move_in(&staging.join(&name), &layout.dest.join(&name))?;
    }
    ops.remove_journal(layout)?;
    ops.remove_tree(&staging)
}

/// The entries of `dir` an install moves: all but the reserved names (the install's own files,
/// when DEST is a mount point, and the filesystem's `lost+found`).
fn top_level(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if !policy::reserved(Path::new(&name)) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
