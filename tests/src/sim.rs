//! A deterministic simulation of one launch: client core + emulated router + gateway core + a network,
//! all on a virtual clock that jumps from event to event.
//!
//! Modelled on firezone's `connlib/tunnel/src/tests`: no sockets, no threads, no sleeping. A 30-second
//! cold-router launch runs in milliseconds, and the same [`SimConfig`] (including its `seed`) replays the same
//! schedule exactly: every random choice of the network (loss, jitter, duplication) comes from one seeded RNG,
//! and every random value of the cores comes from seeds derived from it.
//!
//! Timing model of the router path (spec §8.1): a request on a *fresh* connection costs the TCP + TLS
//! handshakes (`fresh_connection_rtts` × R) before it travels; a request on a live keep-alive connection only
//! travels (R/2 each way) plus the router's service time. One keep-alive connection carries one request at a
//! time (HTTP/1.1), so concurrent keep-alive requests open more connections, as a real pool does. The
//! WebSocket's connection pays the same handshakes when it opens: at its upgrade (`WsPhase::Fresh`), or
//! ahead of it (`WsPhase::Prepare`, then the upgrade waits only for what is left of them).
//!
//! The peer network: each node may sit behind a [`nat::Nat`] (private host address, a public address on
//! the NAT), and a real TURN/STUN server ([`turn::SimTurn`], turn-server-proto) is on the public side at
//! [`turn::TURN_ADDR`], reachable over UDP and TCP (the core's TURN streams; TLS is refused). A datagram
//! leaves through its sender's NAT (or is dropped when UDP is blocked), travels (the peer link between
//! the nodes, the relay link to and from the TURN server), and on arrival goes to the TURN server, through
//! the receiver's NAT filter, or nowhere (a private or unknown address).

pub mod nat;
pub mod turn;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pam_lite_core::client::Client;
use pam_lite_core::gateway::Gateway;
use pam_lite_core::router::server::{RouterEvent, RouterServer};
use pam_lite_core::timing::{Checkpoint, Waterfall};
use pam_lite_core::{
    CandidateKind, Command, ConnNo, Datagram, HttpRequest, Input, LaunchError, Node, Output,
    StreamEvent, StreamId, WsPhase,
};

use nat::{Nat, NatConfig};
use turn::{SimTurn, TurnOut, TURN_ADDR};

/// One direction of a lossy, jittery link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// One-way base latency.
    pub latency: Duration,
    /// Extra uniform random delay in `[0, jitter)` (this is what reorders packets).
    pub jitter: Duration,
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
}

