//! [`Connections`]: the multiplexing state machine one side of a tube runs on top of an ordered, reliable
//! data channel. Sans-IO: bytes and calls go in, [`TubeEvent`]s come out.
//!
//! # Roles
//! * **Client** (the launcher, Keeper's offerer/listener side) opens connections: [`Connections::open`]
//!   sends `OpenConnection(n)`; the gateway answers `ConnectionOpened(n)` ([`TubeEvent::Opened`]). Like
//!   Keeper's client, data may be sent right after `open`, before `ConnectionOpened` arrives, and data that
//!   arrives before it is delivered.
//! * **Gateway** accepts: an incoming `OpenConnection(n)` becomes [`TubeEvent::ConnectTarget`]; the caller
//!   connects the target and answers [`Connections::target_connected`]. Data (and SendEOF) for `n` that
//!   arrives in between is held, bounded per connection and in total, and delivered right after
//!   [`TubeEvent::Opened`]. Beyond the bound the connection is closed with [`CloseReason::ConnectionFailed`]
//!   (never `Error`: Keeper's client stops its TCP listener on that reason).
//!
//! # Rules taken from Keeper 2.2.9 (keeper-tube-wire.md §5–§6)
//! * Ping → Pong echoing the body whole (`00000000` for a body under 4 bytes), warm-up Pings included.
//! * Data for an unknown connection is dropped with a [`TubeEvent::ProtocolWarning`] (silently if the
//!   connection was closed recently: in-flight data after a close is normal). Unknown control types are
//!   ignored with a warning. A frame with a bad terminator is dropped and decoding resumes after it.
//! * Half-close: `SendEOF(n)` only means "that side finished writing" ([`TubeEvent::Eof`]); the connection
//!   stays open. Keeper's client never closes a connection after a half-close, the gateway is expected to.
//!   So in the **gateway** role, once EOF went both ways, `Connections` closes `n` with `Normal` itself
//!   (and reports it as [`TubeEvent::Closed`]). The client role never closes on EOF.
//! * [`Connections::close_all`] sends `CloseConnection(0, reason)` then `CloseConnection(n, reason)` for each
//!   open connection, in Keeper's order. A received `CloseConnection(0, …)` closes every connection.
//!
//! Deliberate difference: Keeper's client answers a gateway's `CloseConnection(n)` with a `SendEOF(n)` after
//! closing its socket (§6.6). That frame carries no information (the connection is gone), so it is not sent.
//!
//! # Events and flow control
//! Outbound data-channel messages (one frame each, like Keeper) wait in a queue. Pull them with
//! [`Connections::poll_write`] when the channel can take more (e.g. while str0m's buffered amount is low), and
//! the other events with [`Connections::poll_app_event`]; [`Connections::poll_event`] returns both kinds
//! (writes as [`TubeEvent::Write`]) for callers whose channel always accepts. The queue has a high/low water
//! mark: [`Connections::is_writable`] turns `false` at the high mark and `true` again only below the low mark,
//! so a driver stops reading its TCP sockets in between. [`Connections::send`] refuses data while not
//! writable, so the queue never grows past `high_water` + one call's data + a few control frames.
//!
//! # Time
//! The core has no clock. Frame timestamps (Unix ms, informational: Keeper ignores them) come from a base
//! set with [`Connections::set_unix_ms_base`] plus the `Instant`s passed to `new`, `handle_message`,
//! `ping` and `advance`; without a base they are 0, which Keeper accepts.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::control::{CloseReason, ControlMessage};
use super::frame::{
    encode_frame_into, FrameDecoder, FrameError, DEFAULT_MAX_PAYLOAD, FRAME_OVERHEAD,
    MAX_DATA_PAYLOAD,
};
use crate::io::ConnNo;

/// Which side of the tube this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens connections (pam launch, Keeper's offerer/"server mode" tube).
    Client,
    /// Accepts connections and connects their targets (Keeper's gateway, the emulator).
    Gateway,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Gateway => "gateway",
        })
    }
}

/// Bounds and sizes; the defaults suit a pam launch terminal and a TCP tunnel alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest incoming frame payload; a larger declared length is fatal for the channel.
    pub max_frame_payload: usize,
    /// Largest payload of a data frame we send ([`MAX_DATA_PAYLOAD`]; Keeper uses 8192).
    pub max_data_payload: usize,
    /// Outbound queue size at which [`Connections::is_writable`] turns false.
    pub high_water: usize,
    /// Outbound queue size below which it turns true again.
    pub low_water: usize,
    /// Gateway: data held for one connection whose target is not connected yet.
    pub max_held_per_conn: usize,
    /// Gateway: data held for all such connections together. Sized for a burst of 16 connections opened
    /// at once, each sending up to a few MiB before its (slow) target connects: a 16 MiB total closed
    /// connections of a loaded 16-connection transfer (found by the conformance suite).
    pub max_held_total: usize,
    /// Gateway: connections open at once; more OpenConnections are refused (`ServerRefuse`).
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_payload: DEFAULT_MAX_PAYLOAD,
            max_data_payload: MAX_DATA_PAYLOAD,
            high_water: 1024 * 1024,
            low_water: 256 * 1024,
            max_held_per_conn: 4 * 1024 * 1024,
            max_held_total: 64 * 1024 * 1024,
            max_connections: 1024,
        }
    }
}

/// What [`Connections`] asks its caller to do or tells it.
#[derive(Clone, PartialEq, Eq)]
pub enum TubeEvent {
    /// Send this as one binary data-channel message.
    Write(Vec<u8>),
    /// Client: the gateway confirmed `conn` (ConnectionOpened). Gateway: `conn` is open after
    /// [`Connections::target_connected`]; held data follows as `Data` events.
    Opened(ConnNo),
    /// Bytes for the local side of `conn`.
    Data { conn: ConnNo, data: Vec<u8> },
    /// The far side of `conn` finished writing (half-close the local socket).
    Eof(ConnNo),
    /// `conn` was closed by the peer or by `Connections` itself (never for closes the caller asked for).
    Closed {
        conn: ConnNo,
        reason: CloseReason,
        message: Option<String>,
    },
    /// Gateway: connect the target for `conn`, then call [`Connections::target_connected`].
    /// `connect_as` is the opaque ConnectAs blob of pam launch, if any.
    ConnectTarget {
        conn: ConnNo,
        connect_as: Option<Vec<u8>>,
    },
    /// The whole channel was closed (CloseConnection on conn 0, or a fatal protocol error).
    /// Every connection got its `Closed` event first.
    ChannelClosed {
        reason: CloseReason,
        message: Option<String>,
    },
    /// A Pong answered one of our [`Connections::ping`]s.
    Pong { rtt: Duration },
    /// The peer did something odd but the channel stays usable (or, right before `ChannelClosed`, why not).
    ProtocolWarning(String),
}

