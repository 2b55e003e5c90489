//! Which deliveries the event stage may attempt itself. A first attempt made inline saves a
//! trip through the broker, but it holds its event until it completes: an endpoint that is slow,
//! failing or already busy gets its deliveries handed to the delivery queue instead, so it can
//! never take the concurrency other webhooks need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Inline attempts in flight to one webhook at most.
const MAX_INLINE_PER_WEBHOOK: u32 = 512;
/// An endpoint with attempts in flight and none finished for this long counts as stalled.
const STALLED_AFTER: Duration = Duration::from_millis(500);
/// An attempt slower than this, or failing to connect or in time, marks the endpoint slow...
const SLOW_ATTEMPT: Duration = Duration::from_secs(1);
/// ...for this long.
const SLOW_FOR: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct EndpointGate {
    // A std lock: held for a map lookup only, never across an await.
    endpoints: Mutex<HashMap<i64, Endpoint>>,
}

struct Endpoint {
    in_flight: u32,
    last_done: Instant,
    slow_until: Option<Instant>,
}

/// Permission for one inline attempt; gives it back when dropped.
pub struct Pass {
    gate: Arc<EndpointGate>,
    webhook_id: i64,
}

impl EndpointGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Endpoint>> {
        // Every update is a single field write: a panic elsewhere cannot leave an entry half
        // changed, so a poisoned lock is still sound to use.
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pass for an inline attempt to `webhook_id`, or `None` to hand the delivery off.
    pub fn try_inline(self: &Arc<Self>, webhook_id: i64, now: Instant) -> Option<Pass> {
        let mut endpoints = self.lock();
        let e = endpoints.entry(webhook_id).or_insert(Endpoint {
            in_flight: 0,
            last_done: now,
            slow_until: None,
        });
        let slow = e.slow_until.is_some_and(|until| until > now);
        let stalled = e.in_flight > 0 && now.duration_since(e.last_done) > STALLED_AFTER;
        if slow || stalled || e.in_flight >= MAX_INLINE_PER_WEBHOOK {
            return None;
        }
        if e.in_flight == 0 {
            e.last_done = now;
        }
        e.in_flight += 1;
        Some(Pass {
            gate: self.clone(),
            webhook_id,
        })
    }
}

impl Pass {
    /// Reports how the attempt went: a slow or unreachable endpoint stops getting inline attempts.
    pub fn report(&self, took: Duration, unreachable: bool) {
        let mut endpoints = self.gate.lock();
        if let Some(e) = endpoints.get_mut(&self.webhook_id) {
            let now = Instant::now();
            e.last_done = now;
            if unreachable || took > SLOW_ATTEMPT {
                e.slow_until = Some(now + SLOW_FOR);
            }
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut endpoints = self.gate.lock();
        if let Some(e) = endpoints.get_mut(&self.webhook_id) {
            e.in_flight = e.in_flight.saturating_sub(1);
            // Forget idle, healthy endpoints: the map holds only what is busy or slow.
            if e.in_flight == 0 && e.slow_until.is_none_or(|until| until <= Instant::now()) {
                endpoints.remove(&self.webhook_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_endpoint_is_attempted_inline_up_to_the_cap() {
        let gate = Arc::new(EndpointGate::default());
        let now = Instant::now();
        let passes: Vec<Pass> = (0..MAX_INLINE_PER_WEBHOOK)
            .map(|_| gate.try_inline(1, now).expect("within the cap"))
            .collect();
        assert!(gate.try_inline(1, now).is_none(), "over the cap");
        assert!(
            gate.try_inline(2, now).is_some(),
            "other webhooks are not affected"
        );
        drop(passes);
        assert!(gate.try_inline(1, now).is_some());
    }

    #[test]
    fn a_stalled_endpoint_is_handed_off() {
        let gate = Arc::new(EndpointGate::default());
        let start = Instant::now();
        let _hanging = gate.try_inline(1, start).unwrap();
        assert!(
            gate.try_inline(1, start + Duration::from_millis(100))
                .is_some()
        );
        assert!(
            gate.try_inline(1, start + Duration::from_millis(600))
                .is_none(),
            "nothing finished for 600 ms"
        );
    }

    #[test]
    fn a_slow_or_unreachable_endpoint_is_handed_off_for_a_while() {
        let gate = Arc::new(EndpointGate::default());
        let pass = gate.try_inline(1, Instant::now()).unwrap();
        pass.report(Duration::from_millis(1500), false);
        drop(pass);
        assert!(gate.try_inline(1, Instant::now()).is_none());
        assert!(
            gate.try_inline(1, Instant::now() + SLOW_FOR + Duration::from_secs(1))
                .is_some()
        );

        let pass = gate.try_inline(3, Instant::now()).unwrap();
        pass.report(Duration::from_millis(5), true);
        drop(pass);
        assert!(
            gate.try_inline(3, Instant::now()).is_none(),
            "connection refused or timed out"
        );
    }

    #[test]
    fn idle_endpoints_are_forgotten() {
        let gate = Arc::new(EndpointGate::default());
        for id in 0..1000 {
            drop(gate.try_inline(id, Instant::now()));
        }
        assert!(gate.endpoints.lock().unwrap().is_empty());
    }
}
