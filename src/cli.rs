//! The command line over the admin API (`tagcast webhooks`, `tagcast deliveries`), and
//! `tagcast tokens` over PostgreSQL: a table for people, `--json` for scripts, and an exit
//! status a script can branch on (see [`CliError::exit_code`]).

use std::io::Write as _;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::api::auth;
use crate::redact::redact_url;
use crate::store::{self, Pool, tokens};

/// What every API command takes.
#[derive(Debug, Clone, Args)]
pub struct Api {
    /// Base URL of the admin API [default: http:// and TAGCAST_API_ADDR]. The token is read from
    /// TAGCAST_API_TOKEN.
    #[arg(long, env = "TAGCAST_API_URL", value_name = "URL")]
    pub api_url: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokensCommand {
    /// Make a token and print it, once.
    Create {
        /// What the token is for (1 to 64 letters, digits, '_', '.' or '-'); one live token per name.
        #[arg(long)]
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        scope: tokens::Scope,
    },
    /// List the tokens (never the tokens themselves).
    List {
        /// One JSON object per token instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke the live token of that name.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum WebhooksCommand {
    /// A repository's webhooks.
    List {
        /// NAMESPACE/REPOSITORY
        repository: String,
        #[command(flatten)]
        api: Api,
    },
    /// Add a webhook to a repository (trigger: all tags, unless --expression or --tags).
    Create {
        /// NAMESPACE/REPOSITORY
        repository: String,
        /// Unique in the repository: 1 to 64 letters, digits, '_', '.' or '-'.
        #[arg(long)]
        name: String,
        /// Where to POST notifications (http or https).
        #[arg(long)]
        url: String,
        #[command(flatten)]
        trigger: TriggerArgs,
        /// Sign requests with a new secret, printed once.
        #[arg(long)]
        generate_secret: bool,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        api: Api,
    },
    /// One webhook.
    Get {
        /// The webhook's id.
        id: i64,
        #[command(flatten)]
        api: Api,
    },
    /// Change a webhook: only the fields given.
    Update {
        /// The webhook's id.
        id: i64,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new URL.
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        trigger: TriggerArgs,
        /// Fire for every tag again.
        #[arg(long, conflicts_with_all = ["expression", "tags"])]
        all_tags: bool,
        /// Enable it (clears why tagcast disabled it).
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Disable it: no deliveries, no records, until enabled.
        #[arg(long)]
        disable: bool,
        /// Sign with a new secret, printed once (the old one stops at once: see rotate-secret).
        #[arg(long, conflicts_with = "remove_secret")]
        generate_secret: bool,
        /// Sign no more.
        #[arg(long)]
        remove_secret: bool,
        #[command(flatten)]
        api: Api,
    },
    /// Delete a webhook and its access records.
    Delete {
        /// The webhook's id.
        id: i64,
        #[command(flatten)]
        api: Api,
    },
    /// Send a test notification now and show what came of it.
    Test {
        /// The webhook's id.
        id: i64,
        #[command(flatten)]
        api: Api,
    },
    /// A new secret, printed once; the old one keeps signing for TAGCAST_SECRET_ROTATION_GRACE.
    RotateSecret {
        /// The webhook's id.
        id: i64,
        #[command(flatten)]
        api: Api,
    },
}

#[derive(Debug, Clone, Args)]
pub struct TriggerArgs {
    /// Fire when this regular expression matches the whole tag.
    #[arg(long, conflicts_with = "tags")]
    pub expression: Option<String>,
    /// Fire for these tags (comma-separated, at most 10).
    #[arg(long, value_delimiter = ',')]
    pub tags: Option<Vec<String>>,
}

impl TriggerArgs {
    fn rule(&self) -> Option<Value> {
        match (&self.expression, &self.tags) {
            (Some(expression), _) => Some(json!({"type": "expression", "expression": expression})),
            (None, Some(tags)) => Some(json!({"type": "tags", "tags": tags})),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeliveriesCommand {
    /// Access records, newest first: a repository's, or one webhook's.
    List {
        /// NAMESPACE/REPOSITORY
        #[arg(required_unless_present = "webhook", conflicts_with = "webhook")]
        repository: Option<String>,
        /// One webhook's records instead (its id).
        #[arg(long)]
        webhook: Option<i64>,
        /// Only this status: not_triggered, pending, retrying, succeeded or failed.
        #[arg(long)]
        status: Option<String>,
        /// Only this image tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only records created at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only records created before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Records per page, 1 to 200 (default 50).
        #[arg(long)]
        limit: Option<u16>,
        /// The cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        api: Api,
    },
    /// One access record with the body sent and every attempt.
    Get {
        /// The record's id (its webhook-id).
        id: String,
        #[command(flatten)]
        api: Api,
    },
    /// Attempt a finished delivery again (same webhook-id, same body).
    Redeliver {
        /// The record's id (its webhook-id).
        id: String,
        #[command(flatten)]
        api: Api,
    },
    /// Attempt every failed delivery of a webhook created in a time range again.
    Recover {
        /// The webhook's id.
        #[arg(long)]
        webhook: i64,
        /// From this RFC 3339 time on.
        #[arg(long)]
        since: String,
        /// Up to this RFC 3339 time (default: now).
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        api: Api,
    },
}

/// Why a command failed; each has its exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("TAGCAST_API_TOKEN is not set (make one with `tagcast tokens create`)")]
    NoToken,
    #[error("no live token is named {0:?}")]
    NoSuchToken(String),
    #[error("cannot build an HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The API answered with a problem detail.
    #[error("{status}: {detail}")]
    Refused {
        status: u16,
        detail: String,
        fields: Vec<(String, String)>,
    },
    #[error(transparent)]
    Token(#[from] tokens::CreateError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Random(#[from] auth::NoRandomness),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// 1: tagcast or the API failed (unreachable, 5xx); 2: the command was wrong (usage, 400,
    /// 409, 413, 422); 3: not found; 4: not allowed (no token, 401, 403).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Token(tokens::CreateError::NameTaken(_)) => 2,
            CliError::NoToken => 4,
            CliError::NoSuchToken(_) => 3,
            CliError::Refused { status, .. } => match status {
                404 => 3,
                401 | 403 => 4,
                400..=499 => 2,
                _ => 1,
            },
            _ => 1,
        }
    }

    /// The field errors of a 422, one per line.
    pub fn fields(&self) -> &[(String, String)] {
        match self {
            CliError::Refused { fields, .. } => fields,
            _ => &[],
        }
    }
}

/// `tagcast tokens ...`.
pub async fn tokens(pool: &Pool, command: TokensCommand) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match command {
        TokensCommand::Create { name, scope } => {
            if crate::api::validate::name(&name).is_err() {
                return Err(CliError::Usage(
                    "--name: 1 to 64 letters, digits, '_', '.' or '-'".into(),
                ));
            }
            let made = auth::new_token()?;
            tokens::create(pool, &name, scope, &made.lookup, &made.hash).await?;
            eprintln!(
                "token {name} ({}) created; it is shown only now:",
                scope.as_str()
            );
            writeln!(out, "{}", made.token)?;
        }
        TokensCommand::List { json } => {
            let listed = tokens::list(pool).await?;
            if json {
                for token in &listed {
                    serde_json::to_writer(&mut out, token).map_err(std::io::Error::from)?;
                    writeln!(out)?;
                }
            } else {
                let rows = listed
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.scope.as_str().to_owned(),
                            t.created_at.format("%Y-%m-%d %H:%M").to_string(),
                            t.last_used_at
                                .map_or("-".into(), |at| at.format("%Y-%m-%d %H:%M").to_string()),
                            t.revoked_at.map_or("live".into(), |at| {
                                format!("revoked {}", at.format("%Y-%m-%d %H:%M"))
                            }),
                        ]
                    })
                    .collect();
                write!(
                    out,
                    "{}",
                    table(&["NAME", "SCOPE", "CREATED", "LAST USED", "STATE"], rows)
                )?;
            }
        }
        TokensCommand::Revoke { name } => {
            if !tokens::revoke(pool, &name).await? {
                return Err(CliError::NoSuchToken(name));
            }
            writeln!(out, "revoked {name}")?;
        }
    }
    Ok(())
}

