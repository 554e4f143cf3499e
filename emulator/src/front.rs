//! The emulated router's front door: HTTP/1.1 and the WebSocket on one 127.0.0.1 port (optionally TLS),
//! with the network's timing laid on top.
//!
//! hyper parses HTTP; async-tungstenite speaks WebSocket over hyper's upgraded connection; everything runs on
//! one smol executor thread. What the router *says* is decided by the sans-IO router core behind the
//! [`Hub`]; this module only adds what a real network would: half the router RTT on every request and every
//! response or WebSocket message, the handshake cost of a new TCP (+TLS) connection when it is accepted,
//! the router's WebSocket authentication time, scripted HTTP failures (502/503/504 from a load balancer) and
//! a WebSocket that drops after a while.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_rustls::TlsAcceptor;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, SET_COOKIE, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use pam_lite_core::Method;
use smol::future::FutureExt as _;
use smol::io::{AsyncRead, AsyncWrite};
use smol::stream::StreamExt as _;
use smol::Executor;
use smol_hyper::rt::{FuturesIo, SmolTimer};

use crate::hub::{Hub, WsPush};
use crate::ws_faults;

/// The WebSocket endpoint.
pub const WS_PATH: &str = "/api/user/client";
/// Largest request body the router accepts (a real offer is a few KB).
pub const MAX_BODY: usize = 1 << 20;
/// The emulator never holds an HTTP request longer than this (the router's own message timeout is shorter).
pub const MAX_HOLD: Duration = Duration::from_secs(180);
/// A TLS handshake must finish within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A scripted HTTP failure: the next `times` requests whose path starts with `path_prefix` get `status`
/// without reaching the router (what a load balancer in front of a cold or overloaded router does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFault {
    pub path_prefix: String,
    pub status: u16,
    pub times: u32,
}

/// The network's timing and failures on the router path. The default is a perfect, instant network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontConfig {
    /// Client ↔ router round trip: every request and every response / WebSocket message waits half.
    pub rtt: Duration,
    /// The TCP + TLS handshakes of every new connection: it is served (its TLS handshake answered, its
    /// first request read) this long after it was accepted. Charged where the handshakes happen, not on a
    /// request: a request sent on a new connection waits for it, a connection opened early and used later
    /// (the `fast` profile's WebSocket pre-connection) has paid it by then.
    pub fresh_connection_cost: Duration,
    /// Router time to authenticate a WebSocket before it answers the upgrade.
    pub ws_auth_delay: Duration,
    /// Drop every WebSocket this long after it opened (abruptly, with no close frame).
    pub ws_drop_after: Option<Duration>,
    pub http_faults: Vec<HttpFault>,
    /// Rewrite every push to name another conversation ([`crate::ws_faults::misroute`]).
    pub ws_wrong_conversation: bool,
    /// Send every push this many extra times.
    pub ws_duplicate: u32,
    /// Push this many messages for another conversation as soon as a WebSocket opens.
    pub ws_flood: u32,
    /// Push one message of this many bytes as soon as a WebSocket opens.
    pub ws_oversize: Option<usize>,
    /// Replace the body of every successful HTTP response with this many bytes of padding.
    pub http_oversize: Option<usize>,
}

struct Ctx {
    cfg: FrontConfig,
    hub: Arc<Hub>,
    scheme: &'static str,
    local: SocketAddr,
    faults: Mutex<Vec<HttpFault>>,
    ex: Arc<Executor<'static>>,
}

/// The running HTTP/WebSocket server. Dropping it stops it.
pub struct Front {
    addr: SocketAddr,
    stop: smol::channel::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Front {
    /// Bind `bind` (port 0 picks one) and serve on a new thread.
    pub fn start(
        bind: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        cfg: FrontConfig,
        hub: Arc<Hub>,
    ) -> io::Result<Front> {
        let std_listener = StdTcpListener::bind(bind)?;
        let addr = std_listener.local_addr()?;
        let listener = smol::net::TcpListener::try_from(std_listener)?;
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let thread = thread::Builder::new().name("emu-router".into()).spawn(move || {
            let ex = Arc::new(Executor::new());
            let ctx = Arc::new(Ctx {
                faults: Mutex::new(cfg.http_faults.clone()),
                cfg,
                hub: hub.clone(),
                scheme,
                local: addr,
                ex: ex.clone(),
            });
            let acceptor = tls.map(TlsAcceptor::from);
            let serve = async {
                ex.spawn(hub.run_timers()).detach();
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            let ctx = ctx.clone();
                            let acceptor = acceptor.clone();
                            ex.spawn(async move {
                                // The handshakes' round trips (see `fresh_connection_cost`).
                                sleep(ctx.cfg.fresh_connection_cost).await;
                                match acceptor {
                                    None => serve_connection(stream, peer, ctx).await,
                                    Some(acc) => {
                                        let handshake = async { acc.accept(stream).await.map(Some) }
                                            .or(async {
                                                smol::Timer::after(TLS_HANDSHAKE_TIMEOUT).await;
                                                Ok(None)
                                            });
                                        match handshake.await {
                                            Ok(Some(tls)) => serve_connection(tls, peer, ctx).await,
                                            Ok(None) => tracing::debug!(%peer, "TLS handshake timed out"),
                                            Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                        }
                                    }
                                }
                            })
                            .detach();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "router accept failed");
                            smol::Timer::after(Duration::from_millis(50)).await;
                        }
                    }
                }
            };
            let stop = async {
                let _ = stopped.recv().await;
            };
            smol::block_on(ex.run(serve.or(stop)));
            // Dropping the executor cancels every connection task.
        })?;
        tracing::info!(%addr, scheme, "emulated router listening");
        Ok(Front {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving and wait for the thread. Idempotent.
    pub fn shutdown(&mut self) {
        let _ = self.stop.try_send(());
        self.stop.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve_connection<S>(io: S, peer: SocketAddr, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, ctx).await) }
    });
    let conn = http1::Builder::new()
        .timer(SmolTimer::new())
        .keep_alive(true)
        .serve_connection(FuturesIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "router connection ended with an error");
    }
}

