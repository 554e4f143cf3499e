//! Entry points for the fuzz targets in `fuzz/` (libFuzzer via cargo-fuzz) and for the never-panics
//! property tests that run the same bodies in `cargo test`. Every parser has one (re-exported here), and so
//! does the logic that turns untrusted input into decisions: the offer retry, the candidate batcher and a
//! whole [`Client`] fed arbitrary router, WebSocket and UDP input.
//!
//! Each function must never panic, whatever `data` is; the ones with invariants assert them.

#[cfg(test)]
mod replay;
#[cfg(test)]
mod seeds;

use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub use crate::guac::fuzzing::fuzz_guac;
pub use crate::router::fuzzing::{fuzz_router_response, fuzz_router_server};
pub use crate::signaling::fuzzing::{fuzz_gateway_action, fuzz_tunnel_decrypt, fuzz_ws_frame};
pub use crate::tube::fuzzing::fuzz_frame;

pub use crate::relay::fuzzing::fuzz_relay;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::client::{Client, ClientConfig, Session};
use crate::gateway::{Gateway, GatewayConfig, TargetKind};
use crate::ice_batch::IceBatcher;
use crate::offer::LaunchOffer;
use crate::offer_retry::{AttemptFailure, Decision, OfferRetry};
use crate::profile::Profile;
use crate::router::envelope::ServerSecretKey;
use crate::rtc::{DtlsIdentity, Peer, PeerEvent, Role, KEEPER_VERSION_ATTRIBUTE};
use crate::signaling::{classify_data, ConversationId, GatewayAction, GatewayData, TunnelKey};
use crate::tube::CloseReason;
use crate::{CandidateKind, Command};
use crate::{Datagram, HttpResponse, Input, Node, Output};

/// A byte cursor that never fails: past the end it yields zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
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
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// A length byte, then that many bytes (lossy UTF-8).
    fn text(&mut self) -> String {
        let n = usize::from(self.u8());
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
}

/// `real` (CRLF lines) edited by `edits`, one edit per line: `-N` deletes line N, `+N text` inserts
/// before it, `~N text` replaces it (N modulo the line count); any other line is appended. This lets the
/// fuzzer keep a real answer's structure (matching mid, credentials) while breaking any part of it.
fn splice_lines(real: &str, edits: &str) -> String {
    let mut lines: Vec<String> = real.lines().map(str::to_string).collect();
    for edit in edits.lines() {
        let mut chars = edit.chars();
        let op = chars.next();
        let rest = chars.as_str();
        let digits: String = rest
            .chars()
            .take_while(char::is_ascii_digit)
            .take(6)
            .collect();
        let n = digits.parse::<usize>().unwrap_or(0) % lines.len().max(1);
        let text = rest[digits.len()..].trim_start_matches(' ').to_string();
        match op {
            Some('-') if !lines.is_empty() => {
                lines.remove(n);
            }
            Some('+') => lines.insert(n.min(lines.len()), text),
            Some('~') if !lines.is_empty() => lines[n] = text,
            _ => lines.push(edit.to_string()),
        }
    }
    let mut out = lines.join("\r\n");
    out.push_str("\r\n");
    out
}

