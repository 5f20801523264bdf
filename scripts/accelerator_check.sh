#!/usr/bin/env bash
# Checks for the day a GPU or TPU is attached: fused attention parity, the fused distillation
# kernel's values and speed vs the HBM floor, one model step's time and peak memory vs the
# compiler's prediction. One report file; nothing downloads. Budget: under 8 minutes.
#   bash scripts/accelerator_check.sh [report.json]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-accelerator_report.json}"
timeout 480 python -m srpo_jax.aot.device_check --out="$out"
echo "report: $out"
