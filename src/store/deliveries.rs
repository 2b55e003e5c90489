//! Access records (SPEC section 6): one `deliveries` row per (event, webhook) considered, one
//! `delivery_attempts` row per HTTP attempt. Statuses are mapped to SQL text here and only here.

use std::sync::Arc;
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
    /// The delivery's id, derived from (event, webhook): the same on every redelivery of the
    /// event, so a repeat after a crash reaches the receiver with the same `webhook-id`.
    pub id: Uuid,
    pub webhook_id: i64,
    /// `Pending` (fires), `NotTriggered`, or `Failed` (the row's rule cannot be used).
    pub status: DeliveryStatus,
    pub error: Option<String>,
    /// The event stage makes the first attempt itself: claim it with the insert.
    pub claim_first_attempt: bool,
}

/// The id of the delivery of `event_id` to `webhook_id`: a version 8 UUID made of SHA-256 of both.
pub fn delivery_id(event_id: &str, webhook_id: i64) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(event_id.as_bytes());
    hash.update([0]);
    hash.update(webhook_id.to_be_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

/// One event's decisions, as submitted to the batch writer.
#[derive(Debug, Clone)]
pub struct EventDecisions {
    pub event: Arc<BuildEvent>,
    pub body: Arc<str>,
    pub decisions: Vec<Decision>,
}

/// Records the decisions of many events in one statement. For each event, in order: every
/// delivery of it among those webhooks, with `true` when this call created it; rows that
/// already existed (the event was delivered before) come back as they are, so the caller
/// finishes their work. A webhook deleted meanwhile simply gets no row.
pub async fn record_decisions(
    pool: &PgPool,
    lease: Duration,
    batch: Vec<EventDecisions>,
) -> Result<Vec<Vec<(DeliveryRecord, bool)>>, StoreError> {
    const SQL: &str = concat!(
        "WITH ins AS (
            INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status,
                                    error, request_body, occurred_at, lease_until, watched, updated_at)
            SELECT u.id, u.event_id, u.webhook_id, u.namespace, u.repository, u.tag, u.digest, u.status, u.error,
                   CASE WHEN u.status = 'pending' THEN u.body END, u.occurred_at,
                   CASE WHEN u.claim THEN now() + make_interval(secs => $13) END,
                   u.status = 'pending' AND NOT u.claim, now()
              FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
                          $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::bool[])
                   AS u(id, event_id, webhook_id, namespace, repository, tag, digest, status, error, body, occurred_at, claim)
              JOIN webhooks w ON w.id = u.webhook_id
            -- A row that exists already (the event came before) is returned as it is: the
            -- update makes RETURNING include it, and xmax tells the two apart, in one pass. Its
            -- work, if unfinished, goes to a job now, which the sweeper watches.
            ON CONFLICT (event_id, webhook_id) DO UPDATE
               SET watched = deliveries.status IN ('pending', 'retrying')
            RETURNING *, (xmax = 0) AS fresh
        )
        SELECT ", record_columns!(), ", d.fresh FROM ins d JOIN webhooks w ON w.id = d.webhook_id"
    );
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        record: DeliveryRecord,
        fresh: bool,
    }
    let rows = batch.iter().map(|e| e.decisions.len()).sum();
    let mut ids = Vec::with_capacity(rows);
    let mut event_ids = Vec::with_capacity(rows);
    let mut webhook_ids = Vec::with_capacity(rows);
    let (mut namespaces, mut repositories, mut tags, mut digests) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    let (mut statuses, mut errors, mut bodies, mut occurred, mut claims) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    // A second copy of an event in the same batch adds no rows: one statement may not insert (or
    // update) the same (event_id, webhook_id) twice, and the copy gets the first one's rows as a
    // repeat below.
    let mut included = std::collections::HashSet::with_capacity(batch.len());
    for e in &batch {
        if !included.insert(e.event.event_id.as_str()) {
            continue;
        }
        for d in &e.decisions {
            ids.push(d.id);
            event_ids.push(e.event.event_id.as_str());
            webhook_ids.push(d.webhook_id);
            namespaces.push(e.event.repository.namespace.as_str());
            repositories.push(e.event.repository.name.as_str());
            tags.push(e.event.tag.as_str());
            digests.push(e.event.digest.as_str());
            statuses.push(d.status.as_str());
            errors.push(d.error.as_deref());
            bodies.push(&*e.body);
            occurred.push(e.event.occurred_at.with_timezone(&Utc));
            claims.push(d.claim_first_attempt);
        }
    }
    let found: Vec<Row> = sqlx::query_as(SQL)
        // Planned anew for each batch, knowing its length: a cached generic plan, made without
        // it, can pick a sequential scan of `deliveries` that grows with the table.
        .persistent(false)
        .bind(&ids)
        .bind(&event_ids)
        .bind(&webhook_ids)
        .bind(&namespaces)
        .bind(&repositories)
        .bind(&tags)
        .bind(&digests)
        .bind(&statuses)
        .bind(&errors)
        .bind(&bodies)
        .bind(&occurred)
        .bind(&claims)
        .bind(lease.as_secs_f64())
        .fetch_all(pool)
        .await?;
    let mut by_event: std::collections::HashMap<String, Vec<(DeliveryRecord, bool)>> =
        std::collections::HashMap::new();
    for row in found {
        by_event
            .entry(row.record.event_id.clone())
            .or_default()
            .push((row.record, row.fresh));
    }
    // An event twice in one batch (the broker redelivered it meanwhile): only the first copy may
    // treat the rows as its own; the second finishes them as a repeat.
    let mut out: Vec<Vec<(DeliveryRecord, bool)>> = Vec::with_capacity(batch.len());
    let mut first: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, e) in batch.iter().enumerate() {
        let event_id = e.event.event_id.as_str();
        if let Some(rows) = by_event.remove(event_id) {
            first.insert(event_id, i);
            out.push(rows);
        } else if let Some(&j) = first.get(event_id) {
            let repeat = out[j].iter().map(|(r, _)| (r.clone(), false)).collect();
            out.push(repeat);
        } else {
            out.push(Vec::new());
        }
    }
    Ok(out)
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

