//! `tagcast publish`: one `build.completed` event, as a registry would send it, for trying tagcast
//! out and for checking a deployment end to end without writing AMQP by hand.

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::json;

use crate::amqp::AmqpError;
use crate::amqp::connection::connect_any;
use crate::events::BUILD_COMPLETED;
use crate::nodes::Nodes;

/// What to publish.
#[derive(Debug, Clone, clap::Args)]
pub struct Sample {
    /// The repository's namespace.
    #[arg(long, default_value = "namespace")]
    pub namespace: String,
    /// The repository's name.
    #[arg(long, default_value = "repoTest")]
    pub repository: String,
    /// The image tag that was built.
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// The event's id; a new UUID when not given (the same id twice is one event, delivered once).
    #[arg(long)]
    pub event_id: Option<String>,
    /// When the build completed, RFC 3339 with an offset; now when not given.
    #[arg(long)]
    pub occurred_at: Option<DateTime<FixedOffset>>,
}

impl Sample {
    /// The event's JSON: the example of the contract, for this repository, tag and time.
    pub fn body(&self, event_id: &str) -> Vec<u8> {
        let event = json!({
            "event_id": event_id,
            "type": BUILD_COMPLETED,
            "occurred_at": self
                .occurred_at
                .unwrap_or_else(|| Utc::now().fixed_offset())
                .to_rfc3339_opts(SecondsFormat::Secs, false),
            "repository": {
                "namespace": self.namespace,
                "name": self.repository,
                "region": "cn-hangzhou",
                "date_created": "2016-10-28T21:31:42+08:00",
                "repo_authentication_type": "NO_CERTIFIED",
                "repo_origin_type": "NO_CERTIFIED",
                "repo_type": "PUBLIC"
            },
            "image": {
                "tag": self.tag,
                "digest": "sha256:457f4aa83fc9a6663ab9d1b0a6e2dce25a12a943ed5bf2c1747c58d48bbb4917"
            }
        });
        // A JSON value of strings only always serializes.
        serde_json::to_vec(&event).unwrap_or_default()
    }
}

/// Publishes the event to `exchange` (declaring it, as tagcast does, if it does not exist yet)
/// and waits for the broker's confirm. Returns the event's id.
pub async fn publish(amqp: &Nodes, exchange: &str, sample: &Sample) -> Result<String, AmqpError> {
    let event_id = sample
        .event_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (connection, _) = connect_any(amqp, 0..amqp.urls().len(), "tagcast publish").await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let routing_key = format!(
        "{BUILD_COMPLETED}.{}.{}",
        sample.namespace, sample.repository
    );
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &sample.body(&event_id),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(ShortString::from("application/json")),
        )
        .await?
        .await?;
    let _ = connection.close(200, "published".into()).await;
    if confirm.is_ack() {
        Ok(event_id)
    } else {
        Err(AmqpError::Nacked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_a_valid_build_event() {
        let sample = Sample {
            namespace: "ns".into(),
            repository: "repo".into(),
            tag: "v1.2".into(),
            event_id: None,
            occurred_at: Some("2016-11-29T12:25:46+08:00".parse().unwrap()),
        };
        match crate::events::decode(&sample.body("e-1")) {
            Ok(crate::events::Decoded::Build(event)) => {
                assert_eq!(
                    (
                        event.event_id.as_str(),
                        event.repository.namespace.as_str(),
                        event.repository.name.as_str(),
                        event.tag.as_str()
                    ),
                    ("e-1", "ns", "repo", "v1.2")
                );
                assert_eq!(event.occurred_at.to_rfc3339(), "2016-11-29T12:25:46+08:00");
            }
            other => panic!("not a build event: {other:?}"),
        }
    }
}
