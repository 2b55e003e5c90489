//! What this replica lets through to each webhook (contract section 14): its circuit breaker,
//! its cap on attempts in flight, and which deliveries the event stage may attempt itself.
//!
//! A first attempt made inline saves a trip through the broker, but it holds its event until
//! it completes: an endpoint that is slow, failing or already busy gets its deliveries handed to
//! the delivery queue instead, so it can never take the concurrency other webhooks need. A job
//! that may not go now is told when to ask again and waits in the broker, never here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::breaker::{self, Admission, Breaker, Signal, To};
use crate::metrics::Metrics;
use crate::retry::AttemptOutcome;

/// Inline attempts in flight to one webhook at most (its cap applies too).
const MAX_INLINE_PER_WEBHOOK: u32 = 512;
/// An endpoint with attempts in flight and none finished for this long counts as stalled.
const STALLED_AFTER: Duration = Duration::from_millis(500);
/// An attempt slower than this, or failing to connect or in time, marks the endpoint slow...
const SLOW_ATTEMPT: Duration = Duration::from_secs(1);
/// ...for this long.
const SLOW_FOR: Duration = Duration::from_secs(30);

pub struct EndpointGate {
    // A std lock: held for a map lookup only, never across an await.
    endpoints: Mutex<HashMap<i64, Endpoint>>,
    breaker: breaker::Settings,
    metrics: Metrics,
}

struct Endpoint {
    /// Inline passes: attempts in flight and those waiting for a place under the cap.
    inline: u32,
    /// Attempts in flight, inline or not: what the cap counts.
    attempts: u32,
    /// Told each time an attempt ends, for an inline pass waiting for a place.
    freed: Arc<Notify>,
    last_done: Instant,
    slow_until: Option<Instant>,
    breaker: Breaker,
}

impl Endpoint {
    fn new(now: Instant) -> Endpoint {
        Endpoint {
            inline: 0,
            attempts: 0,
            freed: Arc::default(),
            last_done: now,
            slow_until: None,
            breaker: Breaker::default(),
        }
    }

    /// Nothing in flight, nothing to remember: the entry can go.
    fn is_idle(&self, now: Instant) -> bool {
        self.attempts == 0
            && self.inline == 0
            && self.slow_until.is_none_or(|until| until <= now)
            && self.breaker.is_idle()
    }
}

/// The answer to a job that asks to make its attempt.
pub enum Admit {
    Go(Pass),
    Wait(Wait),
}

/// Why a job may not make its attempt now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The webhook's breaker is open: ask again at `until`.
    Breaker { until: Instant },
    /// The webhook has as many attempts in flight as its cap allows.
    Full,
}

/// Permission for one attempt; gives it back when dropped. An inline pass counts under the
/// cap only once [`Pass::arm`] found it a place; a job's pass does from the start.
pub struct Pass {
    gate: Arc<EndpointGate>,
    webhook_id: i64,
    inline: bool,
    /// Counted in its webhook's attempts in flight.
    armed: bool,
    /// The one probe of a half-open breaker.
    probe: bool,
    reported: bool,
}

