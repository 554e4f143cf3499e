#!/usr/bin/env bash
# Creates tests/interop/.venv (gitignored) with Keeper's own tube library and Commander, pinned.
# Idempotent: a venv that already imports both pinned versions is left alone.
# Exit codes: 0 ready, 1 could not build the venv (no python3 >= 3.8, no PyPI).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="$HERE/.venv"
PY="${INTEROP_PYTHON:-python3}"
KEEPER_PIN="keeper-pam-webrtc-rs==2.2.9"
COMMANDER_PIN="keepercommander==18.1.8"

check() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
ok = m.version("keeper-pam-webrtc-rs") == "2.2.9" and m.version("keepercommander") == "18.1.8"
import keeper_pam_webrtc_rs  # noqa: F401  (the wheel really loads)
sys.exit(0 if ok else 1)
PY
}

if [ -x "$VENV/bin/python" ] && check; then
  echo "interop venv ready: $VENV"
  exit 0
fi
command -v "$PY" >/dev/null || { echo "setup.sh: $PY not found" >&2; exit 1; }
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# Both pins in one resolver run, so Commander's own requirements stay consistent with the tube wheel.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$KEEPER_PIN" "$COMMANDER_PIN"
check || { echo "setup.sh: the venv does not import the pinned versions" >&2; exit 1; }
echo "interop venv ready: $VENV"
