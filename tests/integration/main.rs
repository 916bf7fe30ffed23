//! Tests against the real parts: a local control plane (etcd + kube-apiserver) and real
//! S3-compatible servers (MinIO, and SeaweedFS for the storage tests that run on both), started
//! once per run by `support`. Each test gets its own namespace and bucket. Logs of the parts are
//! kept under `target/tmp/envtest/`.

/// Runs each storage test `NAME(store)` against every S3 implementation, as `NAME::minio` and
/// `NAME::seaweedfs`: a behaviour only MinIO has cannot hide behind a passing test.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn minio() {
                super::$name(sitecache_devtools::Store::Minio).await
            }
            #[tokio::test]
            async fn seaweedfs() {
                super::$name(sitecache_devtools::Store::Seaweedfs).await
            }
        }
    )*};
}

mod agent;
mod api;
mod bounds;
mod chart;
mod cluster;
mod controller;
mod dist;
mod faults;
mod fixtures;
mod gitops;
mod install;
mod job_runner;
mod node;
mod plugin;
mod private_ca;
mod runner_kit;
mod s3;
mod soak;
mod support;
mod warm_serve;
