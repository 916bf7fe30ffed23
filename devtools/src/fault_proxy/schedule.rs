//! Which fault a request gets: drawn from a seeded generator, so a run can be repeated.

use std::time::Duration;

/// The kinds of fault the proxy injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// `503 SlowDown`, as S3 throttles.
    SlowDown,
    /// `500 InternalError`.
    InternalError,
    /// A delay before the request is forwarded.
    Latency,
    /// The connection reset before any response.
    ResetBeforeResponse,
    /// The connection reset (RST) part-way through the response body.
    ResetMidBody,
    /// The connection closed (FIN) part-way through the response body: fewer bytes than the
    /// response's `Content-Length` said.
    TruncatedBody,
    /// The response body paused part-way for a while.
    StalledBody,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::SlowDown,
        FaultKind::InternalError,
        FaultKind::Latency,
        FaultKind::ResetBeforeResponse,
        FaultKind::ResetMidBody,
        FaultKind::TruncatedBody,
        FaultKind::StalledBody,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::SlowDown => "503-slow-down",
            FaultKind::InternalError => "500-internal-error",
            FaultKind::Latency => "latency",
            FaultKind::ResetBeforeResponse => "reset-before-response",
            FaultKind::ResetMidBody => "reset-mid-body",
            FaultKind::TruncatedBody => "truncated-body",
            FaultKind::StalledBody => "stalled-body",
        }
    }

    /// Whether the fault acts on a response body (only responses to GET have one worth cutting).
    pub fn on_body(self) -> bool {
        matches!(
            self,
            FaultKind::ResetMidBody | FaultKind::TruncatedBody | FaultKind::StalledBody
        )
    }
}

/// How often each fault happens (probabilities per request, summing to at most 1) and how bad
/// the slow ones are.
#[derive(Clone, Debug)]
pub struct FaultRates {
    pub rates: Vec<(FaultKind, f64)>,
    pub max_latency: Duration,
    pub max_stall: Duration,
}

impl FaultRates {
    /// No faults.
    pub fn none() -> Self {
        FaultRates {
            rates: Vec::new(),
            max_latency: Duration::ZERO,
            max_stall: Duration::ZERO,
        }
    }

    /// Every kind at `rate` each.
    pub fn each(rate: f64, max_latency: Duration, max_stall: Duration) -> Self {
        FaultRates {
            rates: FaultKind::ALL.iter().map(|&k| (k, rate)).collect(),
            max_latency,
            max_stall,
        }
    }
}

/// A fault to apply to one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    None,
    SlowDown,
    InternalError,
    Latency(Duration),
    ResetBeforeResponse,
    /// Cut the body after this fraction of it; `rst`: reset rather than close.
    Cut {
        at: f64,
        rst: bool,
    },
    /// Pause the body after this fraction of it.
    Stall {
        at: f64,
        pause: Duration,
    },
}

impl Fault {
    pub fn kind(self) -> Option<FaultKind> {
        match self {
            Fault::None => None,
            Fault::SlowDown => Some(FaultKind::SlowDown),
            Fault::InternalError => Some(FaultKind::InternalError),
            Fault::Latency(_) => Some(FaultKind::Latency),
            Fault::ResetBeforeResponse => Some(FaultKind::ResetBeforeResponse),
            Fault::Cut { rst: true, .. } => Some(FaultKind::ResetMidBody),
            Fault::Cut { rst: false, .. } => Some(FaultKind::TruncatedBody),
            Fault::Stall { .. } => Some(FaultKind::StalledBody),
        }
    }
}

/// The seeded sequence of faults.
pub struct Schedule {
    rng: fastrand::Rng,
    rates: FaultRates,
}

impl Schedule {
    pub fn new(seed: u64, rates: FaultRates) -> Self {
        Schedule {
            rng: fastrand::Rng::with_seed(seed),
            rates,
        }
    }

    /// The fault for the next request; body faults only when `has_body` (a GET).
    pub fn next(&mut self, has_body: bool) -> Fault {
        let draw = self.rng.f64();
        let fraction = self.rng.f64();
        let between = |rng: &mut fastrand::Rng, max: Duration| max.mul_f64(0.1 + 0.9 * rng.f64());
        let mut total = 0.0;
        for &(kind, rate) in &self.rates.rates {
            total += rate;
            if draw >= total {
                continue;
            }
            if kind.on_body() && !has_body {
                return Fault::None;
            }
            return match kind {
                FaultKind::SlowDown => Fault::SlowDown,
                FaultKind::InternalError => Fault::InternalError,
                FaultKind::Latency => {
                    Fault::Latency(between(&mut self.rng, self.rates.max_latency))
                }
                FaultKind::ResetBeforeResponse => Fault::ResetBeforeResponse,
                FaultKind::ResetMidBody => Fault::Cut {
                    at: fraction,
                    rst: true,
                },
                FaultKind::TruncatedBody => Fault::Cut {
                    at: fraction,
                    rst: false,
                },
                FaultKind::StalledBody => Fault::Stall {
                    at: fraction,
                    pause: between(&mut self.rng, self.rates.max_stall),
                },
            };
        }
        Fault::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_repeats_its_faults_and_rates_hold() {
        let rates = FaultRates::each(0.05, Duration::from_millis(500), Duration::from_secs(5));
        let run = |seed| {
            let mut s = Schedule::new(seed, rates.clone());
            (0..20_000).map(|i| s.next(i % 2 == 0)).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        for kind in FaultKind::ALL {
            let n = a.iter().filter(|f| f.kind() == Some(kind)).count();
            // 5% of the requests, or of the half with bodies for body faults.
            let expected = if kind.on_body() { 500.0 } else { 1000.0 };
            assert!(
                (n as f64 - expected).abs() < expected * 0.2,
                "{kind:?}: {n}, expected about {expected}"
            );
        }
        assert!(a.iter().all(|f| match f {
            Fault::Latency(d) => *d <= Duration::from_millis(500),
            Fault::Stall { pause, .. } => *pause <= Duration::from_secs(5),
            _ => true,
        }));
        let mut none = Schedule::new(1, FaultRates::none());
        assert!((0..100).all(|_| none.next(true) == Fault::None));
    }
}
