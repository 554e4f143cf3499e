//! A small virtual-time world for the client modules' unit tests: the real [`Client`], the core's
//! emulated router and its gateway node, and an ideal network with fixed latencies. It is a cut-down
//! cousin of the workspace simulation (`tests/src/sim.rs`), enough to drive one behaviour through the
//! client's [`Input`]s and [`Output`]s and look at what came out, and when.

use core::net::SocketAddr;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::gateway::{Gateway, GatewayConfig, TargetKind};
use crate::offer::{LaunchOffer, TargetHost};
use crate::profile::Profile;
use crate::router::envelope::ServerSecretKey;
use crate::router::proto::RouterResponseCode;
use crate::router::server::{Faults, RouterConfig, RouterEvent, RouterServer};
use crate::rtc::DtlsIdentity;
use crate::signaling::GatewayAction;
use crate::{CandidateKind, Command, ConnNo, HttpRequest, Input, LaunchError, Node, Output};

use super::{Client, ClientConfig, Session};

pub(super) const GATEWAY_UID: &str = "R2F0ZXdheUdhdGV3YXlHYQ";
/// Client → router one way (a round trip is twice this).
pub(super) const ROUTER_ONE_WAY: Duration = Duration::from_millis(20);
/// The router authenticates a WebSocket this long after the upgrade.
pub(super) const WS_AUTH: Duration = Duration::from_millis(50);
/// Router ↔ gateway one way.
pub(super) const GATEWAY_ONE_WAY: Duration = Duration::from_millis(10);
/// Client ↔ gateway UDP one way.
pub(super) const PEER_ONE_WAY: Duration = Duration::from_millis(5);

/// What varies between the unit tests' launches.
#[derive(Debug, Clone)]
pub(super) struct HarnessConfig {
    pub profile: Profile,
    pub trickle: bool,
    pub session: Session,
    pub gateway_offline: bool,
    pub rrc_failures: Vec<RouterResponseCode>,
    pub http_status_failures: Vec<u16>,
    pub registration_lag: Duration,
    /// The router never completes the WebSocket upgrade.
    pub ws_never_opens: bool,
    /// What becomes of the WebSocket's pre-connection ([`crate::WsPhase::Prepare`]).
    pub preconnect: Preconnect,
    /// Datagrams between client and gateway are all lost.
    pub drop_datagrams: bool,
    /// Client host candidates on unreachable interfaces (besides the one that works).
    pub extra_candidates: u16,
    /// Whether the driver reports the end of gathering right after the candidates.
    pub gathering_complete: bool,
    pub answer_delay: Duration,
    pub relay: crate::relay::RelayPlan,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        HarnessConfig {
            profile: Profile::fast(),
            trickle: true,
            session: Session::Tunnel,
            gateway_offline: false,
            rrc_failures: Vec::new(),
            http_status_failures: Vec::new(),
            registration_lag: Duration::ZERO,
            ws_never_opens: false,
            preconnect: Preconnect::Works,
            drop_datagrams: false,
            extra_candidates: 0,
            gathering_complete: true,
            answer_delay: Duration::from_millis(100),
            relay: Default::default(),
        }
    }
}

/// The fate of the WebSocket's pre-connection in the harness (a driver's view of its socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Preconnect {
    /// It opens and carries the upgrade.
    Works,
    /// It cannot be opened: the driver reports `WsClosed` one router one-way later.
    Fails,
    /// It opens, but is gone when the upgrade comes (closed under it): `WsClosed` at once.
    GoneAtUpgrade,
}

#[derive(Debug)]
enum Event {
    ToClient(Input),
    ToGateway(Input),
    RouterHttp(HttpRequest),
    RouterWsOpen(Vec<(String, String)>),
    RouterFromGateway { reply_to: u64, payload: String },
}

