//! Tests against the real parts: a local control plane (etcd + kube-apiserver) and a real
//! S3-compatible server (MinIO), started once per run by `support`. Each test gets its own
//! namespace and bucket. Logs of the parts are kept under `target/tmp/envtest/`.

mod agent;
mod api;
mod bounds;
mod chart;
mod cluster;
mod controller;
mod faults;
mod fixtures;
mod install;
mod job_runner;
mod node;
mod plugin;
mod s3;
mod soak;
mod support;
