//! The two stages and what they share. The event stage ([`event`]) decides and records every
//! webhook of an event and makes healthy first attempts itself; the job stage ([`job`]) makes
//! one attempt of a delivery from the delivery queue. Both attempt through [`attempt`], which
//! hands a webhook that is gone or keeps failing to [`disable`].

pub mod attempt;
pub mod disable;
pub mod event;
pub mod job;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::client::WebhookClient;
use crate::consumer::StageError;
use crate::disabling;
use crate::gate::EndpointGate;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use crate::sampled::OutcomeLines;
use crate::store::{self, Pool, Recorder, StoreError, WebhookCache};

/// What every handler needs. Shared by reference count.
pub struct Context {
    pub pool: Pool,
    pub recorder: Recorder,
    pub gate: std::sync::Arc<EndpointGate>,
    /// The cap on attempts in flight of a webhook without one of its own.
    pub max_in_flight: u32,
    /// When a failing webhook is disabled.
    pub disable: disabling::Rule,
    /// Inline first attempts in flight at once, across all webhooks.
    pub inline_slots: tokio::sync::Semaphore,
    pub cache: WebhookCache,
    pub metrics: Metrics,
    pub client: WebhookClient,
    pub retry: RetryPolicy,
    /// How long a claimed attempt stays claimed (see [`store::Lease`]).
    pub lease: store::Lease,
    /// Fires when the grace period is over: work still waiting for the database gives up and
    /// leaves its message unacknowledged.
    pub hard_stop: CancellationToken,
    pub health: Health,
    /// The outcome lines of deliveries, rate-limited.
    pub lines: OutcomeLines,
}

impl Context {
    /// Runs a database operation, waiting out an outage (see [`store::with_retries`]): the
    /// message stays unacknowledged meanwhile, and `/readyz` says the database is down.
    pub async fn db<T, F, Fut>(&self, op: F) -> Result<T, StageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let on_retry = |e: &StoreError| {
            self.metrics.database_retries.inc();
            self.health.database.down(e);
        };
        Ok(store::with_retries(&self.hard_stop, on_retry, op).await?)
    }
}

/// Inline first attempts in flight at once: enough to keep a few cores busy on fast receivers,
/// few enough that connections and buffers stay within tens of MiB.
pub const INLINE_ATTEMPTS: usize = 256;

/// Longer than any attempt can take: see [`store::Lease`].
pub fn lease(connect_timeout: Duration, timeout: Duration) -> store::Lease {
    store::Lease::covering(connect_timeout + timeout)
}
