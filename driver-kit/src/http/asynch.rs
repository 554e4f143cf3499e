//! The core's HTTP requests inside the node's own task, for any async runtime ([`AsyncNet`]): hyper's
//! HTTP/1 client over the runtime's sockets (`smol-hyper`'s futures-io adapter, no executor) and
//! futures-rustls, so a request costs no thread. runtime-smol uses it.
//!
//! Keep-alive as the timing profiles need it: a request with `fresh_connection == false` reuses an idle
//! connection to the same origin (Commander's `requests.Session`), one with `fresh_connection == true`
//! always pays for a new TCP+TLS handshake and is never pooled. Redirects are not followed; bodies are
//! bounded; errors never quote header values (they carry secrets). A host *name* is resolved by the
//! runtime ([`AsyncNet::resolve`]), once per new connection.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::future::{self, FutureExt as _};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, SET_COOKIE};
use pam_lite_core::{HttpRequest, HttpResponse, Input, Method};
use rustls::pki_types::ServerName;
use smol_hyper::rt::FuturesIo;

use super::url_path;
use crate::runtime::AsyncNet;
use crate::DriverConfig;

/// Idle keep-alive connections kept per node, and for how long.
const MAX_IDLE: usize = 4;
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);

/// What a connection runs over (the runtime's TCP stream).
trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Socket for S {}

type Conn<S> = Pin<Box<Connection<FuturesIo<MaybeTls<S>>, Full<Bytes>>>>;
type Exchange<S> = Pin<Box<dyn Future<Output = (Input, Option<Idle<S>>)> + Send>>;

/// Scheme, host and port: which connections may serve a request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    secure: bool,
    host: String,
    port: u16,
}

/// A keep-alive connection waiting for the next request to its origin.
struct Idle<S: Socket> {
    origin: Origin,
    sender: SendRequest<Full<Bytes>>,
    conn: Conn<S>,
    since: Instant,
}

/// The HTTP side of one node: requests in flight (polled by the node task) and idle connections.
pub struct AsyncHttpClient<R: AsyncNet> {
    tls: Arc<rustls::ClientConfig>,
    body_limit: u64,
    idle: Vec<Idle<R::Stream>>,
    in_flight: Vec<Exchange<R::Stream>>,
}

