-- First-party pixel settings. The key is public (it is in the merchant's page source);
-- it must be found before the merchant's region is known, so it lives here. Origins are
-- the merchant's own sites: nothing personal.
CREATE TABLE pixel_keys (
  pixel_key        TEXT PRIMARY KEY,
  merchant_id      TEXT NOT NULL UNIQUE,
  allowed_origins  TEXT NOT NULL, -- JSON array of origin patterns
  browser_identify INTEGER NOT NULL DEFAULT 1 CHECK (browser_identify IN (0, 1)),
  created_at       INTEGER NOT NULL,
  updated_at       INTEGER NOT NULL
);
