#!/usr/bin/env bash
# Create (once) the virtual environment editsynth runs in, and print its path.
# The venv lives outside the checkout, keyed by the dependency list, so fresh clones on the same
# machine (CI included) reuse it; a changed pyproject.toml gets a new one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
key=$( (cat pyproject.toml; "$PY" --version) | sha256sum | cut -c1-12)
VENV=${EDITSYNTH_VENV:-$HOME/.cache/editsynth/venv-$key}
if [ ! -x "$VENV/bin/editsynth" ] || [ ! -f "$VENV/.complete" ]; then
  echo "setting up $VENV (first time: several minutes)" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  # torch + torchvision pinned as a pair: open_clip needs torchvision, and a torchvision that
  # does not match its torch fails to import. On a GPU machine this is the CUDA build.
  "$VENV/bin/pip" install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}" >&2
  "$VENV/bin/pip" install -q -e ".[test,serve]" >&2
  touch "$VENV/.complete"
fi
# Install the package itself (editable) into a reused venv if this checkout is new to it.
"$VENV/bin/python" -c "import datagen, os, sys; sys.exit(0 if os.path.samefile(os.path.dirname(datagen.__file__), 'datagen') else 1)" 2>/dev/null \
  || "$VENV/bin/pip" install -q --no-deps -e . >&2
echo "$VENV"
