#!/usr/bin/env bash
# Flood proof for ingest: signed Stripe webhooks alone, then during a flood of forged
# requests naming the same merchant and made-up merchants; prints statuses, latencies
# and how many global rows the flood wrote (tests/it/proof_flood.rs).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
cargo test --release --test it proof_flood -- --ignored --nocapture --test-threads=1
