#!/usr/bin/env bash
# Sets up .venv and runs the CPU demo: a tiny Qwen3 learns the synthetic task with SRPO.
# Usage: bash scripts/demo.sh [workdir] [extra main.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORKDIR="${1:-runs/demo}"
shift || true
exec .venv/bin/python -m srpo_jax.main --config=configs/demo.py --workdir="$WORKDIR" "$@"
