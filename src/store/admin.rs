//! The admin API's SQL (contract section 12): webhooks written and read whole, access records
//! listed page by page, and deliveries opened again for another attempt.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Pool, SECRET_COLUMNS, Secrets, StoreError, millis, span};
use crate::model::{DeliveryStatus, utc_millis};

/// A webhook row as the API shows it: its secret only as whether it has one.
#[derive(Debug, Clone)]
pub struct WebhookRow {
    pub id: i64,
    pub namespace: String,
    pub repository: String,
    pub name: String,
    pub url: String,
    pub trigger_type: String,
    pub trigger_expression: Option<String>,
    pub trigger_tags: Option<Vec<String>>,
    pub has_secret: bool,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const WEBHOOK_COLUMNS: &str = "id, namespace, repository, name, url, trigger_type, trigger_expression, \
     trigger_tags, secret IS NOT NULL AS has_secret, enabled, disabled_reason, created_at, updated_at";

impl WebhookRow {
    fn from_row(row: &Row) -> Result<WebhookRow, StoreError> {
        Ok(WebhookRow {
            id: row.try_get("id")?,
            namespace: row.try_get("namespace")?,
            repository: row.try_get("repository")?,
            name: row.try_get("name")?,
            url: row.try_get("url")?,
            trigger_type: row.try_get("trigger_type")?,
            trigger_expression: row.try_get("trigger_expression")?,
            trigger_tags: row.try_get("trigger_tags")?,
            has_secret: row.try_get("has_secret")?,
            enabled: row.try_get("enabled")?,
            disabled_reason: row.try_get("disabled_reason")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// A rule as its columns hold it: `(trigger_type, trigger_expression, trigger_tags)`.
pub type TriggerColumns<'a> = (&'a str, Option<&'a str>, Option<&'a [String]>);

/// Every field of a webhook the API writes.
#[derive(Clone, Copy)]
pub struct WebhookFields<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub trigger: TriggerColumns<'a>,
    pub enabled: bool,
}

/// What becomes of the secret on an update.
#[derive(Clone, Copy)]
pub enum SecretChange<'a> {
    Keep,
    Set(&'a str),
    Remove,
}

/// Why a webhook write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the repository has a webhook of that name already")]
    NameTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn write_error(e: tokio_postgres::Error) -> WriteError {
    let e = StoreError::from(e);
    if e.violated_constraint() == Some("webhooks_name_unique") {
        WriteError::NameTaken
    } else {
        WriteError::Store(e)
    }
}

/// A repository's webhooks, newest first, after the webhook `before` when given.
pub async fn list_webhooks(
    pool: &Pool,
    namespace: &str,
    repository: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<WebhookRow>, StoreError> {
    let client = pool.get().await?;
    let sql = format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks
          WHERE namespace = $1 AND repository = $2 AND ($3::bigint IS NULL OR id < $3)
          ORDER BY id DESC LIMIT $4"
    );
    let rows = client
        .query(&sql, &[&namespace, &repository, &before, &limit])
        .await?;
    rows.iter().map(WebhookRow::from_row).collect()
}

/// A repository that has webhooks, with how many and how many are enabled.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RepositoryRow {
    pub namespace: String,
    pub repository: String,
    pub webhooks: i64,
    pub enabled: i64,
}

/// Repositories with webhooks in name order, after `after` when given: one range of the
/// `webhooks_name_unique` index, grouped as it is read.
pub async fn list_repositories(
    pool: &Pool,
    after: Option<(&str, &str)>,
    limit: i64,
) -> Result<Vec<RepositoryRow>, StoreError> {
    let client = pool.get().await?;
    let (namespace, repository) = after.unzip();
    let rows = client
        .query(
            "SELECT namespace, repository, count(*) AS webhooks,
                    count(*) FILTER (WHERE enabled) AS enabled
               FROM webhooks
              WHERE $1::text IS NULL OR (namespace, repository) > ($1, $2::text)
              GROUP BY namespace, repository
              ORDER BY namespace, repository
              LIMIT $3",
            &[&namespace, &repository, &limit],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(RepositoryRow {
                namespace: row.try_get("namespace")?,
                repository: row.try_get("repository")?,
                webhooks: row.try_get("webhooks")?,
                enabled: row.try_get("enabled")?,
            })
        })
        .collect()
}

pub async fn get_webhook(pool: &Pool, id: i64) -> Result<Option<WebhookRow>, StoreError> {
    let client = pool.get().await?;
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1");
    let row = client.query_opt(&sql, &[&id]).await?;
    row.as_ref().map(WebhookRow::from_row).transpose()
}

pub async fn create_webhook(
    pool: &Pool,
    namespace: &str,
    repository: &str,
    fields: WebhookFields<'_>,
    secret: Option<&str>,
) -> Result<WebhookRow, WriteError> {
    let client = pool.get().await?;
    let sql = format!(
        "INSERT INTO webhooks (namespace, repository, name, url, trigger_type, trigger_expression,
                               trigger_tags, enabled, secret)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {WEBHOOK_COLUMNS}"
    );
    let row = client
        .query_one(
            &sql,
            &[
                &namespace,
                &repository,
                &fields.name,
                &fields.url,
                &fields.trigger.0,
                &fields.trigger.1,
                &fields.trigger.2,
                &fields.enabled,
                &secret,
            ],
        )
        .await
        .map_err(write_error)?;
    Ok(WebhookRow::from_row(&row)?)
}

