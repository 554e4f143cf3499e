//! Test helpers shared by both drivers' tests (feature `testing`): a puppet node the test steers, an echo
//! node, a tiny HTTP/1.1 stub server and a WebSocket server, all on 127.0.0.1 only.
//!
//! Panicking (`unwrap`) is fine here: this is test-only code and a panic fails the test that used it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_core::{Datagram, Input, Node, Output};

pub use pam_lite_core;
pub use socket2;
pub use tungstenite;

/// A node that reports every input to the test and emits whatever the test scripts.
pub struct Puppet {
    seen: Sender<(Input, Instant)>,
    script: Receiver<Output>,
    wake_at: Arc<Mutex<Option<Instant>>>,
}

/// The test's side of a [`Puppet`].
pub struct PuppetCtl {
    pub seen: Receiver<(Input, Instant)>,
    script: Sender<Output>,
    wake_at: Arc<Mutex<Option<Instant>>>,
}

pub fn puppet() -> (Puppet, PuppetCtl) {
    let (seen_tx, seen_rx) = mpsc::channel();
    let (script_tx, script_rx) = mpsc::channel();
    let wake_at = Arc::new(Mutex::new(None));
    (
        Puppet {
            seen: seen_tx,
            script: script_rx,
            wake_at: wake_at.clone(),
        },
        PuppetCtl {
            seen: seen_rx,
            script: script_tx,
            wake_at,
        },
    )
}

impl Node for Puppet {
    fn handle_input(&mut self, input: Input, now: Instant) {
        if matches!(input, Input::Timeout) {
            let mut wake = self.wake_at.lock().unwrap();
            if wake.is_some_and(|t| t <= now) {
                *wake = None;
            }
        }
        let _ = self.seen.send((input, now));
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.script.try_recv().ok()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        *self.wake_at.lock().unwrap()
    }
}

impl PuppetCtl {
    /// Queue `out`; it is emitted after the next input the node handles (send `Input::Timeout` to nudge).
    pub fn script(&self, out: Output) {
        self.script.send(out).unwrap();
    }

    pub fn wake_at(&self, at: Option<Instant>) {
        *self.wake_at.lock().unwrap() = at;
    }

    /// The next input other than `Timeout`, or `None` after `within`.
    pub fn next(&self, within: Duration) -> Option<Input> {
        let end = Instant::now() + within;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            match self.seen.recv_timeout(left) {
                Ok((Input::Timeout, _)) => continue,
                Ok((input, _)) => return Some(input),
                Err(_) => return None,
            }
        }
    }

    /// The next `Input::Command`, skipping other inputs, or `None` after `within`.
    pub fn next_command(&self, within: Duration) -> Option<pam_lite_core::Command> {
        match self.wait_for(within, |i| matches!(i, Input::Command(_)))? {
            Input::Command(c) => Some(c),
            _ => None,
        }
    }

    /// Wait for an input matching `pred` (skipping others), or `None` after `within`.
    pub fn wait_for(&self, within: Duration, pred: impl Fn(&Input) -> bool) -> Option<Input> {
        let end = Instant::now() + within;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            let input = self.next(left)?;
            if pred(&input) {
                return Some(input);
            }
        }
    }
}

/// A node that sends every datagram back where it came from, and finishes on `Command::Close`.
#[derive(Default)]
pub struct Echo {
    out: std::collections::VecDeque<Output>,
}

