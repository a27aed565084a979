#!/usr/bin/env bash
# Every test: native unit and mapping tests, and the end-to-end tests that run the
# worker under `wrangler dev`. Installs the toolchain first (idempotent).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh
# The timeline pages are tested in a real browser.
bash scripts/setup-chromium.sh
cargo test --lib --tests -- --test-threads=1 "$@"
