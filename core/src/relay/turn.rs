//! One TURN allocation (RFC 8656) on one TURN server, over UDP (the node's socket) or over a byte stream
//! (TCP, or TLS that the driver terminates), driven by turn-client-proto.
//!
//! turn-client-proto does the protocol: the 401/nonce challenge, long-term credentials, refreshing the
//! allocation, permissions and channels before they expire, ChannelData and Send/Data indications. Framing on streams
//! is done here (`framing.rs`: the crate neither pads ChannelData nor skips the server's padding). This module adds what a launch needs around it:
//! * **why an allocation failed** — the crate reports only "failed", so the error codes the server sent are
//!   watched here: a second 401 after credentials were offered is *wrong credentials* (a clear error, not a
//!   timeout), any other error code is a refusal, silence is *unreachable*;
//! * **every peer, including late ones** — each remote candidate the gateway trickles gets a channel
//!   binding as soon as the allocation exists (and a permission for its address on the way);
//! * the server-reflexive address the server reports in the Allocate response (XOR-MAPPED-ADDRESS), so a
//!   TURN server doubles as the STUN server without another request.

use core::net::SocketAddr;
use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use turn_client_proto::api::{TurnClientApi, TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet};
use turn_client_proto::client::TurnClient;
use turn_client_proto::stun::agent::Transmit;
use turn_client_proto::stun::types::attribute::{ErrorCode, XorMappedAddress};
use turn_client_proto::stun::types::message::{Message, MessageClass};
use turn_client_proto::stun::types::TransportType;
use turn_client_proto::tcp::TurnClientTcp;
use turn_client_proto::types::message::ALLOCATE;
use turn_client_proto::types::TurnCredentials;
use turn_client_proto::udp::TurnClientUdp;

use super::clock::Clock;
use super::framing::{pad_for_stream, StreamFramer};
use super::RelayFailure;

/// How the node reaches the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnTransport {
    /// `turn:host:3478` — datagrams on the node's own UDP socket.
    Udp,
    /// `turn:host:3478?transport=tcp` — one TCP connection the driver opens.
    Tcp,
    /// `turns:host:5349` — one TLS connection the driver opens (the driver owns TLS and its trust policy).
    Tls,
}

/// Where an allocation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// Waiting for the driver's stream to the server (TCP/TLS only).
    Connecting,
    /// The allocate transaction is running.
    Allocating,
    /// The relay address peers can send to.
    Allocated(SocketAddr),
    /// Finished without (or after losing) an allocation.
    Failed(RelayFailure),
}

/// One TURN allocation. Its `Debug` leaves out the crate's client, whose own `Debug` prints the password.
pub(crate) struct Allocation {
    server: SocketAddr,
    transport: TurnTransport,
    config: Option<TurnConfig>,
    client: Option<TurnClient>,
    state: State,
    /// The server-reflexive address seen in the Allocate success (the server doubles as STUN).
    mapped: Option<SocketAddr>,
    /// Error codes from the server's Allocate error responses so far, one per transaction: a response
    /// the network duplicated (or a retransmission's second answer) is the same answer, not a second one.
    allocate_errors: Vec<(u128, u16)>,
    peers: BTreeSet<SocketAddr>,
    bound: BTreeSet<SocketAddr>,
    outbox: VecDeque<Vec<u8>>,
    received: VecDeque<(SocketAddr, Vec<u8>)>,
    /// When the crate next needs `poll` (retransmission, pacing, refresh); kept current by every input.
    wake: Option<Instant>,
    /// The server has answered something (a UDP allocation that hears nothing falls back to TCP).
    heard: bool,
    /// Whole frames out of the stream (TCP/TLS): the crate is given one unpadded frame at a time.
    framer: StreamFramer,
}

