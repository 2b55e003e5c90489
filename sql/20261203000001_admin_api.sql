-- The admin API (contract section 12): tokens, secret rotation, and the indexes its lists read.

-- API tokens: only a hash of each is kept. `lookup` is the token's first characters after `tgc_`,
-- so a token is found by an index and then compared in full, by hash, in constant time.
CREATE TABLE IF NOT EXISTS api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    lookup       text        NOT NULL UNIQUE,
    hash         bytea       NOT NULL CHECK (octet_length(hash) = 32),
    scope        text        NOT NULL CHECK (scope IN ('read', 'write')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
-- A name names one live token; a revoked one keeps its row (and its name) for the record.
CREATE UNIQUE INDEX IF NOT EXISTS api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;

-- Rotation: the secret replaced last keeps signing beside the new one until it expires.
ALTER TABLE webhooks
    ADD COLUMN IF NOT EXISTS previous_secret            text,
    ADD COLUMN IF NOT EXISTS previous_secret_expires_at timestamptz,
    -- Why and when tagcast disabled the webhook (contract section 14); set back to null when it
    -- is enabled again.
    ADD COLUMN IF NOT EXISTS disabled_reason            text,
    ADD COLUMN IF NOT EXISTS disabled_at                timestamptz;
-- The sweeper looks for rotated-out secrets whose grace is over every few seconds: among
-- however many webhooks, only those with one.
CREATE INDEX IF NOT EXISTS webhooks_previous_secret_expiry
    ON webhooks (previous_secret_expires_at) WHERE previous_secret_expires_at IS NOT NULL;

-- Access-record lists, newest first: one index range per page, for a webhook and for a
-- repository. The first replaces the (webhook_id, created_at) index, which it covers.
CREATE INDEX IF NOT EXISTS deliveries_webhook_newest
    ON deliveries (webhook_id, created_at DESC, id DESC);
DROP INDEX IF EXISTS deliveries_by_webhook;
CREATE INDEX IF NOT EXISTS deliveries_repository_newest
    ON deliveries (namespace, repository, created_at DESC, id DESC);
