//! The emulated router's WebSocket: upgrade with valid and invalid auth, streaming replies pushed to the
//! session's socket, registration lag and the drop knob. Real sockets, the blocking driver's WS client.

mod common;

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{action, start, T};
use pam_lite_core::router::endpoints::{parse_router_response, RouterCallError, OK_BELOW_SEND};
use pam_lite_core::router::proto::RouterResponseCode;
use pam_lite_core::Input;
use pam_lite_emulator::EmulatorConfig;

fn next(rx: &Receiver<Input>) -> Input {
    rx.recv_timeout(T).expect("a WebSocket event")
}

#[test]
fn upgrade_with_valid_auth_opens() {
    let (_emu, mut c) = start(EmulatorConfig::default());
    let tokens = c.tokens();
    let (_ws, rx) = c.websocket(tokens.headers());
    assert_eq!(next(&rx), Input::WsOpened);
}

#[test]
fn upgrade_with_invalid_auth_is_refused() {
    let (_emu, mut c) = start(EmulatorConfig::default());
    let (_ws, rx) = c.websocket(Vec::new());
    match next(&rx) {
        Input::WsClosed { reason } => assert!(reason.contains("401"), "{reason}"),
        other => panic!("opened without credentials: {other:?}"),
    }
    let other = pam_lite_core::router::envelope::ServerPublicKey::keeper(8).expect("key");
    let foreign = pam_lite_core::router::envelope::Tokens::new(b"x", &other, &mut c.rng);
    let (_ws, rx) = c.websocket(foreign.headers());
    assert!(matches!(next(&rx), Input::WsClosed { .. }));
}

#[test]
fn streaming_replies_are_pushed_to_the_session_socket() {
    let rtt = Duration::from_millis(100);
    let (_emu, mut c) = start(EmulatorConfig {
        router_rtt: rtt,
        ..Default::default()
    });
    let tokens = c.tokens();
    let (_ws, rx) = c.websocket(tokens.headers());
    assert_eq!(next(&rx), Input::WsOpened);
    let msg = c.message(&action("icecandidate"), true);
    let t0 = Instant::now();
    let r = c.send_message(&tokens, &msg).expect("answer");
    // A streaming message is acknowledged at once with an empty RRC_OK.
    assert_eq!(
        parse_router_response(&r, &tokens, OK_BELOW_SEND).expect("RRC_OK"),
        None
    );
    let Input::WsMessage(text) = next(&rx) else {
        panic!("no push")
    };
    // Half the RTT to reach the router, half for the push to come back.
    assert!(t0.elapsed() >= rtt, "push arrived after {:?}", t0.elapsed());
    let frame: serde_json::Value = serde_json::from_str(&text).expect("json");
    let frame = if frame.is_array() {
        frame[0].clone()
    } else {
        frame
    };
    // Commander only routes the standard, padded base64 of the message uid.
    assert_eq!(
        frame["conversationId"], "EREREREREREREREREREREQ==",
        "{frame}"
    );
    let payload: serde_json::Value =
        serde_json::from_str(frame["payload"].as_str().expect("payload string"))
            .expect("payload json");
    assert_eq!(payload["is_ok"], false, "{payload}");
}

#[test]
fn registration_lag_refuses_an_early_offer_with_bad_state() {
    let lag = Duration::from_millis(400);
    let (_emu, mut c) = start(EmulatorConfig {
        registration_lag: lag,
        ..Default::default()
    });
    let tokens = c.tokens();
    let (_ws, rx) = c.websocket(tokens.headers());
    assert_eq!(next(&rx), Input::WsOpened);
    let msg = c.message(&action("start"), true);
    let r = c.send_message(&tokens, &msg).expect("answer");
    match parse_router_response(&r, &tokens, OK_BELOW_SEND) {
        Err(RouterCallError::Router { code, .. }) => {
            assert_eq!(code, RouterResponseCode::RrcBadState)
        }
        other => panic!("expected RRC_BAD_STATE, got {other:?}"),
    }
    std::thread::sleep(lag);
    let r = c.send_message(&tokens, &msg).expect("answer");
    assert!(parse_router_response(&r, &tokens, OK_BELOW_SEND).is_ok());
}

#[test]
fn streaming_without_a_socket_is_bad_state() {
    let (_emu, mut c) = start(EmulatorConfig::default());
    let tokens = c.tokens();
    let msg = c.message(&action("icecandidate"), true);
    let r = c.send_message(&tokens, &msg).expect("answer");
    assert!(matches!(
        parse_router_response(&r, &tokens, OK_BELOW_SEND),
        Err(RouterCallError::Router {
            code: RouterResponseCode::RrcBadState,
            ..
        })
    ));
}

#[test]
fn ws_drop_knob_drops_the_socket() {
    let after = Duration::from_millis(300);
    let (_emu, mut c) = start(EmulatorConfig {
        ws_drop_after: Some(after),
        ..Default::default()
    });
    let tokens = c.tokens();
    let t0 = Instant::now();
    let (_ws, rx) = c.websocket(tokens.headers());
    assert_eq!(next(&rx), Input::WsOpened);
    assert!(matches!(next(&rx), Input::WsClosed { .. }));
    let took = t0.elapsed();
    assert!(
        took >= after && took < after + Duration::from_secs(5),
        "dropped after {took:?}"
    );
}

#[test]
fn ws_auth_delay_and_tls() {
    let delay = Duration::from_millis(250);
    let (_emu, mut c) = start(EmulatorConfig {
        tls: true,
        ws_auth_delay: delay,
        ..Default::default()
    });
    let tokens = c.tokens();
    let t0 = Instant::now();
    let (_ws, rx) = c.websocket(tokens.headers());
    assert_eq!(next(&rx), Input::WsOpened, "wss:// with the ticket's CA");
    assert!(t0.elapsed() >= delay);
}