/// One simulated launch and what it produced.
pub(super) struct Harness {
    pub t0: Instant,
    pub now: Instant,
    pub client: Client,
    gateway: Gateway,
    router: RouterServer,
    cfg: HarnessConfig,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Event>,
    seq: u64,
    client_addr: SocketAddr,
    gateway_addr: SocketAddr,
    /// (since t0, phase name, checkpoint name)
    pub checkpoints: Vec<(Duration, String)>,
    /// (since t0, endpoint name, fresh connection) of every HTTP request the client sent.
    pub http: Vec<(Duration, String, bool)>,
    /// (since t0, `inputs.kind`) of every action the gateway received.
    pub to_gateway: Vec<(Duration, String)>,
    /// Candidates per `icecandidate` action the gateway received.
    pub candidate_batches: Vec<usize>,
    /// (since t0) of every WebSocket connect, upgrade or fresh (not the pre-connection).
    pub ws_connects: Vec<Duration>,
    /// The phase of each of `ws_connects`.
    pub ws_phases: Vec<crate::WsPhase>,
    /// (since t0) of every pre-connection asked for.
    pub ws_prepares: Vec<Duration>,
    /// Whether the driver holds a live pre-connection.
    prepared: bool,
    pub ws_headers: Vec<(String, String)>,
    pub finished: Option<Result<(), LaunchError>>,
    pub finished_at: Option<Duration>,
    pub tube_ready: Option<Duration>,
    pub connected: Option<Duration>,
    pub opened: Vec<ConnNo>,
    pub closed: Vec<(ConnNo, crate::tube::CloseReason)>,
    pub received: BTreeMap<ConnNo, Vec<u8>>,
    pub terminal_output: Vec<u8>,
    /// The local sides of the client's connections stop taking data (no `Command::Delivered`):
    /// receive-side flow control tests. Otherwise every byte is credited as soon as it is recorded.
    pub withhold_delivery: bool,
    /// The gateway's targets stop taking data: what reaches them is recorded in `target_received`, not
    /// echoed and not credited (gateway-role receive-side flow control tests).
    pub withhold_gateway_delivery: bool,
    /// What the gateway's targets were handed while `withhold_gateway_delivery` (by gateway conn id).
    pub target_received: BTreeMap<ConnNo, Vec<u8>>,
}

impl Harness {
    pub fn new(cfg: HarnessConfig) -> Self {
        let t0 = pam_lite_dev_clock::origin();
        let secret = ServerSecretKey::random(&mut ChaCha20Rng::seed_from_u64(1));
        let server_key = secret.public_key(7).expect("server key");
        let traffic_seed = vec![9u8; 32];
        let router = RouterServer::new(
            RouterConfig {
                secret,
                gateways: vec![GATEWAY_UID.into()],
                faults: Faults {
                    registration_lag: cfg.registration_lag,
                    http_status_failures: cfg.http_status_failures.clone(),
                    rrc_failures: cfg.rrc_failures.clone(),
                    gateway_offline: cfg.gateway_offline,
                },
                relay_credentials: None,
            },
            ChaCha20Rng::seed_from_u64(2),
        );
        let gateway = Gateway::new(
            GatewayConfig {
                default_seed: Some(traffic_seed.clone()),
                target: match cfg.session {
                    Session::Tunnel => TargetKind::Tunnel,
                    Session::Terminal(_) => TargetKind::Terminal,
                },
                answer_delay: cfg.answer_delay,
                unix_ms_at_start: 1_795_000_000_000,
                ..GatewayConfig::new(DtlsIdentity::fixed_for_tests())
            },
            [4; 32],
            t0,
        );
        let mut offer = LaunchOffer::tunnel(Some(TargetHost {
            host_name: "10.9.9.9".into(),
            port: 22,
        }));
        offer.conversation_type = match cfg.session {
            Session::Tunnel => "tunnel".into(),
            Session::Terminal(_) => "ssh".into(),
        };
        let client = Client::new(
            ClientConfig {
                router_url: "https://connect.unit.invalid".into(),
                session_token: vec![7; 32],
                server_key,
                gateway_uid: GATEWAY_UID.into(),
                record_uid: "UmVjb3JkUmVjb3JkUmVjbw".into(),
                traffic_seed,
                offer,
                session: cfg.session.clone(),
                trickle_ice: cfg.trickle,
                profile: cfg.profile.clone(),
                relay: cfg.relay.clone(),
                unix_ms_at_start: 1_795_000_000_000,
                dtls: DtlsIdentity::fixed_for_tests(),
            },
            [5; 32],
            t0,
        )
        .expect("client");
        let mut h = Harness {
            t0,
            now: t0,
            client,
            gateway,
            router,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            client_addr: SocketAddr::from(([10, 0, 0, 1], 50000)),
            gateway_addr: SocketAddr::from(([10, 0, 0, 2], 60000)),
            checkpoints: Vec::new(),
            http: Vec::new(),
            to_gateway: Vec::new(),
            candidate_batches: Vec::new(),
            ws_connects: Vec::new(),
            ws_phases: Vec::new(),
            ws_prepares: Vec::new(),
            prepared: false,
            ws_headers: Vec::new(),
            finished: None,
            finished_at: None,
            tube_ready: None,
            connected: None,
            opened: Vec::new(),
            closed: Vec::new(),
            received: BTreeMap::new(),
            terminal_output: Vec::new(),
            withhold_delivery: false,
            withhold_gateway_delivery: false,
            target_received: BTreeMap::new(),
            cfg,
        };
        let gaddr = h.gateway_addr;
        h.gateway_input(Input::LocalCandidate {
            addr: gaddr,
            kind: CandidateKind::Host,
        });
        h.gateway_input(Input::GatheringComplete);
        let caddr = h.client_addr;
        h.client_input(Input::LocalCandidate {
            addr: caddr,
            kind: CandidateKind::Host,
        });
        for i in 0..h.cfg.extra_candidates {
            h.client_input(Input::LocalCandidate {
                addr: SocketAddr::from(([192, 168, 77, 1], 40000 + i)),
                kind: CandidateKind::Host,
            });
        }
        if h.cfg.gathering_complete {
            h.client_input(Input::GatheringComplete);
        }
        h
    }

