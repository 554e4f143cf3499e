//! The stream suite (TURN over TCP/TLS): what every runtime must do with `Output::StreamOpen` /
//! `StreamWrite` / `StreamClose`, against real servers on 127.0.0.1 (plain TCP, TLS with the test CA, a
//! server that never reads, a listener whose accept queue is full). Each function is one test; each
//! runtime lists them in its `tests/suite.rs`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_core::{Input, Output, StreamEvent, StreamId};
use pam_lite_driver_kit::runtime::{NodeHandle, Runtime};
use pam_lite_driver_kit::stream::STREAM_WRITE_LIMIT;
use pam_lite_driver_kit::DriverConfig;

use crate::{mute_server, puppet, PuppetCtl, TestCa};

const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more is reported" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// The node's side of one test: the puppet's control and the runtime's handle.
struct Node<R: Runtime> {
    ctl: PuppetCtl,
    handle: R::Handle,
}

impl<R: Runtime> Node<R> {
    fn spawn(config: DriverConfig) -> Self {
        let (node, ctl) = puppet();
        let handle = R::spawn(node, config).unwrap();
        Self { ctl, handle }
    }

    /// Emit `outputs` (after the next input: nudge with a `Timeout`).
    fn emit(&self, outputs: impl IntoIterator<Item = Output>) {
        for out in outputs {
            self.ctl.script(out);
        }
        self.handle.input(Input::Timeout);
    }

    fn open(&self, stream: u32, to: SocketAddr, tls_name: Option<&str>) {
        self.emit([Output::StreamOpen {
            stream: StreamId(stream),
            to,
            tls_name: tls_name.map(str::to_owned),
        }]);
    }

    fn write(&self, stream: u32, data: Vec<u8>) {
        self.emit([Output::StreamWrite {
            stream: StreamId(stream),
            data,
        }]);
    }

    /// The next stream event (of any stream), or `None` after `within`.
    fn event(&self, within: Duration) -> Option<(u32, StreamEvent)> {
        match self
            .ctl
            .wait_for(within, |i| matches!(i, Input::Stream { .. }))?
        {
            Input::Stream { stream, event } => Some((stream.0, event)),
            _ => None,
        }
    }

    fn connected(&self, stream: u32) -> SocketAddr {
        match self.event(WAIT) {
            Some((s, StreamEvent::Connected { local })) if s == stream => local,
            other => panic!("expected stream {stream} to connect, got {other:?}"),
        }
    }

    fn closed(&self, stream: u32) -> String {
        match self.event(WAIT) {
            Some((s, StreamEvent::Closed { reason })) if s == stream => reason,
            other => panic!("expected stream {stream} to close, got {other:?}"),
        }
    }

    /// Read `len` bytes of `Data` from `stream`.
    fn read(&self, stream: u32, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < len {
            match self.event(WAIT) {
                Some((s, StreamEvent::Data(data))) if s == stream => got.extend(data),
                other => panic!(
                    "expected data on {stream} ({} of {len}), got {other:?}",
                    got.len()
                ),
            }
        }
        got
    }

    fn quiet(&self) {
        let more = self.event(QUIET);
        assert_eq!(more, None, "nothing more may be reported");
    }
}

/// Bytes that are not a repeating pattern at any power-of-two chunking.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// What a test server saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Peer(SocketAddr),
    /// End of the client's stream, after this many bytes.
    Eof(usize),
}

/// A TCP server on 127.0.0.1 that runs `serve` for each connection (reporting the peer first).
fn server<F>(serve: F) -> (SocketAddr, Receiver<Seen>)
where
    F: Fn(TcpStream, &mpsc::Sender<Seen>) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let serve = Arc::new(serve);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (tx, serve) = (tx.clone(), serve.clone());
            thread::spawn(move || {
                let _ = tx.send(Seen::Peer(stream.peer_addr().unwrap()));
                serve(stream, &tx);
            });
        }
    });
    (addr, rx)
}

/// Echo until the client's EOF (reported with the byte count), then close.
fn echo(mut stream: TcpStream, seen: &mpsc::Sender<Seen>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = seen.send(Seen::Eof(total));
}

