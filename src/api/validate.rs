//! The rules a webhook must keep (contract section 12), checked before the database is asked,
//! so that every broken field is named at once. Pure.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::events::is_docker_tag;
use crate::guard::AddressPolicy;
use crate::trigger::{MAX_EXPRESSION_CHARS, MAX_TAGS, Trigger};

/// Longest webhook URL accepted, in characters.
pub const MAX_URL_CHARS: usize = 2048;
/// Longest webhook name.
pub const MAX_NAME_CHARS: usize = 64;
/// Secret key sizes accepted, in bytes, after `whsec_` and base64.
pub const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A webhook's trigger rule as the API reads and writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TriggerRule {
    /// Fires for every tag. (A struct variant, so that unknown fields beside `type` are refused.)
    All {},
    /// Fires when the regular expression matches the whole tag.
    Expression {
        #[schema(min_length = 1, max_length = 256)]
        expression: String,
    },
    /// Fires when the tag is one of these.
    Tags {
        #[schema(min_items = 1, max_items = 10, value_type = Vec<DockerTag>)]
        tags: Vec<String>,
    },
}

/// An image tag, as Docker allows it (the schema of each entry of a `tags` rule).
#[derive(ToSchema)]
#[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")]
#[allow(dead_code, reason = "a schema only")]
pub struct DockerTag(String);

/// One field that breaks a rule, as a problem detail lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// The field, as a JSON path into the request (`trigger.tags[2]`).
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// 1 to 64 characters of `[A-Za-z0-9_.-]`.
pub fn name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_CHARS {
        return Err(format!("must be 1 to {MAX_NAME_CHARS} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("may hold only letters, digits, '_', '.' and '-'".to_owned());
    }
    Ok(())
}

/// An `http` or `https` URL of at most 2,048 characters with a host; an IP literal host must
/// be one the address guard lets through.
pub fn url(raw: &str, policy: &AddressPolicy) -> Result<(), String> {
    if raw.chars().count() > MAX_URL_CHARS {
        return Err(format!("must be at most {MAX_URL_CHARS} characters"));
    }
    // The parser's message never quotes the URL, which may hold a secret.
    let parsed = url::Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".to_owned());
    }
    let literal: Option<IpAddr> = match parsed.host() {
        None => return Err("must have a host".to_owned()),
        Some(url::Host::Domain("")) => return Err("must have a host".to_owned()),
        Some(url::Host::Domain(_)) => None,
        Some(url::Host::Ipv4(v4)) => Some(v4.into()),
        Some(url::Host::Ipv6(v6)) => Some(v6.into()),
    };
    if let Some(ip) = literal.filter(|ip| !policy.permits(*ip)) {
        return Err(format!(
            "{ip} is not a public address; deliveries to it would be blocked (TAGCAST_ALLOW_TARGETS can allow it)"
        ));
    }
    Ok(())
}

/// `whsec_` and the base64 of 24 to 64 bytes.
pub fn secret(secret: &str) -> Result<(), String> {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|b64| BASE64.decode(b64).ok())
        .ok_or_else(|| "must be whsec_ followed by base64".to_owned())?;
    if !SECRET_BYTES.contains(&key.len()) {
        return Err(format!(
            "must encode {} to {} bytes, not {}",
            SECRET_BYTES.start(),
            SECRET_BYTES.end(),
            key.len()
        ));
    }
    Ok(())
}

/// The rule's own checks; `field` is where it sits in the request.
pub fn trigger(rule: &TriggerRule, field: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match rule {
        TriggerRule::All {} => {}
        TriggerRule::Expression { expression } => {
            let at = format!("{field}.expression");
            if expression.is_empty() {
                errors.push(FieldError::new(at, "must not be empty"));
            } else if expression.chars().count() > MAX_EXPRESSION_CHARS {
                errors.push(FieldError::new(
                    at,
                    format!("must be at most {MAX_EXPRESSION_CHARS} characters"),
                ));
            } else if let Err(e) = Trigger::from_row("expression", Some(expression), None) {
                errors.push(FieldError::new(at, e.to_string()));
            }
        }
        TriggerRule::Tags { tags } => {
            if tags.is_empty() || tags.len() > MAX_TAGS {
                errors.push(FieldError::new(
                    format!("{field}.tags"),
                    format!("must list 1 to {MAX_TAGS} tags, not {}", tags.len()),
                ));
            }
            for (i, tag) in tags.iter().enumerate() {
                let at = format!("{field}.tags[{i}]");
                if !is_docker_tag(tag) {
                    errors.push(FieldError::new(at, "is not a Docker tag"));
                } else if tags[..i].contains(tag) {
                    errors.push(FieldError::new(at, "is listed twice"));
                }
            }
        }
    }
    errors
}

/// The columns a rule is stored in: `(trigger_type, trigger_expression, trigger_tags)`.
pub fn columns(rule: &TriggerRule) -> (&'static str, Option<&str>, Option<&[String]>) {
    match rule {
        TriggerRule::All {} => ("all", None, None),
        TriggerRule::Expression { expression } => ("expression", Some(expression), None),
        TriggerRule::Tags { tags } => ("tags", None, Some(tags)),
    }
}

