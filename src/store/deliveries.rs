//! Access records (contract section 6): one `deliveries` row per (event, webhook) considered, one
//! `delivery_attempts` row per HTTP attempt. Statuses are mapped to SQL text here and only here.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use super::{Lease, Pool, StoreError, millis, partitions, span};
use crate::disabling::Streak;
use crate::events::BuildEvent;
use crate::model::{DeliveryRecord, DeliveryStatus};
use crate::retry::AttemptError;

/// The statuses of an unfinished delivery, as SQL text (see [`DeliveryStatus::as_str`]).
macro_rules! unfinished {
    () => {
        "('pending', 'retrying')"
    };
}

/// Runs a batch's statement, whose `{deliveries}` names the table its `UPDATE` reads, on the one
/// daily partition that holds all of the batch (`partition`, when there is one), so that
/// PostgreSQL plans that partition alone: planned on the parent, it plans all of them (some 35
/// with a 30-day retention), which costs it more than the statement's own work. Bounds on
/// `occurred_at` that prune them while planning were tried instead and made the drain far
/// slower, likely because PostgreSQL estimates such bounds from statistics that never reach the
/// newest records. Where that partition does not exist (the day's records went to the default
/// partition or to the one kept from before partitioning, or it was just dropped), the parent.
async fn on_partition(
    client: &Client,
    sql: &str,
    partition: Option<String>,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    if let Some(partition) = partition {
        match client
            .query_typed(
                &sql.replace("{deliveries}", &format!("\"{partition}\"")),
                params,
            )
            .await
        {
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {}
            done => return done,
        }
    }
    client
        .query_typed(&sql.replace("{deliveries}", "deliveries"), params)
        .await
}

/// The `status` column of a row.
pub(super) fn status(row: &Row) -> Result<DeliveryStatus, StoreError> {
    let text: &str = row.try_get("status")?;
    DeliveryStatus::from_sql(text).ok_or_else(|| StoreError::Data {
        column: "status",
        value: text.to_owned(),
    })
}

/// A record from a row holding [`record_columns!`].
fn record(row: &Row) -> Result<DeliveryRecord, StoreError> {
    Ok(DeliveryRecord {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        webhook_id: row.try_get("webhook_id")?,
        webhook_name: row.try_get("webhook_name")?,
        namespace: row.try_get("namespace")?,
        repository: row.try_get("repository")?,
        tag: row.try_get("tag")?,
        digest: row.try_get("digest")?,
        status: status(row)?,
        attempts: row.try_get("attempts")?,
        http_status: row.try_get("http_status")?,
        error: row.try_get("error")?,
        duration_ms: row.try_get("duration_ms")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        occurred_at: row.try_get("occurred_at")?,
    })
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
    /// Its webhook's breaker is open: the first attempt is due when it may probe.
    pub hold_until: Option<DateTime<Utc>>,
}

/// One event's decisions, as submitted to the batch writer.
#[derive(Debug, Clone)]
pub struct EventDecisions {
    pub event: Arc<BuildEvent>,
    pub body: Arc<str>,
    pub decisions: Vec<Decision>,
}

/// A delivery as the decisions batch left it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub record: DeliveryRecord,
    /// Created by this statement; otherwise it existed already (the event came before).
    pub created: bool,
}

