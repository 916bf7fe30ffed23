//! Child processes of the local parts, each logging to a file and tied to this process's life.
//!
//! Children are spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so the kernel kills
//! them when this process ends, however it ends (a panic, a failed test, Ctrl-C). A
//! [`ManagedProcess`] that is dropped kills its child at once. The job runner's processes are
//! spawned the same way, in process groups that a watchdog kills when this process ends.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};

use anyhow::{Context, Result};
use rustix::process::{Pid, Signal};

type SpawnerTask = Box<dyn FnOnce() + Send>;

/// Runs `task` on the spawner thread, which never exits: `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked a child ends, so children must be forked by one that lives as long as the
/// process.
fn on_spawner_thread(task: SpawnerTask) -> io::Result<()> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnerTask>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnerTask>();
        std::thread::Builder::new()
            .name("devtools-spawner".into())
            .spawn(move || {
                for task in rx {
                    task();
                }
            })
            .expect("spawn the devtools spawner thread");
        Mutex::new(tx)
    });
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(task)
        .map_err(|_| io::Error::other("devtools spawner thread is gone"))
}

/// The `pre_exec` hook of tied children: the kernel sends them `SIGKILL` when this process ends.
fn die_with_parent() -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
    let parent = rustix::process::getpid();
    move || {
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        // This process may have died between the fork and the prctl: no signal would come.
        if rustix::process::getppid() != Some(parent) {
            return Err(rustix::io::Errno::SRCH.into());
        }
        Ok(())
    }
}

/// Spawns `cmd` from the spawner thread with `PR_SET_PDEATHSIG`.
fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    // SAFETY: `pre_exec` runs the hook in the forked child before exec, where only
    // async-signal-safe work is sound: `die_with_parent` makes two raw system calls through
    // rustix (prctl, getppid) and builds its error from an errno, allocating nothing and taking
    // no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(die_with_parent());
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    on_spawner_thread(Box::new(move || {
        let _ = reply_tx.send(cmd.spawn());
    }))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("devtools spawner thread is gone"))?
}

/// Spawns a tokio `cmd` from the spawner thread with `PR_SET_PDEATHSIG`, registered with the
/// current tokio runtime (which reaps it and wakes `wait`). Must be called within a runtime.
pub(crate) async fn spawn_tied_async(
    mut cmd: tokio::process::Command,
) -> io::Result<tokio::process::Child> {
    let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    // SAFETY: `pre_exec` runs the hook in the forked child before exec, where only
    // async-signal-safe work is sound: `die_with_parent` makes two raw system calls through
    // rustix (prctl, getppid) and builds its error from an errno, allocating nothing and taking
    // no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(die_with_parent());
    }
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    on_spawner_thread(Box::new(move || {
        let _runtime = runtime.enter();
        let _ = reply_tx.send(cmd.spawn());
    }))?;
    reply_rx
        .await
        .map_err(|_| io::Error::other("devtools spawner thread is gone"))?
}

/// A process group (a child started with `process_group(0)`, and whatever it forks) tied to this
/// process's life. `PR_SET_PDEATHSIG` only reaches the child itself, not its own children (a
/// shell's commands, for example), so the group is also registered with a watchdog: a `sh` in its
/// own process group that reads group ids on a pipe and, when the pipe closes because this process
/// has ended however it ended, kills every group still registered. Processes that leave the group
/// (`setsid`, `setpgid`) escape both.
///
/// Dropping it kills the group with `SIGKILL`.
#[derive(Debug)]
pub(crate) struct TiedGroup {
    pgid: Pid,
}

impl TiedGroup {
    /// Registers the group led by `pid`.
    pub(crate) fn new(pid: u32) -> Self {
        let pgid = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .expect("a child's process id is a positive pid_t");
        watchdog_send(&format!("{pid}\n"));
        Self { pgid }
    }

    /// Sends `SIGKILL` to every process of the group (harmless once they are gone).
    pub(crate) fn kill(&self) {
        let _ = rustix::process::kill_process_group(self.pgid, Signal::KILL);
    }
}

impl Drop for TiedGroup {
    fn drop(&mut self) {
        self.kill();
        watchdog_send(&format!("-{}\n", self.pgid.as_raw_pid()));
    }
}

/// The watchdog script: `<pgid>` registers a group, `-<pgid>` forgets it; at end of input (this
/// process is gone), every group still registered is killed. Terminal signals are ignored so that
/// a Ctrl-C or a hang-up leaves it time to do its work.
const WATCHDOG_SCRIPT: &str = r#"trap '' INT HUP TERM
live=""
while read -r g; do
  case "$g" in
    -*) eval "g_${g#-}=" ;;
    *) eval "g_$g=1"; live="$live $g" ;;
  esac
done
for g in $live; do
  eval "v=\${g_$g}"
  [ -n "$v" ] && kill -s KILL -- "-$g" 2>/dev/null
done
exit 0
"#;

/// Sends a line to the watchdog, starting it on first use. Without a watchdog (`/bin/sh` could
/// not start) process groups are still killed when dropped, and their leaders by
/// `PR_SET_PDEATHSIG`.
fn watchdog_send(line: &str) {
    static WATCHDOG: OnceLock<Option<Mutex<std::process::ChildStdin>>> = OnceLock::new();
    let watchdog = WATCHDOG.get_or_init(|| {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", WATCHDOG_SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        match cmd.spawn() {
            // The child is never waited for: it lives as long as this process.
            Ok(mut child) => child.stdin.take().map(Mutex::new),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the process-group watchdog (/bin/sh)");
                None
            }
        }
    });
    if let Some(stdin) = watchdog {
        use std::io::Write;
        let _ = stdin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(line.as_bytes());
    }
}

/// A running child process whose stdout and stderr go to a log file.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ManagedProcess {
    /// Starts `cmd`, appending its output to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open log file {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = spawn_tied(cmd).with_context(|| format!("start {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends the signal numbered `signal` (for example `libc::SIGSTOP`, or
    /// `rustix::process::Signal::STOP.as_raw()`, to make a server stop answering). Like
    /// `Child::kill`, meant for a process that has not exited: once [`exited`](Self::exited) has
    /// reaped it, its pid may be another process's.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let signal = Signal::from_named_raw(signal)
            .with_context(|| format!("signal {}: no signal numbered {signal}", self.name))?;
        rustix::process::kill_process(Pid::from_child(&self.child), signal)
            .map_err(io::Error::from)
            .with_context(|| format!("signal {}", self.name))
    }

    /// The last `max` bytes of the log, for error messages.
    pub fn log_tail(&self, max: u64) -> String {
        tail(&self.log, max)
    }

    /// An error that says the process failed, with the end of its log.
    pub fn failure(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{} {what}; log {}:\n{}",
            self.name,
            self.log.display(),
            self.log_tail(2000)
        )
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `max` bytes of a file, lossily decoded.
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
