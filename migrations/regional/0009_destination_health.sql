-- How each merchant's destination has been answering: consecutive transient failures,
-- and whether its jobs are parked (held without spending attempts) while one probe at a
-- time checks whether the platform is back. No personal data.
CREATE TABLE destination_health (
  merchant_id          TEXT NOT NULL,
  destination          TEXT NOT NULL,
  consecutive_failures INTEGER NOT NULL DEFAULT 0,
  parked_since         INTEGER,
  next_probe_at        INTEGER,
  probes               INTEGER NOT NULL DEFAULT 0,
  updated_at           INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, destination)
);
