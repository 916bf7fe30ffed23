//! Rebuilds: whether a snapshot starts from an empty cache or warms on top of the current
//! generation, and how much the cache has grown since its last rebuild (pure functions of the
//! policy and the status).
//!
//! Warming on top of the current generation only downloads what changed, but it never drops a
//! module: every revision's modules stay in every later generation, and each wake-up restores
//! them all. A rebuild starts from an empty cache and keeps only what the site uses now.

use crate::api::{CacheGrowth, GenerationInfo, RebuildSpec, SiteCacheStatus};

/// Why a snapshot starts from an empty cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebuildReason {
    /// There is no generation to start from.
    FirstGeneration,
    /// `spec.source.revision` changed (`rebuild.onRevisionChange`).
    RevisionChanged,
    /// This many generations in a row were warmed on top of the one before
    /// (`rebuild.everyGenerations`).
    EveryGenerations(u32),
    /// The cache grew by this many percent since its last rebuild (`rebuild.maxGrowthPercent`).
    Growth(i64),
    /// How the current generation was built is not known (it was adopted, or made by an older
    /// controller), so its growth cannot be measured.
    UnknownBase,
}

impl RebuildReason {
    /// A short label, for metrics and the Job's annotation.
    pub fn label(&self) -> &'static str {
        match self {
            RebuildReason::FirstGeneration => "first-generation",
            RebuildReason::RevisionChanged => "revision-changed",
            RebuildReason::EveryGenerations(_) => "every-generations",
            RebuildReason::Growth(_) => "growth",
            RebuildReason::UnknownBase => "unknown-base",
        }
    }
}

impl std::fmt::Display for RebuildReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RebuildReason::FirstGeneration => write!(f, "the first generation"),
            RebuildReason::RevisionChanged => write!(f, "the source revision changed"),
            RebuildReason::EveryGenerations(n) => {
                write!(f, "{n} generations were warmed on top of the one before")
            }
            RebuildReason::Growth(p) => write!(f, "the cache grew by {p}% since its last rebuild"),
            RebuildReason::UnknownBase => {
                write!(f, "how the current generation was built is not recorded")
            }
        }
    }
}

/// Whether the next snapshot of a SiteCache with `status` and source revision `revision` is a
/// rebuild, and why; `None`: it warms on top of the current generation.
pub fn rebuild_reason(
    policy: &RebuildSpec,
    revision: Option<&str>,
    status: &SiteCacheStatus,
) -> Option<RebuildReason> {
    let Some(current) = &status.current else {
        return Some(RebuildReason::FirstGeneration);
    };
    if policy.on_revision_change
        && revision.is_some_and(|r| current.source_revision.as_deref() != Some(r))
    {
        return Some(RebuildReason::RevisionChanged);
    }
    let Some(growth) = &status.growth else {
        return Some(RebuildReason::UnknownBase);
    };
    if growth.rebuilt_generation > current.generation {
        return Some(RebuildReason::UnknownBase);
    }
    if policy.every_generations > 0 && growth.incremental_generations >= policy.every_generations {
        return Some(RebuildReason::EveryGenerations(
            growth.incremental_generations,
        ));
    }
    if policy.max_growth_percent > 0 && growth.percent > i64::from(policy.max_growth_percent) {
        return Some(RebuildReason::Growth(growth.percent));
    }
    None
}

/// The growth once `promoted` is current, after `previous`: a rebuild starts counting again; a
/// generation warmed on top of another adds to the count; one whose base is not known leaves
/// the growth unknown.
pub fn growth_after(
    previous: Option<&CacheGrowth>,
    promoted: &GenerationInfo,
    rebuilt: bool,
) -> Option<CacheGrowth> {
    if rebuilt {
        return Some(CacheGrowth {
            rebuilt_generation: promoted.generation,
            rebuilt_uncompressed_bytes: promoted.uncompressed_bytes,
            incremental_generations: 0,
            percent: 0,
        });
    }
    let previous = previous?;
    promoted.base_generation?;
    Some(CacheGrowth {
        incremental_generations: previous.incremental_generations.saturating_add(1),
        percent: growth_percent(
            previous.rebuilt_uncompressed_bytes,
            promoted.uncompressed_bytes,
        ),
        ..previous.clone()
    })
}

/// The growth of retained generation `n` when it becomes current again (a pin): counted along
/// its bases back to the rebuild it grew from, as the generations record them. Unknown when that
/// chain leaves the retained generations (the next snapshot then rebuilds).
pub fn growth_of(generations: &[GenerationInfo], n: u64) -> Option<CacheGrowth> {
    let find = |g: u64| generations.iter().find(|i| i.generation == g);
    let pinned = find(n)?;
    let mut at = pinned;
    let mut steps: u32 = 0;
    while let Some(base) = at.base_generation {
        // Bases are older generations: a record saying otherwise ends the walk.
        if base >= at.generation {
            return None;
        }
        at = find(base)?;
        steps = steps.saturating_add(1);
    }
    Some(CacheGrowth {
        rebuilt_generation: at.generation,
        rebuilt_uncompressed_bytes: at.uncompressed_bytes,
        incremental_generations: steps,
        percent: growth_percent(at.uncompressed_bytes, pinned.uncompressed_bytes),
    })
}

