//! Test harness for the Keeper interop tests: the Python peer process (Keeper's own tube library), a
//! pam-lite tube endpoint (str0m [`Peer`] + [`Connections`]) on a real UDP socket, a tagged TCP echo server,
//! and bounded waits. Everything here is test code: panics are the way a check fails.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command as Proc, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pam_lite_core::rtc::{Peer, PeerEvent, Role as RtcRole};
use pam_lite_core::tube::{Connections, ControlMessage, FrameDecoder, Role as TubeRole, TubeEvent};
use pam_lite_core::{CandidateKind, Datagram};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The private address netns_run.sh puts on the namespace's lo (Keeper announces its candidate there).
pub const NETNS_ADDR: &str = "198.18.0.1";

pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// The venv's python when the interop environment is usable, else `None` after printing why the test
/// is skipped. Inside the namespace (KP_TUBE_NETNS set) a missing address is a failure, not a skip.
pub fn interop_python(test: &str) -> Option<PathBuf> {
    let python = interop_dir().join(".venv/bin/python");
    if !python.exists() {
        eprintln!(
            "SKIPPED {test}: no interop venv at {} (run tests/interop/run.sh, which runs setup.sh)",
            python.display()
        );
        return None;
    }
    if std::env::var_os("KP_TUBE_NETNS").is_none() {
        eprintln!(
            "SKIPPED {test}: not inside the interop network namespace (Keeper's tube needs a non-loopback \
             address; run tests/interop/run.sh, which uses tests/interop/netns_run.sh)"
        );
        return None;
    }
    if let Err(e) = UdpSocket::bind((NETNS_ADDR, 0)) {
        panic!("KP_TUBE_NETNS is set but {NETNS_ADDR} cannot be bound ({e}): netns_run.sh did not set up lo");
    }
    Some(python)
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

// ------------------------------------------------------------------------------------------ Keeper peer

/// `tests/interop/keeper_peer.py` as a child process, spoken to in JSON lines. Killed on drop.
pub struct KeeperPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Value>,
    /// Lines received and not consumed yet (candidates are consumed by [`Session::pump`]).
    pub inbox: VecDeque<Value>,
    /// Every line received, for failure messages.
    pub history: Vec<Value>,
    eof: bool,
}

impl KeeperPeer {
    pub fn spawn(python: &Path, args: &[&str]) -> KeeperPeer {
        let script = interop_dir().join("keeper_peer.py");
        // PAM_LITE_INTEROP_KEEPER_LOG=10 shows keeper's debug log on stderr (default: errors only).
        let level = std::env::var("PAM_LITE_INTEROP_KEEPER_LOG").unwrap_or_else(|_| "40".into());
        let mut child = Proc::new(python)
            .arg(&script)
            .args(args)
            .args(["--log-level", &level])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"type": "unparsed", "line": line}));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut peer = KeeperPeer {
            child,
            stdin,
            rx,
            inbox: VecDeque::new(),
            history: Vec::new(),
            eof: false,
        };
        let hello = peer.wait_for("hello", Duration::from_secs(30));
        assert_eq!(hello["version"], "2.2.9", "the pinned keeper-pam-webrtc-rs");
        peer
    }

    pub fn send(&mut self, v: Value) {
        let stdin = self.stdin.as_mut().expect("keeper stdin open");
        writeln!(stdin, "{v}").expect("write to keeper_peer.py");
        stdin.flush().expect("flush keeper stdin");
    }

    /// Move everything that arrived into the inbox without blocking.
    pub fn poll(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(v) => self.accept(v),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.eof = true;
                    return;
                }
            }
        }
    }

    fn accept(&mut self, v: Value) {
        if v["type"] == "error" {
            eprintln!("keeper_peer.py reported: {v}");
        }
        self.history.push(v.clone());
        self.inbox.push_back(v);
    }

    /// Remove and return the first inbox line of type `ty`.
    pub fn take(&mut self, ty: &str) -> Option<Value> {
        self.poll();
        let i = self.inbox.iter().position(|v| v["type"] == ty)?;
        self.inbox.remove(i)
    }

    /// Block (without pumping anything else) until a line of type `ty` arrives.
    pub fn wait_for(&mut self, ty: &str, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = self.take(ty) {
                return v;
            }
            if self.eof {
                panic!(
                    "keeper_peer.py exited while waiting for {ty:?}; got {:?}",
                    self.history
                );
            }
            match self
                .rx
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(v) => self.accept(v),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {ty:?} from keeper_peer.py within {timeout:?}; got {:?}",
                        self.history
                    )
                }
                Err(RecvTimeoutError::Disconnected) => self.eof = true,
            }
        }
    }

    /// Signals of `kind` seen so far (e.g. `channel_closed`).
    pub fn signals(&self, kind: &str) -> Vec<Value> {
        self.history
            .iter()
            .filter(|v| v["type"] == "signal" && v["kind"] == kind)
            .cloned()
            .collect()
    }

    /// Ask keeper to `close_tube` and wait for it to finish (bounded).
    pub fn close(&mut self, timeout: Duration) -> Value {
        self.send(json!({"type": "close"}));
        self.wait_for("closed", timeout)
    }
}

