#!/usr/bin/env bash
# The test command: set up (once) and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(bash scripts/setup.sh)
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --timeout=900 "$@"
