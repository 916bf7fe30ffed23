//! The standard `process_*` metrics (CPU, memory, open files, start time) of the running process,
//! read from `/proc/self` at each scrape, with the names and meanings every Prometheus client
//! library gives them, so that existing dashboards and alerts work unchanged. On a system without
//! `/proc`, the metrics that cannot be read are left out of the scrape.

use std::fmt::Error;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Collects the process metrics at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of the process's state.
#[derive(Debug, Default, PartialEq)]
pub struct Reading {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl Reading {
    /// Reads `/proc/self` (and `/proc/stat` for the boot time).
    pub fn now() -> Reading {
        let mut reading = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| {
                let boot = std::fs::read_to_string("/proc/stat")
                    .ok()
                    .and_then(|s| boot_time(&s));
                parse_stat(
                    &stat,
                    boot,
                    rustix::param::clock_ticks_per_second(),
                    rustix::param::page_size() as u64,
                )
            })
            .unwrap_or_default();
        reading.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            // The directory's own descriptor, open while it is read, is not counted.
            .map(|d| d.count().saturating_sub(1) as u64);
        reading.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| max_open_files(&l));
        reading
    }
}

/// Parses `/proc/<pid>/stat` (proc(5)): the fields after the command name, which is in
/// parentheses and may itself hold spaces and parentheses.
fn parse_stat(stat: &str, boot_time: Option<u64>, ticks: u64, page_size: u64) -> Option<Reading> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields from the 3rd (state) on; proc(5) numbers them from 1.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = ticks.max(1) as f64;
    let (utime, stime) = (field(14)?, field(15)?);
    Some(Reading {
        cpu_seconds: Some((utime + stime) as f64 / ticks),
        threads: field(20),
        start_time_seconds: boot_time
            .zip(field(22))
            .map(|(boot, start)| boot as f64 + start as f64 / ticks),
        virtual_bytes: field(23),
        resident_bytes: field(24).map(|pages| pages * page_size),
        ..Reading::default()
    })
}

/// The `btime` line of `/proc/stat`: when the system booted, in seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let r = Reading::now();
        if let Some(v) = r.cpu_seconds {
            counter(
                &mut encoder,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                v,
            )?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                r.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                r.virtual_bytes.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                r.start_time_seconds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                r.threads.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                r.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                r.max_fds.map(|v| v as f64),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let gauge = ConstGauge::new(v);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_command_holds_spaces_and_parentheses() {
        // proc(5) fields 1..=24 (and more): utime 14 = 250, stime 15 = 50, threads 20 = 7,
        // starttime 22 = 1000, vsize 23, rss 24 = 300 pages.
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 \
                    123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let r = parse_stat(stat, Some(1_700_000_000), 100, 4096).unwrap();
        assert_eq!(r.cpu_seconds, Some(3.0));
        assert_eq!(r.threads, Some(7));
        assert_eq!(r.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(r.virtual_bytes, Some(123_456_789));
        assert_eq!(r.resident_bytes, Some(300 * 4096));
        assert_eq!(parse_stat("42 (truncated", None, 100, 4096), None);
    }

    #[test]
    fn reads_the_boot_time_and_the_soft_open_files_limit() {
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             63704                63704                processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[test]
    fn this_process_reads_as_running_with_memory_and_open_files() {
        let r = Reading::now();
        assert!(r.cpu_seconds.is_some_and(|s| s >= 0.0), "{r:?}");
        assert!(r.resident_bytes.is_some_and(|b| b > 1 << 20), "{r:?}");
        assert!(r.threads.is_some_and(|t| t >= 1), "{r:?}");
        let start = r.start_time_seconds.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start} vs {now}"
        );
        // Other tests of this process open and close files at the same time: only bounds hold.
        assert!(r.open_fds.is_some_and(|n| n >= 1), "{r:?}");
        assert!(r.max_fds.is_some_and(|m| m >= r.open_fds.unwrap()), "{r:?}");
    }
}
