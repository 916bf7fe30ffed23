//! Tears the node down, whenever and however this process ends.
//!
//! `PR_SET_PDEATHSIG` (see `crate::process`) ends kubelet and containerd with this process, but
//! not what they leave behind: containerd's shims and the containers (daemonized, in their own
//! sessions), kubelet's volume mounts and the pods' network namespaces (mounted under the node's
//! directory), the node's cgroups and network namespace. The janitor is a `sh` started before any
//! of these exist, in its own process group and deaf to terminal signals, that waits for the end
//! of a pipe whose other end this process holds: when the node is dropped, or when this process
//! ends (a panic, a failed test, a kill), it kills every process of the node's cgroup, unmounts
//! what is mounted under the node's directory and its [`short_dir`], removes the cgroups, the
//! namespace, the short directory and what containerd keeps of the node's pods outside its
//! directory (the CNI results cache, the shims' sockets).
//!
//! It is the one process of the node that is deliberately not a `ManagedProcess`: it must
//! outlive this process. Should it be killed too (a supervisor that kills every process of a
//! session), the next node started on the machine sweeps what it left: each node records its
//! directory in `/run/sitecache-node/<name>` (`<name>` holds the pid of its process), and
//! [`sweep_stale`] tears down the nodes whose process is gone.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

const SCRIPT: &str = r#"trap '' INT HUP TERM
name=$1 dir=$2 netns=$3
# Wait for the end of input: the node was dropped or its process ended.
cat >/dev/null
echo "tearing down $name"
i=0
while [ $i -lt 200 ]; do
  pids=$(find /sys/fs/cgroup/*/"$name" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
  [ -z "$pids" ] && break
  kill -9 $pids 2>/dev/null
  sleep 0.05
  i=$((i + 1))
done
[ -n "$pids" ] && echo "still in the cgroup after 10 s: $pids"
# What containerd keeps outside the node's directory, per pod sandbox: the CNI plugins' cached
# results and the shim's socket (/run/containerd/s/<sha256 of address/namespace/id>).
c="$dir/containerd"
short="/run/sitecache-nodes/$name"
for p in "$c"/root/io.containerd.grpc.v1.cri/sandboxes/*; do
  [ -e "$p" ] || continue
  id=${p##*/}
  rm -f /var/lib/cni/results/*-"$id"-*
  rm -f "/run/containerd/s/$(printf '%s' "$short/containerd.sock/k8s.io/$id" | sha256sum | cut -d' ' -f1)"
done
awk -v d="$dir/" -v s="$short/" 'index($5, d) == 1 || index($5, s) == 1 { print $5 }' \
  /proc/self/mountinfo | sort -r |
  while read -r m; do umount -l "$m" || echo "umount $m failed"; done
find /sys/fs/cgroup/*/"$name" -depth -type d -exec rmdir {} \; 2>/dev/null
# Image blobs and snapshots (hundreds of MB, of no use once the node is gone; the logs stay).
rm -rf --one-file-system "$c/root" "$c/state" "$dir/images" "$short"
ip netns delete "$netns" 2>/dev/null
rm -f "/run/sitecache-node/$name"
echo "done"
"#;

/// Where each node records its directory (a tmpfs: gone at reboot, with what it describes).
const RECORDS: &str = "/run/sitecache-node";

/// Where each node has its short directory (see [`short_dir`]).
const SHORT_DIRS: &str = "/run/sitecache-nodes";

/// The short directory of node `name`: containerd's sockets and kubelet's root directory (its
/// sockets, the pods' volumes). A Unix socket's path has at most 107 bytes (containerd allows
/// 104), which a node's directory under a target directory can exceed (kubelet's
/// `pod-resources/<random>` under its root added 41 bytes to a 66-byte directory). The janitor
/// unmounts what is mounted there and removes it.
pub fn short_dir(name: &str) -> PathBuf {
    Path::new(SHORT_DIRS).join(name)
}

pub struct Janitor {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Janitor {
    /// Starts the janitor of the node whose cgroup is `/<cgroup>`, whose state is under `dir`
    /// and whose network namespace is `netns`; its output goes to `dir/janitor.log`.
    pub fn start(cgroup: &str, dir: &Path, netns: &str) -> Result<Self> {
        std::fs::create_dir_all(RECORDS)?;
        std::fs::write(
            Path::new(RECORDS).join(cgroup),
            format!("{}\n{netns}\n", dir.display()),
        )?;
        let log = std::fs::File::create(dir.join("janitor.log"))?;
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", SCRIPT, "janitor", cgroup])
            .arg(dir)
            .arg(netns)
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let mut child = cmd.spawn().context("start the node's janitor (/bin/sh)")?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    /// Tears the node down now and waits (up to a minute) until that is done.
    pub fn finish(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Tears down the nodes recorded in `/run/sitecache-node` whose process (the pid in
/// `scnode-<pid>-<n>`) is gone, synchronously. Errors are ignored: this is best effort.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(RECORDS) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("scnode-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let Ok(record) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let mut lines = record.lines();
        let (Some(dir), Some(netns)) = (lines.next(), lines.next()) else {
            continue;
        };
        tracing::info!(node = %name, dir, "tearing down a node whose process is gone");
        let _ = Command::new("/bin/sh")
            .args(["-c", SCRIPT, "janitor", &name, dir, netns])
            .stdin(Stdio::null())
            .output();
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_script_tears_down_the_short_directory_of_the_node() {
        let line = format!("short=\"{}/$name\"", super::SHORT_DIRS);
        assert!(super::SCRIPT.contains(&line), "{line}");
        assert_eq!(
            super::short_dir("scnode-1-0"),
            std::path::Path::new("/run/sitecache-nodes/scnode-1-0")
        );
    }
}
