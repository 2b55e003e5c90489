//! When tagcast disables a webhook (contract section 14): at once on `410 Gone`, or once its
//! deliveries have all failed for a while and often enough. Pure, with time passed in.

use chrono::{DateTime, Utc};

/// Why tagcast disabled a webhook: its `disabled_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// It answered 410 Gone.
    Gone,
    /// Its deliveries kept failing.
    Failing,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Gone => "gone",
            Reason::Failing => "failing",
        }
    }
}

/// A webhook's run of failed deliveries, as the database keeps it: since its first failed
/// delivery after its last success (or after it was created or enabled again), none succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    pub since: DateTime<Utc>,
    /// Failed deliveries in the run.
    pub failed: i64,
}

/// `TAGCAST_DISABLE_AFTER` and `TAGCAST_DISABLE_MIN_FAILED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub after: std::time::Duration,
    pub min_failed: u32,
}

/// The answer to an attempt's HTTP status alone: 410 disables at once.
pub fn on_status(http_status: Option<i32>) -> Option<Reason> {
    (http_status == Some(410)).then_some(Reason::Gone)
}

impl Rule {
    /// Whether a webhook whose delivery just failed, leaving `streak`, is to be disabled now.
    pub fn on_failure(&self, streak: Streak, now: DateTime<Utc>) -> Option<Reason> {
        let lasted = (now - streak.since).to_std().unwrap_or_default();
        (lasted >= self.after && streak.failed >= i64::from(self.min_failed))
            .then_some(Reason::Failing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_410_disables_at_once() {
        let cases = [
            (Some(410), Some(Reason::Gone)),
            (Some(404), None),
            (Some(400), None),
            (Some(500), None),
            (Some(200), None),
            (None, None),
        ];
        for (status, expected) in cases {
            assert_eq!(on_status(status), expected, "{status:?}");
        }
    }

    #[test]
    fn a_long_and_full_run_of_failures_disables() {
        let rule = Rule {
            after: std::time::Duration::from_secs(5 * 86_400),
            min_failed: 20,
        };
        let now = Utc::now();
        let days = |d: i64| now - chrono::Duration::days(d);
        let cases = [
            // (run began, failed deliveries in it) -> disabled
            (days(5), 20, true),
            (days(6), 500, true),
            // Long enough, too few: a webhook that gets an event a day is not judged on four.
            (days(30), 19, false),
            // Many, but not for long: an outage of a day is not a dead endpoint.
            (days(4), 10_000, false),
            (
                now - chrono::Duration::days(5) + chrono::Duration::seconds(1),
                20,
                false,
            ),
            // A clock that went back: never disables.
            (now + chrono::Duration::days(6), 100, false),
        ];
        for (since, failed, disabled) in cases {
            let streak = Streak { since, failed };
            assert_eq!(
                rule.on_failure(streak, now).is_some(),
                disabled,
                "{streak:?}"
            );
        }
    }
}
