//! What a recorded attempt does to its webhook's standing (contract section 14): a `410 Gone`,
//! or a failure that ends a long enough run of failed deliveries, disables the webhook, and the
//! replica that disabled it announces it on the status exchange.

use chrono::Utc;

use super::Context;
use crate::amqp::Publisher;
use crate::consumer::{Done, StageError};
use crate::disabling::{self, Streak};
use crate::model::DeliveryRecord;
use crate::status::WebhookDisabled;
use crate::store;

/// Disables the webhook of `record` if its attempt calls for it. `failing` is the webhook's run
/// of failed deliveries, when this attempt failed its delivery.
pub async fn after_attempt(
    ctx: &Context,
    publisher: &Publisher,
    record: &DeliveryRecord,
    failing: Option<Streak>,
) -> Result<Done, StageError> {
    let reason = disabling::on_status(record.http_status)
        .or_else(|| failing.and_then(|streak| ctx.disable.on_failure(streak, Utc::now())));
    let Some(reason) = reason else {
        return Ok(Done::default());
    };
    // None: another replica, or a person, disabled it first.
    let Some(disabled) = ctx
        .db(|| store::disable(&ctx.pool, record.webhook_id, reason))
        .await?
    else {
        return Ok(Done::default());
    };
    ctx.metrics.webhook_disabled(reason);
    tracing::warn!(
        webhook_id = disabled.id, webhook = %disabled.name, namespace = %disabled.namespace,
        repository = %disabled.repository, reason = reason.as_str(),
        "webhook disabled; enable it again once its endpoint is fixed"
    );
    let event = WebhookDisabled {
        webhook_id: disabled.id,
        webhook_name: &disabled.name,
        namespace: &disabled.namespace,
        repository: &disabled.repository,
        reason: reason.as_str(),
        at: disabled.at,
    };
    Ok(Done::after(vec![
        publisher
            .status(WebhookDisabled::ROUTING_KEY, &event.to_json())
            .await?,
    ]))
}