impl Drop for KeeperPeer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let end = Instant::now() + Duration::from_millis(500);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------------ endpoint

/// A control frame keeper sent us, as seen on the data channel.
#[derive(Debug, Clone)]
pub struct Tapped {
    pub at: Instant,
    pub msg: ControlMessage,
}

/// A pam-lite tube endpoint: str0m peer + tube state machine on a real UDP socket bound to 127.0.0.1.
pub struct Endpoint {
    sock: UdpSocket,
    pub local: SocketAddr,
    pub peer: Peer,
    pub conns: Connections,
    blocked: Option<Vec<u8>>,
    pub events: VecDeque<TubeEvent>,
    tap: FrameDecoder,
    /// Every control frame received, in order.
    pub controls: Vec<Tapped>,
    /// Largest data-frame payload received, and how many data frames.
    pub max_data_payload: usize,
    pub data_frames: u64,
    /// Timestamps of received frames: (min, max) Unix ms, to check they are the sender's clock.
    pub frame_ts: Option<(u64, u64)>,
    pub connected_at: Option<Instant>,
    pub open_at: Option<Instant>,
    pub closed: Option<String>,
    buf: Vec<u8>,
}

impl Endpoint {
    pub fn new(rtc_role: RtcRole, tube_role: TubeRole, label: &str) -> Endpoint {
        let now = Instant::now();
        // The driver's bind: 127.0.0.1 with 4 MiB SO_RCVBUF/SO_SNDBUF (the default 208 KiB drops loopback
        // bursts, and SCTP then waits for retransmission timers).
        let (sock, addressing) =
            pam_lite_driver_kit::udp::bind(&pam_lite_driver_kit::DriverConfig::default())
                .expect("bind UDP 127.0.0.1");
        let local = addressing.local;
        let peer = Peer::new(rtc_role, label, &pam_lite_driver_kit::dtls::identity(), now);
        let mut conns = Connections::new(tube_role, now);
        conns.set_unix_ms_base(unix_ms(), now);
        Endpoint {
            sock,
            local,
            peer,
            conns,
            blocked: None,
            events: VecDeque::new(),
            tap: FrameDecoder::with_max_payload(1 << 20),
            controls: Vec::new(),
            max_data_payload: 0,
            data_frames: 0,
            frame_ts: None,
            connected_at: None,
            open_at: None,
            closed: None,
            buf: vec![0; 65_536],
        }
    }

    /// Add the socket's address as a host candidate; returns its `candidate:…` line.
    pub fn add_host_candidate(&mut self) -> String {
        self.peer
            .add_local_candidate(self.local, CandidateKind::Host, Instant::now())
            .expect("str0m accepts the 127.0.0.1 host candidate")
    }