impl fmt::Debug for TubeEvent {
    /// Data is shown by length only: it is user traffic and may be large.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TubeEvent::Write(b) => write!(f, "Write({} bytes)", b.len()),
            TubeEvent::Opened(c) => write!(f, "Opened({c})"),
            TubeEvent::Data { conn, data } => {
                write!(f, "Data {{ conn: {conn}, len: {} }}", data.len())
            }
            TubeEvent::Eof(c) => write!(f, "Eof({c})"),
            TubeEvent::Closed {
                conn,
                reason,
                message,
            } => {
                write!(
                    f,
                    "Closed {{ conn: {conn}, reason: {reason}, message: {message:?} }}"
                )
            }
            TubeEvent::ConnectTarget { conn, connect_as } => write!(
                f,
                "ConnectTarget {{ conn: {conn}, connect_as: {:?} }}",
                connect_as.as_ref().map(|b| format!("{} bytes", b.len()))
            ),
            TubeEvent::ChannelClosed { reason, message } => {
                write!(
                    f,
                    "ChannelClosed {{ reason: {reason}, message: {message:?} }}"
                )
            }
            TubeEvent::Pong { rtt } => write!(f, "Pong {{ rtt: {rtt:?} }}"),
            TubeEvent::ProtocolWarning(w) => write!(f, "ProtocolWarning({w:?})"),
        }
    }
}

/// A call the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TubeError {
    #[error("connection number 0 is the control channel")]
    ReservedConnNo,
    #[error("connection {0} is already open")]
    AlreadyOpen(ConnNo),
    #[error("connection {0} is not open")]
    UnknownConnection(ConnNo),
    #[error("connection {0} is still waiting for its target")]
    NotConnected(ConnNo),
    #[error("connection {0} already sent EOF")]
    EofSent(ConnNo),
    #[error("the {role} role cannot {what}")]
    WrongRole { role: Role, what: &'static str },
    #[error("outbound queue full ({pending} bytes pending): wait until is_writable()")]
    Backpressure { pending: usize },
    #[error("too many connections (limit {0})")]
    TooManyConnections(usize),
    #[error("the tube is closed: {0}")]
    ChannelClosed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Client: OpenConnection sent, ConnectionOpened not yet received (data may flow already).
    Opening,
    /// Gateway: ConnectTarget emitted, waiting for `target_connected`.
    Connecting,
    Open,
}

#[derive(Debug)]
struct Conn {
    state: ConnState,
    sent_eof: bool,
    got_eof: bool,
    /// Gateway, `Connecting`: data that arrived before the target was connected.
    held: VecDeque<Vec<u8>>,
    held_bytes: usize,
}

impl Conn {
    fn new(state: ConnState) -> Conn {
        Conn {
            state,
            sent_eof: false,
            got_eof: false,
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }
}

/// How many closed connection numbers are remembered, to drop their in-flight frames silently.
const RECENTLY_CLOSED: usize = 256;
/// How many of our own Pings are remembered for RTT.
const OUTSTANDING_PINGS: usize = 16;
/// Body of a Keeper 2.2.9 warm-up Ping: conn_no 0 then 1400 zero bytes.
const WARMUP_PING_BODY: usize = 1404;
/// Pongs are dropped (with a warning) when the queue holds this many times `high_water`: a peer that
/// floods Pings while we cannot send must not grow memory.
const PONG_DROP_FACTOR: usize = 2;

/// The connection multiplexer of one side of a tube. See the module docs.
#[derive(Debug)]
pub struct Connections {
    role: Role,
    config: Config,
    decoder: FrameDecoder,
    conns: BTreeMap<ConnNo, Conn>,
    recently_closed: VecDeque<ConnNo>,
    held_total: usize,
    events: VecDeque<TubeEvent>,
    out: VecDeque<Vec<u8>>,
    pending: usize,
    backpressured: bool,
    closed: Option<CloseReason>,
    clock: Option<(u64, Instant)>,
    now: Instant,
    next_ping: u64,
    pings: VecDeque<(u64, Instant)>,
    next_conn_no: ConnNo,
}

impl Connections {
    /// A tube side with the default [`Config`].
    pub fn new(role: Role, now: Instant) -> Connections {
        Connections::with_config(role, Config::default(), now)
    }

    pub fn with_config(role: Role, config: Config, now: Instant) -> Connections {
        Connections {
            role,
            decoder: FrameDecoder::with_max_payload(config.max_frame_payload),
            config,
            conns: BTreeMap::new(),
            recently_closed: VecDeque::new(),
            held_total: 0,
            events: VecDeque::new(),
            out: VecDeque::new(),
            pending: 0,
            backpressured: false,
            closed: None,
            clock: None,
            now,
            next_ping: 1,
            pings: VecDeque::new(),
            next_conn_no: 1,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Frame timestamps become `unix_ms` at `at`, advancing with the `Instant`s the caller passes in.
    pub fn set_unix_ms_base(&mut self, unix_ms: u64, at: Instant) {
        self.clock = Some((unix_ms, at));
    }

    /// Frame timestamps become `unix_ms` now (at the latest `Instant` passed in), advancing from there.
    pub fn set_unix_ms(&mut self, unix_ms: u64) {
        self.clock = Some((unix_ms, self.now));
    }

    /// Tells the state machine the time (only used for frame timestamps and RTTs).
    pub fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    /// The timestamp the next frame gets.
    pub fn unix_ms(&self) -> u64 {
        match self.clock {
            Some((ms, at)) => {
                let elapsed = self.now.saturating_duration_since(at).as_millis();
                ms.saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
            }
            None => 0,
        }
    }

    // ----- queries -----

    /// Bytes of data-channel messages waiting to be pulled.
    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// `false` from the high water mark until the queue drains below the low water mark: stop reading
    /// local sockets meanwhile. Always `false` once the tube is closed.
    pub fn is_writable(&self) -> bool {
        !self.backpressured && self.closed.is_none()
    }

    /// `Some(reason)` once the whole channel is closed (by either side).
    pub fn closed_reason(&self) -> Option<CloseReason> {
        self.closed
    }

    /// `true` while `conn` exists (opening, connecting or open).
    pub fn is_open(&self, conn: ConnNo) -> bool {
        self.conns.contains_key(&conn)
    }

    /// `true` once the peer confirmed `conn` (client) or its target is connected (gateway).
    pub fn is_established(&self, conn: ConnNo) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.state == ConnState::Open)
    }

    /// The connection numbers that exist, ascending.
    pub fn connections(&self) -> impl Iterator<Item = ConnNo> + '_ {
        self.conns.keys().copied()
    }

