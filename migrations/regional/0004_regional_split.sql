-- Residency split: this schema now runs once per region (DB_US, DB_EU). Region, plan
-- and status moved to the global routing record (migrations/global/); the regional
-- merchants row keeps the merchant's settings. Source and destination configs are
-- stored sealed (AES-256-GCM, `enc:v1:<key id>:...`), never as plain JSON.

ALTER TABLE merchants DROP COLUMN region;
ALTER TABLE merchants DROP COLUMN plan;
ALTER TABLE merchants DROP COLUMN status;

DROP TABLE cron_runs;

-- Which Durable Object ledger an event went through, so erasure can find it.
ALTER TABLE canonical_events ADD COLUMN ordering_key TEXT;

-- Every ledger (Durable Object) holding state for a merchant: whole-merchant deletion
-- clears each of them.
CREATE TABLE ledger_keys (
  merchant_id  TEXT NOT NULL,
  ordering_key TEXT NOT NULL,
  first_seen   INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, ordering_key)
);

CREATE INDEX canonical_events_by_time ON canonical_events (received_at);
CREATE INDEX dead_letters_by_time ON dead_letters (dead_lettered_at);
CREATE INDEX deliveries_by_time ON deliveries (updated_at);
CREATE INDEX customers_by_time ON customers (merchant_id, updated_at);
