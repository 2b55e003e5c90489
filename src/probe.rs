//! Keeps `/readyz` and the `up` gauges honest about PostgreSQL: one `SELECT 1` a second.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::{self, Pool};

/// Probes until cancelled.
pub async fn run(pool: Pool, health: Health, metrics: Metrics, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match tokio::time::timeout(Duration::from_secs(2), store::ping(&pool)).await {
            Ok(Ok(())) => health.database.up(),
            Ok(Err(e)) => health.database.down(&e),
            Err(_) => health.database.down(&"no answer within 2 s"),
        }
        metrics.set_up(health.broker.is_up(), health.database.is_up());
    }
}
