//! A SiteCache's spec checked against the controller's configuration and parsed once, into the
//! [`Validated`] value every later step of a reconcile takes: storage target, schedule, Job
//! deadline, legacy publish key, rebuild policy, the snapshot pod's settings. Pure: no call leaves the process.
//!
//! The API server's schema already refuses most bad input; what is left here is what only the
//! controller knows (its allow-lists, its defaults) or what a pattern cannot say (a cron that
//! matches the pattern but not the parser). Each refusal names the field and becomes the
//! SiteCache's `Ready`/`Degraded` reason.

use std::time::Duration;

use crate::api::{RebuildSpec, SiteCache, cache_dir_problem, duration};
use crate::storage::Location;

use crate::controller::settings::podspec::{self, RunAs};
use crate::controller::settings::schedule::Schedule;
use crate::controller::settings::{Settings, Target, TargetError};

/// What a reconcile acts on: the spec, checked and parsed.
#[derive(Clone, Debug)]
pub struct Validated {
    pub target: Target,
    pub schedule: Schedule,
    /// The snapshot Job's deadline (`spec.snapshot.timeout`).
    pub timeout: Duration,
    /// Where promotion publishes the legacy copy, if anywhere.
    pub legacy_key: Option<String>,
    pub rebuild: RebuildSpec,
    /// The warm container's declared non-root user, which the agent containers run as.
    pub run_as: Option<RunAs>,
    /// The generation `spec.pin` holds as current: a retained one.
    pub pin: Option<u64>,
}

/// Why the controller cannot act on a SiteCache until its spec or the controller's configuration
/// changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    Storage(#[from] TargetError),
    #[error(
        "spec.storage.endpoint {endpoint:?} is not one of the controller's allowed endpoints \
         ({allowed}; --allowed-endpoints): the controller would call it with its own credentials"
    )]
    EndpointNotAllowed { endpoint: String, allowed: String },
    #[error("{0}")]
    Schedule(String),
    #[error("spec.snapshot.timeout: {0}")]
    Timeout(String),
    #[error("spec.legacy.publishKey {key:?} {why}")]
    LegacyKey { key: String, why: String },
    #[error("{0}")]
    PodSettings(String),
    #[error("spec.warm.cacheDir {dir:?} {why}")]
    CacheDir { dir: String, why: String },
    #[error("{0}")]
    Serve(String),
    #[error(
        "spec.pin.generation {generation} is not a retained generation ({retained}): only a \
         generation in status.generations can be promoted again"
    )]
    Pin { generation: u64, retained: String },
}

impl Invalid {
    /// The reason of the `Ready` and `Degraded` conditions and of the Warning Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::Storage(_) => "InvalidStorage",
            Invalid::EndpointNotAllowed { .. } => "EndpointNotAllowed",
            Invalid::Schedule(_) => "InvalidSchedule",
            Invalid::Timeout(_) => "InvalidSnapshotTimeout",
            Invalid::LegacyKey { .. } => "InvalidLegacyKey",
            Invalid::PodSettings(_) => "InvalidPodSettings",
            Invalid::CacheDir { .. } => "InvalidCacheDir",
            Invalid::Serve(_) => "InvalidWarm",
            Invalid::Pin { .. } => "InvalidPin",
        }
    }
}

/// Checks and parses the spec of `sc` under `settings`.
pub fn validate(sc: &SiteCache, settings: &Settings) -> Result<Validated, Invalid> {
    let spec = &sc.spec;
    let target = settings.target(sc)?;
    if let Some(endpoint) = &spec.storage.endpoint
        && !settings.endpoint_allowed(endpoint)
    {
        return Err(Invalid::EndpointNotAllowed {
            endpoint: endpoint.clone(),
            allowed: settings.allowed_endpoints_text(),
        });
    }
    let schedule = Schedule::parse(&spec.schedule).map_err(Invalid::Schedule)?;
    let timeout =
        duration::parse(&spec.snapshot.timeout).map_err(|e| Invalid::Timeout(e.to_string()))?;
    let legacy_key = match &spec.legacy {
        None => None,
        Some(legacy) => {
            let key = &legacy.publish_key;
            legacy_key_problem(
                key,
                &target.location,
                settings.allow_legacy_keys_outside_prefix,
            )
            .map_or(Ok(()), |why| {
                Err(Invalid::LegacyKey {
                    key: key.clone(),
                    why,
                })
            })?;
            Some(key.clone())
        }
    };
    if let Some(why) = cache_dir_problem(&spec.warm.cache_dir) {
        return Err(Invalid::CacheDir {
            dir: spec.warm.cache_dir.clone(),
            why,
        });
    }
    let run_as = podspec::check(sc).map_err(Invalid::PodSettings)?;
    if let Some(serve) = &spec.warm.serve {
        serve_problem(&spec.warm, serve).map_or(Ok(()), |why| Err(Invalid::Serve(why)))?;
    }
    let pin = match &spec.pin {
        None => None,
        Some(pin) => Some(retained(sc, pin.generation)?),
    };
    Ok(Validated {
        target,
        schedule,
        timeout,
        legacy_key,
        rebuild: spec.snapshot.rebuild.clone(),
        run_as,
        pin,
    })
}

