//! The client role: what `pam launch` / `pam tunnel start` do, as one sans-IO state machine.
//!
//! ```text
//!            ┌ relay_access_creds ┐ (Commander: serial, first; fast: in parallel, only for TURN)
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
//!
//! Each seed behaviour lives in one module, with its state, its timers, its checkpoints and its tests:
//!
//! | module | behaviour |
//! |---|---|
//! | [`router_calls`] | the router HTTP calls: `relay_access_creds`, `bind_to_controller` (ALB cookie), the online check and Commander's per-action `get_controllers` pre-checks; routing every HTTP answer |
//! | [`websocket`] | the router WebSocket: early or after `create_tube`, its ready bound, what its messages mean |
//! | [`offer`] | `create_tube` and the offer: backend and pre-offer delays, attempts with retry and backend catch-up, the no-trickle shortcut, the answer |
//! | [`candidates`] | local and remote ICE candidates and their (batched) `icecandidate` POSTs |
//! | [`data_plane`] | ICE/DTLS to the data channel: the connect bound, Commander's poll ticks, the open delay and OpenConnection retry |
//! | [`session`] | the tube once it is up: connections, flow control, the Guacamole terminal, user commands, closing |
//! | [`recovery`] | mid-session path loss: detection, ICE restarts (ours and the gateway's), giving up at the bound |
//!
//! This file holds what they share: the configuration, the reconciler, the timer table and the outputs.

use core::net::SocketAddr;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::offer::LaunchOffer;
use crate::profile::Profile;
use crate::relay::{RelayLayer, RelayPlan};
use crate::router::endpoints;
use crate::router::envelope::{ServerPublicKey, Tokens};
use crate::rtc::{DtlsIdentity, Peer};
use crate::signaling::{ConversationId, TunnelKey};
use crate::timing::{names, Checkpoint, PHASE_WEBRTC_TUNNEL as WEBRTC_TUNNEL};
use crate::tube::CloseReason;
use crate::{ConfigError, Input, LaunchError, Node, Output, Seed};

mod candidates;
mod data_plane;
mod offer;
mod recovery;
mod router_calls;
mod session;
mod websocket;

pub use session::TERMINAL_CONN;

#[cfg(test)]
mod harness;

/// What the launch opens once the tube is up.
#[derive(Debug, Clone, PartialEq)]
pub enum Session {
    /// `pam launch`: connection 1 carries a Guacamole terminal session run by the core.
    Terminal(TerminalSettings),
    /// `pam tunnel start`: the user opens connections ([`crate::Command::OpenConnection`]).
    Tunnel,
}

/// The terminal the user sees, and the guacd parameters the offer carries.
#[derive(Clone, PartialEq)]
pub struct TerminalSettings {
    pub cols: u16,
    pub rows: u16,
    /// `--stdin`: input is a script piped to a STDIN stream instead of key events.
    pub stdin_mode: bool,
    /// Values for guacd's `args` (`hostname`, `port`, `username`, …). May hold secrets.
    pub guacd_params: BTreeMap<String, String>,
}

impl std::fmt::Debug for TerminalSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalSettings")
            .field("cols", &self.cols)
            .field("rows", &self.rows)
            .field("stdin_mode", &self.stdin_mode)
            .field(
                "guacd_params",
                &self.guacd_params.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
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
    /// STUN/TURN servers and the ICE policy (empty: host candidates only, as before relays existed).
    pub relay: RelayPlan,
    /// Wall-clock Unix milliseconds at the start instant (frame timestamps); the core never reads a clock.
    pub unix_ms_at_start: u64,
    /// The DTLS certificate the tube presents (one per process: see [`DtlsIdentity`]).
    pub dtls: DtlsIdentity,
}

/// The token, the seed and the offer's credentials are wiped when the configuration is dropped (the
/// client keeps its copy for the whole launch; a copy that is dropped must not linger in freed memory).
impl Drop for ClientConfig {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.session_token.zeroize();
        self.traffic_seed.zeroize();
        // Not a `Drop` on `LaunchOffer` itself: callers build offers with struct-update syntax.
        if let Some(v) = &mut self.offer.two_factor_value {
            v.zeroize();
        }
    }
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
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

/// Named deadlines, one family per behaviour module. Each one is a bound on a wait or a profile sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    Ws(websocket::WsTimer),
    Offer(offer::OfferTimer),
    DataPlane(data_plane::DataPlaneTimer),
    Session(session::SessionTimer),
}

