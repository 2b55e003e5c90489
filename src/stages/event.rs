//! The event stage: one `build.completed` event. Load the repository's webhooks, decide each
//! trigger, record every decision (group-committed with other events), make the first attempt
//! of each healthy webhook right here, hand the others to the delivery queue, and publish every
//! status. The consumer acknowledges once all of it is durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;
use tracing::Instrument as _;

use super::Context;
use super::attempt::{Target, attempt, publish_status};
use crate::amqp::{Job, Publisher};
use crate::consumer::{Done, Handled, Inbound, POISON_WARNING, StageError};
use crate::events::{self, BuildEvent, Decoded};
use crate::gate::Pass;
use crate::metrics::{Completed, Deferred, EventResult, FirstAttempt};
use crate::model::{DeliveryRecord, DeliveryStatus, delivery_id};
use crate::payload;
use crate::store::{self, Decision, EventDecisions, Recorded, Rule, Webhook};

/// Handles one message of the events queue.
pub async fn handle(ctx: Arc<Context>, publisher: Publisher, message: Inbound) -> Handled {
    let event = match events::decode(&message.body) {
        Ok(Decoded::Build(event)) => event,
        Ok(Decoded::Ignored { event_type }) => {
            ctx.metrics.event(EventResult::Ignored);
            tracing::info!(event_type = %event_type.escape_debug(), "event of another type ignored");
            return Handled::unnamed(Ok(Done::default()));
        }
        Err(reason) => {
            ctx.metrics.event(EventResult::Invalid);
            let span = match events::event_id_of(&message.body) {
                Some(event_id) => tracing::info_span!("event", event_id),
                None => tracing::Span::none(),
            };
            return Handled {
                span,
                outcome: Err(reason.into()),
            };
        }
    };
    ctx.metrics.event(EventResult::Accepted);
    let span = tracing::info_span!("event", event_id = %event.event_id);
    // An inline delivery is left to its event's next redelivery if this worker dies; an event
    // near the delivery limit may have none, so its deliveries go to jobs the sweeper watches.
    let inline = message.redeliveries < POISON_WARNING;
    let outcome = fan_out(&ctx, &publisher, event, inline)
        .instrument(span.clone())
        .await;
    Handled { span, outcome }
}

/// What the event stage does with one recorded delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Claimed with its insert: attempt it here, now.
    AttemptInline,
    /// Handed off, or left unfinished by an earlier copy of the event: its next attempt is due
    /// (again). A duplicate job is harmless: attempts are claimed in the database.
    QueueJob,
    /// Final already: (re)publish its status event.
    PublishStatus,
}

/// `created`: this copy of the event inserted the row; `passed`: it holds an inline pass for
/// the webhook.
fn plan(status: DeliveryStatus, created: bool, passed: bool) -> Plan {
    match status {
        DeliveryStatus::Pending if created && passed => Plan::AttemptInline,
        DeliveryStatus::Pending | DeliveryStatus::Retrying => Plan::QueueJob,
        DeliveryStatus::NotTriggered | DeliveryStatus::Succeeded | DeliveryStatus::Failed => {
            Plan::PublishStatus
        }
    }
}