/// A change to a webhook: the fields that are `Some` replace what is there.
#[derive(Clone, Copy, Default)]
pub struct WebhookPatch<'a> {
    pub name: Option<&'a str>,
    pub url: Option<&'a str>,
    /// Replaced together.
    pub trigger: Option<TriggerColumns<'a>>,
    pub enabled: Option<bool>,
}

/// Applies a change in one statement, so that a concurrent change to other fields is kept;
/// `enabled` set to true clears why tagcast disabled it. `None` if there is no such webhook.
pub async fn update_webhook(
    pool: &Pool,
    id: i64,
    patch: WebhookPatch<'_>,
    secret: SecretChange<'_>,
) -> Result<Option<WebhookRow>, WriteError> {
    let client = pool.get().await?;
    let (keep, new_secret) = match secret {
        SecretChange::Keep => (true, None),
        SecretChange::Set(s) => (false, Some(s)),
        SecretChange::Remove => (false, None),
    };
    let (trigger_type, trigger_expression, trigger_tags) = match patch.trigger {
        Some((kind, expression, tags)) => (Some(kind), expression, tags),
        None => (None, None, None),
    };
    let sql = format!(
        "UPDATE webhooks SET name = coalesce($2, name), url = coalesce($3, url),
                trigger_type = coalesce($4, trigger_type),
                trigger_expression = CASE WHEN $4::text IS NULL THEN trigger_expression ELSE $5 END,
                trigger_tags = CASE WHEN $4::text IS NULL THEN trigger_tags ELSE $6 END,
                enabled = coalesce($7, enabled),
                disabled_reason = CASE WHEN $7 THEN NULL ELSE disabled_reason END,
                disabled_at = CASE WHEN $7 THEN NULL ELSE disabled_at END,
                secret = CASE WHEN $8 THEN secret ELSE $9 END,
                previous_secret = CASE WHEN $8 THEN previous_secret END,
                previous_secret_expires_at = CASE WHEN $8 THEN previous_secret_expires_at END,
                updated_at = now()
          WHERE id = $1 RETURNING {WEBHOOK_COLUMNS}"
    );
    let row = client
        .query_opt(
            &sql,
            &[
                &id,
                &patch.name,
                &patch.url,
                &trigger_type,
                &trigger_expression,
                &trigger_tags,
                &patch.enabled,
                &keep,
                &new_secret,
            ],
        )
        .await
        .map_err(write_error)?;
    Ok(row.as_ref().map(WebhookRow::from_row).transpose()?)
}

