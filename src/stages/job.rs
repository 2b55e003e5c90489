//! The job stage: one message of the delivery queue is one attempt. Ask the webhook's breaker
//! and cap ([`crate::gate`]), claim it in the database, then attempt it (see
//! [`attempt`](super::attempt)); a job that is not due yet, or held back, goes back to a delay
//! queue, and one of a disabled webhook ends without a request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tracing::Instrument as _;

use super::Context;
use super::attempt::{Target, attempt, next_job, publish_status};
use crate::amqp::{Job, Publisher};
use crate::consumer::{Done, Handled, Inbound, StageError};
use crate::gate::{Admit, Wait};
use crate::metrics::{Completed, Deferred};
use crate::model::{DeliveryRecord, DeliveryStatus};
use crate::store::{self, Claim};

/// Handles one message of the delivery queue.
pub async fn handle(ctx: Arc<Context>, publisher: Publisher, message: Inbound) -> Handled {
    let job: Job = match serde_json::from_slice(&message.body) {
        Ok(job) => job,
        Err(e) => return Handled::unnamed(Err(StageError::MalformedJob(e))),
    };
    let span =
        tracing::info_span!("delivery", delivery_id = %job.delivery_id, attempt = job.attempt);
    let outcome = run(&ctx, &publisher, job).instrument(span.clone()).await;
    Handled { span, outcome }
}

async fn run(ctx: &Context, publisher: &Publisher, job: Job) -> Result<Done, StageError> {
    let now = Utc::now();
    if job.not_before > now {
        // Still waiting: on to the next delay step.
        return Ok(Done::after(vec![publisher.job(&job, now).await?]));
    }
    let webhook_id = match job.webhook_id {
        Some(id) => id,
        None => match ctx
            .db(|| store::deliveries::webhook_of(&ctx.pool, job.delivery_id))
            .await?
        {
            Some(id) => id,
            None => {
                tracing::info!("webhook deleted; its queued delivery is dropped");
                return Ok(Done::default());
            }
        },
    };
    let job = Job {
        webhook_id: Some(webhook_id),
        ..job
    };
    // Asked before the database, so that a held-back attempt costs no claim. A webhook
    // deleted or disabled gets no pass: the claim says which, and nothing is sent.
    let limits = ctx.db(|| ctx.cache.limits(webhook_id)).await?;
    let mut pass = None;
    if let Some(limits) = limits.filter(|l| l.enabled) {
        let cap = limits.max_in_flight.unwrap_or(ctx.max_in_flight);
        match ctx.gate.admit(webhook_id, cap, Instant::now()) {
            Admit::Go(admitted) => pass = Some(admitted),
            Admit::Wait(wait) => return defer(ctx, publisher, job, wait, now).await,
        }
    }
    let claim = ctx
        .db(|| store::deliveries::claim(&ctx.pool, job.delivery_id, job.attempt, ctx.lease))
        .await?;
    match after_claim(claim, &job, now) {
        Next::Attempt(claimed) => {
            // Enabled a moment ago, after the cache was read: this attempt goes anyway.
            let pass = pass.unwrap_or_else(|| ctx.gate.force(webhook_id, Instant::now()));
            let secrets = claimed.secrets.signing(now);
            let target = Target {
                url: &claimed.url,
                secret: secrets.as_deref(),
                body: claimed.request_body.as_deref().unwrap_or_default(),
            };
            attempt(
                ctx,
                publisher,
                claimed.record.clone(),
                target,
                job.attempt,
                pass,
            )
            .await
        }
        Next::Drop => {
            tracing::info!("webhook deleted; its queued delivery is dropped");
            Ok(Done::default())
        }
        Next::Republish { record, then_job } => {
            let mut done = publish_status(publisher, &record).await?;
            if let Some(next) = then_job {
                done.push(publisher.job(&next, now).await?);
            }
            Ok(done)
        }
        Next::Later(later) => Ok(Done::after(vec![publisher.job(&later, now).await?])),
        Next::EndDisabled => end_disabled(ctx, publisher, &job).await,
    }
}

/// A job held back by its webhook's cap waits again a quarter of what it has waited so far,
/// within these bounds: a backlog over the cap costs the broker a message every few seconds
/// per job, while a short queue moves on within a quarter second.
const FULL_WAIT: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(4));
/// A job held back longer than this since the database last heard of it (its `not_before`)
/// says so, or the sweeper, seeing no change for a minute, would take it for lost and queue
/// another.
const TOUCH_AFTER: Duration = Duration::from_secs(30);

/// Sends a job back to wait in the broker, its attempt not spent.
async fn defer(
    ctx: &Context,
    publisher: &Publisher,
    mut job: Job,
    wait: Wait,
    now: DateTime<Utc>,
) -> Result<Done, StageError> {
    match wait {
        Wait::Breaker { until } => {
            ctx.metrics.deferred(Deferred::Breaker);
            let left = until.saturating_duration_since(Instant::now());
            let at = now + chrono::Duration::from_std(left).unwrap_or_default();
            if (at - job.not_before).to_std().unwrap_or_default() < TOUCH_AFTER {
                // Back before the sweeper could miss it: the broker alone keeps the wait,
                // in hops that end at `until`.
                return Ok(Done::after(vec![publisher.job_in(&job, left).await?]));
            }
            // The record shows when the attempt is due now, and the sweeper leaves it be.
            ctx.db(|| {
                store::deliveries::postpone(&ctx.pool, job.delivery_id, job.attempt, Some(at))
            })
            .await?;
            job.not_before = at;
            Ok(Done::after(vec![publisher.job(&job, now).await?]))
        }
        Wait::Full => {
            ctx.metrics.deferred(Deferred::MaxInFlight);
            let waited = (now - job.not_before).to_std().unwrap_or_default();
            if waited >= TOUCH_AFTER {
                ctx.db(|| {
                    store::deliveries::postpone(&ctx.pool, job.delivery_id, job.attempt, None)
                })
                .await?;
                job.not_before = now;
            }
            let again = (waited / 4).clamp(FULL_WAIT.0, FULL_WAIT.1);
            Ok(Done::after(vec![publisher.job_in(&job, again).await?]))
        }
    }
}