impl LinkConfig {
    pub fn ideal(latency: Duration) -> Self {
        LinkConfig {
            latency,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// The simulated world's knobs.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Client ↔ router round trip (R).
    pub router_rtt: Duration,
    /// Extra round trips a fresh HTTPS connection costs before the request (TCP 1 + TLS 1.2 2 ≈ 3.5 R
    /// with the router's accept latency; reproduces the seeds' F ≈ 380 ms at R = 85 ms).
    pub fresh_connection_rtts: f64,
    /// Router processing time per HTTP request (`s`).
    pub router_service: Duration,
    /// Router WebSocket authentication/registration time after the upgrade (`s_ws`).
    pub ws_auth: Duration,
    /// Router ↔ gateway round trip (G).
    pub gateway_rtt: Duration,
    /// Client → gateway UDP link; the reverse link mirrors it.
    pub peer_link: LinkConfig,
    /// Either node ↔ the TURN server, one way (a relayed datagram crosses it twice); also the TCP
    /// streams' latency (their loss and jitter are TCP's business).
    pub relay_link: LinkConfig,
    /// A NAT in front of the client / the gateway (`None`: its host address is public).
    pub client_nat: Option<NatConfig>,
    pub gateway_nat: Option<NatConfig>,
    /// Whether the TURN/STUN server answers (it is used only by nodes whose relay plan names it).
    pub turn_up: bool,
}

impl Default for NetConfig {
    /// The reference network of the snapshots: router RTT 85 ms, peer RTT 40 ms (spec §8.3 calibration).
    fn default() -> Self {
        NetConfig {
            router_rtt: Duration::from_millis(85),
            fresh_connection_rtts: 3.5,
            router_service: Duration::from_millis(35),
            ws_auth: Duration::from_millis(500),
            gateway_rtt: Duration::from_millis(40),
            peer_link: LinkConfig::ideal(Duration::from_millis(20)),
            relay_link: LinkConfig::ideal(Duration::from_millis(15)),
            client_nat: None,
            gateway_nat: None,
            turn_up: true,
        }
    }
}

#[derive(Debug)]
enum Event {
    ToClient(Input),
    ToGateway(Input),
    RouterHttp {
        id: u64,
        req: HttpRequest,
        conn: usize,
    },
    RouterWsOpen {
        headers: Vec<(String, String)>,
    },
    RouterFromGateway {
        reply_to: u64,
        payload: String,
    },
    /// A keep-alive connection became free again.
    ConnFree(usize),
    /// A UDP datagram (public source) reaches its destination's network.
    Arrive(Datagram),
    /// Bytes on a TURN TCP stream reach the server, from the stream's public address.
    TurnTcp {
        from: SocketAddr,
        data: Vec<u8>,
    },
}

/// One of the two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Gateway,
}

/// What happened, for assertions.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub checkpoints: Vec<Checkpoint>,
    pub finished: Option<Result<(), LaunchError>>,
    pub tube_ready_at: Option<Instant>,
    pub connected_at: Option<Instant>,
    /// Bytes the client received per connection.
    pub received: HashMap<ConnNo, Vec<u8>>,
    pub opened: Vec<ConnNo>,
    pub closed: Vec<ConnNo>,
    pub terminal_output: Vec<u8>,
    /// Candidate strings the gateway got from the client, in arrival order (from the router's view).
    pub http_requests: Vec<(Instant, String, bool)>,
    pub datagrams_sent: u64,
    pub datagrams_lost: u64,
    /// Latest flow-control state per connection, and how often the client paused a local side.
    pub paused: HashMap<ConnNo, bool>,
    pub pauses: u64,
    /// Connections that were told to pause at least once.
    pub paused_ever: std::collections::HashSet<ConnNo>,
    /// Terminal sizes the gateway asked its PTY for.
    pub target_resizes: Vec<(u16, u16)>,
    /// Datagrams a NAT dropped (UDP blocked, or filtered inbound).
    pub nat_dropped: u64,
}

/// A whole simulated launch.
pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub net: NetConfig,
    seed: u64,
    client_addr: SocketAddr,
    gateway_addr: SocketAddr,
    flow_counters: HashMap<(SocketAddr, SocketAddr), u64>,
    pub client: Client,
    pub gateway: Gateway,
    pub router: RouterServer,
    pub turn: SimTurn,
    client_nat: Option<Nat>,
    gateway_nat: Option<Nat>,
    /// Open TURN streams: public address → (node, its stream id), and back.
    streams: HashMap<SocketAddr, (Side, StreamId)>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    events: HashMap<usize, Event>,
    seq: u64,
    next_slot: usize,
    /// busy-until per keep-alive connection; `None` = closed.
    keepalive: Vec<bool>,
    pending_http: HashMap<u64, usize>,
    ws_open: bool,
    /// When the WebSocket's pre-connection has finished its handshakes (`WsPhase::Prepare`).
    ws_prepared: Option<Instant>,
    pub record: Record,
    /// Echo target: bytes that reach the gateway's target come back (tunnel mode).
    pub echo_target: bool,
    /// Windows of virtual time in which every UDP datagram sent is lost (the path goes dark: a Wi-Fi
    /// blip, a cable pulled); the router's HTTP and WebSocket are not affected.
    pub dark: Vec<(Instant, Instant)>,
}

