//! Seed inputs for the fuzz targets, made by the project's real components: real router responses
//! (protobufs sealed with the fuzz body's own transmission key), real gateway replies and WebSocket
//! frames, real SDP answers and candidates from str0m, real tube frames from two [`Connections`], real
//! Guacamole traffic from the terminal server and client, and STUN/TURN exchanges with a real TURN
//! server (turn-server-proto) for the relay target.
//!
//! `cargo test -p pam-lite-core --features fuzzing --lib write_fuzz_seeds -- --ignored` writes them to
//! `$FUZZ_SEEDS_DIR/<target>/` (default `fuzz/seeds/`, not kept: the campaign minimises seeds and
//! findings together into `fuzz/corpus/<target>/`, which is kept).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use prost::Message as _;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::guac::client::{TerminalClient, TerminalConfig};
use crate::guac::server::{ServerConfig, ServerEvent, TerminalServer};
use crate::router::proto::{
    ControllerResponse, PAMOnlineController, PAMOnlineControllers, RelayAccessCreds,
    RouterResponse, RouterResponseCode,
};
use crate::rtc::{DtlsIdentity, Peer, Role, KEEPER_VERSION_ATTRIBUTE};
use crate::signaling::{self, ConversationId, TunnelKey};
use crate::tube::{CloseReason, Connections, ControlMessage, Role as TubeRole, TubeEvent};
use crate::CandidateKind;

