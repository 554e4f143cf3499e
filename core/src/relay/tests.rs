//! [`Relays`] against a real sans-IO TURN server (turn-server-proto, the server half of the same
//! project) on a virtual network in virtual time: allocation with the 401/nonce challenge, srflx from the
//! Allocate response, wrong credentials, an unreachable server, channel bindings for early and late peers,
//! data both ways, refresh over a long session, STUN binding, and TURN over a stream.

use core::net::SocketAddr;
use std::time::{Duration, Instant};

use turn_client_proto::stun::agent::Transmit;
use turn_client_proto::stun::types::TransportType;
use turn_server_proto::api::{TurnServerApi, TurnServerPollRet};
use turn_server_proto::server::TurnServer as Server;

use super::*;

const USER: &str = "keeper-user";
const PASS: &str = "s3cret";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// turn-client-proto paces its requests 50 ms apart (RFC 8489's Ta), so the authenticated Allocate goes
/// 50 ms after the challenge and each channel binding 50 ms after the previous request: the tests give
/// the exchange half a second of virtual time.
///
/// The world: our node (behind a NAT that maps it to `mapped`), one TURN server, one peer.
struct World {
    t0: Instant,
    now: Instant,
    relays: Relays,
    server: Server,
    server_clock: Clock,
    local: SocketAddr,
    mapped: SocketAddr,
    server_addr: SocketAddr,
    relay_port: u16,
    /// The server is down: datagrams to it vanish.
    server_down: bool,
    /// The network delivers every UDP datagram from the server twice.
    duplicate_replies: bool,
    /// What the peer received: (from, data).
    peer_inbox: Vec<(SocketAddr, Vec<u8>)>,
    peer: SocketAddr,
    events: Vec<RelayEvent>,
    delivered: Vec<PeerData>,
    /// Stream bytes the driver would have written (TCP test).
    streams: Vec<RelayIo>,
    /// The server's side of the stream: whole frames out of what the client wrote.
    server_framer: super::framing::StreamFramer,
}

impl World {
    fn new(config: impl FnOnce(SocketAddr) -> RelayConfig, transport: TransportType) -> Self {
        let t0 = pam_lite_dev_clock::origin();
        let local = addr("10.0.0.2:5000");
        let server_addr = addr("198.51.100.1:3478");
        let mut server = Server::new(transport, server_addr, "keeper".into());
        server.add_user(USER.into(), PASS.into());
        let relays = Relays::new(&config(server_addr), local, 1, t0);
        Self {
            t0,
            now: t0,
            relays,
            server,
            server_clock: Clock::new(t0),
            local,
            mapped: addr("203.0.113.9:61000"),
            server_addr,
            relay_port: 50000,
            server_down: false,
            duplicate_replies: false,
            peer_inbox: Vec::new(),
            peer: addr("192.0.2.77:7000"),
            events: Vec::new(),
            delivered: Vec::new(),
            streams: Vec::new(),
            server_framer: Default::default(),
        }
    }

    /// Deliver a client datagram to the server (as seen through the NAT: from `mapped`).
    fn deliver_to_server(&mut self, data: Vec<u8>, transport: TransportType) {
        if self.server_down {
            return;
        }
        let now = self.server_clock.proto(self.now);
        let from = self.mapped;
        if let Some(reply) = self
            .server
            .recv(Transmit::new(data, transport, from, self.server_addr), now)
        {
            let t = reply.build();
            self.route_from_server(t.to, t.data, transport);
        }
    }

    fn route_from_server(&mut self, to: SocketAddr, data: Vec<u8>, transport: TransportType) {
        // turn-server-proto 0.7.3 addresses its Binding responses to its own listening address; a real
        // server answers the sender, so the harness does.
        let to = if to == self.server_addr {
            self.mapped
        } else {
            to
        };
        if to == self.mapped {
            match transport {
                TransportType::Udp => {
                    self.relays
                        .handle_datagram(self.server_addr, &data, self.now);
                    if self.duplicate_replies {
                        self.relays
                            .handle_datagram(self.server_addr, &data, self.now);
                    }
                }
                TransportType::Tcp => {
                    // As coturn does on a stream (RFC 8656 §12.5): ChannelData padded to 4 bytes.
                    // (turn-server-proto does not pad; the harness does it for it.)
                    let data = super::framing::pad_for_stream(data);
                    self.relays
                        .handle_stream(StreamId(0), StreamEvent::Data(data), self.now);
                }
            }
        } else if to == self.peer {
            // The relay's address as the peer sees it.
            self.peer_inbox.push((
                SocketAddr::new(self.server_addr.ip(), self.relay_port),
                data,
            ));
        }
    }

