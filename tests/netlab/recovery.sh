# shellcheck shell=bash
# Path recovery in the NAT lab (issue 14, item 3): the path dies mid-transfer and comes back (or does not).
# Sourced by tests/netlab/run.sh after its helpers; same output format, each on both runtimes.
#
# Every scenario moves 64 MiB through `pam-lite tunnel --stdio` to the TCP echo on gw, paced at
# $PAM_LITE_NETLAB_RECOVERY_RATE bytes/s (default 4 MiB/s, so the transfer lasts ~16 s), causes the event once
# 8 MiB came back, and checks the bytes with SHA-256 across it. A line "  <name>: ..." after the verdict gives
# the measurement: when the output last grew before the event and first grew after the path came back (from
# the size of the client's output sampled every 50 ms), and the client's own log lines (path lost / ICE
# restart / path back, with their timestamps).
#
#   path_dark_5s_*              all UDP through NAT A dropped for 5 s (the client's TCP to the router stays up):
#                               the session survives, every byte arrives
#   path_dark_beyond_bound_*    dark until the client gives up, with PAM_LITE_PATH_LOSS_LIMIT_SEC=15: exit 11
#                               "…the path to the peer was lost and did not come back within 15 s (K ICE
#                               restart(s) tried)" within 15-19 s of the loss; what came back is an intact prefix
#   nat_a_rebinding_*           NAT A forgets its UDP mappings (conntrack flushed) and maps the client's socket to
#                               a new external port ($REBIND_PORT): the session recovers, every byte arrives
#   keeper_gateway_client_rebinding_*   the same rebinding with Keeper's tube (keeper-pam-webrtc-rs 2.2.9) as
#                               the gateway (the emulator bridges ICE restarts both ways)
#   client_moves_network_*      the client's interface address changes (another subnet behind NAT A; its TCP
#                               to the router dies): recovery on ICE's own and fresh HTTP connections
#   turn_allocation_lost_relay_only_*   `--relay-only`, and coturn restarts (every allocation gone): the client
#                               allocates again and restarts ICE with the new relayed candidate
#
# Both NATs are endpoint-independent with coturn as relay (the path is the direct srflx pair): the scenarios
# exercise recovery of a direct path, the common case.

MIB64=$((64 * 1024 * 1024))
RECOVERY_RATE=${PAM_LITE_NETLAB_RECOVERY_RATE:-4194304}
REBIND_PORT=20000

# Seconds each scenario may take (run.sh's watchdog), above the default 60.
declare -A SCENARIO_TIMEOUT_OF=()

# note TEXT: a measurement, printed after the scenario's verdict.
note() { echo "$*" >>"$WORK/$name.note"; }

# transfer_start RUNTIME SECONDS [ENV...] [-- FLAGS...]: 64 MiB, paced, into `pam-lite tunnel --stdio -v` in cli, in the background
# (bounded by SECONDS); the output to $WORK/out.bin, the log to $WORK/$name.client.log ($CLIENT_LOG), the exit
# code to $WORK/rc when it ends, the output's size over time to $WORK/$name.sizes (the sampler's pid in $SAMPLER).
transfer_start() {
  local runtime=$1 limit=$2; shift 2
  local envs=() flags=()
  while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then shift; flags=("$@"); break; fi
    envs+=("$1"); shift
  done
  set -- "${envs[@]}"
  CLIENT_LOG=$WORK/$name.client.log
  head -c "$MIB64" /dev/urandom >"$WORK/in.bin"
  rm -f "$WORK/rc" "$WORK/out.bin"
  : >"$WORK/out.bin"
  (
    set +e +o pipefail
    "$PROBE" pace "$RECOVERY_RATE" "$WORK/in.bin" \
      | nsx cli env ${PAM_LITE_NETLAB_RUST_LOG:+RUST_LOG=$PAM_LITE_NETLAB_RUST_LOG} "$@" timeout "$limit" \
        "$PAM_LITE_BIN" tunnel --ticket "$WORK/ticket.json" --stdio --runtime "$runtime" -v "${flags[@]}" \
        >"$WORK/out.bin" 2>"$CLIENT_LOG"
    echo "${PIPESTATUS[1]}" >"$WORK/rc"
  ) &
  "$PROBE" sizes "$WORK/out.bin" "$((limit + 5))" "$BASHPID" >"$WORK/$name.sizes" &
  SAMPLER=$!
}

