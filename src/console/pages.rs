//! The console's handlers: each reads its page's data from the admin API as the signed-in
//! person, or sends a form's change to it, and picks the view; an API refusal of a form is
//! shown beside the field it names.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::Markup;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::format::{form_field, form_time, rule_from_form};
use super::views::{
    self, FormErrors, Notice, Outcome, RecordFilters, RecordsOf, SignInReason, WebhookForm,
    WebhookView, filter_time, repository_href,
};
use super::{
    ConsoleError, ConsoleState, Posted, Session, SignInForm, SignInQuery, removal, safe_next,
    segment, session_cookie, set_cookie,
};
use crate::api::auth::Caller;
use crate::api::deliveries::{Delivery, DeliveryPage, Queued};
use crate::api::problem::Problem;
use crate::api::repositories::RepositoryPage;
use crate::api::webhooks::{RotatedSecret, TestAttempt, Webhook, WebhookPage};

type Page = Result<Markup, ConsoleError>;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Paging {
    cursor: Option<String>,
    done: Option<String>,
}

fn api_page(path: &str, cursor: Option<&str>, limit: u32) -> String {
    match cursor.filter(|c| !c.is_empty()) {
        Some(c) => format!("{path}?limit={limit}&cursor={}", segment(c)),
        None => format!("{path}?limit={limit}"),
    }
}

fn api_repository(namespace: &str, repository: &str) -> String {
    format!(
        "/api/v1/repositories/{}/{}",
        segment(namespace),
        segment(repository)
    )
}

/// The field errors of a refusal the person can fix, or the refusal itself. A 409 is shown on
/// `conflict_on` when the form has the one field a conflict can be about (a webhook's name is
/// the only thing a webhook write can conflict on).
fn form_errors(problem: Problem, conflict_on: Option<&str>) -> Result<FormErrors, ConsoleError> {
    match problem.status {
        422 => Ok(FormErrors {
            fields: problem
                .errors
                .into_iter()
                .map(|e| (form_field(&e.field).to_owned(), e.message))
                .collect(),
            general: None,
        }),
        409 | 400 => Ok(match (problem.status, conflict_on) {
            (409, Some(field)) => FormErrors {
                fields: vec![(field.to_owned(), problem.detail)],
                general: None,
            },
            _ => FormErrors {
                fields: Vec::new(),
                general: Some(problem.detail),
            },
        }),
        _ => Err(ConsoleError::Api(problem)),
    }
}

pub async fn not_found(session: Option<Session>) -> Response {
    (
        StatusCode::NOT_FOUND,
        views::error_page(
            session.as_ref(),
            "Not Found",
            "There is no such page in the console.",
        ),
    )
        .into_response()
}

// Signing in and out.

pub async fn sign_in_form(Query(q): Query<SignInQuery>) -> Markup {
    let reason = if q.expired {
        SignInReason::Expired
    } else {
        SignInReason::First
    };
    views::sign_in(safe_next(q.next.as_deref()), reason)
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
    next: Option<String>,
}

pub async fn sign_in(
    State(state): State<ConsoleState>,
    SignInForm(form): SignInForm<SignIn>,
) -> Result<Response, ConsoleError> {
    let next = safe_next(form.next.as_deref()).to_owned();
    let token = form.token.trim();
    match state
        .call::<Caller>(token, Method::GET, "/api/v1/token", None)
        .await
    {
        Ok(_) => {}
        Err(ConsoleError::Api(p)) if p.status == 401 => {
            return Ok((
                StatusCode::UNAUTHORIZED,
                views::sign_in(&next, SignInReason::Refused),
            )
                .into_response());
        }
        Err(e) => return Err(e),
    }
    let query = serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default();
    let mut response = Redirect::to(&format!("/console/sign-in/check?{query}")).into_response();
    set_cookie(&mut response, session_cookie(token));
    Ok(response)
}

/// Where signing in lands: on to the page asked for if the browser kept the cookie, or a word
/// on why it did not.
pub async fn sign_in_check(session: Option<Session>, Query(q): Query<SignInQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    match session {
        Some(_) => Redirect::to(next).into_response(),
        None => views::sign_in(next, SignInReason::CookieRefused).into_response(),
    }
}

#[derive(Deserialize)]
pub struct Nothing {}

pub async fn sign_out(_posted: Posted<Nothing>) -> Response {
    let mut response = views::sign_in("/console/", SignInReason::SignedOut).into_response();
    set_cookie(&mut response, removal());
    response
}

// Repositories and their webhooks.

