//! The router WebSocket as every runtime opens it: the request with the core's headers, where to connect,
//! the frame bounds, how a server's close is worded for the core, and the whole client ([`Client`]:
//! tungstenite driven by readiness over the runtime's socket type). A runtime only waits for readiness.

mod client;

pub use client::{Client, Resolution, Resolve, Sock};

use pam_lite_core::WsConnect;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::protocol::{CloseFrame, WebSocketConfig};

pub use tungstenite::handshake::client::Request;

/// How long a requested close may take (close handshake) before the socket is just dropped.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Where a WebSocket must connect, from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP literal (without IPv6 brackets).
    pub host: String,
    pub port: u16,
    /// `wss://`: TLS on top of TCP.
    pub secure: bool,
}

/// The request with the core's headers, and where to connect. Errors never quote header values.
pub fn build_request(connect: &WsConnect) -> Result<(Request, Endpoint), String> {
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
    let secure = uri.scheme_str() == Some("wss");
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(port), _) => port,
        (None, Some("wss")) => 443,
        (None, Some("ws")) => 80,
        _ => return Err("WebSocket URL must be ws:// or wss://".into()),
    };
    Ok((request, Endpoint { host, port, secure }))
}

/// What tungstenite reads per call and keeps allocated for reading. Router pushes are small JSON
/// documents: tungstenite's default (128 KiB, allocated up front) was ~130 KB of every open tunnel (issue
/// 11). A larger frame still arrives whole: the buffer grows to hold it (up to `frame_limit`).
pub const READ_BUFFER: usize = 4 * 1024;

/// Frame and message bounds: nothing larger than `frame_limit` is buffered; reads of [`READ_BUFFER`].
pub fn config(frame_limit: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_frame_size(Some(frame_limit))
        .max_message_size(Some(frame_limit))
}

/// The `WsClosed` reason for a close frame from the server.
pub fn closed_by_server(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) => format!("closed by server ({}: {})", u16::from(f.code), f.reason),
        None => "closed by server".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn connect(url: &str, headers: &[(&str, &str)]) -> WsConnect {
        WsConnect {
            url: url.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            timeout: Duration::from_secs(1),
            phase: pam_lite_core::WsPhase::Fresh,
        }
    }

    #[test]
    fn request_carries_headers_and_default_ports() {
        let (req, at) = build_request(&connect(
            "wss://router.example/ws?x=1",
            &[("Authorization", "s3cret")],
        ))
        .unwrap();
        assert_eq!(
            (at.host.as_str(), at.port, at.secure),
            ("router.example", 443, true)
        );
        assert_eq!(req.headers()["authorization"], "s3cret");
        let (_, at) = build_request(&connect("ws://[::1]:81/", &[])).unwrap();
        assert_eq!((at.host.as_str(), at.port, at.secure), ("::1", 81, false));
    }

    #[test]
    fn bad_header_value_is_reported_without_the_value() {
        let err =
            build_request(&connect("ws://h/", &[("X-Token", "line\nbreak-secret")])).unwrap_err();
        assert!(err.contains("x-token"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    /// A server frame (unmasked text) of `len` bytes.
    fn text_frame(len: usize) -> Vec<u8> {
        let mut frame = vec![0x81, 127];
        frame.extend_from_slice(&(len as u64).to_be_bytes());
        frame.extend(std::iter::repeat_n(b'a', len));
        frame
    }

    fn client_over(
        bytes: Vec<u8>,
        frame_limit: usize,
    ) -> tungstenite::WebSocket<std::io::Cursor<Vec<u8>>> {
        tungstenite::WebSocket::from_raw_socket(
            std::io::Cursor::new(bytes),
            tungstenite::protocol::Role::Client,
            Some(config(frame_limit)),
        )
    }

    /// The small read buffer does not bound what arrives: a frame many times its size is read whole, and
    /// the frame limit still refuses a larger one.
    #[test]
    fn frames_larger_than_the_read_buffer_arrive_whole() {
        let config = config(1024 * 1024);
        assert!(
            config.read_buffer_size <= 8 * 1024,
            "{}",
            config.read_buffer_size
        );
        let len = 40 * READ_BUFFER + 3;
        let mut ws = client_over(text_frame(len), 1024 * 1024);
        match ws.read().unwrap() {
            tungstenite::Message::Text(text) => assert_eq!(text.len(), len),
            other => panic!("{other:?}"),
        }
        let mut ws = client_over(text_frame(64 * 1024 + 1), 64 * 1024);
        assert!(ws.read().is_err());
    }

    #[test]
    fn non_ws_scheme_is_refused() {
        assert!(build_request(&connect("http://h/", &[])).is_err());
    }
}