# sampler_stop: the size sampler ends (it runs outside the namespaces, so the runner's cleanup misses it).
sampler_stop() { kill "$SAMPLER" 2>/dev/null || true; }

# out_at_least BYTES: the transfer's output has BYTES.
out_at_least() { [ "$(stat -c %s "$WORK/out.bin")" -ge "$1" ]; }

# transfer_wait SECONDS: until the transfer ended (its exit code in $WORK/rc).
transfer_wait() {
  local ok=0
  wait_for "$1" test -s "$WORK/rc" || ok=1
  sampler_stop
  return "$ok"
}

now() { date +%s.%N; }

# dark_on / dark_off: every UDP datagram through NAT A dropped (both ways: the direct path to NAT B and the
# relays on srv alike), before conntrack's NAT and the byte counters see it. TCP (the router) is untouched.
dark_on() {
  nsx nata nft -f - <<'EOF'
table ip labdark {
  chain forward { type filter hook forward priority -20; policy accept; meta l4proto udp drop; }
}
EOF
}
dark_off() { nsx nata nft delete table ip labdark; }

# client_events: the client's path-recovery log lines, shortened ("HH:MM:SS.mmm what"), on one line.
client_events() {
  grep -E "path to the gateway is|ICE restart|restarted ICE|ICE-restart|did not come back" "$CLIENT_LOG" \
    | sed -E 's/^[0-9-]+T([0-9:]+\.[0-9]{3})[0-9]*Z +[A-Z]+ +/\1 /' | cut -c1-160 \
    | awk '{ printf "%s%s", (NR > 1 ? " | " : ""), $0 } END { if (NR == 0) printf "(no path-recovery log line)" }'
}

# intact: the transfer ended with exit 0 and the 64 MiB came back with the same SHA-256; else the reason.
intact() {
  local rc want got
  rc=$(cat "$WORK/rc" 2>/dev/null || echo "?")
  want=$(sha256sum <"$WORK/in.bin" | cut -d' ' -f1)
  got=$(sha256sum <"$WORK/out.bin" | cut -d' ' -f1)
  if [ "$rc" != 0 ] || [ "$want" != "$got" ]; then
    [ "$rc" != 124 ] || rc="124 (still running at the scenario's bound, killed by timeout)"
    echo "exit $rc, $(stat -c %s "$WORK/out.bin") of $MIB64 bytes back (sha256 ${got:0:12} vs ${want:0:12}): $(grep -v '^\s*$' "$CLIENT_LOG" | tail -2 | cut -c1-200 | tr '\n' ' ')"
    return 1
  fi
}

# recovery_lab: both NATs endpoint-independent, coturn, the router published on NAT B, the emulator; NAT A
# counts conntrack bytes per mapping (so the rebinding can show which external port carried the data).
recovery_lab() {
  export PAM_LITE_NETLAB_ECHO_IDLE=180
  nsx nata sysctl -qw net.netfilter.nf_conntrack_acct=1
  relay_lab eim eim "$@"
}

# --- the path goes dark for 5 s and comes back ---------------------------------------------------------------

path_dark_5s() {
  recovery_lab || return 0
  transfer_start "$1" 70 KROUTER_URL="http://$NATB_WAN:$ROUTER_PORT"
  wait_for 30 out_at_least $((8 * 1024 * 1024)) || { echo "8 MiB did not come back within 30 s: $(intact)"; return 0; }
  local t_off t_on
  dark_on; t_off=$(now)
  sleep 5
  dark_off; t_on=$(now)
  transfer_wait 60 || { echo "the transfer did not end within 60 s of the path coming back: $(intact)"; return 0; }
  local outage back
  outage=$("$PROBE" outage "$WORK/$name.sizes" "$t_off" "$t_on")
  note "dark $(awk "BEGIN{printf \"%.1f\", $t_on - $t_off}") s; $outage"
  note "client: $(client_events)"
  intact || return 0
  # Data flows again soon after the path is back (measured 2.2-3.0 s: SCTP's retransmission timer, backed
  # off during the outage); 10 s would mean the session limps on without noticing.
  back=$(sed -nE 's/.*1 MiB more came back ([0-9.]+) s after.*/\1/p' <<<"$outage")
  [ -n "$back" ] && awk "BEGIN{exit !($back <= 10)}" || echo "data flowed again only ${back:-never} s after the path came back: $outage"
}
scenario_path_dark_5s_smol() { path_dark_5s smol; }
scenario_path_dark_5s_blocking() { path_dark_5s blocking; }
SCENARIO_TIMEOUT_OF[path_dark_5s_smol]=100
SCENARIO_TIMEOUT_OF[path_dark_5s_blocking]=100

