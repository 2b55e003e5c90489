//! The HTTP side of a delivery: one POST with the contract's headers, timeouts, no redirects,
//! a capped response read, and the address guard on every address it connects to.

use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::guard::AddressPolicy;
use crate::metrics::AttemptLabel;
use crate::payload;
use crate::retry::{AttemptError, AttemptOutcome, parse_retry_after};

/// At most this much of a response body is read (contract section 4).
const MAX_RESPONSE_READ: usize = 64 * 1024;
/// At most this much of it is kept in `delivery_attempts.response_body`.
const MAX_RESPONSE_KEPT: usize = 4 * 1024;

/// Everything known about one attempt, ready to record.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub outcome: AttemptOutcome,
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    /// Why there was no answer; `None` when the receiver answered.
    pub error: Option<AttemptError>,
    /// The cause behind `error`, in words a person can act on (`connection refused`).
    pub detail: Option<String>,
    pub response_body: Option<String>,
}

impl AttemptReport {
    pub fn http_status(&self) -> Option<u16> {
        match self.outcome {
            AttemptOutcome::Response { status, .. } => Some(status),
            _ => None,
        }
    }

    /// No connection could be made in time: the endpoint counts as slow for the gate.
    pub fn unreachable(&self) -> bool {
        matches!(
            self.outcome,
            AttemptOutcome::Timeout | AttemptOutcome::Connect
        )
    }

    pub fn label(&self) -> AttemptLabel {
        match self.outcome {
            AttemptOutcome::Response { status, .. } => match status {
                200..=299 => AttemptLabel::Status2xx,
                300..=399 => AttemptLabel::Status3xx,
                500..=599 => AttemptLabel::Status5xx,
                _ => AttemptLabel::Status4xx,
            },
            AttemptOutcome::Timeout => AttemptLabel::Timeout,
            AttemptOutcome::Connect => AttemptLabel::Connect,
            AttemptOutcome::Blocked => AttemptLabel::Blocked,
        }
    }
}

/// Settings of the HTTP client.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub policy: AddressPolicy,
}

/// The webhook HTTP client: pooled keep-alive connections, cheap to clone.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
    connect_timeout: Duration,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("every address of the host is blocked")]
struct Blocked;

/// Resolves with the system resolver, then drops every address the policy refuses; so DNS
/// cannot smuggle in a private address.
struct GuardedResolver(Arc<AddressPolicy>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Blocked) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

