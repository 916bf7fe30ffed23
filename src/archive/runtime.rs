//! Which Deno warmed a cache. Deno keeps its version in each of its cache databases (SQLite files
//! in `DENO_DIR`: a table `info`, key `CLI_VERSION`) and discards a database written by another
//! version when it opens it: a V8 code cache is only of use to the Deno that wrote it. The
//! snapshot records that version in the manifest, so that a restore can say when a runner's
//! Deno differs.
//!
//! The version is found in the files' bytes, not through SQLite: a row's text columns lie one
//! after the other in its record, so the key is followed by the version. The write-ahead log is
//! looked at first (its pages are the newest), then the database; a value that does not read as
//! a version is passed over.

use std::io::Read;
use std::path::Path;

/// Deno's cache databases that carry the version, the most telling first.
const DATABASES: [&str; 3] = [
    "v8_code_cache_v2",
    "dep_analysis_cache_v2",
    "node_analysis_cache_v2",
];
/// The most of one file that is read.
const READ_LIMIT: u64 = 256 << 20;
const KEY: &[u8] = b"CLI_VERSION";

/// The version of the Deno that last wrote the caches of the `DENO_DIR` at `root`, if any.
pub fn deno_version(root: &Path) -> Option<String> {
    for db in DATABASES {
        for file in [format!("{db}-wal"), db.to_owned()] {
            let path = root.join(&file);
            // Only regular files: a planted FIFO or link is not read.
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let mut bytes = Vec::new();
            let read =
                std::fs::File::open(&path).and_then(|f| f.take(READ_LIMIT).read_to_end(&mut bytes));
            if read.is_ok()
                && let Some(v) = last_version(&bytes)
            {
                return Some(v);
            }
        }
    }
    None
}

/// The version after the last [`KEY`] in `bytes` that is followed by one.
fn last_version(bytes: &[u8]) -> Option<String> {
    let mut found = None;
    let mut at = 0;
    while let Some(i) = find(&bytes[at..], KEY) {
        let start = at + i + KEY.len();
        if let Some(v) = version_at(&bytes[start..]) {
            found = Some(v);
        }
        at = start;
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `MAJOR.MINOR.PATCH`, with an optional `-pre` or `+build` of letters, digits and dots, at the
/// start of `bytes`.
fn version_at(bytes: &[u8]) -> Option<String> {
    let mut i = 0;
    for part in 0..3 {
        let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 6 {
            return None;
        }
        i += digits;
        if part < 2 {
            if bytes.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    if matches!(bytes.get(i), Some(b'-' | b'+')) {
        let tail = bytes[i + 1..]
            .iter()
            .take(40)
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'.')
            .count();
        if tail > 0 {
            i += 1 + tail;
        }
    }
    Some(String::from_utf8_lossy(&bytes[..i]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_the_key() {
        assert_eq!(
            last_version(b"\x03\x17\x17CLI_VERSION2.9.6\x00\x00"),
            Some("2.9.6".into())
        );
        assert_eq!(
            last_version(b"CLI_VERSION2.9.6-rc.1\x0d"),
            Some("2.9.6-rc.1".into())
        );
        // The last readable one wins (newer pages come later in a log).
        assert_eq!(
            last_version(b"CLI_VERSION2.8.0..CLI_VERSION2.9.6..CLI_VERSIONxx"),
            Some("2.9.6".into())
        );
        assert_eq!(last_version(b"CLI_VERSION2.9"), None);
        assert_eq!(last_version(b"nothing here"), None);
        assert_eq!(version_at(b"1234567.0.0"), None);
    }

    #[test]
    fn reads_the_log_before_the_database_and_skips_what_is_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(deno_version(dir.path()), None);
        std::fs::write(dir.path().join("v8_code_cache_v2"), b"CLI_VERSION2.8.0").unwrap();
        assert_eq!(deno_version(dir.path()), Some("2.8.0".into()));
        std::fs::write(dir.path().join("v8_code_cache_v2-wal"), b"CLI_VERSION2.9.6").unwrap();
        assert_eq!(deno_version(dir.path()), Some("2.9.6".into()));
        std::fs::remove_file(dir.path().join("v8_code_cache_v2-wal")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("v8_code_cache_v2-wal")).unwrap();
        assert_eq!(deno_version(dir.path()), Some("2.8.0".into()));
    }
}
