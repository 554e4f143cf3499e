//! The driver suite: what every runtime must do with a node, through its [`Runtime`] implementation (a
//! puppet or echo node on real 127.0.0.1 sockets: UDP, HTTP, WebSocket, TLS). Each function is one test;
//! each runtime crate lists them in its `tests/suite.rs`, one `#[test]` line each.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pam_lite_core::{
    CandidateKind, Command, Datagram, HttpRequest, Input, Method, Output, WsConnect,
};
use pam_lite_driver_kit::runtime::{NodeHandle, Runtime};
use pam_lite_driver_kit::{DriverConfig, Stopped, TlsConfig};

use crate::{mute_server, puppet, ws_server, wss_server, Echo, HttpStub, StubBehavior, TestCa};

const WAIT: Duration = Duration::from_secs(5);

fn request(id: u64, url: String, fresh: bool, timeout: Duration) -> HttpRequest {
    HttpRequest {
        id,
        method: Method::Post,
        url,
        headers: vec![
            ("Authorization".into(), "Bearer top-secret-value".into()),
            ("Content-Type".into(), "application/json".into()),
        ],
        body: b"{\"q\":1}".to_vec(),
        fresh_connection: fresh,
        timeout,
    }
}

pub fn announces_host_candidate_then_gathering_complete<R: Runtime>() {
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    assert_eq!(
        ctl.next(WAIT),
        Some(Input::LocalCandidate {
            addr: handle.local_addr(),
            kind: CandidateKind::Host
        })
    );
    assert_eq!(ctl.next(WAIT), Some(Input::GatheringComplete));
}

pub fn echo_node_answers_datagrams_with_real_addresses<R: Runtime>() {
    let handle = R::spawn(Echo::default(), DriverConfig::default()).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    for i in 0..50u8 {
        peer.send_to(&[i; 100], handle.local_addr()).unwrap();
        let mut buf = [0u8; 200];
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!((n, from), (100, handle.local_addr()));
        assert_eq!(buf[0], i);
    }
    handle.input(Input::Command(Command::Close));
    assert_eq!(
        handle.recv_timeout(WAIT),
        Ok(Some(Output::Finished(Ok(()))))
    );
    assert_eq!(handle.recv_timeout(WAIT), Err(Stopped));
    handle.join().unwrap();
}

