#!/usr/bin/env bash
# Sets up .venv with the test and parity extras, then runs ruff and the whole test suite:
# first everything but the real-server tests on 2 workers, then the tests that start a real
# inference server (sglang-jax on CPU) on their own, so a loaded machine cannot slow the
# server past its timeouts.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
# torch is pinned to the CPU build in the parity extra (a bare `torch` pulls CUDA wheels).
bash scripts/setup.sh test,parity
. .venv/bin/activate
ruff format --check srpo_jax tests configs kernels benchmarks
ruff check srpo_jax tests configs kernels benchmarks

run_pytest() {
  set +e
  python -m pytest "$@"
  local rc=$?
  set -e
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
  fi
  return "$rc"
}
status=0
run_pytest -n "${PYTEST_WORKERS:-2}" -m "not server" "$@" || status=$?
run_pytest -m server "$@" || status=$?
exit "$status"
