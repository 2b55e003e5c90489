//! All SQL: the pool and its migrations, webhook configuration with its live cache, and access
//! records with their batched writers. PostgreSQL through `tokio-postgres`, pooled by
//! `deadpool-postgres`; outages are waited out with `backon`.

pub mod admin;
mod batch;
pub mod deliveries;
mod migrate;
pub mod partitions;
pub mod tokens;
mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use batch::Batcher;
pub use deliveries::{
    AttemptRecorded, Claim, ClaimedDelivery, Decision, EventDecisions, NewAttempt, Recorded,
};
pub use migrate::migrate;
pub use webhooks::{
    Disabled, Limits, Rule, SECRET_COLUMNS, Secrets, Unusable, Webhook, WebhookCache,
    announce_unannounced, announced, disable,
};

use crate::backoff::Waits;
use crate::redact::SecretUrl;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database settings: {0}")]
    Config(#[from] deadpool_postgres::BuildError),
    #[error("migration {version} was changed after it was applied")]
    MigrationChanged { version: i64 },
    #[error("column {column} holds {value:?}, which tagcast does not know")]
    Data { column: &'static str, value: String },
    #[error("no answer from the database within {0:?}")]
    Timeout(Duration),
    #[error("stopped while waiting for the database")]
    Cancelled,
    /// The batch this item was written with failed: the same error for every item in it.
    #[error(transparent)]
    Batch(Arc<StoreError>),
    #[error("batch write returned {got} results for {expected} items")]
    BatchLength { got: usize, expected: usize },
    #[error("batch writer stopped")]
    WriterStopped,
}

impl StoreError {
    /// Errors that go away when the database comes back: the operation is worth repeating.
    /// While the database is down, restarting, refusing connections or short of resources, work
    /// must wait, not fail (a valid event is never dead-lettered because PostgreSQL was away).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Postgres(e) => is_transient(e),
            StoreError::Pool(deadpool_postgres::PoolError::Backend(e)) => is_transient(e),
            StoreError::Pool(_) | StoreError::Timeout(_) | StoreError::WriterStopped => true,
            StoreError::Batch(e) => e.is_transient(),
            StoreError::Config(_)
            | StoreError::MigrationChanged { .. }
            | StoreError::Data { .. }
            | StoreError::Cancelled
            | StoreError::BatchLength { .. } => false,
        }
    }
}

impl StoreError {
    /// The server's own error, if it answered with one.
    fn db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            StoreError::Postgres(e)
            | StoreError::Pool(deadpool_postgres::PoolError::Backend(e)) => e.as_db_error(),
            StoreError::Batch(e) => e.db_error(),
            _ => None,
        }
    }

    /// The constraint a statement broke (a duplicate name, say), when that is the error.
    pub fn violated_constraint(&self) -> Option<&str> {
        let db = self.db_error()?;
        db.code()
            .code()
            .starts_with("23")
            .then(|| db.constraint())
            .flatten()
    }

    /// What is wrong with `TAGCAST_DATABASE_URL`, when PostgreSQL refused it for a reason
    /// waiting does not cure: no such database, a wrong password, a role it does not know or a
    /// connection its `pg_hba.conf` refuses.
    pub fn misconfiguration(&self) -> Option<String> {
        let db = self.db_error()?;
        let advice = match db.code().code() {
            "3D000" => "PostgreSQL has no such database: create it, or fix the name",
            "28P01" => "PostgreSQL refused the password",
            "28000" => "PostgreSQL refused the login: check the user, and pg_hba.conf",
            _ => return None,
        };
        Some(format!("{advice} ({})", db.message()))
    }
}

/// The server's message and SQLSTATE when there is one (`db error` alone tells nobody
/// anything), else the error and its causes.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        e => e.to_string(),
    }
}

/// SQLSTATE classes that are about the statement or the data itself, which no amount of
/// waiting fixes: 21 cardinality (a row affected twice by one statement), 22 data exception,
/// 23 integrity constraint, 42 syntax or access rule, P0 raised by PL/pgSQL. Everything else
/// (08 connection, 28 authorization, 3D no such database, 40 rollback, 53 resources,
/// 55 not accepting connections, 57 operator intervention, 58 system, XX internal) can clear up
/// by itself.
const PERMANENT_CLASSES: [&str; 5] = ["21", "22", "23", "42", "P0"];

/// Whether an error with this SQLSTATE can clear up by itself.
fn transient_sqlstate(code: &str) -> bool {
    !PERMANENT_CLASSES
        .iter()
        .any(|class| code.starts_with(class))
}

fn is_transient(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return transient_sqlstate(code.code());
    }
    // No SQLSTATE: either the connection failed (closed, or an I/O error underneath), which
    // clears up, or tagcast's own side did (a value that does not convert), which does not.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    e.is_closed()
}