fn text_response(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        smol::Timer::after(d).await;
    }
}

async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Response<Full<Bytes>> {
    let half = ctx.cfg.rtt / 2;
    sleep(half).await;
    let response = route(req, &ctx).await;
    sleep(half).await;
    response
}

fn header_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

fn take_fault(ctx: &Ctx, path: &str) -> Option<u16> {
    let mut faults = ctx.faults.lock().unwrap_or_else(|p| p.into_inner());
    let f = faults
        .iter_mut()
        .find(|f| f.times > 0 && path.starts_with(&f.path_prefix))?;
    f.times -= 1;
    Some(f.status)
}

async fn route(req: Request<Incoming>, ctx: &Ctx) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if let Some(status) = take_fault(ctx, &path) {
        tracing::info!(%path, status, "injected HTTP failure");
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return text_response(code, code.canonical_reason().unwrap_or("injected failure"));
    }
    if path == WS_PATH {
        return ws_upgrade(req, ctx).await;
    }
    let method = match *req.method() {
        hyper::Method::GET => Method::Get,
        hyper::Method::POST => Method::Post,
        _ => return text_response(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST"),
    };
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| ctx.local.to_string());
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or(path.clone());
    let url = format!("{}://{}{}", ctx.scheme, host, path_and_query);
    let headers = header_pairs(&req);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let waiter = ctx.hub.http(method, &url, &headers, &body);
    let answer = async { waiter.recv().await.ok() }.or(async {
        smol::Timer::after(MAX_HOLD).await;
        None
    });
    let Some(r) = answer.await else {
        drop(waiter);
        ctx.hub.forget_abandoned();
        return text_response(
            StatusCode::GATEWAY_TIMEOUT,
            "the emulated router did not answer",
        );
    };
    tracing::debug!(%path, status = r.status, "router answered");
    let body = match ctx.cfg.http_oversize {
        Some(n) if (200..300).contains(&r.status) => {
            tracing::info!(%path, bytes = n, "injected an oversized response body");
            vec![b'x'; n]
        }
        _ => r.body,
    };
    let mut out = Response::new(Full::new(Bytes::from(body)));
    *out.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(ct) = r.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        out.headers_mut().insert(CONTENT_TYPE, ct);
    }
    for c in r.set_cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            out.headers_mut().append(SET_COOKIE, v);
        }
    }
    out
}

fn header_is(req: &Request<Incoming>, name: hyper::header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

async fn ws_upgrade(mut req: Request<Incoming>, ctx: &Ctx) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec());
    let is_upgrade = req.method() == hyper::Method::GET
        && header_is(&req, UPGRADE, "websocket")
        && header_is(&req, CONNECTION, "upgrade")
        && req
            .headers()
            .get("sec-websocket-version")
            .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = key.filter(|_| is_upgrade) else {
        return text_response(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint only speaks WebSocket",
        );
    };
    sleep(ctx.cfg.ws_auth_delay).await;
    let headers = header_pairs(&req);
    let (ws_id, pushes) = match ctx.hub.ws_open(&headers) {
        Ok(x) => x,
        Err(status) => {
            tracing::info!(status, "router refused a WebSocket");
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
            return text_response(code, code.canonical_reason().unwrap_or("refused"));
        }
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let hub = ctx.hub.clone();
    let half = ctx.cfg.rtt / 2;
    let drop_after = ctx.cfg.ws_drop_after;
    let faults = WsFaults {
        wrong_conversation: ctx.cfg.ws_wrong_conversation,
        duplicate: ctx.cfg.ws_duplicate,
        flood: ctx.cfg.ws_flood,
        oversize: ctx.cfg.ws_oversize,
    };
    ctx.ex
        .spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let ws =
                        WebSocketStream::from_raw_socket(HyperIo(upgraded), Role::Server, None)
                            .await;
                    run_socket(ws, pushes, half, drop_after, faults, ws_id).await;
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
            }
            hub.ws_closed(ws_id);
        })
        .detach();
    tracing::info!(ws = ws_id, "router WebSocket accepted");
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(&key)) {
        r.headers_mut().insert("sec-websocket-accept", accept);
    }
    r
}

