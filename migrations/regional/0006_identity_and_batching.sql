-- Identity store: click ids, first-party cookies and device data captured at signup,
-- per merchant, under every key they can be found by (`email:<address>`,
-- `customer:<source>:<id>`). Billing events weeks later are joined to them at send time.
CREATE TABLE identities (
  merchant_id   TEXT NOT NULL,
  identity_key  TEXT NOT NULL,
  touchpoints   TEXT NOT NULL,
  captured_at_s INTEGER NOT NULL,
  updated_at    INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, identity_key)
);
CREATE INDEX identities_by_time ON identities (updated_at);

-- OAuth access tokens (sealed like every credential), refreshed before they expire.
CREATE TABLE oauth_tokens (
  merchant_id   TEXT NOT NULL,
  destination   TEXT NOT NULL,
  access_token  TEXT NOT NULL,
  expires_at_ms INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, destination)
);

-- Deliveries gain the match-quality score of what was sent, and a `skipped` status for
-- events a destination has nothing to do with by design (a refund of a conversion the
-- platform never received). Rebuilt because SQLite cannot alter a CHECK constraint.
CREATE TABLE deliveries_next (
  job_id      TEXT PRIMARY KEY,
  event_id    TEXT NOT NULL,
  merchant_id TEXT NOT NULL,
  destination TEXT NOT NULL,
  status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead_lettered', 'simulated', 'skipped')),
  attempts    INTEGER NOT NULL DEFAULT 0,
  last_error  TEXT,
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL,
  match_score INTEGER,
  match_keys  TEXT
);
INSERT INTO deliveries_next (job_id, event_id, merchant_id, destination, status, attempts, last_error, created_at, updated_at)
  SELECT job_id, event_id, merchant_id, destination, status, attempts, last_error, created_at, updated_at FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_next RENAME TO deliveries;
CREATE INDEX deliveries_by_merchant ON deliveries (merchant_id, destination, status);
CREATE INDEX deliveries_by_time ON deliveries (updated_at);
CREATE INDEX deliveries_by_event ON deliveries (event_id);
