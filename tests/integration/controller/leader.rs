//! Two controller replicas with leader election: one acts, and the other takes over when it dies.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

use super::harness::{Harness, Options, metrics_at, wait_ready_at, warm};

async fn holder(h: &Harness) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns);
    leases
        .get_opt("sitecache-controller")
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

async fn wait_holder(h: &Harness, who: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    while holder(h).await.as_deref() != Some(who) {
        if start.elapsed() > timeout {
            h.fail(&format!(
                "the Lease is held by {:?}, not {who}, after {timeout:?}",
                holder(h).await
            ))
            .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

fn reconciles(metrics: &str) -> u64 {
    sample(metrics, "sitecache_reconciles_total")
}

/// Whether the replica says it leads (`sitecache_leader`).
fn leads(metrics: &str) -> bool {
    sample(metrics, "sitecache_leader") == 1
}

fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

#[tokio::test]
async fn two_replicas_one_leader_and_a_handover_within_the_lease() {
    let mut h = Harness::start(Options {
        leader_elect: true,
        ..Options::default()
    })
    .await;
    wait_holder(&h, "a", Duration::from_secs(30)).await;
    let (_b, b_port) = h.spawn_controller("b");

    h.create("one", json!({"site": "one", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("one", 1).await;
    assert_eq!(holder(&h).await.as_deref(), Some("a"));
    // Both are ready: the leader with its watches synced, the standby as a standby.
    h.wait_ready().await;
    wait_ready_at(b_port).await;
    assert!(reconciles(&h.metrics().await) > 0, "the leader reconciled");
    assert_eq!(
        reconciles(&metrics_at(b_port).await),
        0,
        "the standby never acted"
    );
    assert!(leads(&h.metrics().await), "a says it leads");
    assert!(!leads(&metrics_at(b_port).await), "b says it stands by");

    // The leader dies without releasing the Lease: b takes over once it expires (4 s).
    h.stop_controller();
    let handover = wait_holder(&h, "b", Duration::from_secs(30)).await;
    eprintln!("leader handover after the leader was killed: {handover:?} (lease 4 s)");
    assert!(
        handover <= Duration::from_secs(10),
        "handover took {handover:?}"
    );
    h.create("two", json!({"site": "two", "warm": warm("", 2)}))
        .await;
    h.wait_promoted("two", 1).await;
    assert!(
        reconciles(&metrics_at(b_port).await) > 0,
        "the new leader acts"
    );
    assert!(leads(&metrics_at(b_port).await), "b says it leads now");
    wait_ready_at(b_port).await;
    h.shutdown().await;
}
