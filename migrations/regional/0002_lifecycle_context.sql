-- Lifecycle context: per-merchant lifecycle rules, cancellations remembered per customer
-- (reactivation within the recovery window), and which canonical events already had
-- their delivery jobs enqueued (one logical conversion can arrive via two webhooks).

ALTER TABLE merchants ADD COLUMN lifecycle TEXT NOT NULL DEFAULT '{}';

ALTER TABLE customers ADD COLUMN last_cancelled_at_s INTEGER;
ALTER TABLE customers ADD COLUMN last_cancelled_subscription TEXT;

ALTER TABLE canonical_events ADD COLUMN enqueued_at INTEGER;
-- Rows written before this migration were enqueued in the same request.
UPDATE canonical_events SET enqueued_at = received_at;