/// A step that runs once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    NotStarted,
    Running,
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
    outputs: VecDeque<Output>,
    timers: BTreeMap<Timer, Instant>,
    recovery: recovery::Recovery,
    /// The WebRTC peer, once `create_tube` ran: the offer creates it, candidates feed it, the data plane
    /// and the session read from it.
    peer: Option<Peer>,

    router: router_calls::RouterCalls,
    ws: websocket::WsSide,
    offer: offer::OfferState,
    candidates: candidates::CandidateState,
    /// STUN/TURN beside the ICE agent; exists from the start (it gathers before the peer does).
    relay: RelayLayer,
    data_plane: data_plane::DataPlane,
    session: session::SessionState,
    finished: bool,
}

impl Client {
    /// A new launch. `seed` feeds every random value pam-lite draws itself (conversation id, nonce,
    /// transmission key); `now` is the launch's time zero. Fails only on a configuration that cannot work.
    pub fn new(cfg: ClientConfig, seed: Seed, now: Instant) -> Result<Self, LaunchError> {
        if cfg.traffic_seed.is_empty() {
            return Err(ConfigError::NoTrafficSeed.into());
        }
        if cfg.session_token.is_empty() {
            return Err(ConfigError::EmptySessionToken.into());
        }
        endpoints::validate_base_url(&cfg.router_url).map_err(ConfigError::RouterUrl)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let conv = ConversationId::random(&mut rng);
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let key = TunnelKey::derive(&cfg.traffic_seed, &nonce);
        let tokens = Tokens::new(&cfg.session_token, &cfg.server_key, &mut rng);
        // Drawn only when there are relays, so a launch without them draws what it always did.
        let relay_seed = if cfg.relay.is_empty() {
            0
        } else {
            rng.next_u64()
        };
        let relay = RelayLayer::new(cfg.relay.clone(), relay_seed);
        Ok(Client {
            relay,
            rng,
            start: None,
            now,
            conv,
            nonce,
            key,
            tokens,
            outputs: VecDeque::new(),
            timers: BTreeMap::new(),
            peer: None,
            router: router_calls::RouterCalls::new(),
            ws: websocket::WsSide::new(),
            offer: offer::OfferState::new(&cfg.profile),
            recovery: recovery::Recovery::new(cfg.profile.path_loss_limit),
            candidates: candidates::CandidateState::new(&cfg.profile),
            data_plane: data_plane::DataPlane::new(),
            session: session::SessionState::new(),
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

    /// Whether the tunnel can take another [`crate::Command::Send`] without growing its queue past the
    /// high-water mark (drivers stop reading the local socket while this is false).
    pub fn can_send(&self) -> bool {
        self.session.can_send()
    }

    fn profile(&self) -> &Profile {
        &self.cfg.profile
    }

    // ------------------------------------------------------------------ outputs and shared helpers

    fn checkpoint(&mut self, phase: &'static str, name: impl Into<String>) {
        self.outputs.push_back(Output::Checkpoint(Checkpoint {
            phase,
            name: name.into(),
            at: self.now,
        }));
    }

    /// Arm `timer` to fire `after` from now.
    fn arm(&mut self, timer: impl Into<Timer>, after: Duration) {
        self.timers.insert(timer.into(), self.now + after);
    }

    /// Arm `timer` for the instant `at`.
    fn arm_at(&mut self, timer: impl Into<Timer>, at: Instant) {
        self.timers.insert(timer.into(), at);
    }

    fn disarm(&mut self, timer: impl Into<Timer>) {
        self.timers.remove(&timer.into());
    }

    fn is_armed(&self, timer: impl Into<Timer>) -> bool {
        self.timers.contains_key(&timer.into())
    }

    /// Whether `timer` has fired; a fired timer is disarmed.
    fn due(&mut self, timer: impl Into<Timer>) -> bool {
        let timer = timer.into();
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
        if let Some(conns) = self.session.conns.as_mut() {
            conns.close_all(CloseReason::Normal);
        }
        self.pump_tube();
        if let Some(peer) = self.peer.as_mut() {
            peer.close(self.now);
        }
        self.pump_peer();
        self.close_ws();
        self.outputs.push_back(Output::Finished(result));
    }

    /// Tokens for one call: the shared triple in trickle mode (the router ties the WS to it), a fresh
    /// one per request otherwise (as Commander does).
    fn tokens_for(&mut self, shared: bool) -> Tokens {
        if shared {
            self.tokens.clone()
        } else {
            Tokens::new(&self.cfg.session_token, &self.cfg.server_key, &mut self.rng)
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
        if self.start.is_none() {
            self.start = Some(self.now);
            self.checkpoint(WEBRTC_TUNNEL, names::ENTER);
        }
        // 1–3. relay credentials, the online check, bind_to_controller.
        self.advance_router_calls();
        let relay_done = self.router.relay_done();
        let bind_done = self.router.bind_done(self.cfg.trickle_ice);

        // 4. create_tube: may it run yet? (Non-trickle arms the gathering bound here.)
        let tube_allowed = self.tube_allowed(relay_done, bind_done);

        // 5. WebSocket: early (parallel with create_tube) or after it.
        self.advance_ws(relay_done, bind_done);
        if tube_allowed && self.peer.is_none() {
            self.create_tube();
            if self.finished {
                return;
            }
            self.start_ws_after_tube(bind_done);
        }

        // 6. the offer: delays, then attempts with retry.
        self.advance_offer();
        if self.finished {
            return;
        }

        // 7. candidate batches.
        self.advance_candidates();

        // 8. data plane, then the session on top of it.
        self.advance_data_plane();
        if self.finished {
            return;
        }
        self.advance_session();
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
                self.relay.handle_timeout(self.now);
                self.on_peer_timeout();
                self.on_path_timeout();
                self.on_ws_timeout();
                self.on_terminal_timeout();
                if self.ws_ready_expired() {
                    return;
                }
            }
            Input::HttpResponse { id, response } => self.on_http(id, Ok(response)),
            Input::HttpError { id, error } => self.on_http(id, Err(error)),
            Input::WsOpened => self.on_ws_opened(),
            Input::WsMessage(text) => self.on_ws_message(&text),
            Input::WsClosed { reason } => {
                if self.on_ws_closed(reason) {
                    return;
                }
            }
            Input::Datagram(d) => self.on_datagram(&d),
            Input::LocalCandidate { addr, kind } => self.on_local_candidate(addr, kind),
            Input::GatheringComplete => self.on_gathering_complete(),
            Input::Command(c) => self.on_command(c),
            Input::ControllerMessage { .. } => {
                tracing::debug!("a client ignores controller messages");
            }
            Input::Stream { stream, event } => {
                self.relay.stream(stream, event, self.now);
                self.pump_peer();
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
        let terminal = self.session.terminal_timeout();
        let relay = self.relay.poll_timeout();
        let path = self.path_timeout();
        [timers, peer, terminal, relay, path]
            .into_iter()
            .flatten()
            .min()
    }
}

/// A local address the driver reported, and its kind (kept for `create_tube`).
type LocalCandidate = (SocketAddr, crate::CandidateKind);

#[cfg(test)]
mod tests {
    use super::harness::{Harness, HarnessConfig};
    use crate::router::endpoints::EndpointError;
    use crate::{ConfigError, LaunchError, Node};

    fn config() -> super::ClientConfig {
        let h = Harness::new(HarnessConfig::default());
        h.client.cfg.clone()
    }

    #[test]
    fn a_configuration_that_cannot_work_is_refused_before_any_io() {
        let t0 = pam_lite_dev_clock::origin();
        let mut cfg = config();
        cfg.traffic_seed.clear();
        assert_eq!(
            super::Client::new(cfg, [1; 32], t0).err(),
            Some(LaunchError::Config(ConfigError::NoTrafficSeed))
        );
        let mut cfg = config();
        cfg.session_token.clear();
        assert_eq!(
            super::Client::new(cfg, [1; 32], t0).err(),
            Some(LaunchError::Config(ConfigError::EmptySessionToken))
        );
        let mut cfg = config();
        cfg.router_url = "ftp://router".into();
        let err = super::Client::new(cfg, [1; 32], t0).err();
        assert!(
            matches!(
                err,
                Some(LaunchError::Config(ConfigError::RouterUrl(
                    EndpointError::BadUrl { .. }
                )))
            ),
            "{err:?}"
        );
        assert!(err.unwrap().to_string().contains("router URL"));
    }

    #[test]
    fn the_reconciler_starts_the_launch_on_the_first_input_and_stops_after_finishing() {
        let t0 = pam_lite_dev_clock::origin();
        let mut client = super::Client::new(config(), [1; 32], t0).expect("client");
        assert!(
            client.poll_output().is_none(),
            "nothing happens before an input"
        );
        client.handle_input(crate::Input::Timeout, t0);
        let mut first = Vec::new();
        while let Some(o) = client.poll_output() {
            first.push(o);
        }
        assert!(matches!(first.first(), Some(crate::Output::Checkpoint(c)) if c.name == "enter"));
        assert!(first.iter().any(|o| matches!(o, crate::Output::Http(_))));
        client.handle_input(crate::Input::Command(crate::Command::Close), t0);
        client.handle_input(
            crate::Input::Timeout,
            t0 + std::time::Duration::from_secs(1),
        );
        let mut finished = false;
        while let Some(o) = client.poll_output() {
            finished |= matches!(o, crate::Output::Finished(Ok(())));
        }
        assert!(finished && client.is_finished());
        assert_eq!(
            client.poll_timeout(),
            None,
            "a finished launch wants no wake-up"
        );
        client.handle_input(
            crate::Input::Timeout,
            t0 + std::time::Duration::from_secs(2),
        );
        assert!(
            client.poll_output().is_none(),
            "a finished launch ignores input"
        );
    }
}
