//! Candidates beyond the host's own addresses: server-reflexive (STUN) and relayed (TURN), sans-IO.
//!
//! str0m has no STUN/TURN client by design; it accepts relayed local candidates and then addresses its
//! transmits *from* the relay address. [`Relays`] sits beside the ICE agent the way firezone's `snownet`
//! puts its allocations beside str0m:
//!
//! ```text
//!  node UDP socket ──datagram──► Relays::handle_datagram ──(from a STUN/TURN server)──► consumed
//!                                        │ not a server's ─► str0m as before
//!                                        └ relayed peer data ─► poll_peer_data ─► str0m (destination = relay addr)
//!  str0m transmit from a relay addr ─► Relays::send ─► ChannelData / Send indication ─► poll_io
//!  remote candidate trickled ───────► Relays::add_remote_candidate ─► channel binding on every allocation
//!  poll_io:  Datagram{to} (the node's socket) | StreamOpen/Write/Close (TURN over TCP or TLS, one per allocation)
//!  poll_event: Candidate{srflx|relay} | ServerFailed{server, why} | Gathered
//! ```
//!
//! The protocol work is done by `stun-proto` 2 and `turn-client-proto` 0.7 (sans-IO, time passed in; see
//! ARCHITECTURE.md for why these). Their clock is adapted at [`clock`]'s boundary. Their requests'
//! transaction ids come from their own generator (like str0m's ICE ids): bytes may differ between runs,
//! outcomes and schedules never do.

mod clock;
pub mod framing;
/// The fuzz entry point (`fuzz/`), with a real TURN server behind it.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod layer;
mod stun;
mod turn;

use core::net::SocketAddr;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

pub use crate::{StreamEvent, StreamId};
use clock::Clock;
pub(crate) use layer::{GatherEvent, RelayLayer};
pub use layer::{
    IcePolicy, RelayPlan, RelayProblem, TurnCredentials, TurnEndpoint, GATHER_TIMEOUT,
};
use stun::{Binding, BindingResult};
pub use turn::TurnTransport;
use turn::{Allocation, State};

/// One TURN server with its long-term credentials (Keeper: `relay_access_creds`).
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    pub addr: SocketAddr,
    /// The name the server was configured by (`krelay.keepersecurity.com`): verified by TLS for `turns:`,
    /// and shown in messages.
    pub name: String,
    pub transport: TurnTransport,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .field("transport", &self.transport)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Which servers to gather from, and how long gathering may hold up a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub stun: Vec<SocketAddr>,
    pub turn: Vec<TurnServer>,
    /// After this, gathering is reported done whatever is still pending (late candidates still trickle).
    pub gather_timeout: Duration,
    /// A UDP TURN server that has not answered after this long is also tried over TCP (same address,
    /// RFC 6062 §4: TURN servers listen on both), for networks that block UDP. `None`: never.
    pub tcp_fallback: Option<Duration>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            stun: Vec::new(),
            turn: Vec::new(),
            gather_timeout: Duration::from_secs(5),
            tcp_fallback: Some(TCP_FALLBACK_AFTER),
        }
    }
}

/// How long a UDP TURN server may stay silent before the same server is tried over TCP. A TURN server
/// answers the first Allocate (with its 401 challenge) within one round trip; a second of silence means
/// a lost datagram at best (the crate retransmits after 500 ms) and, far more often, a network that drops
/// UDP — waiting for the crate's whole retransmission schedule (~40 s) would cost the relay path.
pub const TCP_FALLBACK_AFTER: Duration = Duration::from_secs(1);

/// Why a STUN or TURN server gave us nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayFailure {
    /// No answer within the retransmission schedule (or the stream could not be opened).
    Unreachable,
    /// The TURN server refused the credentials (a 401 after they were offered).
    Unauthorized,
    /// The server answered with this error code.
    Refused(u16),
    /// An allocation that existed was lost (stream closed, refresh failed).
    Closed,
}

impl fmt::Display for RelayFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable => f.write_str("no answer (unreachable or blocked)"),
            Self::Unauthorized => f.write_str("the TURN credentials were refused (401)"),
            Self::Refused(code) => write!(f, "refused with error {code}"),
            Self::Closed => f.write_str("the allocation was lost"),
        }
    }
}

/// A gathered local candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateKind {
    ServerReflexive,
    Relayed,
}