    // ----- outputs -----

    /// The next event: application events first, then queued writes as [`TubeEvent::Write`].
    pub fn poll_event(&mut self) -> Option<TubeEvent> {
        self.poll_app_event()
            .or_else(|| self.poll_write().map(TubeEvent::Write))
    }

    /// The next event other than a write.
    pub fn poll_app_event(&mut self) -> Option<TubeEvent> {
        self.events.pop_front()
    }

    /// The next data-channel message to send; pull only when the channel can take it.
    pub fn poll_write(&mut self) -> Option<Vec<u8>> {
        let msg = self.out.pop_front()?;
        self.pending = self.pending.saturating_sub(msg.len());
        if self.pending <= self.config.low_water {
            self.backpressured = false;
        }
        Some(msg)
    }

    // ----- user side -----

    /// Client: open `conn` (sends OpenConnection). Data may be sent right away.
    pub fn open(&mut self, conn: ConnNo) -> Result<(), TubeError> {
        self.open_with(conn, None)
    }

    /// Client: open `conn` with pam launch's ConnectAs blob appended to OpenConnection.
    pub fn open_with(
        &mut self,
        conn: ConnNo,
        connect_as: Option<Vec<u8>>,
    ) -> Result<(), TubeError> {
        self.check_live()?;
        if self.role != Role::Client {
            return Err(TubeError::WrongRole {
                role: self.role,
                what: "open connections",
            });
        }
        if conn == 0 {
            return Err(TubeError::ReservedConnNo);
        }
        if self.conns.contains_key(&conn) {
            return Err(TubeError::AlreadyOpen(conn));
        }
        if self.conns.len() >= self.config.max_connections {
            return Err(TubeError::TooManyConnections(self.config.max_connections));
        }
        self.forget_closed(conn);
        self.conns.insert(conn, Conn::new(ConnState::Opening));
        self.next_conn_no = self.next_conn_no.max(conn.saturating_add(1));
        self.queue_control(&ControlMessage::OpenConnection {
            conn_no: conn,
            connect_as,
        });
        Ok(())
    }

    /// Client: open the next connection number (1, 2, 3… like Keeper's listener) and return it.
    pub fn open_next(&mut self, connect_as: Option<Vec<u8>>) -> Result<ConnNo, TubeError> {
        let conn = self.next_conn_no.max(1);
        self.open_with(conn, connect_as)?;
        Ok(conn)
    }

    /// Sends `data` on `conn`, chunked into frames of at most `max_data_payload` bytes.
    /// Refused with [`TubeError::Backpressure`] while [`is_writable`](Self::is_writable) is false.
    pub fn send(&mut self, conn: ConnNo, data: &[u8]) -> Result<(), TubeError> {
        self.check_live()?;
        let c = self
            .conns
            .get(&conn)
            .ok_or(TubeError::UnknownConnection(conn))?;
        if c.state == ConnState::Connecting {
            return Err(TubeError::NotConnected(conn));
        }
        if c.sent_eof {
            return Err(TubeError::EofSent(conn));
        }
        if self.backpressured {
            return Err(TubeError::Backpressure {
                pending: self.pending,
            });
        }
        let ts = self.unix_ms();
        for chunk in data.chunks(self.config.max_data_payload.max(1)) {
            let mut msg = Vec::with_capacity(FRAME_OVERHEAD + chunk.len());
            encode_frame_into(conn, ts, chunk, &mut msg);
            self.queue_write(msg);
        }
        Ok(())
    }

    /// The local side of `conn` finished writing: sends SendEOF. Idempotent.
    pub fn send_eof(&mut self, conn: ConnNo) -> Result<(), TubeError> {
        self.check_live()?;
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(TubeError::UnknownConnection(conn))?;
        if c.state == ConnState::Connecting {
            return Err(TubeError::NotConnected(conn));
        }
        if c.sent_eof {
            return Ok(());
        }
        c.sent_eof = true;
        self.queue_control(&ControlMessage::SendEof { conn_no: conn });
        self.close_if_both_eof(conn);
        Ok(())
    }

    /// Closes `conn` (sends CloseConnection). No `Closed` event follows: the caller knows.
    pub fn close(&mut self, conn: ConnNo, reason: CloseReason) -> Result<(), TubeError> {
        self.close_with_message(conn, reason, None)
    }

    /// Like [`close`](Self::close), with Keeper's optional message (e.g. "Backend connection closed
    /// unexpectedly").
    pub fn close_with_message(
        &mut self,
        conn: ConnNo,
        reason: CloseReason,
        message: Option<String>,
    ) -> Result<(), TubeError> {
        self.check_live()?;
        if conn == 0 {
            return Err(TubeError::ReservedConnNo);
        }
        if !self.conns.contains_key(&conn) {
            return Err(TubeError::UnknownConnection(conn));
        }
        self.remove_conn(conn);
        self.queue_control(&ControlMessage::CloseConnection {
            conn_no: conn,
            reason,
            message,
        });
        Ok(())
    }

    /// Closes the whole tube: `CloseConnection(0, reason)`, then `CloseConnection(n, reason)` for each open
    /// connection (Keeper's `close_tube` order). Afterwards every call fails with `ChannelClosed`; the caller
    /// should drain the writes and then close the data channel. Idempotent.
    pub fn close_all(&mut self, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        self.queue_control(&ControlMessage::CloseConnection {
            conn_no: 0,
            reason,
            message: None,
        });
        let conns: Vec<ConnNo> = self.conns.keys().copied().collect();
        for conn in conns {
            self.remove_conn(conn);
            self.queue_control(&ControlMessage::CloseConnection {
                conn_no: conn,
                reason,
                message: None,
            });
        }
        self.closed = Some(reason);
    }

    /// Gateway: the target of `conn` is connected (`ok`) or could not be (`!ok`, sends
    /// `CloseConnection(conn, ConnectionFailed)`). On success sends ConnectionOpened and emits `Opened`,
    /// then the held data and EOF.
    pub fn target_connected(&mut self, conn: ConnNo, ok: bool) -> Result<(), TubeError> {
        self.check_live()?;
        if self.role != Role::Gateway {
            return Err(TubeError::WrongRole {
                role: self.role,
                what: "accept connections",
            });
        }
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(TubeError::UnknownConnection(conn))?;
        if c.state != ConnState::Connecting {
            return Err(TubeError::AlreadyOpen(conn));
        }
        if !ok {
            self.remove_conn(conn);
            self.queue_control(&ControlMessage::CloseConnection {
                conn_no: conn,
                reason: CloseReason::ConnectionFailed,
                message: None,
            });
            return Ok(());
        }
        c.state = ConnState::Open;
        let held = std::mem::take(&mut c.held);
        self.held_total = self.held_total.saturating_sub(c.held_bytes);
        c.held_bytes = 0;
        let eof = c.got_eof;
        self.queue_control(&ControlMessage::ConnectionOpened { conn_no: conn });
        self.events.push_back(TubeEvent::Opened(conn));
        for data in held {
            self.events.push_back(TubeEvent::Data { conn, data });
        }
        if eof {
            self.events.push_back(TubeEvent::Eof(conn));
        }
        Ok(())
    }

