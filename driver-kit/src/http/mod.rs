//! HTTP pieces every runtime needs: [`url_path`] for logs that never show a query (it may carry secrets)
//! and two clients for the core's `HttpRequest`s: with the `blocking-http` feature, `HttpClient` (ureq,
//! blocking, for runtimes that run requests on threads: runtime-blocking runs it on [`crate::pool`]);
//! with `async-http`, `AsyncHttpClient` (hyper, polled inside the node's task on any async runtime:
//! runtime-smol's).
//!
//! Two agents per node: a keep-alive one shared by every `fresh_connection == false` request (so a profile
//! that models Commander's `requests.Session` really reuses its TCP+TLS connection) and one that never pools,
//! so a `fresh_connection == true` request always pays for a new TCP+TLS handshake, as Commander does.
//! Redirects are not followed: the core sees every status as it is.

#[cfg(feature = "blocking-http")]
pub use blocking::HttpClient;

#[cfg(feature = "async-http")]
mod asynch;
#[cfg(feature = "async-http")]
pub use asynch::AsyncHttpClient;

#[cfg(feature = "blocking-http")]
mod blocking {
    use std::time::Duration;

    use pam_lite_core::{HttpRequest, HttpResponse, Input, Method};
    use ureq::http;

    use super::url_path;
    use crate::config::DriverConfig;
    use crate::tls::{ureq_tls_config, TlsSetupError};

    /// The HTTP side of a driver for one node.
    #[derive(Clone)]
    pub struct HttpClient {
        pooled: ureq::Agent,
        fresh: ureq::Agent,
        body_limit: u64,
    }

    impl std::fmt::Debug for HttpClient {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("HttpClient")
                .field("body_limit", &self.body_limit)
                .finish_non_exhaustive()
        }
    }

    impl HttpClient {
        pub fn new(config: &DriverConfig) -> Result<Self, TlsSetupError> {
            let tls = ureq_tls_config(&config.tls)?;
            let agent = |idle: usize| {
                ureq::Agent::config_builder()
                    .tls_config(tls.clone())
                    .http_status_as_error(false)
                    .max_redirects(0)
                    .max_idle_connections(idle)
                    .max_idle_connections_per_host(idle)
                    .max_idle_age(Duration::from_secs(60))
                    .build()
                    .new_agent()
            };
            Ok(Self {
                pooled: agent(4),
                fresh: agent(0),
                body_limit: config.http_body_limit,
            })
        }

        /// Perform `req` (blocking, at most `req.timeout`) and produce the [`Input`] that answers it.
        pub fn perform(&self, req: &HttpRequest) -> Input {
            tracing::debug!(
                id = req.id,
                method = ?req.method,
                path = %url_path(&req.url),
                fresh = req.fresh_connection,
                "http request"
            );
            match self.try_perform(req) {
                Ok(response) => {
                    tracing::debug!(
                        id = req.id,
                        status = response.status,
                        bytes = response.body.len(),
                        "http response"
                    );
                    Input::HttpResponse {
                        id: req.id,
                        response,
                    }
                }
                Err(error) => {
                    tracing::debug!(id = req.id, %error, "http request failed");
                    Input::HttpError { id: req.id, error }
                }
            }
        }

        fn try_perform(&self, req: &HttpRequest) -> Result<HttpResponse, String> {
            let agent = if req.fresh_connection {
                &self.fresh
            } else {
                &self.pooled
            };
            let mut builder = http::Request::builder()
                .method(match req.method {
                    Method::Get => http::Method::GET,
                    Method::Post => http::Method::POST,
                })
                .uri(req.url.as_str());
            for (name, value) in &req.headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            // The http crate's errors name the offending part, never a header value.
            let request = builder
                .body(req.body.clone())
                .map_err(|e| format!("invalid request: {e}"))?;
            let request = agent
                .configure_request(request)
                .timeout_global(Some(req.timeout))
                .build();
            let mut response = agent.run(request).map_err(|e| describe(&e, req.timeout))?;
            let status = response.status().as_u16();
            let headers = response.headers();
            let content_type = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let set_cookies = headers
                .get_all(http::header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect();
            let body = response
                .body_mut()
                .with_config()
                .limit(self.body_limit)
                .read_to_vec()
                .map_err(|e| describe(&e, req.timeout))?;
            Ok(HttpResponse {
                status,
                content_type,
                set_cookies,
                body,
            })
        }
    }

    /// A user-facing description of a ureq error that never quotes header contents (they carry secrets).
    fn describe(e: &ureq::Error, timeout: Duration) -> String {
        use ureq::Error as E;
        match e {
            E::Timeout(which) => format!("timed out after {timeout:?} ({which})"),
            E::Io(io) => format!("i/o error: {io}"),
            E::HostNotFound => "host not found".into(),
            E::ConnectionFailed => "connection failed".into(),
            E::BodyExceedsLimit(limit) => format!("response body larger than {limit} bytes"),
            E::TooManyRedirects | E::RedirectFailed => "redirect not followed".into(),
            E::Tls(msg) => format!("TLS error: {msg}"),
            E::Rustls(err) => format!("TLS error: {err}"),
            E::Pem(_) => "TLS error: bad PEM".into(),
            E::BadUri(_) => "invalid URL".into(),
            E::Http(err) => format!("invalid request: {err}"),
            E::LargeResponseHeader(size, limit) => {
                format!("response header too large ({size} > {limit} bytes)")
            }
            E::Protocol(_) => "malformed HTTP response".into(),
            E::StatusCode(code) => format!("HTTP status {code}"),
            E::BodyStalled => "response body stalled".into(),
            _ => "HTTP request failed".into(),
        }
    }
}

/// The path of `url` (no scheme, host, query or fragment), for logs.
pub fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    path.split(['?', '#']).next().unwrap_or("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_path_drops_host_query_and_fragment() {
        assert_eq!(url_path("https://h.example:443/api/x?token=s#f"), "/api/x");
        assert_eq!(url_path("http://h"), "/");
        assert_eq!(url_path("/plain"), "/plain");
        assert_eq!(url_path(""), "/");
    }
}
