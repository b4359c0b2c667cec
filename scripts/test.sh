#!/usr/bin/env bash
# The test command: set up (once) and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(bash scripts/setup.sh)
# The web UI and audit-report tests drive a real headless browser: Debian's Chromium.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
      || echo "warning: could not install chromium; the browser tests will be skipped" >&2
  fi
fi
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --timeout=900 "$@"
