//! The router WebSocket on the node's event loop: tungstenite (rustls for `wss://`) over a non-blocking
//! mio socket, driven by readiness — connect, TLS and WebSocket handshakes, reads and the close handshake
//! all resume where `WouldBlock` stopped them. No thread; only a host *name* is resolved on the worker
//! pool (std has no non-blocking resolver), and the connect timeout is a deadline of the loop.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use pam_lite_core::{Input, WsConnect};
use pam_lite_driver_kit::ws::{self, Endpoint, Request, CLOSE_GRACE};
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, Message, WebSocket};

/// The loop's token for the WebSocket's socket.
pub(crate) const TOKEN: Token = Token(2);

type Stream = MaybeTlsStream<TcpStream>;

enum State {
    Idle,
    /// The worker pool resolves the host (see [`Resolve`]).
    Resolving(Request, Endpoint),
    Connecting {
        stream: TcpStream,
        request: Request,
        endpoint: Endpoint,
        rest: Vec<SocketAddr>,
    },
    Handshaking(Box<MidHandshake<ClientHandshake<Stream>>>),
    Open(Box<WebSocket<Stream>>),
    /// Closing on the core's request (or after the server's close): nothing more is reported.
    Closing(Box<WebSocket<Stream>>),
}

/// The WebSocket of one node.
pub(crate) struct WsConn {
    state: State,
    generation: u64,
    /// Connect timeout while opening, close grace while closing.
    deadline: Option<Instant>,
    tls: Arc<rustls::ClientConfig>,
    frame_limit: usize,
}

/// A host name the worker pool must resolve for connection `generation`.
pub(crate) struct Resolve {
    pub generation: u64,
    pub host: String,
    pub port: u16,
}

impl WsConn {
    pub(crate) fn new(tls: Arc<rustls::ClientConfig>, frame_limit: usize) -> Self {
        Self {
            state: State::Idle,
            generation: 0,
            deadline: None,
            tls,
            frame_limit,
        }
    }

    /// Start connecting (dropping any previous socket: its events are no longer wanted). `Ok(Some(..))`:
    /// the host must be resolved first (answer with [`WsConn::resolved`]); `Err`: failed at once.
    pub(crate) fn connect(
        &mut self,
        connect: WsConnect,
        registry: &Registry,
    ) -> Result<Option<Resolve>, Input> {
        tracing::debug!(path = %pam_lite_driver_kit::http::url_path(&connect.url), "websocket connect");
        self.state = State::Idle;
        self.generation += 1;
        self.deadline = Some(Instant::now() + connect.timeout);
        let (request, endpoint) = ws::build_request(&connect).map_err(|r| self.fail(r))?;
        match endpoint.host.parse::<IpAddr>() {
            Ok(ip) => {
                let addr = SocketAddr::new(ip, endpoint.port);
                self.dial(request, endpoint, vec![addr], registry)
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

    /// The pool's answer to a [`Resolve`]; ignored when that connection is no longer current.
    pub(crate) fn resolved(
        &mut self,
        generation: u64,
        addrs: Result<Vec<SocketAddr>, String>,
        registry: &Registry,
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
            Ok(addrs) => self.dial(request, endpoint, addrs, registry).err(),
            Err(reason) => Some(self.fail(format!("cannot resolve: {reason}"))),
        }
    }

    /// Close on the core's request: a close frame, briefly awaited; nothing more is reported.
    pub(crate) fn close(&mut self) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Open(mut ws) => {
                let _ = ws.close(None);
                self.deadline = Some(Instant::now() + CLOSE_GRACE);
                self.state = State::Closing(ws);
            }
            State::Closing(ws) => self.state = State::Closing(ws),
            _ => self.deadline = None, // dropping a connect or handshake aborts it
        }
    }

    /// When the loop must call [`WsConn::expire`] at the latest.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Past the deadline: a connect that did not finish in time fails, a close stops waiting.
    pub(crate) fn expire(&mut self, now: Instant) -> Option<Input> {
        if self.deadline.is_none_or(|d| d > now) {
            return None;
        }
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Closing(_) | State::Idle => {
                self.deadline = None;
                None
            }
            State::Open(ws) => {
                self.deadline = None;
                self.state = State::Open(ws);
                None
            }
            _ => Some(self.fail("WebSocket connect timed out".into())),
        }
    }

    /// The socket is ready: make all the progress possible, pushing what the core must learn to `out`.
    pub(crate) fn ready(&mut self, registry: &Registry, out: &mut Vec<Input>) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Connecting {
                stream,
                request,
                endpoint,
                rest,
            } => match connect_state(&stream) {
                Ok(false) => {
                    self.state = State::Connecting {
                        stream,
                        request,
                        endpoint,
                        rest,
                    }
                }
                Ok(true) => {
                    let _ = stream.set_nodelay(true);
                    let connector = Some(Connector::Rustls(self.tls.clone()));
                    let config = Some(ws::config(self.frame_limit));
                    let result =
                        tungstenite::client_tls_with_config(request, stream, config, connector);
                    self.handshaken(result.map(|(ws, _)| ws), out);
                }
                Err(e) => {
                    let last =
                        format!("cannot connect to {}:{}: {e}", endpoint.host, endpoint.port);
                    if rest.is_empty() {
                        out.push(self.fail(last));
                    } else if let Err(input) = self.dial(request, endpoint, rest, registry) {
                        out.push(input);
                    }
                }
            },
            State::Handshaking(mid) => self.handshaken((*mid).handshake().map(|(ws, _)| ws), out),
            State::Open(ws) => self.read_open(ws, out),
            State::Closing(ws) => self.drain_closing(ws),
            other => self.state = other,
        }
    }

    fn dial(
        &mut self,
        request: Request,
        endpoint: Endpoint,
        mut addrs: Vec<SocketAddr>,
        registry: &Registry,
    ) -> Result<(), Input> {
        let addr = addrs.remove(0);
        let mut stream = TcpStream::connect(addr)
            .map_err(|e| self.fail(format!("cannot connect to {addr}: {e}")))?;
        registry
            .register(&mut stream, TOKEN, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| self.fail(format!("cannot watch the WebSocket socket: {e}")))?;
        self.state = State::Connecting {
            stream,
            request,
            endpoint,
            rest: addrs,
        };
        Ok(())
    }

    fn handshaken(
        &mut self,
        result: Result<WebSocket<Stream>, HandshakeError<ClientHandshake<Stream>>>,
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

    fn read_open(&mut self, mut ws: Box<WebSocket<Stream>>, out: &mut Vec<Input>) {
        let reason = loop {
            match ws.read() {
                Ok(Message::Text(text)) => out.push(Input::WsMessage(text.as_str().to_owned())),
                Ok(Message::Close(frame)) => break ws::closed_by_server(frame.as_ref()),
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
        // Let the close handshake finish in the background of the loop, reporting nothing more.
        self.deadline = Some(Instant::now() + CLOSE_GRACE);
        self.drain_closing(ws);
    }

    fn drain_closing(&mut self, mut ws: Box<WebSocket<Stream>>) {
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
fn connect_state(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}