/// 20 MB of 1200-byte datagrams through the driver and back, with at most `WINDOW` in flight (less than
/// either socket's receive buffer holds, so the kernel never has a reason to drop one): every datagram must
/// come back. How *fast* is the benchmark's business (a paced 40 MB/s version of this test flaked on a
/// loaded machine); this proves the driver loses nothing it was given room for, at whatever speed it runs.
pub fn echo_returns_every_datagram_of_20_megabytes<R: Runtime>() {
    let handle = R::spawn(Echo::default(), DriverConfig::default()).unwrap();
    let target = handle.local_addr();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    const SIZE: usize = 1200;
    const COUNT: usize = 16_667; // 20 MB
                                 // 32 datagrams of 1200 bytes take ~74 KB of receive buffer on loopback (skb overhead included): well
                                 // under the 208 KB default of the peer's socket and the driver's raised buffer.
    const WINDOW: usize = 32;
    let started = Instant::now();
    let mut buf = [0u8; 2048];
    let (mut sent, mut received) = (0usize, 0usize);
    while received < COUNT {
        while sent < COUNT && sent - received < WINDOW {
            peer.send_to(&[(sent % 251) as u8; SIZE], target).unwrap();
            sent += 1;
        }
        match peer.recv_from(&mut buf) {
            Ok((n, _)) => {
                assert_eq!(n, SIZE, "datagram {received} came back with {n} bytes");
                received += 1;
            }
            Err(e) => panic!("{received} of {COUNT} datagrams echoed, then nothing for 5 s: {e}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "echoed {:.1} MB in {secs:.2}s ({:.1} MB/s, window {WINDOW})",
        (COUNT * SIZE) as f64 / 1e6,
        (COUNT * SIZE) as f64 / 1e6 / secs
    );
    drop(handle);
}

pub fn timer_fires_when_due<R: Runtime>() {
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    ctl.next(WAIT).unwrap();
    ctl.next(WAIT).unwrap();
    let due = Instant::now() + Duration::from_millis(80);
    ctl.wake_at(Some(due));
    handle.input(Input::Command(Command::TerminalResize { cols: 1, rows: 1 }));
    ctl.next(WAIT).unwrap();
    let (input, at) = ctl.seen.recv_timeout(WAIT).unwrap();
    assert_eq!(input, Input::Timeout);
    assert!(at >= due, "timer fired {:?} early", due - at);
    assert!(at < due + Duration::from_millis(500), "timer late");
}

pub fn http_pooled_requests_share_one_connection_and_return_everything<R: Runtime>() {
    let stub = HttpStub::start(StubBehavior::Respond {
        status: 201,
        body: b"{\"ok\":true}".to_vec(),
    });
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    for id in 1..=3 {
        ctl.script(Output::Http(request(id, stub.url("/api/x"), false, WAIT)));
        handle.input(Input::Timeout);
        let got = ctl.wait_for(WAIT, |i| {
            matches!(i, Input::HttpResponse { .. } | Input::HttpError { .. })
        });
        let Some(Input::HttpResponse {
            id: got_id,
            response,
        }) = got
        else {
            panic!("no response: {got:?}");
        };
        assert_eq!(got_id, id);
        assert_eq!(response.status, 201);
        assert_eq!(response.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            response.set_cookies,
            vec!["a=1; Path=/".to_string(), "b=2".into()]
        );
        assert_eq!(response.body, b"{\"ok\":true}");
    }
    let seen = stub.requests.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/api/x")
    );
    assert_eq!(seen.body, b"{\"q\":1}");
    assert!(seen
        .headers
        .contains(&("authorization".into(), "Bearer top-secret-value".into())));
    assert_eq!(
        stub.connections.load(Ordering::SeqCst),
        1,
        "keep-alive not reused"
    );
}

pub fn http_fresh_requests_open_new_connections<R: Runtime>() {
    let stub = HttpStub::start(StubBehavior::Respond {
        status: 200,
        body: Vec::new(),
    });
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    for id in 1..=3 {
        ctl.script(Output::Http(request(id, stub.url("/f"), true, WAIT)));
        handle.input(Input::Timeout);
        let got = ctl.wait_for(WAIT, |i| {
            matches!(i, Input::HttpResponse { .. } | Input::HttpError { .. })
        });
        assert!(matches!(got, Some(Input::HttpResponse { .. })), "{got:?}");
    }
    assert_eq!(stub.connections.load(Ordering::SeqCst), 3);
}

pub fn http_timeout_and_refusal_are_errors_without_secrets<R: Runtime>() {
    let silent = HttpStub::start(StubBehavior::Silent);
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    let started = Instant::now();
    ctl.script(Output::Http(request(
        7,
        silent.url("/slow"),
        false,
        Duration::from_millis(300),
    )));
    ctl.script(Output::Http(request(
        8,
        format!("http://{closed}/x"),
        true,
        WAIT,
    )));
    handle.input(Input::Timeout);
    let mut errors = Vec::new();
    while errors.len() < 2 {
        match ctl.wait_for(WAIT, |i| {
            matches!(i, Input::HttpResponse { .. } | Input::HttpError { .. })
        }) {
            Some(Input::HttpError { id, error }) => errors.push((id, error, started.elapsed())),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    errors.sort_by_key(|e| e.0);
    assert!(errors[0].1.contains("timed out"), "{}", errors[0].1);
    assert!(errors[0].2 >= Duration::from_millis(300) && errors[0].2 < Duration::from_secs(3));
    for (_, text, _) in &errors {
        assert!(!text.contains("top-secret"), "{text}");
    }
}

pub fn http_body_is_bounded<R: Runtime>() {
    let stub = HttpStub::start(StubBehavior::Respond {
        status: 200,
        body: vec![b'x'; 5000],
    });
    let (node, ctl) = puppet();
    let config = DriverConfig {
        http_body_limit: 1000,
        ..DriverConfig::default()
    };
    let handle = R::spawn(node, config).unwrap();
    ctl.script(Output::Http(request(1, stub.url("/big"), false, WAIT)));
    handle.input(Input::Timeout);
    let got = ctl.wait_for(WAIT, |i| {
        matches!(i, Input::HttpResponse { .. } | Input::HttpError { .. })
    });
    assert!(
        matches!(&got, Some(Input::HttpError { id: 1, error }) if error.contains("larger than")),
        "{got:?}"
    );
}

pub fn websocket_delivers_text_frames_then_close<R: Runtime>() {
    let addr = ws_server(|mut ws, headers| {
        assert!(headers.contains(&("authorization".into(), "Bearer ws-secret".into())));
        ws.send(tungstenite::Message::text("hello")).unwrap();
        ws.send(tungstenite::Message::binary(vec![1, 2, 3]))
            .unwrap();
        ws.send(tungstenite::Message::text("world")).unwrap();
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    });
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    ctl.script(Output::WsConnect(WsConnect {
        url: format!("ws://{addr}/ws"),
        headers: vec![("Authorization".into(), "Bearer ws-secret".into())],
        timeout: WAIT,
        phase: pam_lite_core::WsPhase::Fresh,
    }));
    handle.input(Input::Timeout);
    let ws_input = |i: &Input| {
        matches!(
            i,
            Input::WsOpened | Input::WsMessage(_) | Input::WsClosed { .. }
        )
    };
    assert_eq!(ctl.wait_for(WAIT, ws_input), Some(Input::WsOpened));
    assert_eq!(
        ctl.wait_for(WAIT, ws_input),
        Some(Input::WsMessage("hello".into()))
    );
    assert_eq!(
        ctl.wait_for(WAIT, ws_input),
        Some(Input::WsMessage("world".into()))
    );
    assert!(matches!(
        ctl.wait_for(WAIT, ws_input),
        Some(Input::WsClosed { .. })
    ));
}

pub fn websocket_close_output_sends_a_close_frame_and_reports_nothing<R: Runtime>() {
    let (closed_tx, closed_rx) = mpsc::channel();
    let addr = ws_server(move |mut ws, _| {
        ws.send(tungstenite::Message::text("hi")).unwrap();
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Close(_)) => {
                    closed_tx.send(()).unwrap();
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    ctl.script(Output::WsConnect(WsConnect {
        url: format!("ws://{addr}/"),
        headers: Vec::new(),
        timeout: WAIT,
        phase: pam_lite_core::WsPhase::Fresh,
    }));
    handle.input(Input::Timeout);
    assert_eq!(
        ctl.wait_for(WAIT, |i| matches!(i, Input::WsMessage(_))),
        Some(Input::WsMessage("hi".into()))
    );
    ctl.script(Output::WsClose);
    handle.input(Input::Timeout);
    closed_rx.recv_timeout(WAIT).unwrap();
    assert_eq!(
        ctl.wait_for(Duration::from_millis(300), |i| matches!(
            i,
            Input::WsClosed { .. }
        )),
        None
    );
}

pub fn websocket_oversized_frame_and_handshake_timeout_close<R: Runtime>() {
    let addr = ws_server(|mut ws, _| {
        let _ = ws.send(tungstenite::Message::text("y".repeat(4096)));
        while ws.read().is_ok() {}
    });
    let mute = mute_server();
    let (node, ctl) = puppet();
    let config = DriverConfig {
        ws_frame_limit: 1024,
        ..DriverConfig::default()
    };
    let handle = R::spawn(node, config).unwrap();
    ctl.script(Output::WsConnect(WsConnect {
        url: format!("ws://{addr}/"),
        headers: Vec::new(),
        timeout: WAIT,
        phase: pam_lite_core::WsPhase::Fresh,
    }));
    handle.input(Input::Timeout);
    assert_eq!(
        ctl.wait_for(WAIT, |i| matches!(i, Input::WsOpened)),
        Some(Input::WsOpened)
    );
    let closed = ctl.wait_for(WAIT, |i| {
        matches!(i, Input::WsClosed { .. } | Input::WsMessage(_))
    });
    assert!(matches!(closed, Some(Input::WsClosed { .. })), "{closed:?}");

    let started = Instant::now();
    ctl.script(Output::WsConnect(WsConnect {
        url: format!("ws://{mute}/"),
        headers: Vec::new(),
        timeout: Duration::from_millis(300),
        phase: pam_lite_core::WsPhase::Fresh,
    }));
    handle.input(Input::Timeout);
    let closed = ctl.wait_for(WAIT, |i| {
        matches!(i, Input::WsClosed { .. } | Input::WsOpened)
    });
    assert!(
        matches!(&closed, Some(Input::WsClosed { reason }) if reason.contains("timed out")),
        "{closed:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

pub fn app_outputs_are_forwarded_and_finish_flushes_transmits<R: Runtime>() {
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    ctl.script(Output::TubeReady);
    ctl.script(Output::ConnectionData {
        conn: 3,
        data: b"abc".to_vec(),
    });
    ctl.script(Output::Finished(Ok(())));
    handle.input(Input::Timeout);
    assert_eq!(handle.recv_timeout(WAIT), Ok(Some(Output::TubeReady)));
    assert_eq!(
        handle.recv_timeout(WAIT),
        Ok(Some(Output::ConnectionData {
            conn: 3,
            data: b"abc".to_vec()
        }))
    );
    assert_eq!(
        handle.recv_timeout(WAIT),
        Ok(Some(Output::Finished(Ok(()))))
    );
    // A graceful-close datagram produced after Finished still goes out during the flush.
    ctl.script(Output::Transmit(Datagram {
        source: handle.local_addr(),
        destination: peer.local_addr().unwrap(),
        contents: b"bye".to_vec(),
    }));
    handle.input(Input::Timeout);
    let mut buf = [0u8; 16];
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"bye");
    let started = Instant::now();
    assert_eq!(handle.recv_timeout(WAIT), Err(Stopped));
    assert!(started.elapsed() < Duration::from_secs(1));
    handle.join().unwrap();
}

pub fn transmit_from_a_foreign_source_is_dropped<R: Runtime>() {
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    ctl.script(Output::Transmit(Datagram {
        source: "127.0.0.1:9".parse().unwrap(),
        destination: peer.local_addr().unwrap(),
        contents: b"no".to_vec(),
    }));
    handle.input(Input::Timeout);
    let mut buf = [0u8; 16];
    assert!(peer.recv_from(&mut buf).is_err());
}

pub fn dropping_the_handle_closes_the_node<R: Runtime>() {
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    drop(handle);
    let got = ctl.wait_for(WAIT, |i| matches!(i, Input::Command(Command::Close)));
    assert_eq!(got, Some(Input::Command(Command::Close)));
}

pub fn websocket_close_while_connecting_reports_nothing_and_a_new_connect_works<R: Runtime>() {
    let mute = mute_server();
    let addr = ws_server(|mut ws, _| {
        ws.send(tungstenite::Message::text("second")).unwrap();
        while ws.read().is_ok() {}
    });
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    ctl.script(Output::WsConnect(WsConnect {
        url: format!("ws://{mute}/"),
        headers: Vec::new(),
        timeout: Duration::from_millis(200),
        phase: pam_lite_core::WsPhase::Fresh,
    }));
    ctl.script(Output::WsClose);
    handle.input(Input::Timeout);
    let ws_input = |i: &Input| {
        matches!(
            i,
            Input::WsOpened | Input::WsMessage(_) | Input::WsClosed { .. }
        )
    };
    // Even after the abandoned handshake's timeout nothing is reported.
    assert_eq!(ctl.wait_for(Duration::from_millis(400), ws_input), None);
    ctl.script(Output::WsConnect(WsConnect {
        url: format!("ws://{addr}/"),
        headers: Vec::new(),
        timeout: WAIT,
        phase: pam_lite_core::WsPhase::Fresh,
    }));
    handle.input(Input::Timeout);
    assert_eq!(ctl.wait_for(WAIT, ws_input), Some(Input::WsOpened));
    assert_eq!(
        ctl.wait_for(WAIT, ws_input),
        Some(Input::WsMessage("second".into()))
    );
}

pub fn unspecified_bind_announces_explicit_candidates_and_reports_real_addresses<R: Runtime>() {
    let (node, ctl) = puppet();
    let config = DriverConfig {
        udp_bind: "0.0.0.0:0".parse().unwrap(),
        candidate_ips: vec!["127.0.0.1".parse().unwrap()],
        ..DriverConfig::default()
    };
    let handle = R::spawn(node, config).unwrap();
    let port = handle.local_addr().port();
    assert!(handle.local_addr().ip().is_unspecified());
    let candidate: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(
        ctl.next(WAIT),
        Some(Input::LocalCandidate {
            addr: candidate,
            kind: CandidateKind::Host
        })
    );
    assert_eq!(ctl.next(WAIT), Some(Input::GatheringComplete));
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    peer.send_to(b"in", candidate).unwrap();
    assert_eq!(
        ctl.next(WAIT),
        Some(Input::Datagram(Datagram {
            source: peer.local_addr().unwrap(),
            destination: candidate,
            contents: b"in".to_vec(),
        }))
    );
    ctl.script(Output::Transmit(Datagram {
        source: candidate,
        destination: peer.local_addr().unwrap(),
        contents: b"out".to_vec(),
    }));
    handle.input(Input::Timeout);
    let mut buf = [0u8; 8];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"out"[..], candidate));
}

/// Bound to all interfaces with no explicit candidates, the runtime announces the machine's interface
/// addresses (never a loopback one while another is up), each with the bound port, then completes.
pub fn unspecified_bind_without_candidates_announces_interfaces<R: Runtime>() {
    let (node, ctl) = puppet();
    let config = DriverConfig {
        udp_bind: "0.0.0.0:0".parse().unwrap(),
        ..DriverConfig::default()
    };
    let handle = R::spawn(node, config).unwrap();
    let local = handle.local_addr();
    assert!(local.ip().is_unspecified());
    let expected = pam_lite_driver_kit::host_candidates::interface_ips(local);
    for ip in &expected {
        assert_eq!(
            ctl.next(WAIT),
            Some(Input::LocalCandidate {
                addr: std::net::SocketAddr::new(*ip, local.port()),
                kind: CandidateKind::Host
            })
        );
    }
    assert_eq!(ctl.next(WAIT), Some(Input::GatheringComplete));
    let all_loopback = expected.iter().all(|ip| ip.is_loopback());
    assert!(all_loopback || expected.iter().all(|ip| !ip.is_loopback()));
}

fn https_result<R: Runtime>(tls: TlsConfig, ca: &TestCa) -> Input {
    let stub = HttpStub::start_tls(
        StubBehavior::Respond {
            status: 200,
            body: b"tls".to_vec(),
        },
        ca.server.clone(),
    );
    let (node, ctl) = puppet();
    let config = DriverConfig {
        tls,
        ..DriverConfig::default()
    };
    let handle = R::spawn(node, config).unwrap();
    ctl.script(Output::Http(request(1, stub.https_url("/tls"), true, WAIT)));
    handle.input(Input::Timeout);
    ctl.wait_for(WAIT, |i| {
        matches!(i, Input::HttpResponse { .. } | Input::HttpError { .. })
    })
    .unwrap()
}

pub fn https_trusts_the_extra_ca_rejects_unknown_and_insecure_accepts<R: Runtime>() {
    let ca = TestCa::new();
    match https_result::<R>(ca.trusted(), &ca) {
        Input::HttpResponse { response, .. } => assert_eq!(response.body, b"tls"),
        other => panic!("extra CA not trusted: {other:?}"),
    }
    match https_result::<R>(TlsConfig::default(), &ca) {
        Input::HttpError { error, .. } => {
            assert!(
                error.contains("TLS") || error.contains("certificate"),
                "{error}"
            )
        }
        other => panic!("self-signed certificate accepted: {other:?}"),
    }
    let insecure = TlsConfig {
        insecure: true,
        ..TlsConfig::default()
    };
    assert!(matches!(
        https_result::<R>(insecure, &ca),
        Input::HttpResponse { .. }
    ));
}

pub fn wss_with_the_extra_ca_delivers_messages<R: Runtime>() {
    let ca = TestCa::new();
    let addr = wss_server(ca.server.clone(), |mut ws, headers| {
        assert!(headers.contains(&("x-test".into(), "1".into())));
        ws.send(tungstenite::Message::text("over tls")).unwrap();
        while ws.read().is_ok() {}
    });
    let (node, ctl) = puppet();
    let config = DriverConfig {
        tls: ca.trusted(),
        ..DriverConfig::default()
    };
    let handle = R::spawn(node, config).unwrap();
    ctl.script(Output::WsConnect(WsConnect {
        url: format!("wss://{addr}/ws"),
        headers: vec![("X-Test".into(), "1".into())],
        timeout: WAIT,
        phase: pam_lite_core::WsPhase::Fresh,
    }));
    handle.input(Input::Timeout);
    let ws_input = |i: &Input| {
        matches!(
            i,
            Input::WsOpened | Input::WsMessage(_) | Input::WsClosed { .. }
        )
    };
    assert_eq!(ctl.wait_for(WAIT, ws_input), Some(Input::WsOpened));
    assert_eq!(
        ctl.wait_for(WAIT, ws_input),
        Some(Input::WsMessage("over tls".into()))
    );
}

pub fn wss_with_an_unknown_certificate_closes<R: Runtime>() {
    let ca = TestCa::new();
    let addr = wss_server(ca.server.clone(), |_ws, _| {});
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    ctl.script(Output::WsConnect(WsConnect {
        url: format!("wss://{addr}/ws"),
        headers: Vec::new(),
        timeout: WAIT,
        phase: pam_lite_core::WsPhase::Fresh,
    }));
    handle.input(Input::Timeout);
    let got = ctl.wait_for(WAIT, |i| {
        matches!(i, Input::WsOpened | Input::WsClosed { .. })
    });
    assert!(
        matches!(&got, Some(Input::WsClosed { reason }) if reason.contains("TLS") || reason.contains("certificate")),
        "{got:?}"
    );
}

/// The `fast` profile's pre-connection ([`pam_lite_core::WsPhase`]): `Prepare` opens the connection
/// (TCP, then TLS for `wss://`) and reports nothing; the `Upgrade` goes on that very connection (the
/// servers here accept exactly one), whether it comes once the connection is idle or right behind the
/// `Prepare` (still connecting or handshaking TLS). Over plain TCP and over TLS.
pub fn websocket_upgrade_goes_on_the_preconnection<R: Runtime>() {
    use pam_lite_core::WsPhase;
    let ca = TestCa::new();
    let plain = || {
        ws_server(|mut ws, headers| {
            assert!(headers.contains(&("cookie".into(), "AWSALB=1".into())));
            ws.send(tungstenite::Message::text("on the prepared one"))
                .unwrap();
            while ws.read().is_ok() {}
        })
    };
    let tls = || {
        wss_server(ca.server.clone(), |mut ws, _| {
            ws.send(tungstenite::Message::text("on the prepared one"))
                .unwrap();
            while ws.read().is_ok() {}
        })
    };
    let cases = [
        (format!("ws://{}/ws", plain()), true),
        (format!("wss://{}/ws", tls()), true),
        (format!("ws://{}/ws", plain()), false),
        (format!("wss://{}/ws", tls()), false),
    ];
    for (url, idle_first) in cases {
        let (node, ctl) = puppet();
        let config = DriverConfig {
            tls: ca.trusted(),
            ..DriverConfig::default()
        };
        let handle = R::spawn(node, config).unwrap();
        let connect = |phase, headers| {
            Output::WsConnect(WsConnect {
                url: url.clone(),
                headers,
                timeout: WAIT,
                phase,
            })
        };
        let ws_input = |i: &Input| {
            matches!(
                i,
                Input::WsOpened | Input::WsMessage(_) | Input::WsClosed { .. }
            )
        };
        let cookie = vec![("Cookie".into(), "AWSALB=1".into())];
        ctl.script(connect(WsPhase::Prepare, Vec::new()));
        if idle_first {
            handle.input(Input::Timeout);
            // Prepared and idle: nothing to report.
            assert_eq!(ctl.wait_for(Duration::from_millis(300), ws_input), None);
        }
        ctl.script(connect(WsPhase::Upgrade, cookie));
        handle.input(Input::Timeout);
        assert_eq!(ctl.wait_for(WAIT, ws_input), Some(Input::WsOpened), "{url}");
        assert_eq!(
            ctl.wait_for(WAIT, ws_input),
            Some(Input::WsMessage("on the prepared one".into())),
            "{url}"
        );
    }
}

/// A pre-connection the server closes while it is idle is reported (`WsClosed`), and an `Upgrade`
/// with no pre-connection left fails at once: the core then connects afresh.
pub fn websocket_a_gone_preconnection_is_reported<R: Runtime>() {
    use pam_lite_core::WsPhase;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        drop(stream); // an idle timeout, at once
    });
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    let connect = |phase| {
        Output::WsConnect(WsConnect {
            url: format!("ws://{addr}/ws"),
            headers: Vec::new(),
            timeout: WAIT,
            phase,
        })
    };
    let closed = |i: &Input| matches!(i, Input::WsOpened | Input::WsClosed { .. });
    ctl.script(connect(WsPhase::Prepare));
    handle.input(Input::Timeout);
    let got = ctl.wait_for(WAIT, closed);
    assert!(
        matches!(&got, Some(Input::WsClosed { reason }) if reason.contains("prepared connection is gone")),
        "{got:?}"
    );
    let started = Instant::now();
    ctl.script(connect(WsPhase::Upgrade));
    handle.input(Input::Timeout);
    let got = ctl.wait_for(WAIT, closed);
    assert!(
        matches!(&got, Some(Input::WsClosed { reason }) if reason.contains("no prepared connection")),
        "{got:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "at once");
}
