//! When a snapshot is due, and how fresh the promoted generation is: pure functions of the spec,
//! the status and the clock.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp, tz::TimeZone};

use crate::api::{
    Freshness, SNAPSHOT_REQUEST_ANNOTATION, ScheduleSpec, SiteCache, SnapshotResult, duration,
};

/// Why a snapshot is due, most pressing first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// An on-demand request (`sitecache.dev/snapshot-request`) not yet answered.
    Request(String),
    /// No generation has been promoted.
    Initial,
    /// `spec.source.revision` differs from the current generation's.
    Revision,
    /// A cron tick passed since the current generation was made.
    Cron,
    /// The current generation is older than `maxAge` (less the jitter).
    MaxAge,
}

impl Trigger {
    /// A short reason, for Events and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Trigger::Request(_) => "OnDemandRequest",
            Trigger::Initial => "NoGeneration",
            Trigger::Revision => "SourceRevisionChanged",
            Trigger::Cron => "CronTick",
            Trigger::MaxAge => "MaxAgeReached",
        }
    }
}

/// The schedule's verdict at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub freshness: Freshness,
    pub freshness_reason: String,
    /// Why a snapshot should start now, if one should (backoff and suspend already applied).
    pub due: Option<Trigger>,
    /// When the next snapshot falls due if none is due now (`None`: only a spec change or a
    /// request will make one due).
    pub next_due: Option<Timestamp>,
    /// A snapshot would be due but failures in a row hold it back until then.
    pub backoff_until: Option<Timestamp>,
    /// Since when the snapshot that is due has been due, where the schedule knows it (the
    /// SiteCache's creation, the maxAge or cron time it passed); `None` for a revision change
    /// or a request, due since they were seen.
    pub due_since: Option<Timestamp>,
    /// When the current generation turns `Stale` by age, if it is `Fresh` now: the status
    /// changes then, whatever the SiteCache is doing.
    pub fresh_until: Option<Timestamp>,
    /// The spec asks for a generation that is not promoted yet: there is none, or the source
    /// revision has none (what kstatus reads as a change still in progress; age alone is not).
    pub unmet: bool,
}

/// Failure backoff: the first delay and the cap.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after `failures` failures in a row: doubling from `base`, capped at `max`, then
    /// spread by up to ±10% with a jitter fixed per object and failure count (the same verdict on
    /// every reconcile, different across objects).
    pub fn delay(&self, failures: u32, uid: &str) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doubled = self.base.saturating_mul(
            1u32.checked_shl(failures.saturating_sub(1).min(30))
                .unwrap_or(u32::MAX),
        );
        let capped = doubled.min(self.max);
        let unit =
            (stable_hash(&[uid.as_bytes(), &failures.to_le_bytes()]) % 2001) as f64 / 1000.0 - 1.0;
        capped.mul_f64(1.0 + 0.1 * unit)
    }
}

/// The pending on-demand request token, if it differs from the last one answered.
pub fn pending_request(sc: &SiteCache) -> Option<String> {
    let token = sc
        .metadata
        .annotations
        .as_ref()?
        .get(SNAPSHOT_REQUEST_ANNOTATION)?
        .trim();
    let handled = sc
        .status
        .as_ref()
        .and_then(|s| s.last_handled_request.as_deref());
    (!token.is_empty() && Some(token) != handled).then(|| token.to_owned())
}

/// The schedule's offset for this object: a fixed fraction of `jitter`, from its uid.
pub fn jitter_offset(uid: &str, jitter: Duration) -> SignedDuration {
    let ms = jitter.as_millis().min(u64::MAX as u128) as u64;
    if ms == 0 {
        return SignedDuration::ZERO;
    }
    SignedDuration::from_millis((stable_hash(&[uid.as_bytes()]) % ms) as i64)
}

/// `spec.schedule`, parsed.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub max_age: Duration,
    pub jitter: Duration,
    pub cron: Option<croner::Cron>,
}

