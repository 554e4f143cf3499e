//! The emulated router's HTTP endpoints and fault knobs, through real sockets with a real HTTP client.

mod common;

use std::time::{Duration, Instant};

use common::{action, start, T};
use pam_lite_core::router::endpoints::{
    self, gateway_online, parse_controller_response, parse_online_controllers, parse_relay_creds,
    parse_router_response, RouterCallError, OK_BELOW_OTHER, OK_BELOW_SEND,
};
use pam_lite_core::router::proto::RouterResponseCode;
use pam_lite_core::{HttpRequest, Method};
use pam_lite_emulator::{EmulatorConfig, HttpFault, TargetConfig};

fn raw(method: Method, url: String, headers: Vec<(String, String)>) -> HttpRequest {
    HttpRequest {
        id: 1,
        method,
        url,
        headers,
        body: Vec::new(),
        fresh_connection: false,
        timeout: T,
    }
}

#[test]
fn relay_access_creds_answers_sealed_credentials() {
    let (_emu, mut c) = start(EmulatorConfig::default());
    let tokens = c.tokens();
    let r = c
        .perform(&endpoints::relay_access_creds(c.base(), &tokens, true, T))
        .expect("answer");
    assert_eq!(r.status, 200);
    let plain = parse_router_response(&r, &tokens, OK_BELOW_OTHER).expect("RRC_OK");
    let creds = parse_relay_creds(plain.as_deref()).expect("creds");
    assert!(!creds.username.is_empty() && !creds.password.is_empty());
    assert!(creds.server_time > 0);
}

#[test]
fn bind_to_controller_sets_sticky_cookies_without_auth() {
    let (_emu, c) = start(EmulatorConfig::default());
    let r = c
        .perform(&endpoints::bind_to_controller(
            c.base(),
            &c.ticket.gateway_uid,
            true,
            T,
        ))
        .expect("answer");
    assert_eq!(r.status, 200);
    let cookie = endpoints::cookie_header(&r.set_cookies).expect("cookies");
    assert!(cookie.contains("AWSALB="), "{cookie}");
}

#[test]
fn get_controllers_lists_the_emulated_gateway() {
    let (_emu, mut c) = start(EmulatorConfig::default());
    let tokens = c.tokens();
    let r = c
        .perform(&endpoints::get_controllers(c.base(), &tokens, true, T))
        .expect("answer");
    let plain = parse_router_response(&r, &tokens, OK_BELOW_OTHER).expect("RRC_OK");
    let list = parse_online_controllers(plain.as_deref()).expect("list");
    assert!(gateway_online(&list, &c.ticket.gateway_uid));
}