/// Deletes a webhook and, by cascade, its access records. False if there was none.
pub async fn delete_webhook(pool: &Pool, id: i64) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    Ok(client
        .execute("DELETE FROM webhooks WHERE id = $1", &[&id])
        .await?
        > 0)
}

/// Puts `secret` in place; the one it replaces keeps signing until `grace` has passed. Returns
/// when the old one stops signing (`None`: there was none), or `None` outside if no webhook.
pub async fn rotate_secret(
    pool: &Pool,
    id: i64,
    secret: &str,
    grace: Duration,
) -> Result<Option<Option<DateTime<Utc>>>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "UPDATE webhooks SET previous_secret = secret,
                    previous_secret_expires_at = CASE WHEN secret IS NULL THEN NULL
                                                      ELSE now() + make_interval(secs => $3) END,
                    secret = $2, updated_at = now()
              WHERE id = $1 RETURNING previous_secret_expires_at",
            &[&id, &secret, &grace.as_secs_f64()],
        )
        .await?;
    row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
}

/// A webhook with what signing it needs.
pub struct SigningWebhook {
    pub row: WebhookRow,
    pub secrets: Secrets,
}

pub async fn signing_webhook(pool: &Pool, id: i64) -> Result<Option<SigningWebhook>, StoreError> {
    let client = pool.get().await?;
    let sql = format!("SELECT {WEBHOOK_COLUMNS}, {SECRET_COLUMNS} FROM webhooks w WHERE w.id = $1");
    let Some(row) = client.query_opt(&sql, &[&id]).await? else {
        return Ok(None);
    };
    Ok(Some(SigningWebhook {
        row: WebhookRow::from_row(&row)?,
        secrets: Secrets::from_row(&row)?,
    }))
}

/// Drops the replaced secrets whose grace is over. Asks first, so that a sweep with nothing to
/// drop writes nothing (a write would make every worker reload its webhooks).
pub async fn drop_expired_secrets(pool: &Pool) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    let any: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM webhooks WHERE previous_secret_expires_at <= now())",
            &[],
        )
        .await?
        .try_get(0)?;
    if !any {
        return Ok(0);
    }
    Ok(client
        .execute(
            "UPDATE webhooks SET previous_secret = NULL, previous_secret_expires_at = NULL
              WHERE previous_secret_expires_at <= now()",
            &[],
        )
        .await?)
}

/// The body last sent for a repository by the pipeline (tests left out), if any.
pub async fn latest_body(
    pool: &Pool,
    namespace: &str,
    repository: &str,
) -> Result<Option<String>, StoreError> {
    let client = pool.get().await?;
    // Newest first along `deliveries_repository_newest`: the scan stops at the first body.
    let row = client
        .query_opt(
            "SELECT request_body FROM deliveries
              WHERE namespace = $1 AND repository = $2 AND request_body IS NOT NULL
                AND event_id NOT LIKE 'test-%'
              ORDER BY created_at DESC, id DESC LIMIT 1",
            &[&namespace, &repository],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// One attempt made outside the pipeline (a test), recorded as a finished access record.
pub struct TestRecord<'a> {
    pub id: Uuid,
    pub event_id: &'a str,
    pub webhook: &'a WebhookRow,
    pub tag: &'a str,
    pub digest: &'a str,
    pub body: &'a str,
    pub status: DeliveryStatus,
    /// The made-up event's time, which its id carries.
    pub occurred_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    pub http_status: Option<i32>,
    pub error: Option<&'a str>,
    pub error_detail: Option<&'a str>,
    pub response_body: Option<&'a str>,
}

pub async fn record_test(pool: &Pool, test: &TestRecord<'_>) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let duration_ms = millis(test.duration);
    client
        .execute(
            "WITH d AS (
                INSERT INTO deliveries (id, event_id, webhook_id, namespace, repository, tag, digest, status,
                                        attempts, http_status, error, request_body, occurred_at, duration_ms,
                                        watched)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10, $11, $16, $13, false)
                RETURNING id, occurred_at
            )
            INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status, error,
                                           error_detail, response_body, occurred_at)
            SELECT id, 1, $12, $13, $9, $10, $14, $15, occurred_at FROM d",
            &[
                &test.id,
                &test.event_id,
                &test.webhook.id,
                &test.webhook.namespace,
                &test.webhook.repository,
                &test.tag,
                &test.digest,
                &test.status.as_str(),
                &test.http_status,
                &test.error,
                &test.body,
                &test.started_at,
                &duration_ms,
                &test.error_detail,
                &test.response_body,
                &test.occurred_at,
            ],
        )
        .await?;
    Ok(())
}

