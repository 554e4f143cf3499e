//! Wire compatibility of pam-lite's tube against Keeper's own tube library (`keeper-pam-webrtc-rs==2.2.9`,
//! the Rust/PyO3 package Commander and the Keeper Gateway use), run as a separate process
//! (`tests/interop/keeper_peer.py`) with this test doing the signalling.
//!
//! Runs only inside `tests/interop/run.sh` (venv + private network namespace); elsewhere each test prints
//! why it is skipped and passes. See docs/PROTOCOL-NOTES.md for what these tests pinned down.

#[path = "keeper_interop/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::*;
use pam_lite_core::rtc::{keeper_version, Role as RtcRole};
use pam_lite_core::tube::{CloseReason, ControlMessage, Role as TubeRole, TubeEvent};
use pam_lite_core::ConnNo;
use serde_json::{json, Value};
use sha2::Digest;

const S: fn(u64) -> Duration = Duration::from_secs;

/// Bulk size for the SHA-256 echo (the issue asks for 64 MiB; `PAM_LITE_INTEROP_MIB` overrides it).
fn bulk_bytes() -> u64 {
    std::env::var("PAM_LITE_INTEROP_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64u64)
        << 20
}

/// Wait until the echo server recorded how connection `tag` ended.
fn wait_echo_end(s: &mut Session, echo: &EchoServer, tag: &str, timeout: Duration) -> EchoEnd {
    let mut end = None;
    s.run_until(
        &format!("echo server sees connection {tag} end"),
        timeout,
        |_| {
            end = echo.ended(tag);
            end.is_some()
        },
    );
    end.expect("ended")
}

/// Collect echoed bytes of `conn` until `want` bytes arrived.
fn collect_data(s: &mut Session, conn: ConnNo, want: usize, timeout: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    s.run_until(
        &format!("{want} echoed bytes on connection {conn}"),
        timeout,
        |s| {
            while let Some(TubeEvent::Data { data, .. }) =
                s.ep.take_event(|e| matches!(e, TubeEvent::Data { conn: c, .. } if *c == conn))
            {
                got.extend_from_slice(&data);
            }
            got.len() >= want
        },
    );
    got
}

// ================================================================================================
// 1. pam-lite client (offerer, str0m + Connections in client role) ↔ Keeper tube as gateway (answerer)
// ================================================================================================

#[test]
fn pam_lite_client_against_keeper_gateway() {
    let Some(python) = interop_python("pam_lite_client_against_keeper_gateway") else {
        return;
    };
    let t_start = Instant::now();
    let echo = EchoServer::start();
    let port = echo.port().to_string();
    let mut keeper = KeeperPeer::spawn(
        &python,
        &[
            "--role",
            "gateway",
            "--target-port",
            &port,
            "--deadline",
            "120",
        ],
    );

    // Offer with our 127.0.0.1 host candidate inside (pam-lite's non-trickle form); keeper trickles its own.
    let mut ep = Endpoint::new(RtcRole::Offerer, TubeRole::Client, "pam-lite-interop-conv");
    let our_candidate = ep.add_host_candidate();
    let offer = ep.peer.create_offer(Instant::now()).expect("offer");
    let t_offer = Instant::now();
    keeper.send(json!({"type": "offer", "sdp": offer}));
    let answer = keeper.wait_for("answer", S(15));
    let answer_sdp = answer["sdp"].as_str().expect("answer sdp").to_string();
    let t_answer = Instant::now();
    assert_eq!(keeper_version(&answer_sdp), Some("2.2.9"), "{answer_sdp}");
    assert!(
        answer_sdp.contains("a=setup:active"),
        "keeper answers DTLS active: {answer_sdp}"
    );
    ep.peer
        .accept_answer(&answer_sdp, Instant::now())
        .expect("str0m accepts keeper's answer");
    let mut s = Session {
        ep,
        keeper,
        remote_candidates: Vec::new(),
    };
    s.run_until("data channel open", S(15), |s| s.ep.peer.is_open());
    let t_open = s.ep.open_at.expect("open");
    s.run_until("keeper reports ready", S(5), |s| {
        s.keeper.history.iter().any(|v| v["type"] == "ready")
    });
    println!(
        "[client→keeper gw] our candidate {our_candidate:?}; keeper trickled {:?}",
        s.remote_candidates
    );
    println!(
        "[client→keeper gw] keeper answer in {:.1} ms (create_tube {} ms); answer applied → DC open {:.1} ms",
        ms(t_answer - t_offer),
        answer["ms"],
        ms(t_open - t_answer)
    );

    // Keeper 2.2.9's gateway role greets with three 1406-byte warm-up Pings; our client role answers them.
    s.run_until("three warm-up Pings", S(5), |s| {
        s.ep.controls_of(1).len() >= 3
    });
    for p in s.ep.controls_of(1).iter().take(3) {
        match &p.msg {
            ControlMessage::Ping { body } => {
                assert_eq!(
                    body.len(),
                    1404,
                    "warm-up Ping body: conn_no 0 + 1400 zero bytes"
                );
                assert!(body.iter().all(|b| *b == 0));
            }
            other => panic!("not a ping: {other:?}"),
        }
    }

    // Ping/Pong: keeper echoes our 12-byte body whole (that is how Connections matches the RTT).
    let mut rtts: Vec<f64> = (0..20).map(|_| ms(s.ping())).collect();
    println!(
        "[client→keeper gw] Ping→Pong RTT median {:.2} ms",
        median(&mut rtts)
    );

    // One connection: OpenConnection → ConnectionOpened, data echoed through keeper's TCP to our echo server.
    s.ep.conns.open(1).expect("open 1");
    s.ep.conns.send(1, b"ID:first\nhello keeper").expect("send");
    s.wait_event("ConnectionOpened(1)", S(5), |e| *e == TubeEvent::Opened(1));
    let got = collect_data(&mut s, 1, 21, S(5));
    assert_eq!(got, b"ID:first\nhello keeper");

    // CloseConnection keeper → pam-lite: the backend goes away by itself. Keeper 2.2.9 reports the *first*
    // such close of a channel as CloseConnection(n, ConnectionLost, "Backend connection closed
    // unexpectedly") — and every later one not at all (its "already closed" flag is per channel; see
    // docs/PROTOCOL-NOTES.md). So this runs first, while the flag is clear.
    s.ep.conns.open(2).expect("open");
    s.ep.conns.send(2, b"CLOSE-NOW").expect("send");
    let t_bc = Instant::now();
    let ev = s.wait_event("keeper reports the backend close of 2", S(5), |e| {
        matches!(e, TubeEvent::Closed { conn: 2, .. })
    });
    println!(
        "[client→keeper gw] backend closed conn 2 by itself; {:.1} ms later keeper sent {ev:?}",
        ms(t_bc.elapsed())
    );
    assert_eq!(
        ev,
        TubeEvent::Closed {
            conn: 2,
            reason: CloseReason::ConnectionLost,
            message: Some("Backend connection closed unexpectedly".into()),
        }
    );
    assert!(s.ep.take_event(|e| *e == TubeEvent::Opened(2)).is_some());

    // 50 connections at once, each with its own payload, then CloseConnection(n, Normal) from our side:
    // keeper must close each backend socket (the echo server sees EOF for every tag).
    let t50 = Instant::now();
    let conns: Vec<ConnNo> = (3..=52).collect();
    let mut want: BTreeMap<ConnNo, Vec<u8>> = BTreeMap::new();
    for &c in &conns {
        let mut data = format!("ID:c{c}\n").into_bytes();
        data.extend((0..1000u32).map(|i| (i as u8) ^ (c as u8)));
        s.ep.conns.open(c).expect("open");
        s.ep.conns.send(c, &data).expect("send");
        want.insert(c, data);
    }
    let mut got: BTreeMap<ConnNo, Vec<u8>> = BTreeMap::new();
    let mut opened = 0;
    s.run_until("50 echoes", S(20), |s| {
        while let Some(ev) = s.ep.events.pop_front() {
            match ev {
                TubeEvent::Data { conn, data } => got.entry(conn).or_default().extend(data),
                TubeEvent::Opened(_) => opened += 1,
                other => panic!("unexpected event during the 50 connections: {other:?}"),
            }
        }
        conns
            .iter()
            .all(|c| got.get(c).map(Vec::len) == want.get(c).map(Vec::len))
    });
    assert_eq!(got, want, "every connection echoed its own bytes");
    assert_eq!(opened, 50, "a ConnectionOpened for each");
    for &c in &conns {
        s.ep.conns.close(c, CloseReason::Normal).expect("close");
    }
    s.run_until("echo server sees 50 closes", S(20), |_| {
        conns.iter().all(|c| echo.ended(&format!("c{c}")).is_some())
    });
    for &c in &conns {
        assert_eq!(echo.ended(&format!("c{c}")), Some(EchoEnd::Eof), "conn {c}");
    }
    let t50 = t50.elapsed();
    // Nothing comes back for a connection we closed (keeper does not confirm a CloseConnection).
    s.pump(Duration::from_millis(100));
    let closes_back: Vec<_> =
        s.ep.controls_of(102)
            .iter()
            .map(|t| t.msg.clone())
            .collect();
    println!(
        "[client→keeper gw] 50 connections opened, echoed, closed in {:.0} ms; keeper CloseConnections so far: {closes_back:?}",
        ms(t50)
    );

    // CloseConnection reasons pam-lite → keeper: every code (and a message) closes keeper's backend, and an
    // unknown code too. The channel stays up afterwards.
    let reasons = [
        (CloseReason::Error, None),
        (CloseReason::Timeout, None),
        (
            CloseReason::ConnectionLost,
            Some("pam-lite says goodbye".to_string()),
        ),
        (CloseReason::AdminClosed, None),
        (CloseReason::Other(99), None),
    ];
    for (i, (reason, message)) in reasons.iter().enumerate() {
        let c = 100 + i as ConnNo;
        let tag = format!("r{c}");
        s.ep.conns.open(c).expect("open");
        s.ep.conns
            .send(c, format!("ID:{tag}\n").as_bytes())
            .expect("send");
        collect_data(&mut s, c, tag.len() + 4, S(5));
        assert!(s.ep.take_event(|e| *e == TubeEvent::Opened(c)).is_some());
        s.ep.conns
            .close_with_message(c, *reason, message.clone())
            .expect("close");
        let end = wait_echo_end(&mut s, &echo, &tag, S(5));
        println!("[client→keeper gw] CloseConnection({c}, {reason}, {message:?}) → keeper closed its backend: {end:?}");
        assert_eq!(end, EchoEnd::Eof);
    }
    s.ping();

    // A second backend close on the same channel: keeper 2.2.9 closes its side silently (pinned quirk).
    // Here the backend closes after our SendEOF (keeper half-closes the backend, the echo server closes).
    s.ep.conns.open(200).expect("open");
    s.ep.conns.send(200, b"ID:eof200\nbye").expect("send");
    s.ep.conns.send_eof(200).expect("eof");
    let got = collect_data(&mut s, 200, 13, S(5));
    assert_eq!(got, b"ID:eof200\nbye");
    assert_eq!(
        wait_echo_end(&mut s, &echo, "eof200", S(5)),
        EchoEnd::Eof,
        "keeper half-closed its backend"
    );
    let t_quiet = Instant::now();
    s.run_until("1 s of quiet", S(3), |s| {
        t_quiet.elapsed() >= Duration::from_secs(1)
    });
    let said: Vec<_> =
        s.ep.events
            .iter()
            .filter(|e| matches!(e, TubeEvent::Closed { conn: 200, .. } | TubeEvent::Eof(200)))
            .cloned()
            .collect();
    println!("[client→keeper gw] second backend close (conn 200, after our SendEOF): keeper said {said:?} within 1 s");
    assert!(
        said.is_empty(),
        "keeper 2.2.9 reports only the first backend close per channel: {said:?}"
    );
    s.ep.conns
        .close(200, CloseReason::Normal)
        .expect("close 200");
    s.ep.events.retain(|e| *e != TubeEvent::Opened(200));

    // 64 MiB through one connection, echoed, SHA-256 both ways.
    let total = bulk_bytes();
    let bulk: ConnNo = 300;
    s.ep.conns.open(bulk).expect("open bulk");
    let mut payload = Payload::new(total, 7);
    let mut recv_sha = sha2::Sha256::new();
    let mut received: u64 = 0;
    let window: u64 = 4 << 20;
    let t_bulk = Instant::now();
    s.run_until("bulk echo", S(120), |s| {
        while payload.remaining > 0
            && (total - payload.remaining) - received < window
            && s.ep.conns.is_writable()
        {
            let chunk = payload.next_chunk(64 * 1024);
            s.ep.conns.send(bulk, &chunk).expect("bulk send");
        }
        while let Some(ev) =
            s.ep.take_event(|e| matches!(e, TubeEvent::Data { conn, .. } if *conn == bulk))
        {
            if let TubeEvent::Data { data, .. } = ev {
                received += data.len() as u64;
                recv_sha.update(&data);
            }
        }
        received >= total
    });
    let bulk_time = t_bulk.elapsed();
    let sent_hash = hex(payload.sha.clone().finalize());
    let recv_hash = hex(recv_sha.finalize());
    assert_eq!(received, total);
    assert_eq!(
        sent_hash, recv_hash,
        "SHA-256 of what went out and what came back"
    );
    println!(
        "[client→keeper gw] {} MiB echoed in {:.2} s = {:.1} MiB/s each way; sha256 {}…; keeper's largest data frame {} B",
        total >> 20,
        bulk_time.as_secs_f64(),
        (total as f64 / 1048576.0) / bulk_time.as_secs_f64(),
        &sent_hash[..16],
        s.ep.max_data_payload
    );
    // Keeper's gateway role reads its backend in bigger pieces than its client role (≤ 8192): data frames of
    // up to 32 KiB arrive. pam-lite accepts frames up to 1 MiB.
    assert!(
        s.ep.max_data_payload > 8192 && s.ep.max_data_payload <= 32 * 1024,
        "keeper gateway data frame of {} B",
        s.ep.max_data_payload
    );
    s.ep.conns
        .close(bulk, CloseReason::Normal)
        .expect("close bulk");

    // Keeper's frame timestamps are its Unix clock in ms.
    let (lo, hi) = s.ep.frame_ts.expect("frames");
    let now_ms = unix_ms();
    assert!(
        lo > now_ms - 600_000 && hi <= now_ms + 1000,
        "timestamps {lo}..{hi} vs now {now_ms}"
    );

    // Whole tube closed from our side with a reason: keeper's channel_closed signal carries it.
    let t_close = Instant::now();
    s.ep.conns.close_all(CloseReason::Timeout);
    s.run_until("keeper's channel_closed signal", S(10), |s| {
        !s.keeper.signals("channel_closed").is_empty()
    });
    let sig = s.keeper.signals("channel_closed").remove(0);
    let data: Value =
        serde_json::from_str(sig["data"].as_str().unwrap_or("{}")).unwrap_or(Value::Null);
    println!(
        "[client→keeper gw] our CloseConnection(0, Timeout) → keeper signal after {:.0} ms: {data}",
        ms(t_close.elapsed())
    );
    assert_eq!(
        data["close_reason"]["code"], 2,
        "keeper read our reason code: {data}"
    );
    s.ep.peer.close(Instant::now());
    s.ep.flush(Instant::now());
    let closed = s.keeper.close(S(10));
    println!(
        "[client→keeper gw] keeper close_tube {} ms; whole test {:.1} s",
        closed["ms"],
        t_start.elapsed().as_secs_f64()
    );
}