#[test]
fn gateway_offline_knob_hides_the_gateway_and_refuses_messages() {
    let (_emu, mut c) = start(EmulatorConfig {
        gateway_offline: true,
        ..Default::default()
    });
    let tokens = c.tokens();
    let r = c
        .perform(&endpoints::get_controllers(c.base(), &tokens, true, T))
        .expect("answer");
    let plain = parse_router_response(&r, &tokens, OK_BELOW_OTHER).expect("RRC_OK");
    assert!(!gateway_online(
        &parse_online_controllers(plain.as_deref()).expect("list"),
        &c.ticket.gateway_uid
    ));
    let msg = c.message(&action("icecandidate"), false);
    let r = c.send_message(&tokens, &msg).expect("answer");
    let err = parse_router_response(&r, &tokens, OK_BELOW_SEND).unwrap_err();
    assert!(
        matches!(
            err,
            RouterCallError::Router {
                code: RouterResponseCode::RrcControllerDown,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn wrong_credentials_and_unknown_paths_are_refused() {
    let (_emu, mut c) = start(EmulatorConfig::default());
    let url = endpoints::get_controllers_url(c.base());
    let r = c
        .perform(&raw(Method::Post, url.clone(), vec![]))
        .expect("answer");
    assert_eq!(r.status, 401);
    // Tokens made for some other server key: the emulator cannot open them.
    let other = pam_lite_core::router::envelope::ServerPublicKey::keeper(7).expect("key");
    let foreign = pam_lite_core::router::envelope::Tokens::new(b"x", &other, &mut c.rng);
    let r = c
        .perform(&raw(Method::Post, url, foreign.headers()))
        .expect("answer");
    assert_eq!(r.status, 401);
    let r = c
        .perform(&raw(
            Method::Get,
            format!("{}/api/user/nothing", c.base()),
            vec![],
        ))
        .expect("answer");
    assert_eq!(r.status, 404);
    let r = c
        .perform(&raw(
            Method::Get,
            format!("{}/api/user/client", c.base()),
            vec![],
        ))
        .expect("answer");
    assert_eq!(r.status, 426, "the WebSocket path wants an upgrade");
    let r = c
        .perform(&raw(
            Method::Post,
            format!("{}/api/device/connect_state", c.base()),
            vec![],
        ))
        .expect("answer");
    assert_eq!(r.status, 200);
}

#[test]
fn non_streaming_message_is_answered_by_the_gateway_in_the_http_response() {
    let (_emu, mut c) = start(EmulatorConfig {
        target: TargetConfig::Tunnel {
            forward_to: "127.0.0.1:9".parse().expect("addr"),
        },
        ..Default::default()
    });
    let tokens = c.tokens();
    // A candidate for a conversation the gateway does not know: the gateway itself answers is_ok=false.
    let msg = c.message(&action("icecandidate"), false);
    let r = c.send_message(&tokens, &msg).expect("answer");
    let plain = parse_router_response(&r, &tokens, OK_BELOW_SEND).expect("RRC_OK");
    let json = parse_controller_response(plain.as_deref())
        .expect("json")
        .expect("payload");
    let inner: serde_json::Value =
        serde_json::from_str(json["payload"].as_str().expect("payload string"))
            .expect("inner json");
    assert_eq!(inner["is_ok"], false, "{inner}");
    assert!(
        inner["data"]
            .as_str()
            .unwrap_or("")
            .contains("unknown conversation"),
        "{inner}"
    );
}

#[test]
fn fail_http_knob_answers_the_status_then_recovers() {
    let (_emu, mut c) = start(EmulatorConfig {
        fail_http: vec![503, 502],
        ..Default::default()
    });
    let tokens = c.tokens();
    let msg = c.message(&action("icecandidate"), false);
    assert_eq!(c.send_message(&tokens, &msg).expect("answer").status, 503);
    let err = parse_router_response(
        &c.send_message(&tokens, &msg).expect("answer"),
        &tokens,
        OK_BELOW_SEND,
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("502"), "{err}");
    let r = c.send_message(&tokens, &msg).expect("answer");
    assert!(parse_router_response(&r, &tokens, OK_BELOW_SEND).is_ok());
}

#[test]
fn http_faults_knob_fails_any_endpoint_by_path() {
    let fault = HttpFault {
        path_prefix: "/api/user/relay_access_creds".into(),
        status: 504,
        times: 1,
    };
    let (_emu, mut c) = start(EmulatorConfig {
        http_faults: vec![fault],
        ..Default::default()
    });
    let tokens = c.tokens();
    let req = endpoints::relay_access_creds(c.base(), &tokens, true, T);
    assert_eq!(c.perform(&req).expect("answer").status, 504);
    assert_eq!(c.perform(&req).expect("answer").status, 200);
}

#[test]
fn fail_rrc_knob_answers_router_codes() {
    let (_emu, mut c) = start(EmulatorConfig {
        fail_rrc: vec![
            RouterResponseCode::RrcTimeout,
            RouterResponseCode::RrcControllerDown,
        ],
        ..Default::default()
    });
    let tokens = c.tokens();
    let msg = c.message(&action("icecandidate"), false);
    for expected in [
        RouterResponseCode::RrcTimeout,
        RouterResponseCode::RrcControllerDown,
    ] {
        let r = c.send_message(&tokens, &msg).expect("answer");
        match parse_router_response(&r, &tokens, OK_BELOW_SEND) {
            Err(RouterCallError::Router { code, .. }) => assert_eq!(code, expected),
            other => panic!("expected {expected:?}, got {other:?}"),
        }
    }
}

#[test]
fn router_rtt_and_fresh_connection_cost_delay_responses() {
    let rtt = Duration::from_millis(200);
    let fresh = Duration::from_millis(300);
    let (_emu, mut c) = start(EmulatorConfig {
        router_rtt: rtt,
        fresh_connection_cost: fresh,
        ..Default::default()
    });
    let tokens = c.tokens();
    // Pooled (keep-alive) agent: the first request opens the connection, the second reuses it.
    let req = endpoints::get_controllers(c.base(), &tokens, false, T);
    let t0 = Instant::now();
    c.perform(&req).expect("first");
    let first = t0.elapsed();
    let t1 = Instant::now();
    c.perform(&req).expect("second");
    let second = t1.elapsed();
    assert!(first >= rtt + fresh, "first request took {first:?}");
    assert!(second >= rtt, "second request took {second:?}");
    assert!(
        second < rtt + fresh,
        "a keep-alive request must not pay the fresh cost: {second:?}"
    );
    // A fresh-connection request pays it again.
    let t2 = Instant::now();
    c.perform(&endpoints::get_controllers(c.base(), &tokens, true, T))
        .expect("fresh");
    assert!(
        t2.elapsed() >= rtt + fresh,
        "fresh request took {:?}",
        t2.elapsed()
    );
}

/// The handshake cost is charged when a connection opens, not on its first request: a connection opened
/// early and used later (the `fast` profile's WebSocket pre-connection) pays only the round trip then.
#[test]
fn the_fresh_connection_cost_is_charged_when_the_connection_opens() {
    use std::io::{Read, Write};
    let rtt = Duration::from_millis(100);
    let fresh = Duration::from_millis(400);
    let (emu, _c) = start(EmulatorConfig {
        router_rtt: rtt,
        fresh_connection_cost: fresh,
        ..Default::default()
    });
    let request = b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let answer_time = |s: &mut std::net::TcpStream| {
        let t = Instant::now();
        s.write_all(request).expect("write");
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 405"), "{:?}", &buf[..n]);
        t.elapsed()
    };
    // Used at once: the request waits for the handshakes.
    let mut now = std::net::TcpStream::connect(emu.router_addr()).expect("connect");
    let took = answer_time(&mut now);
    assert!(took >= rtt + fresh, "{took:?}");
    // Opened, then used once the handshakes are over: the round trip only.
    let mut early = std::net::TcpStream::connect(emu.router_addr()).expect("connect");
    std::thread::sleep(fresh + Duration::from_millis(50));
    let took = answer_time(&mut early);
    assert!(took >= rtt && took < rtt + fresh, "{took:?}");
}

#[test]
fn tls_router_is_trusted_with_the_ticket_ca_only() {
    let (_emu, mut c) = start(EmulatorConfig {
        tls: true,
        ..Default::default()
    });
    assert!(c.base().starts_with("https://127.0.0.1:"), "{}", c.base());
    assert!(c
        .ticket
        .ca_pem
        .as_deref()
        .is_some_and(|p| p.contains("BEGIN CERTIFICATE")));
    let tokens = c.tokens();
    let req = endpoints::relay_access_creds(c.base(), &tokens, true, T);
    let r = c.perform(&req).expect("TLS answer");
    assert!(parse_router_response(&r, &tokens, OK_BELOW_OTHER).is_ok());
    // Without the CA the certificate is refused.
    let plain = pam_lite_driver_kit::http::HttpClient::new(&Default::default()).expect("client");
    match plain.perform(&req) {
        pam_lite_core::Input::HttpError { error, .. } => assert!(!error.is_empty()),
        other => panic!("an untrusted certificate was accepted: {other:?}"),
    }
}

#[test]
fn shutdown_closes_the_port() {
    let (emu, c) = start(EmulatorConfig::default());
    let addr = emu.router_addr();
    emu.shutdown();
    let req = endpoints::bind_to_controller(c.base(), "gw", true, Duration::from_secs(2));
    assert!(
        c.perform(&req).is_err(),
        "{addr} still answers after shutdown"
    );
}

#[test]
fn a_slow_gateway_makes_the_router_time_out_a_held_request() {
    // The gateway hop alone takes longer than the message's router timeout.
    let (_emu, mut c) = start(EmulatorConfig {
        gateway_rtt: Duration::from_secs(4),
        ..Default::default()
    });
    let tokens = c.tokens();
    let mut msg = c.message(&action("icecandidate"), false);
    msg.timeout = 300;
    let t0 = Instant::now();
    let r = c.send_message(&tokens, &msg).expect("answer");
    let took = t0.elapsed();
    match parse_router_response(&r, &tokens, OK_BELOW_SEND) {
        Err(RouterCallError::Router { code, .. }) => {
            assert_eq!(code, RouterResponseCode::RrcTimeout)
        }
        other => panic!("expected RRC_TIMEOUT, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}
