//! The broker connection: open it with its channels on one of the cluster's nodes, and keep one
//! open, failing over to another node (with backoff once every node has refused) whenever it is
//! lost.

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
use crate::nodes::Nodes;

/// How long one node may take to accept a connection before the next is tried: a node whose
/// host vanished would otherwise hold a replica for the operating system's TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection to the first node of `order` that takes it; the error is the last
/// node's. For commands that connect once; the supervisor keeps its own order.
pub async fn connect_any(
    nodes: &Nodes,
    order: impl IntoIterator<Item = usize>,
    name: &str,
) -> Result<(Connection, usize), AmqpError> {
    let mut last = None;
    for index in order {
        let url = nodes.get(index);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(url.expose(), properties),
        )
        .await
        {
            Ok(Ok(connection)) => return Ok((connection, index)),
            Ok(Err(e)) => {
                tracing::debug!(amqp = %url, error = %e, "RabbitMQ node refused the connection");
                last = Some(AmqpError::Lapin(e));
            }
            Err(_) => {
                tracing::debug!(amqp = %url, "RabbitMQ node did not answer in time");
                last = Some(AmqpError::Timeout(url.clone()));
            }
        }
    }
    Err(last.unwrap_or(AmqpError::NoNodes))
}

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
    pub nodes: Nodes,
    pub topology: Arc<Topology>,
    pub event_concurrency: u16,
    pub delivery_concurrency: u16,
}

impl Broker {
    /// Connects to the first node of the round that takes it, declares the topology and opens
    /// the channels; returns which node it is.
    pub async fn connect(
        &self,
        order: impl IntoIterator<Item = usize>,
    ) -> Result<(Connection, Channels, usize), AmqpError> {
        let name = format!("tagcast {}", self.topology.prefix);
        let (connection, node) = connect_any(&self.nodes, order, &name).await?;
        match self.open(&connection).await {
            Ok(channels) => Ok((connection, channels, node)),
            Err(e) => {
                let _ = connection.close(320, "setup failed".into()).await;
                Err(e)
            }
        }
    }

    async fn open(&self, connection: &Connection) -> Result<Channels, AmqpError> {
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
        Ok(Channels {
            publisher: Publisher::new(publish, self.topology.clone()),
            events,
            deliveries,
            depths,
        })
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
        let mut failover = self.nodes.failover(&mut fastrand::Rng::new());
        let started = std::time::Instant::now();
        let mut connected_once = false;
        loop {
            if stop.is_cancelled() {
                return Ok(None);
            }
            match self.connect(failover.round().collect::<Vec<_>>()).await {
                Ok((connection, channels, node)) => {
                    waits = backoff();
                    connected_once = true;
                    failover.connected(node);
                    metrics.broker_connections.inc();
                    health.up();
                    tracing::info!(amqp = %self.nodes.get(node), node = node + 1, "connected to RabbitMQ");
                    publisher.send_replace(Some(channels.publisher.clone()));
                    session(channels).await;
                    publisher.send_replace(None);
                    if stop.is_cancelled() {
                        return Ok(Some(connection));
                    }
                    health.down(&"connection lost");
                    tracing::warn!(amqp = %self.nodes.get(node), node = node + 1, "lost RabbitMQ connection; reconnecting");
                    let _ = connection.close(320, "reconnecting".into()).await;
                    failover.lost();
                }
                Err(e) => {
                    if !connected_once
                        && started.elapsed() >= grace
                        && let Some(problem) = e.misconfiguration()
                    {
                        return Err(Refused(problem));
                    }
                    health.down(&e);
                    tracing::debug!(amqp = %self.nodes, error = %e, "cannot connect to any RabbitMQ node; retrying");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(None),
                () = tokio::time::sleep(waits.next_delay()) => {}
            }
        }
    }
}