/// Records the decisions of many events in one statement. For each event, in order: every
/// delivery of it among those webhooks; rows that already existed (the event was delivered
/// before) come back as they are, so the caller finishes their work. A webhook deleted
/// meanwhile gets no row; so does a delivery that a copy of the event on another replica
/// records at the same moment: that copy does its work.
pub async fn record_decisions(
    pool: &Pool,
    lease: Lease,
    batch: Vec<EventDecisions>,
) -> Result<Vec<Vec<Recorded>>, StoreError> {
    const SQL: &str = concat!(
        "WITH u AS (
            SELECT u.* FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
                                   $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::bool[], $14::timestamptz[])
                   AS u(id, event_id, webhook_id, namespace, repository, tag, digest, status, error, body, occurred_at, claim,
                        hold)
              JOIN webhooks w ON w.id = u.webhook_id
        ), ins AS (
            INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status,
                                    error, request_body, occurred_at, lease_until, watched, updated_at, next_attempt_at)
            SELECT u.id, u.event_id, u.webhook_id, u.namespace, u.repository, u.tag, u.digest, u.status, u.error,
                   CASE WHEN u.status = 'pending' THEN u.body END, u.occurred_at,
                   CASE WHEN u.claim THEN now() + make_interval(secs => $13) END,
                   u.status = 'pending' AND NOT u.claim, now(), u.hold
              FROM u
            ON CONFLICT (event_id, webhook_id, occurred_at) DO NOTHING
            RETURNING *
        ), old AS (
            -- A row from before this statement (the event came before) is returned as it is; its
            -- work, if unfinished, goes to a job now, which the sweeper watches. This sees only
            -- rows committed before the statement began, so never one `ins` just wrote. (On a
            -- partitioned table RETURNING cannot read xmax, which told the two apart in one pass.)
            UPDATE {deliveries} d SET watched = d.status IN ", unfinished!(), "
              FROM u
             WHERE d.event_id = u.event_id AND d.webhook_id = u.webhook_id AND d.occurred_at = u.occurred_at
               -- Rows `ins` wrote are not looked for: on the usual, first copy, none are.
               AND NOT EXISTS (SELECT 1 FROM ins WHERE ins.event_id = u.event_id AND ins.webhook_id = u.webhook_id)
            RETURNING d.*
        )
        SELECT ", record_columns!(), ", true AS created FROM ins d JOIN webhooks w ON w.id = d.webhook_id
        UNION ALL
        SELECT ", record_columns!(), ", false FROM old d JOIN webhooks w ON w.id = d.webhook_id"
    );
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
    let mut holds: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(rows);
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
    let mut included = HashSet::with_capacity(batch.len());
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
            holds.push(d.hold_until);
        }
    }
    let partition = partitions::day_of("deliveries", &occurred);
    let client = pool.get().await?;
    // Typed and unnamed: sent with its parameters in one round trip and planned anew for each
    // batch, knowing its length; a cached generic plan, made without it, can pick a sequential
    // scan of `deliveries` that grows with the table.
    let found = on_partition(
        &client,
        SQL,
        partition,
        &[
            (&ids, Type::UUID_ARRAY),
            (&event_ids, Type::TEXT_ARRAY),
            (&webhook_ids, Type::INT8_ARRAY),
            (&namespaces, Type::TEXT_ARRAY),
            (&repositories, Type::TEXT_ARRAY),
            (&tags, Type::TEXT_ARRAY),
            (&digests, Type::TEXT_ARRAY),
            (&statuses, Type::TEXT_ARRAY),
            (&errors, Type::TEXT_ARRAY),
            (&bodies, Type::TEXT_ARRAY),
            (&occurred, Type::TIMESTAMPTZ_ARRAY),
            (&claims, Type::BOOL_ARRAY),
            (&lease.seconds(), Type::FLOAT8),
            (&holds, Type::TIMESTAMPTZ_ARRAY),
        ],
    )
    .await?;
    let mut by_event: HashMap<String, Vec<Recorded>> = HashMap::new();
    for row in &found {
        let recorded = Recorded {
            record: record(row)?,
            created: row.try_get("created")?,
        };
        by_event
            .entry(recorded.record.event_id.clone())
            .or_default()
            .push(recorded);
    }
    // An event twice in one batch (the broker redelivered it meanwhile): only the first copy may
    // treat the rows as its own; the second finishes them as a repeat.
    let mut out: Vec<Vec<Recorded>> = Vec::with_capacity(batch.len());
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, e) in batch.iter().enumerate() {
        let event_id = e.event.event_id.as_str();
        if let Some(rows) = by_event.remove(event_id) {
            first.insert(event_id, i);
            out.push(rows);
        } else if let Some(&j) = first.get(event_id) {
            let repeat = out[j]
                .iter()
                .map(|r| Recorded {
                    record: r.record.clone(),
                    created: false,
                })
                .collect();
            out.push(repeat);
        } else {
            out.push(Vec::new());
        }
    }
    Ok(out)
}

/// A delivery claimed for one attempt, with what the attempt needs.
#[derive(Clone)]
pub struct ClaimedDelivery {
    pub record: DeliveryRecord,
    pub url: String,
    pub secrets: super::Secrets,
    pub request_body: Option<String>,
}

// By hand, so that neither the secret nor the URL's query string can reach a log line.
impl std::fmt::Debug for ClaimedDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedDelivery")
            .field("record", &self.record)
            .field("url", &crate::redact::redact_url(&self.url))
            .field("secrets", &self.secrets)
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
    /// Its webhook is disabled: the delivery ends without a request (see [`end_disabled`]).
    Disabled(DeliveryRecord),
}