impl Sim {
    pub fn new(
        start: Instant,
        net: NetConfig,
        seed: u64,
        client: Client,
        gateway: Gateway,
        router: RouterServer,
    ) -> Self {
        // str0m's non-cryptographic randomness (ICE transaction ids, retransmit pacing) is fastrand's
        // thread-local generator: seed it so a seed replays the schedule. (Crypto randomness — DTLS keys —
        // stays random; it changes bytes, never timing.)
        fastrand::seed(seed);
        let turn = SimTurn::new(net.turn_up, start);
        let client_nat = net.client_nat.map(|c| Nat::new(c, [203, 0, 113, 1].into()));
        let gateway_nat = net
            .gateway_nat
            .map(|c| Nat::new(c, [203, 0, 113, 2].into()));
        let mut sim = Sim {
            start,
            now: start,
            net,
            seed,
            client_addr: SocketAddr::from(([10, 0, 0, 1], 50000)),
            gateway_addr: SocketAddr::from(([10, 0, 0, 2], 60000)),
            flow_counters: HashMap::new(),
            client,
            gateway,
            router,
            turn,
            client_nat,
            gateway_nat,
            streams: HashMap::new(),
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            seq: 0,
            next_slot: 0,
            keepalive: Vec::new(),
            pending_http: HashMap::new(),
            ws_open: false,
            ws_prepared: None,
            record: Record::default(),
            echo_target: true,
            dark: Vec::new(),
        };
        let (caddr, gaddr) = (sim.client_addr, sim.gateway_addr);
        sim.gateway_input(Input::LocalCandidate {
            addr: gaddr,
            kind: CandidateKind::Host,
        });
        sim.gateway_input(Input::GatheringComplete);
        sim.client_input(Input::LocalCandidate {
            addr: caddr,
            kind: CandidateKind::Host,
        });
        sim
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.seq += 1;
        self.events.insert(slot, event);
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    fn half(d: Duration) -> Duration {
        d / 2
    }

    /// The client's NAT loses its mappings now (see [`Nat::rebind`]); no effect without a NAT.
    pub fn rebind_client_nat(&mut self) {
        if let Some(nat) = self.client_nat.as_mut() {
            nat.rebind();
        }
    }

    /// Feed the client an extra local candidate later (gathering that trickles in).
    pub fn add_client_candidate_at(&mut self, at: Instant, addr: SocketAddr) {
        self.schedule(
            at,
            Event::ToClient(Input::LocalCandidate {
                addr,
                kind: CandidateKind::Host,
            }),
        );
    }

    pub fn command_at(&mut self, at: Instant, cmd: Command) {
        self.schedule(at, Event::ToClient(Input::Command(cmd)));
    }

    pub fn client_input(&mut self, input: Input) {
        let now = self.now;
        self.client.handle_input(input, now);
        self.drain_client();
    }

    fn gateway_input(&mut self, input: Input) {
        let now = self.now;
        self.gateway.handle_input(input, now);
        self.drain_gateway();
    }

    /// The network's verdict for one datagram: lost, or delivered after some delay (duplicates get their
    /// own verdict). Each verdict is a pure function of (seed, flow, index within the flow, copy), never of
    /// the global order in which datagrams were sent: str0m iterates hash maps with per-process random
    /// state, so the interleaving of *different* flows (ICE checks on several candidate pairs) can change
    /// from run to run, while the order inside one flow is protocol-determined.
    fn verdict(&mut self, d: &Datagram, index: u64, copy: u64, l: LinkConfig) -> Option<Duration> {
        let key = flow_key(d) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (copy << 62);
        if l.loss > 0.0 && unit(mix(self.seed, key, 1)) < l.loss {
            self.record.datagrams_lost += 1;
            return None;
        }
        let jitter = if l.jitter.is_zero() {
            Duration::ZERO
        } else {
            l.jitter.mul_f64(unit(mix(self.seed, key, 2)))
        };
        Some(l.latency + jitter)
    }

    fn host(&self, side: Side) -> SocketAddr {
        match side {
            Side::Client => self.client_addr,
            Side::Gateway => self.gateway_addr,
        }
    }

    fn nat_mut(&mut self, side: Side) -> Option<&mut Nat> {
        match side {
            Side::Client => self.client_nat.as_mut(),
            Side::Gateway => self.gateway_nat.as_mut(),
        }
    }

    /// Whether anything on the simulated network answers at `a` (a public host, a NAT, the TURN server).
    fn routable(&self, a: SocketAddr) -> bool {
        let public_host = |side: Side, nat: &Option<Nat>| match nat {
            None => a == self.host(side),
            Some(n) => a.ip() == n.public_ip,
        };
        self.turn.owns(a)
            || public_host(Side::Client, &self.client_nat)
            || public_host(Side::Gateway, &self.gateway_nat)
    }

    /// A node sends a UDP datagram: out through its NAT, onto the link.
    fn send_datagram(&mut self, d: Datagram, from: Side) {
        // Only the nodes' real interfaces are connected; the client's extra candidates are on networks
        // that reach nothing (a multi-homed host), so their checks go nowhere.
        if d.source != self.host(from) || !self.routable(d.destination) {
            return;
        }
        let mut d = d;
        if let Some(nat) = self.nat_mut(from) {
            match nat.outbound(d.source, d.destination) {
                Some(public) => d.source = public,
                None => {
                    self.record.nat_dropped += 1;
                    return;
                }
            }
        }
        self.transmit(d);
    }

    /// A datagram with its public source travels to its destination's network (lost, delayed, maybe
    /// duplicated by the link it crosses).
    fn transmit(&mut self, d: Datagram) {
        self.record.datagrams_sent += 1;
        let now = self.now;
        if self
            .dark
            .iter()
            .any(|(from, until)| (*from..*until).contains(&now))
        {
            self.record.datagrams_lost += 1;
            return;
        }
        let link = if self.turn.owns(d.source) || self.turn.owns(d.destination) {
            self.net.relay_link
        } else {
            self.net.peer_link
        };
        let flow = (d.source, d.destination);
        let index = {
            let n = self.flow_counters.entry(flow).or_insert(0);
            *n += 1;
            *n
        };
        let dup = link.duplicate;
        let copies = if dup > 0.0 && unit(mix(self.seed, flow_key(&d) ^ index, 3)) < dup {
            2
        } else {
            1
        };
        for copy in 0..copies {
            if let Some(delay) = self.verdict(&d, index, copy, link) {
                let at = self.now + delay;
                self.schedule(at, Event::Arrive(d.clone()));
            }
        }
    }

    /// A datagram arrives: the TURN server's, through a NAT's filter to its host, to a public host, or lost.
    fn arrive(&mut self, d: Datagram) {
        let now = self.now;
        if self.turn.owns(d.destination) {
            self.turn.recv_udp(d, now);
            return self.drain_turn();
        }
        for side in [Side::Client, Side::Gateway] {
            let host = self.host(side);
            let delivered = match self.nat_mut(side) {
                None if d.destination == host => Some(d.clone()),
                None => None,
                Some(nat) if nat.public_ip == d.destination.ip() => {
                    match nat.inbound(d.source, d.destination) {
                        Some(private) => Some(Datagram {
                            destination: private,
                            ..d.clone()
                        }),
                        None => {
                            self.record.nat_dropped += 1;
                            return;
                        }
                    }
                }
                Some(_) => None,
            };
            if let Some(d) = delivered {
                return self.node_input(side, Input::Datagram(d));
            }
        }
    }

    fn node_input(&mut self, side: Side, input: Input) {
        match side {
            Side::Client => self.client_input(input),
            Side::Gateway => self.gateway_input(input),
        }
    }

    fn schedule_input(&mut self, at: Instant, side: Side, input: Input) {
        let ev = match side {
            Side::Client => Event::ToClient(input),
            Side::Gateway => Event::ToGateway(input),
        };
        self.schedule(at, ev);
    }

    /// The TURN server's output onto the network.
    fn drain_turn(&mut self) {
        let one_way = self.net.relay_link.latency;
        while let Some(out) = self.turn.poll_out() {
            match out {
                TurnOut::Udp(d) => self.transmit(d),
                TurnOut::Tcp { to, data } => {
                    if let Some(&(side, stream)) = self.streams.get(&to) {
                        let at = self.now + one_way;
                        let event = StreamEvent::Data(data);
                        self.schedule_input(at, side, Input::Stream { stream, event });
                    }
                }
            }
        }
    }

    /// A node's TURN stream output. Only TCP to the TURN server while it is up connects (a handshake is
    /// one round trip on the relay link); TLS and everything else are refused.
    fn stream_output(&mut self, side: Side, out: Output) {
        let rtt = self.net.relay_link.latency * 2;
        match out {
            Output::StreamOpen {
                stream,
                to,
                tls_name,
            } => {
                let at = self.now + rtt;
                if to != TURN_ADDR || !self.turn.up || tls_name.is_some() {
                    let reason = if tls_name.is_some() {
                        "no TLS in the simulation"
                    } else {
                        "connection refused"
                    };
                    let event = StreamEvent::Closed {
                        reason: reason.into(),
                    };
                    return self.schedule_input(at, side, Input::Stream { stream, event });
                }
                let host = self.host(side);
                let public = match self.nat_mut(side) {
                    Some(nat) => nat.tcp_public(host, stream.0),
                    None => SocketAddr::new(host.ip(), 30_000 + (stream.0 % 1000) as u16),
                };
                self.streams.insert(public, (side, stream));
                let event = StreamEvent::Connected { local: host };
                self.schedule_input(at, side, Input::Stream { stream, event });
            }
            Output::StreamWrite { stream, data } => {
                let from = self
                    .streams
                    .iter()
                    .find(|(_, v)| **v == (side, stream))
                    .map(|(k, _)| *k);
                if let Some(from) = from {
                    let at = self.now + self.net.relay_link.latency;
                    self.schedule(at, Event::TurnTcp { from, data });
                }
            }
            Output::StreamClose { stream } => self.streams.retain(|_, v| *v != (side, stream)),
            _ => {}
        }
    }

    fn drain_client(&mut self) {
        while let Some(out) = self.client.poll_output() {
            match out {
                Output::Http(req) => self.client_http(req),
                Output::WsConnect(ws) => {
                    let r = self.net.router_rtt;
                    let fresh = r.mul_f64(self.net.fresh_connection_rtts);
                    let up = match ws.phase {
                        WsPhase::Prepare => {
                            self.ws_prepared = Some(self.now + fresh);
                            continue;
                        }
                        WsPhase::Fresh => self.now + fresh,
                        WsPhase::Upgrade => match self.ws_prepared.take() {
                            Some(up) => up.max(self.now),
                            None => {
                                let reason = "no prepared connection".to_string();
                                let input = Input::WsClosed { reason };
                                self.schedule(self.now, Event::ToClient(input));
                                continue;
                            }
                        },
                    };
                    let at = up + Self::half(r) + self.net.ws_auth;
                    self.schedule(
                        at,
                        Event::RouterWsOpen {
                            headers: ws.headers,
                        },
                    );
                }
                Output::WsClose => {
                    self.ws_open = false;
                    self.ws_prepared = None;
                }
                Output::Transmit(d) => self.send_datagram(d, Side::Client),
                Output::Checkpoint(c) => self.record.checkpoints.push(c),
                Output::Connected => self.record.connected_at = Some(self.now),
                Output::TubeReady => self.record.tube_ready_at = Some(self.now),
                Output::ConnectionOpened { conn } => self.record.opened.push(conn),
                Output::ConnectionData { conn, data } => {
                    let bytes = data.len();
                    self.record
                        .received
                        .entry(conn)
                        .or_default()
                        .extend_from_slice(&data);
                    // The simulated local side takes everything at once: credit it.
                    let now = self.now;
                    self.client
                        .handle_input(Input::Command(Command::Delivered { conn, bytes }), now);
                }
                Output::ConnectionEof { .. } => {}
                Output::ConnectionClosed { conn, .. } => self.record.closed.push(conn),
                Output::Backpressure { conn, paused } => {
                    self.record.pauses += u64::from(paused);
                    if paused {
                        self.record.paused_ever.insert(conn);
                    }
                    self.record.paused.insert(conn, paused);
                }
                Output::TerminalOutput(b) => {
                    self.record.terminal_output.extend_from_slice(&b);
                    // The simulated screen takes everything at once too.
                    let (now, bytes) = (self.now, b.len());
                    self.client.handle_input(
                        Input::Command(Command::Delivered {
                            conn: pam_lite_core::client::TERMINAL_CONN,
                            bytes,
                        }),
                        now,
                    );
                }
                Output::Finished(r) => {
                    if self.record.finished.is_none() {
                        self.record.finished = Some(r);
                    }
                }
                o @ (Output::StreamOpen { .. }
                | Output::StreamWrite { .. }
                | Output::StreamClose { .. }) => self.stream_output(Side::Client, o),
                Output::ConnectTarget { .. }
                | Output::ControllerReply { .. }
                | Output::TargetResize { .. } => {}
            }
        }
    }

    fn client_http(&mut self, req: HttpRequest) {
        let r = self.net.router_rtt;
        self.record
            .http_requests
            .push((self.now, url_path(&req.url), req.fresh_connection));
        // Pick a connection: a free keep-alive one, or a new one (fresh cost).
        let (conn, setup) = if req.fresh_connection {
            (usize::MAX, r.mul_f64(self.net.fresh_connection_rtts))
        } else if let Some(i) = self.keepalive.iter().position(|busy| !busy) {
            (i, Duration::ZERO)
        } else {
            self.keepalive.push(false);
            (
                self.keepalive.len() - 1,
                r.mul_f64(self.net.fresh_connection_rtts),
            )
        };
        if let Some(b) = self.keepalive.get_mut(conn) {
            *b = true;
        }
        let at = self.now + setup + Self::half(r);
        let id = req.id;
        self.schedule(at, Event::RouterHttp { id, req, conn });
    }

    fn drain_gateway(&mut self) {
        while let Some(out) = self.gateway.poll_output() {
            match out {
                Output::ControllerReply { reply_to, payload } => {
                    let at = self.now + Self::half(self.net.gateway_rtt);
                    self.schedule(at, Event::RouterFromGateway { reply_to, payload });
                }
                Output::Transmit(d) => self.send_datagram(d, Side::Gateway),
                o @ (Output::StreamOpen { .. }
                | Output::StreamWrite { .. }
                | Output::StreamClose { .. }) => self.stream_output(Side::Gateway, o),
                Output::ConnectTarget { conn } => {
                    let now = self.now;
                    self.gateway.handle_input(
                        Input::Command(Command::TargetConnected { conn, ok: true }),
                        now,
                    );
                }
                Output::TargetResize { cols, rows, .. } => {
                    self.record.target_resizes.push((cols, rows))
                }
                Output::ConnectionData { conn, data } => {
                    // The simulated target takes everything at once: credit it (and echo it back).
                    let now = self.now;
                    let bytes = data.len();
                    if self.echo_target {
                        self.gateway
                            .handle_input(Input::Command(Command::Send { conn, data }), now);
                    }
                    self.gateway
                        .handle_input(Input::Command(Command::Delivered { conn, bytes }), now);
                }
                _ => {}
            }
        }
    }

    fn drain_router(&mut self) {
        let r = self.net.router_rtt;
        while let Some(ev) = self.router.poll_event() {
            match ev {
                RouterEvent::HttpResponse { id, response } => {
                    let at = self.now + Self::half(r);
                    if let Some(conn) = self.pending_http.remove(&id) {
                        // The keep-alive connection is free once the response has left.
                        self.schedule(at, Event::ConnFree(conn));
                    }
                    self.schedule(at, Event::ToClient(Input::HttpResponse { id, response }));
                }
                RouterEvent::WsSend { text, .. } => {
                    let at = self.now + Self::half(r);
                    self.schedule(at, Event::ToClient(Input::WsMessage(text)));
                }
                RouterEvent::ToGateway {
                    reply_to,
                    stream,
                    payload,
                } => {
                    let at = self.now + Self::half(self.net.gateway_rtt);
                    self.schedule(
                        at,
                        Event::ToGateway(Input::ControllerMessage {
                            reply_to,
                            stream,
                            payload,
                        }),
                    );
                }
                _ => {}
            }
        }
    }

    /// Run until `stop` says so, the launch finished, or `limit` of virtual time passed.
    pub fn run_until(&mut self, limit: Duration, mut stop: impl FnMut(&Sim) -> bool) {
        let deadline = self.start + limit;
        let mut stale_wakeups = 0u32;
        for _ in 0..5_000_000u64 {
            if stop(self) || self.record.finished.is_some() {
                return;
            }
            let next_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let timeouts = [
                self.client.poll_timeout(),
                self.gateway.poll_timeout(),
                self.router.poll_timeout(),
                self.turn.poll_timeout(),
            ];
            let next_timer = timeouts.into_iter().flatten().min();
            let next = match (next_event, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => return,
            };
            if next > deadline {
                self.now = deadline;
                return;
            }
            self.now = self.now.max(next);
            if next_event.is_some_and(|t| t <= self.now) {
                let Some(Reverse((_, _, slot))) = self.queue.pop() else {
                    continue;
                };
                if let Some(ev) = self.events.remove(&slot) {
                    self.dispatch(ev);
                }
            } else {
                let now = self.now;
                if self.client.poll_timeout().is_some_and(|t| t <= now) {
                    self.client_input(Input::Timeout);
                    // A node that still wants to be woken in the past after a Timeout would make a real
                    // driver spin: fail loudly instead of looping.
                    if self.client.poll_timeout().is_some_and(|t| t < now) {
                        stale_wakeups += 1;
                        assert!(
                            stale_wakeups < 1000,
                            "the client keeps asking to be woken at a past instant (busy loop)"
                        );
                    } else {
                        stale_wakeups = 0;
                    }
                }
                if self.gateway.poll_timeout().is_some_and(|t| t <= now) {
                    self.gateway_input(Input::Timeout);
                }
                if self.router.poll_timeout().is_some_and(|t| t <= now) {
                    self.router.handle_timeout(now);
                    self.drain_router();
                }
                if self.turn.poll_timeout().is_some_and(|t| t <= now) {
                    self.turn.handle_timeout(now);
                    self.drain_turn();
                }
            }
        }
    }

    fn dispatch(&mut self, ev: Event) {
        let now = self.now;
        match ev {
            Event::ToClient(i) => self.client_input(i),
            Event::ToGateway(i) => self.gateway_input(i),
            Event::Arrive(d) => self.arrive(d),
            Event::TurnTcp { from, data } => {
                if self.streams.contains_key(&from) {
                    self.turn.recv_tcp(from, data, now);
                    self.drain_turn();
                }
            }
            Event::ConnFree(c) => {
                if let Some(b) = self.keepalive.get_mut(c) {
                    *b = false;
                }
            }
            Event::RouterHttp { id, req, conn } => {
                if conn != usize::MAX {
                    self.pending_http.insert(id, conn);
                }
                let service = self.net.router_service;
                self.router.http_request(
                    id,
                    req.method,
                    &req.url,
                    &req.headers,
                    &req.body,
                    now + service,
                );
                self.drain_router_after(service);
            }
            Event::RouterWsOpen { headers } => {
                let result = self.router.ws_open(1, &headers, now);
                self.drain_router();
                let at = now + Self::half(self.net.router_rtt);
                let input = match result {
                    Ok(()) => {
                        self.ws_open = true;
                        Input::WsOpened
                    }
                    Err(status) => Input::WsClosed {
                        reason: format!("WebSocket upgrade refused: {status}"),
                    },
                };
                self.schedule(at, Event::ToClient(input));
            }
            Event::RouterFromGateway { reply_to, payload } => {
                self.router.gateway_reply(reply_to, &payload, now);
                self.drain_router();
            }
        }
    }

    fn drain_router_after(&mut self, service: Duration) {
        // Router replies leave after its service time.
        let saved = self.now;
        self.now += service;
        self.drain_router();
        self.now = saved;
    }

    /// The client's checkpoints as a waterfall from the launch start.
    pub fn waterfall(&self) -> Waterfall {
        let mut w = Waterfall::new(self.start);
        for c in &self.record.checkpoints {
            w.push(c.clone());
        }
        w
    }
}

/// A stable 64-bit key for a datagram's flow (source, destination).
fn flow_key(d: &Datagram) -> u64 {
    let text = format!("{}>{}", d.source, d.destination);
    // FNV-1a: stable across runs and platforms (unlike std's RandomState).
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64 over (seed, key, purpose): independent, reproducible pseudo-random draws.
fn mix(seed: u64, key: u64, purpose: u64) -> u64 {
    let mut z = seed ^ key.rotate_left(17) ^ purpose.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A draw in [0, 1).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn url_path(url: &str) -> String {
    let without_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    without_scheme
        .find('/')
        .map(|i| without_scheme[i..].to_string())
        .unwrap_or_else(|| "/".into())
}

impl Sim {
    /// Virtual milliseconds from the start to the tube being ready, if it became ready.
    pub fn ready_ms(&self) -> Option<u128> {
        self.record
            .tube_ready_at
            .map(|t| t.saturating_duration_since(self.start).as_millis())
    }

    /// A stable text form of the launch for snapshots: every checkpoint with its virtual offset, then
    /// the outcome. Only schedule facts, never bytes (str0m's DTLS keys differ run to run).
    pub fn snapshot(&self) -> String {
        let mut out = String::new();
        for (phase, name, ms) in self.waterfall().relative() {
            out.push_str(&format!("{ms:>6} ms  {phase:<30} {name}\n"));
        }
        match (&self.record.finished, self.ready_ms()) {
            (Some(Err(e)), _) => out.push_str(&format!(
                "result: error (exit {}): {e}\n",
                crate::exit_codes::launch_exit_code(e)
            )),
            (_, Some(ms)) => out.push_str(&format!("result: tube ready at {ms} ms\n")),
            (other, None) => out.push_str(&format!("result: {other:?}\n")),
        }
        out
    }
}
