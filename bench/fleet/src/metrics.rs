//! Counters read from the Prometheus text of the API server and of the controller, and their
//! differences over a window.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

/// Every sample of a metrics text: `name{labels}` → value.
#[derive(Clone, Debug, Default)]
pub struct Samples(BTreeMap<String, f64>);

impl Samples {
    pub fn parse(text: &str) -> Samples {
        let mut out = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.parse::<f64>()
            {
                out.insert(series.to_owned(), v);
            }
        }
        Samples(out)
    }

    /// `self - before`, series by series.
    pub fn since(&self, before: &Samples) -> Samples {
        Samples(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// The sum of the samples of `name`, grouped by the values of `labels`.
    pub fn sum_by(&self, name: &str, labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
        let mut out: BTreeMap<Vec<String>, f64> = BTreeMap::new();
        for (series, v) in &self.0 {
            let Some(rest) = series.strip_prefix(name) else {
                continue;
            };
            if !(rest.is_empty() || rest.starts_with('{')) {
                continue;
            }
            let key = labels.iter().map(|l| label(rest, l)).collect();
            *out.entry(key).or_default() += v;
        }
        out
    }

    /// The sum of every sample of `name`.
    pub fn total(&self, name: &str) -> f64 {
        self.sum_by(name, &[]).values().sum()
    }
}

/// The value of label `name` in `{a="x",b="y"}`, or "".
fn label(labels: &str, name: &str) -> String {
    let needle = format!("{name}=\"");
    let Some(start) = labels.find(&needle).map(|i| i + needle.len()) else {
        return String::new();
    };
    labels[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The API server's metrics, as its admin.
pub async fn apiserver(client: &kube::Client) -> Result<Samples> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(req)
        .await
        .context("GET /metrics of the API server")?;
    Ok(Samples::parse(&text))
}

/// The controller's metrics (`/metrics` on `port`).
pub async fn controller(port: u16) -> Result<Samples> {
    let out = tokio::process::Command::new("curl")
        .args(["-sSf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .await
        .context("run curl")?;
    anyhow::ensure!(
        out.status.success(),
        "GET /metrics of the controller: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Samples::parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Peak and current resident memory of process `pid`, in bytes (`VmHWM`, `VmRSS`).
pub fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|k| k * 1024)
            .unwrap_or(0)
    };
    Ok((kib("VmHWM:"), kib("VmRSS:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_by_labels_and_diffs() {
        let a = Samples::parse(
            "# HELP x\nreq_total{verb=\"GET\",resource=\"jobs\",code=\"200\"} 3\n\
             req_total{verb=\"GET\",resource=\"jobs\",code=\"404\"} 1\n\
             req_total{verb=\"PATCH\",resource=\"sitecaches\"} 2\nother 5\n",
        );
        let b = Samples::parse(
            "req_total{verb=\"GET\",resource=\"jobs\",code=\"200\"} 10\n\
             req_total{verb=\"GET\",resource=\"jobs\",code=\"404\"} 1\n\
             req_total{verb=\"PATCH\",resource=\"sitecaches\"} 2\nother 6\n",
        );
        let d = b.since(&a);
        let by = d.sum_by("req_total", &["verb", "resource"]);
        assert_eq!(by[&vec!["GET".to_owned(), "jobs".to_owned()]], 7.0);
        assert_eq!(by[&vec!["PATCH".to_owned(), "sitecaches".to_owned()]], 0.0);
        assert_eq!(d.total("other"), 1.0);
    }
}