/// One HTTP attempt, as recorded.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    pub http_status: Option<i32>,
    pub error: Option<AttemptError>,
    /// The cause behind `error`, in words (`connection refused`).
    pub error_detail: Option<String>,
    pub response_body: Option<String>,
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Claims attempt `attempt` of a delivery for the lease, so that two copies of one job never
/// both send it.
pub async fn claim(pool: &Pool, id: Uuid, attempt: i32, lease: Lease) -> Result<Claim, StoreError> {
    const CLAIM: &str = concat!(
        "UPDATE deliveries d SET lease_until = now() + make_interval(secs => $3)
           FROM webhooks w
          WHERE d.id = $1 AND d.occurred_at >= $4 AND d.occurred_at < $5
            AND w.id = d.webhook_id AND d.attempts = $2 - 1 AND w.enabled
            AND d.status IN ",
        unfinished!(),
        "
            AND (d.lease_until IS NULL OR d.lease_until < now())
          RETURNING ",
        record_columns!(),
        ", w.url, w.secret, w.previous_secret, w.previous_secret_expires_at, d.request_body"
    );
    const CURRENT: &str = concat!(
        "SELECT ",
        record_columns!(),
        ", d.lease_until, coalesce(d.lease_until >= now(), false) AS leased, w.enabled FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
          WHERE d.id = $1 AND d.occurred_at >= $2 AND d.occurred_at < $3"
    );
    let (from, to) = span(id);
    let client = pool.get().await?;
    let statement = client.prepare_cached(CLAIM).await?;
    if let Some(row) = client
        .query_opt(&statement, &[&id, &attempt, &lease.seconds(), &from, &to])
        .await?
    {
        return Ok(Claim::Claimed(Box::new(ClaimedDelivery {
            record: record(&row)?,
            url: row.try_get("url")?,
            secrets: super::Secrets::from_row(&row)?,
            request_body: row.try_get("request_body")?,
        })));
    }
    let statement = client.prepare_cached(CURRENT).await?;
    let Some(row) = client.query_opt(&statement, &[&id, &from, &to]).await? else {
        return Ok(Claim::Gone);
    };
    let current = record(&row)?;
    Ok(if current.status.is_final() {
        Claim::Final(current)
    } else if current.attempts >= attempt {
        Claim::AlreadyAttempted(current)
    } else if !row.try_get::<_, bool>("enabled")? && !row.try_get::<_, bool>("leased")? {
        Claim::Disabled(current)
    } else {
        // The only reason left for the update to match nothing is a live lease.
        let until: Option<DateTime<Utc>> = row.try_get("lease_until")?;
        Claim::Leased {
            until: until.unwrap_or_else(Utc::now),
        }
    })
}

/// Ends an unfinished delivery whose webhook is disabled: `failed` with error
/// `webhook_disabled`, no attempt made or counted. The last attempt's HTTP status, if there was
/// one, stays. `None` when it is no longer waiting for attempt `attempt`.
pub async fn end_disabled(
    pool: &Pool,
    id: Uuid,
    attempt: i32,
) -> Result<Option<DeliveryRecord>, StoreError> {
    const SQL: &str = concat!(
        "WITH d AS (
            UPDATE deliveries SET status = 'failed', error = 'webhook_disabled', next_attempt_at = NULL,
                   lease_until = NULL, watched = false, updated_at = now()
             WHERE id = $1 AND occurred_at >= $3 AND occurred_at < $4 AND attempts = $2 - 1 AND status IN ",
        unfinished!(),
        " AND (lease_until IS NULL OR lease_until < now())
            RETURNING *
        )
        SELECT ",
        record_columns!(),
        " FROM d JOIN webhooks w ON w.id = d.webhook_id"
    );
    let client = pool.get().await?;
    let statement = client.prepare_cached(SQL).await?;
    let (from, to) = span(id);
    client
        .query_opt(&statement, &[&id, &attempt, &from, &to])
        .await?
        .map(|row| record(&row))
        .transpose()
}

/// Notes that attempt `attempt` of a delivery waits on in the broker: touched, so the sweeper
/// leaves it be, and, when `next_attempt_at` is given, showing when it is due now. Nothing
/// changes for a delivery that moved on or that another worker holds.
pub async fn postpone(
    pool: &Pool,
    id: Uuid,
    attempt: i32,
    next_attempt_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    const SQL: &str = concat!(
        "UPDATE deliveries SET next_attempt_at = coalesce($3, next_attempt_at), updated_at = now()
          WHERE id = $1 AND occurred_at >= $4 AND occurred_at < $5 AND attempts = $2 - 1 AND status IN ",
        unfinished!(),
        " AND (lease_until IS NULL OR lease_until < now())"
    );
    let (from, to) = span(id);
    let client = pool.get().await?;
    let statement = client.prepare_cached(SQL).await?;
    client
        .execute(&statement, &[&id, &attempt, &next_attempt_at, &from, &to])
        .await?;
    Ok(())
}

