-- Each merchant's records now live in that merchant's Durable Object (class `Merchant`,
-- schema in src/records.rs), in its region's jurisdiction. This database keeps only
-- what is shared and read-mostly: each merchant's settings and sealed configs.
DROP TABLE IF EXISTS destination_health;
DROP TABLE IF EXISTS identity_links;
DROP TABLE IF EXISTS identities;
DROP TABLE IF EXISTS oauth_tokens;
DROP TABLE IF EXISTS delivery_attempts;
DROP TABLE IF EXISTS dead_letters;
DROP TABLE IF EXISTS deliveries;
DROP TABLE IF EXISTS canonical_events;
DROP TABLE IF EXISTS ignored_events;
DROP TABLE IF EXISTS customers;
DROP TABLE IF EXISTS crm_context;
DROP TABLE IF EXISTS ledger_keys;
