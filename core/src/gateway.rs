//! The gateway role: the answering side of a Keeper tube, speaking the same formats as the client.
//!
//! The embedded emulator and the simulation run it behind the (emulated) router: the router hands it each
//! decrypted controller message ([`Input::ControllerMessage`]) and relays its replies
//! ([`Output::ControllerReply`]) back to the client, in the HTTP response or over the client's WebSocket.
//!
//! One `Gateway` serves many conversations (tubes) on one UDP socket, as a real gateway does. Connection
//! numbers are per tube on the wire; towards the driver the gateway hands out *global* connection ids so
//! the io vocabulary stays one-dimensional.
//!
//! What it does per conversation:
//! 1. `kind:start` → derive the tunnel key from the record's seed and the offer's nonce, decrypt the offer,
//!    create the answering [`Peer`], wait the configured answer delay (the real gateway's DAG and credential
//!    lookups), reply `{"answer": b64(SDP)}` with `a=keeper-webrtc:<version>`; in trickle mode its own
//!    candidates follow as one `{"candidates": [...]}` batch, in non-trickle mode they are inside the answer.
//! 2. `kind:icecandidate` → add each candidate (ignoring Keeper's `""` end marker); early ones are queued.
//! 3. Data channel open → three warm-up Pings (as Keeper 2.2.9 does), then the tube protocol: OpenConnection →
//!    [`Output::ConnectTarget`] → [`Command::TargetConnected`] → ConnectionOpened, data both ways, EOF, close.
//!    In terminal mode connection 1 speaks Guacamole in front of a raw byte stream (the driver's PTY).

use core::net::SocketAddr;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{json, Value};

use crate::guac::server::{ServerConfig, ServerEvent, TerminalServer};
use crate::path::{PathConfig, PathEvent, PathWatch};
use crate::relay::{GatherEvent, RelayLayer, RelayPlan};
use crate::rtc::{DtlsIdentity, Peer, PeerEvent, Role, KEEPER_VERSION_ATTRIBUTE};
use crate::signaling::{self, ConversationId, GatewayAction, TunnelKey};
use crate::tube::conns::{Connections, Role as TubeRole, TubeEvent};
use crate::tube::delivery::STALL_LIMIT;
use crate::tube::{CloseReason, Delivery, Outbox};
use crate::{CandidateKind, Command, ConnNo, Input, Node, Output, Seed};

/// What the gateway connects each tunneled connection to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Raw byte stream (TCP forward): tube bytes go to the driver's target socket unchanged.
    Tunnel,
    /// Connection 1 carries a Guacamole terminal session; the driver's target is a PTY.
    Terminal,
}

