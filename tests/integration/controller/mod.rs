//! The controller on the real control plane and the real S3 server, its Jobs run by the local job
//! runner: the scenarios of a SiteCache's life.

mod clusters;
mod deletion;
mod deno;
mod durability;
mod errors;
mod events;
mod fleet;
mod foreign;
pub(crate) mod harness;
mod job_defaults;
mod leader;
mod lifecycle;
mod pod_settings;
mod prefixes;
mod private_ca;
mod retries;
mod status_write;
mod tenancy;
mod trust;
