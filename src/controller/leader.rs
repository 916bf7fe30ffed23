//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): of several controller
//! replicas, only the holder of the Lease reconciles; the others wait, serving `/healthz`, and one
//! of them takes over once the holder's lease expires.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::controller::settings::ControllerArgs;
use crate::controller::settings::identity::MANAGER;

/// Where and how replicas elect a leader.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub lease: String,
    pub identity: String,
    /// How long a lease lasts without renewal: the longest handover after a leader dies.
    pub duration: Duration,
}

impl Election {
    /// The leader election the flags ask for, if enabled.
    pub fn from_args(args: &ControllerArgs) -> Option<Election> {
        args.leader_elect.then(|| Election {
            namespace: args
                .leader_election_namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "default".to_owned()),
            lease: args.leader_election_lease.clone(),
            identity: args.leader_election_identity.clone().unwrap_or_else(|| {
                std::env::var("POD_NAME").unwrap_or_else(|_| {
                    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map(|h| h.trim().to_owned())
                        .unwrap_or_else(|_| "sitecache".to_owned());
                    format!("{host}-{}", std::process::id())
                })
            }),
            duration: args.leader_election_duration,
        })
    }
}

/// Leadership while held: `lost` turns true if the lease is lost; dropping it releases the
/// lease.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

/// Waits until this replica holds the lease, or `stop` turns true (`Ok(None)`).
pub async fn acquire(
    client: Client,
    election: &Election,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<Leadership>> {
    let secs = election.duration.as_secs().max(2);
    let manager = LeaseManagerBuilder::new(client, &election.lease)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(secs)
        .with_grace((secs / 3).max(1))
        .with_field_manager(MANAGER)
        .build()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "leader election on Lease {}/{}: {e}",
                election.namespace,
                election.lease
            )
        })?;
    let (mut state, task) = manager.watch().await;
    tracing::info!(lease = %election.lease, identity = %election.identity, "waiting to lead");
    loop {
        if *state.borrow_and_update() {
            tracing::info!(lease = %election.lease, identity = %election.identity, "leading");
            return Ok(Some(Leadership { state, task }));
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() {
                anyhow::bail!("leader election on Lease {}/{} stopped", election.namespace, election.lease);
            },
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
    }
}

impl Leadership {
    /// Completes when the lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leading| !*leading).await;
    }

    /// Gives the lease up so that another replica takes over at once.
    pub async fn release(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease"),
            Err(e) => tracing::warn!(error = %e, "the lease task failed"),
        }
    }
}
