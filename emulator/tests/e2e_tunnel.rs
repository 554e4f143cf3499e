//! End to end on real sockets: the real client core on the blocking driver launches a tunnel through the
//! emulator (router over HTTP + WebSocket, gateway over UDP/WebRTC), the gateway forwards to a local TCP
//! echo server, and bytes in == bytes out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_core::client::{Client, ClientConfig};
use pam_lite_core::profile::Profile;
use pam_lite_core::Output;
use pam_lite_driver_kit::config::{DriverConfig, TlsConfig};
use pam_lite_emulator::{DemoTicket, Emulator, EmulatorConfig, TargetConfig, UdpImpairment};

fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = s.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn client_config(t: &DemoTicket, trickle_ice: bool) -> ClientConfig {
    t.tunnel_client_config(Profile::fast(), trickle_ice, 0)
        .expect("client config")
}

/// Launch a tunnel through an emulator built from `config`; send `payload` through one tunneled TCP
/// connection and return what came back.
fn tunnel_round_trip(config: EmulatorConfig, trickle_ice: bool, payload: &[u8]) -> Vec<u8> {
    let emu = Emulator::start(EmulatorConfig {
        target: TargetConfig::Tunnel {
            forward_to: echo_server(),
        },
        ..config
    })
    .expect("emulator");
    let ticket = emu.ticket();
    let client =
        Client::new(client_config(&ticket, trickle_ice), [3; 32], Instant::now()).expect("client");
    let driver = DriverConfig {
        tls: TlsConfig {
            extra_ca_pem: ticket.ca_pem.clone().map(String::into_bytes),
            insecure: false,
        },
        ..DriverConfig::default()
    };
    let handle = pam_lite_blocking::spawn(client, driver).expect("driver");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let local = listener.local_addr().expect("addr");

    // Pump outputs: hand connection outputs to the forwarder once the tube is ready.
    let (ready_tx, ready_rx) = mpsc::channel();
    let pump = thread::spawn(move || {
        let mut listener = Some(listener);
        let mut forwarder = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let Ok(Some(out)) = handle.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let out = match &forwarder {
                Some(f) => match pam_lite_blocking::forward::Forwarder::dispatch(f, out) {
                    Some(rest) => rest,
                    None => continue,
                },
                None => out,
            };
            match out {
                Output::TubeReady => {
                    if let Some(l) = listener.take() {
                        forwarder = Some(
                            pam_lite_blocking::forward::serve_tunnel(l, &handle).expect("serve"),
                        );
                        let _ = ready_tx.send(Ok(()));
                    }
                }
                Output::Finished(r) => {
                    let _ = ready_tx.send(Err(format!("launch finished: {r:?}")));
                    return;
                }
                _ => {}
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("tube ready in time")
        .expect("launch");

    let mut s = TcpStream::connect(local).expect("connect to the tunnel");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let writer = {
        let mut w = s.try_clone().expect("clone");
        let payload = payload.to_vec();
        thread::spawn(move || {
            w.write_all(&payload).expect("write");
            w.shutdown(std::net::Shutdown::Write).expect("half-close");
        })
    };
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("read the echo");
    writer.join().expect("writer");
    drop(pump);
    back
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn tunnel_through_the_emulator_echoes_bytes_trickle() {
    let data = payload(256 * 1024);
    assert_eq!(
        tunnel_round_trip(EmulatorConfig::default(), true, &data),
        data
    );
}

#[test]
fn tunnel_through_the_emulator_echoes_bytes_non_trickle_tls_impaired() {
    let data = payload(64 * 1024);
    let config = EmulatorConfig {
        tls: true,
        router_rtt: Duration::from_millis(20),
        answer_delay: Duration::from_millis(50),
        ..Default::default()
    }
    .with_udp(UdpImpairment {
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(5),
        loss: 0.02,
        duplicate: 0.02,
    });
    assert_eq!(tunnel_round_trip(config, false, &data), data);
}