/// The connection pool, with the settings to open a connection of its own (for `LISTEN`).
/// Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    pool: deadpool_postgres::Pool,
    config: Arc<tokio_postgres::Config>,
}

/// A pooled connection.
pub type Client = deadpool_postgres::Object;

impl Pool {
    /// A connection from the pool (waiting at most 5 s for one to be free).
    pub async fn get(&self) -> Result<Client, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// A pool of its own on the same database, of at most `max_connections`.
    pub fn sibling(&self, max_connections: usize) -> Result<Pool, StoreError> {
        build(&self.config, max_connections)
    }
}

/// Opens the pool. Connections are made lazily, so tagcast starts (and reports not ready) even
/// while PostgreSQL is still coming up.
pub fn connect(url: &SecretUrl, max_connections: usize) -> Result<Pool, StoreError> {
    build(&url.expose().parse()?, max_connections)
}

fn build(config: &tokio_postgres::Config, max_connections: usize) -> Result<Pool, StoreError> {
    // JIT compiling pays off for long analytic queries, and tagcast runs none: it only ever
    // started on a filtered record page over many partitions (whose estimate passes
    // `jit_above_cost`), where compiling took 90 ms of a 135 ms page at 30 million records.
    // Set first, so that options given in the URL win.
    let mut session = config.clone();
    let options = match config.get_options() {
        Some(given) => format!("-c jit=off {given}"),
        None => "-c jit=off".to_owned(),
    };
    session.options(&options);
    let manager = Manager::from_config(
        session,
        NoTls,
        // Fast: a connection that broke is found out by its next statement, which fails as
        // transient and is repeated on a fresh one; checking each one out would cost a round
        // trip per statement.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(max_connections)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()?;
    Ok(Pool {
        pool,
        config: Arc::new(config.clone()),
    })
}

/// Closes the pool: connections are dropped as they come back.
pub fn close(pool: &Pool) {
    pool.pool.close();
}

/// One round trip, for the readiness probe.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    pool.get().await?.simple_query("SELECT 1").await?;
    Ok(())
}

/// Why tagcast could not start on the database.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Refused for a reason waiting does not cure, for longer than the grace.
    #[error("{0}")]
    Refused(String),
    #[error("applying migrations: {0}")]
    Migrations(#[from] StoreError),
}

/// Waits for PostgreSQL, then applies pending migrations. A refusal that waiting does not cure
/// (see [`StoreError::misconfiguration`]) ends the wait once it has lasted `grace`. One line
/// when the wait begins, one when it ends.
pub async fn migrate_when_reachable(pool: &Pool, grace: Duration) -> Result<(), StartError> {
    let started = Instant::now();
    let mut waits = Waits::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut waited = false;
    loop {
        match ping(pool).await {
            Ok(()) => break,
            Err(e) => {
                let misconfigured = e.misconfiguration();
                if let Some(problem) = misconfigured
                    && started.elapsed() >= grace
                {
                    return Err(StartError::Refused(problem));
                }
                if !waited {
                    waited = true;
                    tracing::warn!(error = %e, "waiting for PostgreSQL");
                }
                tokio::time::sleep(waits.next_delay()).await;
            }
        }
    }
    if waited {
        tracing::info!(after = ?started.elapsed(), "PostgreSQL reachable");
    }
    Ok(migrate(pool).await?)
}

/// How long a claimed attempt stays claimed. While it runs no other worker may make that
/// attempt; if its worker dies, the attempt is free again once it ends. So it must outlast the
/// longest attempt (connect timeout plus request timeout) and the recording of its outcome, or a
/// slow attempt could be made twice; anything longer only delays recovery after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease(Duration);

/// Recording an attempt is one batched statement, normally milliseconds: 10 s leaves room for a
/// slow commit without making recovery after a crash much later.
const RECORDING_MARGIN: Duration = Duration::from_secs(10);

impl Lease {
    /// The lease for attempts that take at most `attempt`.
    pub fn covering(attempt: Duration) -> Lease {
        Lease(attempt + RECORDING_MARGIN)
    }

    fn seconds(self) -> f64 {
        self.0.as_secs_f64()
    }
}

/// The event times a delivery's rows can have, for a lookup by id, so that only the partition of
/// that day is read (contract section 15): the millisecond its id carries, or all time for an id
/// made before ids carried the time.
pub(crate) fn span(id: Uuid) -> (DateTime<Utc>, DateTime<Utc>) {
    match crate::model::delivery_time(id) {
        Some(at) => (at, at + chrono::Duration::milliseconds(1)),
        // Beyond any time an event can carry (RFC 3339 has four-digit years), within PostgreSQL's.
        None => (
            DateTime::from_timestamp(-200_000_000_000, 0).unwrap_or_default(),
            DateTime::from_timestamp(600_000_000_000, 0).unwrap_or_default(),
        ),
    }
}

/// A duration as the `duration_ms` columns hold it.
pub fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

