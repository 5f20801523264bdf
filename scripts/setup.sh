#!/usr/bin/env bash
# Creates (or reuses) .venv and installs srpo_jax with the given extras.
# Usage: bash scripts/setup.sh [extras]      e.g. bash scripts/setup.sh test,parity
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "${1:-}" ]; then
  .venv/bin/python -m pip install -q -e ".[$1]"
else
  .venv/bin/python -m pip install -q -e .
fi
