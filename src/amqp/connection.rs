//! The broker connection: open it with its channels, and keep one open, reconnecting with
//! backoff whenever it is lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicQosOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::acks::prefetch;
use super::{AmqpError, Publisher, Topology};
use crate::backoff::Waits;
use crate::health::Flag;
use crate::metrics::Metrics;
use crate::redact::SecretUrl;

/// The channels of one connection: publishing (in confirm mode), one per consumed queue, each
/// with its prefetch, and one for reading queue depths.
pub struct Channels {
    pub publisher: Publisher,
    pub events: Channel,
    pub deliveries: Channel,
    pub depths: Channel,
}

/// The broker refused tagcast from the start, for longer than the grace, for a reason waiting
/// does not cure (see [`AmqpError::misconfiguration`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Where and how to connect.
pub struct Broker {
    pub url: SecretUrl,
    pub topology: Arc<Topology>,
    pub event_concurrency: u16,
    pub delivery_concurrency: u16,
}

impl Broker {
    /// Connects, declares the topology and opens the channels.
    pub async fn connect(&self) -> Result<(Connection, Channels), AmqpError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("tagcast {}", self.topology.prefix).into());
        let connection = Connection::connect(self.url.expose(), properties).await?;
        let publish = connection.create_channel().await?;
        self.topology.declare(&publish).await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let events = connection.create_channel().await?;
        events
            .basic_qos(prefetch(self.event_concurrency), BasicQosOptions::default())
            .await?;
        let deliveries = connection.create_channel().await?;
        deliveries
            .basic_qos(
                prefetch(self.delivery_concurrency),
                BasicQosOptions::default(),
            )
            .await?;
        let depths = connection.create_channel().await?;
        let channels = Channels {
            publisher: Publisher::new(publish, self.topology.clone()),
            events,
            deliveries,
            depths,
        };
        Ok((connection, channels))
    }

    /// Keeps a connection open until `stop` fires: `session` runs on each connection, and
    /// returns when it is lost (or on `stop`). The current publisher, if any, is kept in
    /// `publisher` for background work. Returns the live connection once stopped, so in-flight
    /// handlers can still acknowledge. Until the first connection, a refusal that waiting does
    /// not cure ends it once it has lasted `grace`; after that, every outage is waited out.
    pub async fn supervise<S, Fut>(
        self,
        health: Flag,
        metrics: Metrics,
        publisher: watch::Sender<Option<Publisher>>,
        stop: CancellationToken,
        grace: Duration,
        session: S,
    ) -> Result<Option<Connection>, Refused>
    where
        S: Fn(Channels) -> Fut,
        Fut: Future<Output = ()>,
    {
        let backoff = || Waits::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut waits = backoff();
        let started = std::time::Instant::now();
        let mut connected_once = false;
        loop {
            if stop.is_cancelled() {
                return Ok(None);
            }
            match self.connect().await {
                Ok((connection, channels)) => {
                    waits = backoff();
                    connected_once = true;
                    metrics.broker_connections.inc();
                    health.up();
                    tracing::info!(amqp = %self.url, "connected to RabbitMQ");
                    publisher.send_replace(Some(channels.publisher.clone()));
                    session(channels).await;
                    publisher.send_replace(None);
                    if stop.is_cancelled() {
                        return Ok(Some(connection));
                    }
                    health.down(&"connection lost");
                    tracing::warn!("lost RabbitMQ connection; reconnecting");
                    let _ = connection.close(320, "reconnecting".into()).await;
                }
                Err(e) => {
                    if !connected_once
                        && started.elapsed() >= grace
                        && let Some(problem) = e.misconfiguration()
                    {
                        return Err(Refused(problem));
                    }
                    health.down(&e);
                    tracing::debug!(amqp = %self.url, error = %e, "cannot connect to RabbitMQ; retrying");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(None),
                () = tokio::time::sleep(waits.next_delay()) => {}
            }
        }
    }
}
