//! The vocabulary between the core and a driver: [`Input`]s in, [`Output`]s out.
//!
//! Every type here is plain owned data, so a driver may move it across threads or tasks freely.

use core::net::SocketAddr;
use std::time::Duration;

use crate::timing::Checkpoint;
use crate::tube::CloseReason;
use crate::LaunchError;

/// Identifies one HTTP request the core asked for, so the driver can hand back its response.
pub type RequestId = u64;

/// A tunneled connection number inside one tube (1..; 0 is the control channel).
pub type ConnNo = u32;

/// 32 bytes that seed every random value the core draws itself (see [`crate::client::Client::new`]).
pub type Seed = [u8; 32];

/// HTTP method of a router call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// An HTTP request the driver must perform, then answer with [`Input::HttpResponse`] or
/// [`Input::HttpError`] carrying the same `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub id: RequestId,
    pub method: Method,
    pub url: String,
    /// Header name/value pairs, in order. May contain secrets: never log values.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `true` when the timing profile models Commander's fresh TCP+TLS connection for this call; a driver
    /// must then not reuse a pooled connection. `false`: reuse the launch's keep-alive connection.
    pub fresh_connection: bool,
    /// The driver must give up (and report [`Input::HttpError`]) after this long.
    pub timeout: Duration,
}

/// What came back for an [`HttpRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    /// Raw `Set-Cookie` header values.
    pub set_cookies: Vec<String>,
    pub body: Vec<u8>,
}

/// Ask the driver to open the router WebSocket, or (see [`WsPhase`]) to prepare its connection first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConnect {
    pub url: String,
    /// Header name/value pairs. May contain secrets: never log values. Empty for [`WsPhase::Prepare`].
    pub headers: Vec<(String, String)>,
    /// Give up (and report [`Input::WsClosed`]) when the handshake has not finished after this long
    /// (for [`WsPhase::Prepare`]: the TCP connect and the TLS handshake).
    pub timeout: Duration,
    pub phase: WsPhase,
}

/// How a [`WsConnect`] uses the network.
///
/// A WebSocket is an HTTP/1.1 request (`GET` + `Upgrade`) on a TCP (+TLS) connection, and an HTTP
/// client may open that connection before it knows the request: the `fast` profile opens it at launch
/// start, in parallel with `bind_to_controller`, and sends the upgrade on it once bind's stickiness
/// cookie is known, so the handshakes no longer wait for bind. Exactly one connection is current: a new
/// `Prepare` or `Fresh` drops the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsPhase {
    /// Connect, handshake TLS and upgrade at once (every profile before the pre-connection; reopening).
    Fresh,
    /// Only connect and handshake TLS to the URL's host, send nothing, and hold the connection idle for
    /// the `Upgrade` that follows. Report nothing on success; [`Input::WsClosed`] if it cannot be opened
    /// in time, or if it closes (or the server sends anything) while idle: the core then opens the
    /// WebSocket `Fresh` instead.
    Prepare,
    /// Send the upgrade on the connection `Prepare` opened (still connecting: as soon as it is up).
    /// When there is no such connection any more, report [`Input::WsClosed`] at once: the core falls
    /// back to `Fresh` (a reused connection that fails is retried on a new one, as HTTP clients do).
    Upgrade,
}

/// One UDP datagram, received or to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// A byte stream to a TURN server (TURN over TCP, or over TLS for `turns:`), opened and owned by the
/// driver on the core's [`Output::StreamOpen`]. Numbered by the core, unique within one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

/// What happened on a stream the driver opened ([`Input::Stream`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The connection (and, for TLS, the handshake) is up; `local` is the socket's own address.
    Connected { local: SocketAddr },
    /// Bytes read from the stream, in order (any chunking: the core reassembles its framing).
    Data(Vec<u8>),
    /// The stream is gone: it could not be opened (refused, timed out, TLS failed), the server closed it,
    /// or it failed. `reason` is shown to users. Nothing more comes from this stream.
    Closed { reason: String },
}

/// The kind of a local ICE candidate the driver discovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateKind {
    /// A locally bound socket address.
    Host,
    /// A public mapping of `base` learned from a STUN server.
    ServerReflexive { base: SocketAddr },
    /// An address allocated on a TURN server for `base`. The core's relay layer finds these itself; a
    /// driver reports only host candidates.
    Relayed { base: SocketAddr },
}

/// Things a user (CLI, library caller) asks a node to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Open tunneled connection `conn` (the gateway connects to its target).
    OpenConnection { conn: ConnNo },
    /// Bytes from the local side of `conn`, to be sent through the tunnel.
    Send { conn: ConnNo, data: Vec<u8> },
    /// The local side of `conn` finished writing (TCP half-close).
    SendEof { conn: ConnNo },
    /// Receive-side credit: the driver wrote `bytes` of `conn`'s [`Output::ConnectionData`] to its local
    /// side (for [`crate::client::TERMINAL_CONN`] in a launch: of [`Output::TerminalOutput`], to stdout). The node stops reading the tube while a connection has `tube::delivery::RECEIVE_BUDGET`
    /// bytes handed out and not yet delivered (the mirror of [`Output::Backpressure`], which holds back
    /// the local *reader*), and closes a connection that delivers nothing for
    /// `tube::delivery::STALL_LIMIT` while it holds the tube (`CloseReason::Timeout`). Drivers report
    /// as they write (batching is fine, and once their queue for `conn` is empty they must report
    /// everything written).
    Delivered { conn: ConnNo, bytes: usize },
    /// Close `conn` with a reason.
    CloseConnection { conn: ConnNo, reason: CloseReason },
    /// Answer for a gateway: the target of `conn` is connected (or refused).
    TargetConnected { conn: ConnNo, ok: bool },
    /// Terminal session input (keystrokes or script bytes).
    TerminalInput { data: Vec<u8> },
    /// Terminal was resized to `cols`×`rows` characters.
    TerminalResize { cols: u16, rows: u16 },
    /// End the whole launch (closes every connection and the WebRTC session).
    Close,
}

