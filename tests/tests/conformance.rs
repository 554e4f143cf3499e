//! The driver conformance suite: the same tests, generic over the driver kit's `Runtime`, run against both
//! runtimes (`pam-lite-blocking` and `pam-lite-smol`), each launching the real client core through the embedded emulator on real 127.0.0.1
//! sockets (HTTP, WebSocket, UDP). A driver that moves bytes differently, times out differently or reports
//! a fault differently fails here.
//!
//! Every wait is bounded; the emulator's faults are the ones users meet (spec §2.8, §9).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pam_lite_core::client::Client;
use pam_lite_core::profile::Profile;
use pam_lite_core::router::proto::RouterResponseCode;
use pam_lite_core::{Command, ConnNo, LaunchError, Output};
use pam_lite_driver_kit::runtime::{Forward, NodeHandle, Runtime};
use pam_lite_driver_kit::DriverConfig;
use pam_lite_emulator::{Emulator, EmulatorConfig, TargetConfig, UdpImpairment};
use sha2::{Digest, Sha256};

/// A TCP echo server on 127.0.0.1 (the tunnel target behind the emulated gateway).
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let mut r = match s.try_clone() {
                    Ok(r) => r,
                    Err(_) => return,
                };
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

fn emulator(mut cfg: EmulatorConfig) -> Emulator {
    cfg.target = TargetConfig::Tunnel {
        forward_to: echo_server(),
    };
    Emulator::start(cfg).unwrap_or_else(|e| panic!("emulator: {e}"))
}

fn client(emu: &Emulator, profile: Profile, trickle: bool) -> Client {
    let cfg = emu
        .ticket()
        .tunnel_client_config(profile, trickle, 0)
        .unwrap_or_else(|e| panic!("{e}"));
    Client::new(cfg, [5; 32], Instant::now()).unwrap_or_else(|e| panic!("client: {e}"))
}

/// Send `data` through one TCP connection to `port` (an echo through the tunnel), half-close, read
/// everything back, and check length and SHA-256.
fn echo_through(port: SocketAddr, data: Vec<u8>, what: &str) {
    let len = data.len();
    let expected = Sha256::digest(&data);
    let mut s = TcpStream::connect(port).unwrap_or_else(|e| panic!("{what}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut w = s.try_clone().unwrap_or_else(|e| panic!("{e}"));
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap_or_else(|e| panic!("write: {e}"));
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("{what}: read after {} bytes: {e}", got.len()));
    writer.join().unwrap_or_else(|_| panic!("{what}: writer"));
    assert_eq!(got.len(), len, "{what}");
    assert_eq!(Sha256::digest(&got), expected, "{what}");
}

/// What a launch ended with: ready (and when), or the error.
#[derive(Debug)]
enum Outcome {
    Ready(Duration),
    Failed(LaunchError, Duration),
}

// The suite: generic over the runtime (the kit's `Runtime`), run on both below.

fn spawn<R: Runtime>(client: Client) -> R::Handle {
    R::spawn(client, DriverConfig::default()).unwrap_or_else(|e| panic!("spawn: {e}"))
}

/// Drive until the tube is ready or the launch fails, within `bound`.
fn launch<R: Runtime>(handle: &R::Handle, bound: Duration) -> Outcome {
    let start = Instant::now();
    loop {
        let left = bound
            .checked_sub(start.elapsed())
            .unwrap_or_else(|| panic!("no outcome within {bound:?}"));
        match handle.recv_timeout(left) {
            Ok(Some(Output::TubeReady)) => return Outcome::Ready(start.elapsed()),
            Ok(Some(Output::Finished(Err(e)))) => return Outcome::Failed(e, start.elapsed()),
            Ok(Some(Output::Finished(Ok(())))) => panic!("finished before ready"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                panic!("driver stopped or no outcome within {bound:?}")
            }
        }
    }
}

/// The time to a ready tube (panics on a failed launch).
fn ready<R: Runtime>(handle: &R::Handle) -> Duration {
    match launch::<R>(handle, Duration::from_secs(30)) {
        Outcome::Ready(took) => took,
        other => panic!("expected a ready tube: {other:?}"),
    }
}

/// Collect `want` bytes of connection data for `conn` (other outputs are ignored).
fn collect<R: Runtime>(handle: &R::Handle, conn: ConnNo, want: usize, bound: Duration) -> Vec<u8> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < want {
        let left = bound
            .checked_sub(start.elapsed())
            .unwrap_or_else(|| panic!("{} of {want} bytes after {bound:?}", got.len()));
        match handle.recv_timeout(left) {
            Ok(Some(Output::ConnectionData { conn: c, data })) if c == conn => {
                got.extend_from_slice(&data)
            }
            Ok(Some(Output::Finished(r))) => panic!("launch ended: {r:?}"),
            Ok(_) => {}
            Err(_) => panic!("driver stopped"),
        }
    }
    got
}

