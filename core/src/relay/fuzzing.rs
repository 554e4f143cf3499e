//! Fuzz entry point for the relay layer (`fuzz/fuzz_targets/relay.rs`, and the never-panics proptest
//! below): [`Relays`] with a STUN server and UDP and TCP TURN servers, fed arbitrary datagrams (from the
//! servers' addresses and from others), arbitrary stream bytes and stream events, arbitrary timestamps,
//! and — so the fuzzer reaches the states after a successful allocation — the replies of real sans-IO
//! servers (turn-server-proto, the server half of the client crate's project), delivered intact or with
//! a byte the input chooses flipped.

use core::net::SocketAddr;
use std::time::{Duration, Instant};

use turn_client_proto::stun::agent::Transmit;
use turn_client_proto::stun::types::TransportType;
use turn_server_proto::api::{TurnServerApi, TurnServerPollRet};
use turn_server_proto::server::TurnServer as Server;

use super::clock::Clock;
use super::*;

const USER: &str = "keeper-user";
const PASS: &str = "s3cret";

/// A byte cursor that never fails: past the end it yields zeros.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn bytes(&mut self) -> Vec<u8> {
        let n = usize::from(self.u16() % 1500).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

/// One real server and where its replies go.
struct Srv {
    server: Server,
    addr: SocketAddr,
    transport: TransportType,
    /// The latest requests our side sent it (replies are computed on demand, possibly mutated).
    pending: Vec<Vec<u8>>,
}

/// See the module docs. `t0` is any instant (the fuzz target passes the current one). Returns how many
/// relayed candidates were gathered (for the test that checks the target gets that far).
pub fn fuzz_relay(data: &[u8], t0: Instant) -> usize {
    let mut b = Cursor(data);
    let local: SocketAddr = ([10, 0, 0, 2], 5000).into();
    let mapped: SocketAddr = ([203, 0, 113, 9], 61000).into();
    let stun: SocketAddr = ([198, 51, 100, 1], 3478).into();
    let turn_udp: SocketAddr = ([198, 51, 100, 2], 3478).into();
    let turn_tcp: SocketAddr = ([198, 51, 100, 3], 443).into();
    let password = if b.u8() % 8 == 0 { "wrong" } else { PASS };
    let config = RelayConfig {
        stun: vec![stun],
        turn: vec![
            TurnServer {
                addr: turn_udp,
                name: "turn-udp.fuzz".into(),
                transport: TurnTransport::Udp,
                username: USER.into(),
                password: password.into(),
            },
            TurnServer {
                addr: turn_tcp,
                name: "turn-tcp.fuzz".into(),
                transport: TurnTransport::Tcp,
                username: USER.into(),
                password: password.into(),
            },
        ],
        gather_timeout: Duration::from_millis(u64::from(b.u16())),
        tcp_fallback: (b.u8() % 2 == 0).then(|| std::time::Duration::from_secs(1)),
    };
    let mut relays = Relays::new(&config, local, u64::from(b.u16()), t0);
    let clock = Clock::new(t0);
    let mut servers = [
        (stun, TransportType::Udp),
        (turn_udp, TransportType::Udp),
        (turn_tcp, TransportType::Tcp),
    ]
    .map(|(addr, transport)| {
        let mut server = Server::new(transport, addr, "keeper".into());
        server.add_user(USER.into(), PASS.into());
        Srv {
            server,
            addr,
            transport,
            pending: Vec::new(),
        }
    });
    let peer: SocketAddr = ([192, 0, 2, 77], 7000).into();
    let mut now = t0;
    let mut relay_addrs: Vec<SocketAddr> = Vec::new();
    let mut steps = 0u32;
    while !b.0.is_empty() && steps < 2000 {
        steps += 1;
        drain(&mut relays, &mut servers, &mut relay_addrs, local, now);
        match b.u8() % 12 {
            // A real server answers the oldest pending request, maybe with one byte flipped.
            0..=3 => {
                let which = usize::from(b.u8()) % servers.len();
                let flip = (b.u16(), b.u8());
                let srv = &mut servers[which];
                if srv.pending.is_empty() {
                    continue;
                }
                let request = srv.pending.remove(0);
                let pnow = clock.proto(now);
                let reply = srv
                    .server
                    .recv(
                        Transmit::new(request, srv.transport, mapped, srv.addr),
                        pnow,
                    )
                    .map(|r| r.build().data);
                let mut replies: Vec<Vec<u8>> = reply.into_iter().collect();
                while let TurnServerPollRet::AllocateSocket {
                    transport,
                    listen_addr,
                    client_addr,
                    allocation_transport,
                    family,
                } = srv.server.poll(pnow)
                {
                    let relayed = SocketAddr::new(srv.addr.ip(), 50000);
                    srv.server.allocated_socket(
                        transport,
                        listen_addr,
                        client_addr,
                        allocation_transport,
                        family,
                        Ok(relayed),
                        pnow,
                    );
                }
                while let Some(t) = srv.server.poll_transmit(pnow) {
                    if t.to == mapped || t.to == srv.addr {
                        replies.push(t.data);
                    }
                }
                let (addr, transport) = (srv.addr, srv.transport);
                for mut reply in replies {
                    if flip.1 != 0 && !reply.is_empty() {
                        let i = usize::from(flip.0) % reply.len();
                        reply[i] ^= flip.1;
                    }
                    deliver(&mut relays, addr, transport, reply, now);
                }
            }
            // Arbitrary bytes from each server's address, from elsewhere, on the stream.
            4 => {
                let d = b.bytes();
                relays.handle_datagram(stun, &d, now);
            }
            5 => {
                let d = b.bytes();
                relays.handle_datagram(turn_udp, &d, now);
            }
            6 => {
                let from = SocketAddr::from(([192, 0, 2, b.u8()], b.u16()));
                let d = b.bytes();
                relays.handle_datagram(from, &d, now);
            }
            7 => {
                let stream = StreamId(u32::from(b.u8() % 3));
                let event = match b.u8() % 4 {
                    0 => StreamEvent::Connected { local },
                    1 => StreamEvent::Closed {
                        reason: "reset".into(),
                    },
                    _ => StreamEvent::Data(b.bytes()),
                };
                relays.handle_stream(stream, event, now);
            }
            // Time: forward by any amount (or a spurious wake-up), sometimes to the requested deadline.
            8 => {
                now += Duration::from_millis(u64::from(b.u16()) * u64::from(b.u8() % 16));
                relays.handle_timeout(now);
            }
            9 => {
                if let Some(t) = relays.poll_timeout() {
                    now = now.max(t);
                }
                relays.handle_timeout(now);
            }
            10 => {
                let addr = SocketAddr::from(([192, 0, 2, b.u8()], b.u16()));
                relays.add_remote_candidate(addr, now);
                relays.add_remote_candidate(peer, now);
            }
            _ => {
                let relay = relay_addrs
                    .get(usize::from(b.u8()) % relay_addrs.len().max(1))
                    .copied()
                    .unwrap_or(turn_udp);
                let d = b.bytes();
                let to = if b.u8() % 2 == 0 { peer } else { mapped };
                let _ = relays.send(relay, to, &d, now);
            }
        }
        if let Some(t) = relays.poll_timeout() {
            assert!(t >= t0, "a timer before the start");
        }
    }
    drain(&mut relays, &mut servers, &mut relay_addrs, local, now);
    relay_addrs.len()
}

