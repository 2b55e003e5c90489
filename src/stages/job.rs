//! The job stage: one message of the delivery queue is one attempt. Claim it in the database,
//! then attempt it (see [`attempt`](super::attempt)); a job that is not due yet moves on to its
//! next delay step.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::Instrument as _;

use super::Context;
use super::attempt::{Target, attempt, next_job, publish_status};
use crate::amqp::{Job, Publisher};
use crate::consumer::{Done, Handled, Inbound, StageError};
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
    let claim = ctx
        .db(|| store::deliveries::claim(&ctx.pool, job.delivery_id, job.attempt, ctx.lease))
        .await?;
    match after_claim(claim, &job, now) {
        Next::Attempt(claimed) => {
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
                None,
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
    }
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
        }
    }

    #[test]
    fn each_claim_leads_to_its_next_step() {
        let now = Utc::now();
        let job = Job {
            delivery_id: Uuid::nil(),
            attempt: 2,
            not_before: now,
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
        };
        let until = now + chrono::Duration::seconds(20);
        let Next::Later(later) = after_claim(Claim::Leased { until }, &job, now) else {
            panic!("not later");
        };
        assert!(later.not_before > until && later.attempt == 1);
    }
}
