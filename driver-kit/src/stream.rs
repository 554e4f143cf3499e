//! Streams to TURN servers (TURN over TCP, and over TLS for `turns:`), once for every runtime.
//!
//! The core asks for a stream with `Output::StreamOpen`, writes with `Output::StreamWrite` and closes with
//! `Output::StreamClose`; the driver answers with `Input::Stream` events: `Connected`, `Data`…, and exactly
//! one final `Closed` (never anything after the core's own close). The core frames its messages (RFC 4571 /
//! RFC 8656 framing is its business); here bytes only move, in order.
//!
//! [`Streams`] is the whole state machine, over a non-blocking socket the runtime wraps for its own waiting
//! (a registered `mio::net::TcpStream`, an `async_io::Async<TcpStream>`, …): the TCP connect, the TLS
//! handshake (rustls, driven by readiness, with the kit's TLS policy), the bounded outgoing buffer, reads,
//! the connect+handshake deadline and the one `Closed`. A runtime only does this:
//!
//! * [`Streams::open`] on `StreamOpen`, wrapping the connecting socket (register it; the kit hands a `key`
//!   to recognise its readiness by), [`Streams::write`] / [`Streams::close`] on the other two outputs;
//! * on readiness of a stream's socket, [`Streams::ready`] with its key (watch writability only while
//!   [`Streams::watch`] says the stream wants it, or always with edge-triggered readiness);
//! * feed every [`Streams::pop`] to the dispatcher, and do not sleep while [`Streams::busy`];
//! * wake up at [`Streams::deadline`] and call [`Streams::expire`].
//!
//! Reasons given in `Closed` (shown to users by the core) name the server's address and what failed:
//! `cannot connect to 192.0.2.1:3478: Connection refused (os error 111)`, `connecting to … timed out after
//! 10s`, `TLS handshake with … failed: invalid peer certificate: …`, `… closed the connection`, `… is not
//! reading: more than 1048576 bytes waiting to be sent`, `invalid TLS server name "…"`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pam_lite_core::{Input, StreamEvent, StreamId};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Bytes the core may have written to a stream that the socket has not taken yet. Past it the stream is
/// closed, not grown: a TURN server that stops reading for a whole MiB is not relaying real-time traffic
/// any more (the SCTP above retransmits what matters), and memory stays bounded per stream.
pub const STREAM_WRITE_LIMIT: usize = 1024 * 1024;
/// Largest `StreamEvent::Data` (one read).
pub const STREAM_READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one stream per readiness before the other sources get a turn (and the largest amount
/// of read data waiting in [`Streams`] for the dispatcher).
pub const STREAM_READ_BUDGET: usize = 256 * 1024;
/// Plaintext handed to rustls at a time: its buffer stays this small, the bound is [`STREAM_WRITE_LIMIT`].
const TLS_WRITE_CHUNK: usize = 16 * 1024;
/// Longest TLS server name shown in a reason (a DNS name has at most 253 characters).
const MAX_NAME_SHOWN: usize = 253;

/// Where a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshaking,
    Open,
}

/// One stream, without its socket.
struct Conn {
    to: SocketAddr,
    phase: Phase,
    tls: Option<Box<ClientConnection>>,
    /// Written by the core, not yet taken by the socket (or by rustls); at most [`STREAM_WRITE_LIMIT`].
    out: VecDeque<u8>,
    /// The end of the connect + handshake bound; `None` once connected.
    deadline: Option<Instant>,
    connect_timeout: Duration,
}

struct Entry<S> {
    id: StreamId,
    key: usize,
    socket: S,
    conn: Conn,
}

