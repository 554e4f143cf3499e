//! The router WebSocket client, once for every runtime: tungstenite (rustls for `wss://`) over a
//! non-blocking socket the runtime wraps for its own waiting, driven by readiness — connect, TLS and
//! WebSocket handshakes, reads and the close handshake all resume where `WouldBlock` stopped them. A
//! runtime only waits (as for [`crate::stream::Streams`]):
//!
//! * [`Client::connect`] on `Output::WsConnect`, wrapping the connecting socket into its own type
//!   (registering it); when the host is a name, resolve it (std has no non-blocking resolver: a worker
//!   thread, an async resolver…) and answer with [`Client::resolved`]. The same call serves every
//!   [`WsPhase`]: a `Prepare` only connects and handshakes TLS, then holds the connection idle (watching
//!   it: a close while idle is reported as `WsClosed`); the `Upgrade` that follows sends the WebSocket
//!   request on it (or, while it is still connecting, as soon as it is up);
//! * on readiness of [`Client::socket`] (readable; writable while [`Client::wants_write`], or always with
//!   edge-triggered readiness) call [`Client::ready`] and feed what it pushed;
//! * wake up at [`Client::deadline`] and call [`Client::expire`] (the connect timeout, the close grace);
//! * [`Client::close`] on `Output::WsClose`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pam_lite_core::{Input, WsConnect, WsPhase};
use socket2::SockRef;
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, Message, WebSocket};

use super::{build_request, closed_by_server, config, Endpoint, Request, CLOSE_GRACE};

/// The runtime's socket as tungstenite's stream: reads and writes go through `socket2::SockRef`, and a
/// write that would block is remembered (the runtime then waits for writability).
pub struct Sock<S> {
    socket: S,
    write_blocked: Arc<AtomicBool>,
    /// While set, reads say `WouldBlock` without touching the socket (see [`Client::connect`]'s upgrade).
    reads_held: Arc<AtomicBool>,
}

impl<S> Read for Sock<S>
where
    for<'s> SockRef<'s>: From<&'s S>,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reads_held.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        (&*SockRef::from(&self.socket)).read(buf)
    }
}

impl<S> Write for Sock<S>
where
    for<'s> SockRef<'s>: From<&'s S>,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = (&*SockRef::from(&self.socket)).write(buf);
        let blocked = matches!(&written, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        self.write_blocked.store(blocked, Ordering::Relaxed);
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Stream<S> = MaybeTlsStream<Sock<S>>;

enum State<S>
where
    for<'s> SockRef<'s>: From<&'s S>,
{
    Idle,
    /// The runtime resolves the host (see [`Resolve`]). No request yet: a pre-connection.
    Resolving(Option<Request>, Endpoint),
    Connecting {
        socket: S,
        request: Option<Request>,
        endpoint: Endpoint,
        rest: Vec<SocketAddr>,
    },
    /// A pre-connection's TLS handshake (the upgrade follows when it is done and asked for).
    Securing {
        tls: Box<rustls::StreamOwned<rustls::ClientConnection, Sock<S>>>,
        request: Option<Request>,
    },
    /// A pre-connection, up and idle, waiting for its upgrade.
    Ready(Box<Stream<S>>),
    Handshaking(Box<MidHandshake<ClientHandshake<Stream<S>>>>),
    Open(Box<WebSocket<Stream<S>>>),
    /// Closing on the core's request (or after the server's close): nothing more is reported.
    Closing(Box<WebSocket<Stream<S>>>),
}

/// The WebSocket of one node (see the module docs). `S` is the runtime's wrapper of the socket.
pub struct Client<S>
where
    for<'s> SockRef<'s>: From<&'s S>,
{
    state: State<S>,
    generation: u64,
    /// Connect timeout while opening, close grace while closing.
    deadline: Option<Instant>,
    tls: Arc<rustls::ClientConfig>,
    frame_limit: usize,
    write_blocked: Arc<AtomicBool>,
    reads_held: Arc<AtomicBool>,
}

/// A host name the runtime must resolve for connection `generation` (answer with [`Client::resolved`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolve {
    pub generation: u64,
    pub host: String,
    pub port: u16,
}

