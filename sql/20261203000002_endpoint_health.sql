-- Endpoint health (contract section 14): a cap per webhook, and each failing webhook's run of
-- failed deliveries.

ALTER TABLE webhooks
    -- Attempts in flight to this webhook per replica; null: TAGCAST_WEBHOOK_MAX_IN_FLIGHT.
    ADD COLUMN IF NOT EXISTS max_in_flight integer CHECK (max_in_flight >= 1);

ALTER TABLE webhooks DROP CONSTRAINT IF EXISTS webhooks_disabled_reason;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_disabled_reason
    CHECK (disabled_reason IS NULL OR disabled_reason IN ('gone', 'failing'));

-- Whether the `webhook.disabled` event of tagcast's last disabling was confirmed by the broker:
-- the sweeper announces, late, what a crash or a lost connection left unannounced.
ALTER TABLE webhooks ADD COLUMN IF NOT EXISTS disabled_announced boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS webhooks_unannounced ON webhooks (disabled_at)
    WHERE disabled_reason IS NOT NULL AND NOT disabled_announced;

-- A row exists only while a webhook is failing: written when one of its deliveries fails,
-- deleted by its next success and when it is enabled again. `since` is its first failed
-- delivery after the last success. Apart from `webhooks` so that counting failures neither
-- rewrites a webhook row nor tells every replica to drop its cache. No foreign key: a failure
-- recorded as its webhook is deleted must not fail the batch of attempts it is recorded with;
-- a row left for a deleted webhook (ids are never reused) is never read.
CREATE TABLE IF NOT EXISTS webhook_failures (
    webhook_id bigint      PRIMARY KEY,
    since      timestamptz NOT NULL,
    failed     bigint      NOT NULL CHECK (failed >= 1)
);

-- Enabling a webhook again, through the API or by hand in SQL, clears why tagcast disabled it
-- and starts its failure window anew.
CREATE OR REPLACE FUNCTION tagcast_webhook_enabled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.enabled AND NOT OLD.enabled THEN
        NEW.disabled_reason := NULL;
        NEW.disabled_at := NULL;
        DELETE FROM webhook_failures WHERE webhook_id = NEW.id;
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS webhooks_enabled ON webhooks;
CREATE TRIGGER webhooks_enabled
    BEFORE UPDATE OF enabled ON webhooks
    FOR EACH ROW EXECUTE FUNCTION tagcast_webhook_enabled();
