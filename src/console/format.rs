//! How the console writes values for people: times relative to now with the exact time beside,
//! URLs without their query string, statuses and trigger rules in words, and form fields read
//! back into the API's terms. Pure.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeDelta, Utc};

use crate::api::validate::TriggerRule;
use crate::model::DeliveryStatus;

/// "3 min ago", "in 20 s": what a glance needs; the exact time goes in a tooltip.
pub fn relative(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let delta = now - at;
    let (span, future) = if delta < TimeDelta::zero() {
        (-delta, true)
    } else {
        (delta, false)
    };
    let amount = match span.num_seconds() {
        0..=4 => return "just now".to_owned(),
        s @ 5..=59 => format!("{s} s"),
        s @ 60..=3_599 => format!("{} min", s / 60),
        s @ 3_600..=86_399 => format!("{} h", s / 3_600),
        s @ 86_400..=2_591_999 => format!("{} d", s / 86_400),
        _ => return at.format("%Y-%m-%d").to_string(),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// `2026-12-03 08:01:02.123 UTC`.
pub fn exact(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

/// The machine-readable form, for `<time datetime>`.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A webhook URL with what may hold a secret hidden: the query string (ACR's trigger URLs
/// carry their secret there), any user name and password, and the fragment.
pub fn hidden_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            let had_query = url.query().is_some();
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            let mut shown = url.to_string();
            if had_query {
                shown.push_str("?…");
            }
            shown
        }
        // A row written by hand may hold anything: cut it where a query would start.
        Err(_) => match raw.split_once(['?', '#']) {
            Some((before, _)) => format!("{before}?…"),
            None => raw.to_owned(),
        },
    }
}

/// How ACR names a status; "not triggered" with its Chinese name, as ACR's users know it.
pub fn status_label(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::NotTriggered => "not triggered (未触发)",
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::Retrying => "retrying",
        DeliveryStatus::Succeeded => "succeeded",
        DeliveryStatus::Failed => "failed",
    }
}

/// A trigger rule in words.
pub fn trigger_text(rule: &TriggerRule) -> String {
    match rule {
        TriggerRule::All {} => "all tags".to_owned(),
        TriggerRule::Expression { expression } => format!("tags matching {expression}"),
        TriggerRule::Tags { tags } => format!("tags {}", tags.join(", ")),
    }
}

/// Which rule a form's fields describe: a type, an expression, and tags separated by commas
/// or spaces. An unknown type reads as `all`, which the form's radio buttons cannot send.
pub fn rule_from_form(kind: &str, expression: &str, tags: &str) -> TriggerRule {
    match kind {
        "expression" => TriggerRule::Expression {
            expression: expression.trim().to_owned(),
        },
        "tags" => TriggerRule::Tags {
            tags: tags
                .split([',', ' ', '\n', '\t'])
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        },
        _ => TriggerRule::All {},
    }
}

/// The form field an API error's field belongs to: `trigger.tags[2]` is shown beside `tags`.
pub fn form_field(api_field: &str) -> &str {
    match api_field {
        f if f.starts_with("trigger.tags") => "tags",
        "trigger.expression" => "expression",
        "generate_secret" => "secret",
        f => f,
    }
}

/// A time typed into a form: `datetime-local`'s `2026-12-03T08:00` (read as UTC, as the form
/// says), with seconds, or a whole RFC 3339 time. Blank is no time.
pub fn form_time(raw: &str) -> Result<Option<DateTime<Utc>>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
        return Ok(Some(at.with_timezone(&Utc)));
    }
    [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(raw, format).ok())
    .map(|naive| Some(naive.and_utc()))
    .ok_or_else(|| "is not a time: use 2026-12-03T08:00 (UTC)".to_owned())
}

