#!/usr/bin/env bash
# Creates the local demo merchant through the admin API, as an operator would:
# a Scale-plan US merchant with a Stripe source and a Meta destination (Meta's test
# event code, so nothing counts in a real pixel). Idempotent. Local secrets only.
set -euo pipefail
BASE="${BASE:-http://127.0.0.1:${PORT:-8787}}"
AUTH="Authorization: Bearer ${ADMIN_TOKEN:-dev-admin-token}"
call() {
  curl -sS -o /dev/stderr -w '%{http_code}' -X "$1" "$BASE$2" -H "$AUTH" \
    -H 'content-type: application/json' ${3:+--data "$3"}
}
status=$(call POST /v1/admin/merchants '{"merchant_id":"demo","plan":"scale"}' 2>/dev/null)
case "$status" in
  201) echo "created merchant demo" ;;
  409) echo "merchant demo exists" ;;
  *) echo "creating merchant demo failed: HTTP $status" >&2; exit 1 ;;
esac
call PUT /v1/admin/merchants/demo/sources/stripe \
  '{"endpoint_secrets":["whsec_demo_local_only"],"tolerance_seconds":300}' >/dev/null 2>&1
call PUT /v1/admin/merchants/demo/destinations/meta \
  '{"pixel_id":"1234567890","access_token":"demo-access-token","api_version":"v25.0","action_source":"system_generated","test_event_code":"TEST12345"}' >/dev/null 2>&1
if [ "$status" = 201 ]; then
  echo "demo API key (shown once):"
  curl -sS -X POST "$BASE/v1/admin/merchants/demo/api-keys" -H "$AUTH" \
    -H 'content-type: application/json' --data '{"label":"local demo"}'
  echo
fi
