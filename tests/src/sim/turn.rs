//! The simulation's STUN/TURN server: turn-server-proto (the sans-IO server half of the crates the core's
//! TURN client uses), listening on UDP and TCP at one public address, with one long-term user. It answers
//! STUN Binding requests too, so the same address is the nodes' STUN server, as Keeper's krelay is.
//!
//! One deliberate addition, to stay faithful to coturn in the NAT lab: a CreatePermission or ChannelBind
//! for a peer on the server's own address (another allocation's relay address) is refused with a signed
//! 403, so relay ↔ relay through one server is no path. And, as coturn does (RFC 8656 §7.2's SHOULD), a
//! retransmitted Allocate whose allocation already exists (its success answer was lost) gets that same
//! success again; turn-server-proto 0.7.3 answers it with 437 (Allocation Mismatch), which would make any
//! lost Allocate answer fatal. Everything else is the crate's own behaviour.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use turn_server_proto::api::{Transmit, TurnServerApi, TurnServerPollRet};
use turn_server_proto::server::TurnServer;
use turn_server_proto::stun::types::attribute::{
    AttributeFromRaw, AttributeStaticType, ErrorCode, MessageIntegritySha256, Userhash, Username,
};
use turn_server_proto::stun::types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials,
    MessageWrite, MessageWriteExt, MessageWriteVec,
};
use turn_server_proto::stun::types::TransportType;
use turn_server_proto::types::attribute::XorPeerAddress;
use turn_server_proto::types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION};
use turn_server_proto::types::Instant as ProtoInstant;

use pam_lite_core::relay::framing::{pad_for_stream, StreamFramer};
use pam_lite_core::Datagram;

/// The server's public address (UDP and TCP).
pub const TURN_ADDR: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 10)),
    3478,
);
/// The one user the server knows.
pub const TURN_USER: &str = "keeper-user";
pub const TURN_PASSWORD: &str = "s3cret";
const REALM: &str = "keeper.sim";

/// What the server sends.
#[derive(Debug)]
pub enum TurnOut {
    /// A datagram from the listening address or a relay address.
    Udp(Datagram),
    /// Bytes on the TCP connection from client `to`.
    Tcp { to: SocketAddr, data: Vec<u8> },
}

/// See the module docs.
#[derive(Debug)]
pub struct SimTurn {
    /// A down server hears nothing and accepts no connection.
    pub up: bool,
    zero: Instant,
    udp: TurnServer,
    tcp: TurnServer,
    /// Relay address → whether the TCP-listening server owns it.
    relays: HashMap<SocketAddr, bool>,
    next_port: u16,
    /// Each TCP client's partial frame.
    tcp_framers: HashMap<SocketAddr, StreamFramer>,
    out: VecDeque<TurnOut>,
    wake: Option<Instant>,
    /// Datagrams relayed between a relay address and a peer (both ways).
    pub relayed: u64,
    /// Permissions and channels refused because the peer was one of our relay addresses.
    pub refused_self: u64,
    /// Every CreatePermission / ChannelBind request seen: (method, peer), for diagnostics.
    pub peer_requests: Vec<(&'static str, SocketAddr)>,
    /// Per UDP client: the Allocate success it was sent (transaction id, bytes), for retransmissions.
    allocated: HashMap<SocketAddr, (u128, Vec<u8>)>,
}

impl SimTurn {
    pub fn new(up: bool, zero: Instant) -> Self {
        let server = |t| {
            let mut s = TurnServer::new(t, TURN_ADDR, REALM.into());
            s.add_user(TURN_USER.into(), TURN_PASSWORD.into());
            s
        };
        SimTurn {
            up,
            zero,
            udp: server(TransportType::Udp),
            tcp: server(TransportType::Tcp),
            relays: HashMap::new(),
            next_port: 49152,
            tcp_framers: HashMap::new(),
            out: VecDeque::new(),
            wake: None,
            relayed: 0,
            refused_self: 0,
            peer_requests: Vec::new(),
            allocated: HashMap::new(),
        }
    }

    /// Whether a datagram to `addr` is the server's (its listening address or a relay address).
    /// The server restarts (coturn restarted, or a failover to another instance): every allocation,
    /// permission and channel is gone; new allocations get new relay ports.
    pub fn restart(&mut self) {
        let next_port = self.next_port;
        *self = SimTurn {
            next_port,
            relayed: self.relayed,
            ..SimTurn::new(self.up, self.zero)
        };
    }