/// The batched writers of access records. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    decisions: Batcher<EventDecisions, Vec<Recorded>>,
    attempts: Batcher<(Uuid, NewAttempt), AttemptRecorded>,
}

/// Rows per statement at most: large enough to amortise a round trip, small enough to keep
/// one statement short.
const MAX_BATCH: usize = 512;

impl Recorder {
    /// Starts the writers, each on a connection of its own. `lease` is how long a first
    /// attempt claimed with its insert stays claimed.
    ///
    /// Connections of their own, because a connection keeps the buffers its largest statement
    /// needed, and a batch of 512 decisions carries every notification body: taken from the
    /// shared pool, the batches would leave such buffers on many of its connections.
    pub fn spawn(pool: &Pool, lease: Lease) -> Result<Recorder, StoreError> {
        let (decisions_pool, attempts_pool) = (pool.sibling(1)?, pool.sibling(1)?);
        let decisions = Batcher::spawn(MAX_BATCH, move |batch| {
            let pool = decisions_pool.clone();
            async move { deliveries::record_decisions(&pool, lease, batch).await }
        });
        let attempts = Batcher::spawn(MAX_BATCH, move |batch| {
            let pool = attempts_pool.clone();
            async move { deliveries::record_attempts(&pool, batch).await }
        });
        Ok(Recorder {
            decisions,
            attempts,
        })
    }

    /// See [`deliveries::record_decisions`].
    pub async fn decisions(&self, event: EventDecisions) -> Result<Vec<Recorded>, StoreError> {
        self.decisions.submit(event).await
    }

    /// See [`deliveries::record_attempts`].
    pub async fn attempt(
        &self,
        id: Uuid,
        attempt: NewAttempt,
    ) -> Result<AttemptRecorded, StoreError> {
        self.attempts.submit((id, attempt)).await
    }
}

/// Longest a database operation may take before it is tried again.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(45);

/// Runs `op` until it succeeds, repeating it with backoff (50 ms doubling to 2 s, see [`Waits`]) while the
/// error is transient: during a database outage the work waits here, unacknowledged, instead
/// of cycling through the broker. Gives up with `Cancelled` on shutdown.
pub async fn with_retries<T, F, Fut>(
    cancel: &CancellationToken,
    on_retry: impl Fn(&StoreError),
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut waits = Waits::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        // A connection can die without a word: past this, the operation counts as failed.
        // Boxed: a database operation's future (pool checkout, statement, rows) is several KiB,
        // and unboxed it would make every stage's future, one per message in flight, that large.
        let outcome = tokio::time::timeout(OPERATION_TIMEOUT, Box::pin(op()))
            .await
            .unwrap_or(Err(StoreError::Timeout(OPERATION_TIMEOUT)));
        match outcome {
            Err(e) if e.is_transient() => {
                on_retry(&e);
                tokio::select! {
                    () = cancel.cancelled() => return Err(StoreError::Cancelled),
                    () = tokio::time::sleep(waits.next_delay()) => {}
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_cures_outages_but_not_bad_statements() {
        let cases = [
            (StoreError::Timeout(Duration::from_secs(1)), true),
            (StoreError::WriterStopped, true),
            (StoreError::Cancelled, false),
            (StoreError::MigrationChanged { version: 1 }, false),
            (
                StoreError::BatchLength {
                    got: 1,
                    expected: 2,
                },
                false,
            ),
            (
                StoreError::Data {
                    column: "status",
                    value: "done".into(),
                },
                false,
            ),
            (
                StoreError::Batch(Arc::new(StoreError::Timeout(Duration::from_secs(1)))),
                true,
            ),
            (StoreError::Batch(Arc::new(StoreError::Cancelled)), false),
        ];
        for (error, transient) in cases {
            assert_eq!(error.is_transient(), transient, "{error:?}");
        }
    }

    #[test]
    fn sqlstates_of_outages_are_transient_and_of_statements_are_not() {
        let cases = [
            ("08006", true),  // connection failure
            ("57P01", true),  // admin shutdown (a restart)
            ("57P03", true),  // cannot connect now (starting up)
            ("53300", true),  // too many connections
            ("40001", true),  // serialization failure
            ("3D000", true),  // no such database (yet)
            ("28P01", true),  // password authentication failed
            ("XX000", true),  // internal error
            ("21000", false), // cardinality: a row affected twice
            ("22P02", false), // invalid text representation
            ("23505", false), // unique violation
            ("42P01", false), // undefined table
            ("P0001", false), // raised by PL/pgSQL
        ];
        for (code, transient) in cases {
            assert_eq!(transient_sqlstate(code), transient, "{code}");
        }
    }

    #[test]
    fn a_lease_outlasts_the_attempt_it_covers() {
        let attempt = Duration::from_secs(15);
        let lease = Lease::covering(attempt);
        assert!(lease.0 > attempt);
        assert_eq!(lease.seconds(), 25.0);
    }
}
