//! The console's pages as HTML. Every value is spliced by `maud`, which escapes it: a tag, URL,
//! name or response body is text, never markup. Pure: data in, markup out.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::format::{exact, form_value, hidden_url, relative, rfc3339, status_label, trigger_text};
use super::{Session, segment};
use crate::api::deliveries::{Delivery, DeliveryPage, Queued};
use crate::api::repositories::RepositoryPage;
use crate::api::validate::TriggerRule;
use crate::api::webhooks::{TestAttempt, Webhook, WebhookPage};
use crate::model::DeliveryStatus;
use crate::store::admin::DeliveryRow;

/// A link in the trail above a page's title.
pub struct Crumb {
    pub label: String,
    pub href: String,
}

pub fn repository_href(namespace: &str, repository: &str) -> String {
    format!(
        "/console/repositories/{}/{}",
        segment(namespace),
        segment(repository)
    )
}

fn crumbs_to_repository(namespace: &str, repository: &str) -> Vec<Crumb> {
    vec![
        Crumb {
            label: "Repositories".into(),
            href: "/console/".into(),
        },
        Crumb {
            label: format!("{namespace}/{repository}"),
            href: repository_href(namespace, repository),
        },
    ]
}

/// The frame of every page: the header with who is signed in, the trail, the title.
fn layout(
    session: Option<&Session>,
    title: &str,
    crumbs: &[Crumb],
    refresh: bool,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh {
                    // The record is still being delivered: show its next state soon.
                    meta http-equiv="refresh" content="2";
                }
                title { (title) " · tagcast" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/console/" { "tagcast" }
                    @if let Some(s) = session {
                        span.who {
                            "Signed in as " strong { (s.name) }
                            span.scope { (s.scope.as_str()) }
                        }
                        form.inline method="post" action="/console/sign-out" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    @if !crumbs.is_empty() {
                        nav.crumbs aria-label="breadcrumb" {
                            @for (i, c) in crumbs.iter().enumerate() {
                                @if i > 0 { span.sep { "/" } }
                                a href=(c.href) { (c.label) }
                            }
                        }
                    }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A time as "3 min ago", with the exact time on hover (the script keeps it current).
fn when(now: DateTime<Utc>, at: DateTime<Utc>) -> Markup {
    html! { time datetime=(rfc3339(at)) title=(exact(at)) { (relative(now, at)) } }
}

fn status_badge(status: DeliveryStatus) -> Markup {
    html! { span class={ "status status-" (status.as_str()) } { (status_label(status)) } }
}

fn enabled_badge(hook: &Webhook) -> Markup {
    html! {
        @if hook.enabled {
            span.badge.on { "enabled" }
        } @else {
            span.badge.off { "disabled" }
            @if let Some(reason) = &hook.disabled_reason {
                " " span.reason title="disabled by tagcast" { "(" (reason) ")" }
            }
        }
    }
}

fn hidden(name: &str, value: &str) -> Markup {
    html! { input type="hidden" name=(name) value=(value); }
}

/// A one-button form that posts to `action`.
fn button_form(
    session: &Session,
    action: &str,
    label: &str,
    extra: &[(&str, &str)],
    confirm: Option<&str>,
    class: &str,
) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (hidden("csrf", &session.csrf))
            @for (name, value) in extra { (hidden(name, value)) }
            button type="submit" class=(class) { (label) }
        }
    }
}

/// What a page says after something was done, from a fixed list (never text from the URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Created,
    Saved,
    Enabled,
    Disabled,
    Deleted,
    Redelivered,
}

impl Notice {
    pub fn parse(done: Option<&str>) -> Option<Notice> {
        Some(match done? {
            "created" => Notice::Created,
            "saved" => Notice::Saved,
            "enabled" => Notice::Enabled,
            "disabled" => Notice::Disabled,
            "deleted" => Notice::Deleted,
            "redelivered" => Notice::Redelivered,
            _ => return None,
        })
    }

