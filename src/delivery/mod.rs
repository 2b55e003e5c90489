//! The delivery stage: one job is one attempt. Claim it, POST, record, publish the status
//! event, schedule the next attempt if one is due, then acknowledge.

mod client;
pub mod gate;
pub mod guard;
pub mod retry;

use std::sync::Arc;

use chrono::Utc;
use tracing::Instrument as _;

pub use client::{AttemptReport, ClientError, ClientSettings, WebhookClient};
pub use retry::RetryPolicy;

use crate::amqp::{Job, Pending, Publisher, confirmed};
use crate::app::{Context, Inbound, Settle};
use crate::config::redact_url;
use crate::metrics::Stage;
use crate::status::StatusEvent;
use crate::store::{self, Claim, DeliveryRecord, DeliveryStatus, NewAttempt};
use retry::{Verdict, classify};

/// Handles one message of the delivery queue.
pub async fn handle_job(ctx: Arc<Context>, publisher: Publisher, message: Inbound) -> Settle {
    let job: Job = match serde_json::from_slice(&message.body) {
        Ok(job) => job,
        Err(e) => {
            tracing::warn!(reason = %e, "malformed delivery job dead-lettered");
            ctx.metrics.dead_lettered(Stage::Deliveries);
            return Settle::DeadLetter;
        }
    };
    let span =
        tracing::info_span!("delivery", delivery_id = %job.delivery_id, attempt = job.attempt);
    run_job(&ctx, &publisher, job).instrument(span).await
}

async fn run_job(ctx: &Context, publisher: &Publisher, job: Job) -> Settle {
    let now_ms = Utc::now().timestamp_millis();
    if job.not_before > now_ms {
        // Still waiting: on to the next delay step.
        return settle_after(ctx, publisher.job(&job, now_ms).await.map(|p| vec![p])).await;
    }
    let claim = store::with_retries(
        &ctx.hard_stop,
        |e| ctx.database_retry(e),
        || store::deliveries::claim(&ctx.pool, job.delivery_id, job.attempt, ctx.lease),
    )
    .await;
    let claimed = match claim {
        Ok(Claim::Claimed(claimed)) => claimed,
        Ok(Claim::Gone) => {
            tracing::info!("webhook deleted; its queued delivery is dropped");
            return Settle::Ack;
        }
        Ok(Claim::Final(record)) => {
            return settle_after(ctx, publish_status(publisher, &record).await).await;
        }
        Ok(Claim::AlreadyAttempted(record)) => {
            // A repeat of a job whose attempt was recorded: finish what may not have been
            // published, the status event and the next attempt.
            let mut pending = publish_status(publisher, &record).await;
            if record.status == DeliveryStatus::Retrying
                && record.attempts == job.attempt
                && let Ok(p) = &mut pending
            {
                match publisher.job(&next_job(&record), now_ms).await {
                    Ok(next) => p.push(next),
                    Err(e) => return settle_after(ctx, Err(e)).await,
                }
            }
            return settle_after(ctx, pending).await;
        }
        Ok(Claim::Leased { until }) => {
            let later = Job {
                not_before: until.timestamp_millis() + 1,
                ..job
            };
            return settle_after(ctx, publisher.job(&later, now_ms).await.map(|p| vec![p])).await;
        }
        Err(store::StoreError::Cancelled) => return Settle::Abandon,
        Err(e) => {
            tracing::error!(error = %e, "cannot claim delivery");
            return Settle::Requeue;
        }
    };
    let claimed = *claimed;
    let target = Target {
        url: &claimed.url,
        secret: claimed.secret.as_deref(),
        body: claimed.request_body.as_deref().unwrap_or_default(),
    };
    match attempt(
        ctx,
        publisher,
        claimed.record.clone(),
        target,
        job.attempt,
        None,
    )
    .await
    {
        Ok(pending) => settle_after(ctx, Ok(pending)).await,
        Err(settle) => settle,
    }
}

/// What one attempt needs besides its delivery record.
pub(crate) struct Target<'a> {
    pub url: &'a str,
    pub secret: Option<&'a str>,
    pub body: &'a str,
}