/// A TLS server with `tls` that echoes `limit` bytes, then closes (close_notify, then FIN).
fn tls_echo(tls: Arc<rustls::ServerConfig>, limit: usize) -> SocketAddr {
    let (addr, _seen) = server(move |tcp, _| {
        let conn = rustls::ServerConnection::new(tls.clone()).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        let mut buf = vec![0u8; 64 * 1024];
        let mut echoed = 0;
        while echoed < limit {
            match stream.read(&mut buf[..(limit - echoed).min(64 * 1024)]) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    echoed += n;
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        stream.conn.send_close_notify();
        let _ = stream.flush();
        let _ = stream.sock.shutdown(Shutdown::Write);
        // Hold the socket until the client closes, so the close is the client's to report.
        let _ = stream.sock.read(&mut buf);
    });
    addr
}

fn with_ca(ca: &TestCa, connect_timeout: Option<Duration>) -> DriverConfig {
    DriverConfig {
        tls: ca.trusted(),
        stream_connect_timeout: connect_timeout.unwrap_or(WAIT),
        ..DriverConfig::default()
    }
}

/// Plain TCP: `Connected` with the socket's real local address, 4 MiB echoed byte-exact in 64 KiB
/// chunks (at most 512 KiB in flight, under the write bound), then our close: the server sees EOF after
/// every byte, and nothing more is reported.
pub fn tcp_stream_echoes_megabytes_and_closes_on_request<R: Runtime>() {
    let (addr, seen) = server(echo);
    let node = Node::<R>::spawn(DriverConfig::default());
    node.open(1, addr, None);
    let local = node.connected(1);
    assert_eq!(seen.recv_timeout(WAIT), Ok(Seen::Peer(local)));

    const TOTAL: usize = 4 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    const WINDOW: usize = 512 * 1024;
    let data = payload(TOTAL);
    let (mut sent, mut back) = (0, Vec::with_capacity(TOTAL));
    while back.len() < TOTAL {
        let mut chunks = Vec::new();
        while sent < TOTAL && sent - back.len() < WINDOW {
            chunks.push(Output::StreamWrite {
                stream: StreamId(1),
                data: data[sent..sent + CHUNK].to_vec(),
            });
            sent += CHUNK;
        }
        if !chunks.is_empty() {
            node.emit(chunks);
        }
        match node.event(WAIT) {
            Some((1, StreamEvent::Data(d))) => back.extend(d),
            other => panic!("{} of {TOTAL} bytes back, then {other:?}", back.len()),
        }
    }
    assert!(back == data, "the echo differs from what was written");

    node.emit([Output::StreamClose {
        stream: StreamId(1),
    }]);
    assert_eq!(seen.recv_timeout(WAIT), Ok(Seen::Eof(TOTAL)));
    node.quiet();
}

/// The server closes: what it sent before arrives, then exactly one `Closed` naming the server; a write
/// after that is dropped without a report.
pub fn tcp_stream_closed_by_the_server_reports_closed_once<R: Runtime>() {
    let (addr, _seen) = server(|mut stream, _| {
        stream.write_all(b"bye").unwrap();
    });
    let node = Node::<R>::spawn(DriverConfig::default());
    node.open(7, addr, None);
    node.connected(7);
    assert_eq!(node.read(7, 3), b"bye");
    let reason = node.closed(7);
    assert!(
        reason.contains(&format!("{addr} closed the connection")),
        "{reason}"
    );
    node.write(7, b"late".to_vec());
    node.quiet();
}

/// Nobody listens: one `Closed` naming the address and the refusal, no `Connected`.
pub fn tcp_stream_connect_refused_closes_with_a_reason<R: Runtime>() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = Node::<R>::spawn(DriverConfig::default());
    node.open(2, addr, None);
    let reason = node.closed(2);
    assert!(
        reason.contains(&format!("cannot connect to {addr}")),
        "{reason}"
    );
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
    node.quiet();
}