fn launches_and_echoes_through_the_tunnel<R: Runtime>() {
    for trickle in [true, false] {
        let emu = emulator(EmulatorConfig::default());
        let h = spawn::<R>(client(&emu, Profile::fast(), trickle));
        ready::<R>(&h);
        h.input(pam_lite_core::Input::Command(Command::OpenConnection {
            conn: 1,
        }));
        h.input(pam_lite_core::Input::Command(Command::Send {
            conn: 1,
            data: b"conformance".to_vec(),
        }));
        let got = collect::<R>(&h, 1, 11, Duration::from_secs(10));
        assert_eq!(got, b"conformance");
        h.input(pam_lite_core::Input::Command(Command::Close));
    }
}

fn twenty_concurrent_connections<R: Runtime>() {
    let emu = emulator(EmulatorConfig::default());
    let h = spawn::<R>(client(&emu, Profile::fast(), true));
    ready::<R>(&h);
    for conn in 1..=20u32 {
        h.input(pam_lite_core::Input::Command(Command::OpenConnection {
            conn,
        }));
        h.input(pam_lite_core::Input::Command(Command::Send {
            conn,
            data: format!("conn-{conn:02}").into_bytes(),
        }));
    }
    let start = Instant::now();
    let mut got: std::collections::HashMap<ConnNo, Vec<u8>> = Default::default();
    while got.values().map(Vec::len).sum::<usize>() < 20 * 7 {
        assert!(start.elapsed() < Duration::from_secs(20), "got {got:?}");
        if let Ok(Some(Output::ConnectionData { conn, data })) =
            h.recv_timeout(Duration::from_secs(20))
        {
            got.entry(conn).or_default().extend_from_slice(&data);
        }
    }
    for conn in 1..=20u32 {
        assert_eq!(
            got.get(&conn).map(Vec::as_slice),
            Some(format!("conn-{conn:02}").as_bytes())
        );
    }
}

/// Serve the tube on a fresh local TCP port (`forward::serve_tunnel`, what `pam-lite tunnel`
/// runs) with a thread dispatching the node's outputs; returns the port.
fn forwarded_port<R: Runtime>(h: R::Handle) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let fwd = R::serve_tunnel(listener, &h).unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || {
        while let Ok(Some(out)) = h.recv_timeout(Duration::from_secs(120)) {
            if let Some(Output::Finished(r)) = fwd.dispatch(out) {
                return r;
            }
        }
        Ok(())
    });
    port
}

