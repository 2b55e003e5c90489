//! RabbitMQ: the topology tagcast declares (each argument explained), publishing with
//! publisher confirms, the connection and its supervisor ([`connection`]), coalesced
//! acknowledgements ([`acks`]) and queue depths ([`depths`]).

pub mod acks;
pub mod connection;
pub mod depths;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::try_join_all;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind, PublisherConfirm};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Delay steps of the retry queues, shortest first. A wait is made of hops through these,
/// longest fitting step first, so any delay up to hours takes a handful of hops, and since each
/// queue holds one fixed TTL, a message never waits behind one that is due later.
pub const DELAY_STEPS: [Duration; 14] = {
    let mut steps = [Duration::ZERO; 14];
    steps[0] = Duration::from_millis(250);
    steps[1] = Duration::from_millis(500);
    let mut i = 2;
    while i < 14 {
        steps[i] = Duration::from_secs(1 << (i - 2));
        i += 1;
    }
    steps
};

/// The step for a wait of `remaining`: the longest that does not overshoot it, or the shortest
/// when even that does (a retry may come a little late, never early).
pub fn delay_step(remaining: Duration) -> Duration {
    DELAY_STEPS
        .iter()
        .rev()
        .copied()
        .find(|step| *step <= remaining)
        .unwrap_or(DELAY_STEPS[0])
}

/// The step for a wait that may end a little late but should take few hops: the shortest step
/// that covers it when that overshoots by a quarter at most, else as [`delay_step`].
pub fn delay_step_covering(remaining: Duration) -> Duration {
    DELAY_STEPS
        .iter()
        .copied()
        .find(|step| *step >= remaining)
        .filter(|step| *step <= remaining + remaining / 4)
        .unwrap_or_else(|| delay_step(remaining))
}

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("rabbitmq: {0}")]
    Lapin(#[from] lapin::Error),
    #[error("rabbitmq refused to take a message (publisher nack)")]
    Nacked,
    #[error("rabbitmq node {0} did not accept a connection in time")]
    Timeout(crate::redact::SecretUrl),
    #[error("no rabbitmq node to connect to")]
    NoNodes,
}

impl AmqpError {
    /// What is wrong with `TAGCAST_AMQP_URL`, when the broker refused it for a reason waiting
    /// does not cure: a login it refuses, or a vhost it does not have (or will not open to
    /// this user).
    pub fn misconfiguration(&self) -> Option<String> {
        use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
        let AmqpError::Lapin(e) = self else {
            return None;
        };
        let lapin::ErrorKind::ProtocolError(refusal) = e.kind() else {
            return None;
        };
        let advice = match refusal.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                "RabbitMQ refused the login: check the user and password"
            }
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => {
                "RabbitMQ will not open the vhost: check that it exists and that the user may use it"
            }
            _ => return None,
        };
        Some(format!("{advice} ({})", refusal.get_message()))
    }
}

/// Names of everything tagcast declares, from the configured prefix and exchanges.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    pub events_exchange: String,
    pub status_exchange: String,
    /// `x-quorum-initial-group-size` of every queue, when the operator sets one; without it
    /// RabbitMQ places a replica on every node of the cluster.
    pub quorum_group_size: Option<u32>,
}

impl Topology {
    pub fn events_queue(&self) -> String {
        format!("{}.events", self.prefix)
    }
    pub fn events_dead_queue(&self) -> String {
        format!("{}.events.dead", self.prefix)
    }
    /// Delivery jobs: one message per attempt due now.
    pub fn deliveries_queue(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }
    pub fn deliveries_dead_queue(&self) -> String {
        format!("{}.deliveries.dead", self.prefix)
    }
    pub fn delay_queue(&self, step: Duration) -> String {
        format!("{}.delay.{}ms", self.prefix, step.as_millis())
    }

