//! `s3://bucket/prefix/` locations and the key layout under a prefix.

use std::fmt;
use std::str::FromStr;

/// The name of the ownership marker at the top of every SiteCache's prefix.
pub const OWNER_MARKER: &str = ".sitecache-owner.json";

/// The prefixes above `key`, shortest first: `a/b/c` (or `a/b/c/`) has `a/` and `a/b/`.
pub fn parent_prefixes(key: &str) -> Vec<&str> {
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    trimmed
        .match_indices('/')
        .map(|(i, _)| &trimmed[..=i])
        .collect()
}

/// The prefix an ownership marker's key claims (`a/b/.sitecache-owner.json` claims `a/b/`), if
/// the key is a marker's.
pub fn claimed_by_marker(key: &str) -> Option<&str> {
    let prefix = key.strip_suffix(OWNER_MARKER)?;
    (prefix.is_empty() || prefix.ends_with('/')).then_some(prefix)
}

/// A new random attempt token: 16 lower-case hex digits.
pub fn new_attempt_token() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Whether `t` is an attempt token (16 lower-case hex digits).
pub fn is_attempt_token(t: &str) -> bool {
    t.len() == 16
        && t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A bucket and a key prefix: where one site's objects live.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    pub bucket: String,
    /// Never empty, never starts with '/', never contains `..` or `//`, always ends with '/'.
    pub prefix: String,
}

/// Why a location is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("{0:?} is not an s3:// URL (expected s3://BUCKET/PREFIX/)")]
    NotS3(String),
    #[error("{0:?} has no bucket (expected s3://BUCKET/PREFIX/)")]
    NoBucket(String),
    #[error(
        "bucket {0:?} is not a valid bucket name (3-63 lower-case letters, digits, '.' and '-')"
    )]
    BadBucket(String),
    #[error("prefix {prefix:?} {why}")]
    BadPrefix { prefix: String, why: &'static str },
}

impl Location {
    /// A location from a bucket and a prefix, checked with the same rules as the CRD.
    pub fn new(bucket: &str, prefix: &str) -> Result<Self, LocationError> {
        validate_bucket(bucket)?;
        validate_prefix(prefix)?;
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// `P/generations/<n>/`, with `n` zero-padded to 20 digits so that keys sort by number.
    pub fn generation_prefix(&self, generation: u64) -> String {
        format!("{}generations/{generation:020}/", self.prefix)
    }

    /// The archive of generation `n` as snapshots before attempt keys wrote it (still read).
    pub fn archive_key(&self, generation: u64) -> String {
        format!("{}cache.tar.zst", self.generation_prefix(generation))
    }

    /// `P/generations/<n>/attempts/<token>`: written by a snapshot attempt before it uploads
    /// anything, so that its objects (complete or not) can be found by listing.
    pub fn attempt_marker_key(&self, generation: u64, token: &str) -> String {
        format!("{}attempts/{token}", self.generation_prefix(generation))
    }

    /// The archive that snapshot attempt `token` of generation `n` writes: each attempt writes
    /// its own, so two attempts of one generation never overwrite each other's bytes.
    pub fn attempt_archive_key(&self, generation: u64, token: &str) -> String {
        format!(
            "{}cache-{token}.tar.zst",
            self.generation_prefix(generation)
        )
    }

    /// The legacy gzip copy that snapshot attempt `token` of generation `n` writes.
    pub fn attempt_legacy_key(&self, generation: u64, token: &str) -> String {
        format!(
            "{}legacy-{token}.tar.gz",
            self.generation_prefix(generation)
        )
    }

    /// The generation and token of an attempt marker's key.
    pub fn attempt_of_marker<'k>(&self, key: &'k str) -> Option<(u64, &'k str)> {
        let n = self.generation_of_key(key)?;
        let token = key
            .strip_prefix(&self.generation_prefix(n))?
            .strip_prefix("attempts/")?;
        is_attempt_token(token).then_some((n, token))
    }

    /// The attempt token in an archive key of generation `n`: `Some(None)` for the key without
    /// one (written before attempt keys), `None` if `key` is no archive key of generation `n`.
    pub fn archive_token<'k>(&self, generation: u64, key: &'k str) -> Option<Option<&'k str>> {
        if key == self.archive_key(generation) {
            return Some(None);
        }
        let token = key
            .strip_prefix(&self.generation_prefix(generation))?
            .strip_prefix("cache-")?
            .strip_suffix(".tar.zst")?;
        is_attempt_token(token).then_some(Some(token))
    }

    /// The legacy key that goes with the archive of the attempt `token` (`None`: the key
    /// without one).
    pub fn legacy_key_for(&self, generation: u64, token: Option<&str>) -> String {
        match token {
            Some(t) => self.attempt_legacy_key(generation, t),
            None => self.legacy_archive_key(generation),
        }
    }

    /// The manifest of generation `n`: written last, it commits the generation.
    pub fn manifest_key(&self, generation: u64) -> String {
        format!("{}manifest.json", self.generation_prefix(generation))
    }

    /// The legacy gzip copy of generation `n`, published to `spec.legacy.publishKey` on promotion.
    pub fn legacy_archive_key(&self, generation: u64) -> String {
        format!("{}legacy.tar.gz", self.generation_prefix(generation))
    }

    /// `P/generations/`: the parent of every generation.
    pub fn generations_prefix(&self) -> String {
        format!("{}generations/", self.prefix)
    }

    /// `P/logs/`: the parent of the snapshot Jobs' logs.
    pub fn logs_prefix(&self) -> String {
        format!("{}logs/", self.prefix)
    }

    /// `P/logs/<n>.json`: the logs of the snapshot Job of generation `n` (zero-padded as
    /// generations are).
    pub fn log_key(&self, generation: u64) -> String {
        format!("{}{generation:020}.json", self.logs_prefix())
    }

    /// The generation a key under `P/logs/` holds the logs of.
    pub fn generation_of_log_key(&self, key: &str) -> Option<u64> {
        let num = key
            .strip_prefix(&self.logs_prefix())?
            .strip_suffix(".json")?;
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        num.parse().ok()
    }

    /// `P/current.json`: the promoted generation.
    pub fn current_key(&self) -> String {
        format!("{}current.json", self.prefix)
    }

    /// `P/.sitecache-owner.json`: which SiteCache owns the prefix.
    pub fn owner_key(&self) -> String {
        format!("{}{OWNER_MARKER}", self.prefix)
    }

    /// The generation number a key under `P/generations/` belongs to.
    pub fn generation_of_key(&self, key: &str) -> Option<u64> {
        let rest = key.strip_prefix(&self.generations_prefix())?;
        let (num, _) = rest.split_once('/')?;
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        num.parse().ok()
    }
}

