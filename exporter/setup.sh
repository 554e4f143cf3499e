#!/usr/bin/env bash
# Creates exporter/.venv (gitignored) with Keeper Commander pinned, for pam-lite-export and its tests.
# Idempotent: a venv that already imports the pinned version is left alone.
# Exit codes: 0 ready, 1 could not build the venv (no python3 >= 3.8, no PyPI).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="$HERE/.venv"
PY="${EXPORTER_PYTHON:-python3}"
COMMANDER_PIN="keepercommander==18.1.8"

check() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
ok = m.version("keepercommander") == "18.1.8"
import keepercommander.commands.pam_launch.launch  # noqa: F401  (the code the exporter calls really loads)
sys.exit(0 if ok else 1)
PY
}

if [ -x "$VENV/bin/python" ] && check; then
  echo "exporter venv ready: $VENV"
  exit 0
fi
command -v "$PY" >/dev/null || { echo "setup.sh: $PY not found" >&2; exit 1; }
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$COMMANDER_PIN"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$HERE" --no-deps
check || { echo "setup.sh: the venv does not import the pinned version" >&2; exit 1; }
echo "exporter venv ready: $VENV"
