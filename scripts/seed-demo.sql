-- Local demo merchant. The secrets below are for local development only.
INSERT INTO merchants (merchant_id, region, plan, status, value_policy, created_at, updated_at)
VALUES ('demo', 'us', 'scale', 'active', '{}', 0, 0)
ON CONFLICT (merchant_id) DO NOTHING;
INSERT INTO merchant_sources (merchant_id, source, config, updated_at)
VALUES ('demo', 'stripe', '{"endpoint_secrets":["whsec_demo_local_only"],"tolerance_seconds":300}', 0)
ON CONFLICT (merchant_id, source) DO NOTHING;
INSERT INTO merchant_destinations (merchant_id, destination, enabled, config, updated_at)
VALUES ('demo', 'meta', 1, '{"pixel_id":"1234567890","access_token":"demo-access-token","api_version":"v25.0","action_source":"system_generated","test_event_code":"TEST12345"}', 0)
ON CONFLICT (merchant_id, destination) DO NOTHING;