    /// Every queue tagcast declares (for operators' tooling and for tests that clean up).
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.events_queue(),
            self.events_dead_queue(),
            self.deliveries_queue(),
            self.deliveries_dead_queue(),
        ];
        queues.extend(DELAY_STEPS.iter().map(|step| self.delay_queue(*step)));
        queues
    }

    /// The arguments every queue starts from: a quorum queue, replicated over the cluster.
    fn quorum(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        if let Some(size) = self.quorum_group_size {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongInt(i32::try_from(size).unwrap_or(i32::MAX)),
            );
        }
        args
    }

    /// Declares exchanges, queues and bindings; idempotent, so every replica does it at start.
    pub async fn declare(&self, channel: &Channel) -> Result<(), AmqpError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for exchange in [&self.events_exchange, &self.status_exchange] {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }

        // The dead-letter queues hold what could not be processed, for a human to look at.
        declare_queue(channel, &self.events_dead_queue(), self.quorum()).await?;
        declare_queue(channel, &self.deliveries_dead_queue(), self.quorum()).await?;

        // Exactly the arguments of contract section 1, so operators can declare it ahead of us.
        // Rejected messages go to the default exchange, routed to `<prefix>.events.dead`; the
        // delivery limit stops a message that crashes its consumer from looping forever.
        let mut events = self.quorum();
        events.insert("x-dead-letter-exchange".into(), text(""));
        events.insert(
            "x-dead-letter-routing-key".into(),
            text(&self.events_dead_queue()),
        );
        events.insert("x-delivery-limit".into(), AMQPValue::LongInt(10));
        declare_queue(channel, &self.events_queue(), events).await?;
        channel
            .queue_bind(
                self.events_queue().into(),
                self.events_exchange.as_str().into(),
                "build.completed.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        // Delivery jobs, with the same poison-message protection as events.
        let mut deliveries = self.quorum();
        deliveries.insert("x-dead-letter-exchange".into(), text(""));
        deliveries.insert(
            "x-dead-letter-routing-key".into(),
            text(&self.deliveries_dead_queue()),
        );
        deliveries.insert("x-delivery-limit".into(), AMQPValue::LongInt(10));
        declare_queue(channel, &self.deliveries_queue(), deliveries).await?;

        // Retry delays: nobody consumes these queues. A message waits its queue's TTL, then
        // expires into the delivery queue. At-least-once dead-lettering (which needs
        // reject-publish overflow) keeps an expiring retry from being lost in a broker crash.
        for step in DELAY_STEPS {
            let mut delay = self.quorum();
            delay.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(step.as_millis() as i64),
            );
            delay.insert("x-dead-letter-exchange".into(), text(""));
            delay.insert(
                "x-dead-letter-routing-key".into(),
                text(&self.deliveries_queue()),
            );
            delay.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            delay.insert("x-overflow".into(), text("reject-publish"));
            declare_queue(channel, &self.delay_queue(step), delay).await?;
        }
        Ok(())
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), AmqpError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(name.into(), options, args).await?;
    Ok(())
}

/// A request for one delivery attempt, due at `not_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub delivery_id: Uuid,
    /// Which attempt this is: 1 for the first.
    pub attempt: i32,
    /// Unix milliseconds on the wire.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub not_before: DateTime<Utc>,
    /// The delivery's webhook, so that its breaker and cap are asked before the database;
    /// absent from jobs queued by the sweeper and by older versions, which look it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<i64>,
}

/// Publishes on one channel in confirm mode. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    topology: std::sync::Arc<Topology>,
}

/// A publish the broker has yet to confirm.
pub struct Pending(PublisherConfirm);

impl Publisher {
    pub fn new(channel: Channel, topology: std::sync::Arc<Topology>) -> Publisher {
        Publisher { channel, topology }
    }

    /// Sends a job to the delivery queue if it is due, else to the delay step that fits.
    pub async fn job(&self, job: &Job, now: DateTime<Utc>) -> Result<Pending, AmqpError> {
        let remaining = (job.not_before - now).to_std().unwrap_or(Duration::ZERO);
        let queue = if remaining.is_zero() {
            self.topology.deliveries_queue()
        } else {
            self.topology.delay_queue(delay_step(remaining))
        };
        self.send_job(&queue, job).await
    }

