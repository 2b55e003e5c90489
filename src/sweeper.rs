//! The safety net under the broker: PostgreSQL is the record of what is unfinished. Every few
//! seconds one replica looks for deliveries that should have moved and have not (their job was
//! lost: a broker crash while it waited in a delay queue, say) and queues a job for each again.
//! Attempts are claimed in the database, so a job that was not lost after all sends nothing twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::amqp::{Job, Publisher, confirmed};
use crate::metrics::Metrics;

/// How often to look.
const EVERY: Duration = Duration::from_secs(15);
/// A delivery that is due (or was last touched) longer ago than this, and is not claimed, has
/// lost its job.
const OVERDUE: Duration = Duration::from_secs(60);
/// Deliveries re-queued per sweep at most.
const BATCH: i64 = 1000;

/// Sweeps until cancelled. `publisher` yields the current broker publisher, if connected.
pub async fn run(
    pool: PgPool,
    publisher: Arc<std::sync::Mutex<Option<Publisher>>>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(publisher) = publisher.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            continue;
        };
        match sweep(&pool, &publisher).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.swept.inc_by(n as u64);
                tracing::warn!(deliveries = n, "re-queued deliveries whose job was lost");
            }
            Err(e) => tracing::warn!(error = %e, "sweep failed; trying again later"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SweepError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Amqp(#[from] crate::amqp::AmqpError),
}

/// One sweep: claims overdue deliveries by touching them (so no other replica takes them for
/// another `OVERDUE`), publishes a job for each, and commits only once the broker confirmed.
async fn sweep(pool: &PgPool, publisher: &Publisher) -> Result<usize, SweepError> {
    let mut tx = pool.begin().await?;
    let overdue: Vec<(Uuid, i32)> = sqlx::query_as(
        "UPDATE deliveries SET updated_at = now()
          WHERE id IN (
                SELECT id FROM deliveries
                 WHERE watched AND status IN ('pending', 'retrying')
                   -- The index `deliveries_due`: the scan ends at the first delivery not yet due.
                   AND coalesce(next_attempt_at, created_at) < now() - make_interval(secs => $1)
                   AND updated_at < now() - make_interval(secs => $1)
                   AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY coalesce(next_attempt_at, created_at)
                 LIMIT $2
                   FOR UPDATE SKIP LOCKED)
          RETURNING id, attempts",
    )
    .bind(OVERDUE.as_secs_f64())
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if overdue.is_empty() {
        return Ok(0);
    }
    let now_ms = Utc::now().timestamp_millis();
    let mut pending = Vec::with_capacity(overdue.len());
    for (delivery_id, attempts) in &overdue {
        pending.push(
            publisher
                .job(
                    &Job {
                        delivery_id: *delivery_id,
                        attempt: attempts + 1,
                        not_before: now_ms,
                    },
                    now_ms,
                )
                .await?,
        );
    }
    confirmed(pending).await?;
    tx.commit().await?;
    Ok(overdue.len())
}
