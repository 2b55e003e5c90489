//! Wiring: the pool, the broker connection and its consumers, the HTTP client and the health
//! server. Owns shutdown: stop taking messages, let in-flight work finish within the grace
//! period, leave the rest unacknowledged for another worker.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acks::AckWindow;
use crate::amqp::{Publisher, Topology};
use crate::config::Settings;
use crate::delivery::gate::EndpointGate;
use crate::delivery::{self, ClientSettings, RetryPolicy, WebhookClient, guard::AddressPolicy};
use crate::http::{self, Health};
use crate::metrics::{Metrics, QueueLabel, Stage};
use crate::pipeline;
use crate::store::{self, Recorder, StoreError, WebhookCache};

/// What every handler needs. Shared by reference count; everything inside is cheap to clone.
pub struct Context {
    pub pool: PgPool,
    pub recorder: Recorder,
    pub gate: Arc<EndpointGate>,
    /// Inline first attempts in flight at once, across all webhooks.
    pub inline_slots: tokio::sync::Semaphore,
    pub cache: WebhookCache,
    pub metrics: Metrics,
    pub client: WebhookClient,
    pub retry: RetryPolicy,
    /// How long a claimed attempt stays claimed: longer than any attempt can take.
    pub lease: Duration,
    /// Fires when the grace period is over: work still waiting for the database gives up and
    /// leaves its message unacknowledged.
    pub hard_stop: CancellationToken,
    health: Health,
}

impl Context {
    pub fn database_retry(&self, e: &StoreError) {
        self.metrics.database_retries.inc();
        self.health.database.store(false, Ordering::Release);
        tracing::warn!(error = %e, "database unavailable; holding the message and retrying");
    }
}

/// Inline first attempts in flight at once: enough to keep a few cores busy on fast receivers,
/// few enough that connections and buffers stay within tens of MiB.
const INLINE_ATTEMPTS: usize = 256;

/// How a consumed message is settled. Decided by the handlers, applied in one place
/// ([`settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done, and everything it caused is durable.
    Ack,
    /// Can never be processed: to the dead-letter queue.
    DeadLetter,
    /// Could not finish now; the broker hands it out again (counted against the delivery limit).
    Requeue,
    /// Shutting down: leave it unacknowledged; closing the channel returns it to the queue.
    Abandon,
}

/// A consumed message, as the handlers see it.
#[derive(Debug)]
pub struct Inbound {
    pub body: Vec<u8>,
    /// How often the queue handed it out before (its `x-delivery-count`).
    pub redeliveries: i64,
}

pub struct App {
    settings: Settings,
    pool: PgPool,
    metrics: Metrics,
    listener: TcpListener,
    client: WebhookClient,
    topology: Arc<Topology>,
}