/// Something the application (the client or gateway node) must know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// A candidate to add to the ICE agent and trickle to the peer. `base` is the local socket it belongs
    /// to (for relayed candidates: the socket that talks to the TURN server).
    Candidate {
        kind: CandidateKind,
        addr: SocketAddr,
        base: SocketAddr,
        server: SocketAddr,
    },
    /// A server gave nothing (named in logs, the waterfall and the final error).
    ServerFailed {
        server: SocketAddr,
        turn: bool,
        failure: RelayFailure,
    },
    /// Every server has answered, failed, or the gathering bound passed. Emitted once.
    Gathered,
}

/// I/O the driver performs for the relay layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayIo {
    /// A datagram from the node's UDP socket.
    Datagram { to: SocketAddr, data: Vec<u8> },
    /// Open a TCP connection (TLS on top, verified for `tls_name`, when set); answer with
    /// [`StreamEvent::Connected`] or `Closed`.
    StreamOpen {
        stream: StreamId,
        to: SocketAddr,
        tls_name: Option<String>,
    },
    /// Write these bytes to the stream, in order.
    StreamWrite { stream: StreamId, data: Vec<u8> },
    /// Close the stream.
    StreamClose { stream: StreamId },
}

/// Data a peer sent through one of our relays: hand it to the ICE agent as received on `relay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerData {
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    pub data: Vec<u8>,
}

/// Every STUN binding and TURN allocation of one node.
#[derive(Debug)]
pub struct Relays {
    clock: Clock,
    local: SocketAddr,
    bindings: Vec<Binding>,
    binding_reported: Vec<bool>,
    /// The TURN allocations; an allocation's index is its stream's id.
    slots: Vec<Slot>,
    gather_deadline: Instant,
    gathered: bool,
    io: VecDeque<RelayIo>,
    events: VecDeque<RelayEvent>,
    peer_data: VecDeque<PeerData>,
    /// Every remote candidate so far (a fallback or renewed allocation binds them too). Bounded.
    peers: Vec<SocketAddr>,
    /// Numbers the STUN transactions of each regathering.
    seed: u64,
    regathers: u32,
}

/// One TURN allocation and what the node tracks about it.
#[derive(Debug)]
struct Slot {
    /// Its server (a TCP fallback copies its UDP original).
    server: TurnServer,
    allocation: Allocation,
    /// UDP: when to try the server over TCP too, if it is still silent.
    fallback_at: Option<Instant>,
    /// Its outcome (candidate(s) or failure) was reported.
    reported: bool,
    /// Its loss was reported.
    lost: bool,
    /// A dead stream allocation that already has a successor ([`Relays::regather`]).
    succeeded: bool,
    /// A UDP allocation probed by [`Relays::regather`]: the previous allocation, restored if the server
    /// refuses the probe (it still holds the previous one).
    probed: Option<Allocation>,
}

/// Bound on allocations a node makes, regatherings included.
const MAX_ALLOCATIONS: usize = 16;

/// Remote candidates remembered per node (a gateway trickles a handful).
const MAX_PEERS: usize = 64;

impl Relays {
    /// Start gathering from every configured server. `local` is the node's UDP socket; `seed` numbers the
    /// STUN transactions (from the core's seeded RNG).
    pub fn new(config: &RelayConfig, local: SocketAddr, seed: u64, now: Instant) -> Self {
        let clock = Clock::new(now);
        let bindings: Vec<Binding> = config
            .stun
            .iter()
            .enumerate()
            .map(|(i, &server)| {
                let id = (u128::from(seed) << 32) | i as u128;
                Binding::start(local, server, id, &clock, now)
            })
            .collect();
        let mut this = Self {
            clock,
            local,
            binding_reported: vec![false; bindings.len()],
            bindings,
            slots: Vec::new(),
            gather_deadline: now + config.gather_timeout,
            gathered: false,
            io: VecDeque::new(),
            events: VecDeque::new(),
            peer_data: VecDeque::new(),
            peers: Vec::new(),
            seed,
            regathers: 0,
        };
        for server in &config.turn {
            let fallback_at = match (server.transport, config.tcp_fallback) {
                (TurnTransport::Udp, Some(after)) => Some(now + after),
                _ => None,
            };
            this.allocate(server.clone(), fallback_at, now);
        }
        this.handle_timeout(now);
        this
    }