    /// Sends a job to wait about `wait` in a delay queue (see [`delay_step_covering`]), due or
    /// not: for an attempt held back by its webhook's breaker or cap, which asks again when it
    /// comes back.
    pub async fn job_in(&self, job: &Job, wait: Duration) -> Result<Pending, AmqpError> {
        let queue = self.topology.delay_queue(delay_step_covering(wait));
        self.send_job(&queue, job).await
    }

    async fn send_job(&self, queue: &str, job: &Job) -> Result<Pending, AmqpError> {
        // A Job always serializes: plain numbers and a UUID.
        let body = serde_json::to_vec(job).unwrap_or_default();
        self.publish("", queue, &body).await
    }

    /// Queues each `(delivery, attempt)` as a job due now and waits until the broker confirmed
    /// them all: for work that a database change is waiting on to commit.
    pub async fn jobs_now(
        &self,
        jobs: impl IntoIterator<Item = (Uuid, i32)>,
    ) -> Result<(), AmqpError> {
        let now = Utc::now();
        let mut pending = Vec::new();
        for (delivery_id, attempt) in jobs {
            let job = Job {
                delivery_id,
                attempt,
                not_before: now,
                webhook_id: None,
            };
            pending.push(self.job(&job, now).await?);
        }
        confirmed(pending).await
    }

    /// Sends a status event to the status exchange with routing key `delivery.<status>`.
    pub async fn status(&self, routing_key: &str, body: &[u8]) -> Result<Pending, AmqpError> {
        let exchange = self.topology.status_exchange.clone();
        self.publish(&exchange, routing_key, body).await
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> Result<Pending, AmqpError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"));
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?;
        Ok(Pending(confirm))
    }
}

/// Waits for the broker to confirm every publish; a nack is an error.
pub async fn confirmed(pending: Vec<Pending>) -> Result<(), AmqpError> {
    let confirmations = try_join_all(pending.into_iter().map(|p| p.0)).await?;
    if confirmations.iter().all(|c| c.is_ack()) {
        Ok(())
    } else {
        Err(AmqpError::Nacked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_steps_double_from_a_quarter_second() {
        assert_eq!(DELAY_STEPS[0], Duration::from_millis(250));
        assert_eq!(DELAY_STEPS[2], Duration::from_secs(1));
        assert_eq!(DELAY_STEPS[13], Duration::from_secs(2048));
        assert!(DELAY_STEPS.windows(2).all(|w| w[1] == w[0] * 2));
    }

    #[test]
    fn a_wait_picks_the_longest_step_that_fits() {
        let cases = [
            (1, 250),
            (249, 250),
            (250, 250),
            (999, 500),
            (1_000, 1_000),
            (1_500, 1_000),
            (3_600_000, 2_048_000),
            (86_400_000, 2_048_000),
        ];
        for (remaining_ms, step_ms) in cases {
            assert_eq!(
                delay_step(Duration::from_millis(remaining_ms)),
                Duration::from_millis(step_ms),
                "{remaining_ms} ms"
            );
        }
    }

    #[test]
    fn a_wait_that_may_end_late_takes_the_step_covering_it_when_that_is_close() {
        let cases = [
            (0, 250),
            (200, 250),
            (250, 250),
            (300, 250),
            (450, 500),
            (29_000, 32_000),
            (17_000, 16_000),
            (2_047_000, 2_048_000),
            (3_600_000, 2_048_000),
        ];
        for (remaining_ms, step_ms) in cases {
            assert_eq!(
                delay_step_covering(Duration::from_millis(remaining_ms)),
                Duration::from_millis(step_ms),
                "{remaining_ms} ms"
            );
        }
    }

    #[test]
    fn an_hour_takes_a_few_hops() {
        let mut remaining = Duration::from_secs(3600);
        let mut hops = 0;
        while remaining > Duration::ZERO {
            remaining = remaining.saturating_sub(delay_step(remaining));
            hops += 1;
        }
        assert_eq!(hops, 4, "2048 + 1024 + 512 + 16 s");
    }
}