    pub fn owns(&self, addr: SocketAddr) -> bool {
        addr.ip() == TURN_ADDR.ip()
    }

    fn proto(&self, now: Instant) -> ProtoInstant {
        let nanos = now.saturating_duration_since(self.zero).as_nanos();
        ProtoInstant::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    fn core(&self, t: ProtoInstant) -> Instant {
        self.zero + Duration::from_nanos(u64::try_from(t.as_nanos()).unwrap_or(0))
    }

    /// A UDP datagram arrived at one of our addresses.
    pub fn recv_udp(&mut self, d: Datagram, now: Instant) {
        if !self.up {
            return;
        }
        let to_relay = d.destination != TURN_ADDR;
        let on_tcp = self.relays.get(&d.destination).copied().unwrap_or(false);
        if to_relay {
            self.relayed += 1;
        } else if let Some(reply) = self.repeat_allocate_success(d.source, &d.contents) {
            self.out.push_back(TurnOut::Udp(Datagram {
                source: TURN_ADDR,
                destination: d.source,
                contents: reply,
            }));
            return;
        } else if let Some(reply) = self.refuse_self_peer(&d.contents) {
            self.out.push_back(TurnOut::Udp(Datagram {
                source: TURN_ADDR,
                destination: d.source,
                contents: reply,
            }));
            return;
        }
        let pnow = self.proto(now);
        let server = if on_tcp { &mut self.tcp } else { &mut self.udp };
        let t = Transmit::new(
            d.contents.as_slice(),
            TransportType::Udp,
            d.source,
            d.destination,
        );
        if let Some(reply) = server.recv(t, pnow) {
            self.push(answer_to(reply.build(), d.source));
        }
        self.pump(now);
    }

    /// Bytes on the TCP connection from `from` (a client's public address). Like coturn, the server takes
    /// whole frames off the stream with the ChannelData padding stripped (RFC 8656 §12.5; turn-server-proto
    /// itself neither strips nor adds it).
    pub fn recv_tcp(&mut self, from: SocketAddr, data: Vec<u8>, now: Instant) {
        if !self.up {
            return;
        }
        let framer = self.tcp_framers.entry(from).or_default();
        let Ok(frames) = framer.push(&data) else {
            self.tcp_framers.remove(&from);
            return;
        };
        for frame in frames {
            if let Some(reply) = self.refuse_self_peer(&frame) {
                self.out.push_back(TurnOut::Tcp {
                    to: from,
                    data: reply,
                });
                continue;
            }
            let pnow = self.proto(now);
            let t = Transmit::new(frame.as_slice(), TransportType::Tcp, from, TURN_ADDR);
            if let Some(reply) = self.tcp.recv(t, pnow) {
                let reply = reply.build();
                self.push(answer_to(reply, from));
            }
        }
        self.pump(now);
    }

    fn push(&mut self, t: Transmit<Vec<u8>>) {
        if t.from != TURN_ADDR {
            self.relayed += 1;
        } else if t.transport == TransportType::Udp {
            // (An Allocate's success leaves here, after the relay socket was allocated.)
            self.remember_allocate_success(&t);
        }
        self.out.push_back(match t.transport {
            // ChannelData padded to four bytes on the stream, as coturn sends it.
            TransportType::Tcp => TurnOut::Tcp {
                to: t.to,
                data: pad_for_stream(t.data),
            },
            TransportType::Udp => TurnOut::Udp(Datagram {
                source: t.from,
                destination: t.to,
                contents: t.data,
            }),
        });
    }

    /// The success a retransmitted Allocate (same client, same transaction) was already given.
    fn repeat_allocate_success(&self, from: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
        let msg = Message::from_bytes(data).ok()?;
        let (tid, success) = self.allocated.get(&from)?;
        let same = msg.has_method(ALLOCATE)
            && msg.has_class(MessageClass::Request)
            && u128::from(msg.transaction_id()) == *tid;
        same.then(|| success.clone())
    }

    fn remember_allocate_success(&mut self, reply: &Transmit<Vec<u8>>) {
        let Ok(msg) = Message::from_bytes(&reply.data) else {
            return;
        };
        if msg.has_method(ALLOCATE) && msg.has_class(MessageClass::Success) {
            let tid = u128::from(msg.transaction_id());
            self.allocated.insert(reply.to, (tid, reply.data.clone()));
        }
    }

    /// coturn's refusal of a peer on its own address: a signed 403 for CreatePermission / ChannelBind.
    fn refuse_self_peer(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        let msg = Message::from_bytes(data).ok()?;
        let method = msg.method();
        if !msg.has_class(MessageClass::Request)
            || !(method == CREATE_PERMISSION || method == CHANNEL_BIND)
        {
            return None;
        }
        let name = if method == CHANNEL_BIND {
            "ChannelBind"
        } else {
            "CreatePermission"
        };
        let peers: Vec<SocketAddr> = msg
            .iter_attributes()
            .filter_map(|(_, raw)| XorPeerAddress::from_raw_ref(&raw).ok())
            .map(|p| p.addr(msg.transaction_id()))
            .collect();
        if self.peer_requests.len() < 256 {
            self.peer_requests.extend(peers.iter().map(|&p| (name, p)));
        }
        let to_self = peers.iter().any(|p| p.ip() == TURN_ADDR.ip());
        // Only an authenticated request reaches this point at coturn; the one user's key signs the 403.
        let signed = msg.has_attribute(Username::TYPE) || msg.has_attribute(Userhash::TYPE);
        if !to_self || !signed {
            return None;
        }
        self.refused_self += 1;
        let mut reply = Message::builder_error(&msg, MessageWriteVec::new());
        let code = ErrorCode::builder(ErrorCode::FORBIDDEN)
            .reason("Forbidden IP")
            .build()
            .ok()?;
        reply.add_attribute(&code).ok()?;
        let key: MessageIntegrityCredentials =
            LongTermKeyCredentials::new(TURN_USER.into(), TURN_PASSWORD.into(), REALM.into())
                .into();
        let algorithm = if msg.has_attribute(MessageIntegritySha256::TYPE) {
            IntegrityAlgorithm::Sha256
        } else {
            IntegrityAlgorithm::Sha1
        };
        reply.add_message_integrity(&key, algorithm).ok()?;
        Some(reply.finish())
    }

    /// Allocate relay sockets the servers asked for, collect their transmits, note their next wake-up.
    fn pump(&mut self, now: Instant) {
        let pnow = self.proto(now);
        let mut wake = None;
        for on_tcp in [false, true] {
            for _ in 0..64 {
                let server = if on_tcp { &mut self.tcp } else { &mut self.udp };
                match server.poll(pnow) {
                    TurnServerPollRet::WaitUntil(t) => {
                        let t = self.core(t);
                        wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
                        break;
                    }
                    TurnServerPollRet::AllocateSocket {
                        transport,
                        listen_addr,
                        client_addr,
                        allocation_transport,
                        family,
                    } => {
                        let relay = SocketAddr::new(TURN_ADDR.ip(), self.next_port);
                        self.next_port = self.next_port.wrapping_add(1).max(49152);
                        self.relays.insert(relay, on_tcp);
                        let server = if on_tcp { &mut self.tcp } else { &mut self.udp };
                        server.allocated_socket(
                            transport,
                            listen_addr,
                            client_addr,
                            allocation_transport,
                            family,
                            Ok(relay),
                            pnow,
                        );
                    }
                    // TCP allocations (RFC 6062) are never asked for; closes need no socket work here.
                    TurnServerPollRet::TcpConnect { .. }
                    | TurnServerPollRet::TcpClose { .. }
                    | TurnServerPollRet::SocketClose { .. } => {}
                }
            }
            loop {
                let server = if on_tcp { &mut self.tcp } else { &mut self.udp };
                let Some(t) = server.poll_transmit(pnow) else {
                    break;
                };
                self.push(t);
            }
        }
        self.wake = wake.filter(|&t| t > now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.up {
            self.wake
        } else {
            None
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.pump(now);
    }

    pub fn poll_out(&mut self) -> Option<TurnOut> {
        self.out.pop_front()
    }
}

/// turn-server-proto 0.7.3 addresses its STUN Binding response to the request's *destination* (its own
/// listening address: `handle_stun_binding` sends to `transmit.to`); a reply to itself goes back to the
/// requester, as any STUN server's does.
fn answer_to(mut reply: Transmit<Vec<u8>>, requester: SocketAddr) -> Transmit<Vec<u8>> {
    if reply.to == TURN_ADDR {
        reply.to = requester;
        reply.from = TURN_ADDR;
    }
    reply
}
