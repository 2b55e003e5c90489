//! The circuit breaker of one webhook on one replica (contract section 14), as a pure state
//! machine with time passed in: after a run of failed attempts no attempt is made for a cooldown
//! that doubles while the endpoint keeps failing, then one attempt probes.

use std::time::{Duration, Instant};

use crate::retry::AttemptOutcome;

/// The longest cooldown, however often a probe has failed.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Failed attempts in a row that open the breaker.
    pub failures: u32,
    /// The first cooldown.
    pub cooldown: Duration,
}

/// What an attempt says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// It answered, even if with a refusal such as 404: it is there.
    Answered,
    /// A connection error, a timeout, a 5xx or a 429.
    Failed,
    /// No request left tagcast (a blocked address, say): nothing learnt.
    Nothing,
}

impl Signal {
    pub fn of(outcome: &AttemptOutcome) -> Signal {
        match outcome {
            AttemptOutcome::Response {
                status: 429 | 500..=599,
                ..
            }
            | AttemptOutcome::Timeout
            | AttemptOutcome::Connect => Signal::Failed,
            AttemptOutcome::Response { .. } => Signal::Answered,
            AttemptOutcome::Blocked => Signal::Nothing,
        }
    }
}

/// The `to` label of `tagcast_breaker_transitions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    Open,
    HalfOpen,
    Closed,
}

impl To {
    pub fn as_str(self) -> &'static str {
        match self {
            To::Open => "open",
            To::HalfOpen => "half_open",
            To::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        cooldown: Duration,
    },
    /// Half open: one probe is out; `cooldown` is the one that just ended.
    Probing {
        cooldown: Duration,
    },
}

/// May an attempt be made now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Attempt,
    /// Yes, as the one probe of a half-open breaker: its outcome decides.
    Probe,
    /// No: ask again at `until`.
    Wait {
        until: Instant,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    state: State,
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker {
            state: State::Closed { failures: 0 },
        }
    }
}

impl Breaker {
    /// Open or half open: attempts are held back.
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    /// For a delivery that falls due while the breaker is open, when it is to be tried: when
    /// the probe after the coming one would be due, should the coming one fail (`None` when
    /// closed or probing). The coming probe is one of the attempts already waiting; if it
    /// succeeds, new deliveries go at once and these follow within that time.
    pub fn hold_until(&self) -> Option<Instant> {
        match self.state {
            State::Open { until, cooldown } => Some(until + next_cooldown(cooldown)),
            State::Closed { .. } | State::Probing { .. } => None,
        }
    }

    /// Closed with no failure counted: nothing worth remembering.
    pub fn is_idle(&self) -> bool {
        self.state == State::Closed { failures: 0 }
    }

    pub fn admit(&mut self, now: Instant) -> (Admission, Option<To>) {
        match self.state {
            State::Closed { .. } => (Admission::Attempt, None),
            State::Open { until, cooldown } if now >= until => {
                self.state = State::Probing { cooldown };
                (Admission::Probe, Some(To::HalfOpen))
            }
            State::Open { until, .. } => (Admission::Wait { until }, None),
            // Back when a failed probe's longer cooldown would end: a good probe lets new
            // deliveries through at once, and these follow within that time.
            State::Probing { cooldown } => (
                Admission::Wait {
                    until: now + next_cooldown(cooldown),
                },
                None,
            ),
        }
    }

