//! What a recorded attempt does to its webhook's standing (contract section 14): a `410 Gone`,
//! or a failure that ends a long enough run of failed deliveries, disables the webhook, and the
//! replica that disabled it announces it on the status exchange (the sweeper, late, should that
//! fail).

use chrono::Utc;

use super::Context;
use crate::amqp::{AmqpError, Publisher, confirmed};
use crate::consumer::{Done, StageError};
use crate::disabling::{self, Streak};
use crate::model::DeliveryRecord;
use crate::status::WebhookDisabled;
use crate::store::{self, Disabled};

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
    // Confirmed here, not with the rest of the message: only then is it noted as announced.
    // Should the broker not confirm it, the message comes again but the webhook is disabled
    // already; the sweeper announces it instead.
    publish_disabled(publisher, &disabled).await?;
    ctx.db(|| store::announced(&ctx.pool, disabled.id, disabled.at))
        .await?;
    Ok(Done::default())
}

/// Publishes a disabling's `webhook.disabled` event and waits for the broker's confirm.
pub async fn publish_disabled(publisher: &Publisher, disabled: &Disabled) -> Result<(), AmqpError> {
    let event = WebhookDisabled {
        webhook_id: disabled.id,
        webhook_name: &disabled.name,
        namespace: &disabled.namespace,
        repository: &disabled.repository,
        reason: &disabled.reason,
        at: disabled.at,
    };
    let pending = publisher
        .status(WebhookDisabled::ROUTING_KEY, &event.to_json())
        .await?;
    confirmed(vec![pending]).await
}