/// Ends a delivery of a disabled webhook, without a request.
async fn end_disabled(ctx: &Context, publisher: &Publisher, job: &Job) -> Result<Done, StageError> {
    let Some(record) = ctx
        .db(|| store::deliveries::end_disabled(&ctx.pool, job.delivery_id, job.attempt))
        .await?
    else {
        // It moved on meanwhile: whoever moved it finishes it.
        return Ok(Done::default());
    };
    ctx.metrics.completed(Completed::Failed);
    if let Some(passed_over) = ctx.lines.failed.admit() {
        let unlogged = (passed_over > 0).then_some(passed_over);
        tracing::info!(
            event_id = %record.event_id, delivery_id = %record.id, webhook = %record.webhook_name,
            attempts = record.attempts, reason = "webhook_disabled", unlogged, "failed"
        );
    }
    publish_status(publisher, &record).await
}

/// What a claim leads to.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one short-lived value per job, moved once: boxing would only add an allocation"
)]
enum Next {
    Attempt(Box<store::ClaimedDelivery>),
    /// The delivery is gone with its webhook.
    Drop,
    /// Nothing to send: publish what may not have been published, the status event and, for a
    /// recorded retry whose next job may be lost, that job.
    Republish {
        record: DeliveryRecord,
        then_job: Option<Job>,
    },
    /// Another worker holds the attempt: try again once its lease has run out.
    Later(Job),
    /// Its webhook is disabled: the delivery ends `failed`, without a request.
    EndDisabled,
}

fn after_claim(claim: Claim, job: &Job, now: DateTime<Utc>) -> Next {
    match claim {
        Claim::Claimed(claimed) => Next::Attempt(claimed),
        Claim::Gone => Next::Drop,
        Claim::Final(record) => Next::Republish {
            record,
            then_job: None,
        },
        // A repeat of a job whose attempt was recorded: the next attempt is due only if this
        // was the attempt the record shows last and it is to be retried.
        Claim::AlreadyAttempted(record) => {
            let then_job = (record.status == DeliveryStatus::Retrying
                && record.attempts == job.attempt)
                .then(|| next_job(&record));
            Next::Republish { record, then_job }
        }
        Claim::Leased { until } => Next::Later(Job {
            not_before: until.max(now) + chrono::Duration::milliseconds(1),
            ..*job
        }),
        Claim::Disabled(_) => Next::EndDisabled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn record(status: DeliveryStatus, attempts: i32) -> DeliveryRecord {
        DeliveryRecord {
            id: Uuid::nil(),
            event_id: "e".into(),
            webhook_id: 1,
            webhook_name: "w".into(),
            namespace: "n".into(),
            repository: "r".into(),
            tag: "t".into(),
            digest: "d".into(),
            status,
            attempts,
            http_status: None,
            error: None,
            duration_ms: None,
            next_attempt_at: None,
            occurred_at: Utc::now(),
        }
    }

    /// A short name for what a claim led to, so the cases below read as a table.
    fn kind(next: &Next) -> &'static str {
        match next {
            Next::Attempt(_) => "attempt",
            Next::Drop => "drop",
            Next::Republish { then_job: None, .. } => "status",
            Next::Republish {
                then_job: Some(_), ..
            } => "status+job",
            Next::Later(_) => "later",
            Next::EndDisabled => "end",
        }
    }

    #[test]
    fn each_claim_leads_to_its_next_step() {
        let now = Utc::now();
        let job = Job {
            delivery_id: Uuid::nil(),
            attempt: 2,
            not_before: now,
            webhook_id: Some(1),
        };
        use DeliveryStatus::*;
        let cases: Vec<(Claim, &str)> = vec![
            (Claim::Gone, "drop"),
            (Claim::Final(record(Succeeded, 2)), "status"),
            (Claim::Final(record(Failed, 8)), "status"),
            // Attempt 2 recorded and to be retried: attempt 3 is due.
            (Claim::AlreadyAttempted(record(Retrying, 2)), "status+job"),
            // A stale job: attempt 3 is recorded already, its own job carries on.
            (Claim::AlreadyAttempted(record(Retrying, 3)), "status"),
            (Claim::Leased { until: now }, "later"),
            (Claim::Disabled(record(Retrying, 3)), "end"),
        ];
        for (claim, expected) in cases {
            let shown = format!("{claim:?}");
            assert_eq!(kind(&after_claim(claim, &job, now)), expected, "{shown}");
        }
    }

    #[test]
    fn a_leased_attempt_is_tried_again_after_the_lease() {
        let now = Utc::now();
        let job = Job {
            delivery_id: Uuid::nil(),
            attempt: 1,
            not_before: now,
            webhook_id: Some(1),
        };
        let until = now + chrono::Duration::seconds(20);
        let Next::Later(later) = after_claim(Claim::Leased { until }, &job, now) else {
            panic!("not later");
        };
        assert!(later.not_before > until && later.attempt == 1);
    }
}
