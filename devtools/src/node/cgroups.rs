//! The node's cgroup (cgroup v1, cgroupfs): one directory of the same name in every mounted
//! hierarchy, kubelet's `cgroupRoot`. containerd is moved into it, so its shims and every
//! container are in it too: killing what it holds stops all of the node, whatever was left
//! running (see `janitor`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

const CGROUP_FS: &str = "/sys/fs/cgroup";

/// `/<name>` in every hierarchy.
#[derive(Debug)]
pub struct NodeCgroup {
    name: String,
}

impl NodeCgroup {
    /// Creates `/<name>` in each hierarchy mounted under `/sys/fs/cgroup`, cpuset's given its
    /// parent's CPUs and memory nodes (a new cpuset cgroup has none, and no process can join it).
    pub fn create(name: &str) -> Result<Self> {
        let cg = Self {
            name: name.to_owned(),
        };
        for h in hierarchies()? {
            let dir = h.join(name);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(h.join(f)) {
                    std::fs::write(dir.join(f), v.trim())
                        .with_context(|| format!("write {}", dir.join(f).display()))?;
                }
            }
        }
        Ok(cg)
    }

    /// kubelet's `cgroupRoot`.
    pub fn root(&self) -> String {
        format!("/{}", self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves process `pid` into `/<name>/<child>` of every hierarchy.
    pub fn adopt(&self, child: &str, pid: u32) -> Result<()> {
        for h in hierarchies()? {
            let dir = h.join(&self.name).join(child);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(h.join(&self.name).join(f)) {
                    std::fs::write(dir.join(f), v.trim())?;
                }
            }
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("move {pid} into {}", dir.display()))?;
        }
        Ok(())
    }
}

/// The cgroup hierarchies: the directories of `/sys/fs/cgroup` that hold a `cgroup.procs`.
pub fn hierarchies() -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(CGROUP_FS).with_context(|| format!("read {CGROUP_FS}"))? {
        let p = e?.path();
        if p.join("cgroup.procs").is_file() {
            out.push(p);
        }
    }
    if out.is_empty() {
        anyhow::bail!("no cgroup hierarchy under {CGROUP_FS}");
    }
    Ok(out)
}

/// Whether `/sys/fs/cgroup` is cgroup v1 (kubelet's `failCgroupV1: false` is needed then).
pub fn is_v1() -> bool {
    !Path::new(CGROUP_FS).join("cgroup.controllers").exists()
}
