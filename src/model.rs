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

/// The id of the delivery of `event_id` to `webhook_id`: a version 8 UUID made of SHA-256 of both.
pub fn delivery_id(event_id: &str, webhook_id: i64) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(event_id.as_bytes());
    hash.update([0]);
    hash.update(webhook_id.to_be_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
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

    #[test]
    fn delivery_ids_are_stable_per_event_and_webhook() {
        let a = delivery_id("event-1", 42);
        assert_eq!(a, delivery_id("event-1", 42));
        assert_ne!(a, delivery_id("event-1", 43));
        assert_ne!(a, delivery_id("event-2", 42));
        // The separator keeps ("a", 1) and ("a\0...", ...) apart from concatenation tricks.
        assert_ne!(delivery_id("1", 1), delivery_id("", 0x3100_0000_0000_0001));
        assert_eq!(a.get_version_num(), 8);
    }
}