impl FromStr for Location {
    type Err = LocationError;

    /// Parses `s3://BUCKET/PREFIX/`.
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| LocationError::NotS3(url.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(LocationError::NoBucket(url.to_owned()));
        }
        Self::new(bucket, prefix)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

fn validate_bucket(bucket: &str) -> Result<(), LocationError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.as_bytes()[0].is_ascii_alphanumeric()
        && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(LocationError::BadBucket(bucket.to_owned()))
    }
}

/// The prefix rules of the contract (the CRD enforces the same with CEL).
pub fn validate_prefix(prefix: &str) -> Result<(), LocationError> {
    let why = if prefix.is_empty() {
        Some("is empty: a site's objects always live under a prefix such as shop/")
    } else if prefix.starts_with('/') {
        Some("must not start with '/'")
    } else if prefix.contains("..") {
        Some("must not contain '..'")
    } else if prefix.contains("//") {
        Some("must not contain '//'")
    } else if !prefix.ends_with('/') {
        Some("must end with '/'")
    } else {
        None
    };
    match why {
        Some(why) => Err(LocationError::BadPrefix {
            prefix: prefix.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let loc: Location = "s3://caches/tenants/shop/".parse().unwrap();
        assert_eq!(loc.bucket, "caches");
        assert_eq!(loc.prefix, "tenants/shop/");
        assert_eq!(loc.to_string(), "s3://caches/tenants/shop/");
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "caches/shop/",
            "s3:///shop/",
            "s3://caches",
            "s3://caches/",
            "s3://caches//shop/",
            "s3://caches/shop",
            "s3://caches/a/../b/",
            "s3://caches/a//b/",
            "s3://Caches/shop/",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn parents_and_markers() {
        assert_eq!(parent_prefixes("a/b/c/"), ["a/", "a/b/"]);
        assert_eq!(parent_prefixes("a/b/c.tgz"), ["a/", "a/b/"]);
        assert_eq!(parent_prefixes("a/"), Vec::<&str>::new());
        assert_eq!(claimed_by_marker("a/b/.sitecache-owner.json"), Some("a/b/"));
        assert_eq!(claimed_by_marker("a/x.sitecache-owner.json"), None);
        assert_eq!(claimed_by_marker("a/b/current.json"), None);
    }

    #[test]
    fn key_layout() {
        let loc = Location::new("b", "shop/").unwrap_err();
        assert!(matches!(loc, LocationError::BadBucket(_)));
        let loc = Location::new("bucket", "shop/").unwrap();
        assert_eq!(
            loc.archive_key(7),
            "shop/generations/00000000000000000007/cache.tar.zst"
        );
        assert_eq!(loc.log_key(7), "shop/logs/00000000000000000007.json");
        assert_eq!(loc.generation_of_log_key(&loc.log_key(7)), Some(7));
        assert_eq!(loc.generation_of_log_key("shop/logs/.json"), None);
        assert_eq!(loc.generation_of_log_key("shop/logs/7.txt"), None);
        assert_eq!(loc.generation_of_log_key("shop/generations/7.json"), None);
        assert_eq!(
            loc.manifest_key(7),
            "shop/generations/00000000000000000007/manifest.json"
        );
        assert_eq!(loc.current_key(), "shop/current.json");
        assert_eq!(loc.owner_key(), "shop/.sitecache-owner.json");
        assert_eq!(loc.generation_of_key(&loc.archive_key(12)), Some(12));
        assert_eq!(loc.generation_of_key("shop/current.json"), None);
        assert_eq!(loc.generation_of_key("shop/generations/x1/a"), None);
        let t = "0123456789abcdef";
        let archive = loc.attempt_archive_key(7, t);
        assert_eq!(
            archive,
            "shop/generations/00000000000000000007/cache-0123456789abcdef.tar.zst"
        );
        assert_eq!(loc.archive_token(7, &archive), Some(Some(t)));
        assert_eq!(loc.archive_token(7, &loc.archive_key(7)), Some(None));
        assert_eq!(loc.archive_token(8, &archive), None);
        let other = "shop/generations/00000000000000000007/cache-../../x.tar.zst";
        assert_eq!(loc.archive_token(7, other), None);
        assert_eq!(
            loc.legacy_key_for(7, Some(t)),
            "shop/generations/00000000000000000007/legacy-0123456789abcdef.tar.gz"
        );
        let marker = loc.attempt_marker_key(7, t);
        assert_eq!(loc.attempt_of_marker(&marker), Some((7, t)));
        assert_eq!(loc.attempt_of_marker(&archive), None);
        assert!(is_attempt_token(&new_attempt_token()));
        assert_ne!(new_attempt_token(), new_attempt_token());
        // Zero-padding makes lexical order numeric order.
        assert!(loc.archive_key(9) < loc.archive_key(10));
    }
}
