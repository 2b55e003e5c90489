//! Acknowledgements of one consumer channel, coalesced: RabbitMQ settles a quorum-queue message
//! with a log entry of its own, so one `basic.ack` with `multiple` for a run of finished
//! messages costs the broker far less than one per message. Only a contiguous run of delivery
//! tags is acknowledged that way. A message finished while an earlier one is still in progress
//! waits a little for that gap to close, since one acknowledgement on its own costs RabbitMQ
//! about as much as consuming the message; then it is acknowledged on its own, so a slow message
//! never holds back others' acknowledgements (nor, through the prefetch window, the consumer) for
//! more than [`HOLD_TICKS`] ticks.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::BasicAckOptions;
use lapin::{Acker, Channel};
use tokio::sync::mpsc;

/// How often the acknowledgements due are sent.
const TICK: Duration = Duration::from_millis(2);
/// Ticks a finished message behind a gap waits for the gap to close before it is acknowledged on
/// its own: long enough that most gaps close (fewer acknowledgements on their own: see
/// docs/performance.md), short enough that what waits, which counts against the prefetch (see
/// [`prefetch`]), is at most what finishes in 20 ms.
const HOLD_TICKS: u8 = 10;

/// The prefetch for a consumer that handles `concurrency` messages at once: a quarter more, so
/// that finished messages waiting for their acknowledgement (up to [`HOLD_TICKS`]) do not take
/// the places of new ones.
pub fn prefetch(concurrency: u16) -> u16 {
    concurrency.saturating_add(concurrency / 4)
}

/// What became of one delivery tag.
enum Done<A> {
    /// Processed: acknowledge it.
    Ack { acker: A, ticks: u8 },
    /// Settled already (rejected, returned, or acknowledged on its own).
    Settled,
}

/// Hands finished deliveries to the channel's acknowledging task. Cheap to clone.
#[derive(Clone)]
pub struct AckWindow {
    tx: mpsc::UnboundedSender<(u64, Option<Acker>)>,
}

impl AckWindow {
    /// Starts the task for a channel whose first delivery tag is 1. It ends, after acknowledging
    /// everything it holds, once every clone of the window is dropped. It keeps `channel` open
    /// until then: lapin closes a channel when its last handle goes, and at shutdown the
    /// consumer's goes first, while acknowledgements are still to be sent.
    pub fn spawn(tracker: &tokio_util::task::TaskTracker, channel: Channel) -> AckWindow {
        let (tx, rx) = mpsc::unbounded_channel();
        tracker.spawn(run(rx, channel));
        AckWindow { tx }
    }

    /// The message with `tag` is done and durable: acknowledge it.
    pub fn ack(&self, tag: u64, acker: Acker) {
        // The task ends only after every sender is gone, so this cannot fail.
        let _ = self.tx.send((tag, Some(acker)));
    }

    /// The message with `tag` was rejected or returned, and the broker has been told. (Not for
    /// a message left unsettled at shutdown: a later `multiple` must not cover it.)
    pub fn settled(&self, tag: u64) {
        let _ = self.tx.send((tag, None));
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<(u64, Option<Acker>)>, _channel: Channel) {
    let mut window: Window<Acker> = Window::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = rx.recv() => match received {
                Some((tag, acker)) => window.insert(tag, acker),
                None => break,
            },
            // Idle, it sleeps: no wake-ups while nothing waits for an acknowledgement.
            _ = tick.tick(), if !window.done.is_empty() => {
                for (acker, multiple) in window.due(false) {
                    send(acker, multiple).await;
                }
            }
        }
    }
    for (acker, multiple) in window.due(true) {
        send(acker, multiple).await;
    }
}

async fn send(acker: Acker, multiple: bool) {
    if let Err(e) = acker.ack(BasicAckOptions { multiple }).await {
        // The channel is gone: the broker returns the messages to their queue by itself.
        tracing::warn!(error = %e, "could not acknowledge");
    }
}

/// The pure part: which acknowledgements to send. Generic over the acker for its tests.
struct Window<A> {
    /// Every tag below this one is settled.
    next: u64,
    done: BTreeMap<u64, Done<A>>,
}

impl<A> Default for Window<A> {
    fn default() -> Self {
        Window {
            next: 1,
            done: BTreeMap::new(),
        }
    }
}

