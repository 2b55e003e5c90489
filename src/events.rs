//! The inbound `build.completed` event (contract section 1): decoding and validation, pure.

use chrono::{DateTime, FixedOffset};
use serde::Deserialize;

/// Largest message body accepted; anything bigger is dead-lettered unread.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// The only event type tagcast acts on.
pub const BUILD_COMPLETED: &str = "build.completed";

/// A validated build event. Timestamps keep the offset the registry wrote, because the
/// notification shows wall-clock times in that offset.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildEvent {
    pub event_id: String,
    pub occurred_at: DateTime<FixedOffset>,
    pub repository: Repository,
    pub tag: String,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Repository {
    pub namespace: String,
    pub name: String,
    pub region: String,
    pub date_created: DateTime<FixedOffset>,
    pub repo_authentication_type: String,
    pub repo_origin_type: String,
    pub repo_type: String,
}

/// What a message turned out to be.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "made once per message and taken apart at once; boxing would only add an allocation"
)]
pub enum Decoded {
    Build(BuildEvent),
    /// A well-formed event of another type: acknowledged and counted, nothing else.
    Ignored {
        event_type: String,
    },
}

/// Why a message was refused. The text is logged; it never echoes the message body.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventError {
    #[error("message is {0} bytes, more than the 64 KiB limit")]
    TooLarge(usize),
    /// The bytes are not JSON at all (or stop short).
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not of the event's shape: a field missing or of the wrong type.
    #[error("JSON, but not a build event: {0}")]
    Shape(String),
    #[error("event_id must be 1 to 128 characters, got {0}")]
    EventId(usize),
    #[error("{field} is not an RFC 3339 timestamp with an offset")]
    Timestamp { field: &'static str },
    #[error("image.tag is not a valid Docker tag")]
    Tag,
    #[error("image.digest is not of the form algorithm:hex")]
    Digest,
    #[error("{0} contains a NUL character, which cannot be stored")]
    Nul(&'static str),
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    #[serde(rename = "type")]
    event_type: std::borrow::Cow<'a, str>,
    occurred_at: std::borrow::Cow<'a, str>,
    repository: WireRepository<'a>,
    image: WireImage<'a>,
}

#[derive(Deserialize)]
struct WireRepository<'a> {
    #[serde(borrow)]
    namespace: std::borrow::Cow<'a, str>,
    name: std::borrow::Cow<'a, str>,
    region: std::borrow::Cow<'a, str>,
    date_created: std::borrow::Cow<'a, str>,
    repo_authentication_type: std::borrow::Cow<'a, str>,
    repo_origin_type: std::borrow::Cow<'a, str>,
    repo_type: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct WireImage<'a> {
    #[serde(borrow)]
    tag: std::borrow::Cow<'a, str>,
    digest: std::borrow::Cow<'a, str>,
}

/// Decodes and validates one message body. Never panics, whatever the bytes.
pub fn decode(body: &[u8]) -> Result<Decoded, EventError> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge(body.len()));
    }
    // serde_json refuses nesting deeper than 128 levels, so hostile depth is an error, not a crash.
    let wire: Wire<'_> = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => EventError::Shape(e.to_string()),
        serde_json::error::Category::Io
        | serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof => EventError::NotJson(e.to_string()),
    })?;
    if wire.event_type != BUILD_COMPLETED {
        return Ok(Decoded::Ignored {
            event_type: wire.event_type.into_owned(),
        });
    }
    let r = &wire.repository;
    for (field, text) in [
        ("event_id", &wire.event_id),
        ("repository.namespace", &r.namespace),
        ("repository.name", &r.name),
        ("repository.region", &r.region),
        (
            "repository.repo_authentication_type",
            &r.repo_authentication_type,
        ),
        ("repository.repo_origin_type", &r.repo_origin_type),
        ("repository.repo_type", &r.repo_type),
    ] {
        if text.contains('\0') {
            return Err(EventError::Nul(field));
        }
    }
    let id_len = wire.event_id.chars().count();
    if !(1..=128).contains(&id_len) {
        return Err(EventError::EventId(id_len));
    }
    let occurred_at = timestamp(&wire.occurred_at, "occurred_at")?;
    let date_created = timestamp(&wire.repository.date_created, "repository.date_created")?;
    if !is_docker_tag(&wire.image.tag) {
        return Err(EventError::Tag);
    }
    if !is_digest(&wire.image.digest) {
        return Err(EventError::Digest);
    }
    let r = wire.repository;
    Ok(Decoded::Build(BuildEvent {
        event_id: wire.event_id.into_owned(),
        occurred_at,
        repository: Repository {
            namespace: r.namespace.into_owned(),
            name: r.name.into_owned(),
            region: r.region.into_owned(),
            date_created,
            repo_authentication_type: r.repo_authentication_type.into_owned(),
            repo_origin_type: r.repo_origin_type.into_owned(),
            repo_type: r.repo_type.into_owned(),
        },
        tag: wire.image.tag.into_owned(),
        digest: wire.image.digest.into_owned(),
    }))
}

