//! What a node (client or gateway) owns to use STUN and TURN: a [`RelayPlan`] from its configuration, and
//! a [`RelayLayer`] that runs it beside the node's ICE agent.
//!
//! The layer decides *when* [`Relays`] can start (the node's host address is known and the TURN
//! credentials are in hand, or known to be unobtainable), translates between the node's vocabulary
//! (datagrams with a source and a destination, stream outputs) and [`Relays`]' (`RelayIo`, `PeerData`),
//! applies the ICE policy (`--relay-only`, `--no-relay`) and remembers every server that gave nothing, so
//! a launch that finds no path can say which server failed and why.
//!
//! ```text
//!  Datagram in ─► incoming ─┬ from a STUN/TURN server: consumed ─► poll_inbound (relayed peer data)
//!                            └ not ours: false (the node gives it to the ICE agent)
//!  ICE transmit ─► outgoing ─┬ from a relay address: wrapped, sent to the TURN server ─► poll_output
//!                            └ from a host address: Some(datagram) (the node sends it as it is)
//!  poll_event: Candidate{srflx|relayed} · Failed(problem) · Gathered
//! ```

use core::net::SocketAddr;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::{
    CandidateKind as Gathered, RelayConfig, RelayEvent, RelayFailure, RelayIo, Relays, StreamEvent,
    StreamId, TurnServer, TurnTransport,
};
use crate::{CandidateKind, Datagram, Output};

/// Which local candidates a node offers. Commander's `turn_only` is [`IcePolicy::RelayOnly`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IcePolicy {
    /// Host, server-reflexive and relayed candidates: ICE picks the best pair that works.
    #[default]
    All,
    /// Only relayed candidates (`--relay-only`): every byte goes through the TURN server.
    RelayOnly,
    /// No TURN allocation (`--no-relay`); host and server-reflexive candidates only.
    NoRelay,
}

/// TURN long-term credentials (Keeper: `relay_access_creds`, or the ticket's `turn`). Secret: `Debug`
/// hides the password, and both are wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Drop for TurnCredentials {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.username.zeroize();
        self.password.zeroize();
    }
}

/// One TURN server without its credentials (those are per user, not per server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnEndpoint {
    pub addr: SocketAddr,
    /// The name it was configured by (`krelay.keepersecurity.com`): TLS verifies it, messages show it.
    pub name: String,
    pub transport: TurnTransport,
}

/// The servers a node may gather from, and how (the node's configuration; empty: host candidates only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPlan {
    /// STUN servers (Keeper: `stun:krelay.<host>:3478`).
    pub stun: Vec<SocketAddr>,
    /// TURN servers (Keeper: `turn:krelay.<host>:3478`).
    pub turn: Vec<TurnEndpoint>,
    /// Credentials for every TURN server. `None`: the client asks the router (`relay_access_creds`).
    pub credentials: Option<TurnCredentials>,
    pub policy: IcePolicy,
    /// After this, gathering counts as done whatever is still pending (late candidates still trickle).
    pub gather_timeout: Duration,
}

/// How long gathering may hold up what waits for it (non-trickle offers, the end-of-candidates marker).
/// Keeper's krelay answers STUN in one round trip and a TURN allocation in two or three; five seconds
/// covers a slow or lossy path (two retransmissions) without making an unreachable relay expensive.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for RelayPlan {
    fn default() -> Self {
        Self {
            stun: Vec::new(),
            turn: Vec::new(),
            credentials: None,
            policy: IcePolicy::All,
            gather_timeout: GATHER_TIMEOUT,
        }
    }
}

impl RelayPlan {
    /// The STUN servers the policy uses (none when relay-only: a reflexive address is never offered).
    fn stun_servers(&self) -> &[SocketAddr] {
        if self.policy == IcePolicy::RelayOnly {
            &[]
        } else {
            &self.stun
        }
    }

    /// The TURN servers the policy uses.
    fn turn_servers(&self) -> &[TurnEndpoint] {
        if self.policy == IcePolicy::NoRelay {
            &[]
        } else {
            &self.turn
        }
    }

    /// Whether the plan asks for anything beyond host candidates.
    pub fn is_empty(&self) -> bool {
        self.stun_servers().is_empty() && self.turn_servers().is_empty()
    }
}

/// Why a relay server gave a node nothing. Shown in logs and, when no path was found, in the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayProblem {
    /// A STUN or TURN server failed.
    Server {
        server: SocketAddr,
        turn: bool,
        failure: RelayFailure,
    },
    /// The TURN credentials could not be fetched from the router (its reason).
    NoCredentials(String),
    /// The node has no local address to gather from.
    NoHostAddress,
}

