//! The S3 clients the controller's reconciles share: one per store (endpoint, region,
//! addressing), at most [`Clients::CAPACITY`], the least recently used dropped first (regions are
//! free text in the spec, so the set of stores is not bounded by the allow-lists).

use std::collections::HashMap;

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents, SharedInterceptor};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::controller::settings::Target;
use crate::telemetry::metrics::OperationLabel;

/// Counts the requests of a client by S3 operation (each attempt, retries included), into
/// `sitecache_storage_requests_total`.
#[derive(Clone, Debug)]
pub struct CountRequests(pub Family<OperationLabel, Counter>);

impl CountRequests {
    pub fn shared(family: &Family<OperationLabel, Counter>) -> SharedInterceptor {
        SharedInterceptor::new(CountRequests(family.clone()))
    }
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
        self.0
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .inc();
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StorageKey {
    region: Option<String>,
    endpoint: Option<String>,
    path_style: bool,
}

/// S3 clients by store.
#[derive(Default)]
pub struct Clients {
    clients: HashMap<StorageKey, (aws_sdk_s3::Client, u64)>,
    /// A clock of uses, for least-recently-used eviction.
    uses: u64,
}

impl Clients {
    const CAPACITY: usize = 32;

    pub fn get(&mut self, key: &StorageKey) -> Option<aws_sdk_s3::Client> {
        self.uses += 1;
        let uses = self.uses;
        self.clients.get_mut(key).map(|(c, used)| {
            *used = uses;
            c.clone()
        })
    }

    pub fn insert(&mut self, key: StorageKey, client: aws_sdk_s3::Client) {
        while self.clients.len() >= Self::CAPACITY {
            let Some(oldest) = self
                .clients
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.clients.remove(&oldest);
        }
        self.uses += 1;
        self.clients.insert(key, (client, self.uses));
    }
}

impl StorageKey {
    pub fn of(target: &Target) -> Self {
        StorageKey {
            region: target.region.clone(),
            endpoint: target.endpoint.clone(),
            path_style: target.path_style,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(region: &str) -> StorageKey {
        StorageKey {
            region: Some(region.to_owned()),
            endpoint: None,
            path_style: false,
        }
    }

    fn client() -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    #[test]
    fn clients_are_bounded_and_the_least_recently_used_goes_first() {
        let mut clients = Clients::default();
        for i in 0..Clients::CAPACITY {
            clients.insert(key(&format!("r{i}")), client());
        }
        // r0 is used again, so r1 is now the least recently used.
        assert!(clients.get(&key("r0")).is_some());
        clients.insert(key("new"), client());
        assert_eq!(clients.clients.len(), Clients::CAPACITY);
        assert!(clients.get(&key("r0")).is_some());
        assert!(clients.get(&key("r1")).is_none());
        assert!(clients.get(&key("new")).is_some());
    }
}