# --- dark for longer than the bound: a clear exit 11 ---------------------------------------------------------

LOSS_LIMIT=15
path_dark_beyond_bound() {
  recovery_lab || return 0
  transfer_start "$1" 70 KROUTER_URL="http://$NATB_WAN:$ROUTER_PORT" PAM_LITE_PATH_LOSS_LIMIT_SEC=$LOSS_LIMIT
  wait_for 30 out_at_least $((8 * 1024 * 1024)) || { echo "8 MiB did not come back within 30 s: $(intact)"; return 0; }
  local t_off t_end rc took last got
  dark_on; t_off=$(now)
  transfer_wait $((LOSS_LIMIT + 20)) || { echo "the client did not end within $((LOSS_LIMIT + 20)) s of the loss"; return 0; }
  t_end=$(now)
  dark_off
  took=$(awk "BEGIN{printf \"%.1f\", $t_end - $t_off}")
  rc=$(cat "$WORK/rc")
  last=$(grep -v '^\s*$' "$CLIENT_LOG" | tail -1 | cut -c1-300)
  got=$(stat -c %s "$WORK/out.bin")
  note "exit $rc ${took} s after the path went dark (bound ${LOSS_LIMIT} s); $(awk "BEGIN{printf \"%.1f\", $got / 1048576}") MiB back; last line: $last"
  note "client: $(client_events)"
  [ "$rc" = 11 ] || { echo "exit $rc, not 11: $last"; return 0; }
  grep -qE "the path to the peer was lost and did not come back within $LOSS_LIMIT s \([0-9]+ ICE restart\(s\) tried\)" <<<"$last" \
    || echo "exit 11 but the last line does not say the path was lost for ${LOSS_LIMIT} s: $last"
  # Not before the bound (the loss is seen up to 6 s late, never early), and within a few seconds after it.
  awk "BEGIN{exit !($took >= $LOSS_LIMIT && $took <= $LOSS_LIMIT + 4)}" \
    || echo "exit 11 after ${took} s of darkness, outside [$LOSS_LIMIT, $((LOSS_LIMIT + 4))] s"
  cmp -s -n "$got" "$WORK/in.bin" "$WORK/out.bin" || echo "the $got bytes that came back are not the input's first $got bytes"
}
scenario_path_dark_beyond_bound_smol() { path_dark_beyond_bound smol; }
scenario_path_dark_beyond_bound_blocking() { path_dark_beyond_bound blocking; }
SCENARIO_TIMEOUT_OF[path_dark_beyond_bound_smol]=100
SCENARIO_TIMEOUT_OF[path_dark_beyond_bound_blocking]=100

# --- NAT A rebinds: its UDP mappings forgotten, the client's socket gets a new external port ---------------

# ext_ports: NAT A's external ports for cli's UDP flows to NAT B's address and to coturn, with their byte
# counts ("port:bytes" words; conntrack accounting, both directions).
ext_ports() {
  nsx nata conntrack -L -p udp 2>/dev/null | awk -v cli="$CLI_IP" '
    $0 ~ "src=" cli " " {
      n = 0; port = ""; b = 0
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^dport=/) { n++; if (n == 2) port = substr($i, 7) }
        if ($i ~ /^bytes=/) b += substr($i, 7)
      }
      out[port] += b
    }
    END { for (p in out) printf "%s:%d ", p, out[p] }'
}