    /// One round: move queued writes to the channel, wait up to `max_wait` for datagrams (or str0m's next
    /// timer), feed them, fire due timers, collect events.
    pub fn step(&mut self, max_wait: Duration) {
        let now = Instant::now();
        self.flush(now);
        let wake = self
            .peer
            .poll_timeout()
            .map_or(now + max_wait, |t| t.min(now + max_wait));
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_micros(200));
        self.sock
            .set_read_timeout(Some(wait))
            .expect("read timeout");
        let mut got = self.recv_one();
        if got {
            self.sock.set_nonblocking(true).expect("nonblocking");
            for _ in 0..512 {
                got = self.recv_one();
                if !got {
                    break;
                }
            }
            self.sock.set_nonblocking(false).expect("blocking");
        }
        let now = Instant::now();
        if self.peer.poll_timeout().is_some_and(|t| t <= now) {
            self.peer.handle_timeout(now);
        }
        self.after_input(now);
    }

    fn recv_one(&mut self) -> bool {
        match self.sock.recv_from(&mut self.buf) {
            Ok((n, source)) => {
                let d = Datagram {
                    source,
                    destination: self.local,
                    contents: self.buf[..n].to_vec(),
                };
                let now = Instant::now();
                self.peer.handle_datagram(&d, now);
                self.after_input(now);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                false
            }
            // ICMP port unreachable from a closed peer socket, etc.
            Err(_) => false,
        }
    }

    fn after_input(&mut self, now: Instant) {
        self.peer_events(now);
        self.flush(now);
        self.peer_events(now);
    }

    fn peer_events(&mut self, now: Instant) {
        while let Some(e) = self.peer.poll_event() {
            match e {
                PeerEvent::Connected => self.connected_at = Some(now),
                PeerEvent::ChannelOpen => self.open_at = Some(now),
                PeerEvent::Message(m) => {
                    self.tap_message(&m, now);
                    self.conns.handle_message(&m, now);
                }
                PeerEvent::Writable => {}
                // The interop runs are short and on one host: a path event is only worth a trace line.
                PeerEvent::PathLost | PeerEvent::PathRestored => eprintln!("keeper interop: {e:?}"),
                PeerEvent::Closed(r) => {
                    if self.closed.is_none() {
                        self.closed = Some(r);
                    }
                }
            }
        }
        while let Some(ev) = self.conns.poll_app_event() {
            self.events.push_back(ev);
        }
    }

    fn tap_message(&mut self, m: &[u8], now: Instant) {
        self.tap.push(m);
        while let Some(Ok(frame)) = self.tap.next() {
            self.frame_ts = Some(match self.frame_ts {
                None => (frame.timestamp_ms, frame.timestamp_ms),
                Some((a, b)) => (a.min(frame.timestamp_ms), b.max(frame.timestamp_ms)),
            });
            if frame.conn_no == 0 {
                if let Ok(msg) = ControlMessage::decode(&frame.payload) {
                    self.controls.push(Tapped { at: now, msg });
                }
            } else {
                self.data_frames += 1;
                self.max_data_payload = self.max_data_payload.max(frame.payload.len());
            }
        }
    }

    /// Move the tube's queued messages into the data channel while it takes them; send datagrams.
    pub fn flush(&mut self, now: Instant) {
        self.conns.advance(now);
        loop {
            if let Some(w) = self.blocked.take() {
                match self.peer.write(&w, now) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.blocked = Some(w);
                        break;
                    }
                    Err(e) => {
                        self.closed.get_or_insert(format!("write failed: {e}"));
                        break;
                    }
                }
            }
            match self.conns.poll_write() {
                Some(w) => self.blocked = Some(w),
                None => break,
            }
        }
        while let Some(d) = self.peer.poll_transmit() {
            let _ = self.sock.send_to(&d.contents, d.destination);
        }
    }

    /// Remove and return the first event matching `pred`.
    pub fn take_event(&mut self, pred: impl Fn(&TubeEvent) -> bool) -> Option<TubeEvent> {
        let i = self.events.iter().position(pred)?;
        self.events.remove(i)
    }

    /// Control frames of one type code received so far.
    pub fn controls_of(&self, code: u16) -> Vec<&Tapped> {
        self.controls
            .iter()
            .filter(|t| t.msg.code() == code)
            .collect()
    }
}

// ------------------------------------------------------------------------------------------ session

/// One endpoint and its Keeper peer, pumped together: Keeper's trickled candidates are applied as they come.
pub struct Session {
    pub ep: Endpoint,
    pub keeper: KeeperPeer,
    pub remote_candidates: Vec<String>,
}

