//! The console (contract section 13) at `/console/` on the API address: server-rendered pages
//! over the admin API itself. Each page calls the API in process with the signed-in person's
//! token, so the console can do exactly what that token may do through the API, with the same
//! checks, and its HTML, CSS and script are compiled into the binary.

mod format;
mod pages;
mod views;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, Request};
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use cookie::{Cookie, SameSite};
use hmac::{KeyInit as _, Mac as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use tower::ServiceExt as _;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::api::MAX_BODY;
use crate::api::auth::Caller;
use crate::api::problem::Problem;
use crate::store::tokens::Scope;

/// The session cookie: the API token itself, which only the server ever reads.
const COOKIE: &str = "tagcast_console";
/// How long a sign-in lasts.
const SESSION_HOURS: i64 = 8;

/// No inline script or style, nothing from elsewhere, no framing: a value that slipped through
/// unescaped still could not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// What the console's handlers share: the API's own router, which they call in process.
#[derive(Clone)]
pub struct ConsoleState {
    api: Router,
}

/// The API's routes with the console's beside them.
pub fn with_console(api: Router) -> Router {
    let state = ConsoleState { api: api.clone() };
    let console = Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(pages::repositories))
        .route("/console/open", get(pages::open_repository))
        .route(
            "/console/sign-in",
            get(pages::sign_in_form).post(pages::sign_in),
        )
        .route("/console/sign-in/check", get(pages::sign_in_check))
        .route("/console/sign-out", post(pages::sign_out))
        .route(
            "/console/repositories/{namespace}/{repository}",
            get(pages::webhooks),
        )
        .route(
            "/console/repositories/{namespace}/{repository}/new",
            get(pages::new_webhook_form),
        )
        .route(
            "/console/repositories/{namespace}/{repository}/webhooks",
            post(pages::create_webhook),
        )
        .route(
            "/console/repositories/{namespace}/{repository}/records",
            get(pages::repository_records),
        )
        .route(
            "/console/webhooks/{id}",
            get(pages::webhook).post(pages::update_webhook),
        )
        .route("/console/webhooks/{id}/enabled", post(pages::set_enabled))
        .route("/console/webhooks/{id}/test", post(pages::test_webhook))
        .route("/console/webhooks/{id}/rotate", post(pages::rotate_secret))
        .route("/console/webhooks/{id}/recover", post(pages::recover))
        .route("/console/webhooks/{id}/delete", post(pages::delete_webhook))
        .route(
            "/console/webhooks/{id}/records",
            get(pages::webhook_records),
        )
        .route("/console/records/{id}", get(pages::record))
        .route("/console/records/{id}/redeliver", post(pages::redeliver))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .route(
            "/console/{*rest}",
            get(pages::not_found).post(pages::not_found),
        )
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        // Pages hold records and, once, a new secret: never kept by a cache.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state);
    api.merge(console)
}

async fn css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
}

/// Everything a console request can come to besides its page.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No session, or its token no longer works: the sign-in page, then back to `next`.
    #[error("sign in")]
    SignIn { next: String, expired: bool },
    /// The API refused or failed: its problem detail, shown as a page.
    #[error("{}", .0.detail)]
    Api(Problem),
    /// A write that did not come from one of the console's own forms.
    #[error("the form was not sent from this console")]
    Forged,
    /// A form the console did not write (a field of the wrong kind).
    #[error("{0}")]
    BadForm(String),
    /// The API answered something the console cannot read: a defect, logged.
    #[error("{0}")]
    Internal(String),
}

impl ConsoleError {
    fn not_found(what: &str) -> ConsoleError {
        ConsoleError::Api(Problem {
            kind: "about:blank",
            title: "Not Found".into(),
            status: 404,
            detail: what.to_owned(),
            errors: Vec::new(),
        })
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        match self {
            ConsoleError::SignIn { next, expired } => {
                let query = serde_urlencoded::to_string(SignInQuery {
                    next: Some(next),
                    expired,
                })
                .unwrap_or_default();
                let mut response = Redirect::to(&format!("/console/sign-in?{query}")).into_response();
                if expired {
                    set_cookie(&mut response, removal());
                }
                response
            }
            ConsoleError::Api(problem) => {
                let status = StatusCode::from_u16(problem.status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, views::error_page(None, &problem.title, &problem.detail)).into_response()
            }
            ConsoleError::Forged => (
                StatusCode::FORBIDDEN,
                views::error_page(
                    None,
                    "Forbidden",
                    "This form was not sent from this console's own page. Reload the page and try again.",
                ),
            )
                .into_response(),
            ConsoleError::BadForm(detail) => (
                StatusCode::BAD_REQUEST,
                views::error_page(None, "Bad Request", &detail),
            )
                .into_response(),
            ConsoleError::Internal(detail) => {
                tracing::error!(error = %detail, "console request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    views::error_page(
                        None,
                        "Internal Server Error",
                        "The console could not show this page; tagcast's log says why.",
                    ),
                )
                    .into_response()
            }
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SignInQuery {
    pub next: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}

/// Where to go after signing in: one of the console's own pages, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/console/") && !n.contains("//") && !n.contains('\\') => n,
        _ => "/console/",
    }
}

