//! Putting a restored tree in place where DEST is not an ordinary directory: a mount point, an
//! overlayfs lower directory, read-only directories under a non-root restore, restores racing
//! each other as PID 1 of their own containers. Mounts are made in private mount namespaces
//! (`unshare -m`), which leave the host's mounts alone.

use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sitecache::storage::Location;
use sitecache_devtools::S3Server;

use crate::agent::{location, snapshot, text};
use crate::fixtures::{assert_same_tree, describe};
use crate::support;

const NOBODY: u32 = 65534;

/// A small DENO_DIR named `tag`, with a read-only directory, as an archive may hold.
fn deno_dir(root: &Path, tag: &str) {
    std::fs::create_dir_all(root.join("remote/https/deno.land")).unwrap();
    std::fs::write(root.join("remote/https/deno.land").join(tag), tag).unwrap();
    std::fs::create_dir_all(root.join(format!("npm-{tag}"))).unwrap();
    std::fs::write(root.join(format!("npm-{tag}/package.json")), tag).unwrap();
    std::fs::write(root.join("dep_analysis_cache_v2"), tag).unwrap();
    std::fs::create_dir_all(root.join("gen/ro")).unwrap();
    std::fs::write(root.join("gen/ro/file.js"), tag).unwrap();
    std::fs::set_permissions(root.join("gen/ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
}

fn chown_tree(root: &Path, uid: u32) {
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.unwrap();
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(uid)).unwrap();
    }
}

/// Generations 1 and 2 of a site, from two different trees (kept, to compare with).
struct Site {
    loc: Location,
    work: tempfile::TempDir,
}

impl Site {
    async fn new(s3: &S3Server) -> Site {
        let loc = location(s3).await;
        let work = tempfile::tempdir().unwrap();
        // Readable by a non-root restore: the binary and its HOME live here.
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for n in [1, 2] {
            let source = work.path().join(format!("source-{n}"));
            deno_dir(&source, &format!("gen{n}"));
            let out = snapshot(s3, &loc, &source, n);
            assert!(out.status.success(), "snapshot: {}", text(&out.stderr));
        }
        // The binary, where a non-root user can run it.
        let bin = work.path().join("sitecache");
        if std::fs::hard_link(env!("CARGO_BIN_EXE_sitecache"), &bin).is_err() {
            std::fs::copy(env!("CARGO_BIN_EXE_sitecache"), &bin).unwrap();
        }
        let home = work.path().join("home");
        std::fs::create_dir(&home).unwrap();
        chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
        Site { loc, work }
    }

    fn source(&self, n: u64) -> PathBuf {
        self.work.path().join(format!("source-{n}"))
    }

    fn bin(&self) -> PathBuf {
        self.work.path().join("sitecache")
    }

