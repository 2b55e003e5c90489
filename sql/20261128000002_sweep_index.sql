-- Unfinished deliveries, for the sweeper that re-queues any whose job went missing. Partial:
-- final deliveries, nearly all of them, are not in it.
CREATE INDEX IF NOT EXISTS deliveries_unfinished ON deliveries (updated_at) WHERE status IN ('pending', 'retrying');
