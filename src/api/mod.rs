//! The admin API (contract section 12) on `TAGCAST_API_ADDR`: webhooks and access records over
//! HTTP and JSON, for the CLI, the console and scripts. Served by `tagcast run`, or alone by
//! `tagcast serve-api`; the OpenAPI document is made from the handlers' own types.

pub mod auth;
pub mod cursor;
pub mod deliveries;
pub mod problem;
pub mod repositories;
pub mod validate;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::amqp::Publisher;
use crate::client::WebhookClient;
use crate::guard::AddressPolicy;
use crate::store::Pool;
use problem::ApiError;

/// The largest request body taken.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest a request may take: a test notification waits for the receiver (connect and request
/// timeouts together stay under this).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct ApiState(Arc<Shared>);

pub struct Shared {
    pub pool: Pool,
    /// Sends test notifications, behind the same address guard as deliveries.
    pub client: WebhookClient,
    /// The address guard's policy, which a webhook's URL must pass.
    pub policy: AddressPolicy,
    /// The current broker publisher, while connected: redeliveries are queued with it.
    pub publisher: watch::Receiver<Option<Publisher>>,
    /// `TAGCAST_SECRET_ROTATION_GRACE`.
    pub rotation_grace: Duration,
}

impl ApiState {
    pub fn new(shared: Shared) -> ApiState {
        ApiState(Arc::new(shared))
    }
}

impl std::ops::Deref for ApiState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// A JSON body whose rejections are problem details.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Body(value))
    }
}

/// Path parameters whose rejections are problem details.
pub struct PathOf<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(PathOf(value))
    }
}

/// Query parameters whose rejections are problem details.
pub struct QueryOf<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(QueryOf(value))
    }
}

/// `?limit=`: 1 to 200, default 50.
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit.unwrap_or(50) {
        n @ 1..=200 => Ok(n),
        _ => Err(ApiError::invalid("limit", "must be 1 to 200")),
    }
}

/// `?cursor=` of a list: absent or empty is the first page; `pick` takes the position out of a
/// cursor of this list's kind, and any other cursor is refused.
pub fn page_start<T>(
    raw: Option<&str>,
    pick: impl FnOnce(cursor::Cursor) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    let refused = || ApiError::BadRequest("cursor: not one this list handed out".into());
    match raw.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(raw) => {
            let cursor = cursor::Cursor::decode(raw).map_err(|_| refused())?;
            pick(cursor).map(Some).ok_or_else(refused)
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tagcast admin API",
        description = "Manage webhooks and read access records. Authenticate with `Authorization: Bearer <token>` (`tagcast tokens create`)."
    ),
    paths(
        healthz,
        openapi_json,
        auth::current,
        repositories::list,
        webhooks::list,
        webhooks::create,
        webhooks::get,
        webhooks::update,
        webhooks::delete,
        webhooks::rotate,
        webhooks::test,
        deliveries::of_webhook,
        deliveries::of_repository,
        deliveries::get,
        deliveries::redeliver,
        deliveries::recover,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
    responses((status = 200, description = "the API is up", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "this document", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    axum::Json(openapi())
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such operation: see /api/v1/openapi.json".into())
}

/// Every route, with the body limit, the timeout and request tracing.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/token", get(auth::current))
        .route("/api/v1/repositories", get(repositories::list))
        .route(
            "/api/v1/repositories/{namespace}/{repository}/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/api/v1/repositories/{namespace}/{repository}/deliveries",
            get(deliveries::of_repository),
        )
        .route(
            "/api/v1/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route(
            "/api/v1/webhooks/{id}/secret/rotate",
            post(webhooks::rotate),
        )
        .route("/api/v1/webhooks/{id}/test", post(webhooks::test))
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(deliveries::of_webhook),
        )
        .route("/api/v1/webhooks/{id}/recover", post(deliveries::recover))
        .route("/api/v1/deliveries/{id}", get(deliveries::get))
        .route(
            "/api/v1/deliveries/{id}/redeliver",
            post(deliveries::redeliver),
        )
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves `app` (the API's routes, and the console's beside them) until cancelled, then lets
/// requests in progress finish.
pub async fn serve(listener: TcpListener, app: Router, cancel: CancellationToken) {
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin API stopped");
    }
}