    fn since(&self) -> Duration {
        self.now - self.t0
    }

    fn schedule(&mut self, after: Duration, ev: Event) {
        self.seq += 1;
        self.events.insert(self.seq, ev);
        self.queue.push(Reverse((self.now + after, self.seq)));
    }

    /// Feed the client an input now (as a driver would).
    pub fn client_input(&mut self, input: Input) {
        let now = self.now;
        self.client.handle_input(input, now);
        self.drain_client();
    }

    /// Receive-side credit from the gateway's target of gateway connection `conn`.
    pub fn gateway_delivered(&mut self, conn: ConnNo, bytes: usize) {
        self.gateway_input(Input::Command(Command::Delivered { conn, bytes }));
    }

    pub fn command(&mut self, cmd: Command) {
        self.client_input(Input::Command(cmd));
    }

    fn gateway_input(&mut self, input: Input) {
        let now = self.now;
        self.gateway.handle_input(input, now);
        self.drain_gateway();
    }

    fn datagram(&mut self, d: crate::Datagram, to_gateway: bool) {
        let reachable = |a: SocketAddr| a == self.client_addr || a == self.gateway_addr;
        if self.cfg.drop_datagrams || !reachable(d.source) || !reachable(d.destination) {
            return;
        }
        let ev = if to_gateway {
            Event::ToGateway(Input::Datagram(d))
        } else {
            Event::ToClient(Input::Datagram(d))
        };
        self.schedule(PEER_ONE_WAY, ev);
    }

    fn drain_client(&mut self) {
        while let Some(out) = self.client.poll_output() {
            let at = self.since();
            match out {
                Output::Http(req) => {
                    self.http
                        .push((at, endpoint(&req.url), req.fresh_connection));
                    self.schedule(ROUTER_ONE_WAY, Event::RouterHttp(req));
                }
                Output::WsConnect(ws) if ws.phase == crate::WsPhase::Prepare => {
                    self.ws_prepares.push(at);
                    self.prepared = self.cfg.preconnect != Preconnect::Fails;
                    if !self.prepared {
                        let reason = "connection refused".to_string();
                        self.schedule(ROUTER_ONE_WAY, Event::ToClient(Input::WsClosed { reason }));
                    }
                }
                Output::WsConnect(ws) => {
                    self.ws_connects.push(at);
                    self.ws_phases.push(ws.phase);
                    self.ws_headers = ws.headers.clone();
                    let upgrade = ws.phase == crate::WsPhase::Upgrade;
                    if upgrade
                        && (!self.prepared || self.cfg.preconnect == Preconnect::GoneAtUpgrade)
                    {
                        let reason = "the prepared connection is gone".to_string();
                        self.schedule(Duration::ZERO, Event::ToClient(Input::WsClosed { reason }));
                    } else if !self.cfg.ws_never_opens {
                        self.schedule(ROUTER_ONE_WAY + WS_AUTH, Event::RouterWsOpen(ws.headers));
                    }
                    self.prepared = false;
                }
                Output::WsClose => {}
                Output::Transmit(d) => self.datagram(d, true),
                Output::Checkpoint(c) => self.checkpoints.push((at, c.name)),
                Output::Connected => self.connected = Some(at),
                Output::TubeReady => self.tube_ready = Some(at),
                Output::ConnectionOpened { conn } => self.opened.push(conn),
                Output::ConnectionData { conn, data } => {
                    let bytes = data.len();
                    self.received
                        .entry(conn)
                        .or_default()
                        .extend_from_slice(&data);
                    if !self.withhold_delivery {
                        let now = self.now;
                        self.client
                            .handle_input(Input::Command(Command::Delivered { conn, bytes }), now);
                    }
                }
                Output::ConnectionClosed { conn, reason } => self.closed.push((conn, reason)),
                Output::TerminalOutput(b) => {
                    self.terminal_output.extend_from_slice(&b);
                    if !self.withhold_delivery {
                        let (now, bytes) = (self.now, b.len());
                        self.client.handle_input(
                            Input::Command(Command::Delivered {
                                conn: super::TERMINAL_CONN,
                                bytes,
                            }),
                            now,
                        );
                    }
                }
                Output::Finished(r) if self.finished.is_none() => {
                    self.finished = Some(r);
                    self.finished_at = Some(at);
                }
                _ => {}
            }
        }
    }