/// Every stream of one node (see the module docs). `S` is the runtime's wrapper of the socket; the kit
/// reads and writes through it with `socket2::SockRef` (any type with a raw socket: mio's and std's
/// `TcpStream`, `async_io::Async<TcpStream>`).
pub struct Streams<S> {
    tls: Arc<ClientConfig>,
    connect_timeout: Duration,
    entries: Vec<Entry<S>>,
    next_key: usize,
    /// Inputs for the dispatcher, in order (bounded by the read budget per readiness).
    events: VecDeque<Input>,
    /// Keys of streams whose read budget ran out: bytes may be waiting that no edge-triggered readiness
    /// will announce again.
    unfinished: Vec<usize>,
    /// [`STREAM_READ_CHUNK`] bytes, allocated when a stream first becomes ready: most nodes never open a
    /// TURN stream, and 64 KiB each was a sixth of a smol tunnel's memory (issue 11).
    buf: Vec<u8>,
}

impl<S> Streams<S>
where
    for<'s> SockRef<'s>: From<&'s S>,
{
    /// `tls` is the driver's TLS policy ([`crate::tls::rustls_client_config`]: Mozilla roots plus the
    /// configured extra CA, aws-lc-rs, or `--insecure`); `connect_timeout` bounds connect + handshake
    /// ([`crate::DriverConfig::stream_connect_timeout`]).
    pub fn new(tls: Arc<ClientConfig>, connect_timeout: Duration) -> Self {
        Self {
            tls,
            connect_timeout,
            entries: Vec::new(),
            next_key: 0,
            events: VecDeque::new(),
            unfinished: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Start connecting `stream` to `to` (TLS for `tls_name`). `wrap` turns the connecting non-blocking
    /// socket into the runtime's type (registering it under `key`). `Some(Closed)` when it failed at once;
    /// otherwise `Connected` or `Closed` comes later. A number still in use replaces its old stream.
    pub fn open(
        &mut self,
        stream: StreamId,
        to: SocketAddr,
        tls_name: Option<String>,
        wrap: impl FnOnce(TcpStream, usize) -> io::Result<S>,
    ) -> Option<Input> {
        self.close(stream);
        let closed = |reason: String| {
            tracing::debug!(stream = stream.0, %reason, "stream not opened");
            Some(closed_input(stream, reason))
        };
        let tls = match tls_name.map(|name| self.tls_client(&name)).transpose() {
            Ok(tls) => tls,
            Err(reason) => return closed(reason),
        };
        let socket = match connect(to) {
            Ok(socket) => socket,
            Err(e) => return closed(format!("cannot connect to {to}: {e}")),
        };
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        let socket = match wrap(socket, key) {
            Ok(socket) => socket,
            Err(e) => return closed(format!("cannot watch the connection to {to}: {e}")),
        };
        tracing::debug!(stream = stream.0, %to, tls = tls.is_some(), "stream connecting");
        self.entries.push(Entry {
            id: stream,
            key,
            socket,
            conn: Conn {
                to,
                phase: Phase::Connecting,
                tls,
                out: VecDeque::new(),
                deadline: Instant::now().checked_add(self.connect_timeout),
                connect_timeout: self.connect_timeout,
            },
        });
        None
    }

    /// Queue `data` after everything written before and send what the socket takes now. Past
    /// [`STREAM_WRITE_LIMIT`] unsent bytes, or on a socket error, the stream closes (`Closed` is queued).
    /// Writes to a stream that is gone are dropped (its `Closed` is on its way or was delivered).
    pub fn write(&mut self, stream: StreamId, data: Vec<u8>) {
        let Some(at) = self.entries.iter().position(|e| e.id == stream) else {
            tracing::debug!(stream = stream.0, "write to a closed stream dropped");
            return;
        };
        let entry = &mut self.entries[at];
        let conn = &mut entry.conn;
        let result = if conn.out.len().saturating_add(data.len()) > STREAM_WRITE_LIMIT {
            Err(format!(
                "{} is not reading: more than {STREAM_WRITE_LIMIT} bytes waiting to be sent",
                conn.to
            ))
        } else {
            conn.out.extend(data);
            conn.flush(&SockRef::from(&entry.socket))
        };
        if let Err(reason) = result {
            self.remove(at, reason);
        }
    }

    /// Close `stream` on the core's request: what is queued and (for TLS) a close_notify go out if the
    /// socket takes them now, then the socket is dropped. Nothing more is reported from it.
    pub fn close(&mut self, stream: StreamId) {
        // Also what it produced that the dispatcher has not fed yet (and a `Closed` of an earlier failure).
        self.events
            .retain(|i| !matches!(i, Input::Stream { stream: s, .. } if *s == stream));
        let Some(at) = self.entries.iter().position(|e| e.id == stream) else {
            return;
        };
        let entry = self.entries.swap_remove(at);
        self.unfinished.retain(|k| *k != entry.key);
        let socket = SockRef::from(&entry.socket);
        let mut conn = entry.conn;
        if conn.phase == Phase::Open {
            let _ = conn.flush(&socket);
            if let Some(tls) = conn.tls.as_mut() {
                tls.send_close_notify();
                let _ = tls.write_tls(&mut &*socket);
            }
        }
        tracing::debug!(stream = stream.0, "stream closed on request");
    }

    /// The socket of stream `key` is ready (readable, writable or in error): make all the progress
    /// possible; the resulting inputs wait in [`Streams::pop`].
    pub fn ready(&mut self, key: usize) {
        let Some(at) = self.entries.iter().position(|e| e.key == key) else {
            return;
        };
        self.unfinished.retain(|k| *k != key);
        if self.buf.is_empty() {
            self.buf = vec![0; STREAM_READ_CHUNK];
        }
        let entry = &mut self.entries[at];
        let mut events = Vec::new();
        let result = entry
            .conn
            .progress(&SockRef::from(&entry.socket), &mut self.buf, &mut events);
        let id = entry.id;
        self.events.extend(
            events
                .into_iter()
                .map(|event| Input::Stream { stream: id, event }),
        );
        match result {
            Ok(false) => {}
            Ok(true) => self.unfinished.push(key),
            Err(reason) => self.remove(at, reason),
        }
    }

    /// Continue the streams whose read budget ran out (see [`Streams::busy`]).
    pub fn resume(&mut self) {
        for key in std::mem::take(&mut self.unfinished) {
            self.ready(key);
        }
    }

    /// The next input for the dispatcher.
    pub fn pop(&mut self) -> Option<Input> {
        self.events.pop_front()
    }

    /// Inputs are waiting, or a stream must be resumed: the runtime must not sleep.
    pub fn busy(&self) -> bool {
        !self.events.is_empty() || !self.unfinished.is_empty()
    }

    /// Each stream's key, socket, and whether it waits for writability (connecting, or bytes the socket
    /// did not take); readability is always of interest.
    pub fn watch(&self) -> impl Iterator<Item = (usize, &S, bool)> {
        self.entries
            .iter()
            .map(|e| (e.key, &e.socket, e.conn.wants_write()))
    }

    /// When [`Streams::expire`] must be called at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.entries.iter().filter_map(|e| e.conn.deadline).min()
    }

    /// Close the streams whose connect or handshake did not finish in time.
    pub fn expire(&mut self, now: Instant) {
        while let Some(at) = self
            .entries
            .iter()
            .position(|e| e.conn.deadline.is_some_and(|d| d <= now))
        {
            let conn = &self.entries[at].conn;
            let secs = conn.connect_timeout.as_secs_f64();
            let reason = match conn.phase {
                Phase::Connecting => format!("connecting to {} timed out after {secs}s", conn.to),
                _ => format!("TLS handshake with {} timed out after {secs}s", conn.to),
            };
            self.remove(at, reason);
        }
    }

    /// Open streams (for tests and logs).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn tls_client(&self, name: &str) -> Result<Box<ClientConnection>, String> {
        let server = server_name(name)?;
        ClientConnection::new(self.tls.clone(), server)
            .map(Box::new)
            .map_err(|e| format!("TLS setup failed: {e}"))
    }

    /// Drop the stream at `at` and queue its one `Closed` (after what it produced before).
    fn remove(&mut self, at: usize, reason: String) {
        let entry = self.entries.swap_remove(at);
        self.unfinished.retain(|k| *k != entry.key);
        tracing::debug!(stream = entry.id.0, %reason, "stream closed");
        self.events.push_back(closed_input(entry.id, reason));
    }
}