# rebind_a: NAT A loses every UDP mapping and from now on maps cli's UDP to port $REBIND_PORT (still
# endpoint-independent: one socket, one port, whatever the destination). TCP (the router) keeps its mapping.
rebind_a() {
  nsx nata nft -f - <<EOF
flush chain ip lab postrouting
add rule ip lab postrouting oifname "wan" ip saddr 198.19.1.0/24 meta l4proto udp masquerade to :$REBIND_PORT
add rule ip lab postrouting oifname "wan" ip saddr 198.19.1.0/24 masquerade
EOF
  nsx nata conntrack -D -p udp >/dev/null 2>&1 || true
}

# rebinding_transfer RUNTIME TIMEOUT MAX_STALL [ENV...]: the transfer with a rebinding of NAT A once 8 MiB came
# back; prints the reason on failure (MAX_STALL, unless empty: data must flow again within that many seconds of
# the rebinding), notes the measurement.
rebinding_transfer() {
  local rt=$1 limit=$2 max_stall=$3; shift 3
  transfer_start "$rt" "$limit" KROUTER_URL="http://$NATB_WAN:$ROUTER_PORT" "$@"
  wait_for 30 out_at_least $((8 * 1024 * 1024)) || { echo "8 MiB did not come back within 30 s: $(intact)"; return 1; }
  local before t_ev after c0 c1 c2
  before=$(ext_ports) c0=$(counted)
  rebind_a; t_ev=$(now)
  c1=$(counted)
  transfer_wait "$limit" || true
  after=$(ext_ports) c2=$(counted)
  note "external ports (port:bytes) before $before| after $after"
  note "cli's UDP out through NAT A (MiB, to coturn:3478 / to a peer's relay / direct to NAT B): before the event $(mib_path "" "$c0"), after it $(mib_path "$c1" "$c2")"
  local outage back
  outage=$("$PROBE" outage "$WORK/$name.sizes" "$t_ev" "$t_ev")
  note "$outage"
  note "client: $(client_events)"
  back=$(sed -nE 's/.*1 MiB more came back ([0-9.]+) s after.*/\1/p' <<<"$outage")
  if [ -n "$max_stall" ] && ! { [ -n "$back" ] && awk "BEGIN{exit !($back <= $max_stall)}"; }; then
    echo "data flowed again only ${back:-never} s after the rebinding (bound ${max_stall} s)"; return 1
  fi
  test -s "$WORK/rc" || { echo "the transfer did not end within ${limit} s of the rebinding: $(intact)"; return 1; }
  intact || return 1
  # The rebinding happened: before it no flow used $REBIND_PORT, after it one carried data.
  grep -q "\b$REBIND_PORT:" <<<"$before" && { echo "port $REBIND_PORT was in use before the rebinding: $before"; return 1; }
  grep -qE "\b$REBIND_PORT:[1-9]" <<<"$after" || { echo "no data through the new external port $REBIND_PORT: $after"; return 1; }
  return 0
}

# mib_path FROM TO: the growth of count_up's counters between two `counted` snapshots (FROM empty: from zero),
# "turn / peer-relay / direct" in MiB.
mib_path() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(b, y, " "); split(a, x, " ")
    for (i = 1; i <= n; i++) d[i] = (y[i] - x[i]) / 1048576
    printf "%.1f / %.1f / %.1f", d[1] + d[2], d[3], d[4] }'
}

# The lab as the router hands it out: both sides have a relay on coturn. After the rebinding the client's own
# allocation is unusable (coturn knows it by the old 5-tuple), the gateway's is not (its permission is for NAT
# A's address, any port): ICE recovers through the pair "client -> gateway's relay". Measured on the first cut
# of path recovery: the output stalled 31-33 s (no loss was declared: the STUN answers through the gateway's
# relay counted as hearing the peer, and SCTP's backed-off retransmission resumed only at ~31 s). With the path
# watch on DTLS, the 3 s SCTP RTO cap and is-fixed: ~6-7 s, bounded here at 20 s.
nat_a_rebinding() {
  recovery_lab || return 0
  rebinding_transfer "$1" 80 20 || return 0
}
scenario_nat_a_rebinding_smol() { nat_a_rebinding smol; }
scenario_nat_a_rebinding_blocking() { nat_a_rebinding blocking; }
SCENARIO_TIMEOUT_OF[nat_a_rebinding_smol]=130
SCENARIO_TIMEOUT_OF[nat_a_rebinding_blocking]=130