impl<A> Window<A> {
    fn insert(&mut self, tag: u64, acker: Option<A>) {
        let done = match acker {
            Some(acker) => Done::Ack { acker, ticks: 0 },
            None => Done::Settled,
        };
        self.done.insert(tag, done);
    }

    /// The acknowledgements to send now, as (acker, multiple): one with `multiple` for the
    /// contiguous run from `next`, then each that has waited [`HOLD_TICKS`] behind a gap (all of
    /// them when `all`).
    fn due(&mut self, all: bool) -> Vec<(A, bool)> {
        let mut out = Vec::new();
        // The run: `multiple` on its last acknowledgeable tag covers every tag before it (the
        // ones settled otherwise are no longer outstanding, which the broker allows, but the
        // tag named must be).
        let mut last = None;
        while let Some(done) = self.done.remove(&self.next) {
            if let Done::Ack { acker, .. } = done {
                last = Some(acker);
            }
            self.next += 1;
        }
        if let Some(acker) = last {
            out.push((acker, true));
        }
        // Behind a gap: on their own once they have waited, so a message in progress holds up
        // no other for long.
        for done in self.done.values_mut() {
            if let Done::Ack { ticks, .. } = done {
                *ticks += 1;
                if (*ticks >= HOLD_TICKS || all)
                    && let Done::Ack { acker, .. } = std::mem::replace(done, Done::Settled)
                {
                    out.push((acker, false));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `steps` of (tag, acked?) or a tick (`None`), and returns what was sent per tick.
    fn replay(steps: &[Option<(u64, bool)>]) -> Vec<Vec<(u64, bool)>> {
        let mut w = Window::default();
        let mut sent = Vec::new();
        for step in steps {
            match step {
                Some((tag, ack)) => w.insert(*tag, ack.then_some(*tag)),
                None => sent.push(w.due(false)),
            }
        }
        sent
    }

    #[test]
    fn a_run_in_order_is_one_multiple_ack_on_its_last_tag() {
        let sent = replay(&[Some((1, true)), Some((2, true)), Some((3, true)), None]);
        assert_eq!(sent, [vec![(3, true)]]);
    }

    #[test]
    fn a_rejected_tag_ends_no_run_but_is_never_named() {
        // 3 was rejected: the multiple on 2 leaves it, and a run ending in it names 2.
        let sent = replay(&[Some((1, true)), Some((2, true)), Some((3, false)), None]);
        assert_eq!(sent, [vec![(2, true)]]);
        let sent = replay(&[Some((1, false)), None, Some((2, false)), None]);
        assert_eq!(sent, [vec![], vec![]], "nothing to acknowledge");
    }

    #[test]
    fn a_tag_behind_a_gap_waits_then_goes_alone_and_the_run_resumes_after_it() {
        // 1 is still in progress for HOLD_TICKS ticks.
        let mut steps = vec![Some((2, true)), Some((3, true))];
        steps.extend(std::iter::repeat_n(None, usize::from(HOLD_TICKS)));
        steps.extend([Some((1, true)), Some((4, true)), None]);
        let sent = replay(&steps);
        let mut expected = vec![vec![]; usize::from(HOLD_TICKS) - 1];
        expected.push(vec![(2, false), (3, false)]);
        // 2 and 3 are settled: the run 1..=4 names 4, its last acknowledgeable tag.
        expected.push(vec![(4, true)]);
        assert_eq!(sent, expected);
    }

    #[test]
    fn a_gap_that_closes_in_time_leaves_one_multiple_ack() {
        let mut steps = vec![Some((2, true)), Some((3, true))];
        steps.extend(std::iter::repeat_n(None, usize::from(HOLD_TICKS) - 1));
        steps.extend([Some((1, true)), None]);
        let sent = replay(&steps);
        assert!(sent[..sent.len() - 1].iter().all(Vec::is_empty));
        assert_eq!(sent.last().unwrap(), &vec![(3, true)]);
    }

    #[test]
    fn an_abandoned_tag_is_never_covered_by_a_multiple() {
        // 1 is left unsettled (shutdown): everything after it goes alone, forever.
        let mut w = Window::default();
        for tag in 2..=5 {
            w.insert(tag, Some(tag));
        }
        let sent = w.due(true);
        assert_eq!(sent, [(2, false), (3, false), (4, false), (5, false)]);
        assert!(sent.iter().all(|(_, multiple)| !multiple));
    }
}