    /// Sends a Ping whose Pong yields [`TubeEvent::Pong`] with the round-trip time.
    /// Body: conn_no 0 then a u64 sequence number (Keeper echoes the body whole).
    pub fn ping(&mut self, now: Instant) -> Result<(), TubeError> {
        self.check_live()?;
        self.advance(now);
        let seq = self.next_ping;
        self.next_ping = self.next_ping.wrapping_add(1);
        if self.pings.len() >= OUTSTANDING_PINGS {
            self.pings.pop_front();
        }
        self.pings.push_back((seq, now));
        let mut body = Vec::with_capacity(12);
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&seq.to_be_bytes());
        self.queue_control(&ControlMessage::Ping { body });
        Ok(())
    }

    /// Gateway: the three 1406-byte warm-up Pings Keeper 2.2.9's gateway sends as soon as the data channel
    /// opens (the emulator calls this to look like Keeper). Their Pongs produce no event.
    pub fn send_warmup_pings(&mut self) -> Result<(), TubeError> {
        self.check_live()?;
        for _ in 0..3 {
            self.queue_control(&ControlMessage::Ping {
                body: vec![0; WARMUP_PING_BODY],
            });
        }
        Ok(())
    }

    // ----- network side -----

    /// One data-channel message (or any slice of the stream) arrived at `now`.
    pub fn handle_message(&mut self, data: &[u8], now: Instant) {
        self.advance(now);
        if self.closed.is_some() {
            return;
        }
        self.decoder.push(data);
        while let Some(result) = self.decoder.next() {
            match result {
                Ok(frame) => {
                    if frame.conn_no == 0 {
                        self.handle_control(&frame.payload, now);
                    } else {
                        self.handle_data(frame.conn_no, frame.payload);
                    }
                }
                Err(err @ FrameError::BadTerminator { .. }) => self.warn(err.to_string()),
                Err(err) => {
                    let message = err.to_string();
                    self.warn(message.clone());
                    self.fail_channel(CloseReason::ProtocolError, message);
                }
            }
            if self.closed.is_some() {
                return;
            }
        }
    }

    fn handle_control(&mut self, payload: &[u8], now: Instant) {
        let msg = match ControlMessage::decode(payload) {
            Ok(msg) => msg,
            Err(err) => return self.warn(format!("malformed control message ignored: {err}")),
        };
        match msg {
            ControlMessage::Ping { body } => {
                if self.pending >= self.config.high_water.saturating_mul(PONG_DROP_FACTOR) {
                    self.warn("Pong not sent: outbound queue full".to_string());
                } else {
                    self.queue_control(&ControlMessage::pong_for(&body));
                }
            }
            ControlMessage::Pong { body } => self.handle_pong(&body, now),
            ControlMessage::OpenConnection {
                conn_no,
                connect_as,
            } => self.handle_open(conn_no, connect_as),
            ControlMessage::ConnectionOpened { conn_no } => self.handle_opened(conn_no),
            ControlMessage::SendEof { conn_no } => self.handle_eof(conn_no),
            ControlMessage::CloseConnection {
                conn_no: 0,
                reason,
                message,
            } => {
                let conns: Vec<ConnNo> = self.conns.keys().copied().collect();
                for conn in conns {
                    self.remove_conn(conn);
                    self.events.push_back(TubeEvent::Closed {
                        conn,
                        reason,
                        message: message.clone(),
                    });
                }
                self.closed = Some(reason);
                self.events
                    .push_back(TubeEvent::ChannelClosed { reason, message });
            }
            ControlMessage::CloseConnection {
                conn_no,
                reason,
                message,
            } => {
                if self.conns.contains_key(&conn_no) {
                    self.remove_conn(conn_no);
                    self.events.push_back(TubeEvent::Closed {
                        conn: conn_no,
                        reason,
                        message,
                    });
                } else if !self.recently_closed.contains(&conn_no) {
                    self.warn(format!(
                        "CloseConnection for unknown connection {conn_no} ignored"
                    ));
                }
            }
            ControlMessage::Unknown { code, body } => self.warn(format!(
                "unknown control message type {code} ({} byte body) ignored",
                body.len()
            )),
        }
    }

    fn handle_pong(&mut self, body: &[u8], now: Instant) {
        // Ours: 00000000 | seq u64. Anything else (e.g. a warm-up Pong) is simply not ours.
        let (Some(conn), Some(seq)) = (body.get(..4), body.get(4..)) else {
            return;
        };
        if conn != [0; 4] || seq.len() != 8 {
            return;
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(seq);
        let seq = u64::from_be_bytes(s);
        if let Some(i) = self.pings.iter().position(|(q, _)| *q == seq) {
            if let Some((_, sent)) = self.pings.remove(i) {
                self.events.push_back(TubeEvent::Pong {
                    rtt: now.saturating_duration_since(sent),
                });
            }
        }
    }

    fn handle_open(&mut self, conn: ConnNo, connect_as: Option<Vec<u8>>) {
        let refuse = |this: &mut Self, why: String| {
            this.warn(why);
            this.queue_control(&ControlMessage::CloseConnection {
                conn_no: conn,
                reason: CloseReason::ServerRefuse,
                message: None,
            });
        };
        if self.role != Role::Gateway {
            return refuse(
                self,
                format!("OpenConnection({conn}) refused: the client role accepts no connections"),
            );
        }
        if conn == 0 {
            return self.warn("OpenConnection(0) ignored: 0 is the control channel".to_string());
        }
        if self.conns.contains_key(&conn) {
            return self.warn(format!("duplicate OpenConnection({conn}) ignored"));
        }
        if self.conns.len() >= self.config.max_connections {
            let limit = self.config.max_connections;
            return refuse(
                self,
                format!("OpenConnection({conn}) refused: {limit} connections open"),
            );
        }
        self.forget_closed(conn);
        self.conns.insert(conn, Conn::new(ConnState::Connecting));
        self.events
            .push_back(TubeEvent::ConnectTarget { conn, connect_as });
    }

    fn handle_opened(&mut self, conn: ConnNo) {
        if self.role != Role::Client {
            return self.warn(format!(
                "ConnectionOpened({conn}) ignored: the gateway role opens nothing"
            ));
        }
        match self.conns.get_mut(&conn) {
            Some(c) if c.state == ConnState::Opening => {
                c.state = ConnState::Open;
                self.events.push_back(TubeEvent::Opened(conn));
            }
            Some(_) => {} // duplicate: harmless
            None if self.recently_closed.contains(&conn) => {}
            None => self.warn(format!(
                "ConnectionOpened for unknown connection {conn} ignored"
            )),
        }
    }

    fn handle_eof(&mut self, conn: ConnNo) {
        let Some(c) = self.conns.get_mut(&conn) else {
            if !self.recently_closed.contains(&conn) {
                self.warn(format!("SendEOF for unknown connection {conn} ignored"));
            }
            return;
        };
        if c.got_eof {
            return;
        }
        c.got_eof = true;
        if c.state != ConnState::Connecting {
            self.events.push_back(TubeEvent::Eof(conn));
            self.close_if_both_eof(conn);
        }
    }

    fn handle_data(&mut self, conn: ConnNo, data: Vec<u8>) {
        let (max_conn, max_total) = (self.config.max_held_per_conn, self.config.max_held_total);
        let Some(c) = self.conns.get_mut(&conn) else {
            if !self.recently_closed.contains(&conn) {
                self.warn(format!(
                    "{} bytes for unknown connection {conn} dropped",
                    data.len()
                ));
            }
            return;
        };
        if data.is_empty() {
            return;
        }
        if c.got_eof {
            return self.warn(format!(
                "{} bytes for connection {conn} after its EOF dropped",
                data.len()
            ));
        }
        if c.state != ConnState::Connecting {
            self.events.push_back(TubeEvent::Data { conn, data });
            return;
        }
        let len = data.len();
        if c.held_bytes.saturating_add(len) > max_conn
            || self.held_total.saturating_add(len) > max_total
        {
            let message = format!("more than {max_conn} bytes (or {max_total} in total) arrived before the target connected");
            self.warn(format!("connection {conn} closed: {message}"));
            self.remove_conn(conn);
            // Not `Error`: Keeper's client role stops its whole TCP listener on a CloseConnection with
            // Error or UpstreamClosed for any connection (tests/tests/keeper_interop.rs pins it). Only
            // this connection failed, which is what ConnectionFailed says (also used for a refused target).
            self.queue_control(&ControlMessage::CloseConnection {
                conn_no: conn,
                reason: CloseReason::ConnectionFailed,
                message: Some(message.clone()),
            });
            self.events.push_back(TubeEvent::Closed {
                conn,
                reason: CloseReason::ConnectionFailed,
                message: Some(message),
            });
            return;
        }
        c.held_bytes += len;
        c.held.push_back(data);
        self.held_total += len;
    }

    // ----- internals -----

    fn check_live(&self) -> Result<(), TubeError> {
        match self.closed {
            Some(reason) => Err(TubeError::ChannelClosed(reason)),
            None => Ok(()),
        }
    }

    fn warn(&mut self, message: String) {
        tracing::debug!(target: "pam_lite::tube", "{message}");
        self.events.push_back(TubeEvent::ProtocolWarning(message));
    }

    /// Gateway: EOF both ways means the connection is done; close it like Keeper's client expects.
    fn close_if_both_eof(&mut self, conn: ConnNo) {
        if self.role != Role::Gateway {
            return;
        }
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.sent_eof && c.got_eof)
        {
            self.remove_conn(conn);
            let reason = CloseReason::Normal;
            self.queue_control(&ControlMessage::CloseConnection {
                conn_no: conn,
                reason,
                message: None,
            });
            self.events.push_back(TubeEvent::Closed {
                conn,
                reason,
                message: None,
            });
        }
    }

    /// A fatal stream error: tell the peer, close everything, report.
    fn fail_channel(&mut self, reason: CloseReason, message: String) {
        let conns: Vec<ConnNo> = self.conns.keys().copied().collect();
        self.close_all(reason);
        for conn in conns {
            self.events.push_back(TubeEvent::Closed {
                conn,
                reason,
                message: Some(message.clone()),
            });
        }
        self.events.push_back(TubeEvent::ChannelClosed {
            reason,
            message: Some(message),
        });
    }

    fn remove_conn(&mut self, conn: ConnNo) {
        if let Some(c) = self.conns.remove(&conn) {
            self.held_total = self.held_total.saturating_sub(c.held_bytes);
        }
        if self.recently_closed.len() >= RECENTLY_CLOSED {
            self.recently_closed.pop_front();
        }
        self.recently_closed.push_back(conn);
    }

    fn forget_closed(&mut self, conn: ConnNo) {
        self.recently_closed.retain(|c| *c != conn);
    }

    fn queue_control(&mut self, msg: &ControlMessage) {
        let payload = msg.encode();
        let mut out = Vec::with_capacity(FRAME_OVERHEAD + payload.len());
        encode_frame_into(0, self.unix_ms(), &payload, &mut out);
        self.queue_write(out);
    }

    fn queue_write(&mut self, msg: Vec<u8>) {
        self.pending += msg.len();
        self.out.push_back(msg);
        if self.pending >= self.config.high_water {
            self.backpressured = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tube::frame::Frame;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn writes(c: &mut Connections) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| c.poll_write()).collect()
    }

    fn app_events(c: &mut Connections) -> Vec<TubeEvent> {
        std::iter::from_fn(|| c.poll_app_event()).collect()
    }

    fn ctrl(msg: ControlMessage) -> Vec<u8> {
        msg.to_frame(0).encode()
    }

    fn decode(wire: &[u8]) -> Vec<Frame> {
        let mut d = FrameDecoder::new();
        d.push(wire);
        std::iter::from_fn(|| d.next())
            .map(Result::unwrap)
            .collect()
    }

    fn control_of(wire: &[u8]) -> ControlMessage {
        let f = decode(wire);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].conn_no, 0);
        ControlMessage::decode(&f[0].payload).unwrap()
    }

    /// Moves every write of `from` into `to`; returns how many messages moved.
    fn pump(from: &mut Connections, to: &mut Connections, now: Instant) -> usize {
        let w = writes(from);
        for m in &w {
            to.handle_message(m, now);
        }
        w.len()
    }

    #[test]
    fn client_open_is_keepers_bytes() {
        let t0 = pam_lite_dev_clock::origin();
        let mut c = Connections::new(Role::Client, t0);
        c.set_unix_ms_base(0x1a20b523a61, t0);
        c.open(1).unwrap();
        assert_eq!(
            writes(&mut c),
            vec![hex("00000000 000001a20b523a61 00000006 0065 00000001 3b")]
        );
        c.advance(t0 + Duration::from_millis(2));
        c.send(1, b"hello-through-aiortc-gateway").unwrap();
        assert_eq!(
            writes(&mut c),
            vec![hex(
                "00000001 000001a20b523a63 0000001c 68656c6c6f2d7468726f7567682d61696f7274632d67617465776179 3b"
            )]
        );
        c.advance(t0 + Duration::from_millis(0x1a20b523fd3 - 0x1a20b523a61));
        c.send_eof(1).unwrap();
        assert_eq!(
            writes(&mut c),
            vec![hex("00000000 000001a20b523fd3 00000006 0068 00000001 3b")]
        );
    }

    #[test]
    fn keeper_ping_pong_known_answers() {
        let t0 = pam_lite_dev_clock::origin();
        let mut c = Connections::new(Role::Client, t0);
        c.set_unix_ms_base(0x1a20b523fd0, t0);
        c.handle_message(
            &hex("00000000 000001a20b523fcf 00000006 0001 00000000 3b"),
            t0,
        );
        c.handle_message(&hex("00000000 000001a20b523fd0 00000002 0001 3b"), t0);
        assert_eq!(
            writes(&mut c),
            vec![
                hex("00000000 000001a20b523fd0 00000006 0002 00000000 3b"),
                hex("00000000 000001a20b523fd0 00000006 0002 00000000 3b"),
            ]
        );
        c.set_unix_ms_base(0x1a20b523fd2, t0);
        c.handle_message(
            &hex("00000000 000001a20b523fd2 0000000e 0001 00000001 0102030405060708 3b"),
            t0,
        );
        assert_eq!(
            writes(&mut c),
            vec![hex(
                "00000000 000001a20b523fd2 0000000e 0002 00000001 0102030405060708 3b"
            )]
        );
        // Warm-up-shaped Ping → full-size Pong.
        let mut warm = hex("00000000 000001a20b4ebfcf 0000057e 0001");
        warm.extend_from_slice(&[0; 1404]);
        warm.push(b';');
        c.handle_message(&warm, t0);
        let w = writes(&mut c);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].len(), 1423);
        assert_eq!(
            &w[0][..18],
            &hex("00000000 000001a20b523fd2 0000057e 0002")[..]
        );
        assert!(app_events(&mut c).is_empty());
    }

    #[test]
    fn close_all_is_keepers_order_and_bytes() {
        let t0 = pam_lite_dev_clock::origin();
        let mut c = Connections::new(Role::Client, t0);
        c.open(1).unwrap();
        writes(&mut c);
        c.set_unix_ms_base(0x1a20b524749, t0);
        c.close_all(CloseReason::AdminClosed);
        let w = writes(&mut c);
        assert_eq!(
            w[0],
            hex("00000000 000001a20b524749 00000007 0066 00000000 0c 3b")
        );
        assert_eq!(
            control_of(&w[1]),
            ControlMessage::CloseConnection {
                conn_no: 1,
                reason: CloseReason::AdminClosed,
                message: None
            }
        );
        assert_eq!(w.len(), 2);
        assert_eq!(c.closed_reason(), Some(CloseReason::AdminClosed));
        assert_eq!(
            c.send(1, b"x"),
            Err(TubeError::ChannelClosed(CloseReason::AdminClosed))
        );
        assert!(!c.is_writable());
        c.close_all(CloseReason::Normal);
        assert!(writes(&mut c).is_empty());
    }

    #[test]
    fn client_gateway_round_trip() {
        let t0 = pam_lite_dev_clock::origin();
        let mut cl = Connections::new(Role::Client, t0);
        let mut gw = Connections::new(Role::Gateway, t0);
        let n = cl.open_next(None).unwrap();
        assert_eq!(n, 1);
        cl.send(1, b"early bytes").unwrap(); // before ConnectionOpened, like Keeper
        pump(&mut cl, &mut gw, t0);
        assert_eq!(
            app_events(&mut gw),
            vec![TubeEvent::ConnectTarget {
                conn: 1,
                connect_as: None
            }]
        );
        assert!(gw.send(1, b"x").is_err());
        gw.target_connected(1, true).unwrap();
        assert_eq!(
            app_events(&mut gw),
            vec![
                TubeEvent::Opened(1),
                TubeEvent::Data {
                    conn: 1,
                    data: b"early bytes".to_vec()
                }
            ]
        );
        gw.send(1, b"reply").unwrap();
        pump(&mut gw, &mut cl, t0);
        assert_eq!(
            app_events(&mut cl),
            vec![
                TubeEvent::Opened(1),
                TubeEvent::Data {
                    conn: 1,
                    data: b"reply".to_vec()
                }
            ]
        );
        // Half-close both ways: the gateway closes the connection itself.
        cl.send_eof(1).unwrap();
        pump(&mut cl, &mut gw, t0);
        assert_eq!(app_events(&mut gw), vec![TubeEvent::Eof(1)]);
        assert!(gw.is_open(1));
        gw.send_eof(1).unwrap();
        assert_eq!(
            app_events(&mut gw),
            vec![TubeEvent::Closed {
                conn: 1,
                reason: CloseReason::Normal,
                message: None
            }]
        );
        pump(&mut gw, &mut cl, t0);
        assert_eq!(
            app_events(&mut cl),
            vec![
                TubeEvent::Eof(1),
                TubeEvent::Closed {
                    conn: 1,
                    reason: CloseReason::Normal,
                    message: None
                }
            ]
        );
        assert!(!cl.is_open(1));
        // In-flight data after the close is dropped silently.
        cl.handle_message(&Frame::new(1, 0, b"late".to_vec()).encode(), t0);
        assert!(app_events(&mut cl).is_empty());
        assert_eq!(cl.open_next(None).unwrap(), 2);
    }

    #[test]
    fn client_half_close_does_not_close() {
        let t0 = pam_lite_dev_clock::origin();
        let mut cl = Connections::new(Role::Client, t0);
        cl.open(1).unwrap();
        cl.handle_message(&ctrl(ControlMessage::ConnectionOpened { conn_no: 1 }), t0);
        cl.send_eof(1).unwrap();
        cl.handle_message(&ctrl(ControlMessage::SendEof { conn_no: 1 }), t0);
        assert_eq!(
            app_events(&mut cl),
            vec![TubeEvent::Opened(1), TubeEvent::Eof(1)]
        );
        assert!(cl.is_open(1));
        assert_eq!(cl.send(1, b"x"), Err(TubeError::EofSent(1)));
        // Keeper gateway closing after a half-close (§6.5).
        cl.handle_message(
            &hex(
                "00000000 000001a20b4ed80d 0000002f 0066 00000001 09 0026 4261636b656e6420636f6e6e656374696f6e20636c6f73656420756e65787065637465646c79 3b",
            ),
            t0,
        );
        assert_eq!(
            app_events(&mut cl),
            vec![TubeEvent::Closed {
                conn: 1,
                reason: CloseReason::ConnectionLost,
                message: Some("Backend connection closed unexpectedly".into())
            }]
        );
    }

    #[test]
    fn gateway_holds_data_and_eof_until_connected() {
        let t0 = pam_lite_dev_clock::origin();
        let mut gw = Connections::new(Role::Gateway, t0);
        gw.handle_message(
            &ctrl(ControlMessage::OpenConnection {
                conn_no: 4,
                connect_as: Some(vec![9; 81]),
            }),
            t0,
        );
        gw.handle_message(&Frame::new(4, 0, b"a".to_vec()).encode(), t0);
        gw.handle_message(&Frame::new(4, 0, b"b".to_vec()).encode(), t0);
        gw.handle_message(&ctrl(ControlMessage::SendEof { conn_no: 4 }), t0);
        assert_eq!(
            app_events(&mut gw),
            vec![TubeEvent::ConnectTarget {
                conn: 4,
                connect_as: Some(vec![9; 81])
            }]
        );
        assert!(writes(&mut gw).is_empty());
        gw.target_connected(4, true).unwrap();
        assert_eq!(
            control_of(&writes(&mut gw)[0]),
            ControlMessage::ConnectionOpened { conn_no: 4 }
        );
        assert_eq!(
            app_events(&mut gw),
            vec![
                TubeEvent::Opened(4),
                TubeEvent::Data {
                    conn: 4,
                    data: b"a".to_vec()
                },
                TubeEvent::Data {
                    conn: 4,
                    data: b"b".to_vec()
                },
                TubeEvent::Eof(4),
            ]
        );
        assert_eq!(gw.target_connected(4, true), Err(TubeError::AlreadyOpen(4)));
    }

    #[test]
    fn gateway_target_failure() {
        let t0 = pam_lite_dev_clock::origin();
        let mut gw = Connections::new(Role::Gateway, t0);
        gw.handle_message(
            &ctrl(ControlMessage::OpenConnection {
                conn_no: 1,
                connect_as: None,
            }),
            t0,
        );
        app_events(&mut gw);
        gw.target_connected(1, false).unwrap();
        assert_eq!(
            control_of(&writes(&mut gw)[0]),
            ControlMessage::CloseConnection {
                conn_no: 1,
                reason: CloseReason::ConnectionFailed,
                message: None
            }
        );
        assert!(app_events(&mut gw).is_empty());
        assert_eq!(
            gw.target_connected(1, true),
            Err(TubeError::UnknownConnection(1))
        );
    }

    #[test]
    fn gateway_hold_limit_closes_connection() {
        let t0 = pam_lite_dev_clock::origin();
        let config = Config {
            max_held_per_conn: 10,
            ..Config::default()
        };
        let mut gw = Connections::with_config(Role::Gateway, config, t0);
        gw.handle_message(
            &ctrl(ControlMessage::OpenConnection {
                conn_no: 1,
                connect_as: None,
            }),
            t0,
        );
        gw.handle_message(&Frame::new(1, 0, vec![0; 8]).encode(), t0);
        gw.handle_message(&Frame::new(1, 0, vec![0; 8]).encode(), t0);
        let ev = app_events(&mut gw);
        assert!(matches!(ev[0], TubeEvent::ConnectTarget { conn: 1, .. }));
        assert!(matches!(ev[1], TubeEvent::ProtocolWarning(_)));
        assert!(matches!(
            ev[2],
            TubeEvent::Closed {
                conn: 1,
                reason: CloseReason::ConnectionFailed,
                ..
            }
        ));
        assert!(matches!(
            control_of(&writes(&mut gw)[0]),
            ControlMessage::CloseConnection {
                conn_no: 1,
                reason: CloseReason::ConnectionFailed,
                ..
            }
        ));
        assert_eq!(gw.held_total, 0);
        assert_eq!(
            gw.target_connected(1, true),
            Err(TubeError::UnknownConnection(1))
        );
    }

    #[test]
    fn keeper_edge_cases_keep_the_channel_up() {
        let t0 = pam_lite_dev_clock::origin();
        let mut cl = Connections::new(Role::Client, t0);
        cl.open(1).unwrap();
        writes(&mut cl);
        // Data for conn 99 never opened.
        cl.handle_message(&Frame::new(99, 0, b"zz".to_vec()).encode(), t0);
        // Unknown control type 999.
        cl.handle_message(
            &hex("00000000 0000000000000000 00000006 03e7 00000001 3b"),
            t0,
        );
        // A frame with terminator 'X' followed by a good one in the same message.
        let mut bad = Frame::new(1, 0, b"bad".to_vec()).encode();
        *bad.last_mut().unwrap() = b'X';
        bad.extend(Frame::new(1, 0, b"good".to_vec()).encode());
        cl.handle_message(&bad, t0);
        // OpenConnection sent to the client role is refused.
        cl.handle_message(
            &ctrl(ControlMessage::OpenConnection {
                conn_no: 7,
                connect_as: None,
            }),
            t0,
        );
        let ev = app_events(&mut cl);
        assert_eq!(ev.len(), 5, "{ev:?}");
        assert!(ev
            .iter()
            .take(3)
            .all(|e| matches!(e, TubeEvent::ProtocolWarning(_))));
        assert_eq!(
            ev[3],
            TubeEvent::Data {
                conn: 1,
                data: b"good".to_vec()
            }
        );
        assert!(matches!(ev[4], TubeEvent::ProtocolWarning(_)));
        assert_eq!(
            control_of(&writes(&mut cl)[0]),
            ControlMessage::CloseConnection {
                conn_no: 7,
                reason: CloseReason::ServerRefuse,
                message: None
            }
        );
        // Still alive: a Ping gets its Pong.
        cl.handle_message(
            &ctrl(ControlMessage::Ping {
                body: vec![0, 0, 0, 0],
            }),
            t0,
        );
        assert_eq!(
            control_of(&writes(&mut cl)[0]),
            ControlMessage::Pong { body: vec![0; 4] }
        );
    }

    #[test]
    fn peer_closes_channel() {
        let t0 = pam_lite_dev_clock::origin();
        let mut cl = Connections::new(Role::Client, t0);
        cl.open(1).unwrap();
        cl.open(2).unwrap();
        writes(&mut cl);
        cl.handle_message(
            &hex("00000000 000001a20b524749 00000007 0066 00000000 0c 3b"),
            t0,
        );
        let ev = app_events(&mut cl);
        let r = CloseReason::AdminClosed;
        assert_eq!(
            ev,
            vec![
                TubeEvent::Closed {
                    conn: 1,
                    reason: r,
                    message: None
                },
                TubeEvent::Closed {
                    conn: 2,
                    reason: r,
                    message: None
                },
                TubeEvent::ChannelClosed {
                    reason: r,
                    message: None
                },
            ]
        );
        assert!(writes(&mut cl).is_empty());
        assert_eq!(cl.open(3), Err(TubeError::ChannelClosed(r)));
    }

    #[test]
    fn fatal_frame_error_closes_everything() {
        let t0 = pam_lite_dev_clock::origin();
        let config = Config {
            max_frame_payload: 100,
            ..Config::default()
        };
        let mut gw = Connections::with_config(Role::Gateway, config, t0);
        gw.handle_message(
            &ctrl(ControlMessage::OpenConnection {
                conn_no: 1,
                connect_as: None,
            }),
            t0,
        );
        gw.handle_message(&hex("00000001 0000000000000000 00001000"), t0);
        let ev = app_events(&mut gw);
        assert!(matches!(
            ev.last(),
            Some(TubeEvent::ChannelClosed {
                reason: CloseReason::ProtocolError,
                ..
            })
        ));
        assert!(ev.iter().any(|e| matches!(
            e,
            TubeEvent::Closed {
                conn: 1,
                reason: CloseReason::ProtocolError,
                ..
            }
        )));
        let w = writes(&mut gw);
        assert!(matches!(
            control_of(&w[0]),
            ControlMessage::CloseConnection {
                conn_no: 0,
                reason: CloseReason::ProtocolError,
                ..
            }
        ));
    }

    #[test]
    fn chunking_and_backpressure() {
        let t0 = pam_lite_dev_clock::origin();
        let config = Config {
            high_water: 40_000,
            low_water: 10_000,
            ..Config::default()
        };
        let mut cl = Connections::with_config(Role::Client, config, t0);
        cl.open(1).unwrap();
        writes(&mut cl);
        cl.send(1, &vec![5; 40_000]).unwrap();
        assert_eq!(cl.pending_bytes(), 40_000 + 3 * FRAME_OVERHEAD);
        assert!(!cl.is_writable());
        assert_eq!(
            cl.send(1, b"x"),
            Err(TubeError::Backpressure { pending: 40_051 })
        );
        let first = cl.poll_write().unwrap();
        assert_eq!(first.len(), MAX_DATA_PAYLOAD + FRAME_OVERHEAD);
        assert!(!cl.is_writable()); // hysteresis: below high, still above the low mark
        cl.poll_write().unwrap();
        assert!(cl.is_writable()); // 7249 bytes left, below the low mark
        let last = cl.poll_write().unwrap();
        assert_eq!(last.len(), 40_000 - 2 * MAX_DATA_PAYLOAD + FRAME_OVERHEAD);
        assert!(cl.is_writable());
        assert_eq!(cl.pending_bytes(), 0);
    }

    #[test]
    fn ping_rtt() {
        let t0 = pam_lite_dev_clock::origin();
        let mut cl = Connections::new(Role::Client, t0);
        let mut gw = Connections::new(Role::Gateway, t0);
        gw.send_warmup_pings().unwrap();
        assert_eq!(pump(&mut gw, &mut cl, t0), 3);
        assert_eq!(pump(&mut cl, &mut gw, t0), 3); // three 1406-byte Pongs
        assert!(app_events(&mut gw).is_empty());
        cl.ping(t0).unwrap();
        pump(&mut cl, &mut gw, t0);
        pump(&mut gw, &mut cl, t0 + Duration::from_millis(7));
        assert_eq!(
            app_events(&mut cl),
            vec![TubeEvent::Pong {
                rtt: Duration::from_millis(7)
            }]
        );
    }

    #[test]
    fn role_checks() {
        let t0 = pam_lite_dev_clock::origin();
        let mut gw = Connections::new(Role::Gateway, t0);
        assert!(matches!(gw.open(1), Err(TubeError::WrongRole { .. })));
        let mut cl = Connections::new(Role::Client, t0);
        assert!(matches!(
            cl.target_connected(1, true),
            Err(TubeError::WrongRole { .. })
        ));
        assert_eq!(cl.open(0), Err(TubeError::ReservedConnNo));
        cl.open(1).unwrap();
        assert_eq!(cl.open(1), Err(TubeError::AlreadyOpen(1)));
        assert_eq!(cl.send(2, b"x"), Err(TubeError::UnknownConnection(2)));
        assert_eq!(
            cl.close(2, CloseReason::Normal),
            Err(TubeError::UnknownConnection(2))
        );
        cl.close(1, CloseReason::Normal).unwrap();
        assert!(app_events(&mut cl).is_empty());
    }

    #[test]
    fn too_many_connections_refused() {
        let t0 = pam_lite_dev_clock::origin();
        let config = Config {
            max_connections: 1,
            ..Config::default()
        };
        let mut gw = Connections::with_config(Role::Gateway, config, t0);
        gw.handle_message(
            &ctrl(ControlMessage::OpenConnection {
                conn_no: 1,
                connect_as: None,
            }),
            t0,
        );
        gw.handle_message(
            &ctrl(ControlMessage::OpenConnection {
                conn_no: 2,
                connect_as: None,
            }),
            t0,
        );
        assert_eq!(
            control_of(&writes(&mut gw)[0]),
            ControlMessage::CloseConnection {
                conn_no: 2,
                reason: CloseReason::ServerRefuse,
                message: None
            }
        );
        assert!(gw.is_open(1) && !gw.is_open(2));
    }

    proptest! {
        #[test]
        fn data_survives_any_message_boundaries(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40_000), 1..5),
            split in 1usize..5000,
        ) {
            let t0 = pam_lite_dev_clock::origin();
            let mut cl = Connections::new(Role::Client, t0);
            let mut gw = Connections::new(Role::Gateway, t0);
            cl.open(1).unwrap();
            for c in &chunks { cl.send(1, c).unwrap(); }
            let stream: Vec<u8> = writes(&mut cl).concat();
            for part in stream.chunks(split) { gw.handle_message(part, t0); }
            gw.target_connected(1, true).unwrap();
            let got: Vec<u8> = app_events(&mut gw).into_iter().filter_map(|e| match e {
                TubeEvent::Data { data, .. } => Some(data),
                _ => None,
            }).flatten().collect();
            prop_assert_eq!(got, chunks.concat());
        }

        #[test]
        fn handle_message_never_panics(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..8)) {
            let t0 = pam_lite_dev_clock::origin();
            for role in [Role::Client, Role::Gateway] {
                let mut c = Connections::new(role, t0);
                let _ = c.open(1);
                for m in &msgs { c.handle_message(m, t0); }
                while c.poll_event().is_some() {}
            }
        }
    }
}
