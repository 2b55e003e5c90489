//! One attempt of a claimed delivery, shared by both stages: POST, record, then publish the
//! status event and, for a retry, the next job; a webhook that is gone or keeps failing is
//! disabled ([`disable`](super::disable)).

use chrono::Utc;

use super::Context;
use crate::amqp::{Job, Publisher};
use crate::consumer::{Done, StageError};
use crate::gate::Pass;
use crate::metrics::Completed;
use crate::model::{DeliveryRecord, DeliveryStatus};
use crate::redact::redact_url;
use crate::retry::{Verdict, classify};
use crate::status::StatusEvent;
use crate::store::{AttemptRecorded, NewAttempt};

/// What one attempt needs besides its delivery record.
pub struct Target<'a> {
    pub url: &'a str,
    pub secret: Option<&'a str>,
    pub body: &'a str,
}

/// Makes attempt `n` of a claimed delivery, records it, and publishes its status event and, for
/// a retry, the next job. `pass` is the webhook's permission for it (see [`crate::gate`]).
pub async fn attempt(
    ctx: &Context,
    publisher: &Publisher,
    mut record: DeliveryRecord,
    target: Target<'_>,
    n: i32,
    mut pass: Pass,
) -> Result<Done, StageError> {
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
    pass.report(report.duration, &report.outcome);
    // Given back now: the cap counts requests, not the bookkeeping after them.
    drop(pass);

    let (status, retry_in) = match classify(&report.outcome) {
        Verdict::Succeeded => (DeliveryStatus::Succeeded, None),
        Verdict::GiveUp => (DeliveryStatus::Failed, None),
        Verdict::Retry { hint } => {
            match ctx
                .retry
                .delay_after(n.unsigned_abs(), hint, fastrand::f64())
            {
                Some(delay) => (DeliveryStatus::Retrying, Some(delay)),
                None => (DeliveryStatus::Failed, None),
            }
        }
    };
    let next_attempt_at = retry_in.map(|delay| report.started_at + report.duration + delay);
    let http_status = report.http_status().map(i32::from);
    tracing::debug!(
        delivery_id = %record.id, attempt = n, url = %redact_url(target.url), http_status,
        error = report.error.map(|e| e.as_str()), detail = report.detail, duration = ?report.duration,
        status = status.as_str(), "delivery attempt"
    );
    let new = NewAttempt {
        attempt: n,
        started_at: report.started_at,
        duration: report.duration,
        http_status,
        error: report.error,
        error_detail: report.detail,
        response_body: report.response_body,
        status,
        next_attempt_at,
    };
    // Recorded before: by another worker, or by this one when the answer to the commit was
    // lost. Either way what follows it may be missing: the repeat of the message finishes it
    // from the record (status event, next attempt). On shutdown the receiver may have the
    // notification while nothing says so: the redelivery sends it again, same webhook-id.
    let failing = match ctx
        .db(|| ctx.recorder.attempt(record.id, new.clone()))
        .await?
    {
        AttemptRecorded::Now { failing } => failing,
        AttemptRecorded::Before => return Err(StageError::AlreadyRecorded),
    };

    log_outcome(ctx, &record, &target, n, &new, retry_in);
    match status {
        DeliveryStatus::Succeeded => {
            ctx.metrics.completed(Completed::Succeeded);
            let since = Utc::now() - record.occurred_at;
            ctx.metrics
                .event_to_delivery
                .observe(since.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
        }
        DeliveryStatus::Failed => ctx.metrics.completed(Completed::Failed),
        DeliveryStatus::Retrying => ctx.metrics.retries_scheduled.inc(),
        DeliveryStatus::Pending | DeliveryStatus::NotTriggered => {}
    }
    record.status = status;
    record.attempts = n;
    record.http_status = http_status;
    record.error = new.error.map(|e| e.as_str().to_owned());
    record.duration_ms = Some(crate::store::millis(new.duration));
    record.next_attempt_at = next_attempt_at;

    let mut done = publish_status(publisher, &record).await?;
    if status == DeliveryStatus::Retrying {
        done.push(publisher.job(&next_job(&record), Utc::now()).await?);
    }
    done.extend(super::disable::after_attempt(ctx, publisher, &record, failing).await?);
    Ok(done)
}

/// The line a person watching sees for a recorded attempt: delivered, retry scheduled, or
/// failed with its reason. Rate-limited (see [`crate::sampled`]).
fn log_outcome(
    ctx: &Context,
    record: &DeliveryRecord,
    target: &Target<'_>,
    n: i32,
    new: &NewAttempt,
    retry_in: Option<std::time::Duration>,
) {
    // At a level above info the lines are off: no need to ask the limiter.
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let lines = match new.status {
        DeliveryStatus::Succeeded => &ctx.lines.delivered,
        DeliveryStatus::Retrying => &ctx.lines.retrying,
        DeliveryStatus::Failed => &ctx.lines.failed,
        DeliveryStatus::Pending | DeliveryStatus::NotTriggered => return,
    };
    let Some(passed_over) = lines.admit() else {
        return;
    };
    // Only when some were: the field is absent otherwise.
    let unlogged = (passed_over > 0).then_some(passed_over);
    let url = redact_url(target.url);
    let duration_ms = crate::store::millis(new.duration);
    match new.status {
        DeliveryStatus::Succeeded => tracing::info!(
            event_id = %record.event_id, delivery_id = %record.id, webhook = %record.webhook_name,
            %url, attempt = n, http_status = new.http_status, duration_ms, unlogged, "delivered"
        ),
        DeliveryStatus::Retrying => tracing::info!(
            event_id = %record.event_id, delivery_id = %record.id, webhook = %record.webhook_name,
            %url, attempt = n, reason = %reason(new), retry_in = ?whole_millis(retry_in.unwrap_or_default()),
            unlogged, "retry scheduled"
        ),
        _ => tracing::info!(
            event_id = %record.event_id, delivery_id = %record.id, webhook = %record.webhook_name,
            %url, attempt = n, reason = %reason(new), unlogged, "failed"
        ),
    }
}

/// `836ms` rather than `836.475342ms`.
fn whole_millis(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why an attempt did not succeed, in words: `HTTP 503` or `connect: connection refused`.
fn reason(attempt: &NewAttempt) -> String {
    match (attempt.http_status, attempt.error, &attempt.error_detail) {
        (Some(status), _, _) => format!("HTTP {status}"),
        (None, Some(error), Some(detail)) => format!("{}: {detail}", error.as_str()),
        (None, Some(error), None) => error.as_str().to_owned(),
        (None, None, _) => "no answer".to_owned(),
    }
}

/// The job of the attempt after the one `record` shows.
pub fn next_job(record: &DeliveryRecord) -> Job {
    Job {
        delivery_id: record.id,
        attempt: record.attempts + 1,
        not_before: record.next_attempt_at.unwrap_or_else(Utc::now),
        webhook_id: Some(record.webhook_id),
    }
}

/// Publishes the status event of a delivery as recorded (nothing for `pending`).
pub async fn publish_status(
    publisher: &Publisher,
    record: &DeliveryRecord,
) -> Result<Done, StageError> {
    match StatusEvent::of(record, Utc::now()) {
        Some(event) => Ok(Done::after(vec![
            publisher
                .status(&event.routing_key(), &event.to_json())
                .await?,
        ])),
        None => Ok(Done::default()),
    }
}