/// Releases the claim a first attempt took with its insert, for a delivery handed to the
/// delivery queue after all; the sweeper watches it from now on.
pub async fn release(pool: &Pool, id: Uuid) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE deliveries SET lease_until = NULL, watched = true, updated_at = now()
              WHERE id = $1 AND occurred_at >= $2 AND occurred_at < $3 AND attempts = 0 AND status = 'pending'",
        )
        .await?;
    let (from, to) = span(id);
    client.execute(&statement, &[&id, &from, &to]).await?;
    Ok(())
}

/// The webhook of a delivery, for a job queued before jobs named it.
pub async fn webhook_of(pool: &Pool, id: Uuid) -> Result<Option<i64>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT webhook_id FROM deliveries WHERE id = $1 AND occurred_at >= $2 AND occurred_at < $3",
        )
        .await?;
    let (from, to) = span(id);
    Ok(client
        .query_opt(&statement, &[&id, &from, &to])
        .await?
        .map(|row| row.try_get(0))
        .transpose()?)
}

/// Whether an attempt's record was written by this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptRecorded {
    /// `failing` is the webhook's run of failures, given when this attempt failed its delivery.
    Now { failing: Option<Streak> },
    /// Recorded before (the job is a repeat), or its delivery is gone.
    Before,
}

