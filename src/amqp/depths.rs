//! Queue depths, read every few seconds, so an alert can see events waiting with nobody
//! consuming them.

use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use super::Topology;
use crate::metrics::{Metrics, QueueLabel};

/// Reports until the channel fails, then returns.
pub async fn watch(channel: Channel, topology: Arc<Topology>, metrics: Metrics) {
    let queues = [
        (QueueLabel::Events, topology.events_queue()),
        (QueueLabel::EventsDead, topology.events_dead_queue()),
        (QueueLabel::Deliveries, topology.deliveries_queue()),
        (QueueLabel::DeliveriesDead, topology.deliveries_dead_queue()),
    ];
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        for (label, queue) in &queues {
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