    fn text(self) -> &'static str {
        match self {
            Notice::Created => "The webhook was created.",
            Notice::Saved => "The changes were saved.",
            Notice::Enabled => "The webhook is enabled: events reach it again.",
            Notice::Disabled => "The webhook is disabled: events no longer reach it.",
            Notice::Deleted => "The webhook was deleted, with its access records.",
            Notice::Redelivered => {
                "A new attempt is queued: same webhook-id, same body. This page updates until it is made."
            }
        }
    }
}

fn notice(n: Option<Notice>) -> Markup {
    html! { @if let Some(n) = n { p.notice role="status" { (n.text()) } } }
}

pub fn error_page(session: Option<&Session>, title: &str, detail: &str) -> Markup {
    layout(
        session,
        title,
        &[Crumb {
            label: "Repositories".into(),
            href: "/console/".into(),
        }],
        false,
        html! { p.problem role="alert" { (detail) } },
    )
}

/// Why the sign-in page is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInReason {
    First,
    Expired,
    Refused,
    CookieRefused,
    SignedOut,
}

pub fn sign_in(next: &str, reason: SignInReason) -> Markup {
    let message = match reason {
        SignInReason::First => None,
        SignInReason::Expired => Some((
            "notice",
            "Your session ended: its token was revoked or has expired. Sign in again.",
        )),
        SignInReason::Refused => Some((
            "problem",
            "That token was not accepted: it is unknown, revoked or mistyped.",
        )),
        SignInReason::CookieRefused => Some((
            "problem",
            "The browser did not keep the session cookie. It is a Secure cookie: open the console over HTTPS, or on localhost.",
        )),
        SignInReason::SignedOut => Some(("notice", "You are signed out.")),
    };
    layout(
        None,
        "Sign in",
        &[],
        false,
        html! {
            @if let Some((class, text)) = message { p class=(class) role="alert" { (text) } }
            form.card method="post" action="/console/sign-in" {
                (hidden("next", next))
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="off" required
                    placeholder="tgc_…" aria-describedby="token-help";
                p.help #token-help {
                    "Make one with " code { "tagcast tokens create --name you --scope write" }
                    " (or " code { "--scope read" } " to look only). It is kept in an HttpOnly cookie for 8 hours."
                }
                button.primary type="submit" { "Sign in" }
            }
        },
    )
}

pub fn repositories(
    session: &Session,
    page: &RepositoryPage,
    cursor: Option<&str>,
    open_error: Option<&str>,
) -> Markup {
    layout(
        Some(session),
        "Repositories",
        &[],
        false,
        html! {
            @if page.data.is_empty() && cursor.is_none() {
                p.empty {
                    "No repository has a webhook yet. Name one below to add its first webhook; "
                    "events of its image builds will then be delivered to it."
                }
            } @else {
                table {
                    thead { tr { th { "Repository" } th.num { "Webhooks" } th.num { "Enabled" } th { "" } } }
                    tbody {
                        @for r in &page.data {
                            @let href = repository_href(&r.namespace, &r.repository);
                            tr {
                                td { a href=(href) { (r.namespace) "/" (r.repository) } }
                                td.num { (r.webhooks) }
                                td.num { (r.enabled) }
                                td { a href={ (href) "/records" } { "access records" } }
                            }
                        }
                    }
                }
                (pager("/console/?", cursor.is_some(), page.next_cursor.as_deref()))
            }
            form.card method="get" action="/console/open" {
                h2 { "Open a repository" }
                div.row {
                    div {
                        label for="namespace" { "Namespace" }
                        input #namespace name="namespace" required;
                    }
                    div {
                        label for="repository" { "Repository" }
                        input #repository name="repository" required;
                    }
                }
                @if let Some(e) = open_error { p.field-error role="alert" { (e) } }
                button type="submit" { "Open" }
            }
        },
    )
}