impl EndpointGate {
    pub fn new(breaker: breaker::Settings, metrics: Metrics) -> EndpointGate {
        EndpointGate {
            endpoints: Mutex::default(),
            breaker,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Endpoint>> {
        // Every update leaves each entry whole before the lock is let go: a panic elsewhere
        // cannot leave one half changed, so a poisoned lock is still sound to use.
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pass for an inline first attempt to `webhook_id`, or `None` to hand the delivery off:
    /// its breaker is open, or it is slow or stalled. It still has to [`Pass::arm`] before it
    /// sends.
    pub fn try_inline(self: &Arc<Self>, webhook_id: i64, now: Instant) -> Option<Pass> {
        let mut endpoints = self.lock();
        let e = endpoints
            .entry(webhook_id)
            .or_insert_with(|| Endpoint::new(now));
        let slow = e.slow_until.is_some_and(|until| until > now);
        let stalled = e.attempts > 0 && now.duration_since(e.last_done) > STALLED_AFTER;
        // An open breaker is asked by jobs alone: its probe is one of them.
        if e.breaker.is_open() || slow || stalled || e.inline >= MAX_INLINE_PER_WEBHOOK {
            return None;
        }
        if e.attempts == 0 {
            e.last_done = now;
        }
        e.inline += 1;
        Some(self.pass(webhook_id, true, false, false))
    }

    /// When a delivery to `webhook_id` that falls due now is to be tried, if its breaker is
    /// open (see [`Breaker::hold_until`]).
    pub fn hold_until(&self, webhook_id: i64) -> Option<Instant> {
        self.lock()
            .get(&webhook_id)
            .and_then(|e| e.breaker.hold_until())
    }

    /// Whether a job may make its attempt to `webhook_id` now. `cap` is its `max_in_flight`.
    pub fn admit(self: &Arc<Self>, webhook_id: i64, cap: u32, now: Instant) -> Admit {
        let mut endpoints = self.lock();
        let e = endpoints
            .entry(webhook_id)
            .or_insert_with(|| Endpoint::new(now));
        // Checked first, so that a half-open breaker's probe is not spent on a full webhook.
        if e.attempts >= cap {
            return Admit::Wait(Wait::Full);
        }
        let was_open = e.breaker.is_open();
        let (admission, to) = e.breaker.admit(now);
        self.count(was_open, e.breaker.is_open(), to);
        let probe = match admission {
            Admission::Attempt => false,
            Admission::Probe => true,
            Admission::Wait { until } => return Admit::Wait(Wait::Breaker { until }),
        };
        if e.attempts == 0 {
            e.last_done = now;
        }
        e.attempts += 1;
        Admit::Go(self.pass(webhook_id, false, true, probe))
    }

    /// A pass whatever the breaker and the cap say, for an attempt already claimed when the
    /// webhook's settings were seen to change: the cap may be passed by one, once.
    pub fn force(self: &Arc<Self>, webhook_id: i64, now: Instant) -> Pass {
        let mut endpoints = self.lock();
        let e = endpoints
            .entry(webhook_id)
            .or_insert_with(|| Endpoint::new(now));
        e.attempts += 1;
        self.pass(webhook_id, false, true, false)
    }

    fn pass(self: &Arc<Self>, webhook_id: i64, inline: bool, armed: bool, probe: bool) -> Pass {
        Pass {
            gate: self.clone(),
            webhook_id,
            inline,
            armed,
            probe,
            reported: false,
        }
    }

    /// Keeps `tagcast_breakers_open` and `tagcast_breaker_transitions_total` in step.
    fn count(&self, was_open: bool, is_open: bool, to: Option<To>) {
        if let Some(to) = to {
            self.metrics.breaker_transition(to);
        }
        match (was_open, is_open) {
            (false, true) => self.metrics.breakers_open.inc(),
            (true, false) => self.metrics.breakers_open.dec(),
            _ => {}
        }
    }
}

impl Pass {
    /// Finds an inline pass a place under its webhook's cap, waiting at most `within` for an
    /// attempt to end, as it waits for an inline slot: an endpoint at its cap that answers fast
    /// frees one within milliseconds. `false`: none came, or the webhook's breaker opened since
    /// the pass was given, and the delivery goes to the broker.
    pub async fn arm(&mut self, cap: u32, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let freed = {
                let mut endpoints = self.gate.lock();
                let Some(e) = endpoints.get_mut(&self.webhook_id) else {
                    return false;
                };
                if e.breaker.is_open() {
                    return false;
                }
                if self.armed || e.attempts < cap {
                    if !self.armed {
                        e.attempts += 1;
                        self.armed = true;
                    }
                    return true;
                }
                e.freed.clone()
            };
            // An end told before this wait began is kept for it (`notify_one`), so none is
            // missed between the look above and the wait.
            if tokio::time::timeout_at(deadline, freed.notified())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Reports how the attempt went: its breaker learns from it, and a slow or unreachable
    /// endpoint stops getting inline attempts for a while.
    pub fn report(&mut self, took: Duration, outcome: &AttemptOutcome) {
        let gate = self.gate.clone();
        let mut endpoints = gate.lock();
        let Some(e) = endpoints.get_mut(&self.webhook_id) else {
            return;
        };
        let now = Instant::now();
        e.last_done = now;
        let unreachable = matches!(outcome, AttemptOutcome::Timeout | AttemptOutcome::Connect);
        if unreachable || took > SLOW_ATTEMPT {
            e.slow_until = Some(now + SLOW_FOR);
        }
        let was_open = e.breaker.is_open();
        let to = e
            .breaker
            .record(Signal::of(outcome), self.probe, &gate.breaker, now);
        gate.count(was_open, e.breaker.is_open(), to);
        self.reported = true;
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let gate = self.gate.clone();
        let mut endpoints = gate.lock();
        let Some(e) = endpoints.get_mut(&self.webhook_id) else {
            return;
        };
        let now = Instant::now();
        if self.armed {
            e.attempts = e.attempts.saturating_sub(1);
            e.freed.notify_one();
        }
        if self.inline {
            e.inline = e.inline.saturating_sub(1);
        }
        if self.probe && !self.reported {
            let to = e.breaker.abandon_probe(now);
            gate.count(true, e.breaker.is_open(), to);
        }
        // Forget idle, healthy endpoints: the map holds only what is busy, slow or failing.
        if e.is_idle(now) {
            endpoints.remove(&self.webhook_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: u32 = 64;

    fn gate(failures: u32) -> Arc<EndpointGate> {
        Arc::new(EndpointGate::new(
            breaker::Settings {
                failures,
                cooldown: Duration::from_secs(30),
            },
            Metrics::new(),
        ))
    }

    fn go(admit: Admit) -> Pass {
        match admit {
            Admit::Go(pass) => pass,
            Admit::Wait(wait) => panic!("told to wait: {wait:?}"),
        }
    }

    fn wait(admit: Admit) -> Wait {
        match admit {
            Admit::Go(_) => panic!("let through"),
            Admit::Wait(wait) => wait,
        }
    }

    const REFUSED: AttemptOutcome = AttemptOutcome::Connect;
    const OK: AttemptOutcome = AttemptOutcome::Response {
        status: 200,
        retry_after: None,
    };

    #[test]
    fn a_healthy_endpoint_gets_inline_passes_up_to_a_bound() {
        let gate = gate(5);
        let now = Instant::now();
        let passes: Vec<Pass> = (0..MAX_INLINE_PER_WEBHOOK)
            .map(|_| gate.try_inline(1, now).expect("within the bound"))
            .collect();
        assert!(gate.try_inline(1, now).is_none(), "over the bound");
        assert!(
            gate.try_inline(2, now).is_some(),
            "other webhooks are not affected"
        );
        drop(passes);
        assert!(gate.try_inline(1, now).is_some());
    }

    #[tokio::test]
    async fn a_webhooks_cap_counts_inline_attempts_and_jobs_together() {
        let gate = gate(5);
        let now = Instant::now();
        let mut inline = gate.try_inline(7, now).unwrap();
        assert!(inline.arm(2, Duration::ZERO).await);
        let job = go(gate.admit(7, 2, now));
        assert_eq!(wait(gate.admit(7, 2, now)), Wait::Full);
        let mut waiting = gate.try_inline(7, now).unwrap();
        assert!(
            !waiting.arm(2, Duration::from_millis(20)).await,
            "no place came"
        );
        let _other = go(gate.admit(8, 2, now));
        // An attempt that ends lets a waiting inline pass in, and only one.
        let arming = tokio::spawn(async move {
            let armed = waiting.arm(2, Duration::from_secs(10)).await;
            (armed, waiting)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(job);
        let (armed, _waiting) = arming.await.unwrap();
        assert!(armed);
        assert_eq!(wait(gate.admit(7, 2, now)), Wait::Full);
        drop(inline);
        let _next = go(gate.admit(7, 2, now));
    }

    #[tokio::test]
    async fn a_stalled_endpoint_is_handed_off() {
        let gate = gate(5);
        let start = Instant::now();
        let mut hanging = gate.try_inline(1, start).unwrap();
        assert!(hanging.arm(CAP, Duration::ZERO).await);
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
        let gate = gate(5);
        let mut pass = gate.try_inline(1, Instant::now()).unwrap();
        pass.report(Duration::from_millis(1500), &OK);
        drop(pass);
        assert!(gate.try_inline(1, Instant::now()).is_none());
        assert!(
            gate.try_inline(1, Instant::now() + SLOW_FOR + Duration::from_secs(1))
                .is_some()
        );

        let mut pass = gate.try_inline(3, Instant::now()).unwrap();
        pass.report(Duration::from_millis(5), &REFUSED);
        drop(pass);
        assert!(
            gate.try_inline(3, Instant::now()).is_none(),
            "connection refused or timed out"
        );
    }

    #[tokio::test]
    async fn an_open_breaker_holds_back_jobs_and_inline_attempts_and_lets_one_probe_through() {
        let gate = gate(2);
        let now = Instant::now();
        // Given before the breaker opens, armed after: it does not send.
        let mut early = gate.try_inline(1, now).unwrap();
        for _ in 0..2 {
            let mut pass = go(gate.admit(1, CAP, now));
            pass.report(Duration::from_millis(1), &REFUSED);
        }
        let Wait::Breaker { until } = wait(gate.admit(1, CAP, now)) else {
            panic!("not the breaker")
        };
        // The cooldown runs from the second failure's report.
        assert!(
            (30..31).contains(&(until - now).as_secs()),
            "{:?}",
            until - now
        );
        let later = now + SLOW_FOR + Duration::from_secs(31);
        assert!(gate.try_inline(1, later).is_none(), "open: jobs only");
        assert!(
            !early.arm(CAP, Duration::ZERO).await,
            "open since it was given"
        );
        drop(early);
        let text = gate.metrics.render();
        assert!(text.contains("tagcast_breakers_open 1"), "{text}");

        // The probe, dropped before it sent anything: the next job probes instead.
        drop(go(gate.admit(1, CAP, later)));
        let mut probe = go(gate.admit(1, CAP, later));
        assert!(matches!(
            wait(gate.admit(1, CAP, later)),
            Wait::Breaker { .. }
        ));
        probe.report(Duration::from_millis(1), &OK);
        drop(probe);
        let _closed = go(gate.admit(1, CAP, later));
        let text = gate.metrics.render();
        assert!(text.contains("tagcast_breakers_open 0"), "{text}");
        for to in ["open", "half_open", "closed"] {
            assert!(
                text.contains(&format!("tagcast_breaker_transitions_total{{to=\"{to}\"}}")),
                "{to}: {text}"
            );
        }
    }

    #[test]
    fn idle_endpoints_are_forgotten() {
        let gate = gate(5);
        for id in 0..1000 {
            drop(gate.try_inline(id, Instant::now()));
            drop(go(gate.admit(id, CAP, Instant::now())));
        }
        assert!(gate.endpoints.lock().unwrap().is_empty());
    }
}