/// Gateway configuration.
#[derive(Clone)]
pub struct GatewayConfig {
    /// `trafficEncryptionSeed` per record uid. Secret.
    pub seeds: HashMap<String, Vec<u8>>,
    /// The seed for records not in `seeds` (the emulator serves any record with one seed). Secret.
    pub default_seed: Option<Vec<u8>>,
    pub target: TargetKind,
    /// How long the gateway "works" before answering an offer (DAG lookups, guacd start...).
    pub answer_delay: Duration,
    /// The version announced in the answer's `a=keeper-webrtc:` line.
    pub version: String,
    /// Send Keeper 2.2.9's three 1.4 KB warm-up Pings when the channel opens.
    pub warmup_pings: bool,
    /// Wall-clock Unix ms at the start instant (frame timestamps, Guacamole `sync`).
    pub unix_ms_at_start: u64,
    /// Refuse new conversations beyond this many live tubes (bounded memory).
    pub max_tubes: usize,
    /// STUN/TURN servers (one allocation shared by every tube) and the ICE policy. The gateway has no
    /// router to ask: TURN needs `credentials` here.
    pub relay: RelayPlan,
    /// Fault injection (the emulator's `--answer-bad-fingerprint`): announce a DTLS fingerprint in the
    /// answer that is not the gateway's certificate's, so a client must refuse the handshake.
    pub answer_bad_fingerprint: bool,
    /// A tube whose path is lost this long (`crate::path`) is closed. Longer than the client's own
    /// bound (60 s by default): the client restarts ICE, the gateway answers, so the client decides.
    pub path_loss_limit: Duration,
    /// The DTLS certificate every tube presents (one per process: see [`DtlsIdentity`]).
    pub dtls: DtlsIdentity,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("records", &self.seeds.keys().collect::<Vec<_>>())
            .field("target", &self.target)
            .field("answer_delay", &self.answer_delay)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl GatewayConfig {
    /// Keeper 2.2.9's behaviour for any record with a seed configured, presenting `dtls`.
    pub fn new(dtls: DtlsIdentity) -> Self {
        GatewayConfig {
            seeds: HashMap::new(),
            default_seed: None,
            target: TargetKind::Tunnel,
            answer_delay: Duration::ZERO,
            version: "2.2.9".into(),
            warmup_pings: true,
            unix_ms_at_start: 0,
            max_tubes: 4096,
            relay: RelayPlan::default(),
            answer_bad_fingerprint: false,
            path_loss_limit: Duration::from_secs(120),
            dtls,
        }
    }
}

/// Bound on the gateway's own candidates (host addresses plus what the relays gathered).
const MAX_LOCAL_CANDIDATES: usize = 64;

struct PendingAnswer {
    at: Instant,
    sdp: String,
}

struct Tube {
    conv: ConversationId,
    key: TunnelKey,
    reply_to: u64,
    trickle: bool,
    peer: Peer,
    answer: Option<PendingAnswer>,
    answered: bool,
    early_candidates: Vec<String>,
    /// Every client candidate this tube received, in arrival order (for tests and diagnostics).
    received_candidates: Vec<String>,
    conns: Option<Connections>,
    outbox: Outbox,
    blocked_write: Option<Vec<u8>>,
    terminal: Option<TerminalServer>,
    /// tube-local conn number → global id.
    global: HashMap<ConnNo, ConnNo>,
    closed: bool,
    /// Receive-side flow control by tube-local conn (`tube::delivery`): what the targets have not
    /// taken yet, and whether reading the data channel is paused because of it.
    delivery: Delivery,
    read_paused: bool,
    /// The path to this tube's client (`crate::path`): losses logged, the tube closed at the bound.
    path: PathWatch,
}

/// The gateway role state machine. See the module docs.
pub struct Gateway {
    cfg: GatewayConfig,
    rng: ChaCha20Rng,
    start: Option<Instant>,
    now: Instant,
    local_candidates: Vec<(SocketAddr, CandidateKind)>,
    tubes: Vec<Tube>,
    /// global conn id → (tube index, local conn).
    conns: BTreeMap<ConnNo, (usize, ConnNo)>,
    next_global: ConnNo,
    outputs: VecDeque<Output>,
    /// STUN/TURN for every tube: its candidates are every tube's, its relay carries every tube's pairs.
    relay: RelayLayer,
}

impl Gateway {
    pub fn new(cfg: GatewayConfig, seed: Seed, now: Instant) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let relay_seed = if cfg.relay.is_empty() {
            0
        } else {
            rng.next_u64()
        };
        let mut relay = RelayLayer::new(cfg.relay.clone(), relay_seed);
        if relay.wants_credentials() {
            relay.set_credentials(Err("the gateway was given no TURN credentials".into()), now);
        }
        Gateway {
            cfg,
            relay,
            rng,
            start: None,
            now,
            local_candidates: Vec::new(),
            tubes: Vec::new(),
            conns: BTreeMap::new(),
            next_global: 1,
            outputs: VecDeque::new(),
        }
    }

    /// A local address: the driver's host candidates, or what the relay layer gathered. Tubes that
    /// already answered in trickle mode get it at once (as a trickled candidate).
    fn on_local_candidate(&mut self, addr: SocketAddr, kind: CandidateKind) {
        if kind == CandidateKind::Host {
            self.relay.host_candidate(addr);
        }
        if !self.relay.admits(kind) || self.local_candidates.len() >= MAX_LOCAL_CANDIDATES {
            return;
        }
        self.local_candidates.push((addr, kind));
        let now = self.now;
        for idx in 0..self.tubes.len() {
            let tube = &mut self.tubes[idx];
            if tube.closed || !tube.answered || !tube.trickle {
                continue;
            }
            let Some(c) = tube.peer.add_local_candidate(addr, kind, now) else {
                continue;
            };
            self.reply_candidates(idx, vec![c]);
            self.pump(idx);
        }
    }

    /// Trickle `candidates` to tube `idx`'s client: sealed with its tunnel key, as a reply to its offer.
    fn reply_candidates(&mut self, idx: usize, candidates: Vec<String>) {
        let body = json!({ "candidates": candidates }).to_string();
        let data = self.tubes[idx].key.encrypt(body.as_bytes(), &mut self.rng);
        let reply_to = self.tubes[idx].reply_to;
        self.reply(reply_to, &data);
    }

