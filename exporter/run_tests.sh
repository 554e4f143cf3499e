#!/usr/bin/env bash
# The exporter's tests (issue 10): Commander 18.1.8's own objects as fixtures, no Keeper server.
#   1. setup.sh: exporter/.venv with keepercommander==18.1.8 (from PyPI; idempotent);
#   2. python -m unittest: field-by-field comparison with Commander's own `pam launch` offer, exit codes,
#      file permissions, and (with PAM_LITE_BIN) `pam-lite ticket check` / the emulator's ticket shape.
# PAM_LITE_BIN: the pam-lite binary to check tickets with; PAM_LITE_REQUIRE_BIN=1 makes its absence a failure
# (CI) instead of a SKIPPED test.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
"$HERE/setup.sh"
cd "$HERE"
# -W ignore::ResourceWarning: the fixtures open files Commander never closes; the warnings are noise.
exec timeout --kill-after=10 "${PAM_LITE_EXPORTER_TIMEOUT:-300}" \
  "$HERE/.venv/bin/python" -W ignore::ResourceWarning -m unittest -v tests.test_export
