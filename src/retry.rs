//! Retry policy (contract section 5): which attempt outcomes are retried, and after how long. Pure.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// What one HTTP attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered. `retry_after` is its `Retry-After`, already parsed.
    Response {
        status: u16,
        retry_after: Option<Duration>,
    },
    Timeout,
    /// Could not connect, or the connection broke (TLS failures included).
    Connect,
    /// The address guard refused every address of the host (contract section 10).
    Blocked,
}

/// Why an attempt got no answer, as `delivery_attempts.error` records it (contract section 6).
/// Its metric label is the outcome's: `invalid_url` and `invalid_secret` count as `blocked` in
/// `tagcast_delivery_attempts_total`, like `blocked_address` (no request left tagcast), and
/// `tls_certificate` counts as `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    Timeout,
    Connect,
    TlsCertificate,
    BlockedAddress,
    InvalidUrl,
    InvalidSecret,
}

impl AttemptError {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptError::Timeout => "timeout",
            AttemptError::Connect => "connect",
            AttemptError::TlsCertificate => "tls_certificate",
            AttemptError::BlockedAddress => "blocked_address",
            AttemptError::InvalidUrl => "invalid_url",
            AttemptError::InvalidSecret => "invalid_secret",
        }
    }

    /// The outcome an attempt that failed this way came to.
    pub fn outcome(self) -> AttemptOutcome {
        match self {
            AttemptError::Timeout => AttemptOutcome::Timeout,
            AttemptError::Connect | AttemptError::TlsCertificate => AttemptOutcome::Connect,
            AttemptError::BlockedAddress
            | AttemptError::InvalidUrl
            | AttemptError::InvalidSecret => AttemptOutcome::Blocked,
        }
    }
}

/// The verdict on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    /// Worth another try; `hint` is the receiver's own `Retry-After`, if it gave one.
    Retry {
        hint: Option<Duration>,
    },
    /// Retrying cannot help: the delivery fails now.
    GiveUp,
}

/// 2xx succeeds; timeouts, connection errors, 408, 429 and 5xx are retried; redirects (never
/// followed), every other status and a blocked address fail at once.
pub fn classify(outcome: &AttemptOutcome) -> Verdict {
    match *outcome {
        AttemptOutcome::Response {
            status: 200..=299, ..
        } => Verdict::Succeeded,
        AttemptOutcome::Response {
            status: 429 | 503,
            retry_after,
        } => Verdict::Retry { hint: retry_after },
        AttemptOutcome::Response {
            status: 408 | 500..=599,
            ..
        } => Verdict::Retry { hint: None },
        AttemptOutcome::Response { .. } => Verdict::GiveUp,
        AttemptOutcome::Timeout | AttemptOutcome::Connect => Verdict::Retry { hint: None },
        AttemptOutcome::Blocked => Verdict::GiveUp,
    }
}

/// Exponential backoff with jitter, bounded in delay and in attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

/// The most a delay is shortened by jitter: a quarter, so retries of deliveries that failed
/// together spread out, and no delay ever exceeds the configured maximum.
const JITTER: f64 = 0.25;

