//! The client role: what `pam launch` / `pam tunnel start` do, as one sans-IO state machine.
//!
//! ```text
//!            ┌ relay_access_creds ┐ (Commander profiles only: str0m has no TURN client)
//!  start ────┼ bind_to_controller ┼─► WebSocket ──► (backend delay) ─► offer attempts ─► ICE flush
//!            └ create_tube (Peer) ┘                     ▲ retry with catch-up ┘
//!  WS answer ─► Peer.accept_answer ─► ICE/DTLS ─► connected ─► (open delay) ─► channel open ─► OpenConnection
//! ```
//!
//! The machine is written as a *reconciler*: every input updates a few facts, then [`Client::advance`]
//! starts whatever those facts now allow. That is what makes the ordering of gathering, offer, answer and
//! batch POSTs irrelevant to correctness: no step depends on *when* another one happened, only on *whether*.
//! Which steps wait for which — and every fixed sleep — comes from the [`Profile`], so the same code runs
//! Commander's historical schedules and pam-lite's own `fast` one.

use core::net::SocketAddr;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::json;

use crate::guac::client::{
    ClientEvent as TerminalEvent, InputMode, TerminalClient, TerminalConfig,
};
use crate::ice_batch::IceBatcher;
use crate::offer::{icecandidate_inputs, LaunchOffer, StartInputs};
use crate::offer_retry::{AttemptFailure, Decision, OfferRetry};
use crate::profile::Profile;
use crate::router::endpoints::{self, RouterCallError};
use crate::router::envelope::{ServerPublicKey, Tokens};
use crate::rtc::{Peer, PeerEvent, Role};
use crate::signaling::{self, ConversationId, GatewayAction, GatewayData, TunnelKey};
use crate::timing::{
    names, Checkpoint, PHASE_CLI_SESSION as CLI_SESSION, PHASE_TOTAL as TOTAL,
    PHASE_WEBRTC_TUNNEL as WEBRTC_TUNNEL,
};
use crate::tube::conns::{Connections, Role as TubeRole, TubeEvent};
use crate::tube::{CloseReason, Outbox};
use crate::{
    CandidateKind, Command, HttpRequest, HttpResponse, Input, LaunchError, Node, Output, RequestId,
    Seed, WsConnect,
};

/// What the launch opens once the tube is up.
#[derive(Debug, Clone, PartialEq)]
pub enum Session {
    /// `pam launch`: connection 1 carries a Guacamole terminal session run by the core.
    Terminal(TerminalSettings),
    /// `pam tunnel start`: the user opens connections ([`Command::OpenConnection`]).
    Tunnel,
}

/// The terminal the user sees, and the guacd parameters the offer carries.
#[derive(Debug, Clone, PartialEq)]
pub struct TerminalSettings {
    pub cols: u16,
    pub rows: u16,
    /// `--stdin`: input is a script piped to a STDIN stream instead of key events.
    pub stdin_mode: bool,
    /// Values for guacd's `args` (`hostname`, `port`, `username`, …). May hold secrets.
    pub guacd_params: BTreeMap<String, String>,
}

/// Everything a launch needs; the CLI fills it from a launch ticket (or the emulator) plus the environment.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://connect.<host>` or, for the emulator, `http://127.0.0.1:PORT`.
    pub router_url: String,
    /// The Keeper session token (raw bytes). Secret.
    pub session_token: Vec<u8>,
    /// The router's public key the transmission key is encrypted to.
    pub server_key: ServerPublicKey,
    pub gateway_uid: String,
    pub record_uid: String,
    /// The record's `trafficEncryptionSeed`. Secret. Must not be empty (Commander bug §10.8 is refused).
    pub traffic_seed: Vec<u8>,
    /// What the offer carries besides the SDP (conversation type, target, guacd parameters, credential).
    pub offer: LaunchOffer,
    pub session: Session,
    pub trickle_ice: bool,
    pub profile: Profile,
    /// Wall-clock Unix milliseconds at the start instant (frame timestamps); the core never reads a clock.
    pub unix_ms_at_start: u64,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("router_url", &self.router_url)
            .field("gateway_uid", &self.gateway_uid)
            .field("record_uid", &self.record_uid)
            .field("conversation_type", &self.offer.conversation_type)
            .field("trickle_ice", &self.trickle_ice)
            .field("profile", &self.profile.name)
            .finish_non_exhaustive()
    }
}

/// What an in-flight HTTP request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    RelayCreds,
    Bind,
    /// The one-off online check of the `fast` profile.
    OnlineCheck,
    /// get_controllers before the offer attempt (Commander's per-action pre-check).
    OfferPrecheck,
    Offer,
    /// get_controllers before a candidate batch.
    CandidatePrecheck,
    Candidates,
}

