-- Records at scale (contract section 15): `deliveries` and `delivery_attempts` partitioned by the
-- event's own time, so that records past the retention go a whole day's partition at a time.
--
-- Partitioned by `occurred_at`, not by when a row was written: every copy of an event carries the
-- same time, so a redelivered event finds its first copy's rows in the same partition, and the
-- unique key that makes redelivery idempotent can include the time. `delivery_attempts` carries
-- its delivery's `occurred_at` so that both tables split at the same bounds and a day's attempts
-- go with that day's deliveries.
--
-- Daily partitions are made ahead of time by tagcast (see `src/store/partitions.rs`). A default
-- partition catches what falls outside them (an event stamped before the first partition or days
-- ahead of the clock). Existing records are kept without copying them: the old tables become one
-- partition each, covering all time up to the first daily partition, dropped whole once the
-- retention has passed over everything in them.

ALTER TABLE delivery_attempts DROP CONSTRAINT IF EXISTS delivery_attempts_delivery_id_fkey;
ALTER TABLE deliveries RENAME TO deliveries_legacy;
ALTER TABLE delivery_attempts RENAME TO delivery_attempts_legacy;
-- Index names share one namespace: the old ones make way for the partitioned tables' own.
ALTER INDEX deliveries_pkey RENAME TO deliveries_legacy_id;
ALTER INDEX deliveries_event_webhook_unique RENAME TO deliveries_legacy_event_webhook;
ALTER INDEX deliveries_due RENAME TO deliveries_legacy_due;
ALTER INDEX deliveries_webhook_newest RENAME TO deliveries_legacy_webhook_newest;
ALTER INDEX deliveries_repository_newest RENAME TO deliveries_legacy_repository_newest;
ALTER INDEX delivery_attempts_pkey RENAME TO delivery_attempts_legacy_pkey;

CREATE TABLE deliveries (
    id              uuid        NOT NULL,
    event_id        text        NOT NULL,
    webhook_id      bigint      NOT NULL
                                CONSTRAINT deliveries_webhook_id_fkey REFERENCES webhooks (id) ON DELETE CASCADE,
    namespace       text        NOT NULL,
    repository      text        NOT NULL,
    tag             text        NOT NULL,
    digest          text        NOT NULL,
    -- Named as the old table's are: an attached partition must have the same checks by name.
    status          text        NOT NULL CONSTRAINT deliveries_status_check
                                CHECK (status IN ('not_triggered', 'pending', 'retrying', 'succeeded', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0 CONSTRAINT deliveries_attempts_check CHECK (attempts >= 0),
    http_status     integer,
    error           text,
    request_body    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz,
    occurred_at     timestamptz NOT NULL,
    duration_ms     integer,
    lease_until     timestamptz,
    watched         boolean     NOT NULL DEFAULT true,
    PRIMARY KEY (id, occurred_at),
    -- Unique per (event, webhook) for each event time: the copies of one event share it.
    CONSTRAINT deliveries_event_webhook_unique UNIQUE (event_id, webhook_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

CREATE INDEX deliveries_due ON deliveries ((coalesce(next_attempt_at, created_at))) WHERE watched;
CREATE INDEX deliveries_webhook_newest ON deliveries (webhook_id, created_at DESC, id DESC);
CREATE INDEX deliveries_repository_newest ON deliveries (namespace, repository, created_at DESC, id DESC);

CREATE TABLE delivery_attempts (
    delivery_id   uuid        NOT NULL,
    attempt       integer     NOT NULL CONSTRAINT delivery_attempts_attempt_check CHECK (attempt >= 1),
    started_at    timestamptz NOT NULL,
    duration_ms   integer     NOT NULL,
    http_status   integer,
    error         text,
    response_body text,
    error_detail  text,
    occurred_at   timestamptz NOT NULL,
    PRIMARY KEY (delivery_id, occurred_at, attempt),
    FOREIGN KEY (delivery_id, occurred_at) REFERENCES deliveries (id, occurred_at) ON DELETE CASCADE
) PARTITION BY RANGE (occurred_at);

CREATE TABLE deliveries_default PARTITION OF deliveries DEFAULT WITH (fillfactor = 60);
CREATE TABLE delivery_attempts_default PARTITION OF delivery_attempts DEFAULT;

ALTER TABLE delivery_attempts_legacy ADD COLUMN occurred_at timestamptz;
UPDATE delivery_attempts_legacy a SET occurred_at = d.occurred_at
  FROM deliveries_legacy d WHERE d.id = a.delivery_id;
ALTER TABLE delivery_attempts_legacy ALTER COLUMN occurred_at SET NOT NULL;

DO $$
DECLARE
    bound timestamptz;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM deliveries_legacy) THEN
        DROP TABLE delivery_attempts_legacy;
        DROP TABLE deliveries_legacy;
        RETURN;
    END IF;
    -- The start of the day (UTC) after both today and the newest record: daily partitions begin there.
    SELECT (date_trunc('day', greatest(now(), max(occurred_at)) AT TIME ZONE 'UTC') + interval '1 day')
           AT TIME ZONE 'UTC'
      INTO bound FROM deliveries_legacy;
    -- The old keys make way for the partitioned tables' own, which the attach builds.
    ALTER TABLE deliveries_legacy DROP CONSTRAINT deliveries_legacy_event_webhook;
    ALTER TABLE deliveries_legacy DROP CONSTRAINT deliveries_legacy_id;
    ALTER TABLE delivery_attempts_legacy DROP CONSTRAINT delivery_attempts_legacy_pkey;
    EXECUTE format('ALTER TABLE deliveries ATTACH PARTITION deliveries_legacy FOR VALUES FROM (MINVALUE) TO (%L)', bound);
    EXECUTE format('ALTER TABLE delivery_attempts ATTACH PARTITION delivery_attempts_legacy FOR VALUES FROM (MINVALUE) TO (%L)', bound);
END
$$;

-- A partition's bounds, read back from its definition (`FOR VALUES FROM ('…') TO ('…')`); null
-- for MINVALUE and for the default partition. tagcast reads them to know which days have a
-- partition and which partitions the retention has passed.
CREATE OR REPLACE FUNCTION tagcast_partition_lower(oid) RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT substring(pg_get_expr(relpartbound, oid) FROM 'FROM \(''([^'']*)''\)')::timestamptz
      FROM pg_class WHERE oid = $1
$$;
CREATE OR REPLACE FUNCTION tagcast_partition_upper(oid) RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT substring(pg_get_expr(relpartbound, oid) FROM 'TO \(''([^'']*)''\)')::timestamptz
      FROM pg_class WHERE oid = $1
$$;
