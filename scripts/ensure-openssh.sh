#!/usr/bin/env bash
# Makes sure Debian's openssh-client and openssh-server are installed, for cli/tests/ssh_proxy.rs (real ssh,
# scp and sshd through `pam-lite tunnel --stdio`). Idempotent: does nothing when ssh, scp, ssh-keygen and
# /usr/sbin/sshd are all present. Installs with apt-get otherwise (needs root and the Debian mirror).
# The packages' own service is never started: the test runs its own sshd on 127.0.0.1 with its own config.
# Exit codes: 0 present, 1 missing and could not be installed.
set -euo pipefail
have() { command -v ssh >/dev/null && command -v scp >/dev/null && command -v ssh-keygen >/dev/null \
  && [ -x /usr/sbin/sshd ]; }
if have; then
  echo "openssh present: $(ssh -V 2>&1)"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "ensure-openssh.sh: openssh-client/openssh-server missing and apt-get is not usable here (not root or not Debian)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: do not start the packaged sshd service during installation.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then printf '#!/bin/sh\nexit 101\n' > "$POLICY"; chmod +x "$POLICY"; CREATED_POLICY=1; fi
trap '[ "${CREATED_POLICY:-0}" = 1 ] && rm -f "$POLICY"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends openssh-client openssh-server >/dev/null
have || { echo "ensure-openssh.sh: installed, but ssh/scp/sshd are still missing" >&2; exit 1; }
echo "openssh installed: $(ssh -V 2>&1)"
