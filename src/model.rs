//! The domain types every layer shares: a delivery's status and its record, and the id that
//! names one (event, webhook) pair everywhere (database row, status event, `webhook-id`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The life of a delivery. `NotTriggered`, `Succeeded` and `Failed` are final.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    NotTriggered,
    Pending,
    Retrying,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::NotTriggered => "not_triggered",
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryStatus::NotTriggered | DeliveryStatus::Succeeded | DeliveryStatus::Failed
        )
    }
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 5] = [
        DeliveryStatus::NotTriggered,
        DeliveryStatus::Pending,
        DeliveryStatus::Retrying,
        DeliveryStatus::Succeeded,
        DeliveryStatus::Failed,
    ];

    /// The status a `deliveries.status` text stands for.
    pub fn from_sql(text: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A delivery as status events show it.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub id: Uuid,
    pub event_id: String,
    pub webhook_id: i64,
    pub webhook_name: String,
    pub namespace: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: Option<i32>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
}

/// The id of the delivery of `event_id` to `webhook_id`, which happened at `occurred_at`: a
/// version 7 UUID whose time is the event's, to the millisecond, and whose other 74 bits come
/// from SHA-256 of both ids. Every copy of an event carries the same time, so the id is the same
/// on every redelivery; and ids sort by event time, so the records' indexes grow at their right
/// edge instead of on a random page (contract section 15).
pub fn delivery_id(event_id: &str, webhook_id: i64, occurred_at: DateTime<Utc>) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(event_id.as_bytes());
    hash.update([0]);
    hash.update(webhook_id.to_be_bytes());
    let digest = hash.finalize();
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&digest[..10]);
    // A time before 1970 or beyond the layout's 48 bits (year 10889) is clamped: the id stays
    // deterministic, only its order is lost.
    let millis = u64::try_from(occurred_at.timestamp_millis())
        .unwrap_or(0)
        .min((1 << 48) - 1);
    uuid::Builder::from_unix_timestamp_millis(millis, &bits).into_uuid()
}

/// The event time a [`delivery_id`] carries, to the millisecond; `None` for an id of another
/// layout (records made before ids were time-ordered).
pub fn delivery_time(id: Uuid) -> Option<DateTime<Utc>> {
    if id.get_version() != Some(uuid::Version::SortRand) {
        return None;
    }
    let mut millis = [0u8; 8];
    millis[2..].copy_from_slice(&id.as_bytes()[..6]);
    DateTime::from_timestamp_millis(i64::from_be_bytes(millis))
}

/// Times as status events and the admin API write them: RFC 3339, UTC, milliseconds (`2016-11-29T04:25:47.120Z`).
pub mod utc_millis {
    use chrono::{DateTime, SecondsFormat, Utc};

    pub fn serialize<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    /// Any RFC 3339 time: what the API writes reads back.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        <DateTime<Utc> as serde::Deserialize>::deserialize(d)
    }

    pub mod option {
        use chrono::{DateTime, Utc};

        pub fn serialize<S: serde::Serializer>(
            at: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => super::serialize(at, s),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_sql_text() {
        use DeliveryStatus::*;
        for status in [NotTriggered, Pending, Retrying, Succeeded, Failed] {
            assert_eq!(DeliveryStatus::from_sql(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::from(status.as_str())
            );
        }
        assert_eq!(DeliveryStatus::from_sql("done"), None);
        assert!(NotTriggered.is_final() && Succeeded.is_final() && Failed.is_final());
        assert!(!Pending.is_final() && !Retrying.is_final());
        for status in DeliveryStatus::ALL {
            let text = serde_json::Value::from(status.as_str());
            assert_eq!(
                serde_json::from_value::<DeliveryStatus>(text).unwrap(),
                status
            );
        }
    }

    #[test]
    fn times_have_milliseconds_in_utc() {
        #[derive(serde::Serialize)]
        struct At(#[serde(with = "utc_millis")] DateTime<Utc>);
        let at = DateTime::parse_from_rfc3339("2016-11-29T12:25:47.120456+08:00").unwrap();
        let shown = serde_json::to_string(&At(at.with_timezone(&Utc))).unwrap();
        assert_eq!(shown, r#""2016-11-29T04:25:47.120Z""#);
    }

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
    }

    #[test]
    fn delivery_ids_are_stable_per_event_and_webhook() {
        let t = at("2016-11-29T04:25:47.120456Z");
        let a = delivery_id("event-1", 42, t);
        assert_eq!(a, delivery_id("event-1", 42, t));
        assert_ne!(a, delivery_id("event-1", 43, t));
        assert_ne!(a, delivery_id("event-2", 42, t));
        // The separator keeps ("a", 1) and ("a\0...", ...) apart from concatenation tricks.
        assert_ne!(
            delivery_id("1", 1, t),
            delivery_id("", 0x3100_0000_0000_0001, t)
        );
        assert_eq!(a.get_version(), Some(uuid::Version::SortRand));
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn delivery_ids_carry_the_event_time_to_the_millisecond() {
        let cases = [
            ("2016-11-29T04:25:47.120456Z", "2016-11-29T04:25:47.120Z"),
            ("2026-12-03T23:59:59.999999Z", "2026-12-03T23:59:59.999Z"),
            ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"),
            // Before the epoch: clamped, still an id.
            ("1969-07-20T20:17:40Z", "1970-01-01T00:00:00Z"),
        ];
        for (occurred, carried) in cases {
            let id = delivery_id("e", 1, at(occurred));
            assert_eq!(delivery_time(id), Some(at(carried)), "{occurred}");
        }
        assert_eq!(delivery_time(Uuid::new_v8([7; 16])), None);
    }

    proptest::proptest! {
        /// Ids sort as their events' times do, whatever the ids of event and webhook.
        #[test]
        fn delivery_ids_sort_by_event_time(
            a in 0i64..4_000_000_000_000, b in 0i64..4_000_000_000_000,
            ea in ".{0,12}", eb in ".{0,12}", wa: i64, wb: i64,
        ) {
            let (ta, tb) = (
                DateTime::from_timestamp_millis(a).unwrap(),
                DateTime::from_timestamp_millis(b).unwrap(),
            );
            let (ia, ib) = (delivery_id(&ea, wa, ta), delivery_id(&eb, wb, tb));
            if a < b {
                proptest::prop_assert!(ia < ib);
            }
            proptest::prop_assert_eq!(delivery_time(ia), Some(ta));
        }
    }
}
