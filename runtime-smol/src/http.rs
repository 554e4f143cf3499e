//! The core's HTTP requests inside the node's own task: hyper's HTTP/1 client over smol sockets
//! (`smol-hyper`) and futures-rustls, so a request costs no thread.
//!
//! Keep-alive as the timing profiles need it: a request with `fresh_connection == false` reuses an idle
//! connection to the same origin (Commander's `requests.Session`), one with `fresh_connection == true`
//! always pays for a new TCP+TLS handshake and is never pooled. Redirects are not followed; bodies are
//! bounded; errors never quote header values (they carry secrets). Only a host *name* is resolved on
//! smol's blocking pool (std has no non-blocking resolver), once per new connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, SET_COOKIE};
use pam_lite_core::{HttpRequest, HttpResponse, Input, Method};
use pam_lite_driver_kit::http::url_path;
use pam_lite_driver_kit::DriverConfig;
use rustls::pki_types::ServerName;
use smol::future::{self, FutureExt as _};
use smol::net::TcpStream;
use smol::Timer;
use smol_hyper::rt::FuturesIo;

use crate::ws::MaybeTls;

/// Idle keep-alive connections kept per node, and for how long.
const MAX_IDLE: usize = 4;
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);

type Conn = Pin<Box<Connection<FuturesIo<MaybeTls>, Full<Bytes>>>>;
type Exchange = Pin<Box<dyn Future<Output = (Input, Option<Idle>)> + Send>>;

/// Scheme, host and port: which connections may serve a request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    secure: bool,
    host: String,
    port: u16,
}

/// A keep-alive connection waiting for the next request to its origin.
struct Idle {
    origin: Origin,
    sender: SendRequest<Full<Bytes>>,
    conn: Conn,
    since: Instant,
}

/// The HTTP side of one node: requests in flight (polled by the node task) and idle connections.
pub struct HttpClient {
    tls: Arc<rustls::ClientConfig>,
    body_limit: u64,
    idle: Vec<Idle>,
    in_flight: Vec<Exchange>,
}

impl HttpClient {
    pub fn new(config: &DriverConfig, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            tls,
            body_limit: config.http_body_limit,
            idle: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    /// Start `req`; its answer comes out of [`HttpClient::next`].
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
            .push(Box::pin(exchange(req, origin, reuse, tls, limit)));
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
async fn exchange(
    req: HttpRequest,
    origin: Result<Origin, String>,
    reuse: Option<Idle>,
    tls: Arc<rustls::ClientConfig>,
    limit: u64,
) -> (Input, Option<Idle>) {
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
            None => connect(&origin, tls).await?,
        };
        perform(&req, origin, sender, conn, limit).await
    };
    let timed_out = async {
        Timer::after(timeout).await;
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

async fn connect(
    origin: &Origin,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(SendRequest<Full<Bytes>>, Conn), String> {
    let Origin { secure, host, port } = origin;
    let tcp = TcpStream::connect((host.as_str(), *port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
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

async fn perform(
    req: &HttpRequest,
    origin: Origin,
    mut sender: SendRequest<Full<Bytes>>,
    mut conn: Conn,
    limit: u64,
) -> Result<(HttpResponse, Option<Idle>), String> {
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
async fn drive<T>(conn: &mut Conn, fut: impl Future<Output = T>) -> T {
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
