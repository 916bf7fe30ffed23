//! Trees to snapshot, a faithful description of a tree to compare two of them, and hostile
//! archives built byte by byte.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

/// Deterministic pseudo-random bytes (xorshift), incompressible enough for size tests.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with every kind of entry a cache can hold: files of several modes, empty directories,
/// symbolic and hard links, unicode and very long names, SQLite sidecars, and a file larger than
/// an upload part. Modification times are set to known values.
pub fn rich_tree(root: &Path, large_file: usize) {
    let w = |rel: &str, data: &[u8], mode: u32| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        set_mode(&p, mode);
    };
    std::fs::create_dir_all(root).unwrap();
    w("a/hello.txt", b"hello\n", 0o644);
    w("a/b/run.sh", b"#!/bin/sh\necho hi\n", 0o755);
    w("private/secret", b"s3cr3t", 0o600);
    w(
        "unicodé/日本語 ファイル.txt",
        "こんにちは".as_bytes(),
        0o644,
    );
    let long = format!(
        "npm/registry.npmjs.org/{}/{}/index.js",
        "@a-very-long-scope-name-for-testing/some-package-with-a-long-name",
        "1.2.3-beta.4+build.5678-with-even-more-characters-to-pass-one-hundred"
    );
    w(&long, b"module.exports = 1;\n", 0o644);
    w("dep_analysis_cache_v2", &noise(40_000, 1), 0o644);
    w("dep_analysis_cache_v2-wal", &noise(8_000, 2), 0o644);
    w("dep_analysis_cache_v2-shm", &noise(32_768, 3), 0o644);
    w("empty-file", b"", 0o644);
    w("big.bin", &noise(large_file, 4), 0o644);
    std::fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    std::fs::create_dir_all(root.join("locked")).unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("a/link-to-hello")).unwrap();
    std::os::unix::fs::symlink("a/b", root.join("link-to-dir")).unwrap();
    std::os::unix::fs::symlink("../../private", root.join("a/b/up")).unwrap();
    std::fs::hard_link(root.join("a/hello.txt"), root.join("a/hard-hello")).unwrap();
    set_mode(&root.join("private"), 0o700);
    set_mode(&root.join("locked"), 0o555);

    // Known mtimes, deepest first so that setting a child's does not disturb its directory's.
    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in paths.iter().enumerate() {
        let t = FileTime::from_unix_time(1_600_000_000 + i as i64 * 7919, 0);
        filetime::set_symlink_file_times(p, t, t).unwrap();
    }
}

/// One entry of a tree, as a restore must reproduce it.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
        mtime: i64,
    },
    File {
        mode: u32,
        mtime: i64,
        data: Vec<u8>,
        hard_link_group: PathBuf,
    },
    Symlink {
        target: PathBuf,
        mtime: i64,
    },
}

/// Every entry below `root` (not following links), keyed by relative path.
pub fn describe(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut inodes: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let walker = walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name();
    for e in walker {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_owned();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let node = if m.file_type().is_symlink() {
            Node::Symlink {
                target: std::fs::read_link(e.path()).unwrap(),
                mtime: m.mtime(),
            }
        } else if m.is_dir() {
            Node::Dir {
                mode: m.mode() & 0o7777,
                mtime: m.mtime(),
            }
        } else {
            let group = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
            Node::File {
                mode: m.mode() & 0o7777,
                mtime: m.mtime(),
                data: std::fs::read(e.path()).unwrap(),
                hard_link_group: group,
            }
        };
        out.insert(rel, node);
    }
    out
}

/// Asserts that two trees are identical, naming the first differences.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let (a, b) = (describe(expected), describe(actual));
    let mut diffs = Vec::new();
    for (path, node) in &a {
        match b.get(path) {
            None => diffs.push(format!("missing: {}", path.display())),
            Some(other) if other != node => diffs.push(format!(
                "differs: {}: expected {}, got {}",
                path.display(),
                brief(node),
                brief(other)
            )),
            _ => {}
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        diffs.push(format!("unexpected: {}", path.display()));
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}

fn brief(n: &Node) -> String {
    match n {
        Node::File {
            mode,
            mtime,
            data,
            hard_link_group,
        } => format!(
            "file mode {mode:o} mtime {mtime} {} bytes link group {}",
            data.len(),
            hard_link_group.display()
        ),
        other => format!("{other:?}"),
    }
}

/// Builds a tar stream entry by entry, with raw names, to make archives no honest tool writes.
#[derive(Default)]
pub struct RawTar(Vec<u8>);

impl RawTar {
    pub fn entry(self, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> Self {
        self.sized(name, kind, link, data.len() as u64, data)
    }

    /// An entry whose header claims `size` bytes, followed by `data` (padded to a block):
    /// whatever a hostile writer puts.
    pub fn sized(
        mut self,
        name: &[u8],
        kind: tar::EntryType,
        link: &[u8],
        size: u64,
        data: &[u8],
    ) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), tar::EntryType::Regular, b"", data)
    }

    pub fn dir(self, name: &str) -> Self {
        self.entry(name.as_bytes(), tar::EntryType::Directory, b"", b"")
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(
            name.as_bytes(),
            tar::EntryType::Symlink,
            target.as_bytes(),
            b"",
        )
    }

    /// A PAX extended header whose records apply to the next entry.
    pub fn pax(self, records: &[(&str, &str)]) -> Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        self.entry(b"PaxHeaders/x", tar::EntryType::XHeader, b"", &data)
    }

    /// A GNU long-name entry naming the next entry.
    pub fn gnu_long_name(self, name: &str) -> Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.entry(b"././@LongLink", tar::EntryType::GNULongName, b"", &data)
    }

    /// A GNU long-link entry giving the next entry's link target.
    pub fn gnu_long_link(self, target: &[u8]) -> Self {
        let mut data = target.to_vec();
        data.push(0);
        self.entry(b"././@LongLink", tar::EntryType::GNULongLink, b"", &data)
    }

    /// The stream so far, without the end-of-archive blocks.
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// A tmpfs mounted at an existing directory while the value lives (the integration tests run as
/// root), of `size` (`16m`) or the kernel's default.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: Option<&str>) -> Tmpfs {
        let mut mount = std::process::Command::new("mount");
        mount.args(["-t", "tmpfs"]);
        if let Some(size) = size {
            mount.args(["-o", &format!("size={size}")]);
        }
        let status = mount.arg("none").arg(at).status().expect("run mount");
        assert!(
            status.success(),
            "mount a tmpfs at {} (the integration tests run as root)",
            at.display()
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
