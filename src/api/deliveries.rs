//! Access records: a webhook's or a repository's, page by page; one with its attempts; and
//! another attempt, of one (redeliver) or of every failed one in a time range (recover).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Reader, Writer};
use super::cursor::{self, Cursor};
use super::problem::{ApiError, Problem};
use super::webhooks::{RepositoryPath, check_repository};
use super::{ApiState, Body, PathOf, QueryOf, page_limit, page_start};
use crate::model::DeliveryStatus;
use crate::store::admin::{
    self, AttemptRow, DeliveryRow, NotReopened, RecordFilter, RecordsOf, Reopen, ReopenError,
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecordQuery {
    pub status: Option<DeliveryStatus>,
    /// Only records of this image tag.
    pub tag: Option<String>,
    /// Only records created at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<DateTime<Utc>>,
    /// Only records created before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<DateTime<Utc>>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// A page of access records, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPage {
    pub data: Vec<DeliveryRow>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// One access record, with the body sent and each attempt.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    #[serde(flatten)]
    pub record: DeliveryRow,
    /// Exactly what was sent (null when nothing was: not triggered, or a rule that cannot be used).
    pub request_body: Option<String>,
    /// Every attempt, first to last.
    pub attempt_log: Vec<AttemptRow>,
}

/// Which failed deliveries to attempt again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverRange {
    #[schema(value_type = String, format = DateTime)]
    pub since: DateTime<Utc>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub until: Option<DateTime<Utc>>,
}

/// How many deliveries were queued for another attempt.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Queued {
    pub queued: usize,
}

async fn page(
    state: &ApiState,
    of: RecordsOf<'_>,
    query: RecordQuery,
) -> Result<DeliveryPage, ApiError> {
    let limit = page_limit(query.limit)?;
    let before = page_start(query.cursor.as_deref(), |c| match c {
        Cursor::Delivery(at, id) => Some((at, id)),
        _ => None,
    })?;
    if let (Some(since), Some(until)) = (query.since, query.until)
        && until < since
    {
        return Err(ApiError::invalid("until", "must not be before since"));
    }
    let filter = RecordFilter {
        status: query.status,
        tag: query.tag,
        since: query.since,
        until: query.until,
        before,
    };
    let mut rows = admin::list_deliveries(&state.pool, of, &filter, limit + 1).await?;
    let next_cursor = cursor::cut(&mut rows, limit, |r| Cursor::Delivery(r.created_at, r.id));
    Ok(DeliveryPage {
        data: rows,
        next_cursor,
    })
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "access records",
    params(("id" = i64, Path), RecordQuery),
    responses(
        (status = 200, body = DeliveryPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn of_webhook(
    State(state): State<ApiState>,
    _who: Reader,
    PathOf(id): PathOf<i64>,
    QueryOf(query): QueryOf<RecordQuery>,
) -> Result<axum::Json<DeliveryPage>, ApiError> {
    if admin::get_webhook(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no webhook has id {id}")));
    }
    Ok(axum::Json(
        page(&state, RecordsOf::Webhook(id), query).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/repositories/{namespace}/{repository}/deliveries", tag = "access records",
    params(RepositoryPath, RecordQuery),
    responses(
        (status = 200, body = DeliveryPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn of_repository(
    State(state): State<ApiState>,
    _who: Reader,
    PathOf(path): PathOf<RepositoryPath>,
    QueryOf(query): QueryOf<RecordQuery>,
) -> Result<axum::Json<DeliveryPage>, ApiError> {
    check_repository(&path)?;
    let of = RecordsOf::Repository {
        namespace: &path.0,
        repository: &path.1,
    };
    Ok(axum::Json(page(&state, of, query).await?))
}

#[utoipa::path(get, path = "/api/v1/deliveries/{id}", tag = "access records",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Delivery),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<ApiState>,
    _who: Reader,
    PathOf(id): PathOf<Uuid>,
) -> Result<axum::Json<Delivery>, ApiError> {
    let detail = admin::get_delivery(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no access record has id {id}")))?;
    Ok(axum::Json(Delivery {
        record: detail.record,
        request_body: detail.request_body,
        attempt_log: detail.attempts,
    }))
}

/// Opens deliveries again and publishes their jobs.
async fn reopen(state: &ApiState, which: Reopen) -> Result<Result<usize, NotReopened>, ApiError> {
    let publisher = state.publisher.borrow().clone().ok_or_else(|| {
        ApiError::Unavailable(
            "RabbitMQ is not connected: nothing can be queued now; try again".into(),
        )
    })?;
    let queued = admin::reopen(&state.pool, which, |jobs| async move {
        publisher.jobs_now(jobs).await
    })
    .await;
    match queued {
        Ok(outcome) => Ok(outcome),
        Err(ReopenError::Store(e)) => Err(e.into()),
        // Opened in the database, which is the record of what is left to do: the sweeper
        // publishes the jobs the broker did not take.
        Err(ReopenError::Queue { opened, error }) => {
            tracing::warn!(error = %error, opened, "RabbitMQ did not take the jobs of reopened deliveries; the sweeper will queue them");
            Ok(Ok(opened))
        }
    }
}

#[utoipa::path(post, path = "/api/v1/deliveries/{id}/redeliver", tag = "access records",
    params(("id" = Uuid, Path)),
    responses(
        (status = 202, body = Queued, description = "the next attempt is queued: same webhook-id, same body"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn redeliver(
    State(state): State<ApiState>,
    who: Writer,
    PathOf(id): PathOf<Uuid>,
) -> Result<(StatusCode, axum::Json<Queued>), ApiError> {
    let queued = match reopen(&state, Reopen::One(id)).await? {
        Ok(n) => n,
        Err(NotReopened::NotFound) => {
            return Err(ApiError::NotFound(format!("no access record has id {id}")));
        }
        Err(NotReopened::NotTriggered) => {
            return Err(ApiError::Conflict(
                "the webhook did not fire for this event: there is nothing to deliver".into(),
            ));
        }
        Err(NotReopened::InProgress) => {
            return Err(ApiError::Conflict(
                "the delivery is still being attempted: wait until it succeeds or fails".into(),
            ));
        }
        Err(NotReopened::NothingSent) => {
            return Err(ApiError::Conflict(
                "the webhook's rule could not be used, so no request was ever made to repeat"
                    .into(),
            ));
        }
    };
    tracing::info!(token = %who.name, action = "delivery.redeliver", delivery_id = %id, "admin API write");
    Ok((StatusCode::ACCEPTED, axum::Json(Queued { queued })))
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/recover", tag = "access records",
    params(("id" = i64, Path)),
    request_body = RecoverRange,
    responses(
        (status = 202, body = Queued, description = "every failed delivery of the range is queued for another attempt"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn recover(
    State(state): State<ApiState>,
    who: Writer,
    PathOf(id): PathOf<i64>,
    Body(range): Body<RecoverRange>,
) -> Result<(StatusCode, axum::Json<Queued>), ApiError> {
    if range.until.is_some_and(|until| until < range.since) {
        return Err(ApiError::invalid("until", "must not be before since"));
    }
    if admin::get_webhook(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no webhook has id {id}")));
    }
    let which = Reopen::Failed {
        webhook_id: id,
        since: range.since,
        until: range.until,
    };
    // Failed deliveries only: never NotReopened.
    let queued = reopen(&state, which).await?.unwrap_or(0);
    tracing::info!(token = %who.name, action = "webhook.recover", webhook_id = id, queued, "admin API write");
    Ok((StatusCode::ACCEPTED, axum::Json(Queued { queued })))
}