fn closed_input(stream: StreamId, reason: String) -> Input {
    Input::Stream {
        stream,
        event: StreamEvent::Closed { reason },
    }
}

/// The name a TURN server's certificate must be valid for (a DNS name or an IP address).
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned()).map_err(|_| {
        let shown: String = name.chars().take(MAX_NAME_SHOWN).collect();
        format!("invalid TLS server name {shown:?}")
    })
}

/// A non-blocking TCP socket connecting to `to` (the connect finishes in the background).
pub(crate) fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if in_progress(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// Whether the non-blocking connect of `socket` has finished (`Err`: it failed).
pub(crate) fn connected(socket: &Socket) -> io::Result<bool> {
    if let Some(e) = socket.take_error()? {
        return Err(e);
    }
    match socket.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn in_progress(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINPROGRESS)
}

#[cfg(not(unix))]
fn in_progress(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Conn {
    fn wants_write(&self) -> bool {
        match self.phase {
            Phase::Connecting => true,
            Phase::Handshaking => self.tls.as_ref().is_some_and(|t| t.wants_write()),
            Phase::Open => {
                !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
            }
        }
    }

    /// Everything possible without blocking; `Ok(true)` when the read budget ran out, `Err` closes.
    fn progress(
        &mut self,
        socket: &Socket,
        buf: &mut [u8],
        events: &mut Vec<StreamEvent>,
    ) -> Result<bool, String> {
        if self.phase == Phase::Connecting {
            if !self.connect_done(socket)? {
                return Ok(false);
            }
            // Each write is a frame the core wants out now (a datagram in TURN's framing): no Nagle delay.
            let _ = socket.set_tcp_nodelay(true);
            match self.tls {
                None => self.up(socket, events)?,
                Some(_) => self.phase = Phase::Handshaking,
            }
        }
        self.flush(socket)?;
        let more = match self.tls.is_some() {
            true => self.read_tls(socket, events)?,
            false => self.read_plain(socket, buf, events)?,
        };
        self.flush(socket)?;
        Ok(more)
    }

    /// Whether the non-blocking connect has finished (`Err`: it failed).
    fn connect_done(&self, socket: &Socket) -> Result<bool, String> {
        connected(socket).map_err(|e| format!("cannot connect to {}: {e}", self.to))
    }

    /// Connected (and, for TLS, handshaken): report it with the socket's own address.
    fn up(&mut self, socket: &Socket, events: &mut Vec<StreamEvent>) -> Result<(), String> {
        let local = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| format!("the connection to {} has no local address", self.to))?;
        self.phase = Phase::Open;
        self.deadline = None;
        tracing::debug!(to = %self.to, %local, "stream connected");
        events.push(StreamEvent::Connected { local });
        Ok(())
    }

    fn closed_by_server(&self) -> String {
        match self.phase {
            Phase::Open => format!("{} closed the connection", self.to),
            _ => format!("{} closed the connection during the TLS handshake", self.to),
        }
    }

    /// Send what the socket takes now: queued bytes (through rustls for TLS, once handshaken).
    fn flush(&mut self, socket: &Socket) -> Result<(), String> {
        let to = self.to;
        let failed = |e: io::Error| format!("writing to {to} failed: {e}");
        if self.phase == Phase::Connecting {
            return Ok(());
        }
        let Some(tls) = self.tls.as_mut() else {
            while !self.out.is_empty() {
                let (front, _) = self.out.as_slices();
                match (&*socket).write(front) {
                    Ok(0) => return Err(failed(io::ErrorKind::WriteZero.into())),
                    Ok(n) => drop(self.out.drain(..n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(failed(e)),
                }
            }
            return Ok(());
        };
        loop {
            while tls.wants_write() {
                match tls.write_tls(&mut &*socket) {
                    Ok(0) => return Err(failed(io::ErrorKind::WriteZero.into())),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(failed(e)),
                }
            }
            if self.phase != Phase::Open || self.out.is_empty() {
                return Ok(());
            }
            let (front, _) = self.out.as_slices();
            let chunk = front.get(..TLS_WRITE_CHUNK).unwrap_or(front);
            match tls.writer().write(chunk) {
                Ok(0) => return Ok(()), // rustls' own buffer is full: the socket must drain it first
                Ok(n) => drop(self.out.drain(..n)),
                Err(e) => return Err(failed(e)),
            }
        }
    }

    fn read_plain(
        &mut self,
        socket: &Socket,
        buf: &mut [u8],
        events: &mut Vec<StreamEvent>,
    ) -> Result<bool, String> {
        let mut budget = STREAM_READ_BUDGET;
        while budget > 0 {
            match (&*socket).read(buf) {
                Ok(0) => return Err(self.closed_by_server()),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    events.push(StreamEvent::Data(buf.get(..n).unwrap_or_default().to_vec()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading from {} failed: {e}", self.to)),
            }
        }
        Ok(true)
    }

    fn read_tls(&mut self, socket: &Socket, events: &mut Vec<StreamEvent>) -> Result<bool, String> {
        let mut budget = STREAM_READ_BUDGET;
        while budget > 0 {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(false);
            };
            let eof = match tls.read_tls(&mut &*socket) {
                Ok(0) => true,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading from {} failed: {e}", self.to)),
            };
            let peer_closed = self.process_tls(socket, events)?;
            if peer_closed || eof {
                return Err(self.closed_by_server());
            }
        }
        Ok(true)
    }

    /// Process every record rustls holds (it stops when its plaintext buffer is full, so process again
    /// after draining it), reporting the handshake's end and the plaintext; `Ok(true)`: close_notify came.
    fn process_tls(
        &mut self,
        socket: &Socket,
        events: &mut Vec<StreamEvent>,
    ) -> Result<bool, String> {
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(false);
            };
            let state = match tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // Tell the server why (the alert rustls queued), best effort.
                    let _ = tls.write_tls(&mut &*socket);
                    return Err(match self.phase {
                        Phase::Open => format!("TLS error from {}: {e}", self.to),
                        _ => format!("TLS handshake with {} failed: {e}", self.to),
                    });
                }
            };
            let mut plaintext = state.plaintext_bytes_to_read();
            if self.phase == Phase::Handshaking && !tls.is_handshaking() {
                self.up(socket, events)?;
            }
            if plaintext == 0 {
                return Ok(state.peer_has_closed());
            }
            while plaintext > 0 {
                let Some(tls) = self.tls.as_mut() else { break };
                let mut data = vec![0; plaintext.min(STREAM_READ_CHUNK)];
                tls.reader()
                    .read_exact(&mut data)
                    .map_err(|e| format!("reading from {} failed: {e}", self.to))?;
                plaintext -= data.len();
                events.push(StreamEvent::Data(data));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn streams(connect_timeout: Duration) -> Streams<TcpStream> {
        let tls = crate::tls::rustls_client_config(&crate::TlsConfig::default()).unwrap();
        Streams::new(tls, connect_timeout)
    }

    /// A server that echoes one connection.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let _ = io::copy(&mut &stream, &mut &stream);
        });
        addr
    }

    /// Call `ready` (spurious calls are allowed: readiness may be) until `n` inputs are queued.
    fn poll_until(streams: &mut Streams<TcpStream>, key: usize, n: usize) {
        let end = Instant::now() + Duration::from_secs(5);
        while streams.events.len() < n {
            assert!(Instant::now() < end, "only {:?}", streams.events);
            streams.ready(key);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn open_plain(streams: &mut Streams<TcpStream>, id: u32, to: SocketAddr) -> usize {
        let mut key = None;
        let failed = streams.open(StreamId(id), to, None, |s, k| {
            key = Some(k);
            Ok(s)
        });
        assert_eq!(failed, None);
        key.unwrap()
    }

    #[test]
    fn the_read_buffer_waits_for_a_ready_stream() {
        let mut streams = streams(Duration::from_secs(5));
        assert_eq!(
            streams.buf.capacity(),
            0,
            "a node without streams holds a read buffer"
        );
        let key = open_plain(&mut streams, 1, echo_server());
        streams.write(StreamId(1), b"x".to_vec());
        poll_until(&mut streams, key, 2);
        assert_eq!(streams.buf.len(), STREAM_READ_CHUNK);
    }

    #[test]
    fn writes_before_the_connect_are_sent_after_it_and_a_close_drops_unfed_inputs() {
        let mut streams = streams(Duration::from_secs(5));
        let key = open_plain(&mut streams, 1, echo_server());
        streams.write(StreamId(1), b"early".to_vec());
        poll_until(&mut streams, key, 2);
        assert!(matches!(
            streams.pop(),
            Some(Input::Stream {
                stream: StreamId(1),
                event: StreamEvent::Connected { .. }
            })
        ));
        assert_eq!(
            streams.pop(),
            Some(Input::Stream {
                stream: StreamId(1),
                event: StreamEvent::Data(b"early".to_vec())
            })
        );
        streams.write(StreamId(1), b"again".to_vec());
        poll_until(&mut streams, key, 1);
        streams.close(StreamId(1));
        assert_eq!(
            streams.pop(),
            None,
            "nothing is reported after the core's close"
        );
        assert!(streams.is_empty() && !streams.busy());
        streams.ready(key); // a late readiness of a closed stream is ignored
        assert_eq!(streams.pop(), None);
    }

    #[test]
    fn the_write_bound_counts_bytes_queued_before_the_connect_too() {
        let mut streams = streams(Duration::from_secs(5));
        open_plain(&mut streams, 2, echo_server());
        streams.write(StreamId(2), vec![0; STREAM_WRITE_LIMIT]);
        assert_eq!(streams.pop(), None, "exactly the bound fits");
        streams.write(StreamId(2), vec![0; 1]);
        let Some(Input::Stream {
            stream: StreamId(2),
            event: StreamEvent::Closed { reason },
        }) = streams.pop()
        else {
            panic!("not closed");
        };
        assert!(reason.contains("is not reading"), "{reason}");
        streams.write(StreamId(2), vec![0; 1]);
        assert_eq!(streams.pop(), None, "one Closed only");
    }

    #[test]
    fn a_connect_past_its_deadline_closes_once_with_what_timed_out() {
        let mut streams = streams(Duration::ZERO);
        let addr = echo_server();
        open_plain(&mut streams, 3, addr);
        assert!(streams.deadline().is_some());
        streams.expire(Instant::now());
        assert_eq!(
            streams.pop(),
            Some(closed_input(
                StreamId(3),
                format!("connecting to {addr} timed out after 0s")
            ))
        );
        streams.expire(Instant::now());
        assert_eq!((streams.pop(), streams.deadline()), (None, None));
    }

    #[test]
    fn a_bad_tls_name_fails_before_any_connect() {
        let mut streams = streams(Duration::from_secs(5));
        let failed = streams.open(StreamId(4), echo_server(), Some("a b".into()), |_, _| {
            panic!("no socket for a bad name")
        });
        assert_eq!(
            failed,
            Some(closed_input(
                StreamId(4),
                "invalid TLS server name \"a b\"".into()
            ))
        );
    }

    #[test]
    fn server_names_dns_and_ip_are_accepted_garbage_is_named_escaped_and_bounded() {
        assert!(server_name("turn.example.com").is_ok());
        assert!(server_name("192.0.2.7").is_ok());
        let bad = format!("bad name\u{1b}[31m{}", "x".repeat(400));
        let reason = server_name(&bad).unwrap_err();
        assert!(reason.starts_with("invalid TLS server name \"bad name\\u{1b}[31m"));
        assert!(!reason.contains('\u{1b}'), "control characters are escaped");
        assert!(reason.len() < 300, "{}", reason.len());
    }
}
