//! The router WebSocket (request and bounds from the kit) inside the node's own task (async-tungstenite over futures-rustls), so a node
//! costs no thread for its WebSocket.
//!
//! [`WsSlot`] is polled by the node loop through [`WsSlot::next`], a cancel-safe future: the loop races it
//! against the other sources every iteration, and dropping it never loses a frame or a handshake.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_tungstenite::tungstenite::{self, Message};
use async_tungstenite::WebSocketStream;
use futures_rustls::TlsConnector;
use pam_lite_core::{Input, WsConnect};
use rustls::pki_types::ServerName;
use smol::future::FutureExt as _;
use smol::io::{AsyncRead, AsyncWrite};
use smol::net::TcpStream;
use smol::stream::StreamExt as _;
use smol::Timer;

use pam_lite_driver_kit::ws::CLOSE_GRACE;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Ws = WebSocketStream<MaybeTls>;

/// The WebSocket state of one node.
#[derive(Default)]
pub enum WsSlot {
    #[default]
    Idle,
    Connecting(BoxFuture<Result<Ws, String>>),
    Open(Box<Ws>),
    /// Closing on the core's request: nothing more is reported.
    Closing(BoxFuture<()>),
}

impl WsSlot {
    /// Start connecting (dropping any previous socket: its events are no longer wanted).
    pub fn connect(
        &mut self,
        connect: WsConnect,
        tls: Arc<rustls::ClientConfig>,
        frame_limit: usize,
    ) {
        tracing::debug!(path = %pam_lite_driver_kit::http::url_path(&connect.url), "websocket connect");
        let timeout = connect.timeout;
        let handshake = handshake(connect, tls, frame_limit).or(async move {
            Timer::after(timeout).await;
            Err("WebSocket connect timed out".to_owned())
        });
        *self = WsSlot::Connecting(Box::pin(handshake));
    }

    /// Close on the core's request: send a close frame, wait briefly for the answer, report nothing.
    pub fn close(&mut self) {
        // Connecting: dropping the handshake aborts it. Closing or idle: nothing more to do.
        match std::mem::take(self) {
            WsSlot::Open(ws) => self.close_open(ws),
            WsSlot::Closing(fut) => *self = WsSlot::Closing(fut),
            WsSlot::Idle | WsSlot::Connecting(_) => {}
        }
    }

    fn close_open(&mut self, mut ws: Box<Ws>) {
        *self = WsSlot::Closing(Box::pin(async move {
            let close = async {
                let _ = ws.close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
            };
            close
                .or(async {
                    Timer::after(CLOSE_GRACE).await;
                })
                .await;
            tracing::debug!("websocket closed on request");
        }));
    }

    /// The next input from the socket; pending forever while idle. Cancel-safe.
    pub async fn next(&mut self) -> Option<Input> {
        loop {
            match self {
                WsSlot::Idle => return std::future::pending().await,
                WsSlot::Closing(fut) => {
                    fut.await;
                    *self = WsSlot::Idle;
                    return None;
                }
                WsSlot::Connecting(fut) => match fut.await {
                    Ok(ws) => {
                        *self = WsSlot::Open(Box::new(ws));
                        return Some(Input::WsOpened);
                    }
                    Err(reason) => {
                        tracing::debug!(%reason, "websocket connect failed");
                        *self = WsSlot::Idle;
                        return Some(Input::WsClosed { reason });
                    }
                },
                WsSlot::Open(ws) => {
                    let reason = match ws.next().await {
                        Some(Ok(Message::Text(text))) => {
                            return Some(Input::WsMessage(text.as_str().to_owned()))
                        }
                        Some(Ok(Message::Close(frame))) => {
                            pam_lite_driver_kit::ws::closed_by_server(frame.as_ref())
                        }
                        Some(Ok(_)) => continue, // binary, ping, pong: nothing for the core
                        Some(Err(
                            tungstenite::Error::ConnectionClosed
                            | tungstenite::Error::AlreadyClosed,
                        ))
                        | None => "connection closed".to_owned(),
                        Some(Err(e)) => e.to_string(),
                    };
                    tracing::debug!(%reason, "websocket closed");
                    // The close handshake (if any) finishes in the background of the dropped stream.
                    *self = WsSlot::Idle;
                    return Some(Input::WsClosed { reason });
                }
            }
        }
    }
}

async fn handshake(
    connect: WsConnect,
    tls: Arc<rustls::ClientConfig>,
    frame_limit: usize,
) -> Result<Ws, String> {
    let (request, endpoint) = pam_lite_driver_kit::ws::build_request(&connect)?;
    let (host, port, secure) = (endpoint.host, endpoint.port, endpoint.secure);
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream = if secure {
        let name = ServerName::try_from(host.clone())
            .map_err(|_| format!("invalid TLS server name {host:?}"))?;
        let tls = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("WebSocket handshake failed: TLS error: {e}"))?;
        MaybeTls::Tls(Box::new(tls))
    } else {
        MaybeTls::Plain(tcp)
    };
    let config = pam_lite_driver_kit::ws::config(frame_limit);
    let (ws, _response) =
        async_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| format!("WebSocket handshake failed: {e}"))?;
    Ok(ws)
}

/// A TCP stream, encrypted for `wss://`.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_close(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