/// How much larger `now` is than `base`, in percent (rounded toward zero).
fn growth_percent(base: u64, now: u64) -> i64 {
    let delta = i128::from(now) - i128::from(base);
    (delta * 100 / i128::from(base.max(1))).clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn info(generation: u64, bytes: u64, base: Option<u64>, rev: &str) -> GenerationInfo {
        GenerationInfo {
            generation,
            key: String::new(),
            size_bytes: 1,
            uncompressed_bytes: bytes,
            files: 1,
            sha256: String::new(),
            created_at: Time("2026-01-01T00:00:00Z".parse().unwrap()),
            promoted_at: None,
            source_revision: Some(rev.into()),
            base_generation: base,
            cache_owner: None,
            runtime: None,
        }
    }

    fn status(current: GenerationInfo, growth: Option<CacheGrowth>) -> SiteCacheStatus {
        SiteCacheStatus {
            current: Some(current),
            growth,
            ..Default::default()
        }
    }

    #[test]
    fn growth_counts_from_the_last_rebuild() {
        let g1 = info(1, 1000, None, "r1");
        let after1 = growth_after(None, &g1, true).unwrap();
        assert_eq!((after1.rebuilt_generation, after1.percent), (1, 0));
        let g2 = info(2, 1250, Some(1), "r1");
        let after2 = growth_after(Some(&after1), &g2, false).unwrap();
        assert_eq!(
            (
                after2.rebuilt_generation,
                after2.incremental_generations,
                after2.percent
            ),
            (1, 1, 25)
        );
        let g3 = info(3, 900, Some(2), "r1");
        let after3 = growth_after(Some(&after2), &g3, false).unwrap();
        assert_eq!((after3.incremental_generations, after3.percent), (2, -10));
        // A generation whose base is not recorded leaves the growth unknown.
        assert_eq!(
            growth_after(Some(&after3), &info(4, 1, None, "r1"), false),
            None
        );
        assert_eq!(growth_after(None, &g2, false), None);
        assert_eq!(growth_percent(0, 10), 1000);
        assert_eq!(growth_percent(u64::MAX, 0), -100);
    }

    #[test]
    fn a_pinned_generation_grows_from_its_own_rebuild() {
        let generations = [
            info(5, 1500, Some(4), "r2"),
            info(4, 1000, None, "r2"),
            info(3, 1300, Some(2), "r1"),
            info(2, 1100, Some(1), "r1"),
        ];
        let of = |n| {
            growth_of(&generations, n)
                .map(|g| (g.rebuilt_generation, g.incremental_generations, g.percent))
        };
        assert_eq!(of(5), Some((4, 1, 50)));
        assert_eq!(of(4), Some((4, 0, 0)));
        // Generation 1, its rebuild, is no longer retained: unknown.
        assert_eq!(of(3), None);
        assert_eq!(of(9), None);
        // A base that is not older cannot be followed.
        assert_eq!(growth_of(&[info(2, 1, Some(2), "r")], 2), None);
    }

    #[test]
    fn the_policy_decides_rebuilds() {
        let policy = RebuildSpec::default();
        assert_eq!(
            rebuild_reason(&policy, None, &SiteCacheStatus::default()),
            Some(RebuildReason::FirstGeneration)
        );
        let growth = |incremental, percent| CacheGrowth {
            rebuilt_generation: 1,
            rebuilt_uncompressed_bytes: 1000,
            incremental_generations: incremental,
            percent,
        };
        let s = status(info(3, 1000, Some(2), "r1"), Some(growth(2, 5)));
        assert_eq!(rebuild_reason(&policy, Some("r1"), &s), None);
        assert_eq!(rebuild_reason(&policy, None, &s), None);
        assert_eq!(
            rebuild_reason(&policy, Some("r2"), &s),
            Some(RebuildReason::RevisionChanged)
        );
        let no_revision_rule = RebuildSpec {
            on_revision_change: false,
            ..policy.clone()
        };
        assert_eq!(rebuild_reason(&no_revision_rule, Some("r2"), &s), None);
        let s = status(info(3, 1000, Some(2), "r1"), Some(growth(10, 5)));
        assert_eq!(
            rebuild_reason(&policy, Some("r1"), &s),
            Some(RebuildReason::EveryGenerations(10))
        );
        let s = status(info(3, 1000, Some(2), "r1"), Some(growth(2, 21)));
        assert_eq!(
            rebuild_reason(&policy, Some("r1"), &s),
            Some(RebuildReason::Growth(21))
        );
        let never = RebuildSpec {
            on_revision_change: true,
            every_generations: 0,
            max_growth_percent: 0,
        };
        let s = status(info(3, 1000, Some(2), "r1"), Some(growth(500, 900)));
        assert_eq!(rebuild_reason(&never, Some("r1"), &s), None);
        // Unknown growth (adopted, or an older controller's generation): rebuild once.
        let s = status(info(3, 1000, None, "r1"), None);
        assert_eq!(
            rebuild_reason(&policy, Some("r1"), &s),
            Some(RebuildReason::UnknownBase)
        );
    }
}
