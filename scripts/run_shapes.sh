#!/usr/bin/env bash
# The main job on the embedded default: the shapes pipeline end to end, offline, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(bash scripts/setup.sh)
OUT=${1:-runs/shapes}
"$VENV/bin/editsynth" generate --pipeline shapes --out "$OUT" "${@:2}"
"$VENV/bin/editsynth" shapes report --run "$OUT"
"$VENV/bin/editsynth" audit --run "$OUT"
echo "report: $OUT/report/audit.html  figures: $OUT/report/oracle.json  dataset: $OUT/export/"