impl WebhookClient {
    pub fn new(settings: &ClientSettings) -> Result<WebhookClient, ClientError> {
        let policy = Arc::new(settings.policy.clone());
        let http = reqwest::Client::builder()
            .user_agent(concat!("tagcast/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            // A proxy would connect on our behalf, out of the guard's sight.
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .dns_resolver(Arc::new(GuardedResolver(policy.clone())))
            .build()?;
        Ok(WebhookClient {
            http,
            policy,
            connect_timeout: settings.connect_timeout,
            timeout: settings.timeout,
        })
    }

    /// Makes one attempt. Never fails: every failure is an outcome to record.
    pub async fn send(
        &self,
        url: &str,
        secret: Option<&str>,
        body: &str,
        webhook_id: &str,
    ) -> AttemptReport {
        let started_at = Utc::now();
        let clock = Instant::now();
        let failed = |error: AttemptError, detail: String| AttemptReport {
            outcome: error.outcome(),
            started_at,
            duration: clock.elapsed(),
            error: Some(error),
            detail: Some(detail),
            response_body: None,
        };

        let parsed = match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            // The parser's words never quote the URL, which may hold a secret.
            Ok(u) => {
                let scheme = u.scheme().to_owned();
                return failed(
                    AttemptError::InvalidUrl,
                    format!("scheme {scheme} is not http or https"),
                );
            }
            Err(e) => return failed(AttemptError::InvalidUrl, format!("not a URL: {e}")),
        };
        // reqwest does not resolve IP-literal hosts, so the resolver never sees them.
        let literal: Option<IpAddr> = match parsed.host() {
            Some(url::Host::Ipv4(v4)) => Some(v4.into()),
            Some(url::Host::Ipv6(v6)) => Some(v6.into()),
            _ => None,
        };
        if let Some(ip) = literal.filter(|ip| !self.policy.permits(*ip)) {
            return failed(
                AttemptError::BlockedAddress,
                format!("{ip} is not a public address (TAGCAST_ALLOW_TARGETS can allow it)"),
            );
        }

        let timestamp = started_at.timestamp();
        let mut request = self
            .http
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .body(body.to_owned());
        if let Some(secret) = secret {
            match payload::sign(secret, webhook_id, timestamp, body) {
                Ok(Some(signature)) => request = request.header("webhook-signature", signature),
                Ok(None) => {}
                Err(_) => {
                    return failed(
                        AttemptError::InvalidSecret,
                        "the secret is not whsec_ followed by base64".to_owned(),
                    );
                }
            }
        }

        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let error = classify_error(&e);
                return failed(error, self.describe(error, &e));
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let mut kept = Vec::new();
        let mut read = 0usize;
        // The status decides the outcome; a body that breaks off or runs past the timeout only
        // shortens what is kept.
        while read < MAX_RESPONSE_READ {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    let room = MAX_RESPONSE_KEPT.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut text = String::from_utf8_lossy(&kept).replace('\0', "");
        // A character cut at the 4 KiB mark becomes U+FFFD, which is longer: cut again, on a
        // character boundary.
        while text.len() > MAX_RESPONSE_KEPT {
            text.pop();
        }
        AttemptReport {
            outcome: AttemptOutcome::Response {
                status,
                retry_after,
            },
            started_at,
            duration: clock.elapsed(),
            error: None,
            detail: None,
            response_body: (!text.is_empty()).then_some(text),
        }
    }
}

impl WebhookClient {
    /// The cause of a failed request in a few words: the innermost error's text (never the
    /// outer one, which quotes the URL and so perhaps a secret), marked `dns:` or `tls:` when it
    /// happened there.
    fn describe(&self, error: AttemptError, e: &reqwest::Error) -> String {
        if error == AttemptError::Timeout {
            return if e.is_connect() {
                format!(
                    "no connection within {:?} (TAGCAST_HTTP_CONNECT_TIMEOUT)",
                    self.connect_timeout
                )
            } else {
                format!(
                    "no complete answer within {:?} (TAGCAST_HTTP_TIMEOUT)",
                    self.timeout
                )
            };
        }
        if error == AttemptError::BlockedAddress {
            return "no address of the host is public (TAGCAST_ALLOW_TARGETS can allow one)"
                .to_owned();
        }
        let chain: Vec<String> = std::iter::successors(e.source(), |s| (*s).source())
            .map(|s| s.to_string())
            .collect();
        let innermost = chain.last().map_or("connection failed", String::as_str);
        let phase = if error == AttemptError::TlsCertificate
            || chain
                .iter()
                .any(|t| t.contains("tls") || t.contains("certificate"))
        {
            "tls: "
        } else if chain.iter().any(|t| t == "dns error") {
            "dns: "
        } else {
            ""
        };
        format!("{phase}{}", plain(innermost))
    }
}

/// A failed request's innermost cause, in plain words (the outer errors quote the URL).
pub fn innermost(e: &reqwest::Error) -> String {
    let last = std::iter::successors(e.source(), |s| (*s).source()).last();
    plain(&last.map_or_else(|| "request failed".to_owned(), |s| s.to_string()))
}

/// `Connection refused (os error 111)` as `connection refused`.
fn plain(text: &str) -> String {
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn classify_error(e: &reqwest::Error) -> AttemptError {
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<Blocked>() {
            return AttemptError::BlockedAddress;
        }
        // rustls errors reach us wrapped in io::Error, whose source() skips them: their text
        // is what is left to recognise them by.
        if s.is::<rustls::Error>() || s.to_string().contains("certificate") {
            return AttemptError::TlsCertificate;
        }
        source = s.source();
    }
    if e.is_timeout() {
        AttemptError::Timeout
    } else {
        AttemptError::Connect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_as_plain_words() {
        let cases = [
            ("Connection refused (os error 111)", "connection refused"),
            (
                "failed to lookup address information: Name or service not known",
                "failed to lookup address information: Name or service not known",
            ),
            (
                "invalid peer certificate: Expired",
                "invalid peer certificate: Expired",
            ),
            ("", ""),
        ];
        for (text, plain_text) in cases {
            assert_eq!(plain(text), plain_text, "{text}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_says_so() {
        // A port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let client = WebhookClient::new(&ClientSettings {
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            policy: AddressPolicy {
                allow_private: true,
                allow: Vec::new(),
            },
        })
        .unwrap();
        let report = client
            .send(
                &format!("http://127.0.0.1:{port}/hook?token=s3cret"),
                None,
                "{}",
                "id",
            )
            .await;
        assert_eq!(report.error, Some(AttemptError::Connect));
        let detail = report.detail.unwrap_or_default();
        assert_eq!(detail, "connection refused");
    }

    #[tokio::test]
    async fn a_blocked_address_names_the_setting_that_allows_it() {
        let client = WebhookClient::new(&ClientSettings {
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            policy: AddressPolicy::default(),
        })
        .unwrap();
        let report = client.send("http://10.0.0.1/hook", None, "{}", "id").await;
        assert_eq!(report.error, Some(AttemptError::BlockedAddress));
        assert_eq!(
            report.detail.as_deref(),
            Some("10.0.0.1 is not a public address (TAGCAST_ALLOW_TARGETS can allow it)")
        );
    }
}