/// The answer to a [`Resolve`]: its connection attempt and the addresses (or why there are none).
pub type Resolution = (u64, Result<Vec<SocketAddr>, String>);

impl Resolve {
    /// Resolve the name, blocking (run it where blocking is allowed: a worker thread, a blocking pool).
    pub fn run(&self) -> Result<Vec<SocketAddr>, String> {
        use std::net::ToSocketAddrs;
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map(Iterator::collect)
            .map_err(|e| e.to_string())
    }
}

impl<S> Client<S>
where
    for<'s> SockRef<'s>: From<&'s S>,
{
    /// `tls`: the driver's TLS policy; `frame_limit`: [`crate::DriverConfig::ws_frame_limit`].
    pub fn new(tls: Arc<rustls::ClientConfig>, frame_limit: usize) -> Self {
        Self {
            state: State::Idle,
            generation: 0,
            deadline: None,
            tls,
            frame_limit,
            write_blocked: Arc::default(),
            reads_held: Arc::default(),
        }
    }

    /// Start connecting (dropping any previous socket: its events are no longer wanted). `wrap` turns
    /// the connecting non-blocking socket into the runtime's type. `Ok(Some(..))`: the host must be
    /// resolved first; `Err`: failed at once.
    ///
    /// For [`WsPhase::Upgrade`] nothing is connected: the request goes on the pre-connection, and
    /// `Err(input)` may also carry what its handshake produced at once (there is no pre-connection any
    /// more: `WsClosed`). The runtime feeds whatever `Err` holds.
    pub fn connect(
        &mut self,
        connect: WsConnect,
        wrap: impl FnMut(TcpStream) -> io::Result<S>,
    ) -> Result<Option<Resolve>, Input> {
        let phase = connect.phase;
        tracing::debug!(path = %crate::http::url_path(&connect.url), ?phase, "websocket connect");
        if phase == WsPhase::Upgrade {
            return self.upgrade(&connect).map(|()| None);
        }
        self.state = State::Idle;
        self.generation += 1;
        self.deadline = Some(Instant::now() + connect.timeout);
        let (request, endpoint) = build_request(&connect).map_err(|r| self.fail(r))?;
        let request = (phase == WsPhase::Fresh).then_some(request);
        match endpoint.host.parse::<IpAddr>() {
            Ok(ip) => {
                let addr = SocketAddr::new(ip, endpoint.port);
                self.dial(request, endpoint, vec![addr], wrap)
                    .map(|()| None)
            }
            Err(_) => {
                let resolve = Resolve {
                    generation: self.generation,
                    host: endpoint.host.clone(),
                    port: endpoint.port,
                };
                self.state = State::Resolving(request, endpoint);
                Ok(Some(resolve))
            }
        }
    }

    /// The upgrade on the pre-connection: sent now if it is up, else as soon as it is.
    fn upgrade(&mut self, connect: &WsConnect) -> Result<(), Input> {
        let (request, _) = build_request(connect).map_err(|r| self.fail(r))?;
        let deadline = Some(Instant::now() + connect.timeout);
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Ready(stream) => {
                self.deadline = deadline;
                let config = Some(config(self.frame_limit));
                // Write the request, read nothing: what a fast server answers stays in the socket and
                // announces itself by readiness (read here, its frames would have no way out but one
                // input). So the handshake can only be under way, or have failed writing.
                self.reads_held.store(true, Ordering::Relaxed);
                let result = tungstenite::client::client_with_config(request, *stream, config);
                self.reads_held.store(false, Ordering::Relaxed);
                let mut out = Vec::new();
                self.handshaken(result.map(|(ws, _)| ws), &mut out);
                out.into_iter().next().map_or(Ok(()), Err)
            }
            State::Resolving(None, endpoint) => {
                self.deadline = deadline;
                self.state = State::Resolving(Some(request), endpoint);
                Ok(())
            }
            State::Connecting {
                socket,
                request: None,
                endpoint,
                rest,
            } => {
                self.deadline = deadline;
                let request = Some(request);
                self.state = State::Connecting {
                    socket,
                    request,
                    endpoint,
                    rest,
                };
                Ok(())
            }
            State::Securing { tls, request: None } => {
                self.deadline = deadline;
                let request = Some(request);
                self.state = State::Securing { tls, request };
                Ok(())
            }
            _ => Err(self.fail("no prepared connection to upgrade".into())),
        }
    }

    /// The answer to a [`Resolve`]; ignored when that connection is no longer current.
    pub fn resolved(
        &mut self,
        generation: u64,
        addrs: Result<Vec<SocketAddr>, String>,
        wrap: impl FnMut(TcpStream) -> io::Result<S>,
    ) -> Option<Input> {
        if generation != self.generation || !matches!(self.state, State::Resolving(..)) {
            return None;
        }
        let State::Resolving(request, endpoint) = std::mem::replace(&mut self.state, State::Idle)
        else {
            return None;
        };
        let result = addrs.and_then(|addrs| match addrs.is_empty() {
            true => Err(format!("{} has no address", endpoint.host)),
            false => Ok(addrs),
        });
        match result {
            Ok(addrs) => self.dial(request, endpoint, addrs, wrap).err(),
            Err(reason) => Some(self.fail(format!("cannot resolve: {reason}"))),
        }
    }

    /// Close on the core's request: a close frame, briefly awaited; nothing more is reported.
    pub fn close(&mut self) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Open(mut ws) => {
                let _ = ws.close(None);
                let _ = ws.flush();
                self.deadline = Some(Instant::now() + CLOSE_GRACE);
                self.state = State::Closing(ws);
            }
            State::Closing(ws) => self.state = State::Closing(ws),
            _ => self.deadline = None, // dropping a connect or handshake aborts it
        }
    }

    /// When [`Client::expire`] must be called at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Past the deadline: a connect that did not finish in time fails, a close stops waiting.
    pub fn expire(&mut self, now: Instant) -> Option<Input> {
        if self.deadline.is_none_or(|d| d > now) {
            return None;
        }
        self.deadline = None;
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Closing(_) | State::Idle => None,
            State::Open(ws) => {
                self.state = State::Open(ws);
                None
            }
            _ => Some(self.fail("WebSocket connect timed out".into())),
        }
    }

    /// The socket to wait on, if any.
    pub fn socket(&self) -> Option<&S> {
        let stream = match &self.state {
            State::Connecting { socket, .. } => return Some(socket),
            State::Securing { tls, .. } => return Some(&tls.sock.socket),
            State::Ready(stream) => stream,
            State::Handshaking(mid) => mid.get_ref().get_ref(),
            State::Open(ws) | State::Closing(ws) => ws.get_ref(),
            State::Idle | State::Resolving(..) => return None,
        };
        match stream {
            MaybeTlsStream::Plain(s) => Some(&s.socket),
            MaybeTlsStream::Rustls(s) => Some(&s.get_ref().socket),
            _ => None,
        }
    }

    /// Whether the socket's writability matters now (connecting, or a write would have blocked).
    pub fn wants_write(&self) -> bool {
        matches!(self.state, State::Connecting { .. }) || self.write_blocked.load(Ordering::Relaxed)
    }

    /// The socket is ready: make all the progress possible, pushing what the core must learn to `out`.
    /// `wrap` as for [`Client::connect`] (a failed connect tries the host's next address).
    pub fn ready(&mut self, out: &mut Vec<Input>, wrap: impl FnMut(TcpStream) -> io::Result<S>) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Connecting {
                socket,
                request,
                endpoint,
                rest,
            } => match connect_state(&SockRef::from(&socket)) {
                Ok(false) => {
                    self.state = State::Connecting {
                        socket,
                        request,
                        endpoint,
                        rest,
                    }
                }
                Ok(true) => {
                    let _ = SockRef::from(&socket).set_tcp_nodelay(true);
                    self.write_blocked.store(false, Ordering::Relaxed);
                    let sock = Sock {
                        socket,
                        write_blocked: self.write_blocked.clone(),
                        reads_held: self.reads_held.clone(),
                    };
                    let Some(request) = request else {
                        return self.prepared(sock, &endpoint, out);
                    };
                    let connector = Some(Connector::Rustls(self.tls.clone()));
                    let config = Some(config(self.frame_limit));
                    let result =
                        tungstenite::client_tls_with_config(request, sock, config, connector);
                    self.handshaken(result.map(|(ws, _)| ws), out);
                }
                Err(e) => {
                    let last =
                        format!("cannot connect to {}:{}: {e}", endpoint.host, endpoint.port);
                    if rest.is_empty() {
                        out.push(self.fail(last));
                    } else if let Err(input) = self.dial(request, endpoint, rest, wrap) {
                        out.push(input);
                    }
                }
            },
            State::Securing { tls, request } => self.secure(tls, request, out),
            State::Ready(stream) => self.idle(stream, out),
            State::Handshaking(mid) => self.handshaken((*mid).handshake().map(|(ws, _)| ws), out),
            State::Open(ws) => self.read_open(ws, out),
            State::Closing(ws) => self.drain_closing(ws),
            other => self.state = other,
        }
    }

    /// A pre-connection's TCP connect finished: TLS next (`wss://`), or idle until the upgrade.
    fn prepared(&mut self, sock: Sock<S>, endpoint: &Endpoint, out: &mut Vec<Input>) {
        if !endpoint.secure {
            return self.idle(Box::new(MaybeTlsStream::Plain(sock)), out);
        }
        let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone());
        let connection = name.map_err(|e| e.to_string()).and_then(|n| {
            rustls::ClientConnection::new(self.tls.clone(), n).map_err(|e| e.to_string())
        });
        match connection {
            Ok(c) => self.secure(Box::new(rustls::StreamOwned::new(c, sock)), None, out),
            Err(e) => out.push(self.fail(format!("TLS setup failed: {e}"))),
        }
    }

    /// Drive a pre-connection's TLS handshake as far as the socket allows.
    fn secure(
        &mut self,
        mut tls: Box<rustls::StreamOwned<rustls::ClientConnection, Sock<S>>>,
        request: Option<Request>,
        out: &mut Vec<Input>,
    ) {
        while tls.conn.is_handshaking() {
            match tls.conn.complete_io(&mut tls.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.state = State::Securing { tls, request };
                    return;
                }
                Err(e) => return out.push(self.fail(format!("TLS handshake failed: {e}"))),
            }
        }
        let stream = MaybeTlsStream::Rustls(*tls);
        match request {
            Some(request) => {
                let config = Some(config(self.frame_limit));
                let result = tungstenite::client::client_with_config(request, stream, config);
                self.handshaken(result.map(|(ws, _)| ws), out);
            }
            None => {
                self.deadline = None; // idle: its use, the upgrade, has its own bound
                self.idle(Box::new(stream), out);
            }
        }
    }

    /// A pre-connection waiting for its upgrade: it must stay silent. A close (or anything else: an
    /// HTTP server says nothing before a request) means it is gone, which the core hears as `WsClosed`.
    fn idle(&mut self, mut stream: Box<Stream<S>>, out: &mut Vec<Input>) {
        let mut byte = [0u8; 1];
        let gone = match &mut *stream {
            MaybeTlsStream::Plain(sock) => match sock.read(&mut byte) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Ok(0) => Some("closed by the server".to_owned()),
                Ok(_) => Some("the server sent data before the request".to_owned()),
                Err(e) => Some(e.to_string()),
            },
            MaybeTlsStream::Rustls(tls) => loop {
                // Post-handshake TLS records (TLS 1.3 session tickets) are fine; a close is not.
                match tls.conn.read_tls(&mut tls.sock) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                    Ok(0) => break Some("closed by the server".to_owned()),
                    Err(e) => break Some(e.to_string()),
                    Ok(_) => {}
                }
                if let Err(e) = tls.conn.process_new_packets() {
                    break Some(e.to_string());
                }
                match tls.conn.reader().read(&mut byte) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Ok(0) => break Some("closed by the server (TLS)".to_owned()),
                    Ok(_) => break Some("the server sent data before the request".to_owned()),
                    Err(e) => break Some(e.to_string()),
                }
            },
            _ => Some("unsupported stream".to_owned()),
        };
        match gone {
            None => self.state = State::Ready(stream),
            Some(why) => out.push(self.fail(format!("the prepared connection is gone: {why}"))),
        }
    }

    fn dial(
        &mut self,
        request: Option<Request>,
        endpoint: Endpoint,
        mut addrs: Vec<SocketAddr>,
        mut wrap: impl FnMut(TcpStream) -> io::Result<S>,
    ) -> Result<(), Input> {
        let addr = addrs.remove(0);
        let socket = crate::stream::connect(addr)
            .map_err(|e| self.fail(format!("cannot connect to {addr}: {e}")))?;
        let socket = wrap(socket)
            .map_err(|e| self.fail(format!("cannot watch the WebSocket socket: {e}")))?;
        self.state = State::Connecting {
            socket,
            request,
            endpoint,
            rest: addrs,
        };
        Ok(())
    }

    fn handshaken(
        &mut self,
        result: Result<WebSocket<Stream<S>>, HandshakeError<ClientHandshake<Stream<S>>>>,
        out: &mut Vec<Input>,
    ) {
        match result {
            Ok(ws) => {
                self.deadline = None;
                out.push(Input::WsOpened);
                // Frames that came with the handshake are buffered already: no readiness will announce them.
                self.read_open(Box::new(ws), out);
            }
            Err(HandshakeError::Interrupted(mid)) => self.state = State::Handshaking(Box::new(mid)),
            Err(HandshakeError::Failure(e)) => {
                out.push(self.fail(format!("WebSocket handshake failed: {e}")))
            }
        }
    }

    fn read_open(&mut self, mut ws: Box<WebSocket<Stream<S>>>, out: &mut Vec<Input>) {
        let reason = loop {
            match ws.read() {
                Ok(Message::Text(text)) => out.push(Input::WsMessage(text.as_str().to_owned())),
                Ok(Message::Close(frame)) => break closed_by_server(frame.as_ref()),
                Ok(_) => {} // binary, ping, pong: nothing for the core (pongs are queued by tungstenite)
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = ws.flush();
                    self.state = State::Open(ws);
                    return;
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    break "connection closed".to_owned()
                }
                Err(e) => {
                    // A failed read (an oversized frame, a protocol violation, I/O) leaves tungstenite
                    // mid-frame: reading on would wait for (and buffer) the rest of the frame it just
                    // refused, so the socket is dropped here instead of drained (fault matrix: a 96 MiB
                    // message used to grow the process past 300 MiB and trip tungstenite's assertion).
                    let reason = e.to_string();
                    tracing::debug!(%reason, "websocket failed");
                    out.push(Input::WsClosed { reason });
                    self.state = State::Idle;
                    self.deadline = None;
                    return;
                }
            }
        };
        tracing::debug!(%reason, "websocket closed");
        out.push(Input::WsClosed { reason });
        // Let the close handshake finish in the background, reporting nothing more.
        self.deadline = Some(Instant::now() + CLOSE_GRACE);
        self.drain_closing(ws);
    }

    fn drain_closing(&mut self, mut ws: Box<WebSocket<Stream<S>>>) {
        loop {
            match ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = ws.flush();
                    self.state = State::Closing(ws);
                    return;
                }
                Err(_) => {
                    tracing::debug!("websocket closed on request");
                    self.deadline = None;
                    return;
                }
            }
        }
    }

    /// Give up on the current connection with `reason` (the socket, if any, is dropped).
    fn fail(&mut self, reason: String) -> Input {
        tracing::debug!(%reason, "websocket connect failed");
        self.state = State::Idle;
        self.deadline = None;
        Input::WsClosed { reason }
    }
}

/// Whether a non-blocking connect has finished (`Ok(true)`), is still under way, or failed.
fn connect_state(socket: &socket2::Socket) -> io::Result<bool> {
    if let Some(e) = socket.take_error()? {
        return Err(e);
    }
    match socket.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}
