//! The agent commands: `sitecache snapshot` and `sitecache warm-serve` (in the snapshot Job) and
//! `sitecache restore` (in a site runner at cold start).

mod install;
pub mod restore;
pub mod serve;
pub mod snapshot;
mod space;

use std::time::Duration;

use crate::storage::{CaBundle, CaBundleError, StorageOptions};

/// Flags that say how to reach the object store, on top of the standard AWS environment.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StorageArgs {
    /// Address buckets in the URL path (endpoint/bucket/key), as MinIO and most self-hosted
    /// S3-compatible stores need.
    #[arg(long, env = "SITECACHE_PATH_STYLE", value_parser = clap::builder::BoolishValueParser::new())]
    pub path_style: bool,

    /// S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS).
    #[arg(long, env = "SITECACHE_S3_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,

    /// Region (default: AWS_REGION, AWS_DEFAULT_REGION, the AWS profile, else us-east-1).
    #[arg(long, env = "SITECACHE_S3_REGION")]
    pub region: Option<String>,

    /// CA certificates (PEM, one or more) to trust besides the platform's, for a store whose
    /// certificate a private CA issued.
    #[arg(long, env = "SITECACHE_CA_BUNDLE", value_name = "FILE")]
    pub ca_bundle: Option<std::path::PathBuf>,
}

impl StorageArgs {
    /// The client options; reads and checks `--ca-bundle` first, so that a bad file fails
    /// before anything is sent.
    fn options(
        &self,
        attempt_timeout: Option<Duration>,
        max_attempts: u32,
    ) -> Result<StorageOptions, CaBundleError> {
        let ca_bundle = self.ca_bundle.as_deref().map(CaBundle::load).transpose()?;
        Ok(StorageOptions {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            path_style: self.path_style,
            connect_timeout: Some(Duration::from_secs(3)),
            attempt_timeout,
            max_attempts: Some(max_attempts),
            interceptor: None,
            ca_bundle,
        })
    }
}

/// Parses a duration flag (`30s`, `2m`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::api::duration::parse(s).map_err(|e| e.to_string())
}

/// The most a restore unpacks by default, and what a snapshot admits by default (so that nothing
/// is committed that a restore with its defaults refuses). A Deno cache is about 200 MB (tens of
/// thousands of files); the largest sites' reach a few GB. 8 GiB holds those with room to grow
/// and keeps what a manifest can ask of a runner's disk (or, on a tmpfs, its memory) to that.
pub const DEFAULT_MAX_UNPACKED_BYTES: &str = "8GiB";

/// The largest archive a restore downloads by default (`--max-bytes`), which a snapshot does not
/// commit past either.
pub const DEFAULT_MAX_BYTES: &str = "4GiB";

/// Parses a size flag (`500MiB`, `2GB`, `1048576`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?}: {e} (expected a size such as 500MiB or 2GB)"))
}

fn elapsed_ms(start: std::time::Instant) -> u64 {
    start.elapsed().as_millis().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unpack_default_is_the_flags_default() {
        assert_eq!(
            parse_size(DEFAULT_MAX_UNPACKED_BYTES).unwrap(),
            crate::archive::UnpackLimits::DEFAULT.max_bytes
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1_048_576);
        assert_eq!(parse_size("2MiB").unwrap(), 2 * 1_048_576);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert!(parse_size("lots").unwrap_err().contains("lots"));
    }
}
