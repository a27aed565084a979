#!/usr/bin/env bash
# Installs everything the build and the tests need, into the repository only
# (.tools/ and node_modules/). Idempotent: a second run takes seconds.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

WORKER_BUILD_VERSION=0.8.7
# worker-build runs the wasm-bindgen CLI, which must equal the library in Cargo.lock.
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

installed_version() { "$1" --version 2>/dev/null | awk '{ print $NF }'; }

if [ "$(installed_version .tools/bin/worker-build)" != "$WORKER_BUILD_VERSION" ]; then
  cargo install --root .tools --locked worker-build --version "$WORKER_BUILD_VERSION"
fi
if [ "$(installed_version .tools/bin/wasm-bindgen)" != "$WASM_BINDGEN_VERSION" ]; then
  # --locked first; its lockfile names a webpki-roots release the registry no longer
  # serves, so fall back to a fresh resolution of the same CLI version.
  cargo install --root .tools --locked wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" ||
    cargo install --root .tools wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

if [ ! -x node_modules/.bin/wrangler ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

echo "setup: worker-build $(installed_version .tools/bin/worker-build), wasm-bindgen $(installed_version .tools/bin/wasm-bindgen), wrangler $(wrangler --version 2>/dev/null | tail -1)"