    /// Takes in how an attempt went; `probe` says whether it was the half-open breaker's probe.
    pub fn record(
        &mut self,
        signal: Signal,
        probe: bool,
        settings: &Settings,
        now: Instant,
    ) -> Option<To> {
        let (next, to) = match (self.state, signal) {
            (_, Signal::Nothing) if probe => {
                // The probe sent nothing: the next attempt probes instead, at once.
                let cooldown = self.cooldown().unwrap_or(settings.cooldown);
                (
                    State::Open {
                        until: now,
                        cooldown,
                    },
                    Some(To::Open),
                )
            }
            (_, Signal::Nothing) => return None,
            (State::Closed { .. }, Signal::Answered) => (State::Closed { failures: 0 }, None),
            // An attempt that was under way when the breaker opened, or its probe: the endpoint
            // answers again.
            (_, Signal::Answered) => (State::Closed { failures: 0 }, Some(To::Closed)),
            (State::Closed { failures }, Signal::Failed) => {
                let failures = failures + 1;
                if failures >= settings.failures.max(1) {
                    (
                        State::Open {
                            until: now + settings.cooldown,
                            cooldown: settings.cooldown,
                        },
                        Some(To::Open),
                    )
                } else {
                    (State::Closed { failures }, None)
                }
            }
            (State::Probing { cooldown }, Signal::Failed) if probe => {
                let cooldown = next_cooldown(cooldown);
                (
                    State::Open {
                        until: now + cooldown,
                        cooldown,
                    },
                    Some(To::Open),
                )
            }
            // An attempt that started before the breaker opened failed too: already counted.
            (State::Open { .. } | State::Probing { .. }, Signal::Failed) => return None,
        };
        self.state = next;
        to
    }

    /// A probe was admitted but made no attempt (its delivery was final, say): the next
    /// attempt probes instead.
    pub fn abandon_probe(&mut self, now: Instant) -> Option<To> {
        let State::Probing { cooldown } = self.state else {
            return None;
        };
        self.state = State::Open {
            until: now,
            cooldown,
        };
        Some(To::Open)
    }

    fn cooldown(&self) -> Option<Duration> {
        match self.state {
            State::Open { cooldown, .. } | State::Probing { cooldown } => Some(cooldown),
            State::Closed { .. } => None,
        }
    }
}

