-- TrackLayer initial schema. Timestamps are unix milliseconds unless named *_at_s.
-- Provider ids are TEXT; money never appears here except inside event payload JSON
-- (exact decimal strings).

-- Per-merchant configuration.
CREATE TABLE merchants (
  merchant_id  TEXT PRIMARY KEY,
  region       TEXT NOT NULL DEFAULT 'us' CHECK (region IN ('us', 'eu')),
  plan         TEXT NOT NULL DEFAULT 'starter' CHECK (plan IN ('starter', 'scale', 'pro', 'enterprise')),
  status       TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
  value_policy TEXT NOT NULL DEFAULT '{}',
  created_at   INTEGER NOT NULL,
  updated_at   INTEGER NOT NULL
);

-- Source settings as JSON (e.g. stripe: {"endpoint_secrets": [...], "tolerance_seconds": 300}).
CREATE TABLE merchant_sources (
  merchant_id TEXT NOT NULL REFERENCES merchants (merchant_id) ON DELETE CASCADE,
  source      TEXT NOT NULL,
  config      TEXT NOT NULL,
  updated_at  INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, source)
);

-- Destination settings and credentials as JSON (e.g. meta: {"pixel_id", "access_token", ...}).
CREATE TABLE merchant_destinations (
  merchant_id TEXT NOT NULL REFERENCES merchants (merchant_id) ON DELETE CASCADE,
  destination TEXT NOT NULL,
  enabled     INTEGER NOT NULL DEFAULT 1,
  config      TEXT NOT NULL,
  updated_at  INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, destination)
);

-- Identity learnt from billing customer events, used to enrich later events.
CREATE TABLE customers (
  merchant_id    TEXT NOT NULL,
  source         TEXT NOT NULL,
  customer_id    TEXT NOT NULL,
  email          TEXT,
  observed_at_s  INTEGER NOT NULL,
  updated_at     INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, source, customer_id)
);

-- Every canonical event produced, forwarded or not.
CREATE TABLE canonical_events (
  event_id          TEXT PRIMARY KEY,
  merchant_id       TEXT NOT NULL,
  name              TEXT NOT NULL,
  source            TEXT NOT NULL,
  source_event_id   TEXT NOT NULL,
  source_event_type TEXT NOT NULL,
  occurred_at_s     INTEGER NOT NULL,
  payload           TEXT NOT NULL,
  received_at       INTEGER NOT NULL
);
CREATE INDEX canonical_events_by_merchant ON canonical_events (merchant_id, received_at);

-- Verified source events with no lifecycle meaning: acknowledged so sources stop retrying.
CREATE TABLE ignored_events (
  merchant_id       TEXT NOT NULL,
  source            TEXT NOT NULL,
  source_event_id   TEXT NOT NULL,
  source_event_type TEXT NOT NULL,
  reason            TEXT NOT NULL,
  received_at       INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, source, source_event_id)
);

-- One row per (event, destination): the exactly-once ledger of the consumer.
CREATE TABLE deliveries (
  job_id      TEXT PRIMARY KEY,
  event_id    TEXT NOT NULL,
  merchant_id TEXT NOT NULL,
  destination TEXT NOT NULL,
  status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead_lettered')),
  attempts    INTEGER NOT NULL DEFAULT 0,
  last_error  TEXT,
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL
);
CREATE INDEX deliveries_by_merchant ON deliveries (merchant_id, destination, status);

-- Every attempt, successful or not. request_url never contains credentials.
CREATE TABLE delivery_attempts (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id       TEXT NOT NULL,
  event_id     TEXT NOT NULL,
  merchant_id  TEXT NOT NULL,
  destination  TEXT NOT NULL,
  attempt      INTEGER NOT NULL,
  outcome      TEXT NOT NULL,
  http_status  INTEGER,
  detail       TEXT,
  request_url  TEXT,
  duration_ms  INTEGER,
  attempted_at INTEGER NOT NULL
);
CREATE INDEX delivery_attempts_by_job ON delivery_attempts (job_id);
CREATE INDEX delivery_attempts_by_merchant ON delivery_attempts (merchant_id, attempted_at);

-- Deliveries we gave up on, with the full job so an operator can replay them.
CREATE TABLE dead_letters (
  job_id           TEXT PRIMARY KEY,
  event_id         TEXT NOT NULL,
  merchant_id      TEXT NOT NULL,
  destination      TEXT NOT NULL,
  attempts         INTEGER NOT NULL,
  reason           TEXT NOT NULL,
  last_error       TEXT NOT NULL,
  job              TEXT NOT NULL,
  dead_lettered_at INTEGER NOT NULL,
  replayed_at      INTEGER
);
CREATE INDEX dead_letters_by_merchant ON dead_letters (merchant_id, destination, dead_lettered_at);

-- Idempotency for scheduled jobs: one row per cron expression per UTC day.
CREATE TABLE cron_runs (
  cron        TEXT NOT NULL,
  run_date    TEXT NOT NULL,
  started_at  INTEGER NOT NULL,
  finished_at INTEGER,
  detail      TEXT,
  PRIMARY KEY (cron, run_date)
);