impl Schedule {
    /// Parses `spec.schedule`; the error names the field.
    pub fn parse(spec: &ScheduleSpec) -> Result<Schedule, String> {
        let max_age =
            duration::parse(&spec.max_age).map_err(|e| format!("spec.schedule.maxAge: {e}"))?;
        if max_age.is_zero() {
            return Err("spec.schedule.maxAge must be at least 1s".into());
        }
        let jitter =
            duration::parse(&spec.jitter).map_err(|e| format!("spec.schedule.jitter: {e}"))?;
        let cron = spec.cron.as_deref().map(parse_cron).transpose()?;
        Ok(Schedule {
            max_age,
            jitter,
            cron,
        })
    }
}

/// Evaluates the schedule of `sc` at `now`.
pub fn evaluate(sc: &SiteCache, schedule: &Schedule, now: Timestamp, backoff: Backoff) -> Verdict {
    let spec = &sc.spec;
    let status = sc.status.clone().unwrap_or_default();
    let uid = sc.metadata.uid.as_deref().unwrap_or_default();
    let offset = jitter_offset(uid, schedule.jitter.min(schedule.max_age / 2));
    let max_age = SignedDuration::try_from(schedule.max_age).unwrap_or(SignedDuration::MAX);
    let cron = schedule.cron.as_ref();

    let request = pending_request(sc);
    let mut triggers = Vec::new();
    let mut next_due: Option<Timestamp> = None;
    let (freshness, freshness_reason);
    let mut fresh_until = None;
    let mut unmet = false;
    match &status.current {
        None => {
            freshness = Freshness::Missing;
            freshness_reason = "no generation has been promoted yet".to_owned();
            unmet = true;
            triggers.push((
                Trigger::Initial,
                sc.metadata.creation_timestamp.as_ref().map(|t| t.0),
            ));
        }
        Some(current) => {
            let created = current.created_at.0;
            let expires = created.saturating_add(max_age).unwrap_or(Timestamp::MAX);
            let revision_changed = spec
                .source
                .revision
                .as_ref()
                .is_some_and(|r| current.source_revision.as_ref() != Some(r));
            if revision_changed {
                unmet = true;
                freshness = Freshness::Stale;
                freshness_reason = format!(
                    "generation {} was built from source revision {}, the source is at {}",
                    current.generation,
                    current.source_revision.as_deref().unwrap_or("(none)"),
                    spec.source.revision.as_deref().unwrap_or_default()
                );
                triggers.push((Trigger::Revision, None));
            } else if now >= expires {
                freshness = Freshness::Stale;
                freshness_reason = format!(
                    "generation {} is older than maxAge {} (made at {})",
                    current.generation,
                    spec.schedule.max_age,
                    created.round(jiff::Unit::Second).unwrap_or(created)
                );
            } else {
                fresh_until = Some(expires);
                freshness = Freshness::Fresh;
                freshness_reason = format!(
                    "generation {} matches the source and is younger than maxAge {}",
                    current.generation, spec.schedule.max_age
                );
            }
            let age_due = expires.saturating_sub(offset).unwrap_or(expires);
            if now >= age_due {
                triggers.push((Trigger::MaxAge, Some(age_due)));
            } else {
                next_due = Some(age_due);
            }
            if let Some(cron) = cron {
                // The tick after the generation was made, fired `offset` early: the reference
                // moves by the offset too, so an early snapshot does not count as before its tick.
                let reference = created.saturating_add(offset).unwrap_or(created);
                if let Some(tick) = next_tick(cron, reference) {
                    let fire = tick.saturating_sub(offset).unwrap_or(tick);
                    if now >= fire {
                        triggers.push((Trigger::Cron, Some(fire)));
                    } else {
                        next_due = Some(next_due.map_or(fire, |d| d.min(fire)));
                    }
                }
            }
        }
    }
    triggers.sort_by_key(|(t, _)| priority(t));
    // A pin holds its generation: nothing scheduled starts, and the spec asks for nothing more
    // than the pinned generation, promoted before this is evaluated. A request still runs (its
    // generation is verified and kept, not promoted), so a fix can be tried under the pin.
    let pinned = spec.pin.is_some();
    if pinned {
        triggers.clear();
        unmet = false;
    }
    if let Some(token) = request {
        triggers.insert(0, (Trigger::Request(token), None));
    }

    // Failures in a row hold scheduled snapshots back; a new on-demand request does not wait.
    let mut backoff_until = None;
    let failed_last = status.last_snapshot.as_ref().is_some_and(|l| {
        matches!(
            l.result,
            Some(SnapshotResult::Failed | SnapshotResult::Rejected)
        )
    });
    if status.consecutive_failures > 0 && failed_last {
        let finished = status
            .last_snapshot
            .as_ref()
            .and_then(|l| l.completion_time.as_ref().or(l.start_time.as_ref()))
            .map(|t| t.0);
        if let Some(finished) = finished {
            let delay = backoff.delay(status.consecutive_failures, uid);
            let until = finished
                .saturating_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX))
                .unwrap_or(Timestamp::MAX);
            if now < until
                && !matches!(triggers.first(), Some((Trigger::Request(_), _)))
                && !triggers.is_empty()
            {
                backoff_until = Some(until);
                next_due = Some(until);
                triggers.clear();
            }
        }
    }

    let (due, due_since) = match triggers.into_iter().next() {
        Some((trigger, since)) if !spec.suspend => (Some(trigger), since),
        _ => (None, None),
    };
    Verdict {
        freshness,
        freshness_reason,
        next_due: if spec.suspend || pinned || due.is_some() {
            None
        } else {
            next_due
        },
        due,
        backoff_until,
        due_since,
        fresh_until,
        unmet,
    }
}

