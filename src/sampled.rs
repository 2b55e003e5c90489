//! Rate-limited log lines: every outcome is logged while outcomes are few, and at thousands a
//! second a few lines a second of each kind are, each saying how many it passed over.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Lines of one kind: a burst of `burst`, then `per_second`.
pub struct Sampled {
    limiter: DefaultDirectRateLimiter,
    passed_over: AtomicU64,
}

impl Sampled {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Sampled {
        Sampled {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            passed_over: AtomicU64::new(0),
        }
    }

    /// Whether to log this line; if so, how many were passed over since the last one.
    pub fn admit(&self) -> Option<u64> {
        if self.limiter.check().is_ok() {
            Some(self.passed_over.swap(0, Ordering::Relaxed))
        } else {
            self.passed_over.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The outcome lines of deliveries: at most 10 a second of each kind after a burst of 50, which
/// keeps their cost out of sight at 10,000 deliveries a second (docs/performance.md) while a
/// person trying tagcast out sees every one.
pub struct OutcomeLines {
    pub delivered: Sampled,
    pub retrying: Sampled,
    pub failed: Sampled,
}

const RATE: NonZeroU32 = NonZeroU32::new(10).expect("not zero");
const BURST: NonZeroU32 = NonZeroU32::new(50).expect("not zero");

impl Default for OutcomeLines {
    fn default() -> OutcomeLines {
        OutcomeLines {
            delivered: Sampled::new(RATE, BURST),
            retrying: Sampled::new(RATE, BURST),
            failed: Sampled::new(RATE, BURST),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_not_logged() {
        let lines = Sampled::new(NonZeroU32::MIN, NonZeroU32::new(3).unwrap());
        let admitted: Vec<Option<u64>> = (0..6).map(|_| lines.admit()).collect();
        assert_eq!(&admitted[..3], &[Some(0), Some(0), Some(0)]);
        assert_eq!(&admitted[3..], &[None, None, None]);
        assert_eq!(lines.passed_over.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_next_line_after_a_gap_says_how_many_it_passed_over() {
        let lines = Sampled::new(NonZeroU32::new(1000).unwrap(), NonZeroU32::MIN);
        assert_eq!(lines.admit(), Some(0));
        let mut passed = 0;
        let next = loop {
            match lines.admit() {
                Some(n) => break n,
                None => passed += 1,
            }
        };
        assert_eq!(next, passed);
    }
}