/// The `event_id` of a message that was refused, when it has one, so the line about it can
/// name it. Escaped: it is untrusted text bound for a terminal.
pub fn event_id_of(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        event_id: std::borrow::Cow<'a, str>,
    }
    if body.len() > MAX_EVENT_BYTES {
        return None;
    }
    let named: Named<'_> = serde_json::from_slice(body).ok()?;
    let id = named.event_id.chars().take(128).collect::<String>();
    (!id.is_empty()).then(|| id.escape_debug().to_string())
}

fn timestamp(text: &str, field: &'static str) -> Result<DateTime<FixedOffset>, EventError> {
    DateTime::parse_from_rfc3339(text).map_err(|_| EventError::Timestamp { field })
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`, checked by hand: this runs on every event.
pub fn is_docker_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    bytes.len() <= 128
        && (first.is_ascii_alphanumeric() || first == b'_')
        && rest
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `algorithm:hex` as in the OCI image spec: a lowercase algorithm name (components joined by
/// `+._-`) and a lowercase hexadecimal encoding.
pub fn is_digest(digest: &str) -> bool {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return false;
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '_', '-']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    algorithm_ok
        && !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const CONTRACT_EXAMPLE: &str = r#"{
      "event_id": "0b6f7c1e-6c7e-4a55-9a7e-2c1d7f1f9a10",
      "type": "build.completed",
      "occurred_at": "2016-11-29T12:25:46+08:00",
      "repository": {
        "namespace": "namespace",
        "name": "repoTest",
        "region": "cn-hangzhou",
        "date_created": "2016-10-28T21:31:42+08:00",
        "repo_authentication_type": "NO_CERTIFIED",
        "repo_origin_type": "NO_CERTIFIED",
        "repo_type": "PUBLIC"
      },
      "image": {
        "tag": "latest",
        "digest": "sha256:457f4aa83fc9a6663ab9d1b0a6e2dce25a12a943ed5bf2c1747c58d48bbb4917"
      }
    }"#;

    fn with(pointer: &str, value: serde_json::Value) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_str(CONTRACT_EXAMPLE).unwrap();
        *v.pointer_mut(pointer).unwrap() = value;
        serde_json::to_vec(&v).unwrap()
    }

    fn without(parent: &str, key: &str) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_str(CONTRACT_EXAMPLE).unwrap();
        v.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn a_refused_event_is_named_by_its_id_when_it_has_one() {
        let cases: [(&[u8], Option<&str>); 6] = [
            (
                br#"{"event_id":"e-1","image":{"tag":"bad tag"}}"#,
                Some("e-1"),
            ),
            (br#"{"event_id":"e\n2"}"#, Some("e\\n2")),
            (br#"{"event_id":""}"#, None),
            (br#"{"event_id":7}"#, None),
            (b"not json", None),
            (br#"{"type":"build.completed"}"#, None),
        ];
        for (body, id) in cases {
            assert_eq!(
                event_id_of(body).as_deref(),
                id,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_spec_example_decodes() {
        let Decoded::Build(e) = decode(CONTRACT_EXAMPLE.as_bytes()).unwrap() else {
            panic!("not a build event")
        };
        assert_eq!(e.event_id, "0b6f7c1e-6c7e-4a55-9a7e-2c1d7f1f9a10");
        assert_eq!(e.repository.name, "repoTest");
        assert_eq!(e.tag, "latest");
        assert_eq!(e.occurred_at.offset().local_minus_utc(), 8 * 3600);
    }

    #[test]
    fn unknown_fields_are_ignored_and_other_types_are_ignored() {
        let mut v: serde_json::Value = serde_json::from_str(CONTRACT_EXAMPLE).unwrap();
        v["repository"]["extra"] = serde_json::json!({"deep": [1, 2]});
        v["more"] = serde_json::json!(true);
        assert!(matches!(
            decode(&serde_json::to_vec(&v).unwrap()),
            Ok(Decoded::Build(_))
        ));

        let other = with("/type", "build.started".into());
        assert_eq!(
            decode(&other),
            Ok(Decoded::Ignored {
                event_type: "build.started".into()
            })
        );
    }

    #[test]
    fn invalid_events_are_refused_with_a_reason() {
        let long_id = "x".repeat(129);
        type Case = (&'static str, Vec<u8>, fn(&EventError) -> bool);
        let cases: Vec<Case> = vec![
            ("not json", b"{not json".to_vec(), |e| {
                matches!(e, EventError::NotJson(_)) && e.to_string().starts_with("not JSON: ")
            }),
            ("empty", Vec::new(), |e| matches!(e, EventError::NotJson(_))),
            ("cut short", b"{\"event_id\": \"a".to_vec(), |e| {
                matches!(e, EventError::NotJson(_))
            }),
            ("array", b"[]".to_vec(), |e| {
                matches!(e, EventError::Shape(_))
            }),
            (
                "missing event_id",
                without("", "event_id"),
                |e| matches!(e, EventError::Shape(m) if m.contains("event_id")),
            ),
            (
                "missing tag",
                without("/image", "tag"),
                |e| matches!(e, EventError::Shape(m) if m.contains("tag")),
            ),
            ("missing region", without("/repository", "region"), |e| {
                matches!(e, EventError::Shape(_))
            }),
            ("tag is a number", with("/image/tag", 5.into()), |e| {
                matches!(e, EventError::Shape(_))
            }),
            ("event_id empty", with("/event_id", "".into()), |e| {
                *e == EventError::EventId(0)
            }),
            (
                "event_id too long",
                with("/event_id", long_id.into()),
                |e| *e == EventError::EventId(129),
            ),
            (
                "no offset",
                with("/occurred_at", "2016-11-29T12:25:46".into()),
                |e| {
                    matches!(
                        e,
                        EventError::Timestamp {
                            field: "occurred_at"
                        }
                    )
                },
            ),
            (
                "bad date_created",
                with("/repository/date_created", "yesterday".into()),
                |e| {
                    matches!(
                        e,
                        EventError::Timestamp {
                            field: "repository.date_created"
                        }
                    )
                },
            ),
            (
                "tag starts with dot",
                with("/image/tag", ".hidden".into()),
                |e| *e == EventError::Tag,
            ),
            ("tag with slash", with("/image/tag", "a/b".into()), |e| {
                *e == EventError::Tag
            }),
            (
                "tag too long",
                with("/image/tag", "a".repeat(129).into()),
                |e| *e == EventError::Tag,
            ),
            (
                "digest without colon",
                with("/image/digest", "sha256".into()),
                |e| *e == EventError::Digest,
            ),
            (
                "digest not hex",
                with("/image/digest", "sha256:xyz".into()),
                |e| *e == EventError::Digest,
            ),
            (
                "digest uppercase",
                with("/image/digest", "SHA256:abcd".into()),
                |e| *e == EventError::Digest,
            ),
        ];
        for (name, body, check) in cases {
            let err = decode(&body).expect_err(name);
            assert!(check(&err), "{name}: unexpected error {err:?}");
        }
    }

    #[test]
    fn oversized_and_deeply_nested_messages_are_refused() {
        let mut big = CONTRACT_EXAMPLE.as_bytes().to_vec();
        big.resize(MAX_EVENT_BYTES + 1, b' ');
        assert_eq!(decode(&big), Err(EventError::TooLarge(MAX_EVENT_BYTES + 1)));

        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            decode(deep.as_bytes()),
            Err(EventError::NotJson(_) | EventError::Shape(_))
        ));
    }

    #[test]
    fn docker_tags() {
        for ok in [
            "latest",
            "_x",
            "v1.2.3",
            "release-v1.2",
            "A",
            &"a".repeat(128),
        ] {
            assert!(is_docker_tag(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a:b", "ä", &"a".repeat(129)] {
            assert!(!is_docker_tag(bad), "{bad}");
        }
    }

    /// Any JSON value: nested arrays and objects of scalars.
    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,40}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,8}", inner, 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const FIELDS: [&str; 11] = [
        "/event_id",
        "/type",
        "/occurred_at",
        "/repository/namespace",
        "/repository/name",
        "/repository/region",
        "/repository/date_created",
        "/repository/repo_type",
        "/image/tag",
        "/image/digest",
        "/image",
    ];

    proptest::proptest! {
        // 20,000 cases each: the figures quoted for "decoding never panics on any bytes".
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        /// Structure-aware: the contract's example with one field replaced by any JSON value. Valid
        /// or not, it decodes to a value or a reason, and a wrong type is always a reason.
        #[test]
        fn any_value_in_any_field_decodes_or_is_refused(field in 0usize..FIELDS.len(), value in any_json()) {
            let body = with(FIELDS[field], value.clone());
            let result = decode(&body);
            if !value.is_string() && FIELDS[field] != "/image" {
                proptest::prop_assert!(result.is_err());
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_events(pos in 0usize..600, byte in proptest::num::u8::ANY) {
            let mut body = CONTRACT_EXAMPLE.as_bytes().to_vec();
            let at = pos % body.len();
            body[at] = byte;
            let _ = decode(&body);
        }
    }
}
