#!/usr/bin/env bash
# Debian's Chromium for the browser tests (driven by puppeteer-core from npm). Installed
# system-wide by apt: needs root or sudo. Idempotent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 ||
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium; }
chromium --version
