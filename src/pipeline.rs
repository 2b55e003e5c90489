//! The event stage: one `build.completed` event. Load the repository's webhooks, decide each
//! trigger, record every decision, hand the deliveries to the delivery queue and publish the
//! status of those that end here; acknowledge only when all of it is durable.

use std::sync::Arc;

use chrono::Utc;
use tracing::Instrument as _;

use crate::amqp::{Job, Publisher};
use crate::app::{Context, Settle};
use crate::delivery::{publish_status, settle_after};
use crate::events::{self, BuildEvent, Decoded};
use crate::metrics::{EventResult, Stage};
use crate::payload;
use crate::store::{self, Decision, DeliveryStatus, Webhook};

/// Handles one message of the events queue.
pub async fn handle_event(ctx: Arc<Context>, publisher: Publisher, body: Vec<u8>) -> Settle {
    let event = match events::decode(&body) {
        Ok(Decoded::Build(event)) => event,
        Ok(Decoded::Ignored { event_type }) => {
            ctx.metrics.event(EventResult::Ignored);
            tracing::info!(event_type = %event_type.escape_debug(), "event of another type ignored");
            return Settle::Ack;
        }
        Err(reason) => {
            ctx.metrics.event(EventResult::Invalid);
            ctx.metrics.dead_lettered(Stage::Events);
            tracing::warn!(%reason, bytes = body.len(), "invalid event dead-lettered");
            return Settle::DeadLetter;
        }
    };
    ctx.metrics.event(EventResult::Accepted);
    let span = tracing::info_span!("event", event_id = %event.event_id);
    fan_out(&ctx, &publisher, &event).instrument(span).await
}

async fn fan_out(ctx: &Context, publisher: &Publisher, event: &BuildEvent) -> Settle {
    let repo = &event.repository;
    let webhooks = store::with_retries(
        &ctx.hard_stop,
        |e| ctx.database_retry(e),
        || ctx.cache.get(&repo.namespace, &repo.name),
    )
    .await;
    let webhooks = match webhooks {
        Ok(w) => w,
        Err(store::StoreError::Cancelled) => return Settle::Abandon,
        Err(e) => {
            tracing::error!(error = %e, "cannot load webhooks");
            return Settle::Requeue;
        }
    };
    if webhooks.is_empty() {
        return Settle::Ack;
    }
    let decisions: Vec<Decision> = webhooks
        .iter()
        .map(|w| decide(ctx, w, &event.tag))
        .collect();
    let body = payload::render(event);
    let recorded = store::with_retries(
        &ctx.hard_stop,
        |e| ctx.database_retry(e),
        || store::deliveries::record_decisions(&ctx.pool, event, &body, &decisions),
    )
    .await;
    let recorded = match recorded {
        Ok(r) => r,
        Err(store::StoreError::Cancelled) => return Settle::Abandon,
        Err(e) => {
            tracing::error!(error = %e, "cannot record deliveries");
            return Settle::Requeue;
        }
    };

    let now_ms = Utc::now().timestamp_millis();
    let mut pending = Vec::with_capacity(recorded.len());
    for (record, fresh) in &recorded {
        let published = match record.status {
            // Fresh, or left unfinished by an earlier try: the next attempt is due (again).
            // A duplicate job is harmless: attempts are claimed in the database.
            DeliveryStatus::Pending | DeliveryStatus::Retrying => {
                let job = Job {
                    delivery_id: record.id,
                    attempt: record.attempts + 1,
                    not_before: record
                        .next_attempt_at
                        .map_or(now_ms, |at| at.timestamp_millis()),
                };
                publisher.job(&job, now_ms).await.map(|p| vec![p])
            }
            DeliveryStatus::NotTriggered | DeliveryStatus::Succeeded | DeliveryStatus::Failed => {
                if *fresh && record.status == DeliveryStatus::Failed {
                    ctx.metrics.completed(false);
                    tracing::warn!(delivery_id = %record.id, webhook_id = record.webhook_id, error = record.error.as_deref(), "webhook row cannot be used");
                }
                publish_status(publisher, record).await
            }
        };
        match published {
            Ok(p) => pending.extend(p),
            Err(e) => return settle_after(ctx, Err(e)).await,
        }
    }
    tracing::debug!(webhooks = recorded.len(), "event fanned out");
    settle_after(ctx, Ok(pending)).await
}

fn decide(ctx: &Context, webhook: &Webhook, tag: &str) -> Decision {
    let (status, error) = match (&webhook.trigger, &webhook.secret_error) {
        (Err(e), _) => (DeliveryStatus::Failed, Some(e.to_string())),
        (Ok(_), Some(e)) => (DeliveryStatus::Failed, Some(e.to_string())),
        (Ok(trigger), None) => {
            let fired = trigger.fires(tag);
            ctx.metrics.trigger_evaluated(trigger.kind(), fired);
            (
                if fired {
                    DeliveryStatus::Pending
                } else {
                    DeliveryStatus::NotTriggered
                },
                None,
            )
        }
    };
    Decision {
        webhook_id: webhook.id,
        status,
        error,
    }
}