    /// Drain the relay layer: relayed data to the tube it belongs to, gathered candidates, its I/O.
    fn pump_relay(&mut self) {
        let now = self.now;
        while let Some(d) = self.relay.poll_inbound() {
            if let Some(idx) = self
                .tubes
                .iter()
                .position(|t| !t.closed && t.peer.accepts(&d, now))
            {
                self.tubes[idx].peer.handle_datagram(&d, now);
                self.pump(idx);
            }
        }
        while let Some(event) = self.relay.poll_event() {
            match event {
                GatherEvent::Candidate { addr, kind } => {
                    tracing::info!(%addr, ?kind, "gateway gathered a candidate");
                    self.on_local_candidate(addr, kind);
                }
                GatherEvent::Failed(problem) => {
                    tracing::warn!(%problem, "gateway relay server gave nothing");
                }
                GatherEvent::Gathered => {}
            }
        }
        while let Some(o) = self.relay.poll_output() {
            self.outputs.push_back(o);
        }
    }

    /// Live tubes (for tests and the emulator's status line).
    pub fn tube_count(&self) -> usize {
        self.tubes.iter().filter(|t| !t.closed).count()
    }

    fn unix_ms(&self) -> u64 {
        let since = self
            .start
            .map(|s| self.now.saturating_duration_since(s))
            .unwrap_or_default();
        self.cfg.unix_ms_at_start + since.as_millis() as u64
    }

    /// `{"is_ok":true,"data":…}` for the router (Keeper's shape, [`signaling::gateway_reply_ok`]).
    fn reply(&mut self, reply_to: u64, data: &str) {
        self.outputs.push_back(Output::ControllerReply {
            reply_to,
            payload: signaling::gateway_reply_ok(data),
        });
    }

    fn reply_error(&mut self, reply_to: u64, error: &str) {
        tracing::warn!(%error, "gateway refuses a controller message");
        self.outputs.push_back(Output::ControllerReply {
            reply_to,
            payload: signaling::gateway_reply_error(error),
        });
    }

    fn seed_for(&self, record_uid: &str) -> Option<Vec<u8>> {
        self.cfg
            .seeds
            .get(record_uid)
            .or(self.cfg.default_seed.as_ref())
            .cloned()
    }

