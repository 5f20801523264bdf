#!/usr/bin/env bash
# Creates (or reuses) .venv, installs srpo_jax with its test extras, runs ruff and pytest.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch is pinned to the CPU build (parity extra); transformers is in core.
python -m pip install -q -e ".[test,parity]"
ruff format --check srpo_jax tests configs kernels
ruff check srpo_jax tests configs kernels
set +e
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
