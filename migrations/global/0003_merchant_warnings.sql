-- Warnings a merchant must see before something breaks, written by the daily job: today,
-- destinations pinned to a platform API version within 30 days of (or past) its sunset.
-- Nothing personal: destination names, versions and dates.
CREATE TABLE merchant_warnings (
  merchant_id TEXT NOT NULL,
  kind        TEXT NOT NULL, -- 'api_version'
  subject     TEXT NOT NULL, -- the destination
  detail      TEXT NOT NULL, -- JSON
  recorded_at INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, kind, subject)
);