/// "Newest" and "Older" links; `base` ends in `?` or `&`.
fn pager(base: &str, paged: bool, next: Option<&str>) -> Markup {
    html! {
        nav.pager {
            @if paged { a href={ (base.trim_end_matches(['?', '&'])) } { "← Newest" } }
            @if let Some(next) = next {
                a href={ (base) "cursor=" (segment(next)) } { "Older →" }
            }
        }
    }
}

pub fn webhooks(
    session: &Session,
    namespace: &str,
    repository: &str,
    page: &WebhookPage,
    cursor: Option<&str>,
    done: Option<Notice>,
) -> Markup {
    let href = repository_href(namespace, repository);
    layout(
        Some(session),
        &format!("{namespace}/{repository}"),
        &[Crumb {
            label: "Repositories".into(),
            href: "/console/".into(),
        }],
        false,
        html! {
            (notice(done))
            p.actions {
                a href={ (href) "/records" } { "Access records of this repository" }
                @if session.can_write() {
                    a.button.primary href={ (href) "/new" } { "New webhook" }
                }
            }
            @if page.data.is_empty() && cursor.is_none() {
                p.empty {
                    "This repository has no webhooks. "
                    @if session.can_write() {
                        a href={ (href) "/new" } { "Add one" }
                        ": it will be notified of every image build whose tag its rule matches."
                    } @else {
                        "A token with the write scope can add one."
                    }
                }
            } @else {
                table #webhooks {
                    thead { tr { th { "Name" } th { "URL" } th { "Trigger" } th { "State" } th { "" } } }
                    tbody {
                        @for hook in &page.data {
                            tr data-webhook=(hook.id) {
                                td { a href={ "/console/webhooks/" (hook.id) } { (hook.name) } }
                                td.url { (hidden_url(&hook.url)) }
                                td { (trigger_text(&hook.trigger)) }
                                td { (enabled_badge(hook)) }
                                td.buttons {
                                    a href={ "/console/webhooks/" (hook.id) "/records" } { "records" }
                                    @if session.can_write() {
                                        (enable_button(session, hook, &href))
                                    }
                                }
                            }
                        }
                    }
                }
                (pager(&format!("{href}?"), cursor.is_some(), page.next_cursor.as_deref()))
            }
        },
    )
}

fn enable_button(session: &Session, hook: &Webhook, back: &str) -> Markup {
    let action = format!("/console/webhooks/{}/enabled", hook.id);
    if hook.enabled {
        button_form(
            session,
            &action,
            "Disable",
            &[("enabled", "false"), ("back", back)],
            None,
            "",
        )
    } else {
        button_form(
            session,
            &action,
            "Enable",
            &[("enabled", "true"), ("back", back)],
            None,
            "",
        )
    }
}

/// What a webhook form holds, as typed.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct WebhookForm {
    pub name: String,
    pub url: String,
    pub trigger_type: String,
    pub expression: String,
    pub tags: String,
    /// A checkbox: present when ticked.
    pub enabled: Option<String>,
    /// `generate`, `given` or `none` (create only).
    pub secret_mode: String,
    pub secret: String,
}

impl WebhookForm {
    pub fn for_new() -> WebhookForm {
        WebhookForm {
            trigger_type: "all".into(),
            enabled: Some("on".into()),
            secret_mode: "generate".into(),
            ..WebhookForm::default()
        }
    }

    pub fn of(hook: &Webhook) -> WebhookForm {
        let (trigger_type, expression, tags) = match &hook.trigger {
            TriggerRule::All {} => ("all", String::new(), String::new()),
            TriggerRule::Expression { expression } => {
                ("expression", expression.clone(), String::new())
            }
            TriggerRule::Tags { tags } => ("tags", String::new(), tags.join(", ")),
        };
        WebhookForm {
            name: hook.name.clone(),
            url: String::new(),
            trigger_type: trigger_type.into(),
            expression,
            tags,
            enabled: hook.enabled.then(|| "on".into()),
            secret_mode: String::new(),
            secret: String::new(),
        }
    }
}

/// Messages for a form's fields, and one for the form as a whole.
#[derive(Debug, Default)]
pub struct FormErrors {
    pub fields: Vec<(String, String)>,
    pub general: Option<String>,
}

