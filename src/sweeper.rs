//! The safety net under the broker: PostgreSQL is the record of what is unfinished. Every few
//! seconds one replica looks for deliveries that should have moved and have not (their job was
//! lost: a broker crash while it waited in a delay queue, say) and queues a job for each again.
//! Attempts are claimed in the database, so a job that was not lost after all sends nothing twice.
//! It also announces disabled webhooks whose `webhook.disabled` event was lost, drops the
//! rotated-out webhook secrets whose grace is over, and keeps the daily partitions of the access
//! records: made ahead, dropped past the retention.

use std::time::{Duration, Instant};

use chrono::Utc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::amqp::{AmqpError, Publisher};
use crate::metrics::Metrics;
use crate::stages::disable::publish_disabled;
use crate::store::{self, Pool, StoreError};

/// How often to look.
const EVERY: Duration = Duration::from_secs(15);
/// A delivery that is due (or was last touched) longer ago than this, and is not claimed, has
/// lost its job.
const OVERDUE: Duration = Duration::from_secs(60);
/// Deliveries re-queued per sweep at most.
const BATCH: i64 = 1000;
/// How often the partitions are looked after: days ahead exist, so hours late is harmless.
const PARTITIONS_EVERY: Duration = Duration::from_secs(600);

/// Sweeps until cancelled. `publisher` holds the current broker publisher while connected.
pub async fn run(
    pool: Pool,
    publisher: watch::Receiver<Option<Publisher>>,
    retention: Duration,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut partitioned: Option<Instant> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if partitioned.is_none_or(|at| at.elapsed() >= PARTITIONS_EVERY) {
            match store::partitions::maintain(&pool, Utc::now(), Some(retention)).await {
                Ok(done) => {
                    partitioned = Some(Instant::now());
                    if !done.created.is_empty() || !done.dropped.is_empty() || done.deleted > 0 {
                        tracing::info!(created = ?done.created, dropped = ?done.dropped, deleted = done.deleted,
                                       "access record partitions looked after");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look after the access record partitions; trying again later")
                }
            }
        }
        let Some(publisher) = publisher.borrow().clone() else {
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
        match announce_disabled(&pool, &publisher).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                webhooks = n,
                "announced disabled webhooks whose announcement was lost"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot announce disabled webhooks; trying again later")
            }
        }
        // Rotated-out secrets stop signing when their grace ends (both stages check); here
        // they leave the database too.
        if let Err(e) = store::admin::drop_expired_secrets(&pool).await {
            tracing::warn!(error = %e, "cannot drop expired webhook secrets; trying again later");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

/// Publishes `webhook.disabled` for each disabling that was not confirmed a minute after it.
async fn announce_disabled(pool: &Pool, publisher: &Publisher) -> Result<usize, SweepError> {
    store::announce_unannounced(pool, OVERDUE, BATCH, |missing| async move {
        for disabled in &missing {
            publish_disabled(publisher, disabled).await?;
        }
        Ok::<_, SweepError>(())
    })
    .await
}

/// One sweep: publishes a job for each overdue delivery, and lets the store commit only once the
/// broker confirmed them all.
async fn sweep(pool: &Pool, publisher: &Publisher) -> Result<usize, SweepError> {
    store::deliveries::requeue_overdue(pool, OVERDUE, BATCH, |overdue| async move {
        let next = overdue.into_iter().map(|(id, attempts)| (id, attempts + 1));
        publisher.jobs_now(next).await.map_err(SweepError::from)
    })
    .await
}