/// A client of the admin API.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(api: &Api, default_addr: std::net::SocketAddr) -> Result<Client, CliError> {
        let token = std::env::var("TAGCAST_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or(CliError::NoToken)?;
        let base = api
            .api_url
            .clone()
            .unwrap_or_else(|| format!("http://{default_addr}"));
        let http = reqwest::Client::builder()
            .user_agent(concat!("tagcast-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(CliError::Client)?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Calls the API; the body of a 2xx answer (null when empty), or the problem it answered.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let mut url = url::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| CliError::Usage(format!("--api-url {}: {e}", self.base)))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let unreachable = |e: reqwest::Error| CliError::Unreachable {
            url: self.base.clone(),
            reason: crate::client::innermost(&e),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        let detail = value["detail"].as_str().map_or_else(
            || status.canonical_reason().unwrap_or("error").to_owned(),
            str::to_owned,
        );
        let fields = value["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| (text_of(&e["field"]), text_of(&e["message"])))
                    .collect()
            })
            .unwrap_or_default();
        Err(CliError::Refused {
            status: status.as_u16(),
            detail,
            fields,
        })
    }
}

/// `NAMESPACE/REPOSITORY`, as two path segments.
fn repository_path(repository: &str) -> Result<String, CliError> {
    match repository.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(format!("{}/{}", segment(namespace), segment(name)))
        }
        _ => Err(CliError::Usage(format!(
            "{repository:?} is not NAMESPACE/REPOSITORY"
        ))),
    }
}

