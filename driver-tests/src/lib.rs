//! The shared test suites every runtime must pass, as plain generic functions over
//! [`pam_lite_driver_kit::Runtime`] ([`driver`], [`forward`], [`stream`]), and their helpers: a puppet node the test
//! steers, echo nodes, a tiny HTTP/1.1 stub server, WebSocket servers, a test CA, and a thread-based
//! WebSocket client ([`ws_client`]) for tests that talk to a router directly. Everything listens on
//! 127.0.0.1 only.
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

pub mod driver;
pub mod forward;
pub mod stream;
pub mod ws_client;

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

    /// The default TLS policy plus this certificate as an extra CA.
    pub fn trusted(&self) -> pam_lite_driver_kit::TlsConfig {
        pam_lite_driver_kit::TlsConfig {
            extra_ca_pem: Some(self.pem.clone()),
            ..Default::default()
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
