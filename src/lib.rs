//! sitecache: a Kubernetes operator that keeps each site's Deno module cache in S3-compatible
//! object storage, and the agent commands that snapshot and restore it.
//!
//! Layout:
//! - [`api`]: the `SiteCache` custom resource (the CRD is generated from these types);
//! - [`controller`]: `sitecache controller`, which reconciles SiteCaches into snapshot Jobs,
//!   generations and status;
//! - [`agent`]: `sitecache snapshot` and `sitecache restore`;
//! - [`archive`]: the archive format; [`storage`]: S3 access and the key layout;
//! - [`telemetry`]: logging and metrics;
//! - [`plugin`]: `kubectl sitecache`, the kubectl plugin.

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod archive;
pub mod controller;
pub mod plugin;
pub mod storage;
pub mod telemetry;