/// Makes attempt `n` of a claimed delivery, records it, and publishes its status event and, for
/// a retry, the next job. Returns the publishes to wait for, or how to settle the message when it
/// cannot go on. `pass` is set for an attempt the event stage makes inline.
pub(crate) async fn attempt(
    ctx: &Context,
    publisher: &Publisher,
    mut record: DeliveryRecord,
    target: Target<'_>,
    n: i32,
    pass: Option<gate::Pass>,
) -> Result<Vec<Pending>, Settle> {
    ctx.metrics.in_flight.inc();
    let report = ctx
        .client
        .send(
            target.url,
            target.secret,
            target.body,
            &record.id.to_string(),
        )
        .await;
    ctx.metrics.in_flight.dec();
    ctx.metrics
        .attempt(report.label(), report.duration.as_secs_f64());
    if let Some(pass) = &pass {
        let unreachable = matches!(
            report.outcome,
            retry::AttemptOutcome::Timeout | retry::AttemptOutcome::Connect
        );
        pass.report(report.duration, unreachable);
    }
    drop(pass);

    let (status, next_attempt_at) = match classify(&report.outcome) {
        Verdict::Succeeded => (DeliveryStatus::Succeeded, None),
        Verdict::GiveUp => (DeliveryStatus::Failed, None),
        Verdict::Retry { hint } => {
            match ctx
                .retry
                .delay_after(n.unsigned_abs(), hint, fastrand::f64())
            {
                Some(delay) => (
                    DeliveryStatus::Retrying,
                    Some(report.started_at + report.duration + delay),
                ),
                None => (DeliveryStatus::Failed, None),
            }
        }
    };
    let http_status = report.http_status().map(i32::from);
    let duration_ms = i32::try_from(report.duration.as_millis()).unwrap_or(i32::MAX);
    tracing::debug!(
        delivery_id = %record.id, attempt = n, url = %redact_url(target.url), http_status,
        error = report.error, duration_ms, status = status.as_str(), "delivery attempt"
    );
    let new = NewAttempt {
        attempt: n,
        started_at: report.started_at,
        duration_ms,
        http_status,
        error: report.error.map(str::to_owned),
        response_body: report.response_body,
        status,
        next_attempt_at,
    };
    let recorded = store::with_retries(
        &ctx.hard_stop,
        |e| ctx.database_retry(e),
        || ctx.recorder.attempt(record.id, new.clone()),
    )
    .await;
    match recorded {
        Ok(true) => {}
        // Recorded before: by another worker, or by this one when the answer to the commit was
        // lost. Either way what follows it may be missing: the repeat of the message finishes it
        // from the record (status event, next attempt).
        Ok(false) => {
            tracing::info!(delivery_id = %record.id, "attempt already recorded; finishing from the record");
            return Err(Settle::Requeue);
        }
        // The receiver may have the notification, but nothing says so: leave the message for a
        // redelivery, which sends it again with the same webhook-id.
        Err(store::StoreError::Cancelled) => return Err(Settle::Abandon),
        Err(e) => {
            tracing::error!(delivery_id = %record.id, error = %e, "cannot record attempt");
            return Err(Settle::Requeue);
        }
    }

    match status {
        DeliveryStatus::Succeeded => {
            ctx.metrics.completed(true);
            let since = Utc::now() - record.occurred_at;
            ctx.metrics
                .event_to_delivery
                .observe(since.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
        }
        DeliveryStatus::Failed => ctx.metrics.completed(false),
        DeliveryStatus::Retrying => ctx.metrics.retries_scheduled.inc(),
        DeliveryStatus::Pending | DeliveryStatus::NotTriggered => {}
    }
    record.status = status;
    record.attempts = n;
    record.http_status = http_status;
    record.error = new.error;
    record.duration_ms = Some(duration_ms);
    record.next_attempt_at = next_attempt_at;

    let mut pending = publish_status(publisher, &record)
        .await
        .map_err(|e| failed_publish(ctx, &e))?;
    if status == DeliveryStatus::Retrying {
        let next = publisher
            .job(&next_job(&record), Utc::now().timestamp_millis())
            .await
            .map_err(|e| failed_publish(ctx, &e))?;
        pending.push(next);
    }
    Ok(pending)
}

fn failed_publish(ctx: &Context, e: &crate::amqp::AmqpError) -> Settle {
    ctx.metrics.status_publish_failures.inc();
    tracing::warn!(error = %e, "publish failed; message will be redelivered");
    Settle::Requeue
}

fn next_job(record: &DeliveryRecord) -> Job {
    Job {
        delivery_id: record.id,
        attempt: record.attempts + 1,
        not_before: record.next_attempt_at.map_or(0, |at| at.timestamp_millis()),
    }
}

/// Publishes the status event of a delivery as recorded (nothing for `pending`).
pub(crate) async fn publish_status(
    publisher: &Publisher,
    record: &DeliveryRecord,
) -> Result<Vec<Pending>, crate::amqp::AmqpError> {
    match StatusEvent::of(record, Utc::now()) {
        Some(event) => Ok(vec![
            publisher
                .status(&event.routing_key(), &event.to_json())
                .await?,
        ]),
        None => Ok(Vec::new()),
    }
}

/// Acknowledge once the broker has confirmed everything; otherwise have the job redelivered.
pub(crate) async fn settle_after(
    ctx: &Context,
    published: Result<Vec<Pending>, crate::amqp::AmqpError>,
) -> Settle {
    match async { confirmed(published?).await }.await {
        Ok(()) => Settle::Ack,
        Err(e) => {
            ctx.metrics.status_publish_failures.inc();
            tracing::warn!(error = %e, "publish not confirmed; message will be redelivered");
            Settle::Requeue
        }
    }
}