enum Step {
    /// A push arrived with its delivery time.
    Due((Instant, WsPush)),
    /// A push is due now (`None`: no more pushes will come).
    Push(Option<WsPush>),
    Incoming(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
    Drop,
}

/// The misbehaviour of one WebSocket (see [`FrontConfig`]).
#[derive(Debug, Clone, Copy)]
struct WsFaults {
    wrong_conversation: bool,
    duplicate: u32,
    flood: u32,
    oversize: Option<usize>,
}

/// Serve one WebSocket: deliver pushes (each after half the RTT, in order), answer pings, notice closes.
async fn run_socket<S>(
    ws: WebSocketStream<S>,
    pushes: smol::channel::Receiver<WsPush>,
    half_rtt: Duration,
    drop_after: Option<Duration>,
    faults: WsFaults,
    ws_id: u64,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drop_at = drop_after.map(|d| Instant::now() + d);
    let (mut tx, mut rx) = ws.split();
    if let Some(n) = faults.oversize {
        tracing::info!(
            ws = ws_id,
            bytes = n,
            "pushing an oversized message (ws_oversize)"
        );
        if tx
            .send(Message::text(ws_faults::oversize_message(n)))
            .await
            .is_err()
        {
            return;
        }
    }
    if faults.flood > 0 {
        tracing::info!(
            ws = ws_id,
            messages = faults.flood,
            "flooding the WebSocket (ws_flood)"
        );
        for i in 0..faults.flood {
            if tx
                .send(Message::text(ws_faults::flood_message(i)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    // Pushes are stamped with their delivery time as they arrive, so reading never stalls behind them
    // and their order is kept (the delay is the same for all).
    let (due_tx, due_rx) = smol::channel::unbounded::<(Instant, WsPush)>();
    let stamp = async {
        while let Ok(p) = pushes.recv().await {
            if due_tx.send((Instant::now() + half_rtt, p)).await.is_err() {
                break;
            }
        }
        drop(due_tx);
        std::future::pending::<()>().await;
    };
    let pump = async {
        // The push whose delivery time has not come yet (kept across iterations: a read may win the race).
        let mut waiting: Option<(Instant, WsPush)> = None;
        loop {
            let current = waiting.take();
            let restore = current.clone();
            let due_rx = &due_rx;
            let next_push = async move {
                match current {
                    Some((at, p)) => {
                        smol::Timer::at(at).await;
                        Step::Push(Some(p))
                    }
                    None => match due_rx.recv().await {
                        Ok(item) => Step::Due(item),
                        Err(_) => Step::Push(None),
                    },
                }
            };
            let incoming = async { Step::Incoming(rx.next().await) };
            let dropper = async {
                match drop_at {
                    Some(at) => {
                        smol::Timer::at(at).await;
                        Step::Drop
                    }
                    None => std::future::pending().await,
                }
            };
            let step = next_push.or(incoming).or(dropper).await;
            if !matches!(step, Step::Push(_)) {
                waiting = restore;
            }
            match step {
                Step::Due(item) => waiting = Some(item),
                Step::Push(Some(WsPush::Text(t))) => {
                    let t = if faults.wrong_conversation {
                        ws_faults::misroute(&t)
                    } else {
                        t
                    };
                    let mut failed = false;
                    for _ in 0..=faults.duplicate {
                        failed |= tx.send(Message::text(t.clone())).await.is_err();
                        if failed {
                            break;
                        }
                    }
                    if failed {
                        break;
                    }
                }
                Step::Push(Some(WsPush::Close)) | Step::Push(None) => {
                    let _ = tx.close(None).await;
                    break;
                }
                Step::Incoming(Some(Ok(Message::Close(_)))) | Step::Incoming(None) => break,
                Step::Incoming(Some(Ok(m))) => {
                    if m.is_text() || m.is_binary() {
                        tracing::debug!(
                            ws = ws_id,
                            len = m.len(),
                            "ignoring a client WebSocket message"
                        );
                    }
                }
                Step::Incoming(Some(Err(e))) => {
                    tracing::debug!(ws = ws_id, error = %e, "router WebSocket read failed");
                    break;
                }
                Step::Drop => {
                    tracing::info!(ws = ws_id, "dropping the router WebSocket (ws_drop_after)");
                    break;
                }
            }
        }
    };
    stamp.or(pump).await;
}

/// hyper's I/O traits → futures' (the reverse of smol-hyper's `FuturesIo`), for the upgraded connection
/// that async-tungstenite takes over.
struct HyperIo<T>(T);

impl<T: hyper::rt::Read + Unpin> AsyncRead for HyperIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let mut rb = hyper::rt::ReadBuf::new(buf);
        match std::pin::Pin::new(&mut self.0).poll_read(cx, rb.unfilled()) {
            std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Ok(rb.filled().len())),
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<T: hyper::rt::Write + Unpin> AsyncWrite for HyperIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
