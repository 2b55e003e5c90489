//! Access records (SPEC section 6): one `deliveries` row per (event, webhook) considered, one
//! `delivery_attempts` row per HTTP attempt. Statuses are mapped to SQL text here and only here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;
use crate::events::BuildEvent;

/// The life of a delivery. `NotTriggered`, `Succeeded` and `Failed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    NotTriggered,
    Pending,
    Retrying,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::NotTriggered => "not_triggered",
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryStatus::NotTriggered | DeliveryStatus::Succeeded | DeliveryStatus::Failed
        )
    }
}

impl TryFrom<String> for DeliveryStatus {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Ok(match text.as_str() {
            "not_triggered" => DeliveryStatus::NotTriggered,
            "pending" => DeliveryStatus::Pending,
            "retrying" => DeliveryStatus::Retrying,
            "succeeded" => DeliveryStatus::Succeeded,
            "failed" => DeliveryStatus::Failed,
            _ => return Err(format!("unknown delivery status {text:?}")),
        })
    }
}

/// A delivery as status events show it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub id: Uuid,
    pub event_id: String,
    pub webhook_id: i64,
    pub webhook_name: String,
    pub namespace: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    #[sqlx(try_from = "String")]
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: Option<i32>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
}

/// The columns of a [`DeliveryRecord`], from `deliveries d` joined with `webhooks w`.
macro_rules! record_columns {
    () => {
        "d.id, d.event_id, d.webhook_id, w.name AS webhook_name, d.namespace, d.repository, d.tag, d.digest, \
         d.status, d.attempts, d.http_status, d.error, d.duration_ms, d.next_attempt_at, d.occurred_at"
    };
}

/// What the event stage decided for one webhook.
#[derive(Debug, Clone)]
pub struct Decision {
    pub webhook_id: i64,
    /// `Pending` (fires), `NotTriggered`, or `Failed` (the row's rule cannot be used).
    pub status: DeliveryStatus,
    pub error: Option<String>,
}

/// A delivery claimed for one attempt, with what the attempt needs.
#[derive(Clone, sqlx::FromRow)]
pub struct ClaimedDelivery {
    #[sqlx(flatten)]
    pub record: DeliveryRecord,
    pub url: String,
    pub secret: Option<String>,
    pub request_body: Option<String>,
}

// By hand, so that neither the secret nor the URL's query string can reach a log line.
impl std::fmt::Debug for ClaimedDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedDelivery")
            .field("record", &self.record)
            .field("url", &crate::config::redact_url(&self.url))
            .field("secret", &self.secret.as_ref().map(|_| "REDACTED"))
            .finish_non_exhaustive()
    }
}

/// The answer to "may I make attempt n of this delivery".
#[derive(Debug)]
pub enum Claim {
    Claimed(Box<ClaimedDelivery>),
    /// The webhook (and with it the delivery) was deleted: drop the job.
    Gone,
    /// Already final: nothing to send; its status event may be sent again.
    Final(DeliveryRecord),
    /// This attempt is already recorded (the job is a repeat, after a crash).
    AlreadyAttempted(DeliveryRecord),
    /// Another worker is making this attempt right now, or was until it died.
    Leased {
        until: DateTime<Utc>,
    },
}