    /// The peer sends to our relay address.
    fn peer_sends(&mut self, data: &[u8]) {
        let relay = SocketAddr::new(self.server_addr.ip(), self.relay_port);
        let now = self.server_clock.proto(self.now);
        if let Some(reply) = self.server.recv(
            Transmit::new(data.to_vec(), TransportType::Udp, self.peer, relay),
            now,
        ) {
            let t = reply.build();
            self.route_from_server(t.to, t.data, t.transport);
        }
        self.pump(TransportType::Udp);
    }

    /// Move everything that is ready, until nothing moves.
    fn pump(&mut self, transport: TransportType) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(io) = self.relays.poll_io() {
                moved = true;
                match io {
                    RelayIo::Datagram { to, data } if to == self.server_addr => {
                        self.deliver_to_server(data, TransportType::Udp)
                    }
                    RelayIo::Datagram { .. } => {}
                    RelayIo::StreamOpen { stream, .. } => {
                        self.streams.push(io.clone());
                        // A stream has its own local address (another port than the node's UDP
                        // socket), as every real TCP connection does.
                        self.relays.handle_stream(
                            stream,
                            StreamEvent::Connected {
                                local: SocketAddr::new(self.local.ip(), 40_001),
                            },
                            self.now,
                        );
                    }
                    RelayIo::StreamWrite { data, .. } => {
                        // The server strips the padding of our ChannelData (turn-server-proto
                        // would not; coturn does), one whole frame at a time.
                        for frame in self.server_framer.push(&data).expect("framed stream") {
                            self.deliver_to_server(frame, TransportType::Tcp)
                        }
                    }
                    RelayIo::StreamClose { .. } => self.streams.push(io),
                }
            }
            let now = self.server_clock.proto(self.now);
            while let TurnServerPollRet::AllocateSocket {
                transport,
                listen_addr,
                client_addr,
                allocation_transport,
                family,
            } = self.server.poll(now)
            {
                moved = true;
                let relay = SocketAddr::new(self.server_addr.ip(), self.relay_port);
                self.server.allocated_socket(
                    transport,
                    listen_addr,
                    client_addr,
                    allocation_transport,
                    family,
                    Ok(relay),
                    now,
                );
            }
            while let Some(t) = self.server.poll_transmit(now) {
                moved = true;
                self.route_from_server(t.to, t.data, transport);
            }
            while let Some(e) = self.relays.poll_event() {
                moved = true;
                self.events.push(e);
            }
            while let Some(d) = self.relays.poll_peer_data() {
                moved = true;
                self.delivered.push(d);
            }
            if !moved {
                return;
            }
        }
        panic!("the relay layer and the server never settle");
    }

    /// Advance virtual time to `until`, firing every timer on the way.
    fn run_until(&mut self, until: Instant, transport: TransportType) {
        self.pump(transport);
        loop {
            let next = self.relays.poll_timeout().filter(|&t| t <= until);
            let Some(next) = next else { break };
            self.now = next.max(self.now);
            self.relays.handle_timeout(self.now);
            self.pump(transport);
            if next <= self.now && self.relays.poll_timeout() == Some(next) {
                // A timer that does not move would spin: step past it.
                self.now += Duration::from_millis(1);
            }
        }
        self.now = until.max(self.now);
        self.relays.handle_timeout(self.now);
        self.pump(transport);
    }

    fn relay_addr(&self) -> Option<SocketAddr> {
        self.events.iter().find_map(|e| match e {
            RelayEvent::Candidate {
                kind: CandidateKind::Relayed,
                addr,
                ..
            } => Some(*addr),
            _ => None,
        })
    }
}

fn turn_config(password: &str) -> impl FnOnce(SocketAddr) -> RelayConfig + '_ {
    move |server| RelayConfig {
        stun: vec![],
        turn: vec![TurnServer {
            addr: server,
            name: "turn.test".into(),
            transport: TurnTransport::Udp,
            username: USER.into(),
            password: password.into(),
        }],
        gather_timeout: Duration::from_secs(5),
        tcp_fallback: None,
    }
}

