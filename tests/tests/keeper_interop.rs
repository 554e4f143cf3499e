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
    s.run_until("1 s of quiet", S(3), |_| {
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
        s.ep.max_data_payload <= 64 * 1024,
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

// ================================================================================================
// 2. Keeper tube as client (offerer, `pam tunnel start`'s side, TCP listener) ↔ pam-lite gateway role
//    (str0m answerer + Connections in gateway role; the target is an in-process echo)
// ================================================================================================

/// The pam-lite gateway side of test 2: answers ConnectTarget (or refuses it), echoes data and EOF back,
/// and records everything keeper told it.
#[derive(Default)]
struct GwApp {
    refuse_next: bool,
    targets: Vec<ConnNo>,
    refused: Vec<ConnNo>,
    opened: Vec<ConnNo>,
    bytes_in: BTreeMap<ConnNo, usize>,
    eofs: Vec<ConnNo>,
    closed: Vec<(ConnNo, CloseReason, Option<String>)>,
    channel_closed: Option<(CloseReason, Option<String>)>,
    warnings: Vec<String>,
    /// Echo queue: data (Some) or EOF (None), sent in order while the tube is writable.
    pending: std::collections::VecDeque<(ConnNo, Option<Vec<u8>>)>,
    pending_bytes: usize,
    peak_pending: usize,
}

impl GwApp {
    fn step(&mut self, s: &mut Session) {
        while let Some(ev) = s.ep.events.pop_front() {
            match ev {
                TubeEvent::ConnectTarget { conn, connect_as } => {
                    assert!(connect_as.is_none(), "tunnel mode has no ConnectAs");
                    let ok = !std::mem::take(&mut self.refuse_next);
                    s.ep.conns
                        .target_connected(conn, ok)
                        .expect("target_connected");
                    if ok {
                        self.targets.push(conn);
                    } else {
                        self.refused.push(conn);
                    }
                }
                TubeEvent::Opened(c) => self.opened.push(c),
                TubeEvent::Data { conn, data } => {
                    *self.bytes_in.entry(conn).or_default() += data.len();
                    self.pending_bytes += data.len();
                    self.peak_pending = self.peak_pending.max(self.pending_bytes);
                    self.pending.push_back((conn, Some(data)));
                }
                TubeEvent::Eof(c) => {
                    self.eofs.push(c);
                    self.pending.push_back((c, None));
                }
                TubeEvent::Closed {
                    conn,
                    reason,
                    message,
                } => self.closed.push((conn, reason, message)),
                TubeEvent::ChannelClosed { reason, message } => {
                    self.channel_closed = Some((reason, message))
                }
                TubeEvent::ProtocolWarning(w) => self.warnings.push(w),
                TubeEvent::Pong { .. } | TubeEvent::Write(_) => {}
            }
        }
        while let Some((conn, _)) = self.pending.front() {
            let conn = *conn;
            if !s.ep.conns.is_writable() {
                break;
            }
            let Some((_, item)) = self.pending.pop_front() else {
                break;
            };
            match item {
                Some(data) => {
                    self.pending_bytes -= data.len();
                    // A connection closed meanwhile just drops its echo.
                    let _ = s.ep.conns.send(conn, &data);
                }
                None => {
                    let _ = s.ep.conns.send_eof(conn);
                }
            }
        }
    }

    fn run_until(
        &mut self,
        s: &mut Session,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&mut Session, &GwApp) -> bool,
    ) {
        s.run_until(what, timeout, |s| {
            self.step(s);
            pred(s, self)
        });
    }

    /// Pump until `handle` (a TCP client thread) finished; return its result.
    fn join<T>(&mut self, s: &mut Session, what: &str, handle: std::thread::JoinHandle<T>) -> T {
        self.run_until(s, what, S(60), |_, _| handle.is_finished());
        handle.join().expect("client thread")
    }
}

#[test]
fn keeper_client_against_pam_lite_gateway_tube() {
    let Some(python) = interop_python("keeper_client_against_pam_lite_gateway_tube") else {
        return;
    };
    let t_start = Instant::now();
    let mut keeper = KeeperPeer::spawn(
        &python,
        &[
            "--role",
            "client",
            "--conv",
            "pam-lite-interop-conv",
            "--deadline",
            "120",
        ],
    );
    let offer = keeper.wait_for("offer", S(15));
    let offer_sdp = offer["sdp"].as_str().expect("offer sdp").to_string();
    let listen: std::net::SocketAddr = offer["listen"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("keeper's listener address");
    assert_eq!(keeper_version(&offer_sdp), Some("2.2.9"));

    // Answer (DTLS role chosen by str0m), then trickle our candidate and the end marker, as pam-lite's
    // gateway does in trickle mode.
    let mut ep = Endpoint::new(RtcRole::Answerer, TubeRole::Gateway, "unused-by-answerer");
    let t0 = Instant::now();
    let answer = ep
        .peer
        .accept_offer(&offer_sdp, &["a=keeper-webrtc:2.2.9".to_string()], t0)
        .expect("str0m accepts keeper's offer");
    let setup = answer
        .lines()
        .find(|l| l.starts_with("a=setup:"))
        .unwrap_or("none")
        .to_string();
    keeper.send(json!({"type": "answer", "sdp": answer}));
    let cand = ep.add_host_candidate();
    keeper.send(json!({"type": "candidate", "candidate": cand}));
    keeper.send(json!({"type": "candidate", "candidate": ""}));
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
        "[keeper client→gw] our answer {setup}; answer sent → DC open {:.1} ms; keeper trickled {:?}",
        ms(t_open - t0),
        s.remote_candidates
    );

    // Our gateway greets like Keeper 2.2.9 (3 warm-up Pings); keeper's client answers each with a full Pong.
    s.ep.conns.send_warmup_pings().expect("warm-up");
    s.run_until("3 warm-up Pongs", S(5), |s| s.ep.controls_of(2).len() >= 3);
    for p in s.ep.controls_of(2) {
        assert!(matches!(&p.msg, ControlMessage::Pong { body } if body.len() == 1404));
    }
    let mut rtts: Vec<f64> = (0..20).map(|_| ms(s.ping())).collect();
    println!(
        "[keeper client→gw] warm-up Pongs 3/3; Ping→Pong RTT median {:.2} ms",
        median(&mut rtts)
    );

    let mut app = GwApp::default();

    // One TCP client through keeper's listener: OpenConnection(1), echo, half-close both ways, closed.
    let h = std::thread::spawn(move || {
        tcp_roundtrip(listen, b"hello through keeper's client tube", true, S(10))
    });
    let r = app.join(&mut s, "first TCP client", h);
    assert_eq!(r.received, b"hello through keeper's client tube");
    assert_eq!(r.end, "eof");
    assert_eq!(app.targets, vec![1], "keeper numbers connections from 1");
    assert_eq!(
        app.eofs,
        vec![1],
        "keeper forwards the TCP half-close as SendEOF(1)"
    );
    app.run_until(&mut s, "conn 1 closed after EOF both ways", S(5), |s, _| {
        !s.ep.conns.is_open(1)
    });
    println!(
        "[keeper client→gw] first connection: echo + EOF round trip {:.1} ms",
        ms(r.elapsed)
    );

    // 50 TCP clients at once: conn numbers 2..=51, each echoed and closed cleanly.
    let t50 = Instant::now();
    let h = std::thread::spawn(move || {
        let clients: Vec<_> = (0..50u8)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut data = vec![i; 1024];
                    data.extend_from_slice(format!("client {i}").as_bytes());
                    let r = tcp_roundtrip(listen, &data, true, S(20));
                    (data, r)
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect::<Vec<_>>()
    });
    let results = app.join(&mut s, "50 TCP clients", h);
    for (data, r) in &results {
        assert_eq!(&r.received, data, "echo of a 50-batch client");
        assert_eq!(r.end, "eof");
    }
    app.run_until(&mut s, "all 50 closed", S(5), |s, _| {
        s.ep.conns.connections().count() == 0
    });
    let mut nos = app.targets.clone();
    nos.sort_unstable();
    assert_eq!(nos, (1..=51).collect::<Vec<ConnNo>>());
    let normal_closes = app
        .closed
        .iter()
        .filter(|(_, r, _)| *r == CloseReason::Normal)
        .count();
    assert_eq!(
        normal_closes, 51,
        "every connection closed Normal after EOF both ways"
    );
    println!(
        "[keeper client→gw] 50 TCP clients echoed and closed in {:.0} ms",
        ms(t50.elapsed())
    );

    // CloseConnection pam-lite → keeper with several reasons: keeper closes its TCP client each time.
    let reasons = [
        (CloseReason::Normal, None),
        (CloseReason::Timeout, None),
        (
            CloseReason::AdminClosed,
            Some("closed by pam-lite".to_string()),
        ),
        (CloseReason::Other(99), None),
    ];
    for (reason, message) in reasons {
        let before = app.targets.len();
        let h = std::thread::spawn(move || tcp_roundtrip(listen, b"x", false, S(5)));
        let mut conn = 0;
        app.run_until(&mut s, "the new connection's byte", S(5), |_, app| {
            if app.targets.len() > before {
                conn = app.targets[before];
                app.bytes_in.get(&conn).copied().unwrap_or(0) >= 1
            } else {
                false
            }
        });
        let sent_eofs_before = s.ep.controls_of(104).len();
        s.ep.conns
            .close_with_message(conn, reason, message.clone())
            .expect("close");
        let r = app.join(&mut s, "the TCP client sees the close", h);
        s.run_until("keeper's SendEOF after the close", S(2), |s| {
            s.ep.controls_of(104).len() > sent_eofs_before
        });
        println!(
            "[keeper client→gw] CloseConnection({conn}, {reason}, {message:?}) → keeper's TCP client: {} after {:.1} ms (then keeper sent SendEOF({conn}))",
            r.end,
            ms(r.elapsed)
        );
        assert_eq!(r.end, "eof", "keeper closed its TCP client");
    }

    // Target refused: pam-lite sends CloseConnection(n, ConnectionFailed); keeper drops its TCP client.
    app.refuse_next = true;
    let h = std::thread::spawn(move || tcp_roundtrip(listen, b"refuse me", false, S(5)));
    let r = app.join(&mut s, "refused client", h);
    println!(
        "[keeper client→gw] refused target (conn {:?}) → keeper's TCP client: {:?} after {:.1} ms",
        app.refused,
        r.end,
        ms(r.elapsed)
    );
    assert_eq!(app.refused.len(), 1);
    assert!(r.received.is_empty());
    assert_eq!(r.end, "eof");

    // Keeper → pam-lite when its TCP client resets (closes with unread data): what does keeper send?
    let before = app.targets.len();
    let h = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(listen).expect("connect");
        std::io::Write::write_all(&mut c, b"reset").expect("write");
        // Wait until the echo sits unread in our receive buffer: closing then sends a RST, not a FIN.
        let _ = c.set_read_timeout(Some(S(5)));
        let mut peek = [0u8; 5];
        let _ = c.peek(&mut peek);
        drop(c);
    });
    app.join(&mut s, "resetting client", h);
    let conn = app.targets[before];
    let t_reset = Instant::now();
    app.run_until(&mut s, "1 s after the reset", S(3), |_, _| {
        t_reset.elapsed() >= Duration::from_secs(1)
    });
    let said: Vec<_> = s
        .ep
        .controls
        .iter()
        .filter(|t| matches!(&t.msg, ControlMessage::SendEof { conn_no } | ControlMessage::CloseConnection { conn_no, .. } if *conn_no == conn))
        .map(|t| t.msg.clone())
        .collect();
    println!("[keeper client→gw] TCP client reset conn {conn}: within 1 s keeper sent {said:?}");
    // Pinned 2.2.9 behaviour: a reset local client is not reported to the gateway at all, so a gateway
    // must not rely on hearing about it (pam-lite's gateway keeps the connection until close_tube).
    assert!(
        said.is_empty(),
        "keeper reported the reset after all: {said:?}"
    );
    s.ep.conns
        .close(conn, CloseReason::Normal)
        .expect("close the reset connection");

    // 64 MiB through one TCP connection, echoed by our gateway, SHA-256 checked at the TCP client.
    let total = bulk_bytes();
    let t_bulk = Instant::now();
    let h = std::thread::spawn(move || {
        let stream = std::net::TcpStream::connect(listen).expect("connect bulk");
        let _ = stream.set_nodelay(true);
        let mut w = stream.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let mut p = Payload::new(total, 9);
            while p.remaining > 0 {
                let chunk = p.next_chunk(64 * 1024);
                std::io::Write::write_all(&mut w, &chunk).expect("bulk write");
            }
            let _ = w.shutdown(std::net::Shutdown::Write);
            hex(p.sha.finalize())
        });
        let mut r = stream;
        let mut sha = sha2::Sha256::new();
        let mut n: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let _ = r.set_read_timeout(Some(S(30)));
        loop {
            match std::io::Read::read(&mut r, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    sha.update(&buf[..k]);
                    n += k as u64;
                }
            }
        }
        (writer.join().expect("writer"), hex(sha.finalize()), n)
    });
    let (sent_hash, recv_hash, n) = app.join(&mut s, "bulk client", h);
    let bulk_time = t_bulk.elapsed();
    assert_eq!(n, total);
    assert_eq!(sent_hash, recv_hash);
    println!(
        "[keeper client→gw] {} MiB echoed in {:.2} s = {:.1} MiB/s each way; sha256 {}…; keeper's largest data frame {} B; our echo queue peaked at {} KiB",
        total >> 20,
        bulk_time.as_secs_f64(),
        (total as f64 / 1048576.0) / bulk_time.as_secs_f64(),
        &sent_hash[..16],
        s.ep.max_data_payload,
        app.peak_pending / 1024
    );
    assert!(
        s.ep.max_data_payload <= 8192,
        "keeper's client role frames TCP data in ≤ 8192 B"
    );

    // Keeper closes the tube with one TCP client still connected: CloseConnection(0, AdminClosed) and the
    // per-connection closes reach our gateway. That client connects now and stays.
    let before = app.targets.len();
    let h = std::thread::spawn(move || tcp_roundtrip(listen, b"last", false, S(10)));
    app.run_until(&mut s, "the last connection", S(5), |_, app| {
        app.targets.len() > before
    });
    let last = app.targets[before];

    // A *critical* reason for one connection: Keeper's client role (server mode) stops its TCP listener when
    // a CloseConnection carries Error (1) or UpstreamClosed (20), whatever the connection number. The
    // tube and the connections already open stay up.
    let before = app.targets.len();
    let h_err = std::thread::spawn(move || tcp_roundtrip(listen, b"e", false, S(5)));
    let mut conn = 0;
    app.run_until(&mut s, "the Error connection's byte", S(5), |_, app| {
        if app.targets.len() > before {
            conn = app.targets[before];
            app.bytes_in.get(&conn).copied().unwrap_or(0) >= 1
        } else {
            false
        }
    });
    s.ep.conns.close(conn, CloseReason::Error).expect("close");
    let r = app.join(&mut s, "the Error connection's client", h_err);
    assert_eq!(r.end, "eof");
    let mut refused = false;
    app.run_until(&mut s, "keeper's listener to stop", S(3), |_, _| {
        refused =
            std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(100)).is_err();
        refused
    });
    s.ping();
    println!(
        "[keeper client→gw] CloseConnection({conn}, Error) → keeper stopped its TCP listener (connect refused); the tube still answers Ping"
    );
    assert!(s.ep.conns.is_open(last), "the open connection survives");

    let t_close = Instant::now();
    s.keeper.send(json!({"type": "close"}));
    app.run_until(&mut s, "ChannelClosed from keeper", S(10), |_, app| {
        app.channel_closed.is_some()
    });
    let closed_in = t_close.elapsed();
    let r = app.join(&mut s, "last TCP client", h);
    let closes: Vec<_> =
        s.ep.controls
            .iter()
            .filter(|t| t.at >= t_close)
            .map(|t| t.msg.clone())
            .collect();
    println!(
        "[keeper client→gw] keeper close_tube → ChannelClosed {:?} after {:.0} ms; frames: {closes:?}; its TCP client: {}",
        app.channel_closed,
        ms(closed_in),
        r.end
    );
    assert_eq!(
        app.channel_closed.as_ref().map(|c| c.0),
        Some(CloseReason::AdminClosed)
    );
    assert!(app
        .closed
        .iter()
        .any(|(c, r, _)| *c == last && *r == CloseReason::AdminClosed));
    let done = s.keeper.wait_for("closed", S(10));
    println!(
        "[keeper client→gw] keeper close_tube returned after {} ms; warnings {:?}; whole test {:.1} s",
        done["ms"],
        app.warnings,
        t_start.elapsed().as_secs_f64()
    );
}