# The same without a relay for the gateway (--gateway-relay no-relay: host + STUN): the direct srflx pair is the only path
# left after the rebinding, and NAT B lets the client's new port in only once the gateway sent to it (the
# case the simulation's client-rebinding test models: the gateway learns the new port from the client's
# checks or its ICE restart).
nat_a_rebinding_no_gateway_relay() {
  recovery_lab --gateway-relay no-relay || return 0
  rebinding_transfer "$1" 100 20 || return 0
}
scenario_nat_a_rebinding_no_gateway_relay_smol() { nat_a_rebinding_no_gateway_relay smol; }
scenario_nat_a_rebinding_no_gateway_relay_blocking() { nat_a_rebinding_no_gateway_relay blocking; }
SCENARIO_TIMEOUT_OF[nat_a_rebinding_no_gateway_relay_smol]=150
SCENARIO_TIMEOUT_OF[nat_a_rebinding_no_gateway_relay_blocking]=150
# Measured 2026-12-02 on the first cut of path recovery: every restart offer carried the client's old srflx
# candidate and the gateway kept sending to the old port (exit 11 at 60 s). Since the client regathers at the
# loss (a new srflx: the new port) and the gateway's ICE agent leaves a pair whose checks go unanswered
# (vendor/is-fixed), data flows again ~9 s after the rebinding on both runtimes.

# --- the same rebinding with Keeper's tube as the gateway -------------------------------------------------------
# Keeper's tube (keeper_peer.py behind the emulated router, as in keeper_gateway_behind_nat_b_*) sees ICE
# disconnected ~30 s after the rebinding and sends its own ICE-restart offer 2 s later; pam-lite answers it
# (the bridge relays restarts both ways). Recovery through it should show within 60 s of the rebinding.
# Measured 2026-12-02 on the first cut: the client counted the STUN answers through the tube's relay as hearing
# the peer and noticed nothing for 95 s, and its restart then desynchronised (Keeper answers a restart offer
# with its ICE credentials unchanged): data flowed again only 123 s after the rebinding. Since the path watch
# counts DTLS only (idle sessions send a tube Ping every 2 s) and str0m-fixed 0003 adopts the credentials we
# offered whatever the answer carries, the loss shows at 6 s, our restart at 8 s is answered, and data flows
# again ~9 s after the rebinding.
keeper_rebinding() {
  local py=$here/../interop/.venv/bin/python
  if [ ! -x "$py" ]; then
    bash "$here/../interop/setup.sh" >"$WORK/venv.log" 2>&1 || { echo "no interop venv: $(tail -c 200 "$WORK/venv.log")"; return 0; }
  fi
  recovery_lab -- "$py" "$here/../interop/keeper_peer.py" --role gateway \
    --target-host 127.0.0.1 --target-port "$ECHO_PORT" --krelay "$SRV_IP" \
    --turn-user "$TURN_USER" --turn-password "$TURN_PASS" --deadline 250 \
    --log-level "${PAM_LITE_NETLAB_KEEPER_LOG:-30}" || return 0
  rebinding_transfer "$1" 200 20 || return 0
}
scenario_keeper_gateway_client_rebinding_smol() { keeper_rebinding smol; }
scenario_keeper_gateway_client_rebinding_blocking() { keeper_rebinding blocking; }
SCENARIO_TIMEOUT_OF[keeper_gateway_client_rebinding_smol]=260
SCENARIO_TIMEOUT_OF[keeper_gateway_client_rebinding_blocking]=260

