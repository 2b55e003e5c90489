//! The event stage: one `build.completed` event. Load the repository's webhooks, decide each
//! trigger, record every decision (group-committed with other events), make the first attempt
//! of each healthy webhook right here, hand the others to the delivery queue, and publish every
//! status; acknowledge only when all of it is durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures_util::future::join_all;
use tracing::Instrument as _;

use crate::amqp::{Job, Publisher};
use crate::app::{Context, Inbound, POISON_WARNING, Settle};
use crate::delivery::gate::Pass;
use crate::delivery::{Target, attempt, publish_status, settle_after};
use crate::events::{self, BuildEvent, Decoded};
use crate::metrics::{EventResult, Stage};
use crate::payload;
use crate::store::{self, Decision, DeliveryStatus, EventDecisions, Webhook, delivery_id};

/// Handles one message of the events queue.
pub async fn handle_event(ctx: Arc<Context>, publisher: Publisher, message: Inbound) -> Settle {
    let body = message.body;
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
    // An inline delivery is left to its event's next redelivery if this worker dies; an event
    // near the delivery limit may have none, so its deliveries go to jobs the sweeper watches.
    let inline = message.redeliveries < POISON_WARNING;
    fan_out(&ctx, &publisher, event, inline)
        .instrument(span)
        .await
}

async fn fan_out(ctx: &Context, publisher: &Publisher, event: BuildEvent, inline: bool) -> Settle {
    tracing::debug!("event received");
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

    // Decide, and take an inline pass for each webhook that fires and is healthy.
    let now = Instant::now();
    let mut passes: HashMap<i64, Pass> = HashMap::new();
    let decisions: Vec<Decision> = webhooks
        .iter()
        .map(|w| {
            let mut d = decide(ctx, w, &event);
            if d.status == DeliveryStatus::Pending
                && inline
                && let Some(pass) = ctx.gate.try_inline(w.id, now)
            {
                passes.insert(w.id, pass);
                d.claim_first_attempt = true;
            }
            d
        })
        .collect();
    let body: Arc<str> = payload::render(&event).into();
    let submitted = EventDecisions {
        event: Arc::new(event),
        body: body.clone(),
        decisions,
    };
    let recorded = store::with_retries(
        &ctx.hard_stop,
        |e| ctx.database_retry(e),
        || ctx.recorder.decisions(submitted.clone()),
    )
    .await;
    tracing::debug!("decisions recorded");
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
    let mut inline = Vec::new();
    for (record, fresh) in recorded {
        let published = match record.status {
            // Claimed with the insert: attempt it here, now.
            DeliveryStatus::Pending if fresh && passes.contains_key(&record.webhook_id) => {
                ctx.metrics.first_attempt(true);
                let pass = passes.remove(&record.webhook_id);
                inline.push((record, pass));
                continue;
            }
            // Handed off, or left unfinished by an earlier try: the next attempt is due (again).
            // A duplicate job is harmless: attempts are claimed in the database.
            DeliveryStatus::Pending | DeliveryStatus::Retrying => {
                if fresh {
                    ctx.metrics.first_attempt(false);
                }
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
                if fresh && record.status == DeliveryStatus::Failed {
                    ctx.metrics.completed(false);
                    tracing::warn!(delivery_id = %record.id, webhook_id = record.webhook_id, error = record.error.as_deref(), "webhook row cannot be used");
                }
                publish_status(publisher, &record).await
            }
        };
        match published {
            Ok(p) => pending.extend(p),
            Err(e) => return settle_after(ctx, Err(e)).await,
        }
    }

    // The inline first attempts, all at once; the webhooks' rows give URL and secret.
    let attempts = inline.into_iter().map(|(record, pass)| {
        let webhook = webhooks.iter().find(|w| w.id == record.webhook_id).cloned();
        let body = body.clone();
        async move {
            // Neither can fail today; if one ever did, the event comes again rather than being
            // acknowledged with its delivery claimed and unsent.
            let Some(webhook) = webhook else {
                return Err(Settle::Requeue);
            };
            // Bounds connections and buffers, hence memory, however many events are in flight.
            let Ok(_slot) = ctx.inline_slots.acquire().await else {
                return Err(Settle::Requeue);
            };
            let target = Target {
                url: &webhook.url,
                secret: webhook.secret.as_deref(),
                body: &body,
            };
            // Boxed: the attempt's state (the HTTP exchange above all) is allocated only once
            // it has a slot, not for every delivery of every event in flight.
            Box::pin(attempt(ctx, publisher, record, target, 1, pass)).await
        }
    });
    for result in join_all(attempts).await {
        match result {
            Ok(p) => pending.extend(p),
            Err(settle) => return settle,
        }
    }
    settle_after(ctx, Ok(pending)).await
}

fn decide(ctx: &Context, webhook: &Webhook, event: &BuildEvent) -> Decision {
    let (status, error) = match (&webhook.trigger, &webhook.secret_error) {
        (Err(e), _) => (DeliveryStatus::Failed, Some(e.to_string())),
        (Ok(_), Some(e)) => (DeliveryStatus::Failed, Some(e.to_string())),
        (Ok(trigger), None) => {
            let fired = trigger.fires(&event.tag);
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
        id: delivery_id(&event.event_id, webhook.id),
        webhook_id: webhook.id,
        status,
        error,
        claim_first_attempt: false,
    }
}