/// Named deadlines. Each one is a bound on a wait or a profile sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    WsReady,
    BackendDelay,
    PreOffer,
    CatchUp,
    Gather,
    Connect,
    PollTick,
    OpenDelay,
    OpenRetry,
    /// Event-driven profiles: the bound on waiting for the data channel after `connected`.
    ChannelOpen,
    GuacReady,
    CloseFlush,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    NotStarted,
    Running,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WsState {
    Closed,
    Connecting,
    Open,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OfferStep {
    /// Waiting for its preconditions (tube, WS, delays).
    Waiting,
    BackendDelay,
    PreOffer,
    /// Attempt in flight (pre-check or send).
    InFlight,
    CatchUp,
    Done,
}

/// The client role state machine. See the module docs.
pub struct Client {
    cfg: ClientConfig,
    rng: ChaCha20Rng,
    start: Option<Instant>,
    now: Instant,
    conv: ConversationId,
    nonce: [u8; 16],
    key: TunnelKey,
    /// The launch's one transmission-key triple (trickle shares it between WS, offer and candidates).
    tokens: Tokens,
    next_request: RequestId,
    /// What each in-flight request is for, and the tokens that will open its answer.
    calls: HashMap<RequestId, (Call, Tokens)>,
    outputs: VecDeque<Output>,
    timers: BTreeMap<Timer, Instant>,

    relay: Step,
    bind: Step,
    cookie: Option<String>,
    online: Option<bool>,
    online_step: Step,
    ws: WsState,
    ws_started_at: Option<Instant>,
    gathering_complete: bool,
    local_candidates: Vec<(SocketAddr, CandidateKind)>,
    peer: Option<Peer>,
    offer_sdp: Option<String>,

    offer: OfferStep,
    retry: OfferRetry,
    attempt: u32,
    answer_applied: bool,
    early_remote_candidates: Vec<String>,
    batcher: IceBatcher,
    batch_in_flight: Option<Vec<String>>,

    /// When Commander's main thread would start polling the connection state.
    poll_origin: Option<Instant>,
    connected_at: Option<Instant>,
    data_plane_seen: bool,
    open_step: Step,
    open_attempt: u32,
    channel_open: bool,
    tube_ready: bool,
    conns: Option<Connections>,
    outbox: Outbox,
    blocked_write: Option<Vec<u8>>,
    terminal: Option<TerminalClient>,
    guac_ready: bool,
    closing: bool,
    finished: bool,
}

impl Client {
    /// A new launch. `seed` feeds every random value pam-lite draws itself (conversation id, nonce,
    /// transmission key); `now` is the launch's time zero. Fails only on a configuration that cannot work.
    pub fn new(cfg: ClientConfig, seed: Seed, now: Instant) -> Result<Self, LaunchError> {
        if cfg.traffic_seed.is_empty() {
            return Err(LaunchError::Config(
                "the record has no trafficEncryptionSeed; the gateway could never decrypt the offer".into(),
            ));
        }
        if cfg.session_token.is_empty() {
            return Err(LaunchError::Config("empty session token".into()));
        }
        endpoints::validate_base_url(&cfg.router_url)
            .map_err(|e| LaunchError::Config(format!("router URL: {e}")))?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let conv = ConversationId::random(&mut rng);
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let key = TunnelKey::derive(&cfg.traffic_seed, &nonce);
        let tokens = Tokens::new(&cfg.session_token, &cfg.server_key, &mut rng);
        let profile = &cfg.profile;
        let retry = OfferRetry::new(profile.offer_max_attempts, profile.offer_catchup_delay());
        let batcher = IceBatcher::new(profile.batch_candidates);
        Ok(Client {
            rng,
            start: None,
            now,
            conv,
            nonce,
            key,
            tokens,
            next_request: 1,
            calls: HashMap::new(),
            outputs: VecDeque::new(),
            timers: BTreeMap::new(),
            relay: Step::NotStarted,
            bind: Step::NotStarted,
            cookie: None,
            online: None,
            online_step: Step::NotStarted,
            ws: WsState::Closed,
            ws_started_at: None,
            gathering_complete: false,
            local_candidates: Vec::new(),
            peer: None,
            offer_sdp: None,
            offer: OfferStep::Waiting,
            retry,
            attempt: 0,
            answer_applied: false,
            early_remote_candidates: Vec::new(),
            batcher,
            batch_in_flight: None,
            poll_origin: None,
            connected_at: None,
            data_plane_seen: false,
            open_step: Step::NotStarted,
            open_attempt: 0,
            channel_open: false,
            tube_ready: false,
            conns: None,
            outbox: Outbox::new(),
            blocked_write: None,
            terminal: None,
            guac_ready: false,
            closing: false,
            finished: false,
            cfg,
        })
    }

    /// The conversation id (standard base64, the form `pam launch` registers for WS routing).
    pub fn conversation_id(&self) -> String {
        self.conv.std()
    }

    /// Whether the launch has ended.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether the tunnel can take another [`Command::Send`] for `conn` without growing its queue past
    /// the high-water mark (drivers stop reading the local socket while this is false).
    pub fn can_send(&self) -> bool {
        self.outbox.bytes() == 0 && self.conns.as_ref().is_some_and(|c| c.is_writable())
    }

    fn profile(&self) -> &Profile {
        &self.cfg.profile
    }

    // ------------------------------------------------------------------ outputs and helpers

    fn checkpoint(&mut self, phase: &'static str, name: impl Into<String>) {
        self.outputs.push_back(Output::Checkpoint(Checkpoint {
            phase,
            name: name.into(),
            at: self.now,
        }));
    }

    fn arm(&mut self, timer: Timer, after: Duration) {
        self.timers.insert(timer, self.now + after);
    }

    fn due(&mut self, timer: Timer) -> bool {
        match self.timers.get(&timer) {
            Some(at) if *at <= self.now => {
                self.timers.remove(&timer);
                true
            }
            _ => false,
        }
    }

    fn finish(&mut self, result: Result<(), LaunchError>) {
        if self.finished {
            return;
        }
        if let Err(e) = &result {
            tracing::warn!(error = %e, "launch failed");
        }
        self.finished = true;
        self.timers.clear();
        if let Some(conns) = self.conns.as_mut() {
            conns.close_all(CloseReason::Normal);
        }
        self.pump_tube();
        if let Some(peer) = self.peer.as_mut() {
            peer.close(self.now);
        }
        self.pump_peer();
        if self.ws != WsState::Closed {
            self.outputs.push_back(Output::WsClose);
            self.ws = WsState::Closed;
        }
        self.outputs.push_back(Output::Finished(result));
    }

    fn request(&mut self, call: Call, tokens: Tokens, mut req: HttpRequest) {
        let id = self.next_request;
        self.next_request += 1;
        req.id = id;
        self.calls.insert(id, (call, tokens));
        self.outputs.push_back(Output::Http(req));
    }

    fn base(&self) -> &str {
        &self.cfg.router_url
    }

    /// Tokens for one call: the shared triple in trickle mode (the router ties the WS to it), a fresh
    /// one per request otherwise (as Commander does).
    fn tokens_for(&mut self, shared: bool) -> Result<Tokens, LaunchError> {
        if shared {
            Ok(self.tokens.clone())
        } else {
            Ok(Tokens::new(
                &self.cfg.session_token,
                &self.cfg.server_key,
                &mut self.rng,
            ))
        }
    }

    fn unix_ms(&self) -> u64 {
        let since = self
            .start
            .map(|s| self.now.saturating_duration_since(s))
            .unwrap_or_default();
        self.cfg.unix_ms_at_start + since.as_millis() as u64
    }

    // ------------------------------------------------------------------ the reconciler

    /// Start everything the current facts allow. Called after every input.
    fn advance(&mut self) {
        if self.finished {
            return;
        }
        let now = self.now;
        if self.start.is_none() {
            self.start = Some(now);
            self.checkpoint(WEBRTC_TUNNEL, names::ENTER);
        }
        let trickle = self.cfg.trickle_ice;
        let p = self.profile().clone();

        // 1. relay credentials (Commander only), serial before everything else.
        if self.relay == Step::NotStarted {
            if p.fetch_relay_creds {
                self.relay = Step::Running;
                let tokens = match self.tokens_for(false) {
                    Ok(t) => t,
                    Err(e) => return self.finish(Err(e)),
                };
                let req = endpoints::relay_access_creds(
                    self.base(),
                    &tokens,
                    p.fresh_connections,
                    p.http_timeout,
                );
                self.request(Call::RelayCreds, tokens, req);
            } else {
                self.relay = Step::Done;
            }
        }
        let relay_done = self.relay == Step::Done;

        // 2. one online check in parallel (fast), instead of one per action.
        if p.online_check_once && self.online_step == Step::NotStarted {
            self.online_step = Step::Running;
            let tokens = self.tokens.clone();
            let req = endpoints::get_controllers(self.base(), &tokens, false, p.http_timeout);
            self.request(Call::OnlineCheck, tokens, req);
        }

        // 3. bind_to_controller (trickle only): ALB stickiness cookie for the WS and POSTs.
        if trickle && relay_done && self.bind == Step::NotStarted {
            self.bind = Step::Running;
            // Commander binds through the `requests.Session` that later carries the offer and the
            // candidates, so this request opens the launch's keep-alive connection in every profile.
            let req = endpoints::bind_to_controller(
                self.base(),
                &self.cfg.gateway_uid,
                false,
                p.http_timeout.min(Duration::from_secs(10)),
            );
            let tokens = self.tokens.clone();
            self.request(Call::Bind, tokens, req);
        }
        let bind_done = !trickle || self.bind == Step::Done;

        // 4. create_tube: the Peer and its offer.
        let tube_allowed = if !trickle {
            // Non-trickle: gathering must be complete so every candidate is inside the offer.
            relay_done && (self.gathering_complete || self.due(Timer::Gather))
        } else if p.candidates_in_offer {
            // Wait until the WS is open (the offer cannot go earlier anyway), so every candidate the
            // driver reported by then is inside the offer.
            bind_done && (self.ws == WsState::Open || self.gathering_complete)
        } else {
            bind_done && (p.websocket_early || self.ws == WsState::Closed)
        };
        if !trickle
            && relay_done
            && self.peer.is_none()
            && !self.timers.contains_key(&Timer::Gather)
        {
            self.arm(Timer::Gather, ICE_GATHER_TIMEOUT);
        }

        // 5. WebSocket: early (parallel with create_tube) or after it.
        let ws_allowed = bind_done && relay_done && (p.websocket_early || self.peer.is_some());
        // Commander opens the WS in non-trickle mode too (for late messages); `fast` needs no WS there.
        let want_ws = trickle || p.fetch_relay_creds;
        if want_ws && ws_allowed && self.ws == WsState::Closed && self.ws_started_at.is_none() {
            self.start_ws();
        }
        if tube_allowed && self.peer.is_none() {
            // The gathering bound is over either way; a deadline left behind would make
            // `poll_timeout` report a past instant forever (a busy loop; found by proptest).
            self.timers.remove(&Timer::Gather);
            if let Err(e) = self.create_tube() {
                return self.finish(Err(e));
            }
            if want_ws && self.ws_started_at.is_none() && bind_done {
                self.start_ws();
            }
        }

        // 6. the offer: delays, then attempts with retry.
        self.advance_offer();
        if self.finished {
            return;
        }

        // 7. candidate batches.
        self.advance_candidates();

        // 8. data plane.
        self.advance_data_plane();
    }

    fn start_ws(&mut self) {
        let p = self.profile().clone();
        let tokens = if self.cfg.trickle_ice {
            self.tokens.clone()
        } else {
            match self.tokens_for(false) {
                Ok(t) => t,
                Err(e) => return self.finish(Err(e)),
            }
        };
        let mut headers = tokens.headers();
        if let Some(c) = &self.cookie {
            headers.push(("Cookie".into(), c.clone()));
        }
        self.ws = WsState::Connecting;
        self.ws_started_at = Some(self.now);
        self.outputs.push_back(Output::WsConnect(WsConnect {
            url: endpoints::ws_url(self.base()),
            headers,
            timeout: p.ws_ready_timeout,
        }));
        if self.ws_required() {
            self.arm(Timer::WsReady, p.ws_ready_timeout);
        }
        let name = if p.websocket_early {
            names::WEBSOCKET_LISTENER_STARTED_EARLY
        } else {
            names::WEBSOCKET_LISTENER_STARTED
        };
        self.checkpoint(WEBRTC_TUNNEL, name);
    }

    fn create_tube(&mut self) -> Result<(), LaunchError> {
        let now = self.now;
        let in_offer = !self.cfg.trickle_ice || self.profile().candidates_in_offer;
        let mut peer = Peer::new(Role::Offerer, &self.conv.std(), now);
        if in_offer {
            for (addr, kind) in self.local_candidates.clone() {
                peer.add_local_candidate(addr, kind, now);
            }
        }
        let sdp = peer
            .create_offer(now)
            .map_err(|e| LaunchError::Protocol(e.to_string()))?;
        if !in_offer {
            // Commander's Rust starts gathering after set_local_description: every candidate trickles.
            for (addr, kind) in self.local_candidates.clone() {
                if let Some(c) = peer.add_local_candidate(addr, kind, now) {
                    self.batcher.push(c);
                }
            }
        }
        self.offer_sdp = Some(sdp);
        self.peer = Some(peer);
        self.checkpoint(WEBRTC_TUNNEL, names::CREATE_TUBE_OK);
        self.pump_peer();
        Ok(())
    }

    fn advance_offer(&mut self) {
        let p = self.profile().clone();
        let trickle = self.cfg.trickle_ice;
        loop {
            match self.offer {
                OfferStep::Waiting => {
                    if self.peer.is_none() {
                        return;
                    }
                    if trickle {
                        if self.ws != WsState::Open {
                            return;
                        }
                        if p.backend_delay_before_offer {
                            self.offer = OfferStep::BackendDelay;
                            self.arm(Timer::BackendDelay, p.websocket_backend_delay);
                            continue;
                        }
                    } else if p.non_trickle_waits_for_ws {
                        if self.ws != WsState::Open {
                            return;
                        }
                        self.offer = OfferStep::BackendDelay;
                        self.arm(Timer::BackendDelay, p.websocket_backend_delay);
                        continue;
                    } else {
                        self.checkpoint(WEBRTC_TUNNEL, names::NON_TRICKLE_SKIP_BACKEND_DELAY);
                    }
                    if p.backend_delay_before_offer {
                        self.begin_pre_offer(&p);
                    } else {
                        self.start_attempt();
                    }
                }
                OfferStep::BackendDelay => {
                    if !self.due(Timer::BackendDelay) {
                        return;
                    }
                    self.checkpoint(WEBRTC_TUNNEL, names::WEBSOCKET_READY_BACKEND_DELAY_DONE);
                    self.begin_pre_offer(&p);
                }
                OfferStep::PreOffer => {
                    if !self.due(Timer::PreOffer) {
                        return;
                    }
                    self.checkpoint(WEBRTC_TUNNEL, names::PRE_OFFER_SLEEP_DONE);
                    self.start_attempt();
                }
                OfferStep::CatchUp => {
                    if !self.due(Timer::CatchUp) {
                        return;
                    }
                    if self.retry.logs_catchup() {
                        self.checkpoint(
                            WEBRTC_TUNNEL,
                            names::GATEWAY_OFFER_BACKEND_CATCHUP_DELAY_DONE,
                        );
                    }
                    self.start_attempt();
                }
                OfferStep::InFlight | OfferStep::Done => return,
            }
        }
    }

    fn begin_pre_offer(&mut self, p: &Profile) {
        self.checkpoint(WEBRTC_TUNNEL, names::PRE_OFFER_SLEEP_START);
        self.offer = OfferStep::PreOffer;
        self.arm(Timer::PreOffer, p.pre_offer_delay);
    }

    fn start_attempt(&mut self) {
        self.attempt = self.retry.begin_attempt();
        self.offer = OfferStep::InFlight;
        self.checkpoint(
            WEBRTC_TUNNEL,
            names::gateway_offer_http_attempt(self.attempt),
        );
        if self.profile().precheck_each_action {
            self.send_precheck(Call::OfferPrecheck);
        } else if self.online == Some(false) {
            let gateway_uid = self.cfg.gateway_uid.clone();
            self.offer_failed(AttemptFailure::GatewayNotOnline { gateway_uid });
        } else {
            self.send_offer();
        }
    }

    fn send_precheck(&mut self, call: Call) {
        let p = self.profile().clone();
        match self.tokens_for(false) {
            Ok(tokens) => {
                let req = endpoints::get_controllers(
                    self.base(),
                    &tokens,
                    p.fresh_connections,
                    p.http_timeout,
                );
                self.request(call, tokens, req);
            }
            Err(e) => self.finish(Err(e)),
        }
    }

    /// The encrypted offer `data`: the typed [`OfferData`](crate::offer::OfferData) plus the SDP.
    fn offer_payload(&mut self) -> String {
        let sdp = self.offer_sdp.clone().unwrap_or_default();
        let offer_b64 = B64.encode(signaling::ensure_max_message_size(&sdp));
        let plaintext = self.cfg.offer.data.to_json(&offer_b64);
        self.key.encrypt(&plaintext, &mut self.rng)
    }

    fn send_offer(&mut self) {
        let data = self.offer_payload();
        let offer = &self.cfg.offer;
        let inputs = StartInputs {
            record_uid: self.cfg.record_uid.clone(),
            base64_nonce: B64.encode(self.nonce),
            conversation_type: offer.conversation_type.clone(),
            data,
            trickle_ice: self.cfg.trickle_ice,
            credential: offer.credential.clone(),
            two_factor_value: offer.two_factor_value.clone(),
        };
        let action = GatewayAction {
            conversation_id: self.conv.url(),
            inputs: inputs.to_map(),
            message_id: Some(self.conv.url()),
        };
        let p = self.profile().clone();
        let timeout = if self.cfg.offer.ephemeral() {
            p.offer_timeout_ephemeral
        } else {
            p.offer_timeout
        };
        let trickle = self.cfg.trickle_ice;
        let tokens = match self.tokens_for(trickle) {
            Ok(t) => t,
            Err(e) => return self.finish(Err(e)),
        };
        // Non-streaming: the router holds the request until the gateway answers, so our bound must
        // cover the router's own wait.
        let http_timeout = if trickle {
            p.http_timeout
        } else {
            timeout + p.http_timeout
        };
        let message = endpoints::controller_message(
            &self.cfg.gateway_uid,
            &self.conv,
            &action,
            trickle,
            timeout,
        );
        let req = endpoints::send_controller_message(
            &self.cfg.router_url,
            &tokens,
            &message,
            self.cookie.as_deref(),
            !trickle && p.fresh_connections,
            http_timeout,
            &mut self.rng,
        );
        self.request(Call::Offer, tokens, req);
    }

    /// Whether the offer waits for the WebSocket: always in trickle mode (the answer comes over it), and
    /// in non-trickle mode only for schedules before PR #1984.
    fn ws_required(&self) -> bool {
        self.cfg.trickle_ice || self.cfg.profile.non_trickle_waits_for_ws
    }

    fn offer_failed(&mut self, failure: AttemptFailure) {
        // The one-off online check already said the gateway is offline: that is the real reason
        // (the router only says RRC_CONTROLLER_DOWN), and it is what the user must read.
        let failure = match failure {
            AttemptFailure::Router { .. } | AttemptFailure::Http { .. }
                if self.online == Some(false) =>
            {
                AttemptFailure::GatewayNotOnline {
                    gateway_uid: self.cfg.gateway_uid.clone(),
                }
            }
            other => other,
        };
        tracing::info!(attempt = self.attempt, failure = %failure.commander_message(), "offer attempt failed");
        match self.retry.on_failure(&failure, self.now) {
            Decision::RetryAt { at, .. } => {
                self.offer = OfferStep::CatchUp;
                if self.retry.logs_catchup() {
                    self.checkpoint(
                        WEBRTC_TUNNEL,
                        names::GATEWAY_OFFER_BACKEND_CATCHUP_DELAY_START,
                    );
                }
                self.timers.insert(Timer::CatchUp, at);
            }
            Decision::GiveUp(e) => self.finish(Err(e)),
        }
    }

    fn offer_succeeded(&mut self, payload: Option<Vec<u8>>) {
        self.offer = OfferStep::Done;
        self.checkpoint(WEBRTC_TUNNEL, names::GATEWAY_OFFER_HTTP_DONE);
        if self.cfg.trickle_ice {
            self.batcher.open();
            // Commander's main thread flushes the candidates before it polls; an event-driven profile
            // watches the connection from the moment the offer is through.
            if self.batcher.is_idle() || self.cfg.profile.poll_interval.is_none() {
                self.main_thread_free();
            }
        } else {
            let answer = endpoints::parse_controller_response(payload.as_deref())
                .map_err(|e| LaunchError::Protocol(e.to_string()))
                .and_then(|value| {
                    signaling::non_streaming_answer(&self.key, value.as_ref())
                        .map_err(LaunchError::Gateway)
                });
            match answer {
                Ok(GatewayData::Answer(sdp)) => {
                    self.apply_answer(&sdp);
                    self.main_thread_free();
                }
                Ok(other) => self.finish(Err(LaunchError::Protocol(format!(
                    "expected an SDP answer in the offer response, got {other:?}"
                )))),
                Err(e) => self.finish(Err(e)),
            }
        }
    }

    /// Commander's main thread finished the offer and its batch flush and starts polling the
    /// connection state: from here the connect timeout runs and poll ticks count.
    fn main_thread_free(&mut self) {
        if self.poll_origin.is_some() {
            return;
        }
        self.poll_origin = Some(self.now);
        let p = self.profile().clone();
        let summary = if self.cfg.trickle_ice {
            names::WEBRTC_TUNNEL_OPEN_OK_STREAMING
        } else {
            names::WEBRTC_TUNNEL_OPEN_OK_NON_STREAMING
        };
        self.checkpoint(WEBRTC_TUNNEL, summary);
        self.checkpoint(CLI_SESSION, names::CLI_SESSION_TRY_ENTER);
        self.arm(Timer::Connect, p.connect_timeout);
    }

    fn apply_answer(&mut self, sdp: &str) {
        let now = self.now;
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if !peer.awaiting_answer() {
            tracing::debug!("ignoring a second answer");
            return;
        }
        if let Err(e) = peer.accept_answer(sdp, now) {
            return self.finish(Err(LaunchError::Protocol(format!("gateway answer: {e}"))));
        }
        self.answer_applied = true;
        self.checkpoint(WEBRTC_TUNNEL, names::SDP_ANSWER_APPLIED);
        for c in std::mem::take(&mut self.early_remote_candidates) {
            self.add_remote_candidate(&c);
        }
        self.pump_peer();
    }

    fn add_remote_candidate(&mut self, c: &str) {
        if !self.answer_applied {
            if self.early_remote_candidates.len() < MAX_CANDIDATES {
                self.early_remote_candidates.push(c.to_string());
            } else {
                tracing::warn!("too many gateway candidates before the answer; dropping one");
            }
            return;
        }
        let now = self.now;
        if let Some(peer) = self.peer.as_mut() {
            if let Err(e) = peer.add_remote_candidate(c, now) {
                tracing::warn!(error = %e, "ignoring a gateway candidate");
            }
        }
    }

    fn advance_candidates(&mut self) {
        if !self.cfg.trickle_ice || self.batch_in_flight.is_some() || self.ws != WsState::Open {
            return;
        }
        let Some(batch) = self.batcher.next_batch() else {
            return;
        };
        self.batch_in_flight = Some(batch);
        if self.profile().precheck_each_action {
            self.send_precheck(Call::CandidatePrecheck);
        } else {
            self.send_candidates();
        }
    }

    fn send_candidates(&mut self) {
        let Some(batch) = self.batch_in_flight.clone() else {
            return;
        };
        let plaintext = json!({ "candidates": batch }).to_string();
        let data = self.key.encrypt(plaintext.as_bytes(), &mut self.rng);
        // Commander bug §10.5 kept on purpose: the gateway only accepts what Commander sends.
        let inputs = icecandidate_inputs(
            &self.cfg.record_uid,
            &B64.encode(self.nonce),
            "tunnel",
            &data,
            true,
        );
        let action = GatewayAction {
            conversation_id: self.conv.std(),
            inputs,
            message_id: Some(self.conv.url()),
        };
        let p = self.profile().clone();
        let tokens = self.tokens.clone();
        let message = endpoints::controller_message(
            &self.cfg.gateway_uid,
            &self.conv,
            &action,
            true,
            p.gateway_timeout,
        );
        let req = endpoints::send_controller_message(
            &self.cfg.router_url,
            &tokens,
            &message,
            self.cookie.as_deref(),
            false,
            p.http_timeout,
            &mut self.rng,
        );
        self.request(Call::Candidates, tokens, req);
    }

    fn candidates_done(&mut self, ok: bool) {
        self.batch_in_flight = None;
        if ok {
            self.batcher.batch_done();
        } else if !self.batcher.batch_failed() {
            tracing::warn!("a candidate batch could not be delivered after retries");
        }
        if self.batcher.is_idle() && self.offer == OfferStep::Done {
            self.main_thread_free();
        }
    }

    fn advance_data_plane(&mut self) {
        let p = self.profile().clone();
        if self.due(Timer::Connect) && !self.data_plane_seen {
            return self.finish(Err(LaunchError::Timeout {
                what: "the WebRTC connection (ICE + DTLS)",
                waited: p.connect_timeout,
            }));
        }
        // Observe `connected` the way the profile does: at once (events), or on the first poll tick of
        // Commander's main thread at or after the moment ICE + DTLS came up.
        if !self.data_plane_seen {
            if let (Some(origin), Some(connected)) = (self.poll_origin, self.connected_at) {
                let seen_at = match p.poll_interval {
                    None => connected.max(origin),
                    Some(tick) => poll_tick_after(origin, connected, tick),
                };
                if self.now >= seen_at {
                    self.data_plane_seen = true;
                    self.timers.remove(&Timer::Connect);
                    self.timers.remove(&Timer::PollTick);
                    self.checkpoint(CLI_SESSION, names::WEBRTC_DATA_PLANE_CONNECTED);
                    self.arm(Timer::OpenDelay, p.open_connection_delay);
                    self.open_step = Step::Running;
                } else {
                    self.timers.insert(Timer::PollTick, seen_at);
                }
            }
        }
        if self.open_step == Step::Running && self.due(Timer::OpenDelay) {
            self.checkpoint(CLI_SESSION, names::OPEN_CONNECTION_DELAY_DONE);
            self.try_open();
        }
        if self.open_step == Step::Running && self.due(Timer::OpenRetry) {
            self.try_open();
        }
        if self.open_step == Step::Running && self.due(Timer::ChannelOpen) && !self.channel_open {
            return self.finish(Err(LaunchError::Timeout {
                what: "the data channel to open",
                waited: p.connect_timeout,
            }));
        }
        if self.due(Timer::GuacReady) && !self.guac_ready {
            // Commander only warns here; so do we (the session may still come up).
            self.checkpoint(CLI_SESSION, names::GUACAMOLE_WAIT_FOR_READY_TIMEOUT);
        }
        if self.due(Timer::CloseFlush) {
            self.finish(Ok(()));
        }
    }

    /// OpenConnection with Commander's retry: only when the data channel is not open yet.
    fn try_open(&mut self) {
        if self.channel_open {
            self.open_step = Step::Done;
            self.tube_ready = true;
            self.outputs.push_back(Output::TubeReady);
            if let Session::Terminal(t) = self.cfg.session.clone() {
                if let Some(conns) = self.conns.as_mut() {
                    if let Err(e) = conns.open(1) {
                        return self.finish(Err(LaunchError::Protocol(e.to_string())));
                    }
                }
                self.terminal = Some(TerminalClient::new(terminal_config(&t)));
                self.arm(Timer::GuacReady, GUAC_READY_TIMEOUT);
            }
            self.checkpoint(CLI_SESSION, names::OPEN_CONNECTION_SENT_OK);
            self.pump_tube();
            return;
        }
        let p = self.profile().clone();
        if p.poll_interval.is_none() {
            // Event-driven: `ChannelOpen` calls us again; no retry ladder, just a bound (SCTP may need
            // retransmissions on a lossy path, which Commander's 1.5 s ladder does not allow for).
            if !self.timers.contains_key(&Timer::ChannelOpen) {
                self.arm(Timer::ChannelOpen, p.connect_timeout);
            }
            return;
        }
        if self.open_attempt + 1 >= p.open_connection_attempts {
            return self.finish(Err(LaunchError::Timeout {
                what: "the data channel to open",
                waited: p.open_connection_backoff * ((1 << p.open_connection_attempts) - 1),
            }));
        }
        let wait = p.open_connection_backoff * (1u32 << self.open_attempt.min(16));
        self.open_attempt += 1;
        self.arm(Timer::OpenRetry, wait);
    }

    // ------------------------------------------------------------------ pumps

    fn pump_peer(&mut self) {
        let now = self.now;
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        while let Some(d) = peer.poll_transmit() {
            self.outputs.push_back(Output::Transmit(d));
        }
        let mut events = Vec::new();
        while let Some(e) = peer.poll_event() {
            events.push(e);
        }
        for e in events {
            match e {
                PeerEvent::Connected => {
                    self.connected_at = Some(now);
                    self.outputs.push_back(Output::Connected);
                }
                PeerEvent::ChannelOpen => {
                    self.channel_open = true;
                    let mut conns = Connections::new(TubeRole::Client, now);
                    conns.set_unix_ms_base(self.unix_ms(), now);
                    self.conns = Some(conns);
                    self.checkpoint(CLI_SESSION, names::DATA_CHANNEL_OPEN);
                    // An event-driven profile opens the moment the channel is up; Commander's
                    // schedule only notices at its next backoff tick, which its timer keeps.
                    let event_driven = self.cfg.profile.poll_interval.is_none();
                    if event_driven
                        && self.open_step == Step::Running
                        && !self.timers.contains_key(&Timer::OpenDelay)
                    {
                        self.timers.remove(&Timer::OpenRetry);
                        self.timers.remove(&Timer::ChannelOpen);
                        self.try_open();
                    }
                }
                PeerEvent::Message(m) => {
                    if let Some(conns) = self.conns.as_mut() {
                        conns.handle_message(&m, now);
                    }
                }
                PeerEvent::Writable => {}
                PeerEvent::Closed(reason) => {
                    if !self.finished && !self.closing {
                        self.finish(Err(LaunchError::Disconnected(reason)));
                    } else if self.closing {
                        self.finish(Ok(()));
                    }
                }
            }
        }
        self.pump_tube();
    }

    fn pump_tube(&mut self) {
        let now = self.now;
        loop {
            // Retry a write the channel refused.
            if let Some(w) = self.blocked_write.take() {
                match self.peer.as_mut().map(|p| p.write(&w, now)) {
                    Some(Ok(true)) => {}
                    Some(Ok(false)) => {
                        self.blocked_write = Some(w);
                        break;
                    }
                    Some(Err(e)) => {
                        return self.finish(Err(LaunchError::Disconnected(e.to_string())));
                    }
                    None => break,
                }
            }
            let Some(conns) = self.conns.as_mut() else {
                break;
            };
            conns.advance(now);
            self.outbox.flush(conns);
            let Some(ev) = conns.poll_event() else { break };
            match ev {
                TubeEvent::Write(bytes) => self.blocked_write = Some(bytes),
                TubeEvent::Opened(conn) => {
                    self.outputs.push_back(Output::ConnectionOpened { conn });
                    if conn == 1 && self.terminal.is_some() {
                        self.pump_terminal();
                    }
                }
                TubeEvent::Data { conn, data } => {
                    if conn == 1 && self.terminal.is_some() {
                        if let Some(t) = self.terminal.as_mut() {
                            t.handle_data(&data);
                        }
                        self.pump_terminal();
                    } else {
                        self.outputs
                            .push_back(Output::ConnectionData { conn, data });
                    }
                }
                TubeEvent::Eof(conn) => self.outputs.push_back(Output::ConnectionEof { conn }),
                TubeEvent::Closed { conn, reason, .. } => {
                    self.outputs
                        .push_back(Output::ConnectionClosed { conn, reason });
                    if let (1, Some(t)) = (conn, self.terminal.as_mut()) {
                        t.connection_closed(reason);
                    }
                    if conn == 1 && self.terminal.is_some() && !self.finished {
                        self.closing = true;
                        self.arm(Timer::CloseFlush, Duration::from_millis(50));
                    }
                }
                TubeEvent::ChannelClosed { reason, .. } => {
                    if !self.finished {
                        self.closing = true;
                        self.finish(
                            if reason == CloseReason::Normal || reason == CloseReason::AdminClosed {
                                Ok(())
                            } else {
                                Err(LaunchError::Disconnected(format!(
                                    "gateway closed the tube: {reason}"
                                )))
                            },
                        );
                    }
                    return;
                }
                TubeEvent::ConnectTarget { conn, .. } => {
                    tracing::warn!(
                        conn,
                        "the gateway asked the client to open a connection; refused"
                    );
                }
                TubeEvent::Pong { .. } => {}
                TubeEvent::ProtocolWarning(w) => {
                    tracing::warn!(warning = %w, "tube protocol warning")
                }
            }
        }
        if let Some(peer) = self.peer.as_mut() {
            while let Some(d) = peer.poll_transmit() {
                self.outputs.push_back(Output::Transmit(d));
            }
        }
        if let Some(conns) = self.conns.as_ref() {
            if let Some(paused) = self.outbox.pause_change(conns) {
                for conn in conns.connections() {
                    self.outputs
                        .push_back(Output::Backpressure { conn, paused });
                }
            }
        }
    }

    fn pump_terminal(&mut self) {
        let Some(t) = self.terminal.as_mut() else {
            return;
        };
        let mut to_gateway = Vec::new();
        let mut events = Vec::new();
        while let Some(e) = t.poll_event() {
            events.push(e);
        }
        for e in events {
            match e {
                TerminalEvent::ToGateway(bytes) => to_gateway.push(bytes),
                TerminalEvent::Output(bytes) => {
                    self.outputs.push_back(Output::TerminalOutput(bytes))
                }
                TerminalEvent::Ready => {
                    if !self.guac_ready {
                        self.guac_ready = true;
                        self.timers.remove(&Timer::GuacReady);
                        self.checkpoint(CLI_SESSION, names::GUACAMOLE_WAIT_FOR_READY_OK);
                        self.checkpoint(TOTAL, names::READY_FOR_PROMPT);
                    }
                }
                TerminalEvent::Ended(reason) => {
                    tracing::info!(%reason, "terminal session ended");
                    self.closing = true;
                    self.arm(Timer::CloseFlush, Duration::from_millis(50));
                }
            }
        }
        for bytes in to_gateway {
            if let Some(conns) = self.conns.as_mut() {
                if let Err(e) = self.outbox.send(conns, 1, bytes) {
                    tracing::warn!(error = %e, "terminal input after the session closed");
                }
            }
        }
        self.pump_tube();
    }

    // ------------------------------------------------------------------ inputs

    fn on_http(&mut self, id: RequestId, result: Result<HttpResponse, String>) {
        let Some((call, tokens)) = self.calls.remove(&id) else {
            tracing::debug!(id, "response for an unknown request");
            return;
        };
        match call {
            Call::RelayCreds => {
                // Only Commander's schedule asks; the credentials are unused (no TURN in str0m).
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "relay_access_creds failed (ignored)");
                }
                self.relay = Step::Done;
                self.checkpoint(WEBRTC_TUNNEL, names::RELAY_CREDS_OK);
            }
            Call::Bind => {
                match &result {
                    Ok(r) => self.cookie = endpoints::cookie_header(&r.set_cookies),
                    Err(e) => {
                        tracing::info!(error = %e, "bind_to_controller failed (ignored, as Commander does)")
                    }
                }
                self.bind = Step::Done;
            }
            Call::OnlineCheck => {
                self.online_step = Step::Done;
                if let Ok(r) = &result {
                    self.online = self.parse_online(r, &tokens);
                }
                if self.online == Some(true) {
                    self.checkpoint(WEBRTC_TUNNEL, names::ONLINE_CHECK_OK);
                }
            }
            Call::OfferPrecheck | Call::CandidatePrecheck => {
                let online = match &result {
                    Ok(r) => self.parse_online(r, &tokens),
                    Err(_) => None,
                };
                match (call, result) {
                    (Call::OfferPrecheck, Err(e)) => self.offer_failed(AttemptFailure::Network(e)),
                    (Call::OfferPrecheck, Ok(_)) if online != Some(true) => {
                        let gateway_uid = self.cfg.gateway_uid.clone();
                        self.offer_failed(AttemptFailure::GatewayNotOnline { gateway_uid })
                    }
                    (Call::OfferPrecheck, Ok(_)) => self.send_offer(),
                    (_, Ok(_)) if online == Some(true) => self.send_candidates(),
                    _ => self.candidates_done(false),
                }
            }
            Call::Offer => match result {
                Err(e) => self.offer_failed(AttemptFailure::Network(e)),
                Ok(r) => match endpoints::parse_router_response(&r, &tokens, 300) {
                    Ok(payload) => self.offer_succeeded(payload),
                    Err(e) => self.offer_failed(router_failure(e)),
                },
            },
            Call::Candidates => {
                let ok = match &result {
                    Ok(r) => endpoints::parse_router_response(r, &tokens, 300).is_ok(),
                    Err(_) => false,
                };
                self.candidates_done(ok);
            }
        }
    }

    /// `Some(online)` from a get_controllers answer; `None` when it could not be read.
    fn parse_online(&self, r: &HttpResponse, tokens: &Tokens) -> Option<bool> {
        let payload = endpoints::parse_router_response(r, tokens, 400).ok()?;
        let list = endpoints::parse_online_controllers(payload.as_deref()).ok()?;
        Some(endpoints::gateway_online(&list, &self.cfg.gateway_uid))
    }

    fn on_ws_message(&mut self, text: &str) {
        let items = match signaling::parse_ws_frame(text) {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unparsable WebSocket message");
                return;
            }
        };
        for item in items {
            if !self.conv.matches(&item.conversation_id) {
                tracing::debug!("WebSocket message for another conversation");
                continue;
            }
            match signaling::classify_gateway_data(&self.key, &item.payload) {
                GatewayData::Answer(sdp) => {
                    self.apply_answer(&sdp);
                }
                GatewayData::Candidates(list) => {
                    for c in list {
                        self.add_remote_candidate(&c);
                    }
                    self.pump_peer();
                }
                GatewayData::Offer(_) => {
                    tracing::warn!("gateway-initiated ICE restart is not supported; ignoring");
                }
                GatewayData::Ack => {}
                GatewayData::Ignored(why) => tracing::debug!(%why, "ignoring a gateway message"),
                GatewayData::Error(e) => {
                    if !self.data_plane_seen {
                        return self.finish(Err(LaunchError::Gateway(e)));
                    }
                    tracing::warn!(error = %e, "gateway reported an error");
                }
            }
            if self.finished {
                return;
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = self.now;
        match cmd {
            Command::Close => {
                self.closing = true;
                if let Some(t) = self.terminal.as_mut() {
                    t.disconnect();
                }
                self.pump_terminal();
                if let Some(conns) = self.conns.as_mut() {
                    conns.close_all(CloseReason::Normal);
                }
                self.pump_tube();
                self.arm(Timer::CloseFlush, Duration::from_millis(50));
            }
            Command::OpenConnection { conn } => match self.conns.as_mut() {
                Some(c) if self.tube_ready => {
                    // A connection opened while the tube is paused starts paused: the tube-wide
                    // pause was announced before it existed (found by the 16-connection benchmark).
                    if self.outbox.is_paused() {
                        self.outputs
                            .push_back(Output::Backpressure { conn, paused: true });
                    }
                    if let Err(e) = c.open(conn) {
                        self.outputs.push_back(Output::ConnectionClosed {
                            conn,
                            reason: CloseReason::Error,
                        });
                        tracing::warn!(error = %e, conn, "cannot open connection");
                    }
                }
                _ => self.outputs.push_back(Output::ConnectionClosed {
                    conn,
                    reason: CloseReason::ConnectionFailed,
                }),
            },
            Command::Send { conn, data } => {
                if let Some(c) = self.conns.as_mut() {
                    if let Err(e) = self.outbox.send(c, conn, data) {
                        tracing::warn!(error = %e, conn, "closing a connection that cannot take data");
                        let _ = c.close(conn, CloseReason::Error);
                        self.outputs.push_back(Output::ConnectionClosed {
                            conn,
                            reason: CloseReason::Error,
                        });
                    }
                }
            }
            Command::SendEof { conn } => {
                if let (1, Some(t)) = (conn, self.terminal.as_mut()) {
                    // Terminal mode: the script on stdin ended.
                    t.end_input(now);
                    self.pump_terminal();
                } else if let Some(c) = self.conns.as_mut() {
                    let _ = self.outbox.send_eof(c, conn);
                }
            }
            Command::CloseConnection { conn, reason } => {
                if let Some(c) = self.conns.as_mut() {
                    let _ = self.outbox.close(c, conn, reason);
                }
            }
            Command::TargetConnected { .. } => {}
            Command::TerminalInput { data } => {
                if let Some(t) = self.terminal.as_mut() {
                    t.input(&data, now);
                }
                self.pump_terminal();
            }
            Command::TerminalResize { cols, rows } => {
                if let Some(t) = self.terminal.as_mut() {
                    t.resize(cols, rows);
                }
                self.pump_terminal();
            }
        }
        self.pump_tube();
    }
}