impl Node for Echo {
    fn handle_input(&mut self, input: Input, _now: Instant) {
        match input {
            Input::Datagram(d) => self.out.push_back(Output::Transmit(Datagram {
                source: d.destination,
                destination: d.source,
                contents: d.contents,
            })),
            Input::Command(pam_lite_core::Command::Close) => {
                self.out.push_back(Output::Finished(Ok(())));
            }
            _ => {}
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// One request as the [`HttpStub`] saw it.
#[derive(Debug, Clone)]
pub struct StubRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the stub does with every request.
#[derive(Debug, Clone)]
pub enum StubBehavior {
    /// Answer with this status and body (JSON content type, two cookies), keeping the connection alive.
    Respond { status: u16, body: Vec<u8> },
    /// Read the request and never answer.
    Silent,
}

/// A keep-alive HTTP/1.1 server on 127.0.0.1 that counts its TCP connections.
pub struct HttpStub {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Receiver<StubRequest>,
}

impl HttpStub {
    pub fn start(behavior: StubBehavior) -> Self {
        Self::start_with(behavior, None)
    }

    /// The same over TLS with `tls` (see [`TestCa`]).
    pub fn start_tls(behavior: StubBehavior, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(behavior, Some(tls))
    }

    fn start_with(behavior: StubBehavior, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let count = connections.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                let behavior = behavior.clone();
                let tls = tls.clone();
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    match tls {
                        Some(config) => {
                            let conn = rustls::ServerConnection::new(config).unwrap();
                            serve_http(rustls::StreamOwned::new(conn, stream), behavior, tx);
                        }
                        None => serve_http(stream, behavior, tx),
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            requests: rx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }
}

fn serve_http<S: Read + Write>(stream: S, behavior: StubBehavior, tx: Sender<StubRequest>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let close = headers
            .iter()
            .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"));
        let _ = tx.send(StubRequest {
            method,
            path,
            headers,
            body,
        });
        match &behavior {
            StubBehavior::Silent => {
                let mut sink = Vec::new();
                let _ = reader.read_to_end(&mut sink);
                return;
            }
            StubBehavior::Respond { status, body } => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let writer = reader.get_mut();
                if writer.write_all(head.as_bytes()).is_err()
                    || writer.write_all(body).is_err()
                    || writer.flush().is_err()
                {
                    return;
                }
            }
        }
        if close {
            return;
        }
    }
}

/// A one-connection WebSocket server on 127.0.0.1: `script` gets the socket and the request headers.
pub fn ws_server<F>(script: F) -> SocketAddr
where
    F: FnOnce(tungstenite::WebSocket<TcpStream>, Vec<(String, String)>) + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        ws_accept(stream, script);
    });
    addr
}

/// [`ws_server`] over TLS with `tls` (see [`TestCa`]).
pub fn wss_server<F>(tls: Arc<rustls::ServerConfig>, script: F) -> SocketAddr
where
    F: FnOnce(
            tungstenite::WebSocket<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>,
            Vec<(String, String)>,
        ) + Send
        + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let conn = rustls::ServerConnection::new(tls).unwrap();
        ws_accept(rustls::StreamOwned::new(conn, stream), script);
    });
    addr
}

fn ws_accept<S, F>(stream: S, script: F)
where
    S: Read + Write,
    F: FnOnce(tungstenite::WebSocket<S>, Vec<(String, String)>),
{
    let mut headers = Vec::new();
    // A client that gives up (e.g. rejects the certificate) ends the server quietly.
    let Ok(ws) = tungstenite::accept_hdr(
        stream,
        |req: &tungstenite::handshake::server::Request,
         resp: tungstenite::handshake::server::Response| {
            for (n, v) in req.headers() {
                headers.push((n.to_string(), v.to_str().unwrap_or_default().to_owned()));
            }
            Ok(resp)
        },
    ) else {
        return;
    };
    script(ws, headers);
}

