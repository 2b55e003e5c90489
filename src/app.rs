//! Wiring: builds every part from the settings, starts them, and owns shutdown: stop taking
//! messages, let in-flight work finish within the grace period, leave the rest unacknowledged
//! for another worker.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp::connection::{Broker, Channels, Refused};
use crate::amqp::{Topology, depths};
use crate::api::{self, ApiState};
use crate::client::{ClientSettings, WebhookClient};
use crate::config::{Misconfigured, STARTUP_GRACE, Settings};
use crate::consumer::{Lane, consume};
use crate::gate::EndpointGate;
use crate::guard::AddressPolicy;
use crate::health::Health;
use crate::metrics::{Metrics, Stage};
use crate::retry::RetryPolicy;
use crate::stages::{self, Context};
use crate::store::{self, Pool, Recorder, StartError, WebhookCache};
use crate::{breaker, disabling, http, probe, sweeper};

pub struct App {
    settings: Settings,
    pool: Pool,
    metrics: Metrics,
    listener: TcpListener,
    api_listener: TcpListener,
    client: WebhookClient,
}

impl App {
    /// Connects to PostgreSQL (waiting for it if needed), applies migrations and binds the
    /// metrics and API addresses.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let pool = store::connect(&settings.database_url, 16).context("TAGCAST_DATABASE_URL")?;
        store::migrate_when_reachable(&pool, STARTUP_GRACE)
            .await
            .map_err(|e| match e {
                StartError::Refused(problem) => anyhow::Error::new(Misconfigured {
                    setting: "TAGCAST_DATABASE_URL",
                    problem,
                }),
                StartError::Migrations(e) => anyhow::Error::new(e).context("applying migrations"),
            })?;
        let listener = TcpListener::bind(settings.metrics_addr)
            .await
            .with_context(|| format!("binding TAGCAST_METRICS_ADDR {}", settings.metrics_addr))?;
        let api_listener = TcpListener::bind(settings.api_addr)
            .await
            .with_context(|| format!("binding TAGCAST_API_ADDR {}", settings.api_addr))?;
        let client = WebhookClient::new(&ClientSettings {
            connect_timeout: settings.http_connect_timeout,
            timeout: settings.http_timeout,
            policy: address_policy(&settings),
        })?;
        Ok(App {
            settings,
            pool,
            metrics: Metrics::new(),
            listener,
            api_listener,
            client,
        })
    }

    /// The address the admin API listens on (useful when configured with port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_listener
            .local_addr()
            .unwrap_or(self.settings.api_addr)
    }

    fn api_state(&self, publisher: watch::Receiver<Option<crate::amqp::Publisher>>) -> ApiState {
        ApiState::new(api::Shared {
            pool: self.pool.clone(),
            client: self.client.clone(),
            policy: address_policy(&self.settings),
            publisher,
            rotation_grace: self.settings.secret_rotation_grace,
        })
    }

    fn topology(&self) -> Arc<Topology> {
        let s = &self.settings;
        Arc::new(Topology {
            prefix: s.queue_prefix.clone(),
            events_exchange: s.events_exchange.clone(),
            status_exchange: s.status_exchange.clone(),
            quorum_group_size: s.quorum_group_size,
        })
    }

    /// `tagcast serve-api`: the admin API alone, until `shutdown` completes. It keeps a broker
    /// connection only to queue redeliveries, and consumes nothing.
    pub async fn serve_api_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let health = Health::default();
        let (publisher, current) = watch::channel(None);
        let state = self.api_state(current);
        let topology = self.topology();
        let broker = Broker {
            nodes: self.settings.amqp_url.clone(),
            topology: topology.clone(),
            event_concurrency: 1,
            delivery_concurrency: 1,
        };
        let session = {
            let (stop, metrics) = (stop.clone(), self.metrics.clone());
            move |channels: Channels| {
                let (stop, topology, metrics) = (stop.clone(), topology.clone(), metrics.clone());
                async move {
                    // Queue depths double as the sign that the connection is alive.
                    tokio::select! {
                        () = depths::watch(channels.depths, topology, metrics) => {}
                        () = stop.cancelled() => {}
                    }
                }
            }
        };
        let broker = tokio::spawn(broker.supervise(
            health.broker.clone(),
            self.metrics.clone(),
            publisher,
            stop.clone(),
            STARTUP_GRACE,
            session,
        ));
        let (api_addr, metrics_addr) = (self.api_addr(), self.metrics_addr());
        let background = TaskTracker::new();
        background.spawn(api::serve(self.api_listener, routes(state), stop.clone()));
        background.spawn(http::serve(
            self.listener,
            self.metrics.clone(),
            health.clone(),
            stop.clone(),
        ));
        background.spawn(probe::run(
            self.pool.clone(),
            health,
            self.metrics.clone(),
            stop.clone(),
        ));
        tracing::info!(api = %api_addr, metrics = %metrics_addr, "tagcast admin API started");
        shutdown.await;
        tracing::info!("shutting down: finishing requests in progress");
        stop.cancel();
        background.close();
        background.wait().await;
        if let Ok(Ok(Some(connection))) = broker.await {
            let _ = connection.close(200, "shutdown".into()).await;
        }
        store::close(&self.pool);
        tracing::info!("stopped");
        Ok(())
    }

    /// The address `/metrics` listens on (useful when configured with port 0).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.settings.metrics_addr)
    }

    /// Runs until `shutdown` completes, then drains within the grace period. Fails with
    /// [`Misconfigured`] if the broker refuses tagcast from the start.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let s = &self.settings;
        let metrics_addr = self.metrics_addr();
        let api_addr = self.api_addr();
        let topology = self.topology();
        let (publisher, current) = watch::channel(None);
        let api_state = self.api_state(current.clone());
        let stop = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let health = Health::default();
        let cache = WebhookCache::new(
            self.pool.clone(),
            s.webhook_cache_size,
            self.metrics.clone(),
        );
        let lease = stages::lease(s.http_connect_timeout, s.http_timeout);
        let ctx = Arc::new(Context {
            pool: self.pool.clone(),
            recorder: Recorder::spawn(&self.pool, lease)?,
            gate: Arc::new(EndpointGate::new(
                breaker::Settings {
                    failures: s.breaker_failures,
                    cooldown: s.breaker_cooldown,
                },
                self.metrics.clone(),
            )),
            max_in_flight: s.webhook_max_in_flight,
            disable: disabling::Rule {
                after: s.disable_after,
                min_failed: s.disable_min_failed,
            },
            inline_slots: tokio::sync::Semaphore::new(stages::INLINE_ATTEMPTS),
            cache: cache.clone(),
            metrics: self.metrics.clone(),
            client: self.client.clone(),
            retry: RetryPolicy {
                initial_delay: s.retry_initial_delay,
                max_delay: s.retry_max_delay,
                max_attempts: s.retry_max_attempts,
            },
            lease,
            hard_stop: hard_stop.clone(),
            health: health.clone(),
            lines: Default::default(),
        });

        let background = TaskTracker::new();
        let metrics = self.metrics.clone();
        background.spawn(http::serve(
            self.listener,
            metrics.clone(),
            health.clone(),
            hard_stop.clone(),
        ));
        background.spawn(cache.listen(hard_stop.clone()));
        background.spawn(probe::run(
            self.pool.clone(),
            health.clone(),
            metrics.clone(),
            hard_stop.clone(),
        ));
        background.spawn(api::serve(
            self.api_listener,
            routes(api_state),
            stop.clone(),
        ));
        let mut connected = publisher.subscribe();
        let prefix = s.queue_prefix.clone();
        background.spawn(async move {
            // Started is true once events are consumed, not before.
            if connected.wait_for(Option::is_some).await.is_ok() {
                tracing::info!(metrics = %metrics_addr, api = %api_addr, queue_prefix = %prefix, "tagcast started");
            }
        });
        background.spawn(sweeper::run(
            self.pool.clone(),
            current,
            s.record_retention,
            metrics.clone(),
            hard_stop.clone(),
        ));

        let broker = Broker {
            nodes: s.amqp_url.clone(),
            topology: topology.clone(),
            event_concurrency: s.event_concurrency,
            delivery_concurrency: s.delivery_concurrency,
        };
        let work = TaskTracker::new();
        let (event_concurrency, delivery_concurrency) =
            (s.event_concurrency.into(), s.delivery_concurrency.into());
        let session = {
            let (work, stop) = (work.clone(), stop.clone());
            move |channels: Channels| {
                let events = consume(
                    Lane {
                        stage: Stage::Events,
                        channel: channels.events,
                        queue: topology.events_queue(),
                        concurrency: event_concurrency,
                    },
                    channels.publisher.clone(),
                    ctx.metrics.clone(),
                    work.clone(),
                    stop.clone(),
                    {
                        let ctx = ctx.clone();
                        move |publisher, message| {
                            stages::event::handle(ctx.clone(), publisher, message)
                        }
                    },
                );
                let deliveries = consume(
                    Lane {
                        stage: Stage::Deliveries,
                        channel: channels.deliveries,
                        queue: topology.deliveries_queue(),
                        concurrency: delivery_concurrency,
                    },
                    channels.publisher,
                    ctx.metrics.clone(),
                    work.clone(),
                    stop.clone(),
                    {
                        let ctx = ctx.clone();
                        move |publisher, message| {
                            stages::job::handle(ctx.clone(), publisher, message)
                        }
                    },
                );
                let depths = depths::watch(channels.depths, topology.clone(), ctx.metrics.clone());
                async move {
                    // Any of them ending means the connection is gone (or we are stopping).
                    tokio::select! {
                        () = events => {}
                        () = deliveries => {}
                        () = depths => {}
                    }
                }
            }
        };
        let mut broker = tokio::spawn(broker.supervise(
            health.broker.clone(),
            metrics,
            publisher,
            stop.clone(),
            STARTUP_GRACE,
            session,
        ));

        // The broker task ends by itself only when the broker refused tagcast from the start.
        let early = tokio::select! {
            () = shutdown => None,
            ended = &mut broker => Some(ended),
        };
        if early.is_none() {
            tracing::info!(grace = ?s.shutdown_grace, "shutting down: no new messages; finishing what is in flight");
        }
        stop.cancel();
        let ended = match early {
            Some(ended) => ended,
            None => broker.await,
        };
        let (connection, refused) = match ended.context("broker task")? {
            Ok(connection) => (connection, None),
            Err(Refused(problem)) => (None, Some(problem)),
        };
        work.close();
        if tokio::time::timeout(s.shutdown_grace, work.wait())
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
        store::close(&self.pool);
        if let Some(problem) = refused {
            return Err(Misconfigured {
                setting: "TAGCAST_AMQP_URL",
                problem,
            }
            .into());
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// What the address guard lets through: for deliveries, and for the URLs the API accepts.
fn address_policy(settings: &Settings) -> AddressPolicy {
    AddressPolicy {
        allow_private: settings.allow_private_targets,
        allow: settings.allow_targets.clone(),
    }
}

/// What the API address serves: the admin API, and the console over it.
fn routes(state: ApiState) -> axum::Router {
    crate::console::with_console(api::router(state))
}