# --- the client moves to another network: its interface address changes mid-transfer -------------------------
# The client's LAN address moves from 198.19.1.2 to 198.19.3.2 (another subnet behind NAT A, as after joining
# another Wi-Fi): its socket (bound to all interfaces) now sends from the new address, NAT A maps it anew, and
# its TCP connections from the old address (the router's WebSocket) die. ICE on the gateway's side sees the
# client's checks from a new address and follows them (vendor/is-fixed); the client notices the silence,
# regathers and restarts ICE through the router on fresh HTTP connections.
move_client() {
  nsx nata ip addr add 198.19.3.1/24 dev lan
  nsx nata nft add rule ip lab postrouting oifname "wan" ip saddr 198.19.3.0/24 masquerade
  nsx cli ip addr add 198.19.3.2/24 dev eth0
  nsx cli ip route replace default via 198.19.3.1 src 198.19.3.2
  nsx cli ip addr del "$CLI_IP/24" dev eth0
}
client_moves_network() {
  recovery_lab || return 0
  transfer_start "$1" 90 KROUTER_URL="http://$NATB_WAN:$ROUTER_PORT"
  wait_for 30 out_at_least $((8 * 1024 * 1024)) || { echo "8 MiB did not come back within 30 s: $(intact)"; return 0; }
  local t_ev outage back
  move_client; t_ev=$(now)
  transfer_wait 90 || true
  outage=$("$PROBE" outage "$WORK/$name.sizes" "$t_ev" "$t_ev")
  note "$outage"
  note "client: $(client_events)"
  intact || return 0
  back=$(sed -nE 's/.*1 MiB more came back ([0-9.]+) s after.*/\1/p' <<<"$outage")
  [ -n "$back" ] && awk "BEGIN{exit !($back <= 20)}" || echo "data flowed again only ${back:-never} s after the move (bound 20 s)"
}
scenario_client_moves_network_smol() { client_moves_network smol; }
scenario_client_moves_network_blocking() { client_moves_network blocking; }
SCENARIO_TIMEOUT_OF[client_moves_network_smol]=130
SCENARIO_TIMEOUT_OF[client_moves_network_blocking]=130

# --- the TURN allocation is lost on a relay-only path: coturn restarts mid-transfer --------------------------
# `--relay-only`: every byte goes through the client's allocation on coturn. coturn is killed and started
# again (every allocation gone); the client hears nothing, allocates again (the restarted server accepts the
# same 5-tuple), and restarts ICE with the new relayed candidate.
turn_allocation_lost() {
  recovery_lab || return 0
  transfer_start "$1" 90 KROUTER_URL="http://$NATB_WAN:$ROUTER_PORT" -- --relay-only
  wait_for 30 out_at_least $((8 * 1024 * 1024)) || { echo "8 MiB did not come back within 30 s: $(intact)"; return 0; }
  local t_ev outage back c0 c1
  c0=$(counted)
  nsx srv kill "$(cat "$WORK/turnserver.pid")" 2>/dev/null || true
  wait_for 5 sh -c "! nsx srv ss -lun | grep -q '$SRV_IP:3478'" || true
  coturn_up || { echo "coturn did not start again"; return 0; }
  t_ev=$(now)
  transfer_wait 90 || true
  c1=$(counted)
  outage=$("$PROBE" outage "$WORK/$name.sizes" "$t_ev" "$t_ev")
  note "$outage"
  note "cli's UDP out through NAT A during the transfer (MiB, to coturn:3478 / to a peer's relay / direct to NAT B): $(mib_path "$c0" "$c1")"
  note "client: $(client_events)"
  intact || return 0
  back=$(sed -nE 's/.*1 MiB more came back ([0-9.]+) s after.*/\1/p' <<<"$outage")
  [ -n "$back" ] && awk "BEGIN{exit !($back <= 20)}" || echo "data flowed again only ${back:-never} s after coturn restarted (bound 20 s)"
}
scenario_turn_allocation_lost_relay_only_smol() { turn_allocation_lost smol; }
scenario_turn_allocation_lost_relay_only_blocking() { turn_allocation_lost blocking; }
SCENARIO_TIMEOUT_OF[turn_allocation_lost_relay_only_smol]=130
SCENARIO_TIMEOUT_OF[turn_allocation_lost_relay_only_blocking]=130

ALL+=(path_dark_5s_smol path_dark_5s_blocking path_dark_beyond_bound_smol path_dark_beyond_bound_blocking
  nat_a_rebinding_smol nat_a_rebinding_blocking nat_a_rebinding_no_gateway_relay_smol
  nat_a_rebinding_no_gateway_relay_blocking
  keeper_gateway_client_rebinding_smol keeper_gateway_client_rebinding_blocking
  client_moves_network_smol client_moves_network_blocking
  turn_allocation_lost_relay_only_smol turn_allocation_lost_relay_only_blocking)
