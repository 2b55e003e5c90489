//! How tagcast waits for a dependency that is away: exponential delays from `min` doubling to
//! `max`, jittered so that replicas do not retry in step, and never giving up (shutdown is what
//! ends a wait).

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};

/// The delays between tries.
pub struct Waits(ExponentialBackoff, Duration);

impl Waits {
    pub fn new(min: Duration, max: Duration) -> Waits {
        let delays = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_jitter()
            .without_max_times()
            .build();
        Waits(delays, max)
    }

    /// How long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        // Built without a limit, so the sequence never ends; `max` is the answer if it did.
        self.0.next().unwrap_or(self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_maximum_and_go_on() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut waits = Waits::new(min, max);
        let delays: Vec<Duration> = (0..20).map(|_| waits.next_delay()).collect();
        // Jitter adds up to one delay more.
        assert!(
            delays.iter().all(|d| *d >= min && *d <= max * 2),
            "{delays:?}"
        );
        assert!(delays[19] >= max, "reaches the maximum: {delays:?}");
    }
}