fn deliver(
    relays: &mut Relays,
    from: SocketAddr,
    transport: TransportType,
    data: Vec<u8>,
    now: Instant,
) {
    match transport {
        TransportType::Udp => {
            relays.handle_datagram(from, &data, now);
        }
        TransportType::Tcp => relays.handle_stream(StreamId(1), StreamEvent::Data(data), now),
    }
}

/// Route what the relay layer wants sent to the servers' queues (bounded), answer stream opens, and
/// drain events.
fn drain(
    relays: &mut Relays,
    servers: &mut [Srv; 3],
    relay_addrs: &mut Vec<SocketAddr>,
    local: SocketAddr,
    now: Instant,
) {
    let mut n = 0;
    while let Some(io) = relays.poll_io() {
        n += 1;
        assert!(n < 100_000, "unbounded relay output");
        let (to, data) = match io {
            RelayIo::Datagram { to, data } => (to, data),
            RelayIo::StreamWrite { data, .. } => (servers[2].addr, data),
            // The connection always succeeds here; losing it is an input of its own.
            RelayIo::StreamOpen { stream, .. } => {
                relays.handle_stream(stream, StreamEvent::Connected { local }, now);
                continue;
            }
            RelayIo::StreamClose { .. } => continue,
        };
        if let Some(srv) = servers.iter_mut().find(|s| s.addr == to) {
            if srv.pending.len() < 64 {
                srv.pending.push(data);
            }
        }
    }
    while let Some(e) = relays.poll_event() {
        if let RelayEvent::Candidate {
            kind: CandidateKind::Relayed,
            addr,
            ..
        } = e
        {
            relay_addrs.push(addr);
        }
    }
    while relays.poll_peer_data().is_some() {}
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]
        #[test]
        fn relays_survive_arbitrary_server_input(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::fuzz_relay(&data, pam_lite_dev_clock::origin());
        }
    }

    /// A plain run of "answer everything" steps allocates on both TURN servers: the target reaches the
    /// states after a successful allocation, not only the parsers.
    #[test]
    fn honest_replies_reach_allocation() {
        // seed bytes, then many "server 0/1/2 answers" and "fire the timer" steps.
        let mut data = vec![1u8, 0x88, 0x13, 0, 0];
        for _ in 0..40 {
            for which in 0..3u8 {
                data.extend([0, which, 0, 0, 0]);
            }
            data.extend([9]);
        }
        let relayed = super::fuzz_relay(&data, pam_lite_dev_clock::origin());
        assert_eq!(relayed, 2, "one relayed candidate per TURN server");
    }
}
