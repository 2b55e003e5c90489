//! What may be shown of a URL: connection URLs and webhook URLs carry secrets (passwords, ACR
//! trigger tokens in the query string) that must never reach a log line or a metric.

use std::fmt;
use std::str::FromStr;

/// A connection URL whose password must never reach a log: Debug and Display redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(url::Url);

impl SecretUrl {
    /// The full URL, credentials included, for handing to a client library only.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    pub fn scheme(&self) -> &str {
        self.0.scheme()
    }
}

impl FromStr for SecretUrl {
    type Err = url::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        url::Url::parse(s).map(SecretUrl)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // Setting a password fails only for URLs that cannot carry one, which have none.
            let _ = shown.set_password(Some("REDACTED"));
        }
        if shown.query().is_some() {
            shown.set_query(Some("REDACTED"));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

/// A webhook URL for logs: scheme, host, port and path; the query (ACR trigger URLs carry a
/// secret there), user name and password are never shown.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            if url.query().is_some() {
                url.set_query(Some("REDACTED"));
            }
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_when_shown() {
        let amqp: SecretUrl = "amqp://user:hunter2@broker:5672/%2f".parse().unwrap();
        assert!(!format!("{amqp} {amqp:?}").contains("hunter2"));
        assert!(amqp.expose().contains("hunter2"));
        let cases = [
            (
                "https://u:p@hooks.example.com/trigger?secret=abc123#frag",
                "https://hooks.example.com/trigger?REDACTED",
            ),
            (
                "http://hooks.example.com:8080/a/b",
                "http://hooks.example.com:8080/a/b",
            ),
            ("not a url", "<unparseable url>"),
        ];
        for (raw, shown) in cases {
            assert_eq!(redact_url(raw), shown, "{raw}");
        }
    }
}