impl App {
    /// Connects to PostgreSQL (waiting for it if needed), applies migrations and binds the
    /// metrics address.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let pool = store::connect(&settings.database_url, 16).context("TAGCAST_DATABASE_URL")?;
        migrate_when_reachable(&pool).await?;
        let listener = TcpListener::bind(settings.metrics_addr)
            .await
            .with_context(|| format!("binding TAGCAST_METRICS_ADDR {}", settings.metrics_addr))?;
        let client = WebhookClient::new(&ClientSettings {
            connect_timeout: settings.http_connect_timeout,
            timeout: settings.http_timeout,
            policy: AddressPolicy {
                allow_private: settings.allow_private_targets,
                allow: settings.allow_targets.clone(),
            },
        })?;
        let topology = Arc::new(Topology {
            prefix: settings.queue_prefix.clone(),
            events_exchange: settings.events_exchange.clone(),
            status_exchange: settings.status_exchange.clone(),
        });
        Ok(App {
            settings,
            pool,
            metrics: Metrics::new(),
            listener,
            client,
            topology,
        })
    }

    /// The address `/metrics` listens on (useful when configured with port 0).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.settings.metrics_addr)
    }

    /// Runs until `shutdown` completes, then drains within the grace period.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let health = Health::default();
        let cache = WebhookCache::new(self.pool.clone());
        let lease = self.settings.http_connect_timeout
            + self.settings.http_timeout
            + Duration::from_secs(5);
        let ctx = Arc::new(Context {
            pool: self.pool.clone(),
            recorder: Recorder::spawn(self.pool.clone(), lease),
            gate: Arc::default(),
            inline_slots: tokio::sync::Semaphore::new(INLINE_ATTEMPTS),
            cache: cache.clone(),
            metrics: self.metrics.clone(),
            client: self.client.clone(),
            retry: self.settings.retry_policy(),
            lease: self.settings.http_connect_timeout
                + self.settings.http_timeout
                + Duration::from_secs(30),
            hard_stop: hard_stop.clone(),
            health: health.clone(),
        });

        let background = TaskTracker::new();
        background.spawn(http::serve(
            self.listener,
            self.metrics.clone(),
            health.clone(),
            hard_stop.clone(),
        ));
        background.spawn(cache.listen(self.metrics.clone(), hard_stop.clone()));
        background.spawn(probe_database(
            self.pool.clone(),
            health.clone(),
            self.metrics.clone(),
            hard_stop.clone(),
        ));

        let work = TaskTracker::new();
        let current: Arc<std::sync::Mutex<Option<Publisher>>> = Arc::default();
        background.spawn(crate::sweeper::run(
            self.pool.clone(),
            current.clone(),
            self.metrics.clone(),
            hard_stop.clone(),
        ));
        let broker = tokio::spawn(supervise_broker(
            self.settings.clone(),
            self.topology.clone(),
            ctx,
            health.clone(),
            work.clone(),
            stop.clone(),
            current.clone(),
        ));

        shutdown.await;
        tracing::info!(grace = ?self.settings.shutdown_grace, "shutting down: no new messages; finishing what is in flight");
        stop.cancel();
        let connection = broker.await.context("broker task")?;
        work.close();
        if tokio::time::timeout(self.settings.shutdown_grace, work.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; unfinished messages go back to the queue");
        }
        hard_stop.cancel();
        // Whatever is still unacknowledged returns to its queue when the connection closes.
        if let Some(connection) = connection {
            let _ = connection.close(200, "shutdown".into()).await;
        }
        background.close();
        background.wait().await;
        self.pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn migrate_when_reachable(pool: &PgPool) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match pool.acquire().await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "waiting for PostgreSQL");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    store::migrate(pool).await.context("applying migrations")
}

/// Keeps `/readyz` honest about PostgreSQL, once a second.
async fn probe_database(pool: PgPool, health: Health, metrics: Metrics, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = matches!(
            tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query("SELECT 1").execute(&pool)
            )
            .await,
            Ok(Ok(_))
        );
        health.database.store(ok, Ordering::Release);
        metrics.set_up(health.broker.load(Ordering::Acquire), ok);
    }
}