impl fmt::Display for RelayProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server {
                server,
                turn,
                failure,
            } => {
                let kind = if *turn { "TURN" } else { "STUN" };
                write!(f, "{kind} server {server}: {failure}")
            }
            Self::NoCredentials(why) => write!(
                f,
                "no TURN credentials (relay_access_creds failed: {})",
                crate::text::sanitize_max(why, 200)
            ),
            Self::NoHostAddress => f.write_str("no local address to reach the relay servers from"),
        }
    }
}

/// What the layer tells its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GatherEvent {
    /// A server-reflexive or relayed candidate to add to the ICE agent (and trickle).
    Candidate {
        addr: SocketAddr,
        kind: CandidateKind,
    },
    /// A server gave nothing (also kept in [`RelayLayer::problems`]).
    Failed(RelayProblem),
    /// Gathering is over (every server answered or failed, or the bound passed). Emitted once.
    Gathered,
}

/// Where the TURN credentials stand.
#[derive(Debug)]
enum Credentials {
    Known(TurnCredentials),
    /// The node asked the router; TURN waits for the answer (STUN does not).
    Waiting,
    /// Not needed (no TURN in the plan) or not obtainable: TURN is skipped.
    None,
}

/// Bound on the host addresses and remote candidates remembered, and on the problems kept.
const MAX_REMEMBERED: usize = 64;

/// The relay layer of one node. See the module docs.
#[derive(Debug)]
pub(crate) struct RelayLayer {
    plan: RelayPlan,
    credentials: Credentials,
    seed: u64,
    hosts: Vec<SocketAddr>,
    hosts_done: bool,
    relays: Option<Relays>,
    /// The host address the relays use (the source of their datagrams).
    base: Option<SocketAddr>,
    /// Remote candidates seen before the relays started.
    remote: Vec<SocketAddr>,
    gathered: bool,
    relayed: usize,
    /// Every candidate address announced so far: a STUN server and a TURN server on the same host both
    /// report the same server-reflexive address, and a peer must hear each candidate once (Keeper's tube
    /// stalls its signalling on a repeated candidate).
    announced: Vec<SocketAddr>,
    problems: Vec<RelayProblem>,
    outputs: VecDeque<Output>,
    events: VecDeque<GatherEvent>,
    inbound: VecDeque<Datagram>,
}

impl RelayLayer {
    /// `seed` numbers the STUN transactions (from the node's seeded RNG).
    pub(crate) fn new(plan: RelayPlan, seed: u64) -> Self {
        let credentials = match (&plan.credentials, plan.turn_servers().is_empty()) {
            (_, true) => Credentials::None,
            (Some(c), false) => Credentials::Known(c.clone()),
            (None, false) => Credentials::Waiting,
        };
        let gathered = plan.is_empty();
        Self {
            plan,
            credentials,
            seed,
            hosts: Vec::new(),
            hosts_done: false,
            relays: None,
            base: None,
            remote: Vec::new(),
            gathered,
            relayed: 0,
            announced: Vec::new(),
            problems: Vec::new(),
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            inbound: VecDeque::new(),
        }
    }

    /// Whether the ICE agent may be given (and the peer told of) a local candidate of this kind.
    pub(crate) fn admits(&self, kind: CandidateKind) -> bool {
        match self.plan.policy {
            IcePolicy::RelayOnly => matches!(kind, CandidateKind::Relayed { .. }),
            IcePolicy::All | IcePolicy::NoRelay => true,
        }
    }

    /// Whether the node must fetch TURN credentials from the router.
    pub(crate) fn wants_credentials(&self) -> bool {
        matches!(self.credentials, Credentials::Waiting)
    }

    /// The router's answer to `relay_access_creds` (only used while waiting for it).
    pub(crate) fn set_credentials(
        &mut self,
        result: Result<TurnCredentials, String>,
        now: Instant,
    ) {
        if !self.wants_credentials() {
            return;
        }
        self.credentials = match result {
            Ok(c) if !c.username.is_empty() => Credentials::Known(c),
            Ok(_) => {
                self.problem(RelayProblem::NoCredentials("an empty username".into()));
                Credentials::None
            }
            Err(why) => {
                self.problem(RelayProblem::NoCredentials(why));
                Credentials::None
            }
        };
        self.try_start(now);
    }

