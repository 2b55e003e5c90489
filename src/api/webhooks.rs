//! `/api/v1/.../webhooks`: list, create, read, change, delete, rotate a secret, send a test.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Reader, Writer, random};
use super::cursor::{self, Cursor};
use super::problem::{ApiError, Problem};
use super::validate::{self, FieldError, TriggerRule};
use super::{ApiState, Body, PathOf, QueryOf, page_limit, page_start};
use crate::events::{BuildEvent, Repository};
use crate::model::{DeliveryStatus, delivery_id, utc_millis};
use crate::payload;
use crate::retry::{Verdict, classify};
use crate::store::admin::{
    self, SecretChange, SigningWebhook, TestRecord, WebhookFields, WebhookPatch, WebhookRow,
    WriteError,
};

/// A webhook as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: i64,
    pub namespace: String,
    pub repository: String,
    pub name: String,
    /// Shown whole, query string included: it is the caller's own data.
    pub url: String,
    pub trigger: TriggerRule,
    pub has_secret: bool,
    pub enabled: bool,
    /// Why tagcast disabled it (`gone`, `failing`), or null.
    pub disabled_reason: Option<String>,
    #[serde(with = "utc_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(with = "utc_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
    /// The new secret: only in the answer that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<WebhookRow> for Webhook {
    fn from(row: WebhookRow) -> Webhook {
        Webhook {
            trigger: validate::from_columns(
                &row.trigger_type,
                row.trigger_expression,
                row.trigger_tags,
            ),
            id: row.id,
            namespace: row.namespace,
            repository: row.repository,
            name: row.name,
            url: row.url,
            has_secret: row.has_secret,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            created_at: row.created_at,
            updated_at: row.updated_at,
            secret: None,
        }
    }
}

/// A page of webhooks, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookPage {
    pub data: Vec<Webhook>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A new webhook.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]+$")]
    pub name: String,
    #[schema(max_length = 2048, pattern = "^https?://[^/?#]+")]
    pub url: String,
    /// Default `{"type": "all"}`.
    pub trigger: Option<TriggerRule>,
    /// Default true.
    pub enabled: Option<bool>,
    /// `whsec_` and the base64 of 24 to 64 bytes; or use `generate_secret`.
    pub secret: Option<String>,
    /// Make a secret, returned once in the answer.
    #[serde(default)]
    pub generate_secret: bool,
}

/// A change to a webhook: the fields given replace what is there.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookChange {
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]+$")]
    pub name: Option<String>,
    #[schema(max_length = 2048, pattern = "^https?://[^/?#]+")]
    pub url: Option<String>,
    pub trigger: Option<TriggerRule>,
    /// True enables it again and clears `disabled_reason`.
    pub enabled: Option<bool>,
    /// A new secret, or null to sign no more.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub secret: Option<Option<String>>,
    /// Make a new secret, returned once in the answer.
    #[serde(default)]
    pub generate_secret: bool,
}

/// Tells `"secret": null` (remove it) from a missing `secret` (keep it).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A rotated secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RotatedSecret {
    /// The new secret, shown this once.
    pub secret: String,
    /// Until when the replaced secret signs beside it (null: there was none).
    #[serde(serialize_with = "utc_millis::option::serialize")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

/// What a test notification came to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TestAttempt {
    /// The access record it left (its `event_id` is `test-<uuid>`).
    pub delivery_id: Uuid,
    pub status: DeliveryStatus,
    pub http_status: Option<i32>,
    pub duration_ms: i32,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(names("namespace", "repository"), parameter_in = Path)]
pub struct RepositoryPath(
    #[param(min_length = 1, max_length = 255)] pub String,
    #[param(min_length = 1, max_length = 255)] pub String,
);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the page before.
    pub cursor: Option<String>,
}

fn check(errors: &mut Vec<FieldError>, field: &str, result: Result<(), String>) {
    if let Err(message) = result {
        errors.push(FieldError::new(field, message));
    }
}

/// `secret` (absent, `Some(None)` for null, or a value) beside `generate_secret`: a secret given
/// must be well-formed, and cannot come with a request for one.
fn check_secret(errors: &mut Vec<FieldError>, given: Option<Option<&str>>, generate: bool) {
    match (given, generate) {
        (Some(Some(secret)), generate) => {
            check(errors, "secret", validate::secret(secret));
            if generate {
                errors.push(FieldError::new(
                    "generate_secret",
                    "give a secret or ask for one, not both",
                ));
            }
        }
        (Some(None), true) => errors.push(FieldError::new(
            "generate_secret",
            "remove the secret or ask for a new one, not both",
        )),
        (Some(None), false) | (None, _) => {}
    }
}