#[test]
fn allocates_after_the_challenge_and_reports_srflx_and_relay() {
    let mut w = World::new(turn_config(PASS), TransportType::Udp);
    let t0 = w.t0;
    w.run_until(t0 + Duration::from_millis(500), TransportType::Udp);
    let relay = w.relay_addr().expect("a relayed candidate");
    assert_eq!(relay, SocketAddr::new(w.server_addr.ip(), w.relay_port));
    assert!(w.events.contains(&RelayEvent::Candidate {
        kind: CandidateKind::ServerReflexive,
        addr: w.mapped,
        base: w.local,
        server: w.server_addr,
    }));
    assert_eq!(
        w.events.last(),
        Some(&RelayEvent::Gathered),
        "gathering ends as soon as every server answered"
    );
    assert!(w.relays.is_relay(relay));
}

#[test]
fn wrong_credentials_are_named_not_a_timeout() {
    let mut w = World::new(turn_config("not-the-password"), TransportType::Udp);
    let t0 = w.t0;
    w.run_until(t0 + Duration::from_millis(500), TransportType::Udp);
    assert!(
        w.events.contains(&RelayEvent::ServerFailed {
            server: w.server_addr,
            turn: true,
            failure: RelayFailure::Unauthorized
        }),
        "{:?}",
        w.events
    );
    assert_eq!(w.relay_addr(), None);
    assert!(w.events.contains(&RelayEvent::Gathered));
}

/// A duplicated datagram carries the same 401 challenge twice (one transaction): that is not a refusal
/// of the credentials (found by the simulation's relay properties with 1 % duplication).
#[test]
fn a_duplicated_challenge_is_not_wrong_credentials() {
    let mut w = World::new(turn_config(PASS), TransportType::Udp);
    w.duplicate_replies = true;
    let t0 = w.t0;
    w.run_until(t0 + Duration::from_millis(500), TransportType::Udp);
    assert!(w.relay_addr().is_some(), "{:?}", w.events);
    assert!(
        !w.events
            .iter()
            .any(|e| matches!(e, RelayEvent::ServerFailed { .. })),
        "{:?}",
        w.events
    );
}

#[test]
fn an_unreachable_server_costs_a_bounded_wait() {
    let mut w = World::new(turn_config(PASS), TransportType::Udp);
    w.server_down = true;
    let t0 = w.t0;
    w.run_until(t0 + Duration::from_secs(5), TransportType::Udp);
    assert!(
        w.events.contains(&RelayEvent::Gathered),
        "gathering ends at its bound"
    );
    w.run_until(t0 + Duration::from_secs(60), TransportType::Udp);
    assert!(
        w.events.contains(&RelayEvent::ServerFailed {
            server: w.server_addr,
            turn: true,
            failure: RelayFailure::Unreachable
        }),
        "{:?}",
        w.events
    );
    assert_eq!(w.relays.poll_timeout(), None, "nothing left to wait for");
}

#[test]
fn data_flows_both_ways_through_a_channel_for_early_and_late_peers() {
    let mut w = World::new(turn_config(PASS), TransportType::Udp);
    let t0 = w.t0;
    let peer = w.peer;
    // The peer's candidate arrives before the allocation exists.
    w.relays.add_remote_candidate(peer, t0);
    w.run_until(t0 + Duration::from_millis(500), TransportType::Udp);
    let relay = w.relay_addr().expect("allocated");
    assert!(w.relays.send(relay, peer, b"ping", w.now));
    w.pump(TransportType::Udp);
    assert_eq!(w.peer_inbox, vec![(relay, b"ping".to_vec())]);
    w.peer_sends(b"pong");
    assert_eq!(
        w.delivered,
        vec![PeerData {
            relay,
            peer,
            data: b"pong".to_vec()
        }]
    );

    // A late candidate (trickled after the allocation) gets its own channel.
    let late = addr("192.0.2.78:7001");
    w.peer = late;
    w.relays.add_remote_candidate(late, w.now);
    w.run_until(w.now + Duration::from_millis(500), TransportType::Udp);
    assert!(w.relays.send(relay, late, b"late", w.now));
    w.pump(TransportType::Udp);
    assert_eq!(w.peer_inbox.last(), Some(&(relay, b"late".to_vec())));
}

#[test]
fn the_allocation_outlives_its_lifetime_by_refreshing() {
    let mut w = World::new(turn_config(PASS), TransportType::Udp);
    let t0 = w.t0;
    let peer = w.peer;
    w.relays.add_remote_candidate(peer, t0);
    w.run_until(t0 + Duration::from_millis(500), TransportType::Udp);
    let relay = w.relay_addr().expect("allocated");
    // 30 minutes: several allocation lifetimes (10 min) and channel lifetimes (10 min).
    w.run_until(t0 + Duration::from_secs(30 * 60), TransportType::Udp);
    assert!(w.relays.send(relay, peer, b"still here", w.now));
    w.pump(TransportType::Udp);
    assert_eq!(w.peer_inbox.last(), Some(&(relay, b"still here".to_vec())));
    assert!(
        !w.events
            .iter()
            .any(|e| matches!(e, RelayEvent::ServerFailed { .. })),
        "{:?}",
        w.events
    );
}

