#!/usr/bin/env bash
# Builds build/index.js + build/index_bg.wasm (wrangler's [build] command).
# Release builds (the default) run wasm-opt; TRACKLAYER_BUILD_PROFILE=dev skips it.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
if [ "${TRACKLAYER_SKIP_BUILD:-0}" = 1 ] && [ -f build/index.js ]; then
  exit 0
fi
if [ "${TRACKLAYER_BUILD_PROFILE:-release}" = dev ]; then
  worker-build --dev
else
  worker-build --release
fi
