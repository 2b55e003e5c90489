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
        Ok(WebhookClient { http, policy })
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
        let failed = |error: AttemptError| AttemptReport {
            outcome: error.outcome(),
            started_at,
            duration: clock.elapsed(),
            error: Some(error),
            response_body: None,
        };

        let parsed = match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => return failed(AttemptError::InvalidUrl),
        };
        // reqwest does not resolve IP-literal hosts, so the resolver never sees them.
        let literal: Option<IpAddr> = match parsed.host() {
            Some(url::Host::Ipv4(v4)) => Some(v4.into()),
            Some(url::Host::Ipv6(v6)) => Some(v6.into()),
            _ => None,
        };
        if literal.is_some_and(|ip| !self.policy.permits(ip)) {
            return failed(AttemptError::BlockedAddress);
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
                Err(_) => return failed(AttemptError::InvalidSecret),
            }
        }

        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failed(classify_error(&e)),
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
            response_body: (!text.is_empty()).then_some(text),
        }
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
