//! `SHA256SUMS`: the SHA-256 of every file of the release, in `sha256sum`'s format (`sha256sum
//! -c SHA256SUMS` checks a download), sorted by name.

use std::path::Path;

use anyhow::{Context, Result};

use super::archives::sha256_file;

/// The file's name.
pub const SUMS: &str = "SHA256SUMS";

/// Writes `dir/SHA256SUMS` over every other file under `dir` and returns the names it lists.
pub fn write(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
                continue;
            }
            let name = entry
                .path()
                .strip_prefix(dir)?
                .to_string_lossy()
                .into_owned();
            if name != SUMS {
                names.push(name);
            }
        }
    }
    names.sort();
    let mut text = String::new();
    for name in &names {
        text.push_str(&format!("{}  {name}\n", sha256_file(&dir.join(name))?));
    }
    std::fs::write(dir.join(SUMS), text)?;
    Ok(names)
}
