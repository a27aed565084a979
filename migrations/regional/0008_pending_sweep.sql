-- The sweeper finds pending deliveries nobody is working on (a crash between the write
-- and the queue send, a lost message) by status and last activity.
CREATE INDEX deliveries_by_status_time ON deliveries (status, updated_at);
