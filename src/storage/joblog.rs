//! `P/logs/<n>.json`: what the containers of the snapshot Job of generation `n` printed, kept by
//! the controller when it handles the Job (its pods are still there then: the result finalizer
//! keeps them), so that `kubectl sitecache logs` shows them after the Job's TTL. The tail of each
//! container's log is kept, bounded (`--job-log-bytes`): these are the site's own build logs, and
//! whatever they echo (a token a warm step prints) is in the bucket with them.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The format version this build writes and reads.
pub const JOB_LOG_FORMAT: u32 = 1;

/// The logs of one snapshot Job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobLog {
    pub format_version: u32,
    pub generation: u64,
    pub job: String,
    /// `Succeeded`, `Failed` or `Rejected`, as `status.lastSnapshot.result` recorded it.
    pub result: String,
    pub reason: String,
    pub message: String,
    /// When the controller read the logs.
    pub captured_at: Timestamp,
    /// The Job's pods, oldest first (the last few, when it retried more).
    pub pods: Vec<PodLog>,
    /// Pods of the Job that were not kept (older retries).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pods_left_out: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One pod's containers, in the order they ran (init containers first).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodLog {
    pub name: String,
    pub containers: Vec<ContainerLog>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerLog {
    pub name: String,
    /// How it ended, as kubelet reported it (`exit 0`, `exit 1 (Error)`, `running`, …).
    pub state: String,
    /// The end of its log.
    pub log: String,
    /// The log was longer: only its end is kept.
    #[serde(default)]
    pub truncated: bool,
    /// Why there is no log, when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// The last `limit` bytes of `text`, starting at a line (or, in one long line, at a character)
/// boundary; and whether anything was cut.
pub fn tail(text: &str, limit: usize) -> (&str, bool) {
    if text.len() <= limit {
        return (text, false);
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let rest = &text[start..];
    // Start at the next whole line when there is one.
    let rest = match rest.find('\n') {
        Some(i) if i + 1 < rest.len() => &rest[i + 1..],
        _ => rest,
    };
    (rest, true)
}

impl JobLog {
    /// Shortens the logs (each to the end of half of it, in turn) until the document, as written,
    /// is at most `max` bytes: escapes can make a log's JSON several times its size, and a
    /// document is read back only up to [`MAX_DOCUMENT`](super::MAX_DOCUMENT).
    pub fn fit(&mut self, max: usize) {
        let size = |log: &JobLog| serde_json::to_vec_pretty(log).map_or(usize::MAX, |v| v.len());
        while size(self) > max {
            let mut shortened = false;
            for c in self.pods.iter_mut().flat_map(|p| &mut p.containers) {
                if c.log.is_empty() {
                    continue;
                }
                let (end, _) = tail(&c.log, c.log.len() / 2);
                c.log = end.to_owned();
                c.truncated = true;
                shortened = true;
            }
            if !shortened {
                // Nothing left to shorten but names and messages, bounded elsewhere.
                return;
            }
        }
    }

    /// The logs as `kubectl sitecache logs` prints them.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Generation {}, Job {}: {} ({}): {}\n",
            self.generation, self.job, self.result, self.reason, self.message
        );
        if self.pods.is_empty() {
            out.push_str("No pod of the Job was left to read logs from.\n");
        }
        if self.pods_left_out > 0 {
            out.push_str(&format!(
                "({} earlier pods of the Job are not kept.)\n",
                self.pods_left_out
            ));
        }
        for pod in &self.pods {
            for c in &pod.containers {
                out.push_str(&format!(
                    "\n==> pod {}, container {} ({}) <==\n",
                    pod.name, c.name, c.state
                ));
                if let Some(why) = &c.unavailable {
                    out.push_str(&format!("(no log: {why})\n"));
                    continue;
                }
                if c.truncated {
                    out.push_str("(… only the end of the log is kept)\n");
                }
                out.push_str(&c.log);
                if !c.log.is_empty() && !c.log.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_starts_at_a_line_or_a_character() {
        assert_eq!(tail("short\n", 64), ("short\n", false));
        assert_eq!(tail("one\ntwo\nthree\n", 9), ("three\n", true));
        // One long line: cut at a character boundary, never inside one.
        let (t, cut) = tail("ééééé", 5);
        assert!(cut);
        assert_eq!(t, "éé");
        assert_eq!(tail("abc\n", 0), ("", true));
    }

    #[test]
    fn a_log_of_escapes_is_shortened_to_fit_the_document_bound() {
        let mut log = JobLog {
            format_version: JOB_LOG_FORMAT,
            generation: 1,
            job: "j".into(),
            result: "Failed".into(),
            reason: "r".into(),
            message: "m".into(),
            captured_at: "2026-12-06T12:00:00Z".parse().unwrap(),
            pods: vec![PodLog {
                name: "p".into(),
                containers: vec![ContainerLog {
                    name: "warm".into(),
                    state: "exit 1".into(),
                    // 64 KiB of control characters: six bytes each once escaped.
                    log: "\u{1}".repeat(64 * 1024),
                    truncated: false,
                    unavailable: None,
                }],
            }],
            pods_left_out: 0,
        };
        log.fit(100_000);
        let written = serde_json::to_vec_pretty(&log).unwrap().len();
        assert!(written <= 100_000, "{written}");
        assert!(log.pods[0].containers[0].truncated);
        assert!(!log.pods[0].containers[0].log.is_empty());
    }

    #[test]
    fn renders_each_container_under_a_header() {
        let log = JobLog {
            format_version: JOB_LOG_FORMAT,
            generation: 7,
            job: "shop-g7".into(),
            result: "Failed".into(),
            reason: "BackoffLimitExceeded".into(),
            message: "Job shop-g7 failed".into(),
            captured_at: "2026-12-06T12:00:00Z".parse().unwrap(),
            pods: vec![PodLog {
                name: "shop-g7-x".into(),
                containers: vec![
                    ContainerLog {
                        name: "warm".into(),
                        state: "exit 1 (Error)".into(),
                        log: "npm registry unreachable".into(),
                        truncated: true,
                        unavailable: None,
                    },
                    ContainerLog {
                        name: "snapshot".into(),
                        state: "not started".into(),
                        log: String::new(),
                        truncated: false,
                        unavailable: Some("container not started".into()),
                    },
                ],
            }],
            pods_left_out: 2,
        };
        assert_eq!(
            log.render(),
            "Generation 7, Job shop-g7: Failed (BackoffLimitExceeded): Job shop-g7 failed\n\
             (2 earlier pods of the Job are not kept.)\n\
             \n==> pod shop-g7-x, container warm (exit 1 (Error)) <==\n\
             (… only the end of the log is kept)\n\
             npm registry unreachable\n\
             \n==> pod shop-g7-x, container snapshot (not started) <==\n\
             (no log: container not started)\n"
        );
        let json = serde_json::to_string(&log).unwrap();
        assert_eq!(serde_json::from_str::<JobLog>(&json).unwrap(), log);
    }
}