/// Records many attempts, each with its delivery's new state, in one statement, and releases
/// their claims. For each, in order: false if the attempt was recorded before (a repeat) or the
/// delivery is gone.
pub async fn record_attempts(
    pool: &PgPool,
    batch: Vec<(Uuid, NewAttempt)>,
) -> Result<Vec<bool>, StoreError> {
    const SQL: &str = "WITH u AS (
            SELECT * FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::int[], $5::int[], $6::text[],
                                 $7::text[], $8::text[], $9::timestamptz[])
                AS u(delivery_id, attempt, started_at, duration_ms, http_status, error, response_body, status, next_attempt_at)
        ), d AS (
            UPDATE deliveries SET status = u.status, attempts = u.attempt, http_status = u.http_status, error = u.error,
                   duration_ms = u.duration_ms, next_attempt_at = u.next_attempt_at, lease_until = NULL,
                   watched = u.status IN ('pending', 'retrying'), updated_at = now()
              FROM u
             WHERE deliveries.id = u.delivery_id AND deliveries.attempts = u.attempt - 1
            RETURNING deliveries.id
        )
        INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status, error, response_body)
        SELECT u.delivery_id, u.attempt, u.started_at, u.duration_ms, u.http_status, u.error, u.response_body
          FROM u JOIN d ON d.id = u.delivery_id
        ON CONFLICT DO NOTHING
        RETURNING delivery_id";
    let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
    let attempts: Vec<i32> = batch.iter().map(|(_, a)| a.attempt).collect();
    let started: Vec<DateTime<Utc>> = batch.iter().map(|(_, a)| a.started_at).collect();
    let durations: Vec<i32> = batch.iter().map(|(_, a)| a.duration_ms).collect();
    let http: Vec<Option<i32>> = batch.iter().map(|(_, a)| a.http_status).collect();
    let errors: Vec<Option<&str>> = batch.iter().map(|(_, a)| a.error.as_deref()).collect();
    let bodies: Vec<Option<&str>> = batch
        .iter()
        .map(|(_, a)| a.response_body.as_deref())
        .collect();
    let statuses: Vec<&str> = batch.iter().map(|(_, a)| a.status.as_str()).collect();
    let next: Vec<Option<DateTime<Utc>>> = batch.iter().map(|(_, a)| a.next_attempt_at).collect();
    let recorded: Vec<Uuid> = sqlx::query_scalar(SQL)
        .persistent(false) // as in record_decisions
        .bind(&ids)
        .bind(&attempts)
        .bind(&started)
        .bind(&durations)
        .bind(&http)
        .bind(&errors)
        .bind(&bodies)
        .bind(&statuses)
        .bind(&next)
        .fetch_all(pool)
        .await?;
    let recorded: std::collections::HashSet<Uuid> = recorded.into_iter().collect();
    Ok(ids.iter().map(|id| recorded.contains(id)).collect())
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

    #[test]
    fn delivery_ids_are_stable_per_event_and_webhook() {
        let a = delivery_id("event-1", 42);
        assert_eq!(a, delivery_id("event-1", 42));
        assert_ne!(a, delivery_id("event-1", 43));
        assert_ne!(a, delivery_id("event-2", 42));
        // The separator keeps ("a", 1) and ("a\0...", ...) apart from concatenation tricks.
        assert_ne!(delivery_id("1", 1), delivery_id("", 0x3100_0000_0000_0001));
        assert_eq!(a.get_version_num(), 8);
    }
}
