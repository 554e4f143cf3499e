//! The router WebSocket on a thread of its own (tungstenite over rustls).
//!
//! The core only ever *receives* on this socket (it sends through HTTP), so the thread reads with a short
//! socket timeout and checks between reads whether the driver asked it to close. Everything it learns is
//! handed to an `emit` callback as an [`Input`]; the driver decides whether that input is still current.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_core::{Input, WsConnect};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Connector, Message};

/// How often an idle reader looks at its close flag.
const POLL: Duration = Duration::from_millis(20);
/// How long a requested close may take (close handshake) before the socket is just dropped.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

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

/// The request with the core's headers, and where to connect. Errors never quote header values.
pub fn build_request(
    connect: &WsConnect,
) -> Result<(tungstenite::handshake::client::Request, String, u16), String> {
    let mut request = connect
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("invalid WebSocket URL: {e}"))?;
    for (name, value) in &connect.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
        request.headers_mut().append(name, value);
    }
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or("WebSocket URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(port), _) => port,
        (None, Some("wss")) => 443,
        (None, Some("ws")) => 80,
        _ => return Err("WebSocket URL must be ws:// or wss://".into()),
    };
    Ok((request, host, port))
}

/// Connect to the first address of `host:port` that answers before `deadline`.
pub fn connect_tcp(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, String> {
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
    tracing::debug!(path = %crate::http::url_path(&connect.url), "websocket connect");
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
            Ok(Message::Close(frame)) => match frame {
                Some(f) => format!("closed by server ({}: {})", u16::from(f.code), f.reason),
                None => "closed by server".to_owned(),
            },
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
    let (request, host, port) = build_request(connect)?;
    let stream = connect_tcp(&host, port, deadline)?;
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
    let config = WebSocketConfig::default()
        .max_frame_size(Some(frame_limit))
        .max_message_size(Some(frame_limit));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(url: &str, headers: &[(&str, &str)]) -> WsConnect {
        WsConnect {
            url: url.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn request_carries_headers_and_default_ports() {
        let (req, host, port) = build_request(&connect(
            "wss://router.example/ws?x=1",
            &[("Authorization", "s3cret")],
        ))
        .unwrap();
        assert_eq!((host.as_str(), port), ("router.example", 443));
        assert_eq!(req.headers()["authorization"], "s3cret");
        let (_, host, port) = build_request(&connect("ws://[::1]:81/", &[])).unwrap();
        assert_eq!((host.as_str(), port), ("::1", 81));
    }

    #[test]
    fn bad_header_value_is_reported_without_the_value() {
        let err =
            build_request(&connect("ws://h/", &[("X-Token", "line\nbreak-secret")])).unwrap_err();
        assert!(err.contains("x-token"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn non_ws_scheme_is_refused() {
        assert!(build_request(&connect("http://h/", &[])).is_err());
    }
}