/// A self-signed certificate for 127.0.0.1 and a rustls server config presenting it.
pub struct TestCa {
    /// The certificate in PEM, to trust as an extra CA.
    pub pem: Vec<u8>,
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
        Self {
            pem: cert.pem().into_bytes(),
            server: Arc::new(server),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A TCP server on 127.0.0.1 that accepts and then says nothing (for handshake timeouts).
pub fn mute_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

/// A node standing in for a whole tunnel: every opened connection is echoed back to itself
/// (`Send` → `ConnectionData`, `SendEof` → `ConnectionEof` then `ConnectionClosed`), and it records the
/// connection numbers it was asked to open. `ConnectTarget{conn}` for each number in `dial` is emitted
/// after the first input, and `Command::TargetConnected` answers are reported as `TerminalOutput`.
#[derive(Default)]
pub struct TunnelEcho {
    pub opened: Arc<Mutex<Vec<pam_lite_core::ConnNo>>>,
    pub dial: Vec<pam_lite_core::ConnNo>,
    out: std::collections::VecDeque<Output>,
}

impl Node for TunnelEcho {
    fn handle_input(&mut self, input: Input, _now: Instant) {
        use pam_lite_core::Command as C;
        for conn in self.dial.drain(..) {
            self.out.push_back(Output::ConnectTarget { conn });
        }
        match input {
            Input::Command(C::OpenConnection { conn }) => {
                self.opened.lock().unwrap().push(conn);
                self.out.push_back(Output::ConnectionOpened { conn });
            }
            Input::Command(C::Send { conn, data }) => {
                self.out.push_back(Output::ConnectionData { conn, data });
            }
            Input::Command(C::SendEof { conn }) => {
                self.out.push_back(Output::ConnectionEof { conn });
                self.out.push_back(Output::ConnectionClosed {
                    conn,
                    reason: pam_lite_core::tube::CloseReason::Normal,
                });
            }
            Input::Command(C::TargetConnected { conn, ok }) => {
                self.out.push_back(Output::TerminalOutput(
                    format!("target {conn} {ok}").into_bytes(),
                ));
            }
            Input::Command(C::CloseConnection { conn, .. }) => {
                self.out.push_back(Output::TerminalOutput(
                    format!("closed {conn}").into_bytes(),
                ));
            }
            Input::Command(C::Close) => self.out.push_back(Output::Finished(Ok(()))),
            _ => {}
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// A TCP echo server on 127.0.0.1 (echoes until EOF, then closes).
pub fn tcp_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

/// The driver conformance tests, expanded in each driver crate with its own `spawn` function: both
/// drivers must pass the very same assertions through their (identically shaped) `Handle`s.
#[macro_export]
macro_rules! driver_tests {
    ($($spawn:tt)+) => {
        #[allow(clippy::unwrap_used)]
        mod driver_conformance {
            use std::net::{TcpListener, UdpSocket};
            use std::sync::atomic::Ordering;
            use std::sync::mpsc;
            use std::thread;
            use std::time::{Duration, Instant};

            use $crate::testing::pam_lite_core::{
                CandidateKind, Command, Datagram, HttpRequest, Input, Method, Output, WsConnect,
            };
            use $crate::testing::{
                mute_server, puppet, socket2, tungstenite, ws_server, wss_server, Echo, HttpStub,
                StubBehavior, TestCa,
            };
            use $crate::{DriverConfig, Stopped, TlsConfig};
            use $($spawn)+ as spawn;

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

    #[test]
    fn announces_host_candidate_then_gathering_complete() {
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        assert_eq!(
            ctl.next(WAIT),
            Some(Input::LocalCandidate {
                addr: handle.local_addr(),
                kind: CandidateKind::Host
            })
        );
        assert_eq!(ctl.next(WAIT), Some(Input::GatheringComplete));
    }

    #[test]
    fn echo_node_answers_datagrams_with_real_addresses() {
        let handle = spawn(Echo::default(), DriverConfig::default()).unwrap();
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

    /// 40 MB/s of 1200-byte datagrams for half a second, echoed: the driver must keep up.
    #[test]
    fn echo_keeps_up_with_40_megabytes_per_second() {
        let handle = spawn(Echo::default(), DriverConfig::default()).unwrap();
        let target = handle.local_addr();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = socket2::SockRef::from(&peer);
        let _ = sock.set_recv_buffer_size(8 << 20);
        peer.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let sender = peer.try_clone().unwrap();
        const SIZE: usize = 1200;
        const COUNT: usize = 16_667; // 20 MB
        let started = Instant::now();
        let tx = thread::spawn(move || {
            // Pace at 40 MB/s: one millisecond holds ~33 datagrams.
            for i in 0..COUNT {
                if i % 33 == 0 {
                    let due = started + Duration::from_micros((i as u64 / 33) * 1000);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                }
                let _ = sender.send_to(&[7u8; SIZE], target);
            }
        });
        let mut received = 0usize;
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = peer.recv_from(&mut buf) {
            received += n;
            if received >= COUNT * SIZE {
                break;
            }
        }
        tx.join().unwrap();
        let secs = started.elapsed().as_secs_f64();
        let ratio = received as f64 / (COUNT * SIZE) as f64;
        eprintln!(
            "echoed {:.1} MB in {secs:.2}s ({:.1} MB/s), {:.1}% delivered",
            received as f64 / 1e6,
            received as f64 / 1e6 / secs,
            ratio * 100.0
        );
        assert!(ratio > 0.9, "only {:.1}% echoed", ratio * 100.0);
    }

    #[test]
    fn timer_fires_when_due() {
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
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

    #[test]
    fn http_pooled_requests_share_one_connection_and_return_everything() {
        let stub = HttpStub::start(StubBehavior::Respond {
            status: 201,
            body: b"{\"ok\":true}".to_vec(),
        });
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
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

    #[test]
    fn http_fresh_requests_open_new_connections() {
        let stub = HttpStub::start(StubBehavior::Respond {
            status: 200,
            body: Vec::new(),
        });
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
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

    #[test]
    fn http_timeout_and_refusal_are_errors_without_secrets() {
        let silent = HttpStub::start(StubBehavior::Silent);
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
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

    #[test]
    fn http_body_is_bounded() {
        let stub = HttpStub::start(StubBehavior::Respond {
            status: 200,
            body: vec![b'x'; 5000],
        });
        let (node, ctl) = puppet();
        let config = DriverConfig {
            http_body_limit: 1000,
            ..DriverConfig::default()
        };
        let handle = spawn(node, config).unwrap();
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

    #[test]
    fn websocket_delivers_text_frames_then_close() {
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
        let handle = spawn(node, DriverConfig::default()).unwrap();
        ctl.script(Output::WsConnect(WsConnect {
            url: format!("ws://{addr}/ws"),
            headers: vec![("Authorization".into(), "Bearer ws-secret".into())],
            timeout: WAIT,
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

    #[test]
    fn websocket_close_output_sends_a_close_frame_and_reports_nothing() {
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
        let handle = spawn(node, DriverConfig::default()).unwrap();
        ctl.script(Output::WsConnect(WsConnect {
            url: format!("ws://{addr}/"),
            headers: Vec::new(),
            timeout: WAIT,
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

    #[test]
    fn websocket_oversized_frame_and_handshake_timeout_close() {
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
        let handle = spawn(node, config).unwrap();
        ctl.script(Output::WsConnect(WsConnect {
            url: format!("ws://{addr}/"),
            headers: Vec::new(),
            timeout: WAIT,
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

    #[test]
    fn app_outputs_are_forwarded_and_finish_flushes_transmits() {
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
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

    #[test]
    fn transmit_from_a_foreign_source_is_dropped() {
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
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

    #[test]
    fn dropping_the_handle_closes_the_node() {
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        drop(handle);
        let got = ctl.wait_for(WAIT, |i| matches!(i, Input::Command(Command::Close)));
        assert_eq!(got, Some(Input::Command(Command::Close)));
    }

            #[test]
            fn websocket_close_while_connecting_reports_nothing_and_a_new_connect_works() {
                let mute = mute_server();
                let addr = ws_server(|mut ws, _| {
                    ws.send(tungstenite::Message::text("second")).unwrap();
                    while ws.read().is_ok() {}
                });
                let (node, ctl) = puppet();
                let handle = spawn(node, DriverConfig::default()).unwrap();
                ctl.script(Output::WsConnect(WsConnect {
                    url: format!("ws://{mute}/"),
                    headers: Vec::new(),
                    timeout: Duration::from_millis(200),
                }));
                ctl.script(Output::WsClose);
                handle.input(Input::Timeout);
                let ws_input = |i: &Input| {
                    matches!(i, Input::WsOpened | Input::WsMessage(_) | Input::WsClosed { .. })
                };
                // Even after the abandoned handshake's timeout nothing is reported.
                assert_eq!(ctl.wait_for(Duration::from_millis(400), ws_input), None);
                ctl.script(Output::WsConnect(WsConnect {
                    url: format!("ws://{addr}/"),
                    headers: Vec::new(),
                    timeout: WAIT,
                }));
                handle.input(Input::Timeout);
                assert_eq!(ctl.wait_for(WAIT, ws_input), Some(Input::WsOpened));
                assert_eq!(
                    ctl.wait_for(WAIT, ws_input),
                    Some(Input::WsMessage("second".into()))
                );
            }

            #[test]
            fn unspecified_bind_announces_explicit_candidates_and_reports_real_addresses() {
                let (node, ctl) = puppet();
                let config = DriverConfig {
                    udp_bind: "0.0.0.0:0".parse().unwrap(),
                    candidate_ips: vec!["127.0.0.1".parse().unwrap()],
                    ..DriverConfig::default()
                };
                let handle = spawn(node, config).unwrap();
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

            #[test]
            fn unspecified_bind_without_candidates_is_refused() {
                let (node, _ctl) = puppet();
                let config = DriverConfig {
                    udp_bind: "0.0.0.0:0".parse().unwrap(),
                    ..DriverConfig::default()
                };
                let err = spawn(node, config).unwrap_err();
                assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
            }

            fn https_result(tls: TlsConfig, ca: &TestCa) -> Input {
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
                let handle = spawn(node, config).unwrap();
                ctl.script(Output::Http(request(1, stub.https_url("/tls"), true, WAIT)));
                handle.input(Input::Timeout);
                ctl.wait_for(WAIT, |i| {
                    matches!(i, Input::HttpResponse { .. } | Input::HttpError { .. })
                })
                .unwrap()
            }

            #[test]
            fn https_trusts_the_extra_ca_rejects_unknown_and_insecure_accepts() {
                let ca = TestCa::new();
                let trusted = TlsConfig {
                    extra_ca_pem: Some(ca.pem.clone()),
                    ..TlsConfig::default()
                };
                match https_result(trusted, &ca) {
                    Input::HttpResponse { response, .. } => assert_eq!(response.body, b"tls"),
                    other => panic!("extra CA not trusted: {other:?}"),
                }
                match https_result(TlsConfig::default(), &ca) {
                    Input::HttpError { error, .. } => {
                        assert!(error.contains("TLS") || error.contains("certificate"), "{error}")
                    }
                    other => panic!("self-signed certificate accepted: {other:?}"),
                }
                let insecure = TlsConfig {
                    insecure: true,
                    ..TlsConfig::default()
                };
                assert!(matches!(
                    https_result(insecure, &ca),
                    Input::HttpResponse { .. }
                ));
            }

            #[test]
            fn wss_with_the_extra_ca_delivers_messages() {
                let ca = TestCa::new();
                let addr = wss_server(ca.server.clone(), |mut ws, headers| {
                    assert!(headers.contains(&("x-test".into(), "1".into())));
                    ws.send(tungstenite::Message::text("over tls")).unwrap();
                    while ws.read().is_ok() {}
                });
                let (node, ctl) = puppet();
                let config = DriverConfig {
                    tls: TlsConfig {
                        extra_ca_pem: Some(ca.pem.clone()),
                        ..TlsConfig::default()
                    },
                    ..DriverConfig::default()
                };
                let handle = spawn(node, config).unwrap();
                ctl.script(Output::WsConnect(WsConnect {
                    url: format!("wss://{addr}/ws"),
                    headers: vec![("X-Test".into(), "1".into())],
                    timeout: WAIT,
                }));
                handle.input(Input::Timeout);
                let ws_input = |i: &Input| {
                    matches!(i, Input::WsOpened | Input::WsMessage(_) | Input::WsClosed { .. })
                };
                assert_eq!(ctl.wait_for(WAIT, ws_input), Some(Input::WsOpened));
                assert_eq!(
                    ctl.wait_for(WAIT, ws_input),
                    Some(Input::WsMessage("over tls".into()))
                );
            }

            #[test]
            fn wss_with_an_unknown_certificate_closes() {
                let ca = TestCa::new();
                let addr = wss_server(ca.server.clone(), |_ws, _| {});
                let (node, ctl) = puppet();
                let handle = spawn(node, DriverConfig::default()).unwrap();
                ctl.script(Output::WsConnect(WsConnect {
                    url: format!("wss://{addr}/ws"),
                    headers: Vec::new(),
                    timeout: WAIT,
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
        }
    };
}

/// The forwarder tests, expanded in each driver crate: `crate::spawn`, `crate::Handle` and
/// `crate::forward::{serve_tunnel, dial_targets, Forwarder}` of the invoking crate must pass them.
// `crate::` on purpose: the forwarder under test is the invoking crate's.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! forward_tests {
    () => {
        #[allow(clippy::unwrap_used)]
        mod forward_conformance {
            use std::io::{Read, Write};
            use std::net::{Shutdown, TcpListener, TcpStream};
            use std::sync::mpsc;
            use std::thread;
            use std::time::{Duration, Instant};

            use crate::forward::{dial_targets, serve_tunnel, Forwarder};
            use crate::{spawn, Handle};
            use $crate::testing::pam_lite_core::{Command, Input, Output};
            use $crate::testing::{puppet, socket2, tcp_echo_server, TunnelEcho};
            use $crate::DriverConfig;

            const WAIT: Duration = Duration::from_secs(5);

            /// Run the single `recv` consumer: dispatch, and pass the rest to `rest`.
            fn route(handle: Handle, forwarder: Forwarder, rest: mpsc::Sender<Output>) {
                thread::spawn(move || {
                    while let Some(out) = handle.recv() {
                        if let Some(other) = forwarder.dispatch(out) {
                            let _ = rest.send(other);
                        }
                    }
                });
            }

            #[test]
            fn client_side_pipes_both_ways_with_half_close_and_numbers_connections() {
                let node = TunnelEcho::default();
                let opened = node.opened.clone();
                let handle = spawn(node, DriverConfig::default()).unwrap();
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let forwarder = serve_tunnel(listener, &handle).unwrap();
                let (rest_tx, _rest) = mpsc::channel();
                route(handle, forwarder, rest_tx);

                for round in 0..3u8 {
                    let mut client = TcpStream::connect(addr).unwrap();
                    client.set_read_timeout(Some(WAIT)).unwrap();
                    let payload: Vec<u8> = (0..100_000u32).map(|i| (i as u8) ^ round).collect();
                    let mut writer = client.try_clone().unwrap();
                    let expected = payload.clone();
                    let sender = thread::spawn(move || {
                        writer.write_all(&payload).unwrap();
                        writer.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut echoed = Vec::new();
                    client.read_to_end(&mut echoed).unwrap(); // EOF arrives through the tunnel
                    sender.join().unwrap();
                    assert_eq!(echoed, expected);
                }
                assert_eq!(*opened.lock().unwrap(), vec![1, 2, 3]);
            }

            #[test]
            fn client_reset_becomes_close_connection() {
                let node = TunnelEcho::default();
                let handle = spawn(node, DriverConfig::default()).unwrap();
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let forwarder = serve_tunnel(listener, &handle).unwrap();
                let (rest_tx, rest) = mpsc::channel();
                route(handle, forwarder, rest_tx);
                {
                    let client = TcpStream::connect(addr).unwrap();
                    // SO_LINGER 0: close sends a RST, which the reader sees as an error.
                    socket2::SockRef::from(&client)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    (&client).write_all(b"x").unwrap();
                    thread::sleep(Duration::from_millis(50));
                }
                let end = Instant::now() + WAIT;
                let mut saw = None;
                while Instant::now() < end {
                    if let Ok(Output::TerminalOutput(t)) =
                        rest.recv_timeout(Duration::from_millis(50))
                    {
                        saw = Some(String::from_utf8(t).unwrap());
                        break;
                    }
                }
                assert_eq!(saw.as_deref(), Some("closed 1"));
            }

            #[test]
            fn gateway_side_dials_target_and_pipes_with_half_close() {
                let echo = tcp_echo_server();
                let (node, ctl) = puppet();
                let handle = spawn(node, DriverConfig::default()).unwrap();
                let forwarder = dial_targets(&handle, echo);
                let sender = handle.sender();
                let (rest_tx, _rest) = mpsc::channel();
                route(handle, forwarder, rest_tx);
                let nudge = |out: Output| {
                    ctl.script(out);
                    sender.input(Input::Timeout);
                };
                nudge(Output::ConnectTarget { conn: 5 });
                assert_eq!(
                    ctl.next_command(WAIT),
                    Some(Command::TargetConnected { conn: 5, ok: true })
                );
                nudge(Output::ConnectionData {
                    conn: 5,
                    data: b"ping".to_vec(),
                });
                let mut echoed = Vec::new();
                while echoed.len() < 4 {
                    match ctl.next_command(WAIT) {
                        Some(Command::Send { conn: 5, data }) => echoed.extend(data),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                assert_eq!(echoed, b"ping");
                // Our EOF half-closes the target; the echo server then closes, which comes back as SendEof.
                nudge(Output::ConnectionEof { conn: 5 });
                assert_eq!(ctl.next_command(WAIT), Some(Command::SendEof { conn: 5 }));
            }

            #[test]
            fn gateway_side_reports_a_refused_target() {
                let refused = TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap();
                let (node, ctl) = puppet();
                let handle = spawn(node, DriverConfig::default()).unwrap();
                let forwarder = dial_targets(&handle, refused);
                ctl.script(Output::ConnectTarget { conn: 9 });
                handle.input(Input::Timeout);
                let out = handle.recv_timeout(WAIT).unwrap().unwrap();
                assert_eq!(forwarder.dispatch(out), None);
                assert_eq!(
                    ctl.next_command(WAIT),
                    Some(Command::TargetConnected { conn: 9, ok: false })
                );
                assert_eq!(forwarder.open_connections(), 0);
                assert_eq!(
                    forwarder.dispatch(Output::TubeReady),
                    Some(Output::TubeReady)
                );
            }
        }
    };
}
