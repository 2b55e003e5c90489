-- The unique key of an access record, led by its event's time: inserts then go to the right edge
-- of today's partition of it, as they do for the time-ordered ids, instead of to a random page of
-- a key as large as the day's records. The same columns, so the idempotency of contract section 6
-- (ON CONFLICT on them) holds as before. This rebuilds the key of every partition, a pass over
-- the records kept: on a large table, run `tagcast migrate` in a quiet hour.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_webhook_unique;
ALTER TABLE deliveries
    ADD CONSTRAINT deliveries_event_webhook_unique UNIQUE (occurred_at, event_id, webhook_id);
