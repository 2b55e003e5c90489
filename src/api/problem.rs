//! What the API answers when it does not do what was asked: an RFC 9457 problem detail, with a
//! status that says whose fault it is; bad input never becomes a 5xx, and no body ever holds
//! SQL or a stack trace.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::validate::FieldError;
use crate::store::StoreError;

/// An RFC 9457 problem detail.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and title say what happened.
    #[serde(rename = "type", skip_deserializing)]
    pub kind: &'static str,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For 422: each field that breaks a rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not JSON, wrong types, unknown fields, a bad path or query value, a bad cursor.
    #[error("{0}")]
    BadRequest(String),
    #[error("a valid API token is needed: Authorization: Bearer tgc_...")]
    Unauthorized,
    #[error("this needs a token with the write scope")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the body is larger than 64 KiB")]
    TooLarge,
    #[error("{}", shown(.0))]
    Invalid(Vec<FieldError>),
    /// RabbitMQ is not connected: work cannot be queued now.
    #[error("{0}")]
    Unavailable(String),
    /// A failure of tagcast's own or of the database; logged, never shown.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid(vec![FieldError::new(field, message)])
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Store(e) => {
                tracing::error!(error = %e, "admin API request failed");
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    "the database is not reachable; try again".to_owned()
                } else {
                    "tagcast could not complete the request; its log says why".to_owned()
                }
            }
            other => other.to_string(),
        };
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors: match self {
                ApiError::Invalid(errors) => errors,
                _ => Vec::new(),
            },
        };
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        match rejection {
            // A body the contract reads as "not JSON": 400, like one that does not parse.
            JsonRejection::MissingJsonContentType(_) => ApiError::BadRequest(
                "the body must be sent as Content-Type: application/json".into(),
            ),
            r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
            // serde's own words, which name the field: "unknown field `colour`", "name: invalid
            // type: integer `5`, expected a string".
            JsonRejection::JsonDataError(e) => ApiError::BadRequest(source_text(&e)),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::BadRequest(format!("the body is not JSON: {}", source_text(&e)))
            }
            r => ApiError::BadRequest(r.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// Each field error, in one line: `name: must be 1 to 64 characters; url: must have a host`.
fn shown(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The innermost error's text: the part that names the field, without axum's preamble.
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}
