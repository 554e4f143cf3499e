#!/bin/sh
# Runs COMMAND in a fresh, private network namespace whose only interface is lo, carrying 127.0.0.1 and
# 198.18.0.1/32 (RFC 2544 benchmarking range, exists only inside this namespace). Keeper's tube library
# (webrtc-rs) never gathers a loopback candidate, so it needs that second address; pam-lite binds 127.0.0.1.
# Everything COMMAND starts (the Rust test binary, keeper_peer.py, echo servers) shares the namespace, nothing
# reaches the host's interfaces, and the namespace disappears when COMMAND exits.
#   usage: tests/interop/netns_run.sh COMMAND [ARGS...]
# Exit 77 (and a message) when no namespace can be made (no unshare, no ip, or not permitted).
set -e
ADDR="${KP_NETNS_ADDR:-198.18.0.1}"
if ! command -v unshare >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  echo "netns_run.sh: needs unshare and ip (util-linux, iproute2)" >&2
  exit 77
fi
if [ "$(id -u)" = 0 ]; then FLAGS="-n"; else FLAGS="-r -n"; fi
if ! unshare $FLAGS true 2>/dev/null; then
  echo "netns_run.sh: cannot create a network namespace here (unshare $FLAGS refused)" >&2
  exit 77
fi
export KP_TUBE_NETNS="$ADDR"
exec unshare $FLAGS sh -c 'ip link set lo up && ip addr add "$KP_TUBE_NETNS/32" dev lo && exec "$@"' netns_run "$@"
