#!/usr/bin/env bash
# Signs a Stripe fixture the way Stripe does (t=…,v1=HMAC-SHA256 of "t.body") and posts it.
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURE="${1:-tests/fixtures/stripe/customer.subscription.created.trialing.json}"
SECRET="${STRIPE_SECRET:-whsec_demo_local_only}"
URL="${URL:-http://127.0.0.1:${PORT:-8787}/v1/integrations/stripe/events?merchant_id=demo}"
BODY_FILE=$(mktemp)
# A fresh event id and creation time, so the demo is not a duplicate and Meta's 7-day limit holds.
python3 - "$FIXTURE" > "$BODY_FILE" <<'PY'
import json, sys, time, uuid
event = json.load(open(sys.argv[1]))
event["id"] = "evt_demo_" + uuid.uuid4().hex[:20]
event["created"] = int(time.time())
sys.stdout.write(json.dumps(event))
PY
TS=$(date +%s)
SIG=$( { printf '%s.' "$TS"; cat "$BODY_FILE"; } | openssl dgst -sha256 -hmac "$SECRET" | awk '{ print $NF }')
curl -sS -X POST "$URL" -H 'content-type: application/json' -H "Stripe-Signature: t=$TS,v1=$SIG" --data-binary "@$BODY_FILE"
echo
rm -f "$BODY_FILE"
