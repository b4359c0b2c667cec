#!/usr/bin/env bash
# The main job on the embedded default: the shapes pipeline end to end, offline, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(bash scripts/setup.sh)
OUT=${1:-runs/shapes}
"$VENV/bin/editsynth" generate --pipeline shapes --out "$OUT" "${@:2}"
if "$VENV/bin/editsynth" audit --help >/dev/null 2>&1; then
  "$VENV/bin/editsynth" audit --run "$OUT"
fi
