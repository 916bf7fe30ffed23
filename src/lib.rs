//! sitecache: a Kubernetes operator that keeps each site's Deno module cache in S3-compatible
//! object storage, and the agent commands that snapshot and restore it.
//!
//! Layout:
//! - [`api`]: the `SiteCache` custom resource (the CRD is generated from these types);
//! - [`telemetry`]: logging (and, with the controller, metrics).

pub mod agent;
pub mod api;
pub mod archive;
pub mod storage;
pub mod telemetry;
