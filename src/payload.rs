//! The notification body and its Standard Webhooks signature (contract section 4). Pure.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, FixedOffset};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::events::{BuildEvent, Repository};

#[derive(Serialize)]
struct Notification<'a> {
    push_data: PushData<'a>,
    repository: RepositoryData<'a>,
}

// Field order is the order of the JSON keys: keep it as contract section 4 shows.
#[derive(Serialize)]
struct PushData<'a> {
    digest: &'a str,
    pushed_at: String,
    tag: &'a str,
}

#[derive(Serialize)]
struct RepositoryData<'a> {
    date_created: String,
    name: &'a str,
    namespace: &'a str,
    region: &'a str,
    repo_authentication_type: &'a str,
    repo_full_name: String,
    repo_origin_type: &'a str,
    repo_type: &'a str,
}

/// `YYYY-MM-DD HH:MM:SS`, the wall-clock time in the offset the event carries.
fn wall_clock(at: &DateTime<FixedOffset>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Renders the body sent to every webhook that fires for `event`: compact JSON, keys in
/// contract order. The same bytes are stored as the delivery's `request_body`.
pub fn render(event: &BuildEvent) -> String {
    let r = &event.repository;
    let notification = Notification {
        push_data: PushData {
            digest: &event.digest,
            pushed_at: wall_clock(&event.occurred_at),
            tag: &event.tag,
        },
        repository: RepositoryData {
            date_created: wall_clock(&r.date_created),
            name: &r.name,
            namespace: &r.namespace,
            region: &r.region,
            repo_authentication_type: &r.repo_authentication_type,
            repo_full_name: format!("{}/{}", r.namespace, r.name),
            repo_origin_type: &r.repo_origin_type,
            repo_type: &r.repo_type,
        },
    };
    // Serializing plain strings into a String cannot fail.
    serde_json::to_string(&notification).unwrap_or_default()
}

/// The repository a body that [`render`] made names, as an event would carry it: for a test
/// notification, which has no event, to describe the repository as the registry last did.
/// `date_created` comes back in UTC with the same wall-clock time, so it renders the same.
pub fn repository_of(body: &str) -> Option<Repository> {
    #[derive(serde::Deserialize)]
    struct Body {
        repository: Stored,
    }
    #[derive(serde::Deserialize)]
    struct Stored {
        date_created: String,
        name: String,
        namespace: String,
        region: String,
        repo_authentication_type: String,
        repo_origin_type: String,
        repo_type: String,
    }
    let r = serde_json::from_str::<Body>(body).ok()?.repository;
    let date_created = chrono::NaiveDateTime::parse_from_str(&r.date_created, "%Y-%m-%d %H:%M:%S")
        .ok()?
        .and_utc()
        .fixed_offset();
    Some(Repository {
        namespace: r.namespace,
        name: r.name,
        region: r.region,
        date_created,
        repo_authentication_type: r.repo_authentication_type,
        repo_origin_type: r.repo_origin_type,
        repo_type: r.repo_type,
    })
}

/// A secret that cannot be used to sign; the delivery fails rather than go out unsigned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("webhook secret is not whsec_ followed by base64")]
    MalformedSecret,
}