/// The gateway's answer SDP and candidate strings (after decryption) into an offerer [`Peer`], the way
/// the client applies them. Input: a mode byte, then the answer text, a NUL, and candidate lines. Mode
/// bit 0: the text edits a real answer (see [`splice_lines`]) instead of replacing it; bits 1–3: how
/// many timer ticks follow (ICE checks against the candidates, str0m's timers).
pub fn fuzz_answer(data: &[u8], t0: Instant) {
    let mut b = Bytes(data);
    let mode = b.u8();
    let mut offerer = Peer::new(Role::Offerer, "fuzz", &DtlsIdentity::fixed_for_tests(), t0);
    let _ = offerer.add_local_candidate(([10, 0, 0, 1], 5000).into(), CandidateKind::Host, t0);
    let Ok(offer) = offerer.create_offer(t0) else {
        return;
    };
    let text = String::from_utf8_lossy(b.0);
    let (answer_text, candidates) = text.split_once('\0').unwrap_or((&text, ""));
    let answer = if mode & 1 == 1 {
        let mut answerer = Peer::new(Role::Answerer, "fuzz", &DtlsIdentity::fixed_for_tests(), t0);
        let _ = answerer.add_local_candidate(([10, 0, 0, 2], 6000).into(), CandidateKind::Host, t0);
        let version = format!("{KEEPER_VERSION_ATTRIBUTE}2.2.9");
        match answerer.accept_offer(&offer, &[version], t0) {
            Ok(real) => splice_lines(&real, answer_text),
            Err(_) => return,
        }
    } else {
        answer_text.to_string()
    };
    let _ = crate::rtc::keeper_version(&answer);
    let _ = crate::signaling::ensure_max_message_size(&answer);
    let _ = offerer.accept_answer(&answer, t0);
    let mut now = t0;
    for c in candidates.split('\n') {
        if let Err(e) = offerer.add_remote_candidate(c, now) {
            assert!(!e.to_string().is_empty());
        }
    }
    for _ in 0..(mode >> 1) % 8 {
        now = offerer
            .poll_timeout()
            .unwrap_or(now + Duration::from_millis(50))
            .max(now);
        offerer.handle_timeout(now);
        let mut n = 0;
        while offerer.poll_transmit().is_some() || offerer.poll_event().is_some() {
            n += 1;
            assert!(n < 100_000, "unbounded peer output");
        }
    }
    offerer.close(now);
}

/// The gateway's tunnel seed in [`fuzz_gateway_inputs`] (any record).
const GATEWAY_SEED: [u8; 32] = [9; 32];

/// A `webrtc-session` action for conversation `conv` as the router delivers it.
fn gateway_action(
    conv: &ConversationId,
    kind: &str,
    data: String,
    nonce: &[u8],
    trickle: Option<bool>,
) -> String {
    let mut inputs = Map::new();
    inputs.insert("recordUid".into(), json!("BBBBBBBBBBBBBBBBBBBBBB"));
    inputs.insert("kind".into(), json!(kind));
    inputs.insert("conversationType".into(), json!("tunnel"));
    inputs.insert("base64Nonce".into(), json!(B64.encode(nonce)));
    inputs.insert("data".into(), Value::String(data));
    if let Some(t) = trickle {
        inputs.insert("trickleICE".into(), json!(t));
    }
    GatewayAction {
        conversation_id: conv.std(),
        inputs,
        message_id: None,
    }
    .to_json()
}

