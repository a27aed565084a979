#!/usr/bin/env bash
# From a fresh clone to a running local worker: installs the toolchain, builds, applies
# the global and both regional D1 migrations to local state, runs `wrangler dev`, and
# provisions the demo merchant through the admin API.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
bash scripts/build-worker.sh
PORT="${PORT:-8787}"
STATE="${TRACKLAYER_STATE_DIR:-.state/dev}"
# Secrets come from .dev.vars (wrangler dev reads it), never from the command line where
# `ps` would show them. A fresh clone gets the example's local-only values.
if [ ! -f .dev.vars ]; then
  cp .dev.vars.example .dev.vars
  echo "dev: created .dev.vars from .dev.vars.example (local-only secrets)"
fi
ADMIN_TOKEN="$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars | tr -d '"')"
export ADMIN_TOKEN
mkdir -p "$STATE"
for binding in DB DB_US DB_EU; do
  wrangler d1 migrations apply "$binding" --local --persist-to "$STATE"
done
export TRACKLAYER_SKIP_BUILD=1
# LOCAL_WORKERD_WITHOUT_JURISDICTIONS: local workerd cannot place EU Durable Objects.
wrangler dev --local --ip 127.0.0.1 --port "$PORT" --persist-to "$STATE" \
  --show-interactive-dev-session=false \
  --var "LOCAL_WORKERD_WITHOUT_JURISDICTIONS:true" "$@" < /dev/null &
WRANGLER=$!
trap 'kill "$WRANGLER" 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 180); do
  if curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$WRANGLER" 2>/dev/null; then echo "wrangler dev exited" >&2; exit 1; fi
  sleep 1
done
PORT="$PORT" bash scripts/provision-demo.sh
cat <<MSG

TrackLayer is running on http://127.0.0.1:$PORT
  Stripe webhook URL (demo merchant):
    http://127.0.0.1:$PORT/v1/integrations/stripe/events?merchant_id=demo
  Demo endpoint secret: whsec_demo_local_only
  Send a signed demo event:  bash scripts/send-demo-webhook.sh
  Inspect deliveries:        curl -H "Authorization: Bearer \$ADMIN_TOKEN" \\
                               http://127.0.0.1:$PORT/v1/admin/merchants/demo/delivery-attempts
  API reference:             http://127.0.0.1:$PORT/v1/openapi.json

MSG
wait "$WRANGLER"