    fn drain_gateway(&mut self) {
        while let Some(out) = self.gateway.poll_output() {
            match out {
                Output::ControllerReply { reply_to, payload } => {
                    self.schedule(
                        GATEWAY_ONE_WAY,
                        Event::RouterFromGateway { reply_to, payload },
                    );
                }
                Output::Transmit(d) => self.datagram(d, false),
                Output::ConnectTarget { conn } => {
                    let now = self.now;
                    self.gateway.handle_input(
                        Input::Command(Command::TargetConnected { conn, ok: true }),
                        now,
                    );
                }
                // The target echoes (a tunnel's echo server, a terminal's cooked-mode tty).
                Output::ConnectionData { conn, data } if self.withhold_gateway_delivery => {
                    self.target_received
                        .entry(conn)
                        .or_default()
                        .extend_from_slice(&data);
                }
                Output::ConnectionData { conn, data } => {
                    let now = self.now;
                    let bytes = data.len();
                    self.gateway
                        .handle_input(Input::Command(Command::Send { conn, data }), now);
                    self.gateway
                        .handle_input(Input::Command(Command::Delivered { conn, bytes }), now);
                }
                _ => {}
            }
        }
    }

    fn drain_router(&mut self) {
        while let Some(ev) = self.router.poll_event() {
            match ev {
                RouterEvent::HttpResponse { id, response } => self.schedule(
                    ROUTER_ONE_WAY,
                    Event::ToClient(Input::HttpResponse { id, response }),
                ),
                RouterEvent::WsSend { text, .. } => {
                    self.schedule(ROUTER_ONE_WAY, Event::ToClient(Input::WsMessage(text)))
                }
                RouterEvent::ToGateway {
                    reply_to,
                    stream,
                    payload,
                } => {
                    if let Ok(action) = GatewayAction::parse(&payload) {
                        let kind = action.kind().unwrap_or("").to_string();
                        self.to_gateway.push((self.since(), kind));
                    }
                    self.schedule(
                        GATEWAY_ONE_WAY,
                        Event::ToGateway(Input::ControllerMessage {
                            reply_to,
                            stream,
                            payload,
                        }),
                    );
                }
                RouterEvent::Log(_) => {}
            }
        }
    }

    fn dispatch(&mut self, ev: Event) {
        let now = self.now;
        match ev {
            Event::ToClient(i) => self.client_input(i),
            Event::ToGateway(i) => {
                if let Input::ControllerMessage { payload, .. } = &i {
                    self.count_candidates(payload);
                }
                self.gateway_input(i)
            }
            Event::RouterHttp(req) => {
                self.router.http_request(
                    req.id,
                    req.method,
                    &req.url,
                    &req.headers,
                    &req.body,
                    now,
                );
                self.drain_router();
            }
            Event::RouterWsOpen(headers) => {
                let input = match self.router.ws_open(1, &headers, now) {
                    Ok(()) => Input::WsOpened,
                    Err(status) => Input::WsClosed {
                        reason: format!("WebSocket upgrade refused: {status}"),
                    },
                };
                self.drain_router();
                self.schedule(ROUTER_ONE_WAY, Event::ToClient(input));
            }
            Event::RouterFromGateway { reply_to, payload } => {
                self.router.gateway_reply(reply_to, &payload, now);
                self.drain_router();
            }
        }
    }

