#!/usr/bin/env bash
# Sets up .venv with the test and parity extras, then runs ruff and the whole test suite:
# first everything but the real-server tests on 2 workers, then the tests that start a real
# inference server (sglang-jax on CPU) on their own, so a loaded machine cannot slow the
# server past its timeouts.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
# torch is pinned to the CPU build in the parity extra (a bare `torch` pulls CUDA wheels).
# aot: the compile-only XLA:GPU / XLA:TPU compilers (srpo_jax.aot.targets) the compile tests use.
bash scripts/setup.sh test,parity,aot
. .venv/bin/activate
ruff format --check srpo_jax tests configs benchmarks
ruff check srpo_jax tests configs benchmarks

status=0
set +e
python -m pytest -n "${PYTEST_WORKERS:-2}" -m "not server" --durations=40 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  rc=1
fi
[ "$rc" -eq 0 ] || status=$rc
python -m pytest -m server "$@"
rc=$?
# 5: the selection holds no server test (e.g. a single test file was named).
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
  status=$rc
fi
set -e
exit "$status"
