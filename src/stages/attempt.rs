//! One attempt of a claimed delivery, shared by both stages: POST, record, then publish the
//! status event and, for a retry, the next job.

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
/// a retry, the next job. `pass` is set for an attempt the event stage makes inline.
pub async fn attempt(
    ctx: &Context,
    publisher: &Publisher,
    mut record: DeliveryRecord,
    target: Target<'_>,
    n: i32,
    pass: Option<Pass>,
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
    if let Some(pass) = pass {
        pass.report(report.duration, report.unreachable());
    }

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
    tracing::debug!(
        delivery_id = %record.id, attempt = n, url = %redact_url(target.url), http_status,
        error = report.error.map(|e| e.as_str()), duration = ?report.duration, status = status.as_str(), "delivery attempt"
    );
    let new = NewAttempt {
        attempt: n,
        started_at: report.started_at,
        duration: report.duration,
        http_status,
        error: report.error,
        response_body: report.response_body,
        status,
        next_attempt_at,
    };
    // Recorded before: by another worker, or by this one when the answer to the commit was
    // lost. Either way what follows it may be missing: the repeat of the message finishes it
    // from the record (status event, next attempt). On shutdown the receiver may have the
    // notification while nothing says so: the redelivery sends it again, same webhook-id.
    match ctx
        .db(|| ctx.recorder.attempt(record.id, new.clone()))
        .await?
    {
        AttemptRecorded::Now => {}
        AttemptRecorded::Before => return Err(StageError::AlreadyRecorded),
    }

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
    Ok(done)
}

/// The job of the attempt after the one `record` shows.
pub fn next_job(record: &DeliveryRecord) -> Job {
    Job {
        delivery_id: record.id,
        attempt: record.attempts + 1,
        not_before: record.next_attempt_at.unwrap_or_else(Utc::now),
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