impl Session {
    pub fn pump(&mut self, max_wait: Duration) {
        self.ep.step(max_wait);
        self.keeper.poll();
        while let Some(c) = self.keeper.take("candidate") {
            let line = c["candidate"].as_str().unwrap_or("").to_string();
            self.ep
                .peer
                .add_remote_candidate(&line, Instant::now())
                .unwrap_or_else(|e| panic!("keeper's candidate {line:?} rejected: {e}"));
            self.remote_candidates.push(line);
        }
    }

    /// Pump until `pred` holds; panic with context after `timeout`.
    pub fn run_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&mut Session) -> bool,
    ) {
        let end = Instant::now() + timeout;
        loop {
            if pred(self) {
                return;
            }
            if Instant::now() >= end {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; endpoint closed={:?} open={} \
                     pending events={:?}; keeper said {:?}",
                    self.ep.closed,
                    self.ep.peer.is_open(),
                    self.ep.events,
                    self.keeper.history
                );
            }
            self.pump(Duration::from_millis(5));
        }
    }

    /// Pump until an event matching `pred` arrives; return it.
    pub fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&TubeEvent) -> bool,
    ) -> TubeEvent {
        let mut found = None;
        self.run_until(what, timeout, |s| {
            found = s.ep.take_event(&pred);
            found.is_some()
        });
        found.expect("found")
    }

    /// Send a Ping and wait for its Pong; returns the RTT.
    pub fn ping(&mut self) -> Duration {
        self.ep.conns.ping(Instant::now()).expect("ping");
        match self.wait_event("Pong", Duration::from_secs(5), |e| {
            matches!(e, TubeEvent::Pong { .. })
        }) {
            TubeEvent::Pong { rtt } => rtt,
            _ => unreachable!(),
        }
    }
}

// ------------------------------------------------------------------------------------------ echo server

/// How an echo connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EchoEnd {
    /// Read EOF (the peer shut down or closed); we echoed everything, shut down and closed.
    Eof,
    /// We closed at once because the first bytes were `CLOSE-NOW`.
    ClosedOnRequest,
    /// A read or write error (e.g. a reset).
    Error(String),
}

#[derive(Default)]
pub struct EchoStats {
    pub accepted: AtomicUsize,
    pub bytes: AtomicU64,
    /// tag (the first line `ID:<tag>\n`, or `?`) → how it ended.
    pub ended: Mutex<BTreeMap<String, EchoEnd>>,
}