async fn fan_out(
    ctx: &Context,
    publisher: &Publisher,
    event: BuildEvent,
    inline: bool,
) -> Result<Done, StageError> {
    let repo = &event.repository;
    let webhooks = ctx
        .db(|| ctx.cache.get(&repo.namespace, &repo.name))
        .await?;
    if webhooks.is_empty() {
        return Ok(Done::default());
    }

    // Decide, and take an inline pass for each webhook that fires and is healthy.
    let now = Instant::now();
    let mut passes: HashMap<i64, Pass> = HashMap::new();
    let decisions: Vec<Decision> = webhooks
        .iter()
        .map(|w| {
            let mut d = decide(ctx, w, &event);
            if d.status != DeliveryStatus::Pending {
                return d;
            }
            if let Some(until) = ctx.gate.hold_until(w.id) {
                // Its breaker is open: the first attempt waits, recorded as due then.
                let wait = until.saturating_duration_since(now);
                d.hold_until =
                    Some(Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default());
            } else if inline && let Some(pass) = ctx.gate.try_inline(w.id, now) {
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
    let recorded = ctx.db(|| ctx.recorder.decisions(submitted.clone())).await?;

    let now = Utc::now();
    let mut done = Done::default();
    let mut inline = Vec::new();
    for Recorded { record, created } in recorded {
        let pass = passes.remove(&record.webhook_id);
        // Every record comes from one of these webhooks; were one not found, its claimed
        // delivery would go to a job, attempted once the claim's lease ran out.
        let webhook = webhooks.iter().find(|w| w.id == record.webhook_id);
        match (plan(record.status, created, pass.is_some()), webhook, pass) {
            (Plan::AttemptInline, Some(webhook), Some(pass)) => {
                inline.push((record, pass, webhook.clone()));
            }
            (Plan::AttemptInline | Plan::QueueJob, _, _) => {
                if created {
                    ctx.metrics.first_attempt(FirstAttempt::Queued);
                }
                let job = Job {
                    delivery_id: record.id,
                    attempt: record.attempts + 1,
                    not_before: record.next_attempt_at.unwrap_or(now),
                    webhook_id: Some(record.webhook_id),
                };
                // Not due yet (its breaker is open, or it is a retry): one hop that covers the
                // wait if it can, rather than the exact hops of a retry's first wait.
                let wait = (job.not_before - now).to_std().unwrap_or_default();
                done.push(if wait.is_zero() {
                    publisher.job(&job, now).await?
                } else {
                    publisher.job_in(&job, wait).await?
                });
            }
            (Plan::PublishStatus, _, _) => {
                if created && record.status == DeliveryStatus::Failed {
                    ctx.metrics.completed(Completed::Failed);
                    tracing::warn!(delivery_id = %record.id, webhook_id = record.webhook_id, error = record.error.as_deref(), "webhook row cannot be used");
                }
                done.extend(publish_status(publisher, &record).await?);
            }
        }
    }

    // The inline first attempts, all at once; the webhooks' rows give URL and secret.
    // Each of these futures stays small until it has its slot (one per inline delivery of
    // every event in flight): what it awaits before then is the slot alone.
    let attempts = inline.into_iter().map(|(record, mut pass, webhook)| {
        let body = body.clone();
        async move {
            // Bounds connections and buffers, hence memory, however many events are in flight.
            // The semaphore is never closed, so acquiring cannot fail.
            let slot = ctx.inline_slots.acquire().await;
            let cap = webhook.max_in_flight.unwrap_or(ctx.max_in_flight);
            if !pass.arm(cap, INLINE_WAIT).await {
                drop((slot, pass));
                return hand_off(ctx, publisher, &record).await;
            }
            ctx.metrics.first_attempt(FirstAttempt::Inline);
            let secrets = webhook.secrets.signing(chrono::Utc::now());
            let target = Target {
                url: &webhook.url,
                secret: secrets.as_deref(),
                body: &body,
            };
            // Boxed: the attempt's state (the HTTP exchange above all) is allocated only once
            // it has a slot, not for every delivery of every event in flight.
            let done = Box::pin(attempt(ctx, publisher, record, target, 1, pass)).await;
            drop(slot);
            done
        }
    });
    for result in join_all(attempts).await {
        done.extend(result?);
    }
    Ok(done)
}

/// How long an inline first attempt waits for a place under its webhook's cap before it goes
/// to the delivery queue: long enough for an endpoint that answers in milliseconds to take a
/// burst of events, short enough that a busy one holds its events up only briefly.
const INLINE_WAIT: Duration = Duration::from_millis(100);

/// Hands a delivery claimed for an inline attempt to the delivery queue instead: its claim is
/// released first, so the job finds it free.
async fn hand_off(
    ctx: &Context,
    publisher: &Publisher,
    record: &DeliveryRecord,
) -> Result<Done, StageError> {
    ctx.metrics.first_attempt(FirstAttempt::Queued);
    ctx.metrics.deferred(Deferred::MaxInFlight);
    ctx.db(|| store::deliveries::release(&ctx.pool, record.id))
        .await?;
    let now = Utc::now();
    let job = Job {
        delivery_id: record.id,
        attempt: 1,
        not_before: now,
        webhook_id: Some(record.webhook_id),
    };
    Ok(Done::after(vec![publisher.job(&job, now).await?]))
}

fn decide(ctx: &Context, webhook: &Webhook, event: &BuildEvent) -> Decision {
    let (status, error) = match &webhook.rule {
        Rule::Unusable(why) => (DeliveryStatus::Failed, Some(why.to_string())),
        Rule::Usable(trigger) => {
            let fired = trigger.fires(&event.tag);
            ctx.metrics.trigger_evaluated(trigger.kind(), fired);
            let status = if fired {
                DeliveryStatus::Pending
            } else {
                DeliveryStatus::NotTriggered
            };
            (status, None)
        }
    };
    Decision {
        id: delivery_id(&event.event_id, webhook.id, event.occurred_at.to_utc()),
        webhook_id: webhook.id,
        status,
        error,
        claim_first_attempt: false,
        hold_until: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeliveryStatus::*;

    #[test]
    fn each_recorded_delivery_gets_its_plan() {
        let cases = [
            // (status, created by this copy, holds a pass) -> plan
            (Pending, true, true, Plan::AttemptInline),
            (Pending, true, false, Plan::QueueJob),
            // A row an earlier copy created: its first attempt may be unfinished.
            (Pending, false, true, Plan::QueueJob),
            (Pending, false, false, Plan::QueueJob),
            (Retrying, false, false, Plan::QueueJob),
            (Retrying, false, true, Plan::QueueJob),
            (NotTriggered, true, false, Plan::PublishStatus),
            (NotTriggered, false, false, Plan::PublishStatus),
            (Failed, true, false, Plan::PublishStatus),
            (Succeeded, false, false, Plan::PublishStatus),
            (Succeeded, false, true, Plan::PublishStatus),
        ];
        for (status, created, passed, expected) in cases {
            assert_eq!(
                plan(status, created, passed),
                expected,
                "{status:?} created={created} passed={passed}"
            );
        }
    }
}