    /// The gateway decrypts candidate batches itself; the harness only counts the candidate lines by
    /// asking the gateway's own parser through the tunnel key it shares with the client.
    fn count_candidates(&mut self, payload: &str) {
        let Ok(action) = GatewayAction::parse(payload) else {
            return;
        };
        if action.kind() != Some("icecandidate") {
            return;
        }
        let Some(plain) = action.data().and_then(|d| self.client.key.decrypt(d).ok()) else {
            return;
        };
        let list = crate::signaling::parse_candidates(&plain);
        self.candidate_batches
            .push(list.iter().filter(|c| !c.is_empty()).count());
    }

    /// Run until `stop` holds, the launch finished, nothing is left to do, or `limit` of virtual time
    /// passed since the start.
    pub fn run_until(&mut self, limit: Duration, mut stop: impl FnMut(&Harness) -> bool) {
        let deadline = self.t0 + limit;
        for _ in 0..2_000_000u32 {
            if stop(self) || self.finished.is_some() {
                return;
            }
            let next_event = self.queue.peek().map(|Reverse((t, _))| *t);
            let next_timer = [
                self.client.poll_timeout(),
                self.gateway.poll_timeout(),
                self.router.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = [next_event, next_timer].into_iter().flatten().min() else {
                return;
            };
            if next > deadline {
                self.now = deadline;
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            if next_event.is_some_and(|t| t <= now) {
                if let Some(Reverse((_, seq))) = self.queue.pop() {
                    if let Some(ev) = self.events.remove(&seq) {
                        self.dispatch(ev);
                    }
                }
                continue;
            }
            if self.client.poll_timeout().is_some_and(|t| t <= now) {
                self.client_input(Input::Timeout);
            }
            if self.gateway.poll_timeout().is_some_and(|t| t <= now) {
                self.gateway_input(Input::Timeout);
            }
            if self.router.poll_timeout().is_some_and(|t| t <= now) {
                self.router.handle_timeout(now);
                self.drain_router();
            }
        }
        panic!("the harness did not settle (a busy loop?)");
    }

    /// Run until the tube is ready (or the launch ended), at most 60 virtual seconds.
    pub fn run_until_ready(&mut self) {
        self.run_until(Duration::from_secs(60), |h| h.tube_ready.is_some());
    }

    /// Run until the launch ended, at most 120 virtual seconds.
    pub fn run_until_finished(&mut self) {
        self.run_until(Duration::from_secs(120), |_| false);
    }

    /// Run for `d` more virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let limit = self.since() + d;
        self.run_until(limit, |_| false);
    }

    pub fn tube_ready_at(&self) -> Option<Duration> {
        self.tube_ready
    }

    /// When the first checkpoint called `name` was emitted.
    pub fn checkpoint_at(&self, name: &str) -> Option<Duration> {
        self.checkpoints
            .iter()
            .find(|(_, n)| n == name)
            .map(|(t, _)| *t)
    }

    pub fn checkpoint_names(&self) -> Vec<&str> {
        self.checkpoints.iter().map(|(_, n)| n.as_str()).collect()
    }

    /// The endpoint names of every HTTP request, in order.
    pub fn http_paths(&self) -> Vec<String> {
        self.http.iter().map(|(_, p, _)| p.clone()).collect()
    }

    /// How many HTTP requests went out strictly before `t`.
    pub fn http_sent_before(&self, t: Duration) -> usize {
        self.http.iter().filter(|(at, _, _)| *at < t).count()
    }

    /// When each offer (`kind:"start"`) action reached the gateway.
    pub fn offers_delivered(&self) -> Vec<Duration> {
        self.to_gateway
            .iter()
            .filter(|(_, k)| k == "start")
            .map(|(t, _)| *t)
            .collect()
    }

    /// When each `send_controller_message` left the client.
    pub fn controller_messages_sent(&self) -> Vec<Duration> {
        self.http
            .iter()
            .filter(|(_, p, _)| p == "send_controller_message")
            .map(|(t, _, _)| *t)
            .collect()
    }
}

/// `https://h/api/user/bind_to_controller/X?y` → `bind_to_controller`.
fn endpoint(url: &str) -> String {
    let path = url.split_once("/api/user/").map(|(_, p)| p).unwrap_or(url);
    let path = path.split(['?', '/']).next().unwrap_or(path);
    path.to_string()
}