/// An access record as the API lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryRow {
    /// The delivery's id: the `webhook-id` header of its requests.
    pub id: Uuid,
    pub event_id: String,
    pub webhook_id: i64,
    pub webhook_name: String,
    pub namespace: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: i32,
    /// Of the last attempt.
    pub http_status: Option<i32>,
    /// Of the last attempt (`timeout`, `connect`, `blocked_address`, ...).
    pub error: Option<String>,
    #[serde(with = "utc_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(with = "utc_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "utc_millis::option::serialize")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, d.webhook_id, w.name AS webhook_name, d.namespace, \
     d.repository, d.tag, d.digest, d.status, d.attempts, d.http_status, d.error, d.created_at, \
     d.updated_at, d.next_attempt_at";

impl DeliveryRow {
    fn from_row(row: &Row) -> Result<DeliveryRow, StoreError> {
        Ok(DeliveryRow {
            id: row.try_get("id")?,
            event_id: row.try_get("event_id")?,
            webhook_id: row.try_get("webhook_id")?,
            webhook_name: row.try_get("webhook_name")?,
            namespace: row.try_get("namespace")?,
            repository: row.try_get("repository")?,
            tag: row.try_get("tag")?,
            digest: row.try_get("digest")?,
            status: super::deliveries::status(row)?,
            attempts: row.try_get("attempts")?,
            http_status: row.try_get("http_status")?,
            error: row.try_get("error")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
        })
    }
}

/// One HTTP attempt of a delivery, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptRow {
    pub attempt: i32,
    #[serde(with = "utc_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    /// The cause behind `error`, in words (`connection refused`).
    pub error_detail: Option<String>,
    /// The first 4 KiB of the response.
    pub response_body: Option<String>,
}

/// Whose access records.
#[derive(Debug, Clone, Copy)]
pub enum RecordsOf<'a> {
    Webhook(i64),
    Repository {
        namespace: &'a str,
        repository: &'a str,
    },
}

/// Which of them.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    pub status: Option<DeliveryStatus>,
    pub tag: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// After this (created_at, id), newest first.
    pub before: Option<(DateTime<Utc>, Uuid)>,
}

/// A page of access records, newest first: one range of `deliveries_webhook_newest` or
/// `deliveries_repository_newest`, read from the cursor on.
pub async fn list_deliveries(
    pool: &Pool,
    of: RecordsOf<'_>,
    filter: &RecordFilter,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let rows = listing(pool, of, filter, limit, "").await?;
    rows.iter().map(DeliveryRow::from_row).collect()
}

/// The plan of that page's query as PostgreSQL ran it (`EXPLAIN (ANALYZE, BUFFERS)`), line by
/// line: for showing that a page reads an index range, not the table.
pub async fn explain_deliveries(
    pool: &Pool,
    of: RecordsOf<'_>,
    filter: &RecordFilter,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let rows = listing(pool, of, filter, limit, "EXPLAIN (ANALYZE, BUFFERS) ").await?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(StoreError::from))
        .collect()
}