/// The rule stored in those columns (a row the API did not write may hold anything: it is
/// shown as it is).
pub fn from_columns(
    trigger_type: &str,
    expression: Option<String>,
    tags: Option<Vec<String>>,
) -> TriggerRule {
    match trigger_type {
        "expression" => TriggerRule::Expression {
            expression: expression.unwrap_or_default(),
        },
        "tags" => TriggerRule::Tags {
            tags: tags.unwrap_or_default(),
        },
        _ => TriggerRule::All {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let cases = [
            ("deploy", true),
            ("a", true),
            ("release_v1.2-x", true),
            (&"n".repeat(64), true),
            (&"n".repeat(65), false),
            ("", false),
            ("has space", false),
            ("semi;colon", false),
            ("ünï", false),
        ];
        for (n, ok) in cases {
            assert_eq!(name(n).is_ok(), ok, "{n:?}");
        }
    }

    #[test]
    fn urls() {
        let strict = AddressPolicy::default();
        let open = AddressPolicy {
            allow_private: true,
            allow: vec![],
        };
        let long = format!("https://example.com/{}", "a".repeat(2030));
        let cases: [(&str, &AddressPolicy, bool); 11] = [
            ("https://example.com/hook", &strict, true),
            ("http://example.com:8080/h?secret=s", &strict, true),
            ("ftp://example.com/", &strict, false),
            ("example.com/hook", &strict, false),
            ("http://", &strict, false),
            ("http://127.0.0.1:9000/", &strict, false),
            ("http://127.0.0.1:9000/", &open, true),
            ("http://[::1]/", &strict, false),
            ("http://10.0.0.1/", &strict, false),
            ("http://93.184.216.34/", &strict, true),
            (&long, &strict, false),
        ];
        for (u, policy, ok) in cases {
            assert_eq!(url(u, policy).is_ok(), ok, "{u}");
        }
    }

    #[test]
    fn url_errors_never_quote_the_url() {
        let err = url("http://[bad/x?secret=hunter2", &AddressPolicy::default()).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn secrets() {
        let of = |n: usize| format!("whsec_{}", BASE64.encode(vec![7u8; n]));
        let cases = [
            (of(24), true),
            (of(32), true),
            (of(64), true),
            (of(23), false),
            (of(65), false),
            ("whsec_not base64!".to_owned(), false),
            (BASE64.encode([1u8; 32]), false),
            (String::new(), false),
        ];
        for (s, ok) in cases {
            assert_eq!(secret(&s).is_ok(), ok, "{s}");
        }
    }

    #[test]
    fn triggers_name_each_bad_field() {
        let fields = |rule: TriggerRule| -> Vec<String> {
            trigger(&rule, "trigger")
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        let expr = |e: &str| TriggerRule::Expression {
            expression: e.to_owned(),
        };
        let tags = |t: &[&str]| TriggerRule::Tags {
            tags: t.iter().map(|s| s.to_string()).collect(),
        };
        let none: Vec<String> = vec![];
        assert_eq!(fields(TriggerRule::All {}), none);
        assert_eq!(fields(expr("release-v.*")), none);
        assert_eq!(fields(expr("(")), ["trigger.expression"]);
        assert_eq!(fields(expr("")), ["trigger.expression"]);
        assert_eq!(fields(expr(&"a".repeat(257))), ["trigger.expression"]);
        // Compiles only inside the anchoring wrapper: refused, as the worker would refuse it.
        assert_eq!(fields(expr("a)|(b")), ["trigger.expression"]);
        assert_eq!(fields(tags(&["latest", "v1"])), none);
        assert_eq!(fields(tags(&[])), ["trigger.tags"]);
        assert_eq!(
            fields(tags(&["ok", "bad tag", "ok"])),
            ["trigger.tags[1]", "trigger.tags[2]"]
        );
        let eleven: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
        let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
        assert_eq!(fields(tags(&eleven)), ["trigger.tags"]);
    }

    #[test]
    fn rules_round_trip_through_their_columns() {
        let rules = [
            TriggerRule::All {},
            TriggerRule::Expression {
                expression: "v.*".into(),
            },
            TriggerRule::Tags {
                tags: vec!["a".into(), "b".into()],
            },
        ];
        for rule in rules {
            let (kind, expression, tags) = columns(&rule);
            let back = from_columns(kind, expression.map(str::to_owned), tags.map(<[_]>::to_vec));
            assert_eq!(back, rule);
        }
    }

    #[test]
    fn rules_read_as_the_contract_writes_them() {
        let parse = |s: &str| serde_json::from_str::<TriggerRule>(s);
        assert_eq!(parse(r#"{"type":"all"}"#).unwrap(), TriggerRule::All {});
        assert_eq!(
            parse(r#"{"type":"tags","tags":["x"]}"#).unwrap(),
            TriggerRule::Tags {
                tags: vec!["x".into()]
            }
        );
        assert!(parse(r#"{"type":"expression"}"#).is_err());
        assert!(parse(r#"{"type":"sometimes"}"#).is_err());
        assert!(parse(r#"{"type":"all","extra":1}"#).is_err());
    }
}