/// Every seed, by target name.
pub fn seeds() -> BTreeMap<&'static str, Vec<Vec<u8>>> {
    let t0 = pam_lite_dev_clock::origin();
    let mut out: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();

    // Router responses: sealed RouterResponse protobufs (ok, with and without payload, error codes) and
    // the plain payloads the client decodes, behind the status selector byte (0: 200).
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    if let Some((_, tokens)) = crate::router::fuzzing::keys() {
        let controllers = PAMOnlineControllers {
            deprecated: vec![],
            controllers: vec![PAMOnlineController {
                controller_uid: vec![1; 16],
                connected_on: 1_700_000_000_000,
                ip_address: "203.0.113.5".into(),
                version: "1.7.2".into(),
                connections: vec![],
            }],
        }
        .encode_to_vec();
        let creds = RelayAccessCreds {
            username: "1700000000:keeper".into(),
            password: "dGVzdA==".into(),
            server_time: 1_700_000_000,
        }
        .encode_to_vec();
        let reply = signaling::gateway_reply_ok("ice candidate received");
        let controller = ControllerResponse {
            payload: signaling::controller_response_payload(&reply),
        }
        .encode_to_vec();
        let mut router = Vec::new();
        for plain in [&controllers, &creds, &controller] {
            let sealed = RouterResponse {
                response_code: RouterResponseCode::RrcOk as i32,
                error_message: String::new(),
                encrypted_payload: tokens.seal(plain, &mut rng),
            }
            .encode_to_vec();
            router.push([&[0u8][..], &sealed].concat());
            router.push([&[0u8][..], plain].concat());
        }
        for code in [2, 3, 5, 9] {
            let rr = RouterResponse {
                response_code: code,
                error_message: "controller is offline".into(),
                encrypted_payload: vec![],
            }
            .encode_to_vec();
            router.push([&[0u8][..], &rr].concat());
        }
        router.push([&[201u8][..], b"<html>502 Bad Gateway</html>"].concat());
        router.push([&[150u8][..], b"{\"error\":\"bad request\"}"].concat());
        out.insert("router_response", router);
    }

    // A real offer and answer, and real candidates of every kind str0m writes.
    let mut offerer = Peer::new(Role::Offerer, "seed", &DtlsIdentity::fixed_for_tests(), t0);
    let _ = offerer.add_local_candidate(([10, 0, 0, 1], 5000).into(), CandidateKind::Host, t0);
    let offer = offerer.create_offer(t0).unwrap_or_default();
    let mut answerer = Peer::new(Role::Answerer, "seed", &DtlsIdentity::fixed_for_tests(), t0);
    let mut candidates = Vec::new();
    candidates.extend(answerer.add_local_candidate(
        ([10, 0, 0, 2], 6000).into(),
        CandidateKind::Host,
        t0,
    ));
    candidates.extend(answerer.add_local_candidate(
        ([203, 0, 113, 7], 61000).into(),
        CandidateKind::ServerReflexive {
            base: ([10, 0, 0, 2], 6000).into(),
        },
        t0,
    ));
    candidates.extend(
        answerer.add_local_candidate(
            "[2001:db8::7]:6001"
                .parse()
                .unwrap_or(([10, 0, 0, 3], 1).into()),
            CandidateKind::Host,
            t0,
        ),
    );
    let version = format!("{KEEPER_VERSION_ATTRIBUTE}2.2.9");
    let answer = answerer
        .accept_offer(&offer, &[version], t0)
        .unwrap_or_default();
    candidates.push(
        "candidate:7 1 udp 16777215 198.51.100.2 50000 typ relay raddr 203.0.113.7 rport 61000"
            .into(),
    );
    candidates.push(String::new());
    let cand_text = candidates.join("\n");
    out.insert(
        "answer",
        vec![
            [
                &[0x0eu8][..],
                answer.as_bytes(),
                b"\0",
                cand_text.as_bytes(),
            ]
            .concat(),
            [&[0x0fu8][..], b"\0", cand_text.as_bytes()].concat(),
            [
                &[0x0fu8][..],
                b"~3 a=setup:actpass\n-5\n+2 a=fingerprint:sha-256 00:11\0",
            ]
            .concat(),
            [&[0x00u8][..], offer.as_bytes()].concat(),
        ],
    );

    // Gateway replies and router WebSocket frames, sealed with the ws_frame body's key; plus structured
    // recipes (leading NUL).
    let key = TunnelKey::derive(&[7u8; 32], &[9u8; 16]);
    let conv = ConversationId([5; 16]);
    let answer_data = key.encrypt(signaling::answer_data_json(&answer).as_bytes(), &mut rng);
    let cand_data = key.encrypt(
        signaling::candidates_data_json(&candidates).as_bytes(),
        &mut rng,
    );
    let restart = key.encrypt(
        signaling::ice_restart_offer_data_json(&offer).as_bytes(),
        &mut rng,
    );
    let mut ws = Vec::new();
    for data in [&answer_data, &cand_data, &restart] {
        let reply = signaling::gateway_reply_ok(data);
        ws.push(signaling::ws_push_frame(conv.bytes(), "channel_connected", &reply).into_bytes());
        ws.push(signaling::controller_response_payload(&reply).into_bytes());
    }
    ws.push(
        signaling::ws_push_frame(
            &[6; 16],
            "error",
            &signaling::gateway_reply_error("record not found"),
        )
        .into_bytes(),
    );
    let two = format!(
        "[{},{}]",
        signaling::ws_push_frame(conv.bytes(), "x", &signaling::gateway_reply_ok("buffered")),
        signaling::ws_push_frame(conv.bytes(), "x", &signaling::gateway_reply_ok(&cand_data))
    );
    ws.push(two.into_bytes());
    ws.push(vec![
        0, 7, 14, 3, 0, 5, 14, 2, 2, 1, 9, 14, 1, 9, 4, 4, 9, 3, 3,
    ]);
    out.insert("ws_frame", ws);

    // Real tube traffic both ways: open, data, ping, EOF, close; chunk-size byte first.
    let mut client = Connections::new(TubeRole::Client, t0);
    let mut gateway = Connections::new(TubeRole::Gateway, t0);
    let mut to_gateway = Vec::new();
    let mut to_client = Vec::new();
    let _ = client.open(1);
    let _ = gateway.send_warmup_pings();
    for round in 0..6 {
        let now = t0 + Duration::from_millis(round * 10);
        while let Some(w) = client.poll_write() {
            gateway.handle_message(&w, now);
            to_gateway.extend(w);
        }
        while let Some(ev) = gateway.poll_app_event() {
            if let TubeEvent::ConnectTarget { conn, .. } = ev {
                let _ = gateway.target_connected(conn, true);
                let _ = gateway.send(conn, b"SSH-2.0-OpenSSH_9.6\r\n");
            }
        }
        while let Some(w) = gateway.poll_write() {
            client.handle_message(&w, now);
            to_client.extend(w);
        }
        while client.poll_app_event().is_some() {}
        match round {
            1 => {
                let _ = client.send(1, b"SSH-2.0-pam-lite\r\n");
                let _ = client.ping(now);
            }
            2 => {
                let _ = client.send_eof(1);
            }
            3 => {
                let _ = client.close(1, CloseReason::Normal);
            }
            _ => {}
        }
    }
    let ping = ControlMessage::Ping { body: vec![0; 4] }
        .to_frame(1)
        .encode();
    out.insert(
        "frame",
        vec![
            [&[255u8][..], &to_gateway].concat(),
            [&[255u8][..], &to_client].concat(),
            [&[7u8][..], &to_gateway].concat(),
            [&[1u8][..], &ping].concat(),
        ],
    );

    // Guacamole: what the terminal server sends (args, size, sync, blobs...) and the client answers.
    let mut server = TerminalServer::new(ServerConfig::default());
    let mut term = TerminalClient::new(TerminalConfig::default());
    server.start(1_700_000_000_000);
    let mut from_server = Vec::new();
    let mut from_client = Vec::new();
    for step in 0..6u64 {
        while let Some(ev) = server.poll_event() {
            if let ServerEvent::ToClient(b) = ev {
                term.handle_data(&b);
                from_server.extend(b);
            }
        }
        while let Some(ev) = term.poll_event() {
            if let crate::guac::client::ClientEvent::ToGateway(b) = ev {
                server.handle_data(&b);
                from_client.extend(b);
            }
        }
        match step {
            1 => server.output(b"\x1b[1;32muser@host\x1b[0m:~$ "),
            2 => term.input(b"ls -la\r", t0 + Duration::from_millis(step * 10)),
            3 => term.resize(120, 40),
            _ => {}
        }
    }
    out.insert(
        "guac",
        vec![
            [&[255u8][..], &from_server].concat(),
            [&[255u8][..], &from_client].concat(),
            [&[5u8][..], &from_server].concat(),
        ],
    );

    // The relay: honest exchanges with the real TURN servers (their replies are made at run time, so
    // they always match the transaction), with and without peers and data, and a wrong password.
    let honest = |password_ok: bool, extra: &[u8]| {
        let mut d = vec![if password_ok { 1u8 } else { 0 }, 0x88, 0x13, 0, 0];
        for _ in 0..12 {
            for which in 0..3u8 {
                d.extend([0, which, 0, 0, 0]);
            }
            d.push(9);
        }
        d.extend(extra);
        d
    };
    let mut peers = vec![10, 77, 0x58, 0x1b];
    for _ in 0..6 {
        for which in 1..3u8 {
            peers.extend([0, which, 0, 0, 0]);
        }
        peers.push(9);
    }
    peers.extend([11, 0, 0, 5, 0, b'h', b'e', b'l', b'l', b'o']);
    out.insert(
        "relay",
        vec![
            honest(true, &[]),
            honest(false, &[]),
            honest(true, &peers),
            honest(true, &[8, 0xff, 0xff, 15, 9, 7, 1, 1]),
        ],
    );

    // The gateway: a start, the answer's delay, the client's datagrams both ways, an open connection.
    let mut gw = vec![0u8, 2, 0, 0, 0];
    gw.extend([0, 0, 3, 0, 0]); // start conversation 0, nonce 3, trickle default, streaming
    gw.push(11); // the answer is due
    gw.extend([2, 0, 0]); // the client's own candidate
    for _ in 0..30 {
        gw.extend([6, 20]);
        gw.push(11);
    }
    gw.extend([8, 0, 5, 0, 1, 2, 3, 4, 5]);
    let mut gw_terminal = gw.clone();
    gw_terminal[0] = 1;
    let mut gw_two = gw.clone();
    gw_two.extend([
        0, 1, 4, 2, 1, 3, 0, 0, 1, 4, 9, 0, 0, 9, 7, 0, 10, 0xff, 0xff, 31,
    ]);
    out.insert("gateway_inputs", vec![gw, gw_terminal, gw_two]);

    // Whole-client sequences: time, a router answer, WebSocket open and messages, datagrams.
    let ws_msg = signaling::ws_push_frame(&[5; 16], "x", &signaling::gateway_reply_ok("buffered"));
    let mut ci = vec![0u8, 0, 0, 0];
    ci.extend([0, 0, 4]);
    ci.extend([0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    ci.extend([
        100,
        0,
        5,
        u8::try_from(ws_msg.len().min(255)).unwrap_or(255),
    ]);
    ci.extend(ws_msg.as_bytes().iter().take(255));
    ci.extend([0x10, 0x27, 0]);
    out.insert("client_inputs", vec![ci]);

    // Offer data the gateway decrypts (`kind:start`) and gateway actions.
    let offer_data = format!(
        "{{\"offer\": \"{}\", \"size\": [830, 494, 96], \"host\": {{\"hostName\": \"10.0.0.5\", \"port\": 22}}}}",
        B64.encode(offer.as_bytes())
    );
    out.insert(
        "gateway_action",
        vec![
            offer_data.into_bytes(),
            signaling::candidates_data_json(&candidates).into_bytes(),
        ],
    );
    out.insert(
        "tunnel_decrypt",
        vec![answer_data.into_bytes(), cand_data.into_bytes()],
    );
    out
}

#[cfg(test)]
mod tests {
    /// Writes the seeds (see the module docs). Ignored: it writes files, run on demand.
    #[test]
    #[ignore = "writes fuzz seed files; run with --ignored to regenerate them"]
    fn write_fuzz_seeds() {
        let dir = std::env::var("FUZZ_SEEDS_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds").into());
        for (target, seeds) in super::seeds() {
            let d = std::path::Path::new(&dir).join(target);
            std::fs::create_dir_all(&d).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(d.join(format!("seed-{i:02}")), s).unwrap();
            }
        }
    }

    /// Every seed runs through its target's body (the seeds themselves are real traffic, so this also
    /// checks the bodies accept what the real components produce).
    #[test]
    fn seeds_run_through_their_targets() {
        let seeds = super::seeds();
        for name in [
            "router_response",
            "answer",
            "ws_frame",
            "frame",
            "guac",
            "relay",
            "gateway_inputs",
        ] {
            assert!(
                seeds.get(name).is_some_and(|s| !s.is_empty()),
                "no seeds for {name}"
            );
        }
        for (target, list) in &seeds {
            for s in list {
                assert!(super::super::replay::run(target, s), "no body for {target}");
            }
        }
    }
}