async fn listing(
    pool: &Pool,
    of: RecordsOf<'_>,
    filter: &RecordFilter,
    limit: i64,
    explain: &str,
) -> Result<Vec<Row>, StoreError> {
    let status = filter.status.map(DeliveryStatus::as_str);
    let (before_at, before_id) = filter.before.unzip();
    let common = "($1::text IS NULL OR d.status = $1)
                  AND ($2::text IS NULL OR d.tag = $2)
                  AND ($3::timestamptz IS NULL OR d.created_at >= $3)
                  AND ($4::timestamptz IS NULL OR d.created_at < $4)
                  AND ($5::timestamptz IS NULL OR (d.created_at, d.id) < ($5, $6))";
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
        (&status, Type::TEXT),
        (&filter.tag, Type::TEXT),
        (&filter.since, Type::TIMESTAMPTZ),
        (&filter.until, Type::TIMESTAMPTZ),
        (&before_at, Type::TIMESTAMPTZ),
        (&before_id, Type::UUID),
        (&limit, Type::INT8),
    ];
    let sql = match of {
        RecordsOf::Webhook(ref id) => {
            params.push((id, Type::INT8));
            format!(
                "{explain}SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
                  WHERE d.webhook_id = $8 AND {common}
                  ORDER BY d.created_at DESC, d.id DESC LIMIT $7"
            )
        }
        RecordsOf::Repository {
            ref namespace,
            ref repository,
        } => {
            params.push((namespace, Type::TEXT));
            params.push((repository, Type::TEXT));
            format!(
                "{explain}SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
                  WHERE d.namespace = $8 AND d.repository = $9 AND {common}
                  ORDER BY d.created_at DESC, d.id DESC LIMIT $7"
            )
        }
    };
    let client = pool.get().await?;
    // Typed and unnamed: planned for these values, so the filters that are not set fold away
    // and the plan is one index range.
    Ok(client.query_typed(&sql, &params).await?)
}

/// One access record with the body sent and every attempt.
pub struct DeliveryDetail {
    pub record: DeliveryRow,
    pub request_body: Option<String>,
    pub attempts: Vec<AttemptRow>,
}