impl FormErrors {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.general.is_none()
    }

    fn of(&self, field: &str) -> Markup {
        html! {
            @for (f, message) in &self.fields {
                @if f == field { p.field-error id={ "error-" (field) } role="alert" { (message) } }
            }
        }
    }

    fn invalid(&self, field: &str) -> Option<&'static str> {
        self.fields
            .iter()
            .any(|(f, _)| f == field)
            .then_some("true")
    }
}

/// The fields of a webhook, for creating one (`editing` is None) or changing one.
fn webhook_fields(form: &WebhookForm, errors: &FormErrors, editing: Option<&Webhook>) -> Markup {
    let kind = form.trigger_type.as_str();
    html! {
        @if let Some(g) = &errors.general { p.problem role="alert" { (g) } }
        label for="name" { "Name" }
        input #name name="name" value=(form.name) required maxlength="64"
            aria-invalid=[errors.invalid("name")];
        (errors.of("name"))
        label for="url" { "URL" }
        @match editing {
            Some(hook) => {
                input #url name="url" type="url" value=(form.url) maxlength="2048"
                    placeholder={ "unchanged: " (hidden_url(&hook.url)) }
                    aria-invalid=[errors.invalid("url")];
                p.help { "Leave empty to keep the URL; its query string stays hidden here." }
            }
            None => {
                input #url name="url" type="url" value=(form.url) required maxlength="2048"
                    placeholder="https://example.com/hooks/registry"
                    aria-invalid=[errors.invalid("url")];
            }
        }
        (errors.of("url"))
        fieldset.trigger {
            legend { "Trigger" }
            label.choice { input type="radio" name="trigger_type" value="all" checked[kind == "all"]; " every tag" }
            label.choice { input type="radio" name="trigger_type" value="expression" checked[kind == "expression"]; " tags matching a regular expression" }
            label.choice { input type="radio" name="trigger_type" value="tags" checked[kind == "tags"]; " a list of tags" }
            div.when-expression {
                label for="expression" { "Regular expression (matches the whole tag)" }
                input #expression name="expression" value=(form.expression) maxlength="256"
                    placeholder="release-v.*" aria-invalid=[errors.invalid("expression")];
                (errors.of("expression"))
            }
            div.when-tags {
                label for="tags" { "Tags (up to 10, separated by commas)" }
                input #tags name="tags" value=(form.tags) placeholder="latest, stable"
                    aria-invalid=[errors.invalid("tags")];
                (errors.of("tags"))
            }
            (errors.of("trigger"))
        }
        @if editing.is_none() {
            label.choice { input type="checkbox" name="enabled" checked[form.enabled.is_some()]; " enabled" }
            fieldset.secret {
                legend { "Signing secret" }
                @let mode = form.secret_mode.as_str();
                label.choice { input type="radio" name="secret_mode" value="generate" checked[mode == "generate"]; " generate one (shown once)" }
                label.choice { input type="radio" name="secret_mode" value="given" checked[mode == "given"]; " use this one:" }
                input #secret name="secret" type="password" autocomplete="off" value=(form.secret)
                    placeholder="whsec_…" aria-invalid=[errors.invalid("secret")];
                label.choice { input type="radio" name="secret_mode" value="none" checked[mode == "none"]; " none: requests are not signed" }
                (errors.of("secret"))
            }
        }
    }
}

pub fn new_webhook(
    session: &Session,
    namespace: &str,
    repository: &str,
    form: &WebhookForm,
    errors: &FormErrors,
) -> Markup {
    let href = repository_href(namespace, repository);
    layout(
        Some(session),
        "New webhook",
        &crumbs_to_repository(namespace, repository),
        false,
        html! {
            form.card #webhook-form method="post" action={ (href) "/webhooks" } novalidate {
                (hidden("csrf", &session.csrf))
                (webhook_fields(form, errors, None))
                button.primary type="submit" { "Create webhook" }
            }
        },
    )
}