    /// A new allocation on `server` in a new slot (a stream first needs its connection), bound to every
    /// remote candidate known so far.
    fn allocate(&mut self, server: TurnServer, fallback_at: Option<Instant>, now: Instant) {
        let index = self.slots.len();
        if server.transport != TurnTransport::Udp {
            self.io.push_back(RelayIo::StreamOpen {
                stream: StreamId(index as u32),
                to: server.addr,
                tls_name: (server.transport == TurnTransport::Tls).then(|| server.name.clone()),
            });
        }
        let allocation = self.new_allocation(&server, now);
        self.slots.push(Slot {
            server,
            allocation,
            fallback_at,
            reported: false,
            lost: false,
            succeeded: false,
            probed: None,
        });
    }

    fn new_allocation(&self, server: &TurnServer, now: Instant) -> Allocation {
        let mut a = Allocation::new(
            server.addr,
            server.transport,
            &server.username,
            &server.password,
            self.local,
            &self.clock,
            now,
        );
        for peer in &self.peers {
            a.add_peer(*peer, &self.clock, now);
        }
        a
    }

    /// The path to the peer was lost (issue 14): gather again. Every STUN server is asked anew (a NAT that
    /// rebound, or a new network, maps us to a new address: a new server-reflexive candidate), and every
    /// TURN allocation is checked by allocating again:
    ///
    /// * over UDP the server knows an allocation by our 5-tuple, so the new Allocate *probes* the old one:
    ///   it succeeds when the server lost its state (restarted) or sees us from a new address (the new
    ///   relay replaces the old), and is refused with 437 while the old allocation lives (the old one is
    ///   kept, quietly);
    /// * over TCP/TLS a dead stream's allocation gets a successor on a new connection.
    ///
    /// New candidates come out as [`RelayEvent::Candidate`]s; no second `Gathered` is reported.
    pub fn regather(&mut self, now: Instant) {
        self.regathers = self.regathers.wrapping_add(1);
        let clock = self.clock;
        for (i, b) in self.bindings.iter_mut().enumerate() {
            let id = (u128::from(self.seed) << 32) | (u128::from(self.regathers) << 16) | i as u128;
            *b = Binding::start(self.local, b.server(), id, &clock, now);
            self.binding_reported[i] = false;
        }
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.succeeded || slot.probed.is_some() {
                continue;
            }
            if slot.allocation.transport() == TurnTransport::Udp {
                let probe = self.new_allocation(&slot.server, now);
                let slot = &mut self.slots[i];
                slot.probed = Some(std::mem::replace(&mut slot.allocation, probe));
                slot.reported = false;
                slot.lost = false;
            } else if matches!(slot.allocation.state(), State::Failed(_))
                && self.slots.len() < MAX_ALLOCATIONS
            {
                // A successor on a new connection; the dead one is not regathered again.
                let server = slot.server.clone();
                self.slots[i].succeeded = true;
                self.allocate(server, None, now);
            }
        }
        self.collect(now);
    }

    /// Offer a datagram that arrived on the node's UDP socket. `true` when it came from one of our
    /// STUN/TURN servers (consumed: do not give it to the ICE agent).
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) -> bool {
        let clock = self.clock;
        let mut consumed = false;
        for b in &mut self.bindings {
            if b.handle(from, data, &clock, now) {
                consumed = true;
                break;
            }
        }
        if !consumed {
            for a in self
                .slots
                .iter_mut()
                .map(|s| &mut s.allocation)
                .filter(|a| a.transport() == TurnTransport::Udp)
            {
                if a.handle(from, data, &clock, now) {
                    consumed = true;
                    break;
                }
            }
        }
        if consumed {
            self.collect(now);
        }
        consumed
    }

    /// Something happened on a stream the driver opened for a TCP/TLS allocation.
    pub fn handle_stream(&mut self, stream: StreamId, event: StreamEvent, now: Instant) {
        let clock = self.clock;
        let Some(a) = self
            .slots
            .get_mut(stream.0 as usize)
            .map(|s| &mut s.allocation)
        else {
            return;
        };
        if a.transport() == TurnTransport::Udp {
            return;
        }
        match event {
            StreamEvent::Connected { local } => a.stream_connected(local, &clock, now),
            StreamEvent::Data(bytes) => {
                let server = a.server();
                a.handle(server, &bytes, &clock, now);
            }
            StreamEvent::Closed { .. } => a.stream_closed(&clock, now),
        }
        self.collect(now);
    }

    /// A remote candidate of the peer: every allocation (now or once it exists) gets a channel to it.
    pub fn add_remote_candidate(&mut self, peer: SocketAddr, now: Instant) {
        let clock = self.clock;
        if self.peers.len() < MAX_PEERS && !self.peers.contains(&peer) {
            self.peers.push(peer);
        }
        for slot in &mut self.slots {
            slot.allocation.add_peer(peer, &clock, now);
        }
        self.collect(now);
    }

    /// Whether a server may still give a candidate (a binding or allocation has no outcome yet).
    pub fn pending(&self) -> bool {
        self.binding_reported.iter().any(|r| !r)
            || self.slots.iter().map(|s| &s.allocation).any(|a| {
                matches!(a.state(), State::Connecting | State::Allocating)
                    && !self.allocated_at(a.server())
            })
    }

    /// Whether some allocation (over any transport) holds a relay address on `server`.
    fn allocated_at(&self, server: SocketAddr) -> bool {
        self.slots
            .iter()
            .any(|s| s.allocation.server() == server && s.allocation.relayed().is_some())
    }

    /// The servers that have not answered yet: (server, is TURN). Deduplicated.
    pub fn silent_servers(&self) -> Vec<(SocketAddr, bool)> {
        let mut out: Vec<(SocketAddr, bool)> = Vec::new();
        for (b, reported) in self.bindings.iter().zip(&self.binding_reported) {
            if !reported && !out.contains(&(b.server(), false)) {
                out.push((b.server(), false));
            }
        }
        for a in self.slots.iter().map(|s| &s.allocation) {
            // A server whose TCP sibling allocated is not silent, only its UDP is (blocked on the way).
            if matches!(a.state(), State::Connecting | State::Allocating)
                && !self.allocated_at(a.server())
                && !out.contains(&(a.server(), true))
            {
                out.push((a.server(), true));
            }
        }
        out
    }

    /// Whether `addr` is one of our relay addresses (a transmit from it goes through [`Relays::send`]).
    pub fn is_relay(&self, addr: SocketAddr) -> bool {
        self.slots
            .iter()
            .any(|s| s.allocation.relayed() == Some(addr))
    }

    /// Send `data` to `peer` from our relay address `relay`. `false` when that relay cannot (yet).
    pub fn send(&mut self, relay: SocketAddr, peer: SocketAddr, data: &[u8], now: Instant) -> bool {
        let clock = self.clock;
        let Some(a) = self
            .slots
            .iter_mut()
            .map(|s| &mut s.allocation)
            .find(|a| a.relayed() == Some(relay))
        else {
            return false;
        };
        let sent = a.send(peer, data, &clock, now);
        if !sent {
            // A peer-reflexive address (a symmetric NAT's fresh port) has no permission or channel yet:
            // ask for them, so ICE's retransmitted check goes through.
            a.add_peer(peer, &clock, now);
        }
        self.collect(now);
        sent
    }

    /// Timers: retransmissions, refreshes, the gathering bound.
    pub fn handle_timeout(&mut self, now: Instant) {
        let clock = self.clock;
        for b in &mut self.bindings {
            if b.wake().is_some_and(|t| t <= now) {
                b.handle_timeout(&clock, now);
            }
        }
        for a in self.slots.iter_mut().map(|s| &mut s.allocation) {
            if a.wake().is_some_and(|t| t <= now) {
                a.handle_timeout(&clock, now);
            }
        }
        self.fall_back_to_tcp(now);
        self.collect(now);
    }

    /// A UDP allocation whose server stayed silent past its fallback instant (or failed as unreachable)
    /// gets a sibling over TCP to the same server.
    fn fall_back_to_tcp(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let Some(at) = slot.fallback_at else {
                continue;
            };
            let a = &slot.allocation;
            let silent = !a.heard()
                && matches!(
                    a.state(),
                    State::Allocating | State::Failed(RelayFailure::Unreachable)
                );
            if !silent {
                slot.fallback_at = None;
                continue;
            }
            if now < at && *a.state() == State::Allocating {
                continue;
            }
            slot.fallback_at = None;
            let server = TurnServer {
                transport: TurnTransport::Tcp,
                ..slot.server.clone()
            };
            tracing::debug!(server = %server.addr, "TURN over UDP is silent: trying TCP");
            self.allocate(server, None, now);
        }
    }

    /// The latest moment [`Relays::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let bindings = self.bindings.iter().filter_map(Binding::wake);
        let allocations = self.slots.iter().filter_map(|s| s.allocation.wake());
        let deadline = (!self.gathered).then_some(self.gather_deadline);
        let fallback = self.slots.iter().filter_map(|s| s.fallback_at);
        bindings
            .chain(allocations)
            .chain(deadline)
            .chain(fallback)
            .min()
    }

    pub fn poll_io(&mut self) -> Option<RelayIo> {
        self.io.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    pub fn poll_peer_data(&mut self) -> Option<PeerData> {
        self.peer_data.pop_front()
    }

    /// Move what the bindings and allocations produced into the queues, and report outcomes once.
    fn collect(&mut self, now: Instant) {
        for (i, b) in self.bindings.iter_mut().enumerate() {
            while let Some(data) = b.poll_datagram() {
                self.io.push_back(RelayIo::Datagram {
                    to: b.server(),
                    data,
                });
            }
            if self.binding_reported[i] {
                continue;
            }
            // Asked again after a path loss: only a new address matters; a silent or refusing server was
            // reported the first time (or works for the old mapping meanwhile).
            if self.regathers > 0 && !matches!(b.result(), None | Some(BindingResult::Mapped(_))) {
                self.binding_reported[i] = true;
                continue;
            }
            let event = match b.result() {
                None => continue,
                Some(BindingResult::Mapped(addr)) => RelayEvent::Candidate {
                    kind: CandidateKind::ServerReflexive,
                    addr: *addr,
                    base: self.local,
                    server: b.server(),
                },
                Some(BindingResult::Refused(code)) => RelayEvent::ServerFailed {
                    server: b.server(),
                    turn: false,
                    failure: RelayFailure::Refused(*code),
                },
                Some(BindingResult::TimedOut) => RelayEvent::ServerFailed {
                    server: b.server(),
                    turn: false,
                    failure: RelayFailure::Unreachable,
                },
            };
            self.binding_reported[i] = true;
            self.events.push_back(event);
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let a = &mut slot.allocation;
            let udp = a.transport() == TurnTransport::Udp;
            while let Some(data) = a.poll_bytes() {
                self.io.push_back(if udp {
                    RelayIo::Datagram {
                        to: a.server(),
                        data,
                    }
                } else {
                    RelayIo::StreamWrite {
                        stream: StreamId(i as u32),
                        data,
                    }
                });
            }
            if let Some(relay) = a.relayed() {
                while let Some((peer, data)) = a.poll_received() {
                    self.peer_data.push_back(PeerData { relay, peer, data });
                }
            }
            if slot.reported {
                // An allocation that existed and is now gone: said once, as lost.
                if !slot.lost && *a.state() == State::Failed(RelayFailure::Closed) {
                    slot.lost = true;
                    self.events.push_back(RelayEvent::ServerFailed {
                        server: a.server(),
                        turn: true,
                        failure: RelayFailure::Closed,
                    });
                }
                continue;
            }
            match a.state().clone() {
                State::Connecting | State::Allocating => {}
                State::Allocated(relayed) => {
                    if slot.probed.take().is_some() {
                        tracing::info!(server = %a.server(), %relayed, "TURN allocation renewed (the server had lost it, or sees us anew)");
                    }
                    if let (Some(mapped), true) = (a.mapped(), udp) {
                        self.events.push_back(RelayEvent::Candidate {
                            kind: CandidateKind::ServerReflexive,
                            addr: mapped,
                            base: self.local,
                            server: a.server(),
                        });
                    }
                    self.events.push_back(RelayEvent::Candidate {
                        kind: CandidateKind::Relayed,
                        addr: relayed,
                        base: self.local,
                        server: a.server(),
                    });
                    slot.reported = true;
                }
                State::Failed(failure) => {
                    if let Some(previous) = slot.probed.take() {
                        // The server still holds the previous allocation (437), or did not answer: keep it.
                        tracing::debug!(server = %a.server(), %failure, "TURN allocation probe refused: the relay is kept");
                        slot.allocation = previous;
                    } else {
                        self.events.push_back(RelayEvent::ServerFailed {
                            server: a.server(),
                            turn: true,
                            failure,
                        });
                        if !udp {
                            self.io.push_back(RelayIo::StreamClose {
                                stream: StreamId(i as u32),
                            });
                        }
                    }
                    slot.reported = true;
                }
            }
        }
        if !self.gathered {
            let all_done =
                self.binding_reported.iter().all(|&r| r) && self.slots.iter().all(|s| s.reported);
            if all_done || now >= self.gather_deadline {
                self.gathered = true;
                self.events.push_back(RelayEvent::Gathered);
            }
        }
    }
}

#[cfg(test)]
mod tests;