impl<R: AsyncNet> AsyncHttpClient<R> {
    pub fn new(config: &DriverConfig, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            tls,
            body_limit: config.http_body_limit,
            idle: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    /// Start `req`; its answer comes out of [`AsyncHttpClient::next`].
    pub fn start(&mut self, req: HttpRequest) {
        tracing::debug!(id = req.id, method = ?req.method, path = %url_path(&req.url),
            fresh = req.fresh_connection, "http request");
        let origin = origin(&req.url);
        self.idle.retain(|i| i.since.elapsed() < MAX_IDLE_AGE);
        let reuse = match (&origin, req.fresh_connection) {
            (Ok(origin), false) => self
                .idle
                .iter()
                .rposition(|i| i.origin == *origin)
                .map(|at| self.idle.swap_remove(at)),
            _ => None,
        };
        let (tls, limit) = (self.tls.clone(), self.body_limit);
        self.in_flight
            .push(Box::pin(exchange::<R>(req, origin, reuse, tls, limit)));
    }

    /// The next answer of a request in flight; pending while none is. Cancel-safe.
    pub async fn next(&mut self) -> Input {
        let (input, idle) = future::poll_fn(|cx| {
            for at in 0..self.in_flight.len() {
                if let Poll::Ready(done) = self.in_flight[at].as_mut().poll(cx) {
                    drop(self.in_flight.swap_remove(at));
                    return Poll::Ready(done);
                }
            }
            Poll::Pending
        })
        .await;
        if let Some(idle) = idle {
            if self.idle.len() >= MAX_IDLE {
                self.idle.remove(0);
            }
            self.idle.push(idle);
        }
        input
    }
}

/// One request, bounded by its timeout; gives back the connection when it may be reused.
async fn exchange<R: AsyncNet>(
    req: HttpRequest,
    origin: Result<Origin, String>,
    reuse: Option<Idle<R::Stream>>,
    tls: Arc<rustls::ClientConfig>,
    limit: u64,
) -> (Input, Option<Idle<R::Stream>>) {
    let (id, timeout, fresh) = (req.id, req.timeout, req.fresh_connection);
    let work = async {
        let origin = origin?;
        // A pooled connection the server has closed meanwhile (its FIN is read by this one poll) is
        // dropped instead of failing the request.
        let reuse = match reuse {
            Some(mut idle) => {
                let closed = future::poll_once(idle.conn.as_mut()).await.is_some();
                (!closed && !idle.sender.is_closed()).then_some(idle)
            }
            None => None,
        };
        let (sender, conn) = match reuse {
            Some(idle) => (idle.sender, idle.conn),
            None => connect::<R>(&origin, tls).await?,
        };
        perform(&req, origin, sender, conn, limit).await
    };
    let timed_out = async {
        R::sleep(timeout).await;
        Err(format!("timed out after {timeout:?}"))
    };
    match work.or(timed_out).await {
        Ok((response, idle)) => {
            tracing::debug!(
                id,
                status = response.status,
                bytes = response.body.len(),
                "http response"
            );
            (
                Input::HttpResponse { id, response },
                idle.filter(|_| !fresh),
            )
        }
        Err(error) => {
            tracing::debug!(id, %error, "http request failed");
            (Input::HttpError { id, error }, None)
        }
    }
}

async fn connect<R: AsyncNet>(
    origin: &Origin,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(SendRequest<Full<Bytes>>, Conn<R::Stream>), String> {
    let Origin { secure, host, port } = origin;
    let tcp = tcp::<R>(host, *port)
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    R::set_nodelay(&tcp);
    let stream = if *secure {
        let name = ServerName::try_from(host.clone())
            .map_err(|_| format!("invalid TLS server name {host:?}"))?;
        let tls = futures_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS error: {e}"))?;
        MaybeTls::Tls(Box::new(tls))
    } else {
        MaybeTls::Plain(tcp)
    };
    let (sender, conn) = http1::handshake(FuturesIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    Ok((sender, Box::pin(conn)))
}

async fn perform<S: Socket>(
    req: &HttpRequest,
    origin: Origin,
    mut sender: SendRequest<Full<Bytes>>,
    mut conn: Conn<S>,
    limit: u64,
) -> Result<(HttpResponse, Option<Idle<S>>), String> {
    let request = build(req, &origin)?;
    let response = drive(&mut conn, async {
        sender.ready().await?;
        sender.send_request(request).await
    })
    .await
    .map_err(|e| format!("HTTP request failed: {e}"))?;
    let status = response.status().as_u16();
    let headers = response.headers();
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let set_cookies = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let body = Limited::new(
        response.into_body(),
        usize::try_from(limit).unwrap_or(usize::MAX),
    );
    let body = drive(&mut conn, body.collect())
        .await
        .map_err(
            |e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
                Some(_) => format!("response body larger than {limit} bytes"),
                None => format!("reading the response failed: {e}"),
            },
        )?
        .to_bytes()
        .to_vec();
    let idle = Idle {
        origin,
        sender,
        conn,
        since: Instant::now(),
    };
    let response = HttpResponse {
        status,
        content_type,
        set_cookies,
        body,
    };
    Ok((response, Some(idle)))
}

/// Poll `fut` while driving the connection that carries it (hyper's connection task, run in place).
async fn drive<S: Socket, T>(conn: &mut Conn<S>, fut: impl Future<Output = T>) -> T {
    let mut fut = std::pin::pin!(fut);
    let mut conn_done = false;
    future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if !conn_done && conn.as_mut().poll(cx).is_ready() {
            // Closed: the request future learns it on its next poll.
            conn_done = true;
            return fut.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await
}

/// The hyper request: origin-form target, a `Host` header, the core's headers and body.
fn build(req: &HttpRequest, origin: &Origin) -> Result<hyper::Request<Full<Bytes>>, String> {
    let uri: hyper::Uri = req.url.parse().map_err(|_| "invalid URL".to_owned())?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let default_port = if origin.secure { 443 } else { 80 };
    let host = match (origin.host.contains(':'), origin.port == default_port) {
        (true, true) => format!("[{}]", origin.host),
        (true, false) => format!("[{}]:{}", origin.host, origin.port),
        (false, true) => origin.host.clone(),
        (false, false) => format!("{}:{}", origin.host, origin.port),
    };
    let mut request = hyper::Request::builder()
        .method(match req.method {
            Method::Get => hyper::Method::GET,
            Method::Post => hyper::Method::POST,
        })
        .uri(target)
        .body(Full::new(Bytes::from(req.body.clone())))
        .map_err(|e| format!("invalid request: {e}"))?;
    let headers = request.headers_mut();
    headers.insert(
        HOST,
        HeaderValue::from_str(&host).map_err(|_| "invalid host".to_owned())?,
    );
    for (name, value) in &req.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
        headers.append(name, value);
    }
    Ok(request)
}

fn origin(url: &str) -> Result<Origin, String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "invalid URL".to_owned())?;
    let secure = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("URL must be http:// or https://".into()),
    };
    let host = uri
        .host()
        .ok_or("URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    Ok(Origin { secure, host, port })
}

/// The first address of `host` that accepts a TCP connection.
async fn tcp<R: AsyncNet>(host: &str, port: u16) -> io::Result<R::Stream> {
    let addrs = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => R::resolve(host.to_owned(), port).await?,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for addr in addrs {
        match R::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A TCP stream, encrypted for `https://`.
enum MaybeTls<S> {
    Plain(S),
    Tls(Box<futures_rustls::client::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn origin_and_host_header() {
        let o = origin("https://[::1]:8443/api?x=1").unwrap();
        assert_eq!((o.secure, o.host.as_str(), o.port), (true, "::1", 8443));
        let o = origin("http://router.example/x").unwrap();
        assert_eq!((o.secure, o.port), (false, 80));
        assert!(origin("ftp://h/").is_err());
        let req = HttpRequest {
            id: 1,
            method: Method::Post,
            url: "https://[::1]:8443/api?x=1".into(),
            headers: vec![("X-Token".into(), "bad\nhunter2".into())],
            body: Vec::new(),
            fresh_connection: false,
            timeout: Duration::from_secs(1),
        };
        let err = build(&req, &origin(&req.url).unwrap()).unwrap_err();
        assert!(err.contains("x-token") && !err.contains("hunter2"), "{err}");
    }
}