/// One URL path segment, percent-encoded.
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `tagcast webhooks ...`.
pub async fn webhooks(
    command: WebhooksCommand,
    addr: std::net::SocketAddr,
) -> Result<(), CliError> {
    use reqwest::Method;
    let (api, shown) = match command {
        WebhooksCommand::List { repository, api } => {
            let client = Client::new(&api, addr)?;
            let path = format!(
                "/api/v1/repositories/{}/webhooks",
                repository_path(&repository)?
            );
            let mut all = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut query = vec![("limit", "200".to_owned())];
                if let Some(c) = cursor.take() {
                    query.push(("cursor", c));
                }
                let page = client.call(Method::GET, &path, &query, None).await?;
                all.extend(page["data"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            (api, Shown::Webhooks(Value::Array(all)))
        }
        WebhooksCommand::Create {
            repository,
            name,
            url,
            trigger,
            generate_secret,
            disabled,
            api,
        } => {
            let client = Client::new(&api, addr)?;
            let path = format!(
                "/api/v1/repositories/{}/webhooks",
                repository_path(&repository)?
            );
            let mut body = json!({"name": name, "url": url, "enabled": !disabled, "generate_secret": generate_secret});
            if let Some(rule) = trigger.rule() {
                body["trigger"] = rule;
            }
            let created = client.call(Method::POST, &path, &[], Some(body)).await?;
            (api, Shown::Webhook(created))
        }
        WebhooksCommand::Get { id, api } => {
            let client = Client::new(&api, addr)?;
            let got = client
                .call(Method::GET, &format!("/api/v1/webhooks/{id}"), &[], None)
                .await?;
            (api, Shown::Webhook(got))
        }
        WebhooksCommand::Update {
            id,
            name,
            url,
            trigger,
            all_tags,
            enable,
            disable,
            generate_secret,
            remove_secret,
            api,
        } => {
            let client = Client::new(&api, addr)?;
            let mut body = json!({});
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            if let Some(url) = url {
                body["url"] = json!(url);
            }
            if let Some(rule) = trigger.rule() {
                body["trigger"] = rule;
            }
            if all_tags {
                body["trigger"] = json!({"type": "all"});
            }
            if enable || disable {
                body["enabled"] = json!(enable);
            }
            if generate_secret {
                body["generate_secret"] = json!(true);
            }
            if remove_secret {
                body["secret"] = Value::Null;
            }
            let changed = client
                .call(
                    Method::PATCH,
                    &format!("/api/v1/webhooks/{id}"),
                    &[],
                    Some(body),
                )
                .await?;
            (api, Shown::Webhook(changed))
        }
        WebhooksCommand::Delete { id, api } => {
            let client = Client::new(&api, addr)?;
            client
                .call(Method::DELETE, &format!("/api/v1/webhooks/{id}"), &[], None)
                .await?;
            (
                api,
                Shown::Line(
                    json!({"deleted": id}),
                    format!("deleted webhook {id} and its access records"),
                ),
            )
        }
        WebhooksCommand::Test { id, api } => {
            let client = Client::new(&api, addr)?;
            let attempt = client
                .call(
                    Method::POST,
                    &format!("/api/v1/webhooks/{id}/test"),
                    &[],
                    None,
                )
                .await?;
            let line = format!(
                "{} http_status={} duration_ms={} error={} delivery={}",
                text_of(&attempt["status"]),
                text_of(&attempt["http_status"]),
                text_of(&attempt["duration_ms"]),
                text_of(&attempt["error"]),
                text_of(&attempt["delivery_id"]),
            );
            (api, Shown::Line(attempt, line))
        }
        WebhooksCommand::RotateSecret { id, api } => {
            let client = Client::new(&api, addr)?;
            let rotated = client
                .call(
                    Method::POST,
                    &format!("/api/v1/webhooks/{id}/secret/rotate"),
                    &[],
                    None,
                )
                .await?;
            let line = format!(
                "new secret (shown only now): {}\nthe previous secret signs beside it until {}",
                text_of(&rotated["secret"]),
                text_of(&rotated["previous_secret_expires_at"]),
            );
            (api, Shown::Line(rotated, line))
        }
    };
    print(&shown, api.json)
}

/// `tagcast deliveries ...`.
pub async fn deliveries(
    command: DeliveriesCommand,
    addr: std::net::SocketAddr,
) -> Result<(), CliError> {
    use reqwest::Method;
    let (api, shown) = match command {
        DeliveriesCommand::List {
            repository,
            webhook,
            status,
            tag,
            since,
            until,
            limit,
            cursor,
            api,
        } => {
            let client = Client::new(&api, addr)?;
            let path = match (repository, webhook) {
                (_, Some(id)) => format!("/api/v1/webhooks/{id}/deliveries"),
                (Some(repository), None) => format!(
                    "/api/v1/repositories/{}/deliveries",
                    repository_path(&repository)?
                ),
                (None, None) => {
                    return Err(CliError::Usage(
                        "give NAMESPACE/REPOSITORY or --webhook ID".into(),
                    ));
                }
            };
            let query: Vec<(&str, String)> = [
                ("status", status),
                ("tag", tag),
                ("since", since),
                ("until", until),
                ("limit", limit.map(|l| l.to_string())),
                ("cursor", cursor),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            let page = client.call(Method::GET, &path, &query, None).await?;
            (api, Shown::Deliveries(page))
        }
        DeliveriesCommand::Get { id, api } => {
            let client = Client::new(&api, addr)?;
            let got = client
                .call(
                    Method::GET,
                    &format!("/api/v1/deliveries/{}", segment(&id)),
                    &[],
                    None,
                )
                .await?;
            (api, Shown::Delivery(got))
        }
        DeliveriesCommand::Redeliver { id, api } => {
            let client = Client::new(&api, addr)?;
            let queued = client
                .call(
                    Method::POST,
                    &format!("/api/v1/deliveries/{}/redeliver", segment(&id)),
                    &[],
                    None,
                )
                .await?;
            (
                api,
                Shown::Line(queued, format!("queued another attempt of {id}")),
            )
        }
        DeliveriesCommand::Recover {
            webhook,
            since,
            until,
            api,
        } => {
            let client = Client::new(&api, addr)?;
            let mut body = json!({"since": since});
            if let Some(until) = until {
                body["until"] = json!(until);
            }
            let queued = client
                .call(
                    Method::POST,
                    &format!("/api/v1/webhooks/{webhook}/recover"),
                    &[],
                    Some(body),
                )
                .await?;
            let line = format!(
                "queued {} failed deliveries for another attempt",
                text_of(&queued["queued"])
            );
            (api, Shown::Line(queued, line))
        }
    };
    print(&shown, api.json)
}

/// What a command prints.
enum Shown {
    Webhooks(Value),
    Webhook(Value),
    Deliveries(Value),
    Delivery(Value),
    /// JSON for scripts, a sentence for people.
    Line(Value, String),
}

fn print(shown: &Shown, json: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    if json {
        let value = match shown {
            Shown::Webhooks(v)
            | Shown::Webhook(v)
            | Shown::Deliveries(v)
            | Shown::Delivery(v)
            | Shown::Line(v, _) => v,
        };
        writeln!(out, "{value}")?;
        return Ok(());
    }
    match shown {
        Shown::Webhooks(list) => {
            let rows = list
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(webhook_row)
                .collect();
            write!(
                out,
                "{}",
                table(&["ID", "NAME", "ENABLED", "TRIGGER", "URL"], rows)
            )?;
        }
        Shown::Webhook(w) => {
            write!(
                out,
                "{}",
                table(
                    &["ID", "NAME", "ENABLED", "TRIGGER", "URL"],
                    vec![webhook_row(w)]
                )
            )?;
            if let Some(secret) = w["secret"].as_str() {
                writeln!(out, "secret (shown only now): {secret}")?;
            }
        }
        Shown::Deliveries(page) => {
            let rows = page["data"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    vec![
                        text_of(&d["created_at"]),
                        text_of(&d["status"]),
                        text_of(&d["tag"]),
                        text_of(&d["http_status"]),
                        text_of(&d["attempts"]),
                        text_of(&d["webhook_name"]),
                        text_of(&d["id"]),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                table(
                    &[
                        "CREATED", "STATUS", "TAG", "HTTP", "ATTEMPTS", "WEBHOOK", "ID"
                    ],
                    rows
                )
            )?;
            if let Some(next) = page["next_cursor"].as_str() {
                writeln!(out, "more: --cursor {next}")?;
            }
        }
        Shown::Delivery(d) => {
            for key in [
                "id",
                "event_id",
                "webhook_name",
                "namespace",
                "repository",
                "tag",
                "digest",
                "status",
                "attempts",
                "http_status",
                "error",
                "created_at",
                "next_attempt_at",
            ] {
                writeln!(out, "{key:<16}{}", text_of(&d[key]))?;
            }
            writeln!(out, "{:<16}{}", "request_body", text_of(&d["request_body"]))?;
            let rows = d["attempt_log"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    vec![
                        text_of(&a["attempt"]),
                        text_of(&a["started_at"]),
                        text_of(&a["duration_ms"]),
                        text_of(&a["http_status"]),
                        [text_of(&a["error"]), text_of(&a["error_detail"])].join(" "),
                        text_of(&a["response_body"]).chars().take(60).collect(),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                table(&["#", "STARTED", "MS", "HTTP", "ERROR", "RESPONSE"], rows)
            )?;
        }
        Shown::Line(_, line) => writeln!(out, "{line}")?,
    }
    Ok(())
}

fn webhook_row(w: &Value) -> Vec<String> {
    let trigger = match w["trigger"]["type"].as_str() {
        Some("expression") => format!("expression {}", text_of(&w["trigger"]["expression"])),
        Some("tags") => format!(
            "tags {}",
            w["trigger"]["tags"]
                .as_array()
                .map(|t| t.iter().map(text_of).collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        ),
        _ => "all".to_owned(),
    };
    let enabled = match (w["enabled"].as_bool(), w["disabled_reason"].as_str()) {
        (Some(true), _) => "yes".to_owned(),
        (_, Some(reason)) => format!("no ({reason})"),
        _ => "no".to_owned(),
    };
    // A table goes to terminals and logs: the query string (ACR puts a secret there) stays out.
    vec![
        text_of(&w["id"]),
        text_of(&w["name"]),
        enabled,
        trigger,
        redact_url(&text_of(&w["url"])),
    ]
}

/// A JSON value as table text: strings bare, null as `-`, no control characters.
fn text_of(v: &Value) -> String {
    let text = match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = cells
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_failures_apart() {
        let refused = |status| CliError::Refused {
            status,
            detail: String::new(),
            fields: vec![],
        };
        let cases = [
            (refused(400), 2),
            (refused(409), 2),
            (refused(422), 2),
            (refused(404), 3),
            (refused(401), 4),
            (refused(403), 4),
            (refused(503), 1),
            (CliError::NoToken, 4),
            (CliError::NoSuchToken(String::new()), 3),
            (CliError::Usage(String::new()), 2),
            (
                CliError::Unreachable {
                    url: String::new(),
                    reason: String::new(),
                },
                1,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.exit_code(), code, "{error:?}");
        }
    }

    #[test]
    fn repositories_become_two_segments() {
        assert_eq!(repository_path("ns/repo").unwrap(), "ns/repo");
        assert_eq!(repository_path("my ns/re%po").unwrap(), "my%20ns/re%25po");
        for bad in ["ns", "ns/", "/repo", "a/b/c"] {
            assert!(repository_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tables_pad_columns_and_strip_control_characters() {
        let shown = table(
            &["A", "LONGER"],
            vec![vec!["wide cell".into(), text_of(&json!("x\u{1b}[31my"))]],
        );
        assert_eq!(shown, "A          LONGER\nwide cell  x [31my\n");
    }
}