/// A whole gateway fed arbitrary input sequences with arbitrary timestamps: real offers from a real
/// client [`Peer`] (encrypted with the right key, so the fuzzer gets past decryption), candidates, raw
/// and well-encrypted garbage actions, datagrams from the real client and from anywhere, tube bytes the
/// client writes once the channel is open, every driver command, and time jumps. Nothing may panic and
/// the outputs stay bounded.
pub fn fuzz_gateway_inputs(data: &[u8], t0: Instant) {
    let mut b = Bytes(data);
    let cfg = GatewayConfig {
        default_seed: Some(GATEWAY_SEED.to_vec()),
        target: if b.u8() % 2 == 0 {
            TargetKind::Tunnel
        } else {
            TargetKind::Terminal
        },
        answer_delay: Duration::from_millis(u64::from(b.u8()) * 4),
        warmup_pings: b.u8() % 2 == 0,
        max_tubes: 3,
        ..GatewayConfig::new(DtlsIdentity::fixed_for_tests())
    };
    let mut gw = Gateway::new(cfg, [5; 32], t0);
    let gw_addr: core::net::SocketAddr = ([10, 0, 0, 1], 5000).into();
    let client_addr: core::net::SocketAddr = ([10, 0, 0, 2], 6000).into();
    gw.handle_input(
        Input::LocalCandidate {
            addr: gw_addr,
            kind: CandidateKind::Host,
        },
        t0,
    );
    let convs = [ConversationId([1; 16]), ConversationId([2; 16])];
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(b.u16()));
    let mut now = t0;
    // The real client side: one offerer per conversation, and the key its offer was sealed with.
    let mut clients: Vec<Option<(Peer, TunnelKey)>> = vec![None, None];
    let mut reply_to = 0u64;
    let mut steps = 0u32;
    while !b.is_empty() && steps < 500 {
        steps += 1;
        reply_to += 1;
        let input = match b.u8() % 12 {
            0 | 1 => {
                let k = usize::from(b.u8() % 2);
                let nonce = [b.u8(); 16];
                let key = TunnelKey::derive(&GATEWAY_SEED, &nonce);
                let mut peer = Peer::new(
                    Role::Offerer,
                    &convs[k].std(),
                    &DtlsIdentity::fixed_for_tests(),
                    now,
                );
                let _ = peer.add_local_candidate(client_addr, CandidateKind::Host, now);
                let Ok(offer) = peer.create_offer(now) else {
                    continue;
                };
                let body = json!({ "offer": B64.encode(offer.as_bytes()) }).to_string();
                let sealed = key.encrypt(body.as_bytes(), &mut rng);
                let trickle = [None, Some(true), Some(false)][usize::from(b.u8() % 3)];
                let payload = gateway_action(&convs[k], "start", sealed, &nonce, trickle);
                clients[k] = Some((peer, key));
                Input::ControllerMessage {
                    reply_to,
                    stream: b.u8() % 2 == 0,
                    payload,
                }
            }
            // Candidates (arbitrary strings, or the real client's own address) for a conversation.
            2 => {
                let k = usize::from(b.u8() % 2);
                let list: Vec<String> = match b.u8() % 3 {
                    0 => vec![
                        format!(
                            "candidate:1 1 udp 2130706431 {} {} typ host",
                            client_addr.ip(),
                            client_addr.port()
                        ),
                        String::new(),
                    ],
                    _ => (0..b.u8() % 4).map(|_| b.text()).collect(),
                };
                let body = json!({ "candidates": list }).to_string();
                let nonce = [b.u8(); 16];
                let key = clients[k]
                    .as_ref()
                    .map(|(_, key)| key.clone())
                    .unwrap_or_else(|| TunnelKey::derive(&GATEWAY_SEED, &nonce));
                let sealed = key.encrypt(body.as_bytes(), &mut rng);
                Input::ControllerMessage {
                    reply_to,
                    stream: true,
                    payload: gateway_action(&convs[k], "icecandidate", sealed, &nonce, None),
                }
            }
            // Well-encrypted arbitrary plaintext as any kind of action.
            3 => {
                let k = usize::from(b.u8() % 2);
                let nonce = [b.u8(); 16];
                let key = TunnelKey::derive(&GATEWAY_SEED, &nonce);
                let kind =
                    ["start", "icecandidate", "ice_restart_offer", ""][usize::from(b.u8() % 4)];
                let plain = b.text();
                let sealed = key.encrypt(plain.as_bytes(), &mut rng);
                Input::ControllerMessage {
                    reply_to,
                    stream: b.u8() % 2 == 0,
                    payload: gateway_action(&convs[k], kind, sealed, &nonce, None),
                }
            }
            4 => Input::ControllerMessage {
                reply_to,
                stream: b.u8() % 2 == 0,
                payload: b.text(),
            },
            5 => Input::Datagram(Datagram {
                source: client_addr,
                destination: gw_addr,
                contents: {
                    let n = usize::from(b.u16() % 1500);
                    b.take(n).to_vec()
                },
            }),
            // The real clients talk: their datagrams go to the gateway, their timers fire.
            6 | 7 => {
                now += Duration::from_millis(u64::from(b.u8()));
                for (peer, _) in clients.iter_mut().flatten() {
                    peer.handle_timeout(now);
                    while let Some(d) = peer.poll_transmit() {
                        gw.handle_input(Input::Datagram(d), now);
                    }
                }
                Input::Timeout
            }
            // A client writes arbitrary tube bytes on its open channel.
            8 => {
                let k = usize::from(b.u8() % 2);
                let n = usize::from(b.u16() % 2048);
                let bytes = b.take(n).to_vec();
                if let Some((peer, _)) = clients[k].as_mut() {
                    let _ = peer.write(&bytes, now);
                }
                Input::Timeout
            }
            9 => {
                let conn = u32::from(b.u8() % 8);
                Input::Command(match b.u8() % 8 {
                    0 => Command::TargetConnected {
                        conn,
                        ok: b.u8() % 2 == 0,
                    },
                    1 => Command::Send {
                        conn,
                        data: b.take(64).to_vec(),
                    },
                    2 => Command::SendEof { conn },
                    3 => Command::CloseConnection {
                        conn,
                        reason: CloseReason::Normal,
                    },
                    4 => Command::OpenConnection { conn },
                    5 => Command::TerminalInput {
                        data: b.take(16).to_vec(),
                    },
                    6 => Command::TerminalResize {
                        cols: b.u16(),
                        rows: b.u16(),
                    },
                    _ => Command::Close,
                })
            }
            // Time: any jump (or none: a spurious wake-up).
            10 => {
                now += Duration::from_millis(u64::from(b.u16()) * u64::from(b.u8() % 32));
                Input::Timeout
            }
            _ => {
                if let Some(t) = gw.poll_timeout() {
                    now = now.max(t);
                }
                Input::Timeout
            }
        };
        gw.handle_input(input, now);
        let mut n = 0;
        while let Some(out) = gw.poll_output() {
            n += 1;
            assert!(n < 100_000, "unbounded gateway output");
            match out {
                Output::Transmit(d) => {
                    for (peer, _) in clients.iter_mut().flatten() {
                        if peer.accepts(&d, now) {
                            peer.handle_datagram(&d, now);
                            break;
                        }
                    }
                }
                Output::ControllerReply { payload, .. } => {
                    // The answer (and trickled candidates) reach the client that is waiting for them.
                    let Ok(Value::Object(reply)) = serde_json::from_str::<Value>(&payload) else {
                        continue;
                    };
                    let Some(sealed) = reply.get("data").and_then(Value::as_str) else {
                        continue;
                    };
                    for (peer, key) in clients.iter_mut().flatten() {
                        match classify_data(key, sealed) {
                            GatewayData::Answer(sdp) if peer.awaiting_answer() => {
                                let _ = peer.accept_answer(&sdp, now);
                            }
                            GatewayData::Candidates(list) => {
                                for c in list {
                                    let _ = peer.add_remote_candidate(&c, now);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Output::ConnectTarget { conn, .. } => {
                    gw.handle_input(
                        Input::Command(Command::TargetConnected { conn, ok: true }),
                        now,
                    );
                }
                _ => {}
            }
        }
        for (peer, _) in clients.iter_mut().flatten() {
            while let Some(ev) = peer.poll_event() {
                if let PeerEvent::ChannelOpen = ev {
                    // The client opens tunneled connection 1, as a launch does.
                    let open = crate::tube::ControlMessage::OpenConnection {
                        conn_no: 1,
                        connect_as: None,
                    };
                    let _ = peer.write(&open.to_frame(1).encode(), now);
                }
            }
        }
        if let Some(t) = gw.poll_timeout() {
            assert!(t >= t0, "a timer before the start");
        }
    }
}

/// The offer retry under an arbitrary sequence of failures: attempts never exceed the maximum, every
/// retry waits exactly the catch-up, non-transient failures are never retried.
pub fn fuzz_offer_retry(data: &[u8], t0: Instant) {
    let mut b = Bytes(data);
    let max = u32::from(b.u8() % 8) + 1;
    let catchup = Duration::from_millis(u64::from(b.u16()));
    let mut retry = OfferRetry::new(max, catchup);
    let mut now = t0;
    let mut attempts = retry.begin_attempt();
    while !b.is_empty() {
        let text =
            String::from_utf8_lossy(b.take(usize::from(b.0.first().copied().unwrap_or(0) % 16)))
                .to_string();
        let failure = match b.u8() % 6 {
            0 => AttemptFailure::Network(text),
            1 => AttemptFailure::Http {
                status: 500 + b.u16() % 10,
                text,
            },
            2 => AttemptFailure::Router {
                code_name: text.clone(),
                message: text,
            },
            3 => AttemptFailure::GatewayNotOnline { gateway_uid: text },
            4 => AttemptFailure::Gateway(text),
            _ => AttemptFailure::Protocol(text),
        };
        let transient = failure.is_transient();
        match retry.on_failure(&failure, now) {
            Decision::RetryAt { attempt, at } => {
                assert!(transient, "a non-transient failure was retried");
                assert_eq!(at, now + catchup, "retry must wait exactly the catch-up");
                assert!(attempt <= max, "attempt {attempt} > max {max}");
                now = at;
                attempts = retry.begin_attempt();
                assert_eq!(attempts, attempt);
            }
            Decision::GiveUp(e) => {
                assert!(!e.to_string().is_empty());
                return;
            }
        }
    }
    assert!(attempts <= max);
}

/// The candidate batcher under an arbitrary interleaving: every candidate is delivered once, in order,
/// or reported lost; nothing is ever sent twice.
pub fn fuzz_ice_batch(data: &[u8]) {
    let mut b = Bytes(data);
    let mut batcher = IceBatcher::new(b.u8() % 2 == 0);
    let mut pushed = Vec::new();
    let mut delivered: Vec<String> = Vec::new();
    let mut in_flight: Option<Vec<String>> = None;
    let mut next = 0u32;
    while !b.is_empty() {
        match b.u8() % 6 {
            0 | 1 => {
                let c = format!("candidate:{next} 1 udp 1 10.0.0.1 {next} typ host");
                next += 1;
                if batcher.push(c.clone()) {
                    pushed.push(c);
                }
            }
            2 => batcher.open(),
            3 => {
                if in_flight.is_none() {
                    in_flight = batcher.next_batch();
                }
            }
            4 => {
                if let Some(batch) = in_flight.take() {
                    batcher.batch_done();
                    delivered.extend(batch.into_iter().filter(|c| !c.is_empty()));
                }
            }
            _ => {
                if in_flight.take().is_some() {
                    batcher.batch_failed();
                }
            }
        }
    }
    let lost = batcher.take_lost();
    let mut seen = std::collections::HashSet::new();
    for c in &delivered {
        assert!(seen.insert(c.clone()), "{c} delivered twice");
        assert!(!lost.contains(c), "{c} delivered and reported lost");
    }
    // Delivered candidates keep their push order.
    let order: Vec<usize> = delivered
        .iter()
        .filter_map(|c| pushed.iter().position(|p| p == c))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order");
}

/// A whole client launch fed arbitrary HTTP responses, WebSocket messages, datagrams and timer ticks:
/// it must never panic, and every output must be well-formed (bounded) whatever comes back.
pub fn fuzz_client_inputs(data: &[u8], t0: Instant) {
    let mut b = Bytes(data);
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(b.u16()));
    let secret = ServerSecretKey::random(&mut rng);
    let Ok(server_key) = secret.public_key(7) else {
        return;
    };
    let profile = match b.u8() % 4 {
        0 => Profile::fast(),
        1 => Profile::commander_1984(),
        2 => Profile::commander_1982(),
        _ => Profile::commander_legacy(),
    };
    let cfg = ClientConfig {
        router_url: "https://connect.fuzz.invalid".into(),
        session_token: vec![7; 32],
        server_key,
        gateway_uid: "AAAAAAAAAAAAAAAAAAAAAA".into(),
        record_uid: "BBBBBBBBBBBBBBBBBBBBBB".into(),
        traffic_seed: vec![9; 32],
        offer: LaunchOffer::tunnel(None),
        session: Session::Tunnel,
        trickle_ice: b.u8() % 2 == 0,
        profile,
        relay: Default::default(),
        unix_ms_at_start: 0,
        dtls: DtlsIdentity::fixed_for_tests(),
    };
    let Ok(mut client) = Client::new(cfg, [3; 32], t0) else {
        return;
    };
    let mut now = t0;
    let mut requests = Vec::new();
    let drain = |client: &mut Client, requests: &mut Vec<u64>| {
        let mut n = 0;
        while let Some(out) = client.poll_output() {
            n += 1;
            assert!(n < 100_000, "unbounded output");
            if let Output::Http(r) = out {
                requests.push(r.id);
            }
        }
    };
    client.handle_input(
        Input::LocalCandidate {
            addr: ([10, 0, 0, 1], 5000).into(),
            kind: crate::CandidateKind::Host,
        },
        now,
    );
    drain(&mut client, &mut requests);
    while !b.is_empty() {
        now += Duration::from_millis(u64::from(b.u16() % 5000));
        let input = match b.u8() % 7 {
            0 => Input::Timeout,
            1 | 2 => {
                let id = requests
                    .get(usize::from(b.u8()) % requests.len().max(1))
                    .copied()
                    .unwrap_or(0);
                let status = [200u16, 200, 401, 502, 503, 504][usize::from(b.u8() % 6)];
                let len = usize::from(b.u8());
                Input::HttpResponse {
                    id,
                    response: HttpResponse {
                        status,
                        content_type: None,
                        set_cookies: vec![String::from_utf8_lossy(b.take(8)).to_string()],
                        body: b.take(len).to_vec(),
                    },
                }
            }
            3 => {
                let id = requests.first().copied().unwrap_or(0);
                Input::HttpError {
                    id,
                    error: "connection reset".into(),
                }
            }
            4 => Input::WsOpened,
            5 => {
                let len = usize::from(b.u8());
                Input::WsMessage(String::from_utf8_lossy(b.take(len)).to_string())
            }
            _ => {
                let len = usize::from(b.u8());
                Input::Datagram(Datagram {
                    source: ([10, 0, 0, 2], 6000).into(),
                    destination: ([10, 0, 0, 1], 5000).into(),
                    contents: b.take(len).to_vec(),
                })
            }
        };
        client.handle_input(input, now);
        drain(&mut client, &mut requests);
        if let Some(t) = client.poll_timeout() {
            assert!(t >= t0, "a timer before the launch started");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]
        #[test]
        fn offer_retry_never_breaks_its_invariants(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            super::fuzz_offer_retry(&data, pam_lite_dev_clock::origin());
        }

        #[test]
        fn ice_batch_never_loses_or_duplicates(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            super::fuzz_ice_batch(&data);
        }

        #[test]
        fn answer_and_candidates_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::fuzz_answer(&data, pam_lite_dev_clock::origin());
        }

        #[test]
        fn answer_edits_never_panic(edits in "([-+~][0-9]{1,2} ?[a-z=:0-9 .]{0,20}\n){0,8}", ticks in 0u8..16) {
            let mut data = vec![1 | (ticks << 1)];
            data.extend(edits.as_bytes());
            super::fuzz_answer(&data, pam_lite_dev_clock::origin());
        }

        #[test]
        fn gateway_survives_arbitrary_input(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::fuzz_gateway_inputs(&data, pam_lite_dev_clock::origin());
        }

        #[test]
        fn client_survives_arbitrary_network_input(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::fuzz_client_inputs(&data, pam_lite_dev_clock::origin());
        }
    }
}