/// What the webhook page shows above its details after an action.
pub enum Outcome {
    Done(Notice),
    /// A secret just made (at creation or by rotation): shown this once.
    Secret {
        secret: String,
        /// Until when the secret it replaced signs beside it.
        previous_until: Option<DateTime<Utc>>,
    },
    Test(TestAttempt),
    Recovered(Queued),
}

pub struct WebhookView<'a> {
    pub hook: &'a Webhook,
    pub outcome: Option<Outcome>,
    pub form: WebhookForm,
    pub errors: FormErrors,
    pub recover_errors: FormErrors,
    pub now: DateTime<Utc>,
}

pub fn webhook(session: &Session, view: WebhookView<'_>) -> Markup {
    let hook = view.hook;
    let base = format!("/console/webhooks/{}", hook.id);
    layout(
        Some(session),
        &hook.name,
        &crumbs_to_repository(&hook.namespace, &hook.repository),
        false,
        html! {
            @match &view.outcome {
                Some(Outcome::Done(n)) => (notice(Some(*n))),
                Some(Outcome::Secret { secret, previous_until }) => {
                    div.secret-shown role="status" {
                        p { strong { "The new signing secret" } ", shown this once: copy it to the receiver now." }
                        pre #new-secret { (secret) }
                        @if let Some(until) = previous_until {
                            p { "The previous secret signs beside it until " (when(view.now, *until)) "." }
                        }
                    }
                }
                Some(Outcome::Test(t)) => {
                    div.test-result role="status" {
                        p { "Test notification: " (status_badge(t.status))
                            @if let Some(code) = t.http_status { " HTTP " (code) }
                            " in " (t.duration_ms) " ms"
                            @if let Some(e) = &t.error { " · " span.error { (e) } } }
                        @if let Some(body) = &t.response_body { pre.body { (body) } }
                        p { a href={ "/console/records/" (t.delivery_id) } { "Its access record" } }
                    }
                }
                Some(Outcome::Recovered(q)) => {
                    p.notice role="status" { (q.queued) " failed deliveries were queued for another attempt." }
                }
                None => {}
            }
            dl.facts {
                dt { "URL" } dd.url { (hidden_url(&hook.url)) }
                dt { "Trigger" } dd { (trigger_text(&hook.trigger)) }
                dt { "State" } dd #state { (enabled_badge(hook)) }
                dt { "Signed" } dd { @if hook.has_secret { "yes" } @else { "no" } }
                dt { "Created" } dd { (when(view.now, hook.created_at)) }
                dt { "Changed" } dd { (when(view.now, hook.updated_at)) }
            }
            p.actions {
                a href={ (base) "/records" } { "Access records" }
                @if session.can_write() {
                    (enable_button(session, hook, &base))
                    (button_form(session, &format!("{base}/test"), "Send a test", &[], None, ""))
                    (button_form(session, &format!("{base}/rotate"), "Rotate secret", &[],
                        Some("Make a new secret? The old one keeps signing beside it for the grace period."), ""))
                    (button_form(session, &format!("{base}/delete"), "Delete", &[],
                        Some("Delete this webhook and all its access records?"), "danger"))
                }
            }
            @if session.can_write() {
                form.card #webhook-form method="post" action=(base) novalidate {
                    h2 { "Change" }
                    (hidden("csrf", &session.csrf))
                    (webhook_fields(&view.form, &view.errors, Some(hook)))
                    button.primary type="submit" { "Save" }
                }
                form.card #recover-form method="post" action={ (base) "/recover" } {
                    h2 { "Recover failed deliveries" }
                    p.help { "Every failed delivery created in this range (UTC) is attempted again, with its own webhook-id." }
                    (hidden("csrf", &session.csrf))
                    @if let Some(g) = &view.recover_errors.general { p.problem role="alert" { (g) } }
                    div.row {
                        div {
                            label for="since" { "Since" }
                            input #since name="since" type="datetime-local" step="1" required;
                            (view.recover_errors.of("since"))
                        }
                        div {
                            label for="until" { "Until (optional)" }
                            input #until name="until" type="datetime-local" step="1";
                            (view.recover_errors.of("until"))
                        }
                    }
                    button type="submit" { "Recover" }
                }
            }
        },
    )
}