/// Everything that can happen to a node, stamped with `now` by the caller of `handle_input`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time has passed (a timer from `poll_timeout` fired). Also fine to send spuriously.
    Timeout,
    HttpResponse {
        id: RequestId,
        response: HttpResponse,
    },
    /// The request failed below HTTP (connect refused, reset, TLS error, timeout). `error` is shown to users.
    HttpError {
        id: RequestId,
        error: String,
    },
    /// The WebSocket upgrade succeeded.
    WsOpened,
    /// One text frame from the router WebSocket.
    WsMessage(String),
    /// The WebSocket closed or could not be opened.
    WsClosed {
        reason: String,
    },
    /// A datagram arrived on one of the node's UDP sockets.
    Datagram(Datagram),
    /// The driver bound / discovered a local address usable as an ICE candidate.
    LocalCandidate {
        addr: SocketAddr,
        kind: CandidateKind,
    },
    /// The driver will report no more local candidates.
    GatheringComplete,
    Command(Command),
    /// Something happened on a stream opened by [`Output::StreamOpen`].
    Stream {
        stream: StreamId,
        event: StreamEvent,
    },
    /// Gateway role: the router relays a controller message (a `GatewayAction` JSON) to this gateway.
    /// `reply_to` identifies it; every [`Output::ControllerReply`] for it carries the same value.
    ControllerMessage {
        reply_to: u64,
        stream: bool,
        payload: String,
    },
}

/// Everything a node asks its driver to do or tells its user.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Http(HttpRequest),
    WsConnect(WsConnect),
    WsClose,
    Transmit(Datagram),
    /// Open a TCP connection to `to` (TLS on top when `tls_name` is set: verify the server's certificate
    /// for that name with the driver's trust policy), for TURN over TCP/TLS. Answer with
    /// [`Input::Stream`]: `Connected`, then `Data` as bytes arrive, and one final `Closed`. Bound the
    /// connect and handshake (the core also gives up on its own schedule and closes the stream).
    StreamOpen {
        stream: StreamId,
        to: SocketAddr,
        tls_name: Option<String>,
    },
    /// Write `data` to the stream, after everything written before. The driver buffers what the socket
    /// cannot take yet, bounded: past its bound it closes the stream (reporting `Closed`) rather than grow.
    StreamWrite {
        stream: StreamId,
        data: Vec<u8>,
    },
    /// Close the stream; report nothing more from it.
    StreamClose {
        stream: StreamId,
    },
    /// A named timing checkpoint (Commander's names where Commander has one).
    Checkpoint(Checkpoint),
    /// WebRTC is connected (ICE + DTLS), like Commander's `connection_state == "connected"`.
    Connected,
    /// The tube is ready: the data channel is open and connections may be opened.
    TubeReady,
    /// A tunneled connection is open end to end.
    ConnectionOpened {
        conn: ConnNo,
    },
    /// Bytes that arrived through the tunnel for `conn`.
    ConnectionData {
        conn: ConnNo,
        data: Vec<u8>,
    },
    /// The far side of `conn` finished writing.
    ConnectionEof {
        conn: ConnNo,
    },
    ConnectionClosed {
        conn: ConnNo,
        reason: CloseReason,
    },
    /// Flow control for the local side of `conn`: while `paused`, stop reading its socket (stop sending
    /// [`Command::Send`] for it). The node keeps what it was given meanwhile, up to a hard cap past which
    /// the connection is closed with an error rather than growing memory.
    Backpressure {
        conn: ConnNo,
        paused: bool,
    },
    /// Gateway role: connect `conn` to the configured target, then answer [`Command::TargetConnected`].
    ConnectTarget {
        conn: ConnNo,
    },
    /// Gateway role, terminal mode: the user's terminal for `conn` is now `cols`×`rows` characters
    /// (resize the PTY behind it).
    TargetResize {
        conn: ConnNo,
        cols: u16,
        rows: u16,
    },
    /// Terminal session output, for the user's screen. Receive-side flow control applies as to
    /// [`Output::ConnectionData`]: the driver credits what it wrote with [`Command::Delivered`] for
    /// [`crate::client::TERMINAL_CONN`] (the node stops reading the tube while the budget of output is
    /// handed out and not yet written; no stall limit for the terminal).
    TerminalOutput(Vec<u8>),
    /// Gateway role: a reply to [`Input::ControllerMessage`] `reply_to`. `payload` is the gateway's JSON
    /// (`{"is_ok":…,"data":…}`); the router puts the first reply of a non-streaming message in the HTTP
    /// response and pushes every other one to the client's WebSocket.
    ControllerReply {
        reply_to: u64,
        payload: String,
    },
    /// The node is finished; no more outputs follow except `Transmit`s of a graceful close.
    Finished(Result<(), LaunchError>),
}