/// A server that accepts and never reads: once the kernel's buffers are full, the driver holds at most
/// the write bound, then closes the stream with a reason instead of growing.
pub fn tcp_stream_write_bound_closes_when_the_server_does_not_read<R: Runtime>() {
    let (addr, _seen) = server(|stream, _| {
        thread::sleep(Duration::from_secs(30));
        drop(stream);
    });
    let node = Node::<R>::spawn(DriverConfig::default());
    node.open(3, addr, None);
    node.connected(3);
    // Far more than loopback's socket buffers hold (a few MiB) plus the bound.
    const CHUNK: usize = 512 * 1024;
    let mut written = 0;
    let reason = loop {
        assert!(written < 64 * 1024 * 1024, "64 MiB written and still open");
        node.emit((0..8).map(|_| Output::StreamWrite {
            stream: StreamId(3),
            data: vec![0x5a; CHUNK],
        }));
        written += 8 * CHUNK;
        if let Some(event) = node.event(Duration::from_millis(50)) {
            match event {
                (3, StreamEvent::Closed { reason }) => break reason,
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let bound = format!("more than {STREAM_WRITE_LIMIT} bytes waiting to be sent");
    assert!(
        reason.contains("is not reading") && reason.contains(&bound),
        "{reason}"
    );
    node.quiet();
}

/// TLS with the test CA trusted: the handshake for `localhost` succeeds, 300 KiB (many TLS records)
/// echo byte-exact, the server's close_notify is one `Closed`. A name the certificate does not carry, or
/// a certificate nobody vouches for, is a `Closed` naming the certificate problem; a name that is not a
/// name is refused before any connect.
pub fn tls_stream_verifies_the_name_and_echoes<R: Runtime>() {
    let ca = TestCa::new();
    const LEN: usize = 300 * 1024;
    let addr = tls_echo(ca.server.clone(), LEN);
    let node = Node::<R>::spawn(with_ca(&ca, None));
    node.open(1, addr, Some("localhost"));
    let local = node.connected(1);
    assert_eq!(local.ip(), addr.ip());
    let data = payload(LEN);
    for chunk in data.chunks(60 * 1024) {
        node.write(1, chunk.to_vec());
    }
    assert!(node.read(1, LEN) == data, "the TLS echo differs");
    let reason = node.closed(1);
    assert!(reason.contains("closed the connection"), "{reason}");
    node.quiet();

    node.open(2, addr, Some("wrong.example"));
    let reason = node.closed(2);
    assert!(
        reason.contains("TLS handshake with") && reason.contains("certificate"),
        "{reason}"
    );
    assert!(reason.contains("wrong.example"), "{reason}");

    node.open(3, addr, Some("not a name!"));
    let reason = node.closed(3);
    assert_eq!(reason, "invalid TLS server name \"not a name!\"");

    let untrusting = Node::<R>::spawn(DriverConfig::default());
    untrusting.open(4, addr, Some("localhost"));
    let reason = untrusting.closed(4);
    assert!(reason.contains("certificate"), "{reason}");
    node.quiet();
}

/// The connect + handshake bound: a server that accepts but never answers the ClientHello, and a
/// listener whose accept queue is full (its SYNs are dropped: a black hole that is quick and reliable on
/// loopback) both end in one `Closed` saying what timed out, within the configured bound.
pub fn stream_connect_and_handshake_are_bounded<R: Runtime>() {
    let bound = Duration::from_millis(300);
    let node = Node::<R>::spawn(with_ca(&TestCa::new(), Some(bound)));
    let started = Instant::now();
    node.open(1, mute_server(), Some("localhost"));
    let reason = node.closed(1);
    let took = started.elapsed();
    assert!(
        reason.contains("TLS handshake with") && reason.contains("timed out"),
        "{reason}"
    );
    assert!(
        took >= bound && took < bound + Duration::from_secs(2),
        "{took:?}"
    );

    let Some((addr, _held)) = full_listener() else {
        eprintln!(
            "skipped the black-holed connect: this kernel accepts beyond a full accept queue"
        );
        return;
    };
    let started = Instant::now();
    node.open(2, addr, None);
    let reason = node.closed(2);
    let took = started.elapsed();
    assert!(
        reason.contains(&format!("connecting to {addr} timed out")),
        "{reason}"
    );
    assert!(
        took >= bound && took < bound + Duration::from_secs(2),
        "{took:?}"
    );
    node.quiet();
}

/// A listener that never accepts, with its accept queue proven full (a connect timed out), and the
/// connections that fill it.
fn full_listener() -> Option<(SocketAddr, (socket2::Socket, Vec<TcpStream>))> {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => held.push(stream),
            Err(_) => return Some((addr, (listener, held))),
        }
    }
    None
}

/// Streams are independent, and one the core closes before it connected reports nothing, not even when
/// its deadline passes: stream 1 stalls in a TLS handshake and is closed, stream 2 (plain) echoes.
pub fn streams_are_independent_and_closing_one_while_connecting_reports_nothing<R: Runtime>() {
    let bound = Duration::from_millis(300);
    let node = Node::<R>::spawn(with_ca(&TestCa::new(), Some(bound)));
    let (addr, _seen) = server(echo);
    node.open(1, mute_server(), Some("localhost"));
    node.open(2, addr, None);
    node.connected(2);
    node.emit([Output::StreamClose {
        stream: StreamId(1),
    }]);
    node.write(2, b"still here".to_vec());
    assert_eq!(node.read(2, 10), b"still here");
    thread::sleep(bound);
    node.quiet();
}
