#!/usr/bin/env bash
# Builds build/index.js + build/index_bg.wasm (wrangler's [build] command).
# Release builds (the default) run wasm-opt; TRACKLAYER_BUILD_PROFILE=dev skips it.
# worker-build reruns wasm-bindgen and wasm-opt even when cargo has nothing to do (a
# minute or more at opt-level 3), so a build whose inputs are unchanged since the last
# one of the same profile is skipped.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
if [ "${TRACKLAYER_SKIP_BUILD:-0}" = 1 ] && [ -f build/index.js ]; then
  exit 0
fi
PROFILE="${TRACKLAYER_BUILD_PROFILE:-release}"
STAMP=build/.built-profile
if [ -f build/index.js ] && [ -f build/index_bg.wasm ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PROFILE" ] &&
  [ -z "$(find src Cargo.toml Cargo.lock scripts/build-worker.sh -newer "$STAMP" -print -quit)" ]; then
  exit 0
fi
rm -f "$STAMP"
# Dated when the build starts: a source edited during the build is newer than it.
touch build/.build-started 2>/dev/null || { mkdir -p build && touch build/.build-started; }
if [ "$PROFILE" = dev ]; then
  worker-build --dev
else
  worker-build --release
fi
echo "$PROFILE" >"$STAMP"
touch -r build/.build-started "$STAMP"