/// 64 MiB through `forward::serve_tunnel` on a real local TCP port to a single-threaded echo
/// target (it only reads while it can write), with a SHA-256 check.
fn bulk_through_a_forwarded_tcp_port_with_sha256<R: Runtime>() {
    let emu = emulator(EmulatorConfig::default());
    let h = spawn::<R>(client(&emu, Profile::fast(), true));
    ready::<R>(&h);
    let port = forwarded_port::<R>(h);
    let data: Vec<u8> = (0..64 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    echo_through(port, data, "one connection");
}

/// 16 connections pushing at once through the forwarded port: every reader gets paused and
/// resumed, no connection is closed for overflow, every byte comes back.
fn sixteen_parallel_bulk_connections_lose_nothing<R: Runtime>() {
    let emu = emulator(EmulatorConfig::default());
    let h = spawn::<R>(client(&emu, Profile::fast(), true));
    ready::<R>(&h);
    let port = forwarded_port::<R>(h);
    let workers: Vec<_> = (0..16u8)
        .map(|k| {
            std::thread::spawn(move || {
                let data: Vec<u8> = (0..3 * 1024 * 1024u32)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(k))
                    .collect();
                echo_through(port, data, &format!("conn {k}"));
            })
        })
        .collect();
    for w in workers {
        w.join()
            .unwrap_or_else(|_| panic!("a connection lost data"));
    }
}

fn five_percent_udp_loss_still_delivers_every_byte<R: Runtime>() {
    let emu = emulator(EmulatorConfig::default().with_udp(UdpImpairment {
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(5),
        loss: 0.05,
        duplicate: 0.01,
    }));
    let h = spawn::<R>(client(&emu, Profile::fast(), true));
    ready::<R>(&h);
    h.input(pam_lite_core::Input::Command(Command::OpenConnection {
        conn: 1,
    }));
    let data: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 253) as u8).collect();
    for chunk in data.chunks(16 * 1024) {
        h.input(pam_lite_core::Input::Command(Command::Send {
            conn: 1,
            data: chunk.to_vec(),
        }));
    }
    let got = collect::<R>(&h, 1, data.len(), Duration::from_secs(60));
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
}

fn cold_router_is_retried_and_succeeds<R: Runtime>() {
    let emu = emulator(EmulatorConfig {
        registration_lag: Duration::from_millis(300),
        ..EmulatorConfig::default()
    });
    let h = spawn::<R>(client(&emu, Profile::fast(), true));
    // At least one 0.55 s catch-up happened (the lag refuses the first offer).
    assert!(ready::<R>(&h) >= Duration::from_millis(300));
}

fn transient_http_failures_are_retried<R: Runtime>() {
    for status in [502u16, 503, 504] {
        let emu = emulator(EmulatorConfig {
            fail_http: vec![status],
            ..EmulatorConfig::default()
        });
        let h = spawn::<R>(client(&emu, Profile::fast(), true));
        ready::<R>(&h);
    }
}

/// Each fault that retries cannot fix ends the launch with its own clear error and exit code,
/// well within the bound (Commander would wait 24 s for some of them).
fn unrecoverable_faults_give_clear_errors_within_bounds<R: Runtime>() {
    let cases: Vec<(&str, EmulatorConfig, i32)> = vec![
        (
            "gateway offline",
            EmulatorConfig {
                gateway_offline: true,
                ..Default::default()
            },
            6,
        ),
        (
            "RRC_TIMEOUT every time",
            EmulatorConfig {
                fail_rrc: vec![RouterResponseCode::RrcTimeout; 8],
                ..Default::default()
            },
            5,
        ),
        (
            "RRC_CONTROLLER_DOWN every time",
            EmulatorConfig {
                fail_rrc: vec![RouterResponseCode::RrcControllerDown; 8],
                ..Default::default()
            },
            5,
        ),
        (
            "HTTP 503 every time",
            EmulatorConfig {
                fail_http: vec![503; 8],
                ..Default::default()
            },
            5,
        ),
        (
            "WebSocket dropped before the answer",
            EmulatorConfig {
                ws_drop_after: Some(Duration::from_millis(1)),
                answer_delay: Duration::from_millis(500),
                ..Default::default()
            },
            9,
        ),
    ];
    for (what, cfg, code) in cases {
        let emu = emulator(cfg);
        let h = spawn::<R>(client(&emu, Profile::fast(), true));
        match launch::<R>(&h, Duration::from_secs(30)) {
            Outcome::Failed(e, took) => {
                assert_eq!(
                    pam_lite_tests::exit_codes::launch_exit_code(&e),
                    code,
                    "{what}: {e}"
                );
                assert!(took < Duration::from_secs(10), "{what}: took {took:?}");
                assert!(!e.to_string().is_empty());
            }
            other => panic!("{what}: expected a clear error, got {other:?}"),
        }
    }
}