/// Whose records a records page lists.
pub enum RecordsOf<'a> {
    Repository {
        namespace: &'a str,
        repository: &'a str,
    },
    Webhook(&'a Webhook),
}

/// The filters as typed, to show them back.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct RecordFilters {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tag: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub since: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub until: String,
    #[serde(skip_serializing)]
    pub cursor: String,
}

pub fn records(
    session: &Session,
    of: RecordsOf<'_>,
    filters: &RecordFilters,
    errors: &FormErrors,
    page: &DeliveryPage,
    now: DateTime<Utc>,
) -> Markup {
    let (title, crumbs, action, by_webhook) = match &of {
        RecordsOf::Repository {
            namespace,
            repository,
        } => (
            format!("Access records of {namespace}/{repository}"),
            crumbs_to_repository(namespace, repository),
            format!("{}/records", repository_href(namespace, repository)),
            false,
        ),
        RecordsOf::Webhook(hook) => {
            let mut crumbs = crumbs_to_repository(&hook.namespace, &hook.repository);
            crumbs.push(Crumb {
                label: hook.name.clone(),
                href: format!("/console/webhooks/{}", hook.id),
            });
            (
                format!("Access records of {}", hook.name),
                crumbs,
                format!("/console/webhooks/{}/records", hook.id),
                true,
            )
        }
    };
    let query = serde_urlencoded::to_string(filters).unwrap_or_default();
    let base = if query.is_empty() {
        format!("{action}?")
    } else {
        format!("{action}?{query}&")
    };
    layout(
        Some(session),
        &title,
        &crumbs,
        false,
        html! {
            form.filters #filters method="get" action=(action) {
                div {
                    label for="status" { "Status" }
                    select #status name="status" {
                        option value="" selected[filters.status.is_empty()] { "any" }
                        @for s in DeliveryStatus::ALL {
                            option value=(s.as_str()) selected[filters.status == s.as_str()] { (status_label(s)) }
                        }
                    }
                    (errors.of("status"))
                }
                div {
                    label for="tag" { "Tag" }
                    input #tag name="tag" value=(filters.tag) aria-invalid=[errors.invalid("tag")];
                    (errors.of("tag"))
                }
                div {
                    label for="since" { "Since (UTC)" }
                    input #since name="since" type="datetime-local" step="1" value=(filters.since)
                        aria-invalid=[errors.invalid("since")];
                    (errors.of("since"))
                }
                div {
                    label for="until" { "Until (UTC)" }
                    input #until name="until" type="datetime-local" step="1" value=(filters.until)
                        aria-invalid=[errors.invalid("until")];
                    (errors.of("until"))
                }
                div.submit { button type="submit" { "Filter" } a href=(action) { "clear" } }
            }
            @if let Some(g) = &errors.general { p.problem role="alert" { (g) } }
            @if page.data.is_empty() {
                p.empty {
                    @if query.is_empty() && filters.cursor.is_empty() {
                        "No access records yet. One appears for every image build of this repository, "
                        "\"not triggered (未触发)\" included, once the registry publishes its event."
                    } @else {
                        "No access record matches these filters."
                    }
                }
            } @else {
                table #records {
                    thead { tr {
                        th { "Time" } th { "Tag" }
                        @if !by_webhook { th { "Webhook" } }
                        th { "Status" } th.num { "HTTP" } th.num { "Attempts" } th { "" }
                    } }
                    tbody {
                        @for r in &page.data { (record_row(r, now, by_webhook)) }
                    }
                }
                (pager(&base, !filters.cursor.is_empty(), page.next_cursor.as_deref()))
            }
        },
    )
}