    /// A host address of the node (the driver's host candidates).
    pub(crate) fn host_candidate(&mut self, addr: SocketAddr) {
        if self.hosts.len() < MAX_REMEMBERED && !self.hosts.contains(&addr) {
            self.hosts.push(addr);
        }
    }

    /// The driver reported every host address.
    pub(crate) fn host_gathering_complete(&mut self, now: Instant) {
        self.hosts_done = true;
        self.try_start(now);
    }

    /// Whether gathering is over (also when there was nothing to gather).
    pub(crate) fn is_gathered(&self) -> bool {
        self.gathered
    }

    /// Whether relay-only was asked for and cannot work: every TURN server failed (or none could be
    /// tried) and nothing is pending.
    pub(crate) fn relay_only_failed(&self) -> bool {
        self.plan.policy == IcePolicy::RelayOnly
            && self.gathered
            && self.relayed == 0
            && !self.relays.as_ref().is_some_and(Relays::pending)
            && !self.wants_credentials()
    }

    /// Every server that gave nothing, in the order they failed.
    pub(crate) fn problems(&self) -> &[RelayProblem] {
        &self.problems
    }

    /// A datagram on the node's socket: `true` when it was a STUN/TURN server's (consumed; relayed peer
    /// data it carried comes out of [`RelayLayer::poll_inbound`]).
    pub(crate) fn incoming(&mut self, d: &Datagram, now: Instant) -> bool {
        let Some(relays) = self.relays.as_mut() else {
            return false;
        };
        let consumed = relays.handle_datagram(d.source, &d.contents, now);
        if consumed {
            self.collect();
        }
        consumed
    }

    /// Relayed peer data, as the ICE agent must see it: from the peer, to our relay address.
    pub(crate) fn poll_inbound(&mut self) -> Option<Datagram> {
        self.inbound.pop_front()
    }

    /// A transmit of the ICE agent: `Some` to send as it is, `None` when it went through a relay.
    pub(crate) fn outgoing(&mut self, d: Datagram, now: Instant) -> Option<Datagram> {
        match self.relays.as_mut() {
            Some(relays) if relays.is_relay(d.source) => {
                relays.send(d.source, d.destination, &d.contents, now);
                self.collect();
                None
            }
            _ => Some(d),
        }
    }

    /// A remote candidate's address: every allocation gets a permission and a channel for it.
    pub(crate) fn remote_candidate(&mut self, addr: SocketAddr, now: Instant) {
        match self.relays.as_mut() {
            Some(relays) => {
                relays.add_remote_candidate(addr, now);
                self.collect();
            }
            None if self.remote.len() < MAX_REMEMBERED && !self.remote.contains(&addr) => {
                self.remote.push(addr);
            }
            None => {}
        }
    }

    /// Something happened on a stream to a TURN server.
    pub(crate) fn stream(&mut self, stream: StreamId, event: StreamEvent, now: Instant) {
        if let StreamEvent::Closed { reason } = &event {
            tracing::debug!(?stream, reason = %crate::text::sanitize_max(reason, 200), "TURN stream closed");
        }
        if let Some(relays) = self.relays.as_mut() {
            relays.handle_stream(stream, event, now);
            self.collect();
        }
    }