impl RetryPolicy {
    /// The delay before attempt `done + 1`, after `done` attempts, or `None` when none is left.
    /// `unit` is a uniform random number in [0, 1) that drives the jitter (a parameter, so this
    /// stays pure and testable). A receiver's hint is honoured up to the maximum delay.
    pub fn delay_after(&self, done: u32, hint: Option<Duration>, unit: f64) -> Option<Duration> {
        if done >= self.max_attempts {
            return None;
        }
        let doublings = done.saturating_sub(1).min(1000) as i32;
        let base =
            Duration::try_from_secs_f64(self.initial_delay.as_secs_f64() * 2f64.powi(doublings))
                .unwrap_or(self.max_delay)
                .min(self.max_delay);
        let jittered = base.mul_f64(1.0 - JITTER * unit.clamp(0.0, 1.0));
        Some(
            hint.map_or(jittered, |h| h.max(jittered))
                .min(self.max_delay),
        )
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date, relative to `now`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16) -> AttemptOutcome {
        AttemptOutcome::Response {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn classification_table() {
        let retry = Verdict::Retry { hint: None };
        let cases = [
            (response(200), Verdict::Succeeded),
            (response(201), Verdict::Succeeded),
            (response(204), Verdict::Succeeded),
            (response(299), Verdict::Succeeded),
            (response(301), Verdict::GiveUp),
            (response(302), Verdict::GiveUp),
            (response(304), Verdict::GiveUp),
            (response(307), Verdict::GiveUp),
            (response(400), Verdict::GiveUp),
            (response(401), Verdict::GiveUp),
            (response(404), Verdict::GiveUp),
            (response(408), retry),
            (response(410), Verdict::GiveUp),
            (response(429), retry),
            (response(500), retry),
            (response(502), retry),
            (response(503), retry),
            (response(504), retry),
            (response(599), retry),
            (AttemptOutcome::Timeout, retry),
            (AttemptOutcome::Connect, retry),
            (AttemptOutcome::Blocked, Verdict::GiveUp),
        ];
        for (outcome, verdict) in cases {
            assert_eq!(classify(&outcome), verdict, "{outcome:?}");
        }
    }

    #[test]
    fn retry_after_is_passed_on_for_429_and_503_only() {
        let hint = Some(Duration::from_secs(7));
        for (status, expected) in [(429, hint), (503, hint), (500, None), (408, None)] {
            let outcome = AttemptOutcome::Response {
                status,
                retry_after: hint,
            };
            assert_eq!(
                classify(&outcome),
                Verdict::Retry { hint: expected },
                "{status}"
            );
        }
    }

    fn defaults() -> RetryPolicy {
        RetryPolicy {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(3600),
            max_attempts: 8,
        }
    }

    #[test]
    fn the_default_schedule_doubles_from_one_second_for_eight_attempts() {
        let p = defaults();
        let without_jitter: Vec<u64> = (1..8)
            .map(|done| p.delay_after(done, None, 0.0).unwrap().as_secs())
            .collect();
        assert_eq!(without_jitter, [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(p.delay_after(8, None, 0.0), None, "eight attempts in all");
        let most_jitter = p.delay_after(1, None, 0.999_999).unwrap();
        assert!(most_jitter >= Duration::from_millis(750) && most_jitter < Duration::from_secs(1));
    }

    #[test]
    fn delays_are_capped() {
        let p = RetryPolicy {
            max_attempts: 100,
            ..defaults()
        };
        assert_eq!(
            p.delay_after(13, None, 0.0),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            p.delay_after(99, None, 0.0),
            Some(Duration::from_secs(3600))
        );
        let hinted = p.delay_after(1, Some(Duration::from_secs(86_400)), 0.0);
        assert_eq!(
            hinted,
            Some(Duration::from_secs(3600)),
            "a hint is honoured up to the maximum"
        );
        assert_eq!(
            p.delay_after(1, Some(Duration::from_secs(30)), 0.0),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            p.delay_after(5, Some(Duration::from_secs(1)), 0.0),
            Some(Duration::from_secs(16)),
            "a short hint does not shorten backoff"
        );
    }

    proptest::proptest! {
        #[test]
        fn delays_stay_within_bounds(
            initial_ms in 1u64..10_000, max_ms in 1u64..10_000_000, attempts in 1u32..50,
            done in 0u32..60, unit in 0.0f64..1.0, hint_ms in proptest::option::of(0u64..100_000_000)
        ) {
            let p = RetryPolicy { initial_delay: Duration::from_millis(initial_ms), max_delay: Duration::from_millis(max_ms), max_attempts: attempts };
            let delay = p.delay_after(done, hint_ms.map(Duration::from_millis), unit);
            proptest::prop_assert_eq!(delay.is_none(), done >= attempts);
            if let Some(d) = delay {
                proptest::prop_assert!(d <= p.max_delay);
                if let Some(h) = hint_ms { proptest::prop_assert!(d >= Duration::from_millis(h).min(p.max_delay)); }
            }
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let cases = [
            ("1", Some(Duration::from_secs(1))),
            (" 120 ", Some(Duration::from_secs(120))),
            (
                "Wed, 21 Oct 2015 07:28:30 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("Wed, 21 Oct 2015 07:27:00 GMT", Some(Duration::ZERO)),
            ("soon", None),
            ("-1", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after(value, now), expected, "{value}");
        }
    }
}