/// What is wrong with `spec.warm.serve`, if anything (the CRD refuses most of it; SiteCaches
/// stored before its rules are checked here).
fn serve_problem(warm: &crate::api::WarmSpec, serve: &crate::api::ServeSpec) -> Option<String> {
    if warm.command.as_ref().is_none_or(|c| c.is_empty()) {
        return Some(
            "spec.warm.serve needs spec.warm.command: the site's command, which the warm step \
             starts and stops"
                .into(),
        );
    }
    for (field, value) in [
        ("timeout", &serve.timeout),
        ("stopGrace", &serve.stop_grace),
    ] {
        if let Err(e) = duration::parse(value) {
            return Some(format!("spec.warm.serve.{field}: {e}"));
        }
    }
    let bad_path = |p: &String| {
        !p.starts_with('/')
            || p.len() > 1024
            || p.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    if let Some(p) = std::iter::once(&serve.readiness_path)
        .chain(&serve.paths)
        .find(|p| bad_path(p))
    {
        return Some(format!(
            "spec.warm.serve: path {p:?} must be absolute, without spaces, at most 1024 characters"
        ));
    }
    (serve.port == 0).then(|| "spec.warm.serve.port must be 1 to 65535".into())
}

/// `n` if the status records it as a retained generation (verified when its snapshot finished,
/// or when the prefix was adopted) that retention has not expired: the only ones a pin may
/// promote, since their records are what `current.json` is checked against.
fn retained(sc: &SiteCache, n: u64) -> Result<u64, Invalid> {
    let Some(status) = &sc.status else {
        return Err(Invalid::Pin {
            generation: n,
            retained: "none is retained".into(),
        });
    };
    if status.pinnable().contains(&n) {
        return Ok(n);
    }
    Err(Invalid::Pin {
        generation: n,
        retained: status.pinnable_text(),
    })
}

/// Why `key` cannot be the legacy publish key of a SiteCache at `location`, if it cannot: it lies
/// outside the prefix (unless `outside_allowed`), or it is one of the objects the layout of a
/// prefix reserves (a `current.json`, an ownership marker, anything under `generations/`), its
/// own or, outside it, any prefix's. Whether another SiteCache owns a prefix the key lies under
/// is checked against storage when the key is written.
pub fn legacy_key_problem(key: &str, location: &Location, outside_allowed: bool) -> Option<String> {
    if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
        return Some("must name an object: not empty, no leading or trailing '/'".into());
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Some("must not have empty, '.' or '..' segments".into());
    }
    let prefix = &location.prefix;
    match key.strip_prefix(prefix.as_str()) {
        Some(rest) => {
            if rest == "current.json" || rest == ".sitecache-owner.json" {
                return Some(format!(
                    "is {prefix}{rest}, an object of this SiteCache's own layout"
                ));
            }
            if rest.starts_with("generations/") {
                return Some(format!(
                    "lies under {prefix}generations/, where this SiteCache's generations live"
                ));
            }
            None
        }
        None if !outside_allowed => Some(format!(
            "lies outside the SiteCache's prefix {prefix} (the controller allows that only with \
             --allow-legacy-keys-outside-prefix)"
        )),
        None => {
            let name = key.rsplit('/').next().unwrap_or(key);
            if name == "current.json" || name == ".sitecache-owner.json" {
                return Some(format!(
                    "names a {name}, an object every SiteCache prefix reserves"
                ));
            }
            if key.split('/').any(|s| s == "generations") {
                return Some(
                    "lies under a generations/ directory, where SiteCache generations live".into(),
                );
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SiteCacheSpec;

    fn settings() -> Settings {
        crate::controller::settings::settings_from(&[
            "--default-bucket",
            "caches",
            "--endpoint",
            "http://minio:9000",
            "--allowed-endpoints",
            "https://R2.example.com/",
        ])
    }

    fn site(spec: serde_json::Value) -> SiteCache {
        let mut base = serde_json::json!({"site": "shop", "warm": {"image": "deno"}});
        base.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        let spec: SiteCacheSpec = serde_json::from_value(base).unwrap();
        SiteCache::new("shop", spec)
    }

    #[test]
    fn defaults_parse_once() {
        let v = validate(&site(serde_json::json!({})), &settings()).unwrap();
        assert_eq!(v.target.location.to_string(), "s3://caches/shop/");
        assert_eq!(v.schedule.max_age, Duration::from_secs(86_400));
        assert_eq!(v.schedule.jitter, Duration::from_secs(600));
        assert!(v.schedule.cron.is_none());
        assert_eq!(v.timeout, Duration::from_secs(1800));
        assert_eq!(v.legacy_key, None);
        assert!(v.rebuild.on_revision_change);
    }

    #[test]
    fn a_cron_the_pattern_accepts_but_the_parser_refuses_is_reported() {
        let e = validate(
            &site(serde_json::json!({"schedule": {"cron": "61 * * * *"}})),
            &settings(),
        )
        .unwrap_err();
        assert_eq!(e.reason(), "InvalidSchedule");
        assert!(e.to_string().contains("spec.schedule.cron"), "{e}");
    }

    #[test]
    fn cache_dirs_are_clean_paths_away_from_secrets() {
        for ok in [
            "/deno-dir",
            "/cache/deno",
            "/var/cache/deno",
            "/runner",
            "/etcetera",
        ] {
            assert_eq!(cache_dir_problem(ok), None, "{ok}");
        }
        for bad in [
            "/",
            "deno",
            "/a/../etc",
            "/a/./b",
            "/a//b",
            "/deno/",
            "/etc",
            "/var/run/secrets/kubernetes.io",
            "/run/secrets",
            "/proc/self",
            "/var/lib/kubelet/pods",
        ] {
            assert!(cache_dir_problem(bad).is_some(), "{bad}");
        }
        let sc =
            site(serde_json::json!({"warm": {"image": "deno", "cacheDir": "/var/run/secrets"}}));
        let e = validate(&sc, &settings()).unwrap_err();
        assert_eq!(e.reason(), "InvalidCacheDir");
        assert!(e.to_string().contains("spec.warm.cacheDir"), "{e}");
    }

    #[test]
    fn endpoints_must_be_allowed() {
        for ok in [
            "http://minio:9000",
            "http://minio:9000/",
            "https://r2.example.com",
        ] {
            let sc = site(serde_json::json!({"storage": {"endpoint": ok}}));
            assert!(validate(&sc, &settings()).is_ok(), "{ok}");
        }
        let sc = site(serde_json::json!({"storage": {"endpoint": "http://169.254.169.254/"}}));
        let e = validate(&sc, &settings()).unwrap_err();
        assert_eq!(e.reason(), "EndpointNotAllowed");
        let text = e.to_string();
        assert!(
            text.contains("spec.storage.endpoint") && text.contains("--allowed-endpoints"),
            "{text}"
        );
    }

    #[test]
    fn legacy_keys_stay_in_the_prefix_and_off_its_layout() {
        let loc = Location::new("caches", "shop/").unwrap();
        assert_eq!(legacy_key_problem("shop/cache.tgz", &loc, false), None);
        assert_eq!(legacy_key_problem("shop/old/cache.tgz", &loc, false), None);
        for bad in [
            "other/cache.tgz",
            "shopping/cache.tgz",
            "shop/current.json",
            "shop/.sitecache-owner.json",
            "shop/generations/00000000000000000001/cache.tar.zst",
            "shop//cache.tgz",
            "shop/./cache.tgz",
        ] {
            assert!(legacy_key_problem(bad, &loc, false).is_some(), "{bad}");
        }
        // With the allowance, outside the prefix is fine, but never a reserved object.
        assert_eq!(legacy_key_problem("legacy/shop.tgz", &loc, true), None);
        for bad in [
            "other/current.json",
            "other/.sitecache-owner.json",
            "other/generations/00000000000000000001/cache.tar.zst",
            "shop/current.json",
        ] {
            assert!(legacy_key_problem(bad, &loc, true).is_some(), "{bad}");
        }
        let sc = site(serde_json::json!({"legacy": {"publishKey": "other/current.json"}}));
        let e = validate(&sc, &settings()).unwrap_err();
        assert_eq!(e.reason(), "InvalidLegacyKey");
        assert!(
            e.to_string()
                .starts_with("spec.legacy.publishKey \"other/current.json\"")
        );
    }

    #[test]
    fn a_pin_must_name_a_retained_generation() {
        let info = |generation: u64| crate::api::GenerationInfo {
            generation,
            key: format!("shop/generations/{generation}/a.tar.zst"),
            size_bytes: 1,
            uncompressed_bytes: 1,
            files: 1,
            sha256: "0".repeat(64),
            created_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
            promoted_at: None,
            source_revision: None,
            base_generation: None,
            cache_owner: None,
            runtime: None,
        };
        let mut sc = site(serde_json::json!({"pin": {"generation": 4}}));
        // No status yet: nothing is retained.
        let e = validate(&sc, &settings()).unwrap_err();
        assert_eq!(e.reason(), "InvalidPin");
        assert!(e.to_string().contains("(none is retained)"), "{e}");
        sc.status = Some(crate::api::SiteCacheStatus {
            current: Some(info(6)),
            generations: vec![info(6), info(5), info(4)],
            expired_generations: vec![4],
            ..Default::default()
        });
        // 4 is on its way out (superseded, within its grace period): refused, and the message
        // names what may be pinned.
        let e = validate(&sc, &settings()).unwrap_err();
        assert!(e.to_string().contains("(retained: 6, 5)"), "{e}");
        sc.spec.pin = Some(crate::api::PinSpec { generation: 5 });
        assert_eq!(validate(&sc, &settings()).unwrap().pin, Some(5));
        sc.spec.pin = Some(crate::api::PinSpec { generation: 6 });
        assert_eq!(validate(&sc, &settings()).unwrap().pin, Some(6));
        sc.spec.pin = None;
        assert_eq!(validate(&sc, &settings()).unwrap().pin, None);
    }
}
