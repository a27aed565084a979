-- Dry-run mode: a merchant can simulate before going live. Deliveries of a dry-run
-- merchant are built exactly as they would be sent, recorded, and marked `simulated`
-- instead of being sent. SQLite cannot change a CHECK constraint in place, so the
-- deliveries table is rebuilt with the new status (same columns, same order).

ALTER TABLE merchants ADD COLUMN dry_run INTEGER NOT NULL DEFAULT 0;

CREATE TABLE deliveries_next (
  job_id      TEXT PRIMARY KEY,
  event_id    TEXT NOT NULL,
  merchant_id TEXT NOT NULL,
  destination TEXT NOT NULL,
  status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead_lettered', 'simulated')),
  attempts    INTEGER NOT NULL DEFAULT 0,
  last_error  TEXT,
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL
);
INSERT INTO deliveries_next (job_id, event_id, merchant_id, destination, status, attempts, last_error, created_at, updated_at)
  SELECT job_id, event_id, merchant_id, destination, status, attempts, last_error, created_at, updated_at FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_next RENAME TO deliveries;
CREATE INDEX deliveries_by_merchant ON deliveries (merchant_id, destination, status);
CREATE INDEX deliveries_by_time ON deliveries (updated_at);