fn session_cookie(token: &str) -> Cookie<'static> {
    cookie(token, cookie::time::Duration::hours(SESSION_HOURS))
}

/// The session cookie emptied and expired: the browser drops it.
fn removal() -> Cookie<'static> {
    cookie("", cookie::time::Duration::ZERO)
}

fn cookie(value: &str, max_age: cookie::time::Duration) -> Cookie<'static> {
    Cookie::build((COOKIE, value.to_owned()))
        .path("/console")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(max_age)
        .build()
}

fn set_cookie(response: &mut Response, cookie: Cookie<'_>) {
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The session's token from the request's cookies.
fn cookie_token(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE && !c.value().is_empty())
        .map(|c| c.value().to_owned())
}

/// The anti-forgery value of a session: a MAC of a fixed text under the token, so it is known
/// only to whoever holds the token (the server; the cookie is HttpOnly), and needs no storage.
fn csrf_of(token: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"tagcast console form");
    B64.encode(mac.finalize().into_bytes())
}

/// A signed-in person: their token, what it may do, and the value their forms carry.
pub struct Session {
    token: String,
    pub name: String,
    pub scope: Scope,
    pub csrf: String,
}

impl Session {
    pub fn can_write(&self) -> bool {
        self.scope == Scope::Write
    }
}

impl FromRequestParts<ConsoleState> for Session {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Session, ConsoleError> {
        // A GET comes back to where it was; a POST to the page that sent it is unknown here.
        let next = if parts.method == Method::GET {
            parts
                .uri
                .path_and_query()
                .map_or("/console/", |p| p.as_str())
                .to_owned()
        } else {
            "/console/".to_owned()
        };
        let Some(token) = cookie_token(parts) else {
            return Err(ConsoleError::SignIn {
                next,
                expired: false,
            });
        };
        let caller: Caller = match state.call(&token, Method::GET, "/api/v1/token", None).await {
            Err(ConsoleError::Api(p)) if p.status == 401 => {
                return Err(ConsoleError::SignIn {
                    next,
                    expired: true,
                });
            }
            other => other?,
        };
        Ok(Session {
            csrf: csrf_of(&token),
            token,
            name: caller.name,
            scope: caller.scope,
        })
    }
}