    /// A command line restoring generation `n` into `dest`.
    fn restore_args(&self, n: u64, dest: &Path) -> Vec<String> {
        [
            "restore",
            "--url",
            &self.loc.to_string(),
            "--dest",
            dest.to_str().unwrap(),
            "--generation",
            &n.to_string(),
            "--strict",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// `program args…` with the S3 environment, and a HOME of its own.
    fn command(&self, s3: &S3Server, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(s3.aws_env())
            .env("SITECACHE_PATH_STYLE", "1")
            .env("HOME", self.work.path().join("home"));
        cmd
    }
}

/// The result lines of every restore in `out`, which must all have restored.
fn all_restored(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for line in &lines {
        assert_eq!(line["ok"], true, "{line}");
    }
    lines
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_mount_point_is_replaced_entry_by_entry_by_a_non_root_restore() {
    let s3 = support::s3().await;
    let site = Site::new(s3).await;
    // The volume: an old tree (with a read-only directory) and the filesystem's lost+found.
    let vol = site.work.path().join("vol");
    deno_dir(&vol, "old");
    chown_tree(&vol, NOBODY);
    std::fs::create_dir(vol.join("lost+found")).unwrap();
    let restore = |n| {
        let mut cmd = vec![
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        cmd.push(site.bin().to_str().unwrap().to_owned());
        cmd.extend(site.restore_args(n, &vol));
        shell_words(&cmd)
    };
    // A bind mount of the directory on itself: a mount point on the same device, which only
    // the mount id tells apart, and which no rename can replace.
    let script = format!(
        "mount --bind {vol} {vol}\n{}\n{}",
        restore(1),
        restore(2),
        vol = shell_words(&[vol.to_str().unwrap().to_owned()])
    );
    let out = site
        .command(s3, "unshare")
        .args(["-m", "--propagation", "private", "sh", "-euc", &script])
        .output()
        .unwrap();
    let lines = all_restored(&out);
    assert_eq!(lines.len(), 2, "{}", text(&out.stdout));
    // The volume's own lost+found stays; nothing else but generation 2 is left.
    assert!(vol.join("lost+found").is_dir());
    std::fs::remove_dir(vol.join("lost+found")).unwrap();
    assert_same_tree(&site.source(2), &vol);
}

#[tokio::test]
async fn an_overlayfs_lower_directory_is_replaced() {
    let s3 = support::s3().await;
    let site = Site::new(s3).await;
    let root = site.work.path().join("overlay");
    let [lower, upper, work, merged, out] =
        ["lower", "upper", "work", "merged", "out"].map(|d| root.join(d));
    for d in [&upper, &work, &merged, &out] {
        std::fs::create_dir_all(d).unwrap();
    }
    // DEST comes from the image: a directory of the lower layer, which overlayfs cannot rename
    // (EXDEV) without redirect_dir.
    deno_dir(&lower.join("deno-dir"), "old");
    let dest = merged.join("deno-dir");
    let q = |p: &Path| shell_words(&[p.to_str().unwrap().to_owned()]);
    let bin = site.bin().to_str().unwrap().to_owned();
    let script = format!(
        "mount -t overlay overlay -o lowerdir={l},upperdir={u},workdir={w},redirect_dir=off {m}\n\
         {r1}\ncp -a {d} {o}/after-1\n{r2}\ncp -a {d} {o}/after-2\nls -A {m} > {o}/siblings",
        l = q(&lower),
        u = q(&upper),
        w = q(&work),
        m = q(&merged),
        d = q(&dest),
        o = q(&out),
        r1 = shell_words(&[vec![bin.clone()], site.restore_args(1, &dest)].concat()),
        r2 = shell_words(&[vec![bin], site.restore_args(2, &dest)].concat()),
    );
    let output = site
        .command(s3, "unshare")
        .args(["-m", "--propagation", "private", "sh", "-euc", &script])
        .output()
        .unwrap();
    assert_eq!(all_restored(&output).len(), 2);
    assert_same_tree(&site.source(1), &out.join("after-1"));
    assert_same_tree(&site.source(2), &out.join("after-2"));
    // No staging, old tree or journal left beside DEST.
    assert_eq!(
        std::fs::read_to_string(out.join("siblings")).unwrap(),
        "deno-dir\n"
    );
}

#[tokio::test]
async fn read_only_directories_are_removed_by_a_non_root_restore() {
    let s3 = support::s3().await;
    let site = Site::new(s3).await;
    let parent = site.work.path().join("cache");
    std::fs::create_dir(&parent).unwrap();
    chown(&parent, Some(NOBODY), Some(NOBODY)).unwrap();
    let dest = parent.join("deno-dir");
    for n in [1, 2, 1] {
        let out = site
            .command(s3, site.bin().to_str().unwrap())
            .args(site.restore_args(n, &dest))
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        all_restored(&out);
        assert_same_tree(&site.source(n), &dest);
        // The tree DEST held before (with its read-only directory) is gone.
        assert_eq!(names(&parent), ["deno-dir"]);
    }
}

#[tokio::test]
async fn restores_racing_as_pid_1_of_their_containers_leave_one_whole_tree() {
    let s3 = support::s3().await;
    let site = Site::new(s3).await;
    let parent = site.work.path().join("cache");
    let dest = parent.join("deno-dir");
    deno_dir(&dest, "old");
    // Each restore is PID 1 of a PID namespace of its own, as init containers are.
    let children: Vec<_> = (0..6)
        .map(|i| {
            site.command(s3, "unshare")
                .args(["--pid", "--fork", "--kill-child"])
                .arg(site.bin())
                .args(site.restore_args(1 + i % 2, &dest))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        all_restored(&child.wait_with_output().unwrap());
    }
    let restored = describe(&dest);
    assert!(
        restored == describe(&site.source(1)) || restored == describe(&site.source(2)),
        "DEST is neither generation: {:?}",
        restored.keys().collect::<Vec<_>>()
    );
    assert_eq!(names(&parent), ["deno-dir"]);
}

/// Quotes words for `sh`.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}