impl std::fmt::Debug for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocation")
            .field("server", &self.server)
            .field("transport", &self.transport)
            .field("state", &self.state)
            .field("mapped", &self.mapped)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Allocation {
    /// A UDP allocation starts at once from the node's socket (`local`); a stream allocation waits for
    /// [`Allocation::stream_connected`].
    pub(crate) fn new(
        server: SocketAddr,
        transport: TurnTransport,
        username: &str,
        password: &str,
        local: SocketAddr,
        clock: &Clock,
        now: Instant,
    ) -> Self {
        let config = TurnConfig::new(TurnCredentials::new(username, password));
        let mut this = Self {
            server,
            transport,
            config: Some(config),
            client: None,
            state: State::Connecting,
            mapped: None,
            allocate_errors: Vec::new(),
            peers: BTreeSet::new(),
            bound: BTreeSet::new(),
            outbox: VecDeque::new(),
            received: VecDeque::new(),
            wake: None,
            heard: false,
            framer: StreamFramer::default(),
        };
        if transport == TurnTransport::Udp {
            this.start(local, clock, now);
        }
        this
    }

    fn start(&mut self, local: SocketAddr, clock: &Clock, now: Instant) {
        let Some(config) = self.config.take() else {
            return;
        };
        self.client = Some(match self.transport {
            TurnTransport::Udp => {
                TurnClient::Udp(TurnClientUdp::allocate(local, self.server, config))
            }
            TurnTransport::Tcp | TurnTransport::Tls => {
                TurnClient::Tcp(TurnClientTcp::allocate(local, self.server, config))
            }
        });
        self.state = State::Allocating;
        self.pump(clock, now);
    }

    pub(crate) fn server(&self) -> SocketAddr {
        self.server
    }

    pub(crate) fn transport(&self) -> TurnTransport {
        self.transport
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// Whether the server has answered anything yet.
    pub(crate) fn heard(&self) -> bool {
        self.heard
    }

    pub(crate) fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    pub(crate) fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            State::Allocated(a) => Some(a),
            _ => None,
        }
    }

    /// The driver's stream to the server is up; `local` is its local address.
    pub(crate) fn stream_connected(&mut self, local: SocketAddr, clock: &Clock, now: Instant) {
        if self.state == State::Connecting {
            self.start(local, clock, now);
        }
    }

    /// The stream could not be opened or was closed.
    pub(crate) fn stream_closed(&mut self, clock: &Clock, now: Instant) {
        if let Some(client) = &mut self.client {
            client.protocol_error();
        }
        let failure = match self.state {
            State::Connecting => RelayFailure::Unreachable,
            _ => RelayFailure::Closed,
        };
        self.fail(failure);
        self.pump(clock, now);
    }

    fn fail(&mut self, failure: RelayFailure) {
        if !matches!(self.state, State::Failed(_)) {
            self.state = State::Failed(failure);
        }
    }

    /// Want a channel to `peer` (a remote candidate) on this allocation, now or as soon as it exists.
    pub(crate) fn add_peer(&mut self, peer: SocketAddr, clock: &Clock, now: Instant) {
        if peer.is_ipv4() == self.server.is_ipv4() && self.peers.insert(peer) {
            self.pump(clock, now);
        }
    }

    /// Bytes from the server (one datagram, or a chunk of the stream). `false` when they are not this
    /// allocation's (not from its server).
    pub(crate) fn handle(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        clock: &Clock,
        now: Instant,
    ) -> bool {
        if from != self.server {
            return false;
        }
        if self.client.is_none() {
            return false;
        }
        self.heard = true;
        if self.transport == TurnTransport::Udp {
            self.handle_frame(data, clock, now);
        } else {
            match self.framer.push(data) {
                Ok(frames) => {
                    for frame in frames {
                        self.handle_frame(&frame, clock, now);
                    }
                }
                Err(_) => {
                    tracing::debug!(server = %self.server, "TURN stream carried neither STUN nor ChannelData");
                    if let Some(client) = &mut self.client {
                        client.protocol_error();
                    }
                    self.fail(RelayFailure::Closed);
                }
            }
        }
        self.pump(clock, now);
        true
    }

    /// One whole message from the server: a datagram, or a frame of the stream without its padding.
    fn handle_frame(&mut self, data: &[u8], clock: &Clock, now: Instant) {
        self.watch_allocate_response(data);
        let server = self.server;
        let Some(client) = &mut self.client else {
            return;
        };
        // Addressed to the client's own local address: the node's UDP socket, or the stream's local end
        // (the crate files a stream's bytes under that (local, server) pair and ignores any other).
        let transmit = Transmit::new(data, client.transport(), server, client.local_addr());
        let ret = client.recv(transmit, clock.proto(now));
        if self.state == State::Allocating {
            if let Some(failure) = self.fatal_allocate_error() {
                // The crate would retransmit a refused request until its timeout (~40 s); a refusal is an
                // answer, so the allocation fails now, with the server's reason.
                if let Some(client) = &mut self.client {
                    client.protocol_error();
                }
                self.fail(failure);
            }
        }
        match ret {
            TurnRecvRet::Handled | TurnRecvRet::PeerIcmp { .. } => {}
            // From the server but not TURN: nothing the ICE agent expects either; dropped.
            TurnRecvRet::Ignored(_) => {}
            TurnRecvRet::PeerData(d) => self.received.push_back((d.peer, d.data().to_vec())),
        }
        let proto_now = clock.proto(now);
        if let Some(client) = &mut self.client {
            while let Some(d) = client.poll_recv(proto_now) {
                self.received.push_back((d.peer, d.data().to_vec()));
            }
        }
    }

    /// Watch the Allocate responses: the crate reports failure without a reason, and the mapped address
    /// it does not report at all.
    fn watch_allocate_response(&mut self, data: &[u8]) {
        let Ok(msg) = Message::from_bytes(data) else {
            return;
        };
        if !msg.has_method(ALLOCATE) {
            return;
        }
        if msg.has_class(MessageClass::Error) {
            if let Ok(e) = msg.attribute::<ErrorCode>() {
                let transaction = u128::from(msg.transaction_id());
                if !self.allocate_errors.iter().any(|&(t, _)| t == transaction)
                    && self.allocate_errors.len() < 16
                {
                    self.allocate_errors.push((transaction, e.code()));
                }
            }
        } else if msg.has_class(MessageClass::Success) && self.transport == TurnTransport::Udp {
            // (A stream's mapped address is a TCP mapping: no use as a UDP server-reflexive candidate.)
            if let Ok(x) = msg.attribute::<XorMappedAddress>() {
                self.mapped = Some(x.addr(msg.transaction_id()));
            }
        }
    }

    /// A refusal the allocation cannot recover from. The first 401 is the normal challenge and 438 (stale
    /// nonce) is retried by the crate; a 401 to a second transaction means the credentials were refused
    /// (the same challenge twice — a duplicated datagram — does not), and any other
    /// error code (403 forbidden, 486 quota, 508 capacity, ...) is the server's final word.
    fn fatal_allocate_error(&self) -> Option<RelayFailure> {
        if self
            .allocate_errors
            .iter()
            .filter(|&&(_, c)| c == 401)
            .count()
            >= 2
        {
            return Some(RelayFailure::Unauthorized);
        }
        self.allocate_errors
            .iter()
            .find(|&&(_, c)| c != 401 && c != 438)
            .map(|&(_, c)| RelayFailure::Refused(c))
    }

    /// Why the allocation failed, from what the server said (silence: unreachable).
    fn failure_reason(&self) -> RelayFailure {
        self.fatal_allocate_error()
            .unwrap_or(RelayFailure::Unreachable)
    }

    /// Advance timers (retransmissions, refreshes) and collect what is due.
    pub(crate) fn handle_timeout(&mut self, clock: &Clock, now: Instant) {
        self.pump(clock, now);
    }

    /// The next moment [`Allocation::handle_timeout`] is due.
    pub(crate) fn wake(&self) -> Option<Instant> {
        self.wake
    }

    /// Drain the client: transmits, events, and channel bindings for peers that still need one.
    fn pump(&mut self, clock: &Clock, now: Instant) {
        self.wake = self.drain(clock, now);
    }

    fn drain(&mut self, clock: &Clock, now: Instant) -> Option<Instant> {
        let proto_now = clock.proto(now);
        let client = self.client.as_mut()?;
        let mut wake = None;
        match client.poll(proto_now) {
            TurnPollRet::WaitUntil(t) => wake = Some(clock.core(t)),
            TurnPollRet::Closed => {
                let reason = match self.state {
                    State::Allocated(_) => RelayFailure::Closed,
                    _ => self.failure_reason(),
                };
                self.fail(reason);
            }
            // TCP allocations (RFC 6062) are never requested.
            TurnPollRet::AllocateTcpSocket { .. } | TurnPollRet::TcpClose { .. } => {}
        }
        let client = self.client.as_mut()?;
        while let Some(t) = client.poll_transmit(proto_now) {
            self.outbox.push_back(t.data.as_ref().to_vec());
        }
        let events: Vec<TurnEvent> = std::iter::from_fn(|| client.poll_event()).collect();
        for event in events {
            match event {
                TurnEvent::AllocationCreated(_, relayed) => self.state = State::Allocated(relayed),
                TurnEvent::AllocationCreateFailed(_) => {
                    let reason = self.failure_reason();
                    self.fail(reason);
                }
                TurnEvent::ChannelCreateFailed(_, peer) => {
                    tracing::debug!(%peer, server = %self.server, "TURN channel binding refused");
                }
                _ => {}
            }
        }
        if matches!(self.state, State::Allocated(_)) {
            for peer in self.peers.iter().copied().collect::<Vec<_>>() {
                if self.bound.contains(&peer) {
                    continue;
                }
                if let Some(client) = &mut self.client {
                    // turn-client-proto sends to a peer only once it holds a permission of its own for the
                    // peer's address (a channel binding alone does not count), so ask for both: the
                    // permission first (data may flow as Send indications), then the channel (compact
                    // ChannelData from then on). "Already exists" answers are fine.
                    if !client.have_permission(TransportType::Udp, peer.ip()) {
                        let _ = client.create_permission(TransportType::Udp, peer.ip(), proto_now);
                    }
                    let _ = client.bind_channel(TransportType::Udp, peer, proto_now);
                }
                self.bound.insert(peer);
            }
            if let Some(client) = &mut self.client {
                while let Some(t) = client.poll_transmit(proto_now) {
                    self.outbox.push_back(t.data.as_ref().to_vec());
                }
                if let TurnPollRet::WaitUntil(t) = client.poll(proto_now) {
                    wake = Some(clock.core(t));
                }
            }
        }
        if matches!(self.state, State::Failed(_)) {
            return None;
        }
        wake
    }

    /// Send `data` to `peer` through the relay. `false` when there is no allocation or no permission for
    /// the peer yet (ICE retransmits its checks, so nothing is lost that matters).
    pub(crate) fn send(
        &mut self,
        peer: SocketAddr,
        data: &[u8],
        clock: &Clock,
        now: Instant,
    ) -> bool {
        if self.relayed().is_none() {
            return false;
        }
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        match client.send_to(TransportType::Udp, peer, data, clock.proto(now)) {
            Ok(Some(build)) => {
                self.outbox.push_back(build.build().data);
                true
            }
            Ok(None) => {
                tracing::trace!(%peer, "TURN send produced nothing");
                true
            }
            Err(e) => {
                tracing::debug!(%peer, error = ?e, "TURN send refused");
                false
            }
        }
    }

    /// Bytes for the server, in order: datagrams from the node's socket, or writes on the stream.
    pub(crate) fn poll_bytes(&mut self) -> Option<Vec<u8>> {
        let bytes = self.outbox.pop_front()?;
        Some(match self.transport {
            TurnTransport::Udp => bytes,
            TurnTransport::Tcp | TurnTransport::Tls => pad_for_stream(bytes),
        })
    }

    /// Data a peer sent to our relay address: (peer, bytes).
    pub(crate) fn poll_received(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.received.pop_front()
    }
}
