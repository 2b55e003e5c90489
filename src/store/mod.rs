//! All SQL: the migrations, webhook configuration with its live cache, and access records.

mod batch;
pub mod deliveries;
mod webhooks;

use std::time::Duration;

pub use batch::Batcher;
pub use deliveries::{
    Claim, ClaimedDelivery, Decision, DeliveryRecord, DeliveryStatus, EventDecisions, NewAttempt,
    delivery_id,
};
pub use webhooks::{Webhook, WebhookCache};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::config::SecretUrl;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./sql");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stopped while waiting for the database")]
    Cancelled,
    /// A batch this item was written with failed.
    #[error("database: {text}")]
    Batch { transient: bool, text: String },
}

impl StoreError {
    /// Errors that go away when the database comes back: the operation is worth repeating.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlx(e) => is_transient(e),
            StoreError::Batch { transient, .. } => *transient,
            StoreError::Migrate(_) | StoreError::Cancelled => false,
        }
    }
}

/// Transient unless the error is about the statement or the data itself: while the database is
/// down, restarting, refusing connections or short of resources, work must wait, not fail (a
/// valid event is never dead-lettered because PostgreSQL was unavailable).
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_none_or(|code| {
            // 21: cardinality (a row affected twice by one statement), 22: data exception,
            // 23: integrity constraint, 42: syntax or access rule, P0: raised by PL/pgSQL.
            // Everything else (08 connection, 28 authorization, 3D no such database,
            // 40 rollback, 53 resources, 55 not accepting connections, 57 operator
            // intervention, 58 system, XX internal) can clear up by itself.
            !["21", "22", "23", "42", "P0"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// The batched writers of access records. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    decisions: Batcher<EventDecisions, Vec<(DeliveryRecord, bool)>>,
    attempts: Batcher<(uuid::Uuid, NewAttempt), bool>,
}

/// Rows per statement at most: large enough to amortise a round trip, small enough to keep
/// one statement short.
const MAX_BATCH: usize = 512;

impl Recorder {
    /// Starts the writers. `lease` is how long a first attempt claimed with its insert stays
    /// claimed.
    pub fn spawn(pool: PgPool, lease: Duration) -> Recorder {
        let p = pool.clone();
        let decisions = Batcher::spawn(MAX_BATCH, move |batch| {
            let pool = p.clone();
            async move { deliveries::record_decisions(&pool, lease, batch).await }
        });
        let attempts = Batcher::spawn(MAX_BATCH, move |batch| {
            let pool = pool.clone();
            async move { deliveries::record_attempts(&pool, batch).await }
        });
        Recorder {
            decisions,
            attempts,
        }
    }

    /// See [`deliveries::record_decisions`].
    pub async fn decisions(
        &self,
        event: EventDecisions,
    ) -> Result<Vec<(DeliveryRecord, bool)>, StoreError> {
        self.decisions.submit(event).await
    }

    /// See [`deliveries::record_attempts`].
    pub async fn attempt(&self, id: uuid::Uuid, attempt: NewAttempt) -> Result<bool, StoreError> {
        self.attempts.submit((id, attempt)).await
    }
}

/// Opens the pool. Connections are made lazily, so tagcast starts (and reports not ready) even
/// while PostgreSQL is still coming up.
pub fn connect(url: &SecretUrl, max_connections: u32) -> Result<PgPool, StoreError> {
    let options = url.expose().parse::<sqlx::postgres::PgConnectOptions>()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Applies pending migrations from `sql/`. sqlx holds an advisory lock meanwhile, so replicas
/// starting together apply them once.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Longest a database operation may take before it is tried again.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(45);

/// Runs `op` until it succeeds, repeating it with backoff while the error is transient: during a
/// database outage the work waits here, unacknowledged, instead of cycling through the broker.
/// Gives up with `Cancelled` on shutdown.
pub async fn with_retries<T, F, Fut>(
    cancel: &CancellationToken,
    on_retry: impl Fn(&StoreError),
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        // A connection can die without a word: past this, the operation counts as failed.
        let outcome = tokio::time::timeout(OPERATION_TIMEOUT, op())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Batch {
                    transient: true,
                    text: format!("no answer within {OPERATION_TIMEOUT:?}"),
                })
            });
        match outcome {
            Err(e) if e.is_transient() => {
                on_retry(&e);
                tokio::select! {
                    () = cancel.cancelled() => return Err(StoreError::Cancelled),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}