fn priority(t: &Trigger) -> u8 {
    match t {
        Trigger::Request(_) => 0,
        Trigger::Initial => 1,
        Trigger::Revision => 2,
        Trigger::Cron => 3,
        Trigger::MaxAge => 4,
    }
}

/// Parses a five-field cron expression or an `@daily`-style macro (UTC).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("spec.schedule.cron {expr:?}: {e}"))
}

/// The first tick of `cron` strictly after `after`.
fn next_tick(cron: &croner::Cron, after: Timestamp) -> Option<Timestamp> {
    let zoned = after.to_zoned(TimeZone::UTC);
    cron.find_next_occurrence(&zoned, false)
        .ok()
        .map(|z| z.timestamp())
}

/// FNV-1a: a hash that never changes across builds or platforms, for per-object jitter.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GenerationInfo, LastSnapshot, SiteCacheSpec, SiteCacheStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(60),
        max: Duration::from_secs(3600),
    };

    /// Evaluates with the SiteCache's own schedule.
    fn eval(sc: &SiteCache, now: Timestamp) -> Verdict {
        evaluate(
            sc,
            &Schedule::parse(&sc.spec.schedule).unwrap(),
            now,
            BACKOFF,
        )
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn site(max_age: &str, jitter: &str, revision: Option<&str>) -> SiteCache {
        let spec: SiteCacheSpec = serde_json::from_value(serde_json::json!({
            "site": "shop",
            "warm": {"image": "deno"},
            "schedule": {"maxAge": max_age, "jitter": jitter},
            "source": {"revision": revision},
        }))
        .unwrap();
        let mut sc = SiteCache::new("shop", spec);
        sc.metadata.uid = Some("0f3c9a8e-1111-2222-3333-444455556666".into());
        sc
    }

    fn with_current(mut sc: SiteCache, created: &str, revision: Option<&str>) -> SiteCache {
        let status = sc.status.get_or_insert_with(SiteCacheStatus::default);
        status.current = Some(GenerationInfo {
            generation: 4,
            key: "shop/generations/00000000000000000004/cache.tar.zst".into(),
            size_bytes: 1,
            uncompressed_bytes: 1,
            files: 1,
            sha256: "00".into(),
            created_at: Time(ts(created)),
            promoted_at: None,
            source_revision: revision.map(str::to_owned),
            base_generation: None,
            cache_owner: None,
            runtime: None,
        });
        sc
    }

    #[test]
    fn no_generation_is_due_and_missing() {
        let v = eval(&site("24h", "0s", None), ts("2026-01-01T00:00:00Z"));
        assert_eq!(v.due, Some(Trigger::Initial));
        assert_eq!(v.freshness, Freshness::Missing);
        assert_eq!(v.next_due, None);
    }

    #[test]
    fn fresh_until_max_age_then_stale_and_due() {
        let sc = with_current(site("1h", "0s", None), "2026-01-01T00:00:00Z", None);
        let v = eval(&sc, ts("2026-01-01T00:59:00Z"));
        assert_eq!(v.freshness, Freshness::Fresh);
        assert_eq!(v.due, None);
        assert_eq!(v.next_due, Some(ts("2026-01-01T01:00:00Z")));
        let v = eval(&sc, ts("2026-01-01T01:00:00Z"));
        assert_eq!(v.freshness, Freshness::Stale);
        assert_eq!(v.due, Some(Trigger::MaxAge));
    }

    #[test]
    fn jitter_fires_early_by_a_fixed_amount_per_object() {
        let sc = with_current(site("1h", "10m", None), "2026-01-01T00:00:00Z", None);
        let a = eval(&sc, ts("2026-01-01T00:10:00Z")).next_due.unwrap();
        let b = eval(&sc, ts("2026-01-01T00:20:00Z")).next_due.unwrap();
        assert_eq!(
            a, b,
            "the same object gets the same offset on every reconcile"
        );
        assert!(a <= ts("2026-01-01T01:00:00Z") && a > ts("2026-01-01T00:50:00Z"));
        let mut other = sc.clone();
        other.metadata.uid = Some("another-uid".into());
        let c = eval(&other, ts("2026-01-01T00:10:00Z")).next_due.unwrap();
        assert_ne!(a, c, "objects spread out");
        // Still fresh while the early snapshot is due.
        let v = eval(&sc, a);
        assert_eq!(v.due, Some(Trigger::MaxAge));
        assert_eq!(v.freshness, Freshness::Fresh);
    }

    #[test]
    fn revision_change_is_due_and_stale() {
        let sc = with_current(
            site("24h", "0s", Some("b")),
            "2026-01-01T00:00:00Z",
            Some("a"),
        );
        let v = eval(&sc, ts("2026-01-01T00:01:00Z"));
        assert_eq!(v.due, Some(Trigger::Revision));
        assert_eq!(v.freshness, Freshness::Stale);
        assert!(
            v.freshness_reason.contains("revision a"),
            "{}",
            v.freshness_reason
        );
        // No revision in the spec: nothing to compare.
        let sc = with_current(site("24h", "0s", None), "2026-01-01T00:00:00Z", Some("a"));
        assert_eq!(eval(&sc, ts("2026-01-01T00:01:00Z")).due, None);
    }

    #[test]
    fn cron_tick_after_the_generation() {
        let mut sc = with_current(site("240h", "0s", None), "2026-01-01T00:30:00Z", None);
        sc.spec.schedule.cron = Some("0 * * * *".into());
        let v = eval(&sc, ts("2026-01-01T00:59:00Z"));
        assert_eq!(v.due, None);
        assert_eq!(v.next_due, Some(ts("2026-01-01T01:00:00Z")));
        assert_eq!(
            eval(&sc, ts("2026-01-01T01:00:00Z")).due,
            Some(Trigger::Cron)
        );
        // With jitter, the snapshot fires early; the generation it makes does not re-trigger the
        // same tick.
        sc.spec.schedule.jitter = "20m".into();
        let fire = eval(&sc, ts("2026-01-01T00:31:00Z")).next_due.unwrap();
        assert!(fire < ts("2026-01-01T01:00:00Z") && fire >= ts("2026-01-01T00:40:00Z"));
        let made = fire.checked_add(SignedDuration::from_secs(30)).unwrap();
        let sc = with_current(sc, &made.to_string(), None);
        let v = eval(&sc, made);
        assert_eq!(v.due, None);
        assert!(v.next_due.unwrap() > ts("2026-01-01T01:30:00Z"));
    }

    #[test]
    fn requests_are_answered_once() {
        let mut sc = with_current(site("24h", "0s", None), "2026-01-01T00:00:00Z", None);
        sc.metadata.annotations =
            Some([(SNAPSHOT_REQUEST_ANNOTATION.to_owned(), "t1".to_owned())].into());
        let now = ts("2026-01-01T00:01:00Z");
        assert_eq!(eval(&sc, now).due, Some(Trigger::Request("t1".into())));
        sc.status.as_mut().unwrap().last_handled_request = Some("t1".into());
        assert_eq!(eval(&sc, now).due, None);
    }

    #[test]
    fn failures_back_off_exponentially_but_requests_do_not_wait() {
        let mut sc = site("24h", "0s", None);
        let status = sc.status.get_or_insert_with(SiteCacheStatus::default);
        status.consecutive_failures = 3;
        status.last_snapshot = Some(LastSnapshot {
            generation: 3,
            job: "j".into(),
            completion_time: Some(Time(ts("2026-01-01T00:00:00Z"))),
            result: Some(SnapshotResult::Failed),
            ..Default::default()
        });
        let v = eval(&sc, ts("2026-01-01T00:03:00Z"));
        assert_eq!(v.due, None);
        let until = v.backoff_until.unwrap();
        // 4 minutes ± 10%.
        assert!(until >= ts("2026-01-01T00:03:36Z") && until <= ts("2026-01-01T00:04:24Z"));
        assert_eq!(v.next_due, Some(until));
        assert_eq!(eval(&sc, until).due, Some(Trigger::Initial));
        sc.metadata.annotations =
            Some([(SNAPSHOT_REQUEST_ANNOTATION.to_owned(), "now".to_owned())].into());
        assert_eq!(
            eval(&sc, ts("2026-01-01T00:03:00Z")).due,
            Some(Trigger::Request("now".into()))
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let d = |n| BACKOFF.delay(n, "uid").as_secs_f64();
        assert!((54.0..=66.0).contains(&d(1)));
        assert!((108.0..=132.0).contains(&d(2)));
        assert!((3240.0..=3960.0).contains(&d(20)));
        assert_eq!(BACKOFF.delay(0, "uid"), Duration::ZERO);
    }

    #[test]
    fn suspend_holds_everything() {
        let mut sc = site("24h", "0s", None);
        sc.spec.suspend = true;
        let v = eval(&sc, ts("2026-01-01T00:00:00Z"));
        assert_eq!(v.due, None);
        assert_eq!(v.next_due, None);
        assert_eq!(v.freshness, Freshness::Missing);
    }

    #[test]
    fn a_pin_holds_everything_but_requests() {
        // Stale by age and by revision: both would be due.
        let mut sc = with_current(
            site("1h", "0s", Some("v2")),
            "2026-01-01T00:00:00Z",
            Some("v1"),
        );
        let now = ts("2026-01-01T05:00:00Z");
        let v = eval(&sc, now);
        assert_eq!(v.due, Some(Trigger::Revision));
        assert!(v.unmet);
        sc.spec.pin = Some(crate::api::PinSpec { generation: 4 });
        let v = eval(&sc, now);
        assert_eq!(v.due, None);
        assert_eq!(v.next_due, None);
        // The spec asks for the pinned generation, which is current: met, and still Stale.
        assert!(!v.unmet);
        assert_eq!(v.freshness, Freshness::Stale);
        sc.metadata.annotations =
            Some([(SNAPSHOT_REQUEST_ANNOTATION.to_owned(), "try".to_owned())].into());
        assert_eq!(eval(&sc, now).due, Some(Trigger::Request("try".into())));
    }

    #[test]
    fn cron_macros_and_bad_expressions() {
        assert!(parse_cron("@daily").is_ok());
        assert!(parse_cron("*/15 * * * *").is_ok());
        assert!(
            parse_cron("61 * * * *")
                .unwrap_err()
                .contains("spec.schedule.cron")
        );
    }
}