// ================================================================================================
// 2b. Keeper tube as client ↔ pam-lite's whole gateway node (`pam_lite_core::gateway::Gateway` on the
//     blocking driver, real UDP socket, `dial_targets` forwarding to a TCP echo server). The test is the
//     router: it encrypts keeper's offer and candidates into GatewayAction messages (the tunnel key from
//     a record seed and the offer nonce) and decrypts the gateway's replies for keeper.
// ================================================================================================

/// Outputs of the gateway node that are not about connections (the forwarder takes those).
enum GwOut {
    Reply(String),
    Finished,
}

#[test]
fn keeper_client_against_pam_lite_gateway_node() {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use pam_lite_core::gateway::{Gateway, GatewayConfig};
    use pam_lite_core::offer::{icecandidate_inputs, StartInputs};
    use pam_lite_core::signaling::{
        classify_gateway_data, ConversationId, GatewayAction, GatewayData, GatewayPayload,
        TunnelKey,
    };
    use pam_lite_core::{Command, Input, Output};
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    let Some(python) = interop_python("keeper_client_against_pam_lite_gateway_node") else {
        return;
    };
    let t_start = Instant::now();
    // The echo server only reads while it can write (single-threaded, like many request/response servers):
    // the case that once deadlocked the forwarders (docs/PROTOCOL-NOTES.md, bug 3, fixed).
    // PAM_LITE_INTEROP_DECOUPLED_ECHO=1 uses one that never stops reading instead.
    let echo = if std::env::var_os("PAM_LITE_INTEROP_DECOUPLED_ECHO").is_some() {
        EchoServer::start()
    } else {
        EchoServer::start_coupled()
    };
    let mut rng = ChaCha20Rng::from_seed([11; 32]);
    let conv = ConversationId::random(&mut rng);
    let seed = b"interop record traffic seed 32 B".to_vec();
    let cfg = GatewayConfig {
        default_seed: Some(seed.clone()),
        unix_ms_at_start: unix_ms(),
        ..GatewayConfig::new(pam_lite_driver_kit::dtls::identity())
    };
    let gateway = Gateway::new(cfg, [12; 32], Instant::now());
    let handle = pam_lite_blocking::spawn(gateway, pam_lite_blocking::DriverConfig::default())
        .expect("gateway driver");
    let inputs = handle.sender();
    let forwarder = pam_lite_blocking::forward::dial_targets(&handle, echo.addr);
    // One thread owns the handle: connection outputs go to the forwarder, the rest to this test.
    let (out_tx, out_rx) = std::sync::mpsc::channel();
    let pump = std::thread::spawn(move || {
        let end = Instant::now() + S(150);
        while Instant::now() < end {
            match handle.recv_timeout(Duration::from_millis(50)) {
                Ok(Some(out)) => match forwarder.dispatch(out) {
                    None => {}
                    Some(Output::ControllerReply { payload, .. }) => {
                        let _ = out_tx.send(GwOut::Reply(payload));
                    }
                    Some(Output::Finished(_)) => {
                        let _ = out_tx.send(GwOut::Finished);
                    }
                    Some(_) => {}
                },
                Ok(None) => {}
                Err(_) => return,
            }
        }
    });

    let mut keeper = KeeperPeer::spawn(
        &python,
        &[
            "--role",
            "client",
            "--conv",
            &conv.url(),
            "--deadline",
            "120",
        ],
    );
    let offer = keeper.wait_for("offer", S(15));
    let listen: std::net::SocketAddr = offer["listen"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("listener");
    let mut nonce = [0u8; 16];
    rng.fill_bytes(&mut nonce);
    let nonce_b64 = B64.encode(nonce);
    let key = TunnelKey::derive(&seed, &nonce);
    let offer_data = json!({"offer": B64.encode(offer["sdp"].as_str().expect("sdp"))}).to_string();
    let start = StartInputs {
        record_uid: "interopRecordUid".into(),
        base64_nonce: nonce_b64.clone(),
        conversation_type: "tunnel".into(),
        data: key.encrypt(offer_data.as_bytes(), &mut rng),
        trickle_ice: true,
        credential: None,
        two_factor_value: None,
    };
    let t_offer = Instant::now();
    inputs.input(Input::ControllerMessage {
        reply_to: 1,
        stream: true,
        payload: GatewayAction {
            conversation_id: conv.url(),
            inputs: start.to_map(),
            message_id: None,
        }
        .to_json(),
    });

    // Relay until keeper's tube is ready: gateway replies → keeper, keeper candidates → gateway.
    let mut answer_at = None;
    let mut gw_candidates = Vec::new();
    let mut next_reply = 2;
    let ready_by = Instant::now() + S(15);
    loop {
        while let Ok(o) = out_rx.try_recv() {
            if let GwOut::Reply(payload) = o {
                match classify_gateway_data(&key, &GatewayPayload::parse(&payload)) {
                    GatewayData::Answer(sdp) => {
                        assert_eq!(keeper_version(&sdp), Some("2.2.9"));
                        answer_at = Some(Instant::now());
                        keeper.send(json!({"type": "answer", "sdp": sdp}));
                    }
                    GatewayData::Candidates(list) => {
                        for c in list {
                            keeper.send(json!({"type": "candidate", "candidate": c}));
                            gw_candidates.push(c);
                        }
                        keeper.send(json!({"type": "candidate", "candidate": ""}));
                    }
                    GatewayData::Ack => {}
                    other => panic!("unexpected gateway reply {other:?}"),
                }
            }
        }
        keeper.poll();
        while let Some(c) = keeper.take("candidate") {
            let c = c["candidate"].as_str().unwrap_or("").to_string();
            let data = key.encrypt(
                json!({ "candidates": [c] }).to_string().as_bytes(),
                &mut rng,
            );
            inputs.input(Input::ControllerMessage {
                reply_to: next_reply,
                stream: true,
                payload: GatewayAction {
                    conversation_id: conv.std(),
                    inputs: icecandidate_inputs(
                        "interopRecordUid",
                        &nonce_b64,
                        "tunnel",
                        &data,
                        true,
                    ),
                    message_id: None,
                }
                .to_json(),
            });
            next_reply += 1;
        }
        if keeper.take("ready").is_some() {
            break;
        }
        assert!(
            Instant::now() < ready_by,
            "keeper not ready; keeper said {:?}",
            keeper.history
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let answer_at = answer_at.expect("answer");
    println!(
        "[keeper client→gw node] offer → answer {:.1} ms; answer → keeper ready {:.1} ms; gateway candidates {gw_candidates:?}",
        ms(answer_at - t_offer),
        ms(answer_at.elapsed())
    );

    // 50 TCP clients at once through keeper's listener, the gateway node and its forwarder.
    let t50 = Instant::now();
    let clients: Vec<_> = (0..50u32)
        .map(|i| {
            std::thread::spawn(move || {
                let mut data = format!("ID:node{i}\n").into_bytes();
                data.extend(std::iter::repeat_n(i as u8, 2000));
                let r = tcp_roundtrip(listen, &data, true, S(20));
                (data, r)
            })
        })
        .collect();
    for c in clients {
        let (data, r) = c.join().expect("client");
        assert_eq!(r.received, data);
        assert_eq!(r.end, "eof");
    }
    let end = Instant::now() + S(10);
    while (0..50).any(|i| echo.ended(&format!("node{i}")).is_none()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 0..50 {
        assert_eq!(
            echo.ended(&format!("node{i}")),
            Some(EchoEnd::Eof),
            "node{i}"
        );
    }
    println!(
        "[keeper client→gw node] 50 TCP clients echoed through the gateway node, all backends closed, in {:.0} ms",
        ms(t50.elapsed())
    );

    // 64 MiB through one connection.
    let total = bulk_bytes();
    let t_bulk = Instant::now();
    let stream = std::net::TcpStream::connect(listen).expect("connect bulk");
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let mut p = Payload::new(total, 13);
        while p.remaining > 0 {
            let chunk = p.next_chunk(64 * 1024);
            if std::io::Write::write_all(&mut w, &chunk).is_err() {
                break;
            }
        }
        let _ = w.shutdown(std::net::Shutdown::Write);
        hex(p.sha.finalize())
    });
    let mut r = stream;
    let _ = r.set_read_timeout(Some(S(30)));
    let mut sha = sha2::Sha256::new();
    let mut n: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match std::io::Read::read(&mut r, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                sha.update(&buf[..k]);
                n += k as u64;
            }
        }
    }
    let sent_hash = writer.join().expect("writer");
    let bulk_time = t_bulk.elapsed();
    assert_eq!(
        n,
        total,
        "echoed byte count ({n} of {total}; the echo server got {})",
        echo.stats.bytes.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(sent_hash, hex(sha.finalize()));
    println!(
        "[keeper client→gw node] {} MiB echoed in {:.2} s = {:.1} MiB/s each way; sha256 {}…",
        total >> 20,
        bulk_time.as_secs_f64(),
        (total as f64 / 1048576.0) / bulk_time.as_secs_f64(),
        &sent_hash[..16]
    );

    // Keeper closes the tube with a connection open: the gateway closes that target connection (the
    // forwarder consumes the ConnectionClosed output; the echo server sees the close) and keeper's TCP client
    // is closed by keeper.
    let mut held = std::net::TcpStream::connect(listen).expect("connect last");
    std::io::Write::write_all(&mut held, b"ID:last\n").expect("write");
    let mut echoed = [0u8; 8];
    let _ = held.set_read_timeout(Some(S(5)));
    std::io::Read::read_exact(&mut held, &mut echoed).expect("echo of the last connection");
    let t_close = Instant::now();
    keeper.send(json!({"type": "close"}));
    let end = Instant::now() + S(10);
    while echo.ended("last").is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let target_closed = t_close.elapsed();
    let r = read_to_end_bounded(&mut held, S(5), t_close);
    println!(
        "[keeper client→gw node] keeper close_tube → gateway closed its target after {:.0} ms ({:?}); keeper's TCP client: {}",
        ms(target_closed),
        echo.ended("last"),
        r.end
    );
    assert_eq!(echo.ended("last"), Some(EchoEnd::Eof));
    assert_eq!(r.end, "eof");
    keeper.wait_for("closed", S(10));
    inputs.input(Input::Command(Command::Close));
    let end = Instant::now() + S(5);
    let mut finished = false;
    while !finished && Instant::now() < end {
        finished = matches!(
            out_rx.recv_timeout(Duration::from_millis(50)),
            Ok(GwOut::Finished) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
    assert!(finished, "the gateway node finished");
    drop(inputs);
    let _ = pump.join();
    println!(
        "[keeper client→gw node] whole test {:.1} s",
        t_start.elapsed().as_secs_f64()
    );
}

// ================================================================================================
// 3. Real Commander (keepercommander 18.1.8, its own `start_rust_tunnel`, i.e. `pam tunnel start`) against
//    pam-lite's emulator (router HTTP + WebSocket + gateway), no Keeper login: see
//    tests/interop/commander_tunnel.py for exactly what is put in place by hand.
// ================================================================================================

/// A child process killed (and reaped) on every path.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn real_commander_against_pam_lite_emulator() {
    use pam_lite_emulator::{Emulator, EmulatorConfig, TargetConfig};
    use std::io::BufRead;

    let Some(python) = interop_python("real_commander_against_pam_lite_emulator") else {
        return;
    };
    let t_start = Instant::now();
    let echo = EchoServer::start();
    let emu = Emulator::start(EmulatorConfig {
        target: TargetConfig::Tunnel {
            forward_to: echo.addr,
        },
        ..EmulatorConfig::default()
    })
    .expect("emulator");
    // The ticket holds the emulator's session token and seed: owner-only file, removed at the end.
    let ticket_path = std::env::temp_dir().join(format!(
        "pam-lite-interop-ticket-{}.json",
        std::process::id()
    ));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&ticket_path)
            .expect("ticket file");
        f.write_all(emu.ticket().to_json_string().as_bytes())
            .expect("write ticket");
    }
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _ticket_guard = RemoveOnDrop(ticket_path.clone());

    let mib = (bulk_bytes() >> 20).to_string();
    let mut child = std::process::Command::new(&python)
        .arg(interop_dir().join("commander_tunnel.py"))
        .args(["--ticket", ticket_path.to_str().expect("utf-8 path")])
        .args(["--conns", "50", "--mib", &mib, "--deadline", "100"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start commander_tunnel.py");
    let stdout = child.stdout.take().expect("stdout");
    let _child = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let v = serde_json::from_str(&line)
                .unwrap_or_else(|_| json!({"type": "unparsed", "line": line}));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let end = Instant::now() + S(110);
    let result = loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(v) => {
                println!("[commander→emulator] {v}");
                let done = v["type"] == "result" || v["type"] == "error";
                lines.push(v.clone());
                if done {
                    break v;
                }
            }
            Err(_) => panic!("commander_tunnel.py gave no result within 110 s; it said {lines:?}"),
        }
    };
    assert_eq!(result["ok"], true, "Commander run failed: {lines:?}");
    let of = |ty: &str| {
        lines
            .iter()
            .find(|v| v["type"] == ty)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let connected = of("connected");
    let started = of("started");
    let echoes = of("echo");
    let bulk = of("bulk");
    assert!(
        connected["ms_from_start"].is_number(),
        "Commander reached connected"
    );
    assert_eq!(echoes["conns"], 50);
    assert_eq!(echoes["failures"], json!([]));
    if bulk_bytes() > 0 {
        assert_eq!(bulk["bytes"], bulk_bytes());
        assert_eq!(bulk["sha_sent"], bulk["sha_received"]);
    }
    // Every tunneled connection reached the echo server and was closed cleanly by the emulator's gateway.
    for i in 0..50 {
        let tag = format!("commander{i}");
        assert_eq!(echo.ended(&tag), Some(EchoEnd::Eof), "{tag}");
    }
    println!(
        "[commander→emulator] start_rust_tunnel returned after {} ms (includes Commander's fixed 2 s WebSocket \
         wait), connected {} ms after the start; first echo {} ms; 50 connections {} ms; bulk {} MiB/s; whole test {:.1} s",
        started["ms"],
        connected["ms_from_start"],
        echoes["first_roundtrip_ms"],
        echoes["conns_ms"],
        bulk["mib_per_s"],
        t_start.elapsed().as_secs_f64()
    );
    drop(emu);
}

// ================================================================================================
// 4. Real Commander's terminal client (keepercommander 18.1.8: `launch_terminal_connection`, its
//    `GuacamoleHandler` in PythonHandler mode, the steps of `_start_cli_session`) against pam-lite's emulator
//    in terminal mode (a real /bin/sh under a PTY behind the emulated gateway). See
//    tests/interop/commander_terminal.py for what is put in place by hand (fixtures like the exporter's).
// ================================================================================================

#[test]
fn real_commander_terminal_against_pam_lite_emulator() {
    use pam_lite_emulator::{Emulator, EmulatorConfig, TargetConfig};
    use std::io::BufRead;

    let Some(python) = interop_python("real_commander_terminal_against_pam_lite_emulator") else {
        return;
    };
    let emu = Emulator::start(EmulatorConfig {
        target: TargetConfig::Terminal {
            command: vec!["/bin/sh".to_string()],
        },
        ..EmulatorConfig::default()
    })
    .expect("emulator");
    let ticket_path = std::env::temp_dir().join(format!(
        "pam-lite-interop-terminal-ticket-{}.json",
        std::process::id()
    ));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&ticket_path)
            .expect("ticket file");
        f.write_all(emu.ticket().to_json_string().as_bytes())
            .expect("write ticket");
    }
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _ticket_guard = RemoveOnDrop(ticket_path.clone());

    let mut child = std::process::Command::new(&python)
        .arg(interop_dir().join("commander_terminal.py"))
        .args(["--ticket", ticket_path.to_str().expect("utf-8 path")])
        .args(["--deadline", "80"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start commander_terminal.py");
    let stdout = child.stdout.take().expect("stdout");
    let _child = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let v = serde_json::from_str(&line)
                .unwrap_or_else(|_| json!({"type": "unparsed", "line": line}));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let end = Instant::now() + S(90);
    let result = loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(v) => {
                println!("[commander terminal→emulator] {v}");
                let done = v["type"] == "result" || v["type"] == "error";
                lines.push(v.clone());
                if done {
                    break v;
                }
            }
            Err(_) => panic!("commander_terminal.py gave no result within 90 s; it said {lines:?}"),
        }
    };
    assert_eq!(
        result["ok"], true,
        "Commander terminal run failed: {lines:?}"
    );
    let of = |ty: &str| {
        lines
            .iter()
            .find(|v| v["type"] == ty)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(of("ready")["ok"], true, "wait_for_ready");
    assert_eq!(of("ready")["stdout_pipe"], true, "STDOUT pipe opened");
    assert_eq!(of("command")["ok"], true, "command output came back");
    let resize = of("resize");
    assert_eq!(resize["ok"], true, "stty size after send_size");
    assert_ne!(resize["before"], "30x100");
    let ended = of("ended");
    assert_eq!(ended["ok"], true, "end of session reached Commander");
    assert_eq!(ended["handler_running"], false);
    drop(emu);
}