pub async fn repositories(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<Paging>,
) -> Page {
    let page: RepositoryPage = state
        .get(
            &session,
            &api_page("/api/v1/repositories", q.cursor.as_deref(), 50),
        )
        .await?;
    Ok(views::repositories(
        &session,
        &page,
        q.cursor.as_deref().filter(|c| !c.is_empty()),
        None,
    ))
}

#[derive(Deserialize)]
pub struct OpenRepository {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    repository: String,
}

pub async fn open_repository(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<OpenRepository>,
) -> Result<Response, ConsoleError> {
    let (namespace, repository) = (q.namespace.trim(), q.repository.trim());
    if namespace.is_empty() || repository.is_empty() {
        let page: RepositoryPage = state
            .get(&session, &api_page("/api/v1/repositories", None, 50))
            .await?;
        return Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            views::repositories(
                &session,
                &page,
                None,
                Some("Give both the namespace and the repository."),
            ),
        )
            .into_response());
    }
    Ok(Redirect::to(&repository_href(namespace, repository)).into_response())
}

pub async fn webhooks(
    State(state): State<ConsoleState>,
    session: Session,
    Path((namespace, repository)): Path<(String, String)>,
    Query(q): Query<Paging>,
) -> Page {
    let path = format!("{}/webhooks", api_repository(&namespace, &repository));
    let page: WebhookPage = state
        .get(&session, &api_page(&path, q.cursor.as_deref(), 100))
        .await?;
    Ok(views::webhooks(
        &session,
        &namespace,
        &repository,
        &page,
        q.cursor.as_deref().filter(|c| !c.is_empty()),
        Notice::parse(q.done.as_deref()),
    ))
}

pub async fn new_webhook_form(
    session: Session,
    Path((namespace, repository)): Path<(String, String)>,
) -> Markup {
    views::new_webhook(
        &session,
        &namespace,
        &repository,
        &WebhookForm::for_new(),
        &FormErrors::default(),
    )
}

/// The rule of a form, as the API takes it.
fn rule_json(form: &WebhookForm) -> Value {
    json!(rule_from_form(
        &form.trigger_type,
        &form.expression,
        &form.tags
    ))
}

pub async fn create_webhook(
    State(state): State<ConsoleState>,
    Path((namespace, repository)): Path<(String, String)>,
    Posted { session, form }: Posted<WebhookForm>,
) -> Result<Response, ConsoleError> {
    let mut body = json!({
        "name": form.name.trim(),
        "url": form.url.trim(),
        "trigger": rule_json(&form),
        "enabled": form.enabled.is_some(),
    });
    match form.secret_mode.as_str() {
        "given" => body["secret"] = json!(form.secret.trim()),
        "none" => {}
        _ => body["generate_secret"] = json!(true),
    }
    let path = format!("{}/webhooks", api_repository(&namespace, &repository));
    match state
        .send::<Webhook>(&session, Method::POST, &path, body)
        .await
    {
        Ok(mut hook) => {
            let outcome = match hook.secret.take() {
                Some(secret) => Outcome::Secret {
                    secret,
                    previous_until: None,
                },
                None => Outcome::Done(Notice::Created),
            };
            Ok(webhook_page(&session, &hook, Some(outcome)).into_response())
        }
        Err(ConsoleError::Api(problem)) => {
            let errors = form_errors(problem, Some("name"))?;
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                views::new_webhook(&session, &namespace, &repository, &form, &errors),
            )
                .into_response())
        }
        Err(e) => Err(e),
    }
}

fn webhook_page(session: &Session, hook: &Webhook, outcome: Option<Outcome>) -> Markup {
    views::webhook(
        session,
        WebhookView {
            hook,
            outcome,
            form: WebhookForm::of(hook),
            errors: FormErrors::default(),
            recover_errors: FormErrors::default(),
            now: Utc::now(),
        },
    )
}

async fn get_webhook(
    state: &ConsoleState,
    session: &Session,
    id: i64,
) -> Result<Webhook, ConsoleError> {
    state.get(session, &format!("/api/v1/webhooks/{id}")).await
}

/// A webhook id from the path: a number, or no such page.
fn webhook_id(raw: &str) -> Result<i64, ConsoleError> {
    raw.parse()
        .map_err(|_| ConsoleError::not_found("There is no webhook with that id."))
}

pub async fn webhook(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<Paging>,
) -> Page {
    let hook = get_webhook(&state, &session, webhook_id(&id)?).await?;
    let outcome = Notice::parse(q.done.as_deref()).map(Outcome::Done);
    Ok(webhook_page(&session, &hook, outcome))
}