    fn on_controller_message(&mut self, reply_to: u64, stream: bool, payload: &str) {
        let action = match GatewayAction::parse(payload) {
            Ok(a) => a,
            Err(e) => return self.reply_error(reply_to, &format!("bad gateway action: {e}")),
        };
        let input = |k: &str| {
            action
                .inputs
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let kind = input("kind").unwrap_or_default();
        let Some(conv) = ConversationId::parse(&action.conversation_id) else {
            return self.reply_error(reply_to, "bad conversationId");
        };
        match kind.as_str() {
            "start" => self.on_offer(reply_to, stream, conv, &action),
            "icecandidate" => {
                let Some(idx) = self.tubes.iter().position(|t| t.conv == conv && !t.closed) else {
                    return self.reply_error(reply_to, "unknown conversation");
                };
                let data = input("data").unwrap_or_default();
                let list = match self.tubes[idx].key.decrypt(&data) {
                    Ok(plain) => signaling::parse_candidates(&plain),
                    Err(e) => {
                        return self.reply_error(reply_to, &format!("decryption failed: {e}"))
                    }
                };
                let now = self.now;
                for addr in list.iter().filter_map(|c| crate::rtc::candidate_address(c)) {
                    self.relay.remote_candidate(addr, now);
                }
                let tube = &mut self.tubes[idx];
                tube.received_candidates.extend(list.iter().cloned());
                for c in list {
                    if tube.answered {
                        if let Err(e) = tube.peer.add_remote_candidate(&c, now) {
                            tracing::warn!(error = %e, "ignoring a client candidate");
                        }
                    } else {
                        tube.early_candidates.push(c);
                    }
                }
                self.reply(reply_to, "ice candidate received");
                self.pump(idx);
            }
            "ice_restart_offer" => self.on_restart_offer(reply_to, conv, input("data")),
            // This gateway never offers a restart (Commander 18.1.8 cannot take one: it misreads the
            // offer as an answer), so an answer is for nothing.
            "ice_restart_answer" => {
                self.reply_error(reply_to, "no ICE restart of the gateway's is pending")
            }
            other => self.reply_error(reply_to, &format!("unsupported action kind {other:?}")),
        }
    }

    /// The client restarts ICE: accept its new offer (str0m restarts its ICE agent when the credentials
    /// changed; DTLS and SCTP go on) and reply with the answer, which reaches the client over its
    /// WebSocket (`{"type":"answer","sdp":…,"ice_restart":true}`, Commander's shape).
    fn on_restart_offer(&mut self, reply_to: u64, conv: ConversationId, data: Option<String>) {
        let Some(idx) = self.tubes.iter().position(|t| t.conv == conv && !t.closed) else {
            return self.reply_error(reply_to, "unknown conversation");
        };
        let sdp = match self.tubes[idx].key.decrypt(&data.unwrap_or_default()) {
            Ok(plain) => match signaling::parse_restart_offer(&plain) {
                Ok(sdp) => sdp,
                Err(e) => return self.reply_error(reply_to, &e.to_string()),
            },
            Err(e) => return self.reply_error(reply_to, &format!("decryption failed: {e}")),
        };
        let now = self.now;
        let version = format!("{KEEPER_VERSION_ATTRIBUTE}{}", self.cfg.version);
        let answer = match self.tubes[idx].peer.accept_offer(&sdp, &[version], now) {
            Ok(a) => a,
            Err(e) => return self.reply_error(reply_to, &format!("bad ICE-restart offer: {e}")),
        };
        for addr in crate::rtc::sdp_candidate_addresses(&sdp) {
            self.relay.remote_candidate(addr, now);
        }
        tracing::info!(conv = %conv.std(), "the client restarted ICE; answering");
        let body = signaling::ice_restart_answer_data_json(&answer);
        let data = self.tubes[idx].key.encrypt(body.as_bytes(), &mut self.rng);
        self.reply(reply_to, &data);
        self.pump(idx);
    }

    fn on_offer(
        &mut self,
        reply_to: u64,
        stream: bool,
        conv: ConversationId,
        action: &GatewayAction,
    ) {
        let get = |k: &str| {
            action
                .inputs
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        if self.tube_count() >= self.cfg.max_tubes {
            return self.reply_error(reply_to, "gateway is at its tube limit");
        }
        if self.tubes.iter().any(|t| t.conv == conv && !t.closed) {
            return self.reply_error(reply_to, "conversation already exists");
        }
        let Some(seed) = self.seed_for(&get("recordUid")) else {
            return self.reply_error(reply_to, "unknown record");
        };
        let nonce = match action.nonce() {
            Some(n) if !n.is_empty() => n,
            _ => return self.reply_error(reply_to, "bad base64Nonce"),
        };
        let key = TunnelKey::derive(&seed, &nonce);
        let offer = key
            .decrypt(&get("data"))
            .map_err(|e| format!("decryption failed: {e}"))
            .and_then(|plain| signaling::parse_offer_data(&plain).map_err(|e| e.to_string()));
        let sdp = match offer {
            Ok(sdp) => sdp,
            Err(e) => return self.reply_error(reply_to, &e),
        };
        let trickle = action
            .inputs
            .get("trickleICE")
            .and_then(Value::as_bool)
            .unwrap_or(stream);
        let now = self.now;
        for addr in crate::rtc::sdp_candidate_addresses(&sdp) {
            self.relay.remote_candidate(addr, now);
        }
        let mut peer = Peer::new(Role::Answerer, &conv.std(), &self.cfg.dtls, now);
        if !trickle {
            for (addr, kind) in self.local_candidates.clone() {
                peer.add_local_candidate(addr, kind, now);
            }
        }
        let version = format!("{KEEPER_VERSION_ATTRIBUTE}{}", self.cfg.version);
        let answer = match peer.accept_offer(&sdp, &[version], now) {
            Ok(a) => a,
            Err(e) => return self.reply_error(reply_to, &format!("bad offer: {e}")),
        };
        self.tubes.push(Tube {
            conv,
            key,
            reply_to,
            trickle,
            peer,
            answer: Some(PendingAnswer {
                at: now + self.cfg.answer_delay,
                sdp: answer,
            }),
            answered: false,
            early_candidates: Vec::new(),
            received_candidates: Vec::new(),
            conns: None,
            outbox: Outbox::new(),
            blocked_write: None,
            terminal: None,
            global: HashMap::new(),
            closed: false,
            delivery: Delivery::new(),
            read_paused: false,
            path: PathWatch::new(PathConfig::answering(self.cfg.path_loss_limit)),
        });
        self.send_due_answers();
    }

    /// Answers whose delay has passed go out now; in trickle mode the gateway's candidates follow.
    fn send_due_answers(&mut self) {
        let now = self.now;
        for idx in 0..self.tubes.len() {
            let due = matches!(&self.tubes[idx].answer, Some(a) if a.at <= now);
            if !due {
                continue;
            }
            let Some(pending) = self.tubes[idx].answer.take() else {
                continue;
            };
            let sdp = if self.cfg.answer_bad_fingerprint {
                signaling::corrupt_fingerprint(&pending.sdp)
            } else {
                pending.sdp
            };
            let body = json!({ "answer": B64.encode(sdp.as_bytes()) }).to_string();
            let data = self.tubes[idx].key.encrypt(body.as_bytes(), &mut self.rng);
            let reply_to = self.tubes[idx].reply_to;
            self.reply(reply_to, &data);
            let candidates: Vec<String> = if self.tubes[idx].trickle {
                let locals = self.local_candidates.clone();
                let tube = &mut self.tubes[idx];
                locals
                    .into_iter()
                    .filter_map(|(addr, kind)| tube.peer.add_local_candidate(addr, kind, now))
                    .collect()
            } else {
                Vec::new()
            };
            let tube = &mut self.tubes[idx];
            tube.answered = true;
            for c in std::mem::take(&mut tube.early_candidates) {
                if let Err(e) = tube.peer.add_remote_candidate(&c, now) {
                    tracing::warn!(error = %e, "ignoring a client candidate");
                }
            }
            if !candidates.is_empty() {
                self.reply_candidates(idx, candidates);
            }
            self.pump(idx);
        }
    }

    fn pump(&mut self, idx: usize) {
        let now = self.now;
        let unix_ms = self.unix_ms();
        let target = self.cfg.target;
        let warmup = self.cfg.warmup_pings;
        let mut outs = Vec::new();
        let mut new_conns: Vec<ConnNo> = Vec::new();
        {
            let Some(tube) = self.tubes.get_mut(idx) else {
                return;
            };
            while let Some(e) = tube.peer.poll_event() {
                match e {
                    PeerEvent::Connected => tube.path.start(now),
                    PeerEvent::PathLost => {
                        if let Some(e) = tube.path.ice_lost(now) {
                            log_path(&tube.conv, &e);
                        }
                    }
                    // Counted once a DTLS record follows (below).
                    PeerEvent::PathRestored => {}
                    PeerEvent::ChannelOpen => {
                        let mut conns = Connections::new(TubeRole::Gateway, now);
                        conns.set_unix_ms_base(unix_ms, now);
                        if warmup {
                            if let Err(e) = conns.send_warmup_pings() {
                                tracing::debug!(error = %e, "warm-up pings");
                            }
                        }
                        tube.conns = Some(conns);
                    }
                    PeerEvent::Message(m) => {
                        if let Some(c) = tube.conns.as_mut() {
                            c.handle_message(&m, now);
                        }
                    }
                    PeerEvent::Writable => {}
                    PeerEvent::Closed(reason) => {
                        tracing::info!(%reason, conv = %tube.conv.std(), "tube closed");
                        tube.closed = true;
                    }
                }
            }
            loop {
                if let Some(w) = tube.blocked_write.take() {
                    match tube.peer.write(&w, now) {
                        Ok(true) => {}
                        Ok(false) => {
                            tube.blocked_write = Some(w);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "tube write failed");
                            tube.closed = true;
                            break;
                        }
                    }
                }
                let Some(conns) = tube.conns.as_mut() else {
                    break;
                };
                conns.advance(now);
                tube.outbox.flush(conns);
                let Some(ev) = conns.poll_event() else { break };
                match ev {
                    TubeEvent::Write(bytes) => tube.blocked_write = Some(bytes),
                    TubeEvent::ConnectTarget { conn, .. } => new_conns.push(conn),
                    TubeEvent::Data { conn, data } => {
                        let global = tube.global.get(&conn).copied();
                        match (target, conn, tube.terminal.as_mut(), global) {
                            (TargetKind::Terminal, 1, Some(term), Some(g)) => {
                                term.handle_data(&data);
                                let typed =
                                    drain_terminal(term, conns, &mut tube.outbox, g, &mut outs);
                                tube.delivery.handed(conn, typed, now);
                            }
                            (_, _, _, Some(g)) => {
                                tube.delivery.handed(conn, data.len(), now);
                                outs.push(Output::ConnectionData { conn: g, data })
                            }
                            _ => tracing::debug!(conn, "data for a connection with no target"),
                        }
                    }
                    TubeEvent::Eof(conn) => {
                        if let Some(g) = tube.global.get(&conn) {
                            outs.push(Output::ConnectionEof { conn: *g });
                        }
                    }
                    TubeEvent::Closed { conn, reason, .. } => {
                        tube.delivery.forget(conn);
                        if let Some(g) = tube.global.remove(&conn) {
                            outs.push(Output::ConnectionClosed { conn: g, reason });
                        }
                    }
                    TubeEvent::ChannelClosed { reason, .. } => {
                        tracing::info!(%reason, "client closed the tube");
                        for (_, g) in tube.global.drain() {
                            outs.push(Output::ConnectionClosed { conn: g, reason });
                        }
                        tube.peer.close(now);
                        tube.closed = true;
                    }
                    TubeEvent::Opened(_) | TubeEvent::Pong { .. } => {}
                    TubeEvent::ProtocolWarning(w) => {
                        tracing::warn!(warning = %w, "tube protocol warning")
                    }
                }
            }
            if tube.peer.last_received() == Some(now) {
                if let Some(e) = tube.path.received(now, !tube.peer.path_lost()) {
                    log_path(&tube.conv, &e);
                }
            }
            while let Some(d) = tube.peer.poll_transmit() {
                if let Some(d) = self.relay.outgoing(d, now) {
                    outs.push(Output::Transmit(d));
                }
            }
            while let Some(o) = self.relay.poll_output() {
                outs.push(o);
            }
            if let Some(conns) = tube.conns.as_ref() {
                if let Some(paused) = tube.outbox.pause_change(conns) {
                    for g in tube.global.values() {
                        outs.push(Output::Backpressure { conn: *g, paused });
                    }
                }
            }
        }
        for conn in new_conns {
            let g = self.next_global;
            self.next_global = self.next_global.wrapping_add(1).max(1);
            self.conns.insert(g, (idx, conn));
            if let Some(t) = self.tubes.get_mut(idx) {
                t.global.insert(conn, g);
            }
            outs.push(Output::ConnectTarget { conn: g });
            // Opened while its tube is paused: it starts paused (the pause was announced before it existed).
            if self.tubes.get(idx).is_some_and(|t| t.outbox.is_paused()) {
                outs.push(Output::Backpressure {
                    conn: g,
                    paused: true,
                });
            }
        }
        let again = self.apply_receive_budget(idx, &mut outs);
        self.outputs.extend(outs);
        if again {
            self.pump(idx);
        }
    }

    /// The tubes' path watches: losses logged; a tube lost past the bound is closed (its connections end
    /// with `CloseReason::Timeout`).
    fn on_path_timeouts(&mut self) {
        let now = self.now;
        for idx in 0..self.tubes.len() {
            let mut outs = Vec::new();
            let tube = &mut self.tubes[idx];
            if tube.closed {
                continue;
            }
            while let Some(e) = tube.path.handle_timeout(now) {
                log_path(&tube.conv, &e);
                if let PathEvent::GiveUp { .. } = e {
                    if let Some(c) = tube.conns.as_mut() {
                        c.close_all(CloseReason::Timeout);
                    }
                    for (_, g) in tube.global.drain() {
                        outs.push(Output::ConnectionClosed {
                            conn: g,
                            reason: CloseReason::Timeout,
                        });
                    }
                    tube.peer.close(now);
                    tube.closed = true;
                    break;
                }
            }
            self.outputs.extend(outs);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let unix_ms = self.unix_ms();
        let (conn, idx, local) = match &cmd {
            Command::TargetConnected { conn, .. }
            | Command::Delivered { conn, .. }
            | Command::Send { conn, .. }
            | Command::SendEof { conn }
            | Command::CloseConnection { conn, .. } => match self.conns.get(conn) {
                Some((idx, local)) => (*conn, *idx, *local),
                None => return,
            },
            Command::Close => {
                let now = self.now;
                for t in &mut self.tubes {
                    if let Some(c) = t.conns.as_mut() {
                        c.close_all(CloseReason::AdminClosed);
                    }
                    t.peer.close(now);
                }
                for i in 0..self.tubes.len() {
                    self.pump(i);
                }
                self.outputs.push_back(Output::Finished(Ok(())));
                return;
            }
            _ => return,
        };
        let terminal = self.cfg.target == TargetKind::Terminal && local == 1;
        let mut outs = Vec::new();
        if let Some(tube) = self.tubes.get_mut(idx) {
            let Some(conns) = tube.conns.as_mut() else {
                return;
            };
            match cmd {
                Command::TargetConnected { ok, .. } => {
                    if let Err(e) = conns.target_connected(local, ok) {
                        tracing::debug!(error = %e, "target connected for a closed connection");
                    }
                    if ok && terminal {
                        let mut term = TerminalServer::new(ServerConfig::default());
                        term.start(unix_ms);
                        let typed =
                            drain_terminal(&mut term, conns, &mut tube.outbox, conn, &mut outs);
                        tube.terminal = Some(term);
                        // The PTY's input obeys the receive budget (the driver credits what the PTY
                        // took), without the stall limit: a terminal tube carries nothing else.
                        tube.delivery.exempt_from_stall_limit(local);
                        tube.delivery.handed(local, typed, self.now);
                    }
                    if !ok {
                        self.conns.remove(&conn);
                        tube.global.remove(&local);
                    }
                }
                Command::Send { data, .. } => {
                    if let (true, Some(term)) = (terminal, tube.terminal.as_mut()) {
                        term.output(&data);
                        term.sync(unix_ms);
                        let typed = drain_terminal(term, conns, &mut tube.outbox, conn, &mut outs);
                        tube.delivery.handed(local, typed, self.now);
                    } else if let Err(e) = tube.outbox.send(conns, local, data) {
                        tracing::warn!(error = %e, conn, "closing a connection that cannot take data");
                        let _ = conns.close(local, CloseReason::Error);
                        outs.push(Output::ConnectionClosed {
                            conn,
                            reason: CloseReason::Error,
                        });
                    }
                }
                Command::SendEof { .. } => {
                    let _ = tube.outbox.send_eof(conns, local);
                }
                Command::Delivered { bytes, .. } => tube.delivery.delivered(local, bytes, self.now),
                Command::CloseConnection { reason, .. } => {
                    tube.delivery.forget(local);
                    let _ = tube.outbox.close(conns, local, reason);
                    self.conns.remove(&conn);
                    tube.global.remove(&local);
                }
                _ => {}
            }
        }
        self.outputs.extend(outs);
        self.pump(idx);
    }

    /// Receive-side flow control for tube `idx` (`tube::delivery`): close the connections whose target
    /// took nothing for the stall limit while holding the tube, then pause or resume reading its
    /// channel. `true`: pump the tube again (reading resumed, or a close frame waits).
    fn apply_receive_budget(&mut self, idx: usize, outs: &mut Vec<Output>) -> bool {
        let now = self.now;
        let Some(tube) = self.tubes.get_mut(idx) else {
            return false;
        };
        let mut closed = false;
        for local in tube.delivery.stalled(now) {
            closed = true;
            tube.delivery.forget(local);
            tracing::warn!(
                conn = local,
                "the target took nothing for {}s while holding the tube: closing the connection",
                STALL_LIMIT.as_secs()
            );
            if let Some(conns) = tube.conns.as_mut() {
                let _ = tube.outbox.close(conns, local, CloseReason::Timeout);
            }
            if let Some(g) = tube.global.remove(&local) {
                self.conns.remove(&g);
                outs.push(Output::ConnectionClosed {
                    conn: g,
                    reason: CloseReason::Timeout,
                });
            }
        }
        let blocked = tube.delivery.is_blocked() && !tube.closed;
        if blocked == tube.read_paused {
            return closed;
        }
        tube.read_paused = blocked;
        tube.peer.set_read_paused(blocked, now);
        closed || !blocked
    }

    /// The client candidates each tube received through `icecandidate` actions, in arrival order.
    pub fn received_candidates(&self) -> Vec<Vec<String>> {
        self.tubes
            .iter()
            .map(|t| t.received_candidates.clone())
            .collect()
    }

    /// Whether connection `conn` (global id) can take more target bytes now.
    pub fn can_send(&self, conn: ConnNo) -> bool {
        self.conns
            .get(&conn)
            .and_then(|(idx, _)| self.tubes.get(*idx))
            .filter(|t| !t.outbox.is_paused() && t.outbox.bytes() == 0)
            .and_then(|t| t.conns.as_ref())
            .is_some_and(|c| c.is_writable())
    }
}

/// Move a terminal server's events to the tube (Guacamole to the client) and the driver (bytes to the PTY).
/// Returns how many bytes went to the PTY (`ConnectionData`, for the receive budget).
fn drain_terminal(
    term: &mut TerminalServer,
    conns: &mut Connections,
    outbox: &mut Outbox,
    global: ConnNo,
    outs: &mut Vec<Output>,
) -> usize {
    let mut typed = 0;
    while let Some(e) = term.poll_event() {
        match e {
            ServerEvent::ToClient(bytes) => {
                if let Err(e) = outbox.send(conns, 1, bytes) {
                    tracing::debug!(error = %e, "terminal output after close");
                }
            }
            ServerEvent::Input(bytes) => {
                typed += bytes.len();
                outs.push(Output::ConnectionData {
                    conn: global,
                    data: bytes,
                })
            }
            ServerEvent::Resize { cols, rows, .. } => outs.push(Output::TargetResize {
                conn: global,
                cols,
                rows,
            }),
            ServerEvent::Connected { .. } => {}
            ServerEvent::Ended(_) => {
                let _ = conns.close(1, CloseReason::Normal);
                outs.push(Output::ConnectionClosed {
                    conn: global,
                    reason: CloseReason::Normal,
                });
            }
        }
    }
    typed
}

/// A gateway tube's path event, as a log line.
fn log_path(conv: &ConversationId, e: &PathEvent) {
    let conv = conv.std();
    match e {
        PathEvent::Lost { quiet } => {
            tracing::warn!(%conv, quiet_ms = quiet.as_millis() as u64, "path to the client lost")
        }
        PathEvent::Restored { outage, .. } => {
            tracing::info!(%conv, outage_ms = outage.as_millis() as u64, "path to the client back")
        }
        PathEvent::GiveUp { outage, restarts } => tracing::warn!(
            %conv,
            "closing the tube: {}",
            PathWatch::give_up_reason(*outage, *restarts)
        ),
        PathEvent::Restart { .. } | PathEvent::Probe => {}
    }
}

impl Node for Gateway {
    fn handle_input(&mut self, input: Input, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        if self.start.is_none() {
            self.start = Some(self.now);
        }
        match input {
            Input::Timeout => {
                let now = self.now;
                self.relay.handle_timeout(now);
                self.pump_relay();
                for t in &mut self.tubes {
                    if t.peer.poll_timeout().is_some_and(|x| x <= now) {
                        t.peer.handle_timeout(now);
                    }
                }
                self.on_path_timeouts();
                self.send_due_answers();
                for i in 0..self.tubes.len() {
                    self.pump(i);
                }
            }
            Input::ControllerMessage {
                reply_to,
                stream,
                payload,
            } => self.on_controller_message(reply_to, stream, &payload),
            Input::Stream { stream, event } => {
                self.relay.stream(stream, event, self.now);
                self.pump_relay();
            }
            Input::Datagram(d) if self.relay.incoming(&d, self.now) => self.pump_relay(),
            Input::Datagram(d) => {
                let now = self.now;
                if let Some(idx) = self
                    .tubes
                    .iter()
                    .position(|t| !t.closed && t.peer.accepts(&d, now))
                {
                    self.tubes[idx].peer.handle_datagram(&d, now);
                    self.pump(idx);
                } else {
                    tracing::trace!(source = %d.source, "datagram for no tube");
                }
            }
            Input::LocalCandidate { addr, kind } => self.on_local_candidate(addr, kind),
            Input::GatheringComplete => {
                self.relay.host_gathering_complete(self.now);
                self.pump_relay();
            }
            Input::Command(c) => self.on_command(c),
            Input::HttpResponse { .. }
            | Input::HttpError { .. }
            | Input::WsOpened
            | Input::WsMessage(_)
            | Input::WsClosed { .. } => {}
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let answers = self
            .tubes
            .iter()
            .filter_map(|t| t.answer.as_ref().map(|a| a.at));
        let peers = self
            .tubes
            .iter()
            .filter(|t| !t.closed)
            .filter_map(|t| t.peer.poll_timeout());
        let stalls = self
            .tubes
            .iter()
            .filter(|t| !t.closed)
            .filter_map(|t| t.delivery.poll_timeout());
        let paths = self
            .tubes
            .iter()
            .filter(|t| !t.closed)
            .filter_map(|t| t.path.poll_timeout());
        answers
            .chain(peers)
            .chain(stalls)
            .chain(paths)
            .chain(self.relay.poll_timeout())
            .min()
    }
}