    /// Gather again after the path was lost ([`Relays::regather`]); nothing when no server is configured.
    pub(crate) fn regather(&mut self, now: Instant) {
        if let Some(relays) = self.relays.as_mut() {
            relays.regather(now);
            self.collect();
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Some(relays) = self.relays.as_mut() {
            if relays.poll_timeout().is_some_and(|t| t <= now) {
                relays.handle_timeout(now);
                self.collect();
            }
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.relays.as_ref().and_then(Relays::poll_timeout)
    }

    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub(crate) fn poll_event(&mut self) -> Option<GatherEvent> {
        self.events.pop_front()
    }

    /// Start the relays once the host address is known and the credentials are settled.
    fn try_start(&mut self, now: Instant) {
        if self.relays.is_some() || self.gathered || !self.hosts_done || self.wants_credentials() {
            return;
        }
        let first_server = self
            .plan
            .stun_servers()
            .first()
            .copied()
            .or_else(|| self.plan.turn_servers().first().map(|t| t.addr));
        let Some(server) = first_server else {
            return self.finish_gathering();
        };
        let Some(base) = pick_base(&self.hosts, server) else {
            self.problem(RelayProblem::NoHostAddress);
            return self.finish_gathering();
        };
        let turn = match &self.credentials {
            Credentials::Known(c) => self
                .plan
                .turn_servers()
                .iter()
                .filter(|t| t.addr.is_ipv4() == base.is_ipv4())
                .map(|t| TurnServer {
                    addr: t.addr,
                    name: t.name.clone(),
                    transport: t.transport,
                    username: c.username.clone(),
                    password: c.password.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        let config = RelayConfig {
            stun: self
                .plan
                .stun_servers()
                .iter()
                .copied()
                .filter(|s| s.is_ipv4() == base.is_ipv4())
                .collect(),
            turn,
            gather_timeout: self.plan.gather_timeout,
            ..RelayConfig::default()
        };
        if config.stun.is_empty() && config.turn.is_empty() {
            return self.finish_gathering();
        }
        tracing::debug!(%base, stun = config.stun.len(), turn = config.turn.len(), "gathering from relay servers");
        self.base = Some(base);
        let mut relays = Relays::new(&config, base, self.seed, now);
        for addr in std::mem::take(&mut self.remote) {
            relays.add_remote_candidate(addr, now);
        }
        self.relays = Some(relays);
        self.collect();
    }

    fn finish_gathering(&mut self) {
        if !self.gathered {
            self.gathered = true;
            self.events.push_back(GatherEvent::Gathered);
        }
    }

    fn problem(&mut self, problem: RelayProblem) {
        tracing::info!(problem = %problem, "relay server gave no candidate");
        if self.problems.len() < MAX_REMEMBERED {
            self.problems.push(problem.clone());
        }
        self.events.push_back(GatherEvent::Failed(problem));
    }

    /// Move what the relays produced into the node's queues.
    fn collect(&mut self) {
        let (Some(relays), Some(base)) = (self.relays.as_mut(), self.base) else {
            return;
        };
        let mut events = Vec::new();
        while let Some(io) = relays.poll_io() {
            self.outputs.push_back(match io {
                RelayIo::Datagram { to, data } => Output::Transmit(Datagram {
                    source: base,
                    destination: to,
                    contents: data,
                }),
                RelayIo::StreamOpen {
                    stream,
                    to,
                    tls_name,
                } => Output::StreamOpen {
                    stream,
                    to,
                    tls_name,
                },
                RelayIo::StreamWrite { stream, data } => Output::StreamWrite { stream, data },
                RelayIo::StreamClose { stream } => Output::StreamClose { stream },
            });
        }
        while let Some(p) = relays.poll_peer_data() {
            self.inbound.push_back(Datagram {
                source: p.peer,
                destination: p.relay,
                contents: p.data,
            });
        }
        while let Some(e) = relays.poll_event() {
            events.push(e);
        }
        // Servers still silent when gathering ends are named then (they may still answer later, and
        // their candidates would still trickle).
        let silent = if events.contains(&RelayEvent::Gathered) {
            relays.silent_servers()
        } else {
            Vec::new()
        };
        for e in events {
            match e {
                RelayEvent::Candidate {
                    kind, addr, base, ..
                } => {
                    if self.announced.contains(&addr) {
                        continue;
                    }
                    self.announced.push(addr);
                    let kind = match kind {
                        Gathered::ServerReflexive => CandidateKind::ServerReflexive { base },
                        Gathered::Relayed => {
                            self.relayed += 1;
                            CandidateKind::Relayed { base }
                        }
                    };
                    self.events.push_back(GatherEvent::Candidate { addr, kind });
                }
                RelayEvent::ServerFailed {
                    server,
                    turn,
                    failure,
                } => self.problem(RelayProblem::Server {
                    server,
                    turn,
                    failure,
                }),
                RelayEvent::Gathered => {
                    for &(server, turn) in &silent {
                        self.problem(RelayProblem::Server {
                            server,
                            turn,
                            failure: RelayFailure::Unreachable,
                        });
                    }
                    self.finish_gathering();
                }
            }
        }
    }
}

/// The host address to reach `server` from: same family, loopback only for a loopback server, else any
/// of the family (the kernel routes it; with one socket bound to all interfaces the source is the
/// socket either way).
fn pick_base(hosts: &[SocketAddr], server: SocketAddr) -> Option<SocketAddr> {
    let family = |h: &&SocketAddr| h.is_ipv4() == server.is_ipv4();
    hosts
        .iter()
        .filter(family)
        .find(|h| h.ip().is_loopback() == server.ip().is_loopback())
        .or_else(|| hosts.iter().find(family))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn plan(policy: IcePolicy, credentials: bool) -> RelayPlan {
        RelayPlan {
            stun: vec![addr("198.18.0.11:3478")],
            turn: vec![TurnEndpoint {
                addr: addr("198.18.0.11:3478"),
                name: "krelay.test".into(),
                transport: TurnTransport::Udp,
            }],
            credentials: credentials.then(|| TurnCredentials {
                username: "u".into(),
                password: "p".into(),
            }),
            policy,
            ..RelayPlan::default()
        }
    }

    fn sent_to(layer: &mut RelayLayer) -> Vec<SocketAddr> {
        std::iter::from_fn(|| layer.poll_output())
            .filter_map(|o| match o {
                Output::Transmit(d) => Some(d.destination),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_empty_plan_is_gathered_from_the_start() {
        let layer = RelayLayer::new(RelayPlan::default(), 1);
        assert!(layer.is_gathered());
        assert!(!layer.wants_credentials());
        let no_relay = RelayLayer::new(
            RelayPlan {
                stun: Vec::new(),
                ..plan(IcePolicy::NoRelay, false)
            },
            1,
        );
        assert!(no_relay.is_gathered(), "no-relay drops TURN, nothing left");
    }

    #[test]
    fn stun_waits_for_the_host_address_and_turn_for_the_credentials() {
        let t0 = pam_lite_dev_clock::origin();
        let mut layer = RelayLayer::new(plan(IcePolicy::All, false), 1);
        assert!(layer.wants_credentials());
        layer.host_candidate(addr("127.0.0.1:4000"));
        layer.host_candidate(addr("10.1.0.2:4000"));
        layer.host_gathering_complete(t0);
        assert!(sent_to(&mut layer).is_empty(), "TURN waits for the router");
        layer.set_credentials(
            Ok(TurnCredentials {
                username: "u".into(),
                password: "p".into(),
            }),
            t0,
        );
        let out: Vec<Output> = std::iter::from_fn(|| layer.poll_output()).collect();
        assert!(!out.is_empty());
        for o in out {
            let Output::Transmit(d) = o else {
                panic!("{o:?}")
            };
            assert_eq!(
                d.source,
                addr("10.1.0.2:4000"),
                "not the loopback host for a public server"
            );
            assert_eq!(d.destination, addr("198.18.0.11:3478"));
        }
    }

    #[test]
    fn failed_credentials_are_a_named_problem_and_relay_only_then_fails() {
        let t0 = pam_lite_dev_clock::origin();
        let mut layer = RelayLayer::new(plan(IcePolicy::RelayOnly, false), 1);
        layer.host_candidate(addr("10.1.0.2:4000"));
        layer.host_gathering_complete(t0);
        layer.set_credentials(Err("HTTP 403\u{1b}[2J".into()), t0);
        assert!(layer.is_gathered(), "relay-only has no STUN: nothing left");
        assert!(layer.relay_only_failed());
        let shown = layer.problems()[0].to_string();
        assert!(
            shown.contains("relay_access_creds failed: HTTP 403"),
            "{shown}"
        );
        assert!(!shown.contains('\u{1b}'), "{shown}");
    }

    #[test]
    fn relay_only_admits_only_relayed_candidates() {
        let layer = RelayLayer::new(plan(IcePolicy::RelayOnly, true), 1);
        let base = addr("10.1.0.2:4000");
        assert!(!layer.admits(CandidateKind::Host));
        assert!(!layer.admits(CandidateKind::ServerReflexive { base }));
        assert!(layer.admits(CandidateKind::Relayed { base }));
        let all = RelayLayer::new(plan(IcePolicy::All, true), 1);
        assert!(all.admits(CandidateKind::Host));
    }

    #[test]
    fn no_host_address_of_the_servers_family_is_a_named_problem() {
        let t0 = pam_lite_dev_clock::origin();
        let mut layer = RelayLayer::new(plan(IcePolicy::All, true), 1);
        layer.host_candidate(addr("[fd00::2]:4000"));
        layer.host_gathering_complete(t0);
        assert!(layer.is_gathered());
        assert_eq!(layer.problems(), &[RelayProblem::NoHostAddress]);
    }

    #[test]
    fn transmits_from_host_addresses_pass_through() {
        let t0 = pam_lite_dev_clock::origin();
        let mut layer = RelayLayer::new(plan(IcePolicy::All, true), 1);
        layer.host_candidate(addr("10.1.0.2:4000"));
        layer.host_gathering_complete(t0);
        let d = Datagram {
            source: addr("10.1.0.2:4000"),
            destination: addr("10.2.0.2:5000"),
            contents: vec![1, 2, 3],
        };
        assert_eq!(layer.outgoing(d.clone(), t0), Some(d.clone()));
        assert!(!layer.incoming(&d, t0), "not from a relay server");
    }
}
