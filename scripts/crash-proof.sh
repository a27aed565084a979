#!/usr/bin/env bash
# Crash proof for the delivery path: SIGKILLs `wrangler dev` mid-stream, restarts it on
# the same state and checks that every acknowledged webhook ends delivered or
# dead-lettered within 10 minutes (tests/it/proof_crash.rs). CRASH_EVENTS sets how many
# webhooks are posted (default 400).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
cargo test --release --test it proof_crash -- --ignored --nocapture --test-threads=1
