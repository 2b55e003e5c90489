//! The consume loop, generic over its stage: each message runs in its own task, at most
//! `concurrency` at once, and its outcome is turned into ack, reject or requeue here and only
//! here, once the broker has confirmed everything the stage published.

use std::future::Future;
use std::sync::Arc;

use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Channel};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::amqp::acks::AckWindow;
use crate::amqp::{AmqpError, Pending, Publisher, confirmed};
use crate::events::EventError;
use crate::metrics::{Metrics, Stage};
use crate::store::StoreError;

/// A consumed message, as the stages see it.
#[derive(Debug)]
pub struct Inbound {
    pub body: Vec<u8>,
    /// How often the queue handed it out before (its `x-delivery-count`).
    pub redeliveries: i64,
}

/// Redeliveries after which a message is reported as probably poisonous (and the event stage
/// stops making first attempts inline for it).
pub const POISON_WARNING: i64 = 5;

/// A message handled to the end: what it published, to be confirmed before it is acknowledged.
#[must_use]
#[derive(Default)]
pub struct Done {
    pending: Vec<Pending>,
}

impl Done {
    pub fn after(pending: Vec<Pending>) -> Done {
        Done { pending }
    }

    /// One more publish to wait for.
    pub fn push(&mut self, pending: Pending) {
        self.pending.push(pending);
    }

    pub fn extend(&mut self, other: Done) {
        self.pending.extend(other.pending);
    }
}

/// What a stage did with a message, and the span that names it (the event's or delivery's id),
/// in which the consumer logs how it settled.
pub struct Handled {
    pub span: tracing::Span,
    pub outcome: Result<Done, StageError>,
}

impl Handled {
    /// For a message that was refused before it could be named.
    pub fn unnamed(outcome: Result<Done, StageError>) -> Handled {
        Handled {
            span: tracing::Span::none(),
            outcome,
        }
    }
}

/// Why a message could not be handled to the end.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The event can never be processed: dead-lettered.
    #[error("invalid event: {0}")]
    InvalidInput(#[from] EventError),
    /// The delivery job can never be processed: dead-lettered.
    #[error("malformed delivery job: {0}")]
    MalformedJob(#[source] serde_json::Error),
    /// The database failed for a reason waiting does not cure: the message comes again.
    #[error(transparent)]
    Store(StoreError),
    /// A publish failed or was not confirmed: the message comes again.
    #[error(transparent)]
    Broker(#[from] AmqpError),
    /// The attempt was recorded before (another worker, or a lost commit answer): the message
    /// comes again and finishes from the record.
    #[error("attempt already recorded; finishing from the record")]
    AlreadyRecorded,
    /// Shutting down before the work was durable: left unacknowledged.
    #[error("stopping")]
    Stopping,
}

impl From<StoreError> for StageError {
    fn from(e: StoreError) -> StageError {
        match e {
            StoreError::Cancelled => StageError::Stopping,
            e => StageError::Store(e),
        }
    }
}

/// How a message is settled with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Done, and everything it caused is durable.
    Ack,
    /// Can never be processed: to the dead-letter queue.
    DeadLetter,
    /// Could not finish now; the broker hands it out again (counted against the delivery limit).
    Requeue,
    /// Shutting down: leave it unacknowledged; closing the channel returns it to the queue.
    Abandon,
}

/// One queue to consume, on its own channel.
pub struct Lane {
    pub stage: Stage,
    pub channel: Channel,
    pub queue: String,
    /// Messages handled at once (the channel's prefetch leaves room for more).
    pub concurrency: usize,
}

/// Consumes one queue until `stop` fires or the channel dies. Each message gets its own task,
/// so a slow webhook holds up only its own message; at most `concurrency` run at once.
pub async fn consume<F, Fut>(
    lane: Lane,
    publisher: Publisher,
    metrics: Metrics,
    work: TaskTracker,
    stop: CancellationToken,
    handler: F,
) where
    F: Fn(Publisher, Inbound) -> Fut,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let Lane {
        stage,
        channel,
        queue,
        concurrency,
    } = lane;
    let mut consumer = match channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(consumer) => consumer,
        Err(e) => {
            tracing::warn!(queue, error = %e, "cannot consume");
            return;
        }
    };
    let window = AckWindow::spawn(&work, channel.clone());
    let running = Arc::new(tokio::sync::Semaphore::new(concurrency));
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => {
                // Prefetched messages not yet started go back when the channel closes.
                let _ = channel.basic_cancel(consumer.tag(), Default::default()).await;
                return;
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    tracing::warn!(queue, error = %e, "consumer failed");
                    return;
                }
                None => return,
            },
        };
        let redeliveries = delivery_count(&delivery.properties);
        if delivery.redelivered {
            metrics.redelivered(stage);
        }
        if redeliveries >= POISON_WARNING {
            // The queue's delivery limit (10) dead-letters it soon: say so while it happens.
            tracing::warn!(
                queue,
                redeliveries,
                "message keeps failing; at the delivery limit it is dead-lettered"
            );
        }
        let (acker, tag) = (delivery.acker, delivery.delivery_tag);
        let inbound = Inbound {
            body: delivery.data,
            redeliveries,
        };
        let task = handler(publisher.clone(), inbound);
        let (window, running, stop, metrics) = (
            window.clone(),
            running.clone(),
            stop.clone(),
            metrics.clone(),
        );
        work.spawn(async move {
            // Its turn comes when fewer than `concurrency` run (the prefetch holds a few
            // more). Waiting here, not in the loop, keeps the loop on the consumer, so a
            // closed channel is seen at once. Stopped before its turn, it is left unsettled
            // for the broker to return.
            let permit = tokio::select! {
                () = stop.cancelled() => return,
                permit = running.acquire_owned() => permit,
            };
            let Ok(_permit) = permit else { return };
            // A panic must not strand the message unacknowledged: return it, so the
            // delivery limit can take it out of circulation if it keeps happening.
            let settle = match std::panic::AssertUnwindSafe(task).catch_unwind().await {
                Ok(Handled { span, outcome }) => {
                    decide(stage, &metrics, outcome).instrument(span).await
                }
                Err(_) => {
                    tracing::error!(
                        queue = stage.as_str(),
                        "message handler panicked; message returned to the queue"
                    );
                    Settle::Requeue
                }
            };
            apply(acker, tag, &window, settle).await;
        });
    }
}