/// A page that also shows to someone not signed in (the header then names nobody).
impl OptionalFromRequestParts<ConsoleState> for Session {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Option<Session>, ConsoleError> {
        match <Session as FromRequestParts<ConsoleState>>::from_request_parts(parts, state).await {
            Ok(session) => Ok(Some(session)),
            Err(ConsoleError::SignIn { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A form posted from one of the console's pages by a signed-in person: the cookie is
/// `SameSite=Strict`, the browser says the request is same-origin, and the form carries the
/// session's anti-forgery value.
pub struct Posted<T> {
    pub session: Session,
    pub form: T,
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// Whether the browser says the request came from this site (`Sec-Fetch-Site`, `Origin`); a
/// client that sends neither is not a browser a page could have tricked.
fn same_origin(parts: &Parts) -> bool {
    let site_ok = parts
        .headers
        .get("sec-fetch-site")
        .is_none_or(|v| matches!(v.as_bytes(), b"same-origin" | b"none"));
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_ok = match parts.headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => true,
        Some(Ok(origin)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| Some(authority) == host),
        Some(Err(_)) => false,
    };
    site_ok && origin_ok
}

/// A form's body, if the browser says the request came from this site.
async fn form_body(parts: &Parts, body: Body) -> Result<axum::body::Bytes, ConsoleError> {
    if !same_origin(parts) {
        return Err(ConsoleError::Forged);
    }
    to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ConsoleError::BadForm("the form is larger than 64 KiB".into()))
}

fn parse_form<T: DeserializeOwned>(body: &[u8]) -> Result<T, ConsoleError> {
    serde_urlencoded::from_bytes(body).map_err(|e| ConsoleError::BadForm(format!("the form: {e}")))
}

impl<T: DeserializeOwned> FromRequest<ConsoleState> for Posted<T> {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &ConsoleState) -> Result<Self, ConsoleError> {
        let (mut parts, body) = req.into_parts();
        let body = form_body(&parts, body).await?;
        let session =
            <Session as FromRequestParts<ConsoleState>>::from_request_parts(&mut parts, state)
                .await?;
        let CsrfField { csrf } = parse_form(&body)?;
        if !bool::from(csrf.as_bytes().ct_eq(session.csrf.as_bytes())) {
            return Err(ConsoleError::Forged);
        }
        Ok(Posted {
            session,
            form: parse_form(&body)?,
        })
    }
}

/// A form posted before signing in: only the browser's word that it is same-origin.
pub struct SignInForm<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ConsoleState> for SignInForm<T> {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, _state: &ConsoleState) -> Result<Self, ConsoleError> {
        let (parts, body) = req.into_parts();
        let body = form_body(&parts, body).await?;
        Ok(SignInForm(parse_form(&body)?))
    }
}

/// `/console/...` segments and API paths name repositories whose names may hold any character.
pub fn segment(text: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, SET).to_string()
}

impl ConsoleState {
    /// One API request, in process, as the signed-in person: the answer's JSON as `T`, or the
    /// problem detail the API answered with.
    async fn call<T: DeserializeOwned>(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ConsoleError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let request = request
            .body(body)
            .map_err(|e| ConsoleError::Internal(format!("building an API request: {e}")))?;
        let response = self
            .api
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 16 * 1024 * 1024)
            .await
            .map_err(|e| ConsoleError::Internal(format!("reading an API answer: {e}")))?;
        if status.is_success() {
            let bytes = if bytes.is_empty() {
                &b"null"[..]
            } else {
                &bytes
            };
            return serde_json::from_slice(bytes)
                .map_err(|e| ConsoleError::Internal(format!("an API answer to {path}: {e}")));
        }
        let problem = serde_json::from_slice::<Problem>(&bytes).unwrap_or_else(|_| Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: String::from_utf8_lossy(&bytes).into_owned(),
            errors: Vec::new(),
        });
        Err(ConsoleError::Api(problem))
    }

    async fn get<T: DeserializeOwned>(&self, s: &Session, path: &str) -> Result<T, ConsoleError> {
        self.call(&s.token, Method::GET, path, None).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        s: &Session,
        method: Method,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, ConsoleError> {
        self.call(&s.token, method, path, Some(body)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_pages_are_places_to_go_next() {
        let cases = [
            (None, "/console/"),
            (
                Some("/console/records/x?status=failed"),
                "/console/records/x?status=failed",
            ),
            (Some("https://evil.example/"), "/console/"),
            (Some("//evil.example/console/"), "/console/"),
            (Some("/console//evil.example"), "/console/"),
            (Some("/console/\\evil"), "/console/"),
            (Some("/api/v1/token"), "/console/"),
        ];
        for (next, goes) in cases {
            assert_eq!(safe_next(next), goes, "{next:?}");
        }
    }

    #[test]
    fn the_form_value_is_the_sessions_own() {
        let a = csrf_of("tgc_aaaaaaaa");
        assert_eq!(a, csrf_of("tgc_aaaaaaaa"));
        assert_ne!(a, csrf_of("tgc_aaaaaaab"));
        assert!(!a.contains("aaaaaaaa") && a.len() == 43);
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("repoTest"), "repoTest");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(segment("<x>"), "%3Cx%3E");
    }

    #[test]
    fn forms_from_elsewhere_are_told_apart() {
        let parts = |headers: &[(&str, &str)]| {
            let mut builder = Request::builder().uri("/console/sign-out");
            for (k, v) in headers {
                builder = builder.header(*k, *v);
            }
            builder.body(()).unwrap().into_parts().0
        };
        let cases: [(&[(&str, &str)], bool); 7] = [
            (&[("host", "127.0.0.1:8080")], true),
            (
                &[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "http://127.0.0.1:8080"),
                ],
                true,
            ),
            (&[("host", "h:1"), ("sec-fetch-site", "same-origin")], true),
            (&[("host", "h:1"), ("sec-fetch-site", "cross-site")], false),
            (&[("host", "h:1"), ("sec-fetch-site", "same-site")], false),
            (&[("host", "h:1"), ("origin", "http://evil.example")], false),
            (&[("host", "h:1"), ("origin", "null")], false),
        ];
        for (headers, ok) in cases {
            assert_eq!(same_origin(&parts(headers)), ok, "{headers:?}");
        }
    }
}
