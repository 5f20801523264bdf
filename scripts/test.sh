#!/usr/bin/env bash
# Sets up .venv with the test and parity extras, then runs ruff and the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
# torch is pinned to the CPU build in the parity extra (a bare `torch` pulls CUDA wheels).
bash scripts/setup.sh test,parity
. .venv/bin/activate
ruff format --check srpo_jax tests configs kernels benchmarks
ruff check srpo_jax tests configs kernels benchmarks
set +e
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