/// Namespace and repository: what an event may name.
pub(super) fn check_repository(path: &RepositoryPath) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    for (field, value) in [("namespace", &path.0), ("repository", &path.1)] {
        if value.is_empty() || value.chars().count() > 255 {
            errors.push(FieldError::new(field, "must be 1 to 255 characters"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(errors))
    }
}

fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("no webhook has id {id}"))
}

fn name_taken(name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "the repository has a webhook named {name:?} already"
    ))
}

/// `whsec_` and 32 random bytes.
fn generate_secret() -> Result<String, ApiError> {
    let mut key = [0u8; 32];
    random(&mut key).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(format!("whsec_{}", BASE64.encode(key)))
}

#[utoipa::path(get, path = "/api/v1/repositories/{namespace}/{repository}/webhooks", tag = "webhooks",
    params(RepositoryPath, PageQuery),
    responses(
        (status = 200, body = WebhookPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<ApiState>,
    _who: Reader,
    PathOf(path): PathOf<RepositoryPath>,
    QueryOf(query): QueryOf<PageQuery>,
) -> Result<axum::Json<WebhookPage>, ApiError> {
    check_repository(&path)?;
    let limit = page_limit(query.limit)?;
    let before = page_start(query.cursor.as_deref(), |c| match c {
        Cursor::Webhook(id) => Some(id),
        _ => None,
    })?;
    let mut rows = admin::list_webhooks(&state.pool, &path.0, &path.1, before, limit + 1).await?;
    let next_cursor = cursor::cut(&mut rows, limit, |r| Cursor::Webhook(r.id));
    Ok(axum::Json(WebhookPage {
        data: rows.into_iter().map(Webhook::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(post, path = "/api/v1/repositories/{namespace}/{repository}/webhooks", tag = "webhooks",
    params(RepositoryPath),
    request_body = NewWebhook,
    responses(
        (status = 201, body = Webhook, headers(("Location" = String, description = "the new webhook"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<ApiState>,
    who: Writer,
    PathOf(path): PathOf<RepositoryPath>,
    Body(new): Body<NewWebhook>,
) -> Result<impl IntoResponse, ApiError> {
    check_repository(&path)?;
    let trigger = new.trigger.unwrap_or(TriggerRule::All {});
    let mut errors = Vec::new();
    check(&mut errors, "name", validate::name(&new.name));
    check(&mut errors, "url", validate::url(&new.url, &state.policy));
    errors.extend(validate::trigger(&trigger, "trigger"));
    check_secret(
        &mut errors,
        new.secret.as_deref().map(Some),
        new.generate_secret,
    );
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let made = new.generate_secret.then(generate_secret).transpose()?;
    let fields = WebhookFields {
        name: &new.name,
        url: &new.url,
        trigger: validate::columns(&trigger),
        enabled: new.enabled.unwrap_or(true),
    };
    let secret = made.as_deref().or(new.secret.as_deref());
    let row = match admin::create_webhook(&state.pool, &path.0, &path.1, fields, secret).await {
        Ok(row) => row,
        Err(WriteError::NameTaken) => return Err(name_taken(&new.name)),
        Err(WriteError::Store(e)) => return Err(e.into()),
    };
    tracing::info!(token = %who.name, action = "webhook.create", webhook_id = row.id,
                   namespace = %row.namespace, repository = %row.repository, name = %row.name, "admin API write");
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/webhooks/{}", row.id)) {
        headers.insert(header::LOCATION, location);
    }
    let mut shown = Webhook::from(row);
    shown.secret = made;
    Ok((StatusCode::CREATED, headers, axum::Json(shown)))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = Webhook),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<ApiState>,
    _who: Reader,
    PathOf(id): PathOf<i64>,
) -> Result<axum::Json<Webhook>, ApiError> {
    let row = admin::get_webhook(&state.pool, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(axum::Json(row.into()))
}

#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = i64, Path)),
    request_body = WebhookChange,
    responses(
        (status = 200, body = Webhook),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update(
    State(state): State<ApiState>,
    who: Writer,
    PathOf(id): PathOf<i64>,
    Body(change): Body<WebhookChange>,
) -> Result<axum::Json<Webhook>, ApiError> {
    let mut errors = Vec::new();
    if let Some(name) = &change.name {
        check(&mut errors, "name", validate::name(name));
    }
    if let Some(url) = &change.url {
        check(&mut errors, "url", validate::url(url, &state.policy));
    }
    if let Some(trigger) = &change.trigger {
        errors.extend(validate::trigger(trigger, "trigger"));
    }
    check_secret(
        &mut errors,
        change.secret.as_ref().map(Option::as_deref),
        change.generate_secret,
    );
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let made = change.generate_secret.then(generate_secret).transpose()?;
    let patch = WebhookPatch {
        name: change.name.as_deref(),
        url: change.url.as_deref(),
        trigger: change.trigger.as_ref().map(validate::columns),
        enabled: change.enabled,
    };
    let secret = match (&made, &change.secret) {
        (Some(made), _) => SecretChange::Set(made),
        (None, Some(Some(given))) => SecretChange::Set(given),
        (None, Some(None)) => SecretChange::Remove,
        (None, None) => SecretChange::Keep,
    };
    let row = match admin::update_webhook(&state.pool, id, patch, secret).await {
        Ok(Some(row)) => row,
        Ok(None) => return Err(not_found(id)),
        Err(WriteError::NameTaken) => {
            return Err(name_taken(change.name.as_deref().unwrap_or_default()));
        }
        Err(WriteError::Store(e)) => return Err(e.into()),
    };
    tracing::info!(token = %who.name, action = "webhook.update", webhook_id = id, "admin API write");
    let mut shown = Webhook::from(row);
    shown.secret = made;
    Ok(axum::Json(shown))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = i64, Path)),
    responses(
        (status = 204, description = "deleted, with its access records"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(state): State<ApiState>,
    who: Writer,
    PathOf(id): PathOf<i64>,
) -> Result<StatusCode, ApiError> {
    if !admin::delete_webhook(&state.pool, id).await? {
        return Err(not_found(id));
    }
    tracing::info!(token = %who.name, action = "webhook.delete", webhook_id = id, "admin API write");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/secret/rotate", tag = "webhooks",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = RotatedSecret),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotate(
    State(state): State<ApiState>,
    who: Writer,
    PathOf(id): PathOf<i64>,
) -> Result<axum::Json<RotatedSecret>, ApiError> {
    let secret = generate_secret()?;
    let expires = admin::rotate_secret(&state.pool, id, &secret, state.rotation_grace)
        .await?
        .ok_or_else(|| not_found(id))?;
    tracing::info!(token = %who.name, action = "webhook.rotate_secret", webhook_id = id, "admin API write");
    Ok(axum::Json(RotatedSecret {
        secret,
        previous_secret_expires_at: expires,
    }))
}

/// The tag and digest a test notification carries.
const TEST_TAG: &str = "test";
const TEST_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/test", tag = "webhooks",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = TestAttempt, description = "the attempt was made (whatever its outcome)"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn test(
    State(state): State<ApiState>,
    who: Writer,
    PathOf(id): PathOf<i64>,
) -> Result<axum::Json<TestAttempt>, ApiError> {
    let SigningWebhook { row, secrets } = admin::signing_webhook(&state.pool, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let now = Utc::now().fixed_offset();
    let event_id = format!("test-{}", Uuid::new_v4());
    // The repository as the registry last described it; before any event, what is known.
    let last = admin::latest_body(&state.pool, &row.namespace, &row.repository).await?;
    let repository = last
        .as_deref()
        .and_then(payload::repository_of)
        .unwrap_or_else(|| Repository {
            namespace: row.namespace.clone(),
            name: row.repository.clone(),
            region: String::new(),
            date_created: now,
            repo_authentication_type: "NO_CERTIFIED".to_owned(),
            repo_origin_type: "NO_CERTIFIED".to_owned(),
            repo_type: "PUBLIC".to_owned(),
        });
    let body = payload::render(&BuildEvent {
        event_id: event_id.clone(),
        occurred_at: now,
        repository,
        tag: TEST_TAG.to_owned(),
        digest: TEST_DIGEST.to_owned(),
    });
    let delivery = delivery_id(&event_id, row.id, now.to_utc());
    let report = state
        .client
        .send(
            &row.url,
            secrets.signing(Utc::now()).as_deref(),
            &body,
            &delivery.to_string(),
        )
        .await;
    // One attempt, no retries: the caller sees the outcome now.
    let status = match classify(&report.outcome) {
        Verdict::Succeeded => DeliveryStatus::Succeeded,
        Verdict::Retry { .. } | Verdict::GiveUp => DeliveryStatus::Failed,
    };
    let http_status = report.http_status().map(i32::from);
    let error = report.error.map(|e| e.as_str());
    admin::record_test(
        &state.pool,
        &TestRecord {
            id: delivery,
            event_id: &event_id,
            webhook: &row,
            tag: TEST_TAG,
            digest: TEST_DIGEST,
            body: &body,
            status,
            occurred_at: now.to_utc(),
            started_at: report.started_at,
            duration: report.duration,
            http_status,
            error,
            error_detail: report.detail.as_deref(),
            response_body: report.response_body.as_deref(),
        },
    )
    .await?;
    tracing::info!(token = %who.name, action = "webhook.test", webhook_id = id, delivery_id = %delivery,
                   status = status.as_str(), "admin API write");
    Ok(axum::Json(TestAttempt {
        delivery_id: delivery,
        status,
        http_status,
        duration_ms: crate::store::millis(report.duration),
        error: error.map(str::to_owned),
        response_body: report.response_body,
    }))
}
