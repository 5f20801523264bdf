#!/usr/bin/env bash
# Creates (or reuses) .venv and installs srpo_jax with the given extras, quietly: pip's
# output goes to .venv/setup.log, which is named (with its last lines) only if setup fails.
# A second call with the same pyproject.toml and extras does nothing (.venv/.srpo_setup_stamp
# records what was installed; delete it to force a reinstall), so scripts/demo.sh starts at
# once after the first time.
# Usage: bash scripts/setup.sh [extras]      e.g. bash scripts/setup.sh test,parity
#
# pip reads the machine's own configuration (pip config list: indexes, find-links,
# constraints) as usual; whatever it prints about them, such as "Location ... is ignored"
# for a configured local index that lacks a package, lands in the log, not on the screen.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRAS="${1:-}"
LOG=.venv/setup.log
STAMP=.venv/.srpo_setup_stamp

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv > /tmp/srpo_venv.$$.log 2>&1; then
    echo "error: could not create .venv with $PY (output: /tmp/srpo_venv.$$.log)" >&2
    exit 1
  fi
  rm -f /tmp/srpo_venv.$$.log
fi
want="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=[$EXTRAS]"
# One line per extras set installed against this pyproject.toml (pip install never removes
# what another extras set brought, so demo.sh and test.sh do not undo each other).
if [ -f "$STAMP" ] && grep -qxF "$want" "$STAMP"; then
  exit 0
fi

target="."
[ -n "$EXTRAS" ] && target=".[$EXTRAS]"
{
  echo "== $(date -u) setup.sh ${EXTRAS:+extras $EXTRAS}"
  .venv/bin/python -m pip install --upgrade pip &&
    .venv/bin/python -m pip install -e "$target"
} > "$LOG" 2>&1 || {
  echo "error: installing srpo_jax${EXTRAS:+[$EXTRAS]} into .venv failed; pip's output is in $PWD/$LOG:" >&2
  if grep -q "^ERROR" "$LOG"; then grep "^ERROR" "$LOG" | tail -n 5 >&2; else tail -n 15 "$LOG" >&2; fi
  exit 1
}
echo "$want" >> "$STAMP"
