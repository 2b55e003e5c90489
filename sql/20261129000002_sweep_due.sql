-- The sweeper looks for watched deliveries that are overdue. Ordered by when each is due (its
-- next attempt, or its creation while it waits for the first), an index scan stops at the first
-- one not yet due, so retries waiting hours are never read; ordered by creation, as before,
-- every sweep read all of them. The columns it names do not change when an inline attempt
-- finishes, so that update stays HOT.
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries ((coalesce(next_attempt_at, created_at))) WHERE watched;
DROP INDEX IF EXISTS deliveries_watched;