/// A TCP echo server on 127.0.0.1. A connection whose first bytes are `ID:<tag>\n` is recorded under that
/// tag; one whose first bytes are `CLOSE-NOW` is closed at once (a backend that goes away). Every
/// connection thread is bounded by a 60 s read timeout; the accept loop stops on drop.
///
/// By default each connection reads and writes on separate threads, so it never stops reading while its
/// writes wait. [`EchoServer::start_coupled`] echoes from one thread (read, then write): it stops reading
/// while a write blocks, which is how many real servers behave and what exposes head-of-line blocking in
/// a gateway's target forwarding (see docs/PROTOCOL-NOTES.md).
pub struct EchoServer {
    pub addr: SocketAddr,
    pub stats: Arc<EchoStats>,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        EchoServer::start_mode(false)
    }

    pub fn start_coupled() -> EchoServer {
        EchoServer::start_mode(true)
    }

    fn start_mode(coupled: bool) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stats = Arc::new(EchoStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (stats.clone(), stop.clone());
        thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        st.accepted.fetch_add(1, Ordering::Relaxed);
                        let st = st.clone();
                        thread::spawn(move || echo_conn(stream, &st, coupled));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        EchoServer { addr, stats, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn ended(&self, tag: &str) -> Option<EchoEnd> {
        self.stats.ended.lock().expect("lock").get(tag).cloned()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Where echoed bytes go: written in the reading thread (coupled) or handed to a writer thread.
enum EchoOut {
    Inline(TcpStream),
    Writer(mpsc::Sender<Vec<u8>>, thread::JoinHandle<()>),
}

impl EchoOut {
    fn new(stream: &TcpStream, coupled: bool) -> Option<EchoOut> {
        let mut w = stream.try_clone().ok()?;
        let _ = w.set_write_timeout(Some(Duration::from_secs(60)));
        if coupled {
            return Some(EchoOut::Inline(w));
        }
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let h = thread::spawn(move || {
            for d in rx {
                if w.write_all(&d).is_err() {
                    return;
                }
            }
            let _ = w.shutdown(Shutdown::Write);
        });
        Some(EchoOut::Writer(tx, h))
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            EchoOut::Inline(w) => w.write_all(data),
            EchoOut::Writer(tx, _) => tx
                .send(data.to_vec())
                .map_err(|_| std::io::Error::other("echo writer gone")),
        }
    }

    /// Shut down the write side after everything queued was written.
    fn finish(self) {
        match self {
            EchoOut::Inline(w) => {
                let _ = w.shutdown(Shutdown::Write);
            }
            EchoOut::Writer(tx, h) => {
                drop(tx);
                let _ = h.join();
            }
        }
    }
}

fn echo_conn(mut stream: TcpStream, stats: &EchoStats, coupled: bool) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Some(mut out) = EchoOut::new(&stream, coupled) else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut tag: Option<String> = None;
    let mut head: Vec<u8> = Vec::new();
    let end = loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                break EchoEnd::Eof;
            }
            Ok(n) => {
                if tag.is_none() && head.len() < 64 {
                    head.extend_from_slice(&buf[..n]);
                    if head.starts_with(b"CLOSE-NOW") {
                        tag = Some(String::from_utf8_lossy(&head).trim().to_string());
                        break EchoEnd::ClosedOnRequest;
                    }
                    if let Some(rest) = head.strip_prefix(b"ID:") {
                        if let Some(nl) = rest.iter().position(|b| *b == b'\n') {
                            tag = Some(String::from_utf8_lossy(&rest[..nl]).to_string());
                        }
                    }
                }
                stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                if let Err(e) = out.write(&buf[..n]) {
                    break EchoEnd::Error(e.to_string());
                }
            }
            Err(e) => break EchoEnd::Error(e.to_string()),
        }
    };
    if end == EchoEnd::Eof {
        out.finish();
    } else {
        drop(out);
    }
    drop(stream);
    let tag = tag.unwrap_or_else(|| "?".into());
    stats.ended.lock().expect("lock").insert(tag, end);
}

// ------------------------------------------------------------------------------------------ payloads

/// Deterministic pseudo-random bytes in chunks, with the SHA-256 of everything handed out.
pub struct Payload {
    rng: ChaCha20Rng,
    pub remaining: u64,
    pub sha: Sha256,
}

impl Payload {
    pub fn new(total: u64, seed: u8) -> Payload {
        Payload {
            rng: ChaCha20Rng::from_seed([seed; 32]),
            remaining: total,
            sha: Sha256::new(),
        }
    }

    /// The next chunk of at most `max` bytes (empty when done).
    pub fn next_chunk(&mut self, max: usize) -> Vec<u8> {
        let n = (self.remaining as usize).min(max);
        let mut v = vec![0u8; n];
        self.rng.fill_bytes(&mut v);
        self.sha.update(&v);
        self.remaining -= n as u64;
        v
    }
}

pub fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------------------------------------ TCP clients

/// What a TCP client thread observed.
#[derive(Debug)]
pub struct ClientResult {
    pub received: Vec<u8>,
    /// How reading ended: `eof`, `reset`, `timeout` or another error text.
    pub end: String,
    pub elapsed: Duration,
}

/// Connect to `addr`, send `data`, optionally shut down the write side, and read until EOF / error /
/// `timeout`.
pub fn tcp_roundtrip(
    addr: SocketAddr,
    data: &[u8],
    shutdown: bool,
    timeout: Duration,
) -> ClientResult {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect to keeper's listener");
    let _ = s.set_nodelay(true);
    s.write_all(data).expect("write to keeper's listener");
    if shutdown {
        let _ = s.shutdown(Shutdown::Write);
    }
    read_to_end_bounded(&mut s, timeout, t0)
}

pub fn read_to_end_bounded(s: &mut TcpStream, timeout: Duration, t0: Instant) -> ClientResult {
    let end_at = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        let left = end_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break "timeout".to_string();
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => break "eof".to_string(),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break "timeout".to_string()
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    ClientResult {
        received,
        end,
        elapsed: t0.elapsed(),
    }
}
