#!/usr/bin/env bash
# From a fresh clone to a running local worker: installs the toolchain, builds,
# applies D1 migrations to local state, seeds the demo merchant, runs `wrangler dev`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
bash scripts/build-worker.sh
PORT="${PORT:-8787}"
STATE="${TRACKLAYER_STATE_DIR:-.state/dev}"
mkdir -p "$STATE"
wrangler d1 migrations apply DB --local --persist-to "$STATE"
wrangler d1 execute DB --local --persist-to "$STATE" --file scripts/seed-demo.sql
cat <<MSG

TrackLayer is starting on http://127.0.0.1:$PORT
  Stripe webhook URL (demo merchant):
    http://127.0.0.1:$PORT/v1/integrations/stripe/subscription-events?merchant_id=demo
  Demo endpoint secret: whsec_demo_local_only
  Send a signed demo event:  bash scripts/send-demo-webhook.sh
  Inspect deliveries:        curl -H 'Authorization: Bearer dev-admin-token' \\
                               http://127.0.0.1:$PORT/v1/admin/merchants/demo/delivery-attempts

MSG
export TRACKLAYER_SKIP_BUILD=1
exec wrangler dev --local --ip 127.0.0.1 --port "$PORT" --persist-to "$STATE" \
  --show-interactive-dev-session=false --var "ADMIN_TOKEN:${ADMIN_TOKEN:-dev-admin-token}" "$@"
