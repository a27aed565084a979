-- Deal context from CRM stage changes (owner, segment, forecast category, source
-- campaign, deal id), stored per customer identity so later billing events of the same
-- customer carry it. identity_key is `email:<lower-case email>` or `customer:<billing id>`.
CREATE TABLE crm_context (
  merchant_id   TEXT NOT NULL,
  identity_key  TEXT NOT NULL,
  crm           TEXT NOT NULL,
  context       TEXT NOT NULL,
  observed_at_s INTEGER NOT NULL,
  updated_at    INTEGER NOT NULL,
  PRIMARY KEY (merchant_id, identity_key)
);