/// The one place where an outcome becomes a settlement: waits for the broker's confirms, then
/// logs and counts each failure once.
async fn decide(stage: Stage, metrics: &Metrics, outcome: Result<Done, StageError>) -> Settle {
    let error = match outcome {
        Ok(done) => match confirmed(done.pending).await {
            Ok(()) => return Settle::Ack,
            Err(e) => StageError::Broker(e),
        },
        Err(e) => e,
    };
    let settle = settlement(&error);
    match &error {
        StageError::InvalidInput(_) | StageError::MalformedJob(_) => {
            metrics.dead_lettered(stage);
            tracing::warn!(error = %error, "dead-lettered");
        }
        StageError::Store(e) => {
            tracing::error!(error = %e, "database failed; message will be redelivered");
        }
        StageError::Broker(e) => {
            metrics.status_publish_failures.inc();
            tracing::warn!(error = %e, "publish failed; message will be redelivered");
        }
        StageError::AlreadyRecorded => {
            tracing::info!("attempt already recorded; the redelivery finishes it from the record");
        }
        StageError::Stopping => {}
    }
    settle
}

/// What a failure means for its message: input that can never be processed is dead-lettered;
/// what may succeed another time comes again; shutting down leaves it for the broker to return.
fn settlement(error: &StageError) -> Settle {
    match error {
        StageError::InvalidInput(_) | StageError::MalformedJob(_) => Settle::DeadLetter,
        StageError::Store(_) | StageError::Broker(_) | StageError::AlreadyRecorded => {
            Settle::Requeue
        }
        StageError::Stopping => Settle::Abandon,
    }
}

/// How often a quorum queue has handed this message out before (its `x-delivery-count`).
fn delivery_count(properties: &lapin::BasicProperties) -> i64 {
    use lapin::types::AMQPValue;
    let Some(headers) = properties.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        _ => 0,
    }
}

/// Tells the broker: acknowledged through the channel's window, dead-lettered or returned.
async fn apply(acker: Acker, tag: u64, window: &AckWindow, settle: Settle) {
    let result = match settle {
        Settle::Ack => return window.ack(tag, acker),
        Settle::DeadLetter => acker.reject(BasicRejectOptions { requeue: false }).await,
        Settle::Requeue => {
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
        Settle::Abandon => return,
    };
    match result {
        // Told to the broker: a later acknowledgement with `multiple` may pass over it.
        Ok(_) => window.settled(tag),
        // The channel is gone: the broker returns the message to its queue by itself.
        Err(e) => tracing::warn!(error = %e, ?settle, "could not settle message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_settles_its_message_one_way() {
        let malformed = serde_json::from_slice::<u8>(b"x").unwrap_err();
        let cases = [
            (
                StageError::InvalidInput(EventError::Tag),
                Settle::DeadLetter,
            ),
            (StageError::MalformedJob(malformed), Settle::DeadLetter),
            (
                StageError::Store(StoreError::Data {
                    column: "status",
                    value: "done".into(),
                }),
                Settle::Requeue,
            ),
            (StageError::Broker(AmqpError::Nacked), Settle::Requeue),
            (StageError::AlreadyRecorded, Settle::Requeue),
            (StageError::Stopping, Settle::Abandon),
            // Shutdown while the database was away: left for the broker, not requeued.
            (StageError::from(StoreError::Cancelled), Settle::Abandon),
        ];
        for (error, settle) in cases {
            assert_eq!(settlement(&error), settle, "{error:?}");
        }
    }
}