fn terminal_config(t: &TerminalSettings) -> TerminalConfig {
    TerminalConfig {
        cols: t.cols,
        rows: t.rows,
        guacd_params: t.guacd_params.clone(),
        input_mode: if t.stdin_mode {
            InputMode::Stdin
        } else {
            InputMode::Keys
        },
        ..TerminalConfig::default()
    }
}

fn poll_tick_after(origin: Instant, connected: Instant, tick: Duration) -> Instant {
    if connected <= origin {
        return origin;
    }
    let elapsed = connected - origin;
    let n = elapsed.as_nanos().div_ceil(tick.as_nanos().max(1));
    origin + Duration::from_nanos((n * tick.as_nanos()) as u64)
}

fn router_failure(e: RouterCallError) -> AttemptFailure {
    match e {
        RouterCallError::Http { status, .. } => AttemptFailure::Http {
            status,
            text: e.to_string(),
        },
        RouterCallError::Router { code, ref message } => AttemptFailure::Router {
            code_name: code.name().to_string(),
            message: message.clone(),
        },
        other => AttemptFailure::Protocol(other.to_string()),
    }
}

impl Node for Client {
    fn handle_input(&mut self, input: Input, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        if self.finished {
            return;
        }
        match input {
            Input::Timeout => {
                let now = self.now;
                if let Some(p) = self.peer.as_mut() {
                    if p.poll_timeout().is_some_and(|t| t <= now) {
                        p.handle_timeout(now);
                    }
                }
                self.pump_peer();
                if let Some(t) = self.terminal.as_mut() {
                    if t.poll_timeout().is_some_and(|x| x <= now) {
                        t.handle_timeout(now);
                    }
                }
                self.pump_terminal();
                if self.due(Timer::WsReady) && self.ws != WsState::Open {
                    return self.finish(Err(LaunchError::Timeout {
                        what: "the router WebSocket to connect",
                        waited: self.profile().ws_ready_timeout,
                    }));
                }
            }
            Input::HttpResponse { id, response } => self.on_http(id, Ok(response)),
            Input::HttpError { id, error } => self.on_http(id, Err(error)),
            Input::WsOpened => {
                if self.ws == WsState::Connecting {
                    self.ws = WsState::Open;
                    self.timers.remove(&Timer::WsReady);
                }
            }
            Input::WsMessage(text) => self.on_ws_message(&text),
            Input::WsClosed { reason } => {
                let was = self.ws;
                self.ws = WsState::Failed;
                let needed = (self.ws_required() && self.offer != OfferStep::Done)
                    || (self.cfg.trickle_ice && !self.answer_applied);
                if needed && was != WsState::Closed {
                    return self.finish(Err(LaunchError::WebSocket(reason)));
                }
            }
            Input::Datagram(d) => {
                let now = self.now;
                if let Some(p) = self.peer.as_mut() {
                    p.handle_datagram(&d, now);
                }
                self.pump_peer();
            }
            Input::LocalCandidate { addr, kind } => {
                if self.local_candidates.len() >= MAX_CANDIDATES {
                    tracing::warn!(%addr, "too many local candidates; ignoring one");
                    return self.advance();
                }
                self.local_candidates.push((addr, kind));
                let now = self.now;
                if let Some(p) = self.peer.as_mut() {
                    if let Some(c) = p.add_local_candidate(addr, kind, now) {
                        if self.cfg.trickle_ice {
                            self.batcher.push(c);
                        }
                    }
                }
                self.pump_peer();
            }
            Input::GatheringComplete => {
                self.gathering_complete = true;
                if self.peer.is_some() && self.cfg.trickle_ice {
                    self.batcher.end_of_candidates();
                }
            }
            Input::Command(c) => self.on_command(c),
            Input::ControllerMessage { .. } => {
                tracing::debug!("a client ignores controller messages");
            }
        }
        self.advance();
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let timers = self.timers.values().copied().min();
        let peer = self.peer.as_ref().and_then(|p| p.poll_timeout());
        let terminal = self.terminal.as_ref().and_then(|t| t.poll_timeout());
        [timers, peer, terminal].into_iter().flatten().min()
    }
}

/// Commander caps the whole `create_tube` (incl. non-trickle gathering) at 15 s.
const ICE_GATHER_TIMEOUT: Duration = Duration::from_secs(15);
/// Commander's `wait_for_ready(10.0)` for the first Guacamole `sync`.
const GUAC_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on candidates kept per side (a host has a handful; a flood is refused, not stored).
const MAX_CANDIDATES: usize = 64;