pub async fn get_delivery(pool: &Pool, id: Uuid) -> Result<Option<DeliveryDetail>, StoreError> {
    let client = pool.get().await?;
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS}, d.request_body, d.occurred_at FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
          WHERE d.id = $1 AND d.occurred_at >= $2 AND d.occurred_at < $3"
    );
    let (from, to) = span(id);
    let Some(row) = client.query_opt(&sql, &[&id, &from, &to]).await? else {
        return Ok(None);
    };
    let attempts = client
        .query(
            "SELECT attempt, started_at, duration_ms, http_status, error, error_detail, response_body
               FROM delivery_attempts WHERE delivery_id = $1 AND occurred_at = $2 ORDER BY attempt",
            &[&id, &row.try_get::<_, DateTime<Utc>>("occurred_at")?],
        )
        .await?
        .iter()
        .map(|a| {
            Ok(AttemptRow {
                attempt: a.try_get("attempt")?,
                started_at: a.try_get("started_at")?,
                duration_ms: a.try_get("duration_ms")?,
                http_status: a.try_get("http_status")?,
                error: a.try_get("error")?,
                error_detail: a.try_get("error_detail")?,
                response_body: a.try_get("response_body")?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Some(DeliveryDetail {
        record: DeliveryRow::from_row(&row)?,
        request_body: row.try_get("request_body")?,
        attempts,
    }))
}

/// Which deliveries to attempt again.
#[derive(Debug, Clone, Copy)]
pub enum Reopen {
    /// One, whatever its final status (a `not_triggered` one sent nothing and is refused).
    One(Uuid),
    /// Every `failed` delivery of a webhook created in `[since, until)`.
    Failed {
        webhook_id: i64,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    },
}

/// Why one delivery was not opened again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReopened {
    NotFound,
    /// Its attempts are not over: it is pending or retrying.
    InProgress,
    NotTriggered,
    /// Its rule could not be used: no request was ever made, so there is no body to send.
    NothingSent,
}

#[derive(Debug, thiserror::Error)]
pub enum ReopenError<E> {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What `queue` failed with, after `opened` deliveries were opened: the sweeper will
    /// publish their jobs, as for any job that went missing.
    #[error("{error}")]
    Queue { opened: usize, error: E },
}

/// Opens finished deliveries again: each becomes `pending`, watched by the sweeper, and, once
/// that is committed, `queue` gets `(id, next attempt)` for each to publish its job. The attempt
/// then goes the way of any retry: claimed, signed, recorded.
///
/// The commit comes first because a job consumed before it would find its delivery still
/// final (a claim skips a row whose committed state does not match, rather than waiting for
/// the lock) and be dropped, leaving the delivery to the sweeper. A job lost after the commit
/// is the sweeper's too, so nothing is lost either way.
pub async fn reopen<F, Fut, E>(
    pool: &Pool,
    which: Reopen,
    queue: F,
) -> Result<Result<usize, NotReopened>, ReopenError<E>>
where
    F: FnOnce(Vec<(Uuid, i32)>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    const SET: &str =
        "UPDATE deliveries SET status = 'pending', next_attempt_at = now(), watched = true,
                              lease_until = NULL, updated_at = now()";
    let mut client = pool.get().await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let rows = match which {
        Reopen::One(id) => {
            let (from, to) = span(id);
            let Some(current) = tx
                .query_opt(
                    "SELECT status, request_body IS NOT NULL AS sent, occurred_at FROM deliveries
                      WHERE id = $1 AND occurred_at >= $2 AND occurred_at < $3 FOR UPDATE",
                    &[&id, &from, &to],
                )
                .await
                .map_err(StoreError::from)?
            else {
                return Ok(Err(NotReopened::NotFound));
            };
            let sent: bool = current.try_get("sent").map_err(StoreError::from)?;
            match super::deliveries::status(&current)? {
                DeliveryStatus::NotTriggered => return Ok(Err(NotReopened::NotTriggered)),
                DeliveryStatus::Pending | DeliveryStatus::Retrying => {
                    return Ok(Err(NotReopened::InProgress));
                }
                DeliveryStatus::Succeeded | DeliveryStatus::Failed if !sent => {
                    return Ok(Err(NotReopened::NothingSent));
                }
                DeliveryStatus::Succeeded | DeliveryStatus::Failed => {}
            }
            let occurred_at: DateTime<Utc> =
                current.try_get("occurred_at").map_err(StoreError::from)?;
            tx.query(
                &format!("{SET} WHERE id = $1 AND occurred_at = $2 RETURNING id, attempts"),
                &[&id, &occurred_at],
            )
            .await
        }
        Reopen::Failed {
            webhook_id,
            since,
            until,
        } => {
            tx.query(
                &format!(
                    "{SET} WHERE webhook_id = $1 AND status = 'failed' AND request_body IS NOT NULL
                        AND created_at >= $2 AND ($3::timestamptz IS NULL OR created_at < $3)
                  RETURNING id, attempts"
                ),
                &[&webhook_id, &since, &until],
            )
            .await
        }
    }
    .map_err(StoreError::from)?;
    let jobs = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get::<_, i32>(1)? + 1)))
        .collect::<Result<Vec<(Uuid, i32)>, tokio_postgres::Error>>()
        .map_err(StoreError::from)?;
    let opened = jobs.len();
    tx.commit().await.map_err(StoreError::from)?;
    if opened > 0 {
        queue(jobs)
            .await
            .map_err(|error| ReopenError::Queue { opened, error })?;
    }
    Ok(Ok(opened))
}
