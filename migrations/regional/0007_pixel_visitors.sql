-- Browsers the first-party pixel has seen are stored in `identities` under
-- 'visitor:<id>'. A link says which person (email:…, customer:…) a visitor turned out to
-- be; what the pixel captures later for that visitor is copied to the person's keys.
CREATE TABLE identity_links (
  merchant_id  TEXT NOT NULL,
  visitor_key  TEXT NOT NULL,
  identity_key TEXT NOT NULL,
  linked_at    INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, visitor_key, identity_key)
);
CREATE INDEX identity_links_by_identity ON identity_links (merchant_id, identity_key);
CREATE INDEX identity_links_by_time ON identity_links (linked_at);
