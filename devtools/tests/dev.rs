//! `make dev` and `make dev-down` end to end: the real `sitecache-dev up` starts the environment
//! in a temporary state directory, the example site reaches generation 1, is restored and runs
//! from its cache alone; the environment is still there after `up` returns, a second `up` reuses
//! it, and `sitecache-dev down` stops every process and removes the directory.
//!
//! It needs the `sitecache` binary (another package): `SITECACHE_BIN` names it (`make integration`
//! sets it). Nothing is skipped: a part that cannot start fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sitecache_devtools::dev::{self, StateDir};

/// What `main.ts` prints, in part.
const SITE_OUTPUT: &str = "<h1>Storefront</h1><ul class=\"products\">";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn sitecache_bin() -> PathBuf {
    let var = std::env::var_os("SITECACHE_BIN");
    match var.as_ref().map(PathBuf::from) {
        Some(p) if p.is_file() => p,
        _ => panic!(
            "SITECACHE_BIN must name the built `sitecache` binary (got {var:?}); `make integration` \
             sets it, or by hand: cargo build --bin sitecache && \
             SITECACHE_BIN=<target dir>/debug/sitecache cargo test -p sitecache-devtools --test dev"
        ),
    }
}

fn sitecache_dev(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sitecache-dev"))
        .args(args)
        .arg("--repo")
        .arg(repo())
        .env("SITECACHE_DEV_DIR", dir)
        .output()
        .expect("run sitecache-dev")
}

fn text(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `down` if the test ends early, after printing the environment's logs: nothing it started
/// outlives the test.
struct Cleanup {
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = StateDir::new(&self.dir).unwrap();
            let mut logs = vec![state.serve_log(), state.logs().join("controller.log")];
            if let Ok(ready) = state.read_ready() {
                logs.push(ready.logs.kube_apiserver);
            }
            for log in logs {
                eprintln!(
                    "--- {} (end) ---\n{}",
                    log.display(),
                    sitecache_devtools::process::tail(&log, 4000)
                );
            }
        }
        if self.dir.exists() {
            let out = sitecache_dev(&self.dir, &["down"]);
            eprintln!("cleanup: sitecache-dev down\n{}", text(&out));
        }
    }
}

fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while dev::pid_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) is still alive after sitecache-dev down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dev_up_shows_the_example_and_down_stops_everything() {
    let sitecache = sitecache_bin();
    let tmp = tempfile::Builder::new()
        .prefix("sitecache-dev-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a temporary directory");
    let dir = tmp.path().join("state");
    let cleanup = Cleanup { dir: dir.clone() };
    let state = StateDir::new(&dir).unwrap();
    let bin = sitecache.to_str().expect("a UTF-8 path");

    // Up: the environment starts, the example reaches generation 1, is restored and runs.
    let up = sitecache_dev(&dir, &["up", "--sitecache-bin", bin]);
    let out = text(&up);
    println!("{out}");
    assert!(up.status.success(), "sitecache-dev up failed:\n{out}");
    let stdout = String::from_utf8_lossy(&up.stdout);
    let restore_line = stdout
        .lines()
        .find(|l| l.contains("\"reason\":\"restored\""))
        .unwrap_or_else(|| panic!("no restore result line in the output:\n{out}"));
    let restored: serde_json::Value = serde_json::from_str(restore_line.trim()).unwrap();
    assert_eq!(restored["ok"], true, "{restore_line}");
    assert_eq!(restored["generation"], 1, "{restore_line}");
    assert!(
        stdout.contains(SITE_OUTPUT),
        "the site's output is missing:\n{out}"
    );
    assert!(
        stdout.contains("default/storefront is Ready at generation 1")
            && stdout.contains("make dev-down"),
        "the final screen is missing:\n{out}"
    );

    // The environment outlives `up`.
    let ready = state.read_ready().expect("ready.json after up");
    assert!(dev::is_serve(ready.serve_pid), "serve is not running");
    assert_eq!(ready.processes.len(), 4, "{:?}", ready.processes);
    for p in &ready.processes {
        assert!(
            dev::runs(p.pid, &p.program),
            "{} (pid {}) is not running after up",
            p.name,
            p.pid
        );
    }
    let phase = Command::new(&ready.kubectl)
        .args([
            "get",
            "scache",
            "storefront",
            "-o",
            "jsonpath={.status.phase}",
        ])
        .env("KUBECONFIG", &ready.kubeconfig)
        .output()
        .expect("run kubectl");
    assert_eq!(
        String::from_utf8_lossy(&phase.stdout),
        "Ready",
        "kubectl get scache: {}",
        String::from_utf8_lossy(&phase.stderr)
    );

    // A second up reuses the running environment.
    let again = sitecache_dev(&dir, &["up", "--sitecache-bin", bin]);
    let out = text(&again);
    assert!(again.status.success(), "second up failed:\n{out}");
    assert!(
        out.contains(&format!(
            "reusing the environment that runs in {}",
            dir.display()
        )),
        "the second up did not reuse the environment:\n{out}"
    );
    assert_eq!(state.read_ready().unwrap().serve_pid, ready.serve_pid);

    // Down: every process is gone, and so is the state directory.
    let down = sitecache_dev(&dir, &["down"]);
    let out = text(&down);
    println!("{out}");
    assert!(down.status.success(), "sitecache-dev down failed:\n{out}");
    assert!(
        out.contains(&format!(
            "stopped sitecache-dev serve (pid {})",
            ready.serve_pid
        )),
        "{out}"
    );
    wait_gone(ready.serve_pid, "sitecache-dev serve");
    for p in &ready.processes {
        wait_gone(p.pid, &p.name);
    }
    assert!(!dir.exists(), "{} still exists after down", dir.display());

    let down = sitecache_dev(&dir, &["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(text(&down).contains("nothing to stop"), "{}", text(&down));
    drop(cleanup);
}