/// The `webhook-signature` header value: one `v1,<base64>` per secret, space-separated.
/// `secrets` is the `secret` column; several secrets separated by spaces allow key rotation.
/// Returns `Ok(None)` when the column holds no secret.
pub fn sign(
    secrets: &str,
    id: &str,
    timestamp: i64,
    body: &str,
) -> Result<Option<String>, SignatureError> {
    let mut header = String::new();
    for secret in secrets.split_ascii_whitespace() {
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|b64| BASE64.decode(b64).ok())
            .filter(|key| !key.is_empty())
            .ok_or(SignatureError::MalformedSecret)?;
        // HMAC takes keys of any length, so new_from_slice cannot fail here.
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SignatureError::MalformedSecret)?;
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        header.push_str(&BASE64.encode(mac.finalize().into_bytes()));
    }
    Ok((!header.is_empty()).then_some(header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Decoded, decode, tests::CONTRACT_EXAMPLE};

    fn spec_event() -> BuildEvent {
        match decode(CONTRACT_EXAMPLE.as_bytes()).unwrap() {
            Decoded::Build(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_body_is_the_spec_example_byte_for_byte() {
        let expected = concat!(
            r#"{"push_data":{"digest":"sha256:457f4aa83fc9a6663ab9d1b0a6e2dce25a12a943ed5bf2c1747c58d48bbb4917","#,
            r#""pushed_at":"2016-11-29 12:25:46","tag":"latest"},"#,
            r#""repository":{"date_created":"2016-10-28 21:31:42","name":"repoTest","namespace":"namespace","#,
            r#""region":"cn-hangzhou","repo_authentication_type":"NO_CERTIFIED","repo_full_name":"namespace/repoTest","#,
            r#""repo_origin_type":"NO_CERTIFIED","repo_type":"PUBLIC"}}"#
        );
        assert_eq!(render(&spec_event()), expected);
    }

    #[test]
    fn a_rendered_repository_reads_back_and_renders_the_same() {
        let event = spec_event();
        let body = render(&event);
        let repository = repository_of(&body).unwrap();
        assert_eq!(repository.region, "cn-hangzhou");
        assert_eq!(
            repository.date_created.to_rfc3339(),
            "2016-10-28T21:31:42+00:00"
        );
        let again = render(&BuildEvent {
            repository,
            ..event
        });
        assert_eq!(again, body);
        for broken in ["", "{}", r#"{"repository":{"name":"x"}}"#, "not json"] {
            assert!(repository_of(broken).is_none(), "{broken}");
        }
    }

    #[test]
    fn times_stay_in_the_offset_of_the_event() {
        let cases = [
            ("2016-11-29T12:25:46+08:00", "2016-11-29 12:25:46"),
            ("2016-11-29T04:25:46Z", "2016-11-29 04:25:46"),
            ("2016-11-28T23:25:46-05:00", "2016-11-28 23:25:46"),
            ("2016-11-29T12:25:46.999+05:30", "2016-11-29 12:25:46"),
        ];
        for (occurred_at, pushed_at) in cases {
            let mut event = spec_event();
            event.occurred_at = DateTime::parse_from_rfc3339(occurred_at).unwrap();
            let body: serde_json::Value = serde_json::from_str(&render(&event)).unwrap();
            assert_eq!(body["push_data"]["pushed_at"], pushed_at, "{occurred_at}");
        }
    }

    #[test]
    fn strings_are_escaped() {
        let mut event = spec_event();
        event.repository.name = "quote\"and\\slash".into();
        let body: serde_json::Value = serde_json::from_str(&render(&event)).unwrap();
        assert_eq!(
            body["repository"]["repo_full_name"],
            "namespace/quote\"and\\slash"
        );
    }

    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn signatures_verify_with_the_standard_webhooks_library() {
        let body = render(&spec_event());
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = chrono::Utc::now().timestamp();
        let signature = sign(KEY, id, ts, &body).unwrap().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        standardwebhooks::Webhook::new(KEY)
            .unwrap()
            .verify(body.as_bytes(), &headers)
            .unwrap();
    }

    #[test]
    fn the_standard_webhooks_test_vector() {
        // From the Standard Webhooks specification's reference libraries.
        let sig = sign(
            KEY,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn rotation_gives_one_signature_per_secret() {
        let other = "whsec_c2Vjb25kLXNlY3JldA==";
        let both = sign(&format!("{KEY} {other}"), "id", 1, "{}")
            .unwrap()
            .unwrap();
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(Some(parts[0].to_owned()), sign(KEY, "id", 1, "{}").unwrap());
        assert_eq!(
            Some(parts[1].to_owned()),
            sign(other, "id", 1, "{}").unwrap()
        );
    }

    #[test]
    fn secrets_are_checked() {
        let cases = [
            ("", Ok(None)),
            ("   ", Ok(None)),
            ("secret", Err(SignatureError::MalformedSecret)),
            ("whsec_!!", Err(SignatureError::MalformedSecret)),
            ("whsec_", Err(SignatureError::MalformedSecret)),
        ];
        for (secret, expected) in cases {
            assert_eq!(sign(secret, "id", 1, "{}"), expected, "{secret:?}");
        }
    }
}
