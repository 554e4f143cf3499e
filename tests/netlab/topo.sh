# shellcheck shell=bash
# The NAT lab's topology: Linux network namespaces joined by veth links, kernel NAT with nftables.
# Sourced by tests/netlab/run.sh, which has already entered a private network + mount namespace
# (`unshare -n -m`), so every namespace made here lives only inside this run and vanishes with it.
#
#                         ┌──────────── inet (a bridge: "the internet") ────────────┐
#                         │                                                          │
#   srv 198.18.0.10 ──────┤ (+ .11: the second address RFC 5780 NAT discovery needs) │
#   (router, coturn)      │                                                          │
#                  nata wan 198.18.0.1                                   natb wan 198.18.0.2
#                         │ NAT A                                         NAT B │
#                  nata lan 198.19.1.1                                   natb lan 198.19.2.1
#                         │                                                     │
#                   cli 198.19.1.2                                        gw 198.19.2.2
#                  (pam-lite client)                                  (the gateway)
#
# All addresses are in 198.18.0.0/15 (RFC 2544, benchmarking): nothing outside these namespaces has them.
# The LANs are private to their NAT: the "internet" has no route to 198.19.x.x unless the scenario
# opens the network (`nat none`), exactly as on the real internet.
#
# NAT kinds (one per side, set by `nat SIDE KIND`):
#   none       plain routing, no translation (the "open network": host candidates are reachable)
#   eim        masquerade: Linux keeps the source port, one mapping per internal socket whatever the
#              destination (endpoint-independent mapping, address-and-port-dependent filtering)
#   symmetric  masquerade fully-random: a new random external port for every destination (what makes
#              server-reflexive candidates useless and a relay necessary)
#   udp-block  eim for TCP, every UDP datagram from the LAN dropped (networks where only TCP/443 gets out)

LAB_NS=(inet srv nata natb cli gw)
SRV_IP=198.18.0.10
SRV_IP2=198.18.0.11
NATA_WAN=198.18.0.1
NATB_WAN=198.18.0.2
CLI_IP=198.19.1.2
GW_IP=198.19.2.2
VOID_GW=198.18.0.254

# nsx NS CMD...: run CMD inside namespace NS.
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# link NS_A IF_A NS_B IF_B: a veth pair between two namespaces, both ends up.
link() {
  ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
  nsx "$1" ip link set "$2" up
  nsx "$3" ip link set "$4" up
}

# topo_up: build the namespaces, links and addresses (no NAT rules yet: see `nat`).
topo_up() {
  local ns
  for ns in "${LAB_NS[@]}"; do
    ip netns add "$ns"
    nsx "$ns" ip link set lo up
  done
  nsx inet ip link add br0 type bridge
  nsx inet ip link set br0 up
  local peer
  for peer in srv nata natb; do
    link inet "to-$peer" "$peer" wan
    nsx inet ip link set "to-$peer" master br0
  done
  nsx srv ip addr add "$SRV_IP/24" dev wan
  nsx srv ip addr add "$SRV_IP2/24" dev wan
  nsx nata ip addr add "$NATA_WAN/24" dev wan
  nsx natb ip addr add "$NATB_WAN/24" dev wan

  link nata lan cli eth0
  nsx nata ip addr add 198.19.1.1/24 dev lan
  nsx cli ip addr add "$CLI_IP/24" dev eth0
  nsx cli ip route add default via 198.19.1.1

  link natb lan gw eth0
  nsx natb ip addr add 198.19.2.1/24 dev lan
  nsx gw ip addr add "$GW_IP/24" dev eth0
  nsx gw ip route add default via 198.19.2.1

  for ns in nata natb; do
    nsx "$ns" sysctl -qw net.ipv4.ip_forward=1
  done

  # "The rest of the internet": every public host has a default route (to inet's router, whose own
  # default is a blackhole), so a datagram for an address nobody routes (a peer's private host candidate)
  # leaves and vanishes silently, as it does on the real internet. Without a default route the kernel refuses such a send at once (ENETUNREACH), and coturn
  # then stops relaying for that allocation altogether: every later Send indication and ChannelData is
  # dropped, which is not what a real TURN server on the internet does.
  nsx inet ip addr add "$VOID_GW/24" dev br0
  nsx inet sysctl -qw net.ipv4.ip_forward=1
  nsx inet ip route add blackhole default
  for ns in srv nata natb; do
    nsx "$ns" ip route add default via "$VOID_GW"
  done
}

# topo_down: remove every namespace (the private outer namespace takes the rest with it).
topo_down() {
  local ns
  for ns in "${LAB_NS[@]}"; do
    { ip netns pids "$ns" 2>/dev/null | xargs -r kill -9; } 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  return 0
}

# nat SIDE KIND: configure NAT A (SIDE=a, in front of cli) or NAT B (SIDE=b, in front of gw).
nat() {
  local side=$1 kind=$2 ns lan_net other_lan other_wan
  case "$side" in
    a) ns=nata lan_net=198.19.1.0/24 other_lan=198.19.2.0/24 other_wan=$NATB_WAN ;;
    b) ns=natb lan_net=198.19.2.0/24 other_lan=198.19.1.0/24 other_wan=$NATA_WAN ;;
    *) echo "nat: side must be a or b" >&2; return 2 ;;
  esac
  nsx "$ns" nft flush ruleset
  case "$kind" in
    none)
      # The open network: the other LAN is routed, nothing is translated, and srv learns the way back.
      nsx "$ns" ip route replace "$other_lan" via "$other_wan"
      nsx srv ip route replace "$lan_net" via "$(nsx "$ns" ip -4 -o addr show dev wan | awk '{print $4}' | cut -d/ -f1)"
      ;;
    eim | symmetric | udp-block)
      local flags=""
      [ "$kind" = symmetric ] && flags=" fully-random"
      nsx "$ns" nft -f - <<EOF
table ip lab {
  chain postrouting { type nat hook postrouting priority srcnat; oifname "wan" ip saddr $lan_net masquerade$flags; }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ct status dnat accept
    iifname "lan" oifname "wan" $([ "$kind" = udp-block ] && echo "meta l4proto udp drop;") accept
  }
  # Unsolicited traffic to the NAT's own public address is dropped before conntrack confirms an entry
  # for it, as a home router's NAT does. Without this, Linux remembers the dropped-on-arrival packet as a
  # flow to the NAT box itself, and when the inside host then punches a hole to that same peer, the
  # masquerade must pick another port (the tuple is taken): simultaneous hole punching — the srflx
  # path ICE relies on — would fail in the lab though it works through real endpoint-independent NATs.
  chain input { type filter hook input priority filter; policy accept; iifname "wan" ct state new meta l4proto udp drop; }
}
EOF
      ;;
    *) echo "nat: unknown kind $kind" >&2; return 2 ;;
  esac
}

# forward_tcp SIDE PORT: publish gw's (SIDE=b) or cli's (SIDE=a) TCP PORT on the NAT's public address
# (a port forward, the way a router that is reachable from the internet is published). The NAT's forward
# chain lets DNAT-ed flows through (`ct status dnat accept`).
forward_tcp() {
  local side=$1 port=$2 ns inner
  case "$side" in
    a) ns=nata inner=$CLI_IP ;;
    b) ns=natb inner=$GW_IP ;;
  esac
  nsx "$ns" nft -f - <<EOF
table ip labfwd {
  chain prerouting { type nat hook prerouting priority dstnat; iifname "wan" tcp dport $port dnat to $inner:$port; }
}
EOF
}
