//! A WebSocket client on a thread of its own (blocking tungstenite over rustls), for tests that talk to a
//! router directly (the emulator's socket tests). The drivers do not use it: they run the WebSocket on
//! their event loops. It reports what it learns as the same [`Input`]s a driver feeds the core.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_core::{Input, WsConnect};
use tungstenite::handshake::HandshakeError;
use tungstenite::{Connector, Message};

/// How often an idle reader looks at its close flag.
const POLL: Duration = Duration::from_millis(20);
/// How long a requested close may take (close handshake) before the socket is just dropped.
const CLOSE_GRACE: Duration = pam_lite_driver_kit::ws::CLOSE_GRACE;

/// Control of one WebSocket thread. Dropping it closes the socket too.
#[derive(Debug)]
pub struct WsWorker {
    close: Arc<AtomicBool>,
}

impl WsWorker {
    /// Ask the thread to send a close frame and stop; it reports nothing more.
    pub fn close(&self) {
        self.close.store(true, Ordering::Relaxed);
    }
}

impl Drop for WsWorker {
    fn drop(&mut self) {
        self.close();
    }
}

/// Open `connect` on a new thread. `emit` receives `WsOpened`, every `WsMessage`, and a final `WsClosed`
/// (unless [`WsWorker::close`] was called first); it returns `false` when nobody listens any more.
pub fn spawn(
    connect: WsConnect,
    tls: Arc<rustls::ClientConfig>,
    frame_limit: usize,
    emit: impl FnMut(Input) -> bool + Send + 'static,
) -> io::Result<WsWorker> {
    let close = Arc::new(AtomicBool::new(false));
    let flag = close.clone();
    thread::Builder::new()
        .name("pam-lite-ws".into())
        .spawn(move || run(connect, tls, frame_limit, &flag, emit))?;
    Ok(WsWorker { close })
}

/// Connect to the first address of `host:port` that answers before `deadline`.
fn connect_tcp(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} has no address");
    for addr in addrs {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Err("WebSocket connect timed out".into());
        };
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1))) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

fn run(
    connect: WsConnect,
    tls: Arc<rustls::ClientConfig>,
    frame_limit: usize,
    close: &AtomicBool,
    mut emit: impl FnMut(Input) -> bool,
) {
    let deadline = Instant::now() + connect.timeout;
    tracing::debug!(path = %pam_lite_driver_kit::http::url_path(&connect.url), "websocket connect");
    let mut ws = match handshake(&connect, tls, frame_limit, deadline) {
        Ok(ws) => ws,
        Err(reason) => {
            tracing::debug!(%reason, "websocket connect failed");
            if !close.load(Ordering::Relaxed) {
                emit(Input::WsClosed { reason });
            }
            return;
        }
    };
    if close.load(Ordering::Relaxed) || !emit(Input::WsOpened) {
        let _ = ws.0.close(None);
        return;
    }
    let (mut ws, control) = ws;
    let _ = control.set_read_timeout(Some(POLL));
    let _ = control.set_write_timeout(Some(CLOSE_GRACE));
    loop {
        if close.load(Ordering::Relaxed) {
            let until = Instant::now() + CLOSE_GRACE;
            let _ = ws.close(None);
            while Instant::now() < until && ws.read().is_ok() {}
            tracing::debug!("websocket closed on request");
            return;
        }
        let reason = match ws.read() {
            Ok(Message::Text(text)) => {
                if emit(Input::WsMessage(text.as_str().to_owned())) {
                    continue;
                }
                let _ = ws.close(None);
                return;
            }
            Ok(Message::Close(frame)) => pam_lite_driver_kit::ws::closed_by_server(frame.as_ref()),
            Ok(other) => {
                tracing::trace!(kind = ?std::mem::discriminant(&other), "websocket non-text frame ignored");
                continue;
            }
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                "connection closed".to_owned()
            }
            Err(e) => e.to_string(),
        };
        // Let a close handshake finish, then report.
        let until = Instant::now() + CLOSE_GRACE;
        while Instant::now() < until && ws.read().is_ok() {}
        tracing::debug!(%reason, "websocket closed");
        if !close.load(Ordering::Relaxed) {
            emit(Input::WsClosed { reason });
        }
        return;
    }
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn handshake(
    connect: &WsConnect,
    tls: Arc<rustls::ClientConfig>,
    frame_limit: usize,
    deadline: Instant,
) -> Result<(Ws, TcpStream), String> {
    let (request, endpoint) = pam_lite_driver_kit::ws::build_request(connect)?;
    let stream = connect_tcp(&endpoint.host, endpoint.port, deadline)?;
    let control = stream.try_clone().map_err(|e| e.to_string())?;
    let left = deadline
        .checked_duration_since(Instant::now())
        .ok_or("WebSocket connect timed out")?
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.set_write_timeout(Some(left)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| e.to_string())?;
    let config = pam_lite_driver_kit::ws::config(frame_limit);
    match tungstenite::client_tls_with_config(
        request,
        stream,
        Some(config),
        Some(Connector::Rustls(tls)),
    ) {
        Ok((ws, _response)) => Ok((ws, control)),
        Err(HandshakeError::Interrupted(_)) => Err("WebSocket handshake timed out".into()),
        Err(HandshakeError::Failure(tungstenite::Error::Io(e)))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err("WebSocket handshake timed out".into())
        }
        Err(HandshakeError::Failure(e)) => Err(format!("WebSocket handshake failed: {e}")),
    }
}