/// One HTTP attempt, as recorded.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Records the event stage's decisions in one statement. Returns every delivery of this event
/// among those webhooks, each with `true` when this call created it; rows that already existed
/// (the event was delivered before) come back as they are, so the caller finishes their work.
/// A webhook deleted meanwhile simply gets no row.
pub async fn record_decisions(
    pool: &PgPool,
    event: &BuildEvent,
    body: &str,
    decisions: &[Decision],
) -> Result<Vec<(DeliveryRecord, bool)>, StoreError> {
    let ids: Vec<Uuid> = decisions.iter().map(|_| Uuid::new_v4()).collect();
    let webhook_ids: Vec<i64> = decisions.iter().map(|d| d.webhook_id).collect();
    let statuses: Vec<&str> = decisions.iter().map(|d| d.status.as_str()).collect();
    let errors: Vec<Option<&str>> = decisions.iter().map(|d| d.error.as_deref()).collect();
    const SQL: &str = concat!(
        "WITH ins AS (
            INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status,
                                    error, request_body, occurred_at, updated_at)
            SELECT u.id, $5, u.webhook_id, $6, $7, $8, $9, u.status, u.error,
                   CASE WHEN u.status = 'pending' THEN $10 END, $11, now()
              FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[]) AS u(id, webhook_id, status, error)
              JOIN webhooks w ON w.id = u.webhook_id
            ON CONFLICT (event_id, webhook_id) DO NOTHING
            RETURNING *
        )
        SELECT ", record_columns!(), ", true AS fresh FROM ins d JOIN webhooks w ON w.id = d.webhook_id
        UNION ALL
        SELECT ", record_columns!(), ", false AS fresh FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
         WHERE d.event_id = $5 AND d.webhook_id = ANY($2)"
    );
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        record: DeliveryRecord,
        fresh: bool,
    }
    let rows: Vec<Row> = sqlx::query_as(SQL)
        .bind(&ids)
        .bind(&webhook_ids)
        .bind(&statuses)
        .bind(&errors)
        .bind(&event.event_id)
        .bind(&event.repository.namespace)
        .bind(&event.repository.name)
        .bind(&event.tag)
        .bind(&event.digest)
        .bind(body)
        .bind(event.occurred_at.with_timezone(&Utc))
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|r| (r.record, r.fresh)).collect())
}

/// Claims attempt `attempt` of a delivery for `lease` (longer than one attempt can take), so
/// that two copies of one job never both send it.
pub async fn claim(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    lease: Duration,
) -> Result<Claim, StoreError> {
    const CLAIM: &str = concat!(
        "UPDATE deliveries d SET lease_until = now() + make_interval(secs => $3)
           FROM webhooks w
          WHERE d.id = $1 AND w.id = d.webhook_id AND d.attempts = $2 - 1
            AND d.status IN ('pending', 'retrying')
            AND (d.lease_until IS NULL OR d.lease_until < now())
          RETURNING ",
        record_columns!(),
        ", w.url, w.secret, d.request_body"
    );
    let claimed: Option<ClaimedDelivery> = sqlx::query_as(CLAIM)
        .bind(id)
        .bind(attempt)
        .bind(lease.as_secs_f64())
        .fetch_optional(pool)
        .await?;
    if let Some(claimed) = claimed {
        return Ok(Claim::Claimed(Box::new(claimed)));
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        record: DeliveryRecord,
        lease_until: Option<DateTime<Utc>>,
    }
    const CURRENT: &str = concat!(
        "SELECT ",
        record_columns!(),
        ", d.lease_until FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id WHERE d.id = $1"
    );
    let row: Option<Row> = sqlx::query_as(CURRENT)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        None => Claim::Gone,
        Some(row) if row.record.status.is_final() => Claim::Final(row.record),
        Some(row) if row.record.attempts >= attempt => Claim::AlreadyAttempted(row.record),
        // The only reason left for the update to match nothing is a live lease.
        Some(row) => Claim::Leased {
            until: row.lease_until.unwrap_or_else(Utc::now),
        },
    })
}

/// Records an attempt and the delivery's new state in one statement, and releases the claim.
/// Returns false if the attempt was recorded before (a repeat) or the delivery is gone.
pub async fn record_attempt(pool: &PgPool, id: Uuid, a: &NewAttempt) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "WITH d AS (
            UPDATE deliveries SET status = $8, attempts = $2, http_status = $5, error = $6,
                   duration_ms = $4, next_attempt_at = $9, lease_until = NULL, updated_at = now()
             WHERE id = $1 AND attempts = $2 - 1
            RETURNING id
        )
        INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status, error, response_body)
        SELECT id, $2, $3, $4, $5, $6, $7 FROM d
        ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(a.attempt)
    .bind(a.started_at)
    .bind(a.duration_ms)
    .bind(a.http_status)
    .bind(a.error.as_deref())
    .bind(a.response_body.as_deref())
    .bind(a.status.as_str())
    .bind(a.next_attempt_at)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_sql_text() {
        use DeliveryStatus::*;
        for status in [NotTriggered, Pending, Retrying, Succeeded, Failed] {
            assert_eq!(
                DeliveryStatus::try_from(status.as_str().to_owned()),
                Ok(status)
            );
        }
        assert!(DeliveryStatus::try_from("done".to_owned()).is_err());
        assert!(NotTriggered.is_final() && Succeeded.is_final() && Failed.is_final());
        assert!(!Pending.is_final() && !Retrying.is_final());
    }
}