/// The cooldown after `cooldown` when a probe fails: twice as long, up to [`MAX_COOLDOWN`] (or
/// the configured one, if that is longer).
fn next_cooldown(cooldown: Duration) -> Duration {
    (cooldown * 2).min(MAX_COOLDOWN.max(cooldown))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        failures: 3,
        cooldown: Duration::from_secs(30),
    };

    fn response(status: u16) -> AttemptOutcome {
        AttemptOutcome::Response {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn what_each_outcome_says_about_the_endpoint() {
        let cases = [
            (response(200), Signal::Answered),
            (response(404), Signal::Answered),
            (response(410), Signal::Answered),
            (response(408), Signal::Answered),
            (response(429), Signal::Failed),
            (response(500), Signal::Failed),
            (response(503), Signal::Failed),
            (AttemptOutcome::Timeout, Signal::Failed),
            (AttemptOutcome::Connect, Signal::Failed),
            (AttemptOutcome::Blocked, Signal::Nothing),
        ];
        for (outcome, signal) in cases {
            assert_eq!(Signal::of(&outcome), signal, "{outcome:?}");
        }
    }

    /// Runs steps against one breaker: `f` a failed attempt, `a` an answered one, `n` one that
    /// sent nothing, `+N` N seconds pass, `?` asks for admission (and probes when admitted as
    /// the probe, recording the next step as the probe's outcome). Returns what each `?` got and
    /// every transition, as short words.
    fn run(steps: &str) -> Vec<String> {
        let start = Instant::now();
        let mut now = start;
        let mut b = Breaker::default();
        let mut seen = Vec::new();
        let mut probing = false;
        for step in steps.split_whitespace() {
            let transition = match step {
                "?" => {
                    let (admission, to) = b.admit(now);
                    seen.push(match admission {
                        Admission::Attempt => "attempt".to_owned(),
                        Admission::Probe => {
                            probing = true;
                            "probe".to_owned()
                        }
                        Admission::Wait { until } => {
                            format!("wait{}s", (until - now).as_secs())
                        }
                    });
                    to
                }
                "f" | "a" | "n" => {
                    let signal = match step {
                        "f" => Signal::Failed,
                        "a" => Signal::Answered,
                        _ => Signal::Nothing,
                    };
                    let to = b.record(signal, probing, &SETTINGS, now);
                    probing = false;
                    to
                }
                "drop" => {
                    probing = false;
                    b.abandon_probe(now)
                }
                secs => {
                    now += Duration::from_secs(secs.trim_start_matches('+').parse().unwrap());
                    None
                }
            };
            if let Some(to) = transition {
                seen.push(format!("->{}", to.as_str()));
            }
        }
        seen
    }

    #[test]
    fn the_breaker_follows_its_rules() {
        let cases: &[(&str, &[&str])] = &[
            ("? f f ?", &["attempt", "attempt"]),
            // An answer in between starts the count again.
            ("f f a f f ?", &["attempt"]),
            ("f f f ?", &["->open", "wait30s"]),
            ("f f f +10 ?", &["->open", "wait20s"]),
            // The cooldown over: one probe; the others wait as long as a failed probe's
            // cooldown.
            (
                "f f f +30 ? ?",
                &["->open", "probe", "->half_open", "wait60s"],
            ),
            // A good probe closes the breaker.
            (
                "f f f +30 ? a ?",
                &["->open", "probe", "->half_open", "->closed", "attempt"],
            ),
            // A 404 is an answer: the endpoint is there.
            (
                "f f f +30 ? a",
                &["->open", "probe", "->half_open", "->closed"],
            ),
            // A failed probe opens it for twice as long.
            (
                "f f f +30 ? f ?",
                &["->open", "probe", "->half_open", "->open", "wait60s"],
            ),
            (
                "f f f +30 ? f +60 ? f +120 ? f ?",
                &[
                    "->open",
                    "probe",
                    "->half_open",
                    "->open",
                    "probe",
                    "->half_open",
                    "->open",
                    "probe",
                    "->half_open",
                    "->open",
                    "wait240s",
                ],
            ),
            // A probe that sent nothing hands the probe to the next attempt, at once.
            (
                "f f f +30 ? n ?",
                &[
                    "->open",
                    "probe",
                    "->half_open",
                    "->open",
                    "probe",
                    "->half_open",
                ],
            ),
            (
                "f f f +30 ? drop ?",
                &[
                    "->open",
                    "probe",
                    "->half_open",
                    "->open",
                    "probe",
                    "->half_open",
                ],
            ),
            // Failures of attempts already under way when it opened count for nothing more.
            ("f f f f f ?", &["->open", "wait30s"]),
            // Such an attempt answering closes it.
            ("f f f a ?", &["->open", "->closed", "attempt"]),
            // Nothing sent, nothing learnt.
            ("f f n n f ?", &["->open", "wait30s"]),
        ];
        for (steps, expected) in cases {
            assert_eq!(run(steps), *expected, "{steps}");
        }
    }

    #[test]
    fn what_falls_due_while_open_waits_past_the_coming_probe() {
        let mut b = Breaker::default();
        let now = Instant::now();
        assert_eq!(b.hold_until(), None);
        for _ in 0..3 {
            b.record(Signal::Failed, false, &SETTINGS, now);
        }
        assert_eq!(b.hold_until(), Some(now + Duration::from_secs(30 + 60)));
        b.admit(now + Duration::from_secs(30));
        assert_eq!(b.hold_until(), None, "probing: the job stage decides");
    }

    #[test]
    fn the_cooldown_stops_doubling_at_ten_minutes() {
        let mut b = Breaker::default();
        let mut now = Instant::now();
        for _ in 0..3 {
            b.record(Signal::Failed, false, &SETTINGS, now);
        }
        let mut longest = Duration::ZERO;
        for _ in 0..12 {
            now += Duration::from_secs(3600);
            assert_eq!(b.admit(now).0, Admission::Probe);
            b.record(Signal::Failed, true, &SETTINGS, now);
            let Admission::Wait { until } = b.admit(now).0 else {
                panic!("open")
            };
            longest = until - now;
        }
        assert_eq!(longest, MAX_COOLDOWN);
        assert!(b.is_open());
    }
}
