-- Finishing an inline first attempt is the most frequent write. Made a HOT update (a new row
-- version on the same page, no new index entries), it costs a fraction of an ordinary one; that
-- needs room on the page and no indexed column changed. The sweeper's index on status and
-- updated_at ruled out the second, so the sweeper now follows a flag of its own: `watched` is
-- true while a delivery waits on a broker job (handed off, or retrying), and false once it is
-- final or while the event stage's inline first attempt holds it (if that worker dies, the
-- event comes again and hands the delivery off).
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS watched boolean NOT NULL DEFAULT false;
UPDATE deliveries SET watched = true WHERE status IN ('pending', 'retrying');
ALTER TABLE deliveries ALTER COLUMN watched SET DEFAULT true;
DROP INDEX IF EXISTS deliveries_unfinished;
CREATE INDEX IF NOT EXISTS deliveries_watched ON deliveries (created_at) WHERE watched;
-- Room for the finished version of each row beside it.
ALTER TABLE deliveries SET (fillfactor = 60);
