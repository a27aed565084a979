#!/usr/bin/env bash
# Builds the bare echo worker (benches/echo-worker) with the project's pinned toolchain.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT/benches/echo-worker"
if [ "${TRACKLAYER_SKIP_BUILD:-0}" = 1 ] && [ -f build/index.js ]; then
  exit 0
fi
worker-build --release