#[test]
fn a_stun_server_gives_a_server_reflexive_candidate() {
    let mut w = World::new(
        |server| RelayConfig {
            stun: vec![server],
            ..RelayConfig::default()
        },
        TransportType::Udp,
    );
    let t0 = w.t0;
    w.run_until(t0 + Duration::from_millis(500), TransportType::Udp);
    assert_eq!(
        w.events,
        vec![
            RelayEvent::Candidate {
                kind: CandidateKind::ServerReflexive,
                addr: w.mapped,
                base: w.local,
                server: w.server_addr
            },
            RelayEvent::Gathered
        ]
    );
}

#[test]
fn turn_over_a_stream_allocates_and_relays() {
    let mut w = World::new(
        |server| RelayConfig {
            turn: vec![TurnServer {
                addr: server,
                name: "turn.test".into(),
                transport: TurnTransport::Tcp,
                username: USER.into(),
                password: PASS.into(),
            }],
            ..RelayConfig::default()
        },
        TransportType::Tcp,
    );
    let t0 = w.t0;
    let peer = w.peer;
    w.relays.add_remote_candidate(peer, t0);
    w.run_until(t0 + Duration::from_millis(500), TransportType::Tcp);
    assert!(matches!(
        w.streams.first(),
        Some(RelayIo::StreamOpen { tls_name: None, .. })
    ));
    let relay = w.relay_addr().expect("allocated over the stream");
    assert!(w.relays.send(relay, peer, b"over tcp", w.now));
    w.pump(TransportType::Tcp);
    assert_eq!(w.peer_inbox.last(), Some(&(relay, b"over tcp".to_vec())));
    // Lengths that are not a multiple of four, both ways, back to back: the padding of each ChannelData
    // must not shift the next frame (a DTLS record of 633 bytes once made the client deaf for good).
    for len in [633, 1, 2, 3, 4, 117] {
        let data = vec![len as u8; len];
        assert!(w.relays.send(relay, peer, &data, w.now));
        w.pump(TransportType::Tcp);
        assert_eq!(
            w.peer_inbox.last(),
            Some(&(relay, data.clone())),
            "{len} bytes out"
        );
        w.peer_sends(&data);
        assert_eq!(
            w.delivered.last().map(|d| &d.data),
            Some(&data),
            "{len} bytes in"
        );
    }
}

#[test]
fn a_stream_that_cannot_open_fails_the_allocation_as_unreachable() {
    let config = RelayConfig {
        turn: vec![TurnServer {
            addr: addr("198.51.100.1:443"),
            name: "turn.test".into(),
            transport: TurnTransport::Tls,
            username: USER.into(),
            password: PASS.into(),
        }],
        ..RelayConfig::default()
    };
    let t0 = pam_lite_dev_clock::origin();
    let mut r = Relays::new(&config, addr("10.0.0.2:5000"), 1, t0);
    assert_eq!(
        r.poll_io(),
        Some(RelayIo::StreamOpen {
            stream: StreamId(0),
            to: addr("198.51.100.1:443"),
            tls_name: Some("turn.test".into())
        })
    );
    r.handle_stream(
        StreamId(0),
        StreamEvent::Closed {
            reason: "refused".into(),
        },
        t0 + Duration::from_millis(3),
    );
    assert_eq!(
        r.poll_event(),
        Some(RelayEvent::ServerFailed {
            server: addr("198.51.100.1:443"),
            turn: true,
            failure: RelayFailure::Unreachable
        })
    );
    assert_eq!(r.poll_event(), Some(RelayEvent::Gathered));
}

#[test]
fn credentials_never_reach_debug_output() {
    let config = turn_config(PASS)(addr("198.51.100.1:3478"));
    assert!(!format!("{config:?}").contains(PASS));
}

#[test]
fn credentials_never_reach_debug_output_of_a_live_allocation() {
    let mut w = World::new(turn_config(PASS), TransportType::Udp);
    let t0 = w.t0;
    w.run_until(t0 + Duration::from_millis(500), TransportType::Udp);
    assert!(w.relay_addr().is_some());
    assert!(!format!("{:?}", w.relays).contains(PASS));
}