pub async fn update_webhook(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    Posted { session, form }: Posted<WebhookForm>,
) -> Result<Response, ConsoleError> {
    let id = webhook_id(&id)?;
    let mut body = json!({ "name": form.name.trim(), "trigger": rule_json(&form) });
    if !form.url.trim().is_empty() {
        body["url"] = json!(form.url.trim());
    }
    let path = format!("/api/v1/webhooks/{id}");
    match state
        .send::<Webhook>(&session, Method::PATCH, &path, body)
        .await
    {
        Ok(_) => Ok(Redirect::to(&format!("/console/webhooks/{id}?done=saved")).into_response()),
        Err(ConsoleError::Api(problem)) => {
            let errors = form_errors(problem, Some("name"))?;
            let hook: Webhook = state.get(&session, &path).await?;
            let view = WebhookView {
                hook: &hook,
                outcome: None,
                form,
                errors,
                recover_errors: FormErrors::default(),
                now: Utc::now(),
            };
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                views::webhook(&session, view),
            )
                .into_response())
        }
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
pub struct SetEnabled {
    enabled: bool,
    back: Option<String>,
}

pub async fn set_enabled(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    Posted { session, form }: Posted<SetEnabled>,
) -> Result<Redirect, ConsoleError> {
    let id = webhook_id(&id)?;
    let _: Webhook = state
        .send(
            &session,
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            json!({ "enabled": form.enabled }),
        )
        .await?;
    let back = safe_next(form.back.as_deref());
    let done = if form.enabled { "enabled" } else { "disabled" };
    let sep = if back.contains('?') { '&' } else { '?' };
    Ok(Redirect::to(&format!("{back}{sep}done={done}")))
}

pub async fn test_webhook(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted<Nothing>,
) -> Page {
    let id = webhook_id(&id)?;
    let attempt: TestAttempt = state
        .send(
            &session,
            Method::POST,
            &format!("/api/v1/webhooks/{id}/test"),
            json!({}),
        )
        .await?;
    let hook = get_webhook(&state, &session, id).await?;
    Ok(webhook_page(&session, &hook, Some(Outcome::Test(attempt))))
}

pub async fn rotate_secret(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted<Nothing>,
) -> Page {
    let id = webhook_id(&id)?;
    let rotated: RotatedSecret = state
        .send(
            &session,
            Method::POST,
            &format!("/api/v1/webhooks/{id}/secret/rotate"),
            json!({}),
        )
        .await?;
    let hook = get_webhook(&state, &session, id).await?;
    let outcome = Outcome::Secret {
        secret: rotated.secret,
        previous_until: rotated.previous_secret_expires_at,
    };
    Ok(webhook_page(&session, &hook, Some(outcome)))
}

#[derive(Deserialize)]
pub struct RecoverForm {
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

pub async fn recover(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    Posted { session, form }: Posted<RecoverForm>,
) -> Result<Response, ConsoleError> {
    let id = webhook_id(&id)?;
    let hook = get_webhook(&state, &session, id).await?;
    let mut errors = FormErrors::default();
    let since = match form_time(&form.since) {
        Ok(Some(at)) => Some(at),
        Ok(None) => {
            errors.fields.push(("since".into(), "is needed".into()));
            None
        }
        Err(e) => {
            errors.fields.push(("since".into(), e));
            None
        }
    };
    let until = form_time(&form.until).unwrap_or_else(|e| {
        errors.fields.push(("until".into(), e));
        None
    });
    let result = match (since, errors.is_empty()) {
        (Some(since), true) => {
            let body = json!({ "since": since, "until": until });
            let path = format!("/api/v1/webhooks/{id}/recover");
            match state
                .send::<Queued>(&session, Method::POST, &path, body)
                .await
            {
                Ok(queued) => Ok(queued),
                Err(ConsoleError::Api(problem)) => Err(form_errors(problem, None)?),
                Err(e) => return Err(e),
            }
        }
        _ => Err(errors),
    };
    Ok(match result {
        Ok(queued) => {
            webhook_page(&session, &hook, Some(Outcome::Recovered(queued))).into_response()
        }
        Err(recover_errors) => {
            let view = WebhookView {
                form: WebhookForm::of(&hook),
                hook: &hook,
                outcome: None,
                errors: FormErrors::default(),
                recover_errors,
                now: Utc::now(),
            };
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                views::webhook(&session, view),
            )
                .into_response()
        }
    })
}

pub async fn delete_webhook(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted<Nothing>,
) -> Result<Redirect, ConsoleError> {
    let hook = get_webhook(&state, &session, webhook_id(&id)?).await?;
    let _: Value = state
        .call(
            &session.token,
            Method::DELETE,
            &format!("/api/v1/webhooks/{}", hook.id),
            None,
        )
        .await?;
    Ok(Redirect::to(&format!(
        "{}?done=deleted",
        repository_href(&hook.namespace, &hook.repository)
    )))
}