/// The value a `datetime-local` input shows for a time (to the minute, or the second when it
/// has seconds).
pub fn form_value(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn relative_times() {
        let now = at("2026-12-03T08:00:00Z");
        let cases = [
            ("2026-12-03T08:00:00Z", "just now"),
            ("2026-12-03T07:59:56Z", "just now"),
            ("2026-12-03T07:59:55Z", "5 s ago"),
            ("2026-12-03T07:59:01Z", "59 s ago"),
            ("2026-12-03T07:59:00Z", "1 min ago"),
            ("2026-12-03T07:00:01Z", "59 min ago"),
            ("2026-12-03T07:00:00Z", "1 h ago"),
            ("2026-12-02T08:00:01Z", "23 h ago"),
            ("2026-12-02T08:00:00Z", "1 d ago"),
            ("2026-11-03T08:00:01Z", "29 d ago"),
            ("2026-11-03T08:00:00Z", "2026-11-03"),
            ("2026-12-03T08:00:20Z", "in 20 s"),
            ("2026-12-03T08:10:00Z", "in 10 min"),
        ];
        for (then, shown) in cases {
            assert_eq!(relative(now, at(then)), shown, "{then}");
        }
        assert_eq!(
            exact(at("2026-12-03T08:01:02.123Z")),
            "2026-12-03 08:01:02.123 UTC"
        );
    }

    #[test]
    fn urls_lose_what_may_hold_a_secret() {
        let cases = [
            (
                "https://cs.console.aliyun.com/hook/trigger?triggerUrl=x&secret=s",
                "https://cs.console.aliyun.com/hook/trigger?…",
            ),
            ("http://127.0.0.1:9000/hook", "http://127.0.0.1:9000/hook"),
            (
                "https://user:pw@example.com/h#frag",
                "https://example.com/h",
            ),
            ("https://example.com/?", "https://example.com/?…"),
            ("not a url?token=1", "not a url?…"),
            ("not a url", "not a url"),
        ];
        for (url, shown) in cases {
            assert_eq!(hidden_url(url), shown, "{url}");
        }
    }

    #[test]
    fn rules_read_from_a_form() {
        let tags = |t: &[&str]| TriggerRule::Tags {
            tags: t.iter().map(|s| s.to_string()).collect(),
        };
        let cases = [
            (("all", "x", "y"), TriggerRule::All {}),
            (("bogus", "", ""), TriggerRule::All {}),
            (
                ("expression", " release-v.* ", ""),
                TriggerRule::Expression {
                    expression: "release-v.*".into(),
                },
            ),
            (("tags", "", "a, b,,c\nd"), tags(&["a", "b", "c", "d"])),
            (("tags", "", " "), tags(&[])),
        ];
        for ((kind, expression, t), rule) in cases {
            assert_eq!(rule_from_form(kind, expression, t), rule, "{kind}");
        }
        assert_eq!(trigger_text(&tags(&["a", "b"])), "tags a, b");
        assert_eq!(
            status_label(DeliveryStatus::NotTriggered),
            "not triggered (未触发)"
        );
    }

    #[test]
    fn api_fields_map_to_form_fields() {
        for (api, form) in [
            ("trigger.tags", "tags"),
            ("trigger.tags[3]", "tags"),
            ("trigger.expression", "expression"),
            ("generate_secret", "secret"),
            ("secret", "secret"),
            ("name", "name"),
        ] {
            assert_eq!(form_field(api), form, "{api}");
        }
    }

    #[test]
    fn form_times() {
        let cases = [
            ("", Ok(None)),
            ("  ", Ok(None)),
            ("2026-12-03T08:00", Ok(Some(at("2026-12-03T08:00:00Z")))),
            ("2026-12-03T08:00:07", Ok(Some(at("2026-12-03T08:00:07Z")))),
            (
                "2026-12-03T08:00:07+08:00",
                Ok(Some(at("2026-12-03T00:00:07Z"))),
            ),
            ("yesterday", Err(())),
            ("2026-13-03T08:00", Err(())),
        ];
        for (raw, expected) in cases {
            assert_eq!(form_time(raw).map_err(|_| ()), expected, "{raw}");
        }
        assert_eq!(
            form_value(at("2026-12-03T08:00:07Z")),
            "2026-12-03T08:00:07"
        );
    }
}
