-- The global database (binding DB): only what must be found before a merchant's region
-- is known, and nothing personal. Everything else lives in the regional databases
-- (DB_US, DB_EU; see migrations/regional/).

-- Merchant id -> region, plan, status. The region is fixed at creation.
CREATE TABLE merchant_routes (
  merchant_id TEXT PRIMARY KEY,
  region      TEXT NOT NULL CHECK (region IN ('us', 'eu')),
  plan        TEXT NOT NULL CHECK (plan IN ('starter', 'scale', 'pro', 'enterprise')),
  status      TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL
);

-- Merchant-scoped API keys. Only SHA-256 of the secret part is stored.
CREATE TABLE api_keys (
  key_id       TEXT PRIMARY KEY,
  merchant_id  TEXT NOT NULL,
  secret_hash  TEXT NOT NULL,
  label        TEXT NOT NULL DEFAULT '',
  created_at   INTEGER NOT NULL,
  last_used_at INTEGER,
  revoked_at   INTEGER
);
CREATE INDEX api_keys_by_merchant ON api_keys (merchant_id);

-- Requests refused before any event was recorded, counted per minute so a flood adds
-- rows per minute, not per request. No bodies, no addresses: codes and messages only.
CREATE TABLE rejected_requests (
  merchant_id  TEXT NOT NULL,
  route        TEXT NOT NULL,
  code         TEXT NOT NULL,
  status       INTEGER NOT NULL,
  minute       INTEGER NOT NULL,
  count        INTEGER NOT NULL,
  last_message TEXT NOT NULL,
  last_at      INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, route, code, minute)
);
CREATE INDEX rejected_requests_by_time ON rejected_requests (last_at);

-- Idempotency for scheduled jobs: one row per cron expression per UTC day.
CREATE TABLE cron_runs (
  cron        TEXT NOT NULL,
  run_date    TEXT NOT NULL,
  started_at  INTEGER NOT NULL,
  finished_at INTEGER,
  detail      TEXT,
  PRIMARY KEY (cron, run_date)
);