/// Connects to RabbitMQ, declares the topology and consumes both queues; reconnects with
/// backoff whenever the connection is lost. Returns the live connection once `stop` fires, so
/// in-flight handlers can still acknowledge.
async fn supervise_broker(
    settings: Settings,
    topology: Arc<Topology>,
    ctx: Arc<Context>,
    health: Health,
    work: TaskTracker,
    stop: CancellationToken,
    current: Arc<std::sync::Mutex<Option<Publisher>>>,
) -> Option<Connection> {
    let mut delay = Duration::from_millis(100);
    loop {
        if stop.is_cancelled() {
            return None;
        }
        match connect(&settings, &topology).await {
            Ok((connection, channels)) => {
                delay = Duration::from_millis(100);
                ctx.metrics.broker_connections.inc();
                health.broker.store(true, Ordering::Release);
                tracing::info!(amqp = %settings.amqp_url, "connected to RabbitMQ");
                let publisher = Publisher::new(channels.publish, topology.clone());
                *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(publisher.clone());
                let events = consume(
                    Lane {
                        stage: Stage::Events,
                        channel: channels.events,
                        queue: topology.events_queue(),
                        concurrency: settings.event_concurrency.into(),
                    },
                    ctx.clone(),
                    publisher.clone(),
                    work.clone(),
                    stop.clone(),
                    pipeline::handle_event,
                );
                let deliveries = consume(
                    Lane {
                        stage: Stage::Deliveries,
                        channel: channels.deliveries,
                        queue: topology.deliveries_queue(),
                        concurrency: settings.delivery_concurrency.into(),
                    },
                    ctx.clone(),
                    publisher,
                    work.clone(),
                    stop.clone(),
                    delivery::handle_job,
                );
                let depths = watch_queues(channels.watch, topology.clone(), ctx.metrics.clone());
                // Either consumer ending means the connection is gone (or we are stopping).
                tokio::select! {
                    () = events => {}
                    () = deliveries => {}
                    () = depths => {}
                }
                if stop.is_cancelled() {
                    return Some(connection);
                }
                health.broker.store(false, Ordering::Release);
                *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::warn!("lost RabbitMQ connection; reconnecting");
                let _ = connection.close(320, "reconnecting".into()).await;
            }
            Err(e) => {
                health.broker.store(false, Ordering::Release);
                tracing::warn!(amqp = %settings.amqp_url, error = %e, "cannot connect to RabbitMQ; retrying");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

struct Channels {
    publish: Channel,
    events: Channel,
    deliveries: Channel,
    watch: Channel,
}

async fn connect(
    settings: &Settings,
    topology: &Topology,
) -> Result<(Connection, Channels), lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("tagcast {}", topology.prefix).into());
    let connection = Connection::connect(settings.amqp_url.expose(), properties).await?;
    let publish = connection.create_channel().await?;
    topology.declare(&publish).await.map_err(|e| match e {
        crate::amqp::AmqpError::Lapin(e) => e,
        crate::amqp::AmqpError::Nacked => lapin::Error::from(
            lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Error, "declare"),
        ),
    })?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let events = connection.create_channel().await?;
    events
        .basic_qos(
            crate::acks::prefetch(settings.event_concurrency),
            BasicQosOptions::default(),
        )
        .await?;
    let deliveries = connection.create_channel().await?;
    deliveries
        .basic_qos(
            crate::acks::prefetch(settings.delivery_concurrency),
            BasicQosOptions::default(),
        )
        .await?;
    let watch = connection.create_channel().await?;
    Ok((
        connection,
        Channels {
            publish,
            events,
            deliveries,
            watch,
        },
    ))
}

/// Reports queue depths every few seconds, so an alert can see events waiting with nobody
/// consuming them. Returns when the channel fails.
async fn watch_queues(channel: Channel, topology: Arc<Topology>, metrics: Metrics) {
    let queues = [
        (QueueLabel::Events, topology.events_queue()),
        (QueueLabel::EventsDead, topology.events_dead_queue()),
        (QueueLabel::Deliveries, topology.deliveries_queue()),
        (QueueLabel::DeliveriesDead, topology.deliveries_dead_queue()),
    ];
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        for (label, queue) in &queues {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            match channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(q) => metrics.queue_depth(*label, q.message_count()),
                Err(e) => {
                    tracing::warn!(queue, error = %e, "cannot read queue depth");
                    return;
                }
            }
        }
    }
}

/// One queue to consume, on its own channel.
struct Lane {
    stage: Stage,
    channel: Channel,
    queue: String,
    /// Messages handled at once (the channel's prefetch leaves room for more).
    concurrency: usize,
}

/// Consumes one queue until `stop` fires or the channel dies. Each message gets its own task,
/// so a slow webhook holds up only its own message; at most `concurrency` run at once.
async fn consume<F, Fut>(
    Lane {
        stage,
        channel,
        queue,
        concurrency,
    }: Lane,
    ctx: Arc<Context>,
    publisher: Publisher,
    work: TaskTracker,
    stop: CancellationToken,
    handler: F,
) where
    F: Fn(Arc<Context>, Publisher, Inbound) -> Fut,
    Fut: Future<Output = Settle> + Send + 'static,
{
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
    let window = AckWindow::spawn(&work);
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
            ctx.metrics.redelivered(stage);
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
        let task = handler(ctx.clone(), publisher.clone(), inbound);
        let (window, running, stop) = (window.clone(), running.clone(), stop.clone());
        work.spawn(async move {
            // Its turn comes when fewer than `concurrency` run (the prefetch holds a few more).
            // Waiting here, not in the loop, keeps the loop on the consumer, so a closed channel
            // is seen at once. Stopped before its turn, it is left unsettled for the broker to
            // return.
            let permit = tokio::select! {
                () = stop.cancelled() => return,
                permit = running.acquire_owned() => permit,
            };
            let Ok(_permit) = permit else { return };
            // A panic must not strand the message unacknowledged: return it, so the delivery
            // limit can take it out of circulation if it keeps happening.
            let outcome = std::panic::AssertUnwindSafe(task)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!("message handler panicked; message returned to the queue");
                    Settle::Requeue
                });
            settle(acker, tag, &window, outcome).await
        });
    }
}

/// Redeliveries after which a message is reported as probably poisonous (and the event stage
/// stops making first attempts inline for it: see [`pipeline`]).
pub const POISON_WARNING: i64 = 5;

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

/// The one place where a message is acknowledged (through its channel's window), dead-lettered
/// or returned.
async fn settle(acker: lapin::Acker, tag: u64, window: &AckWindow, settle: Settle) {
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