fn unreachable_router_fails_fast_with_exit_code_4<R: Runtime>() {
    // A port nobody listens on: connection refused, retried per the profile, then a clear error.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = dead.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(dead);
    let emu = emulator(EmulatorConfig::default());
    let mut cfg = emu
        .ticket()
        .tunnel_client_config(Profile::fast(), true, 0)
        .unwrap_or_else(|e| panic!("{e}"));
    cfg.router_url = format!("http://{addr}");
    let c = Client::new(cfg, [5; 32], Instant::now()).unwrap_or_else(|e| panic!("{e}"));
    let h = spawn::<R>(c);
    match launch::<R>(&h, Duration::from_secs(30)) {
        Outcome::Failed(e, took) => {
            assert_eq!(pam_lite_tests::exit_codes::launch_exit_code(&e), 4, "{e}");
            assert!(took < Duration::from_secs(20), "took {took:?}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

mod blocking {
    use pam_lite_blocking::Blocking as R;

    #[test]
    fn launches_and_echoes_through_the_tunnel() {
        super::launches_and_echoes_through_the_tunnel::<R>();
    }

    #[test]
    fn twenty_concurrent_connections() {
        super::twenty_concurrent_connections::<R>();
    }

    #[test]
    fn bulk_through_a_forwarded_tcp_port_with_sha256() {
        super::bulk_through_a_forwarded_tcp_port_with_sha256::<R>();
    }

    #[test]
    fn sixteen_parallel_bulk_connections_lose_nothing() {
        super::sixteen_parallel_bulk_connections_lose_nothing::<R>();
    }

    #[test]
    fn five_percent_udp_loss_still_delivers_every_byte() {
        super::five_percent_udp_loss_still_delivers_every_byte::<R>();
    }

    #[test]
    fn cold_router_is_retried_and_succeeds() {
        super::cold_router_is_retried_and_succeeds::<R>();
    }

    #[test]
    fn transient_http_failures_are_retried() {
        super::transient_http_failures_are_retried::<R>();
    }

    #[test]
    fn unrecoverable_faults_give_clear_errors_within_bounds() {
        super::unrecoverable_faults_give_clear_errors_within_bounds::<R>();
    }

    #[test]
    fn unreachable_router_fails_fast_with_exit_code_4() {
        super::unreachable_router_fails_fast_with_exit_code_4::<R>();
    }
}

mod smol {
    use pam_lite_smol::Smol as R;

    #[test]
    fn launches_and_echoes_through_the_tunnel() {
        super::launches_and_echoes_through_the_tunnel::<R>();
    }

    #[test]
    fn twenty_concurrent_connections() {
        super::twenty_concurrent_connections::<R>();
    }

    #[test]
    fn bulk_through_a_forwarded_tcp_port_with_sha256() {
        super::bulk_through_a_forwarded_tcp_port_with_sha256::<R>();
    }

    #[test]
    fn sixteen_parallel_bulk_connections_lose_nothing() {
        super::sixteen_parallel_bulk_connections_lose_nothing::<R>();
    }

    #[test]
    fn five_percent_udp_loss_still_delivers_every_byte() {
        super::five_percent_udp_loss_still_delivers_every_byte::<R>();
    }

    #[test]
    fn cold_router_is_retried_and_succeeds() {
        super::cold_router_is_retried_and_succeeds::<R>();
    }

    #[test]
    fn transient_http_failures_are_retried() {
        super::transient_http_failures_are_retried::<R>();
    }

    #[test]
    fn unrecoverable_faults_give_clear_errors_within_bounds() {
        super::unrecoverable_faults_give_clear_errors_within_bounds::<R>();
    }

    #[test]
    fn unreachable_router_fails_fast_with_exit_code_4() {
        super::unreachable_router_fails_fast_with_exit_code_4::<R>();
    }
}