/// Records many attempts, each with its delivery's new state, in one statement, and releases
/// their claims. One answer for each, in order.
pub async fn record_attempts(
    pool: &Pool,
    batch: Vec<(Uuid, NewAttempt)>,
) -> Result<Vec<AttemptRecorded>, StoreError> {
    const SQL: &str = concat!(
        "WITH u AS (
            SELECT * FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::int[], $5::int[], $6::text[],
                                 $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::timestamptz[],
                                 $12::timestamptz[])
                AS u(delivery_id, attempt, started_at, duration_ms, http_status, error, response_body, status, next_attempt_at,
                     error_detail, since, until)
        ), d AS (
            UPDATE {deliveries} AS deliveries SET status = u.status, attempts = u.attempt, http_status = u.http_status, error = u.error,
                   duration_ms = u.duration_ms, next_attempt_at = u.next_attempt_at, lease_until = NULL,
                   watched = u.status IN ", unfinished!(), ", updated_at = now()
              FROM u
             WHERE deliveries.id = u.delivery_id AND deliveries.attempts = u.attempt - 1
               AND deliveries.occurred_at >= u.since AND deliveries.occurred_at < u.until
            RETURNING deliveries.id, deliveries.webhook_id, deliveries.status, deliveries.occurred_at
        ), a AS (
            INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status, error, error_detail,
                                           response_body, occurred_at)
            SELECT u.delivery_id, u.attempt, u.started_at, u.duration_ms, u.http_status, u.error, u.error_detail,
                   u.response_body, d.occurred_at
              FROM u JOIN d ON d.id = u.delivery_id
            ON CONFLICT DO NOTHING
            RETURNING delivery_id
        ), w AS (
            -- Per webhook: did a delivery succeed, how many failed. A success in the batch
            -- outweighs its failures: the endpoint works.
            SELECT webhook_id, bool_or(status = 'succeeded') AS ok,
                   count(*) FILTER (WHERE status = 'failed') AS failed
              FROM d GROUP BY webhook_id
        ), healed AS (
            DELETE FROM webhook_failures f USING w WHERE f.webhook_id = w.webhook_id AND w.ok
        ), failing AS (
            INSERT INTO webhook_failures (webhook_id, since, failed)
            SELECT webhook_id, now(), failed FROM w WHERE NOT ok AND failed > 0
            ON CONFLICT (webhook_id) DO UPDATE SET failed = webhook_failures.failed + EXCLUDED.failed
            RETURNING webhook_id, since, failed
        )
        SELECT a.delivery_id, f.since, f.failed
          FROM a JOIN d ON d.id = a.delivery_id
          LEFT JOIN failing f ON f.webhook_id = d.webhook_id AND d.status = 'failed'"
    );
    let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
    let attempts: Vec<i32> = batch.iter().map(|(_, a)| a.attempt).collect();
    let started: Vec<DateTime<Utc>> = batch.iter().map(|(_, a)| a.started_at).collect();
    let durations: Vec<i32> = batch.iter().map(|(_, a)| millis(a.duration)).collect();
    let http: Vec<Option<i32>> = batch.iter().map(|(_, a)| a.http_status).collect();
    let errors: Vec<Option<&str>> = batch
        .iter()
        .map(|(_, a)| a.error.map(AttemptError::as_str))
        .collect();
    let bodies: Vec<Option<&str>> = batch
        .iter()
        .map(|(_, a)| a.response_body.as_deref())
        .collect();
    let statuses: Vec<&str> = batch.iter().map(|(_, a)| a.status.as_str()).collect();
    let next: Vec<Option<DateTime<Utc>>> = batch.iter().map(|(_, a)| a.next_attempt_at).collect();
    let details: Vec<Option<&str>> = batch
        .iter()
        .map(|(_, a)| a.error_detail.as_deref())
        .collect();
    let (since, until): (Vec<_>, Vec<_>) = ids.iter().map(|id| span(*id)).unzip();
    // Ids without a time (made before ids carried the event's) go to the parent.
    let partition = ids
        .iter()
        .map(|id| crate::model::delivery_time(*id))
        .collect::<Option<Vec<_>>>()
        .and_then(|times| partitions::day_of("deliveries", &times));
    let client = pool.get().await?;
    // Typed and unnamed, as in record_decisions.
    let rows = on_partition(
        &client,
        SQL,
        partition,
        &[
            (&ids, Type::UUID_ARRAY),
            (&attempts, Type::INT4_ARRAY),
            (&started, Type::TIMESTAMPTZ_ARRAY),
            (&durations, Type::INT4_ARRAY),
            (&http, Type::INT4_ARRAY),
            (&errors, Type::TEXT_ARRAY),
            (&bodies, Type::TEXT_ARRAY),
            (&statuses, Type::TEXT_ARRAY),
            (&next, Type::TIMESTAMPTZ_ARRAY),
            (&details, Type::TEXT_ARRAY),
            (&since, Type::TIMESTAMPTZ_ARRAY),
            (&until, Type::TIMESTAMPTZ_ARRAY),
        ],
    )
    .await?;
    let mut recorded: HashMap<Uuid, Option<Streak>> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let since: Option<DateTime<Utc>> = row.try_get(1)?;
        let failed: Option<i64> = row.try_get(2)?;
        let streak = since
            .zip(failed)
            .map(|(since, failed)| Streak { since, failed });
        recorded.insert(row.try_get(0)?, streak);
    }
    Ok(ids
        .iter()
        .map(|id| match recorded.get(id) {
            Some(failing) => AttemptRecorded::Now { failing: *failing },
            None => AttemptRecorded::Before,
        })
        .collect())
}

/// Finds up to `limit` unfinished deliveries that are overdue by `overdue` and not claimed,
/// touches them (so no other replica takes them for another `overdue`), and hands their
/// `(id, attempts)` to `requeue`; commits only if it succeeds. Returns how many there were.
pub async fn requeue_overdue<F, Fut, E>(
    pool: &Pool,
    overdue: Duration,
    limit: i64,
    requeue: F,
) -> Result<usize, E>
where
    F: FnOnce(Vec<(Uuid, i32)>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: From<StoreError>,
{
    const SQL: &str = concat!(
        "UPDATE deliveries SET updated_at = now()
          WHERE (id, occurred_at) IN (
                SELECT id, occurred_at FROM deliveries
                 WHERE watched AND status IN ",
        unfinished!(),
        "
                   -- The index `deliveries_due`: the scan ends at the first delivery not yet due.
                   AND coalesce(next_attempt_at, created_at) < now() - make_interval(secs => $1)
                   AND updated_at < now() - make_interval(secs => $1)
                   AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY coalesce(next_attempt_at, created_at)
                 LIMIT $2
                   FOR UPDATE SKIP LOCKED)
          RETURNING id, attempts"
    );
    let mut client = pool.get().await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let rows = tx
        .query(SQL, &[&overdue.as_secs_f64(), &limit])
        .await
        .map_err(StoreError::from)?;
    let found = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<Vec<(Uuid, i32)>, tokio_postgres::Error>>()
        .map_err(StoreError::from)?;
    let n = found.len();
    if n == 0 {
        return Ok(0);
    }
    requeue(found).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(n)
}