// Access records.

/// The API query of a records page's filters, or the errors to show beside them.
fn record_query(filters: &RecordFilters) -> Result<String, FormErrors> {
    let mut errors = FormErrors::default();
    let mut time = |field: &str, raw: &str| match form_time(raw) {
        Ok(at) => at,
        Err(e) => {
            errors.fields.push((field.to_owned(), e));
            None
        }
    };
    let since = time("since", &filters.since);
    let until = time("until", &filters.until);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", "50");
    for (key, value) in [
        ("status", filters.status.trim()),
        ("tag", filters.tag.trim()),
        ("cursor", filters.cursor.as_str()),
    ] {
        if !value.is_empty() {
            query.append_pair(key, value);
        }
    }
    for (key, at) in [("since", since), ("until", until)] {
        if let Some(at) = at {
            query.append_pair(key, &super::format::rfc3339(at));
        }
    }
    Ok(query.finish())
}

async fn records_page(
    state: &ConsoleState,
    session: &Session,
    of: RecordsOf<'_>,
    api_path: &str,
    mut filters: RecordFilters,
) -> Result<Response, ConsoleError> {
    let empty = DeliveryPage {
        data: Vec::new(),
        next_cursor: None,
    };
    let answer = match record_query(&filters) {
        Ok(query) => match state.get(session, &format!("{api_path}?{query}")).await {
            Ok(page) => Ok(page),
            Err(ConsoleError::Api(problem)) => Err(form_errors(problem, None)?),
            Err(e) => return Err(e),
        },
        Err(errors) => Err(errors),
    };
    // Times are shown back as the form's inputs write them.
    for raw in [&mut filters.since, &mut filters.until] {
        if let Ok(at) = form_time(raw) {
            *raw = filter_time(at);
        }
    }
    let now = Utc::now();
    Ok(match answer {
        Ok(page) => views::records(session, of, &filters, &FormErrors::default(), &page, now)
            .into_response(),
        Err(errors) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            views::records(session, of, &filters, &errors, &empty, now),
        )
            .into_response(),
    })
}

pub async fn repository_records(
    State(state): State<ConsoleState>,
    session: Session,
    Path((namespace, repository)): Path<(String, String)>,
    Query(filters): Query<RecordFilters>,
) -> Result<Response, ConsoleError> {
    let api_path = format!("{}/deliveries", api_repository(&namespace, &repository));
    let of = RecordsOf::Repository {
        namespace: &namespace,
        repository: &repository,
    };
    records_page(&state, &session, of, &api_path, filters).await
}

pub async fn webhook_records(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Query(filters): Query<RecordFilters>,
) -> Result<Response, ConsoleError> {
    let hook = get_webhook(&state, &session, webhook_id(&id)?).await?;
    let api_path = format!("/api/v1/webhooks/{}/deliveries", hook.id);
    records_page(
        &state,
        &session,
        RecordsOf::Webhook(&hook),
        &api_path,
        filters,
    )
    .await
}

fn record_id(raw: &str) -> Result<Uuid, ConsoleError> {
    Uuid::try_parse(raw)
        .map_err(|_| ConsoleError::not_found("There is no access record with that id."))
}

pub async fn record(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<Paging>,
) -> Page {
    let id = record_id(&id)?;
    let delivery: Delivery = state
        .get(&session, &format!("/api/v1/deliveries/{id}"))
        .await?;
    Ok(views::record(
        &session,
        &delivery,
        Utc::now(),
        Notice::parse(q.done.as_deref()),
        None,
    ))
}

pub async fn redeliver(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted<Nothing>,
) -> Result<Response, ConsoleError> {
    let id = record_id(&id)?;
    let path = format!("/api/v1/deliveries/{id}/redeliver");
    match state
        .send::<Queued>(&session, Method::POST, &path, json!({}))
        .await
    {
        Ok(_) => {
            Ok(Redirect::to(&format!("/console/records/{id}?done=redelivered")).into_response())
        }
        // Still in progress, or nothing to repeat: said on the record's page.
        Err(ConsoleError::Api(problem)) if problem.status == 409 => {
            let delivery: Delivery = state
                .get(&session, &format!("/api/v1/deliveries/{id}"))
                .await?;
            Ok((
                StatusCode::CONFLICT,
                views::record(&session, &delivery, Utc::now(), None, Some(&problem.detail)),
            )
                .into_response())
        }
        Err(e) => Err(e),
    }
}