fn record_row(r: &DeliveryRow, now: DateTime<Utc>, by_webhook: bool) -> Markup {
    html! {
        tr data-record=(r.id) {
            td { (when(now, r.created_at)) }
            td.tag { (r.tag) }
            @if !by_webhook { td { a href={ "/console/webhooks/" (r.webhook_id) } { (r.webhook_name) } } }
            td { (status_badge(r.status)) }
            td.num { @if let Some(code) = r.http_status { (code) } @else { "–" } }
            td.num { (r.attempts) }
            td { a href={ "/console/records/" (r.id) } { "details" } }
        }
    }
}

pub fn record(
    session: &Session,
    d: &Delivery,
    now: DateTime<Utc>,
    done: Option<Notice>,
    problem: Option<&str>,
) -> Markup {
    let r = &d.record;
    let mut crumbs = crumbs_to_repository(&r.namespace, &r.repository);
    crumbs.push(Crumb {
        label: r.webhook_name.clone(),
        href: format!("/console/webhooks/{}/records", r.webhook_id),
    });
    layout(
        Some(session),
        &format!("Access record {}", r.tag),
        &crumbs,
        r.status == DeliveryStatus::Pending,
        html! {
            (notice(done))
            @if let Some(p) = problem { p.problem role="alert" { (p) } }
            dl.facts {
                dt { "Status" } dd #record-status { (status_badge(r.status)) }
                dt { "Tag" } dd.tag { (r.tag) }
                dt { "Digest" } dd.mono { (r.digest) }
                dt { "HTTP status" } dd { @if let Some(code) = r.http_status { (code) } @else { "–" } }
                dt { "Error" } dd { @if let Some(e) = &r.error { (e) } @else { "–" } }
                dt { "Attempts" } dd #record-attempts { (r.attempts) }
                dt { "Created" } dd { (when(now, r.created_at)) }
                dt { "Changed" } dd { (when(now, r.updated_at)) }
                @if let Some(next) = r.next_attempt_at { dt { "Next attempt" } dd { (when(now, next)) } }
                dt { "Event" } dd.mono { (r.event_id) }
                dt { "webhook-id" } dd.mono { (r.id) }
            }
            @if session.can_write() && r.status.is_final() && r.status != DeliveryStatus::NotTriggered {
                p.actions {
                    (button_form(session, &format!("/console/records/{}/redeliver", r.id), "Redeliver", &[], None, "primary"))
                }
            }
            h2 { "Request body" }
            @match &d.request_body {
                // As sent, byte for byte: what a receiver's signature check saw.
                Some(body) => pre.body #request-body { (body) },
                None => p.empty { "Nothing was sent: the webhook's rule did not fire for this tag." },
            }
            h2 { "Attempts" }
            @if d.attempt_log.is_empty() {
                p.empty { "No attempt was made." }
            }
            @for a in &d.attempt_log {
                section.attempt data-attempt=(a.attempt) {
                    h3 {
                        "Attempt " (a.attempt) " · " (when(now, a.started_at)) " · " (a.duration_ms) " ms · "
                        @if let Some(code) = a.http_status { "HTTP " (code) } @else { "no response" }
                        @if let Some(e) = &a.error { " · " span.error { (e) } }
                    }
                    @if let Some(detail) = &a.error_detail { p.detail { (detail) } }
                    @if let Some(body) = &a.response_body {
                        pre.body.response { (body) }
                    } @else {
                        p.empty { "No response body." }
                    }
                }
            }
        },
    )
}

/// The value a filter's time field shows back.
pub fn filter_time(at: Option<DateTime<Utc>>) -> String {
    at.map(form_value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_come_from_a_fixed_list() {
        assert_eq!(Notice::parse(Some("saved")), Some(Notice::Saved));
        assert_eq!(Notice::parse(Some("<script>")), None);
        assert_eq!(Notice::parse(None), None);
    }

    #[test]
    fn markup_in_data_is_text() {
        let page = error_page(None, "<b>t</b>", "<script>alert(1)</script>").into_string();
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;b&gt;t&lt;/b&gt;"));
        assert!(!page.contains("<script>alert"));
    }
}
