//! Status events (contract sections 7 and 14): the message published each time a delivery
//! becomes `not_triggered`, `retrying`, `succeeded` or `failed`, and the one published when
//! tagcast disables a webhook.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::model::{DeliveryRecord, DeliveryStatus, utc_millis};

/// Field order is the contract's key order.
#[derive(Debug, Serialize)]
pub struct StatusEvent<'a> {
    pub delivery_id: Uuid,
    pub event_id: &'a str,
    pub webhook_id: i64,
    pub webhook_name: &'a str,
    pub namespace: &'a str,
    pub repository: &'a str,
    pub tag: &'a str,
    pub digest: &'a str,
    pub status: DeliveryStatus,
    pub attempt: i32,
    pub http_status: Option<i32>,
    pub duration_ms: Option<i32>,
    pub error: Option<&'a str>,
    #[serde(serialize_with = "utc_millis::option::serialize")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "utc_millis::serialize")]
    pub at: DateTime<Utc>,
}

impl<'a> StatusEvent<'a> {
    /// The event for a delivery as recorded. `None` for `pending`, which has no status event.
    pub fn of(record: &'a DeliveryRecord, at: DateTime<Utc>) -> Option<StatusEvent<'a>> {
        if record.status == DeliveryStatus::Pending {
            return None;
        }
        let not_triggered = record.status == DeliveryStatus::NotTriggered;
        Some(StatusEvent {
            delivery_id: record.id,
            event_id: &record.event_id,
            webhook_id: record.webhook_id,
            webhook_name: &record.webhook_name,
            namespace: &record.namespace,
            repository: &record.repository,
            tag: &record.tag,
            digest: &record.digest,
            status: record.status,
            attempt: record.attempts,
            http_status: if not_triggered {
                None
            } else {
                record.http_status
            },
            duration_ms: if not_triggered {
                None
            } else {
                record.duration_ms
            },
            error: record.error.as_deref(),
            next_attempt_at: record.next_attempt_at,
            at,
        })
    }

    pub fn routing_key(&self) -> String {
        format!("delivery.{}", self.status.as_str())
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Strings, numbers and formatted dates only: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `webhook.disabled`: tagcast disabled a webhook. Field order is the contract's key order.
#[derive(Debug, Serialize)]
pub struct WebhookDisabled<'a> {
    pub webhook_id: i64,
    pub webhook_name: &'a str,
    pub namespace: &'a str,
    pub repository: &'a str,
    pub reason: &'a str,
    #[serde(serialize_with = "utc_millis::serialize")]
    pub at: DateTime<Utc>,
}

impl WebhookDisabled<'_> {
    pub const ROUTING_KEY: &'static str = "webhook.disabled";

    pub fn to_json(&self) -> Vec<u8> {
        // Strings, a number and a formatted date: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: DeliveryStatus) -> DeliveryRecord {
        DeliveryRecord {
            id: Uuid::parse_str("5e1d0000-0000-4000-8000-000000000001").unwrap(),
            event_id: "0b6f".into(),
            webhook_id: 42,
            webhook_name: "deploy".into(),
            namespace: "namespace".into(),
            repository: "repoTest".into(),
            tag: "latest".into(),
            digest: "sha256:abc".into(),
            status,
            attempts: 1,
            http_status: Some(200),
            error: None,
            duration_ms: Some(12),
            next_attempt_at: None,
            occurred_at: Utc::now(),
        }
    }

    #[test]
    fn shape_and_key_order_follow_the_spec() {
        let at = DateTime::parse_from_rfc3339("2016-11-29T04:25:47.120Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = record(DeliveryStatus::Succeeded);
        let event = StatusEvent::of(&r, at).unwrap();
        assert_eq!(event.routing_key(), "delivery.succeeded");
        assert_eq!(
            String::from_utf8(event.to_json()).unwrap(),
            concat!(
                r#"{"delivery_id":"5e1d0000-0000-4000-8000-000000000001","event_id":"0b6f","webhook_id":42,"webhook_name":"deploy","#,
                r#""namespace":"namespace","repository":"repoTest","tag":"latest","digest":"sha256:abc","status":"succeeded","#,
                r#""attempt":1,"http_status":200,"duration_ms":12,"error":null,"next_attempt_at":null,"at":"2016-11-29T04:25:47.120Z"}"#
            )
        );
    }

    #[test]
    fn not_triggered_has_attempt_zero_and_null_http_fields() {
        let mut r = record(DeliveryStatus::NotTriggered);
        r.attempts = 0;
        let json: serde_json::Value =
            serde_json::from_slice(&StatusEvent::of(&r, Utc::now()).unwrap().to_json()).unwrap();
        assert_eq!(json["attempt"], 0);
        assert!(json["http_status"].is_null() && json["duration_ms"].is_null());
        assert_eq!(json["status"], "not_triggered");
    }

    #[test]
    fn a_disabled_webhook_is_announced_in_the_contracts_shape() {
        let at = DateTime::parse_from_rfc3339("2026-12-03T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let event = WebhookDisabled {
            webhook_id: 42,
            webhook_name: "deploy",
            namespace: "namespace",
            repository: "repoTest",
            reason: crate::disabling::Reason::Gone.as_str(),
            at,
        };
        assert_eq!(
            String::from_utf8(event.to_json()).unwrap(),
            r#"{"webhook_id":42,"webhook_name":"deploy","namespace":"namespace","repository":"repoTest","reason":"gone","at":"2026-12-03T10:00:00.500Z"}"#
        );
    }

    #[test]
    fn pending_has_no_status_event() {
        assert!(StatusEvent::of(&record(DeliveryStatus::Pending), Utc::now()).is_none());
    }
}
