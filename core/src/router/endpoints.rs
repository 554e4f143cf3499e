//! The router endpoints `pam launch` calls: URL and request builders, and the parsing of their answers
//! (Commander `router_helper.py`, `terminal_connection.py`).
//!
//! Builders return a complete [`HttpRequest`] with `id` 0: the caller assigns the id when it emits the
//! request. Parsing reproduces Commander's outcomes *and its exception texts*
//! ([`RouterCallError`]'s `Display`), because Commander's retry decision is a substring match on them.

use std::fmt;
use std::time::Duration;

use prost::Message as _;
use rand_core::{CryptoRng, RngCore};
use serde_json::Value;

use super::envelope::Tokens;
use super::proto::{
    ControllerMessageType, ControllerResponse, PAMOnlineControllers, RelayAccessCreds,
    RouterControllerMessage, RouterResponse, RouterResponseCode,
};
use crate::signaling::{decode_b64_any, ConversationId, GatewayAction};
use crate::{HttpRequest, HttpResponse, Method};

/// Path prefix of every user endpoint.
pub const API_USER: &str = "/api/user/";
/// The TURN credential lifetime Commander asks for (`expire-sec`).
pub const RELAY_CREDS_EXPIRE_SEC: u64 = 60_000_000;
/// Largest response body we parse (a real one is well under 1 KiB).
pub const MAX_RESPONSE_BODY: usize = 1 << 20;
/// How much of an error body we keep in messages.
const MAX_ERROR_BODY: usize = 8 * 1024;
/// `send_controller_message` fails at HTTP status ≥ 300 (Commander's threshold for that call).
pub const OK_BELOW_SEND: u16 = 300;
/// Every other router call fails at status ≥ 400 (`_post_request_to_router`).
pub const OK_BELOW_OTHER: u16 = 400;

/// A router base URL or gateway uid that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid router URL {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("invalid gateway uid {0:?}: expected URL-safe base64")]
    BadGatewayUid(String),
}

/// Check a router base URL (`https://host[:port][/prefix]` or `http://…`; a trailing slash is fine).
pub fn validate_base_url(base: &str) -> Result<(), EndpointError> {
    let bad = |reason| {
        Err(EndpointError::BadUrl {
            url: base.to_string(),
            reason,
        })
    };
    let rest = match base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"))
    {
        Some(rest) => rest,
        None => return bad("must start with https:// or http://"),
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return bad("no host");
    }
    if base.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("contains whitespace");
    }
    if base.contains('?') || base.contains('#') {
        return bad("must not contain a query or fragment");
    }
    Ok(())
}

fn trim_base(base: &str) -> &str {
    base.trim_end_matches('/')
}

/// `{base}/api/user/{path}`.
pub fn api_url(base: &str, path: &str) -> String {
    format!("{}{API_USER}{path}", trim_base(base))
}

/// Percent-encode anything outside RFC 3986 unreserved characters (a real uid needs none).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn relay_access_creds_url(base: &str) -> String {
    api_url(
        base,
        &format!("relay_access_creds?expire-sec={RELAY_CREDS_EXPIRE_SEC}"),
    )
}

pub fn bind_to_controller_url(base: &str, gateway_uid: &str) -> String {
    api_url(
        base,
        &format!("bind_to_controller/{}", path_segment(gateway_uid)),
    )
}

pub fn get_controllers_url(base: &str) -> String {
    api_url(base, "get_controllers")
}

pub fn send_controller_message_url(base: &str) -> String {
    api_url(base, "send_controller_message")
}

/// The router WebSocket: the base URL with `https→wss` / `http→ws`, plus `/api/user/client`.
pub fn ws_url(base: &str) -> String {
    let base = trim_base(base);
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws}{API_USER}client")
}

fn request(
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    fresh_connection: bool,
    timeout: Duration,
) -> HttpRequest {
    HttpRequest {
        id: 0,
        method,
        url,
        headers,
        body,
        fresh_connection,
        timeout,
    }
}

/// `POST /api/user/relay_access_creds?expire-sec=60000000`, no body. Answer: [`parse_relay_creds`].
pub fn relay_access_creds(
    base: &str,
    tokens: &Tokens,
    fresh_connection: bool,
    timeout: Duration,
) -> HttpRequest {
    let url = relay_access_creds_url(base);
    request(
        Method::Post,
        url,
        tokens.headers(),
        Vec::new(),
        fresh_connection,
        timeout,
    )
}

/// `GET /api/user/bind_to_controller/{gateway_uid}` with **no** auth headers: only its `Set-Cookie`s
/// matter (ALB stickiness, see [`cookie_header`]).
pub fn bind_to_controller(
    base: &str,
    gateway_uid: &str,
    fresh_connection: bool,
    timeout: Duration,
) -> HttpRequest {
    let url = bind_to_controller_url(base, gateway_uid);
    request(
        Method::Get,
        url,
        Vec::new(),
        Vec::new(),
        fresh_connection,
        timeout,
    )
}

/// `POST /api/user/get_controllers`, no body. Answer: [`parse_online_controllers`].
pub fn get_controllers(
    base: &str,
    tokens: &Tokens,
    fresh_connection: bool,
    timeout: Duration,
) -> HttpRequest {
    let url = get_controllers_url(base);
    request(
        Method::Post,
        url,
        tokens.headers(),
        Vec::new(),
        fresh_connection,
        timeout,
    )
}

/// The gateway uid as the router's `controllerUid` bytes (`url_safe_str_to_bytes`).
pub fn gateway_uid_bytes(gateway_uid: &str) -> Result<Vec<u8>, EndpointError> {
    decode_b64_any(gateway_uid)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| EndpointError::BadGatewayUid(gateway_uid.to_string()))
}

/// Does the router's `controllerUid` name `gateway_uid`?
pub fn uid_matches(controller_uid: &[u8], gateway_uid: &str) -> bool {
    gateway_uid_bytes(gateway_uid).is_ok_and(|b| b == controller_uid)
}

/// The `RouterControllerMessage` for a tunnel action (`router_send_action_to_gateway` step 3):
/// `CMT_CONNECT`, `messageUid` = the conversation bytes, `timeout` in ms (saturating).
/// A gateway uid that is not base64 is sent as its UTF-8 bytes (the router then reports it offline);
/// check it up front with [`gateway_uid_bytes`].
pub fn controller_message(
    gateway_uid: &str,
    conv: &ConversationId,
    action: &GatewayAction,
    stream: bool,
    router_timeout: Duration,
) -> RouterControllerMessage {
    RouterControllerMessage {
        message_type: ControllerMessageType::CmtConnect as i32,
        message_uid: conv.bytes().to_vec(),
        controller_uid: gateway_uid_bytes(gateway_uid)
            .unwrap_or_else(|_| gateway_uid.as_bytes().to_vec()),
        stream_response: stream,
        payload: action.to_json().into_bytes(),
        timeout: i32::try_from(router_timeout.as_millis()).unwrap_or(i32::MAX),
    }
}

/// `POST /api/user/send_controller_message`, body = `seal(protobuf)`. `cookie` is the ALB cookie
/// string from `bind_to_controller` (Commander's `requests.Session` sends it on trickle-mode POSTs).
/// Answer: [`parse_router_response`] with [`OK_BELOW_SEND`], then [`parse_controller_response`].
pub fn send_controller_message(
    base: &str,
    tokens: &Tokens,
    message: &RouterControllerMessage,
    cookie: Option<&str>,
    fresh_connection: bool,
    timeout: Duration,
    rng: &mut (impl RngCore + CryptoRng),
) -> HttpRequest {
    let mut headers = tokens.headers();
    if let Some(c) = cookie.filter(|c| !c.is_empty()) {
        headers.push(("Cookie".to_owned(), c.to_owned()));
    }
    let body = tokens.seal(&message.encode_to_vec(), rng);
    request(
        Method::Post,
        send_controller_message_url(base),
        headers,
        body,
        fresh_connection,
        timeout,
    )
}

/// Why a router call failed. `Display` is Commander's exception text for `send_controller_message`
/// (`router_send_message_to_gateway` / `router_send_action_to_gateway`); see
/// [`RouterCallError::commander_post_message`] for the other calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterCallError {
    /// The HTTP status was at or above the call's threshold.
    Http {
        status: u16,
        reason: String,
        body: String,
    },
    /// The router answered with a non-OK `RouterResponseCode`.
    Router {
        code: RouterResponseCode,
        message: String,
    },
    /// The answer could not be decoded or decrypted.
    Decode(String),
}

use crate::text::sanitize;

impl fmt::Display for RouterCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouterCallError::Http {
                status,
                reason,
                body,
            } => {
                // Reason, body and message are the router's text: shown sanitised (crate::text).
                write!(
                    f,
                    "{status}: error: {}, message: {}",
                    sanitize(reason),
                    sanitize(body)
                )
            }
            RouterCallError::Router { code, message } => {
                write!(f, "{} response code: {}", sanitize(message), code.name())
            }
            RouterCallError::Decode(m) => f.write_str(&sanitize(m)),
        }
    }
}

impl std::error::Error for RouterCallError {}

impl RouterCallError {
    /// Commander's text for the same failure of `get_controllers` / `relay_access_creds`
    /// (`_post_request_to_router`): `KeeperApiError` → `"<status>: <body>"`, `RouterResponseError` →
    /// `"<message> Response code: RRC_<NAME>"`.
    pub fn commander_post_message(&self) -> String {
        match self {
            RouterCallError::Http { status, body, .. } => format!("{status}: {body}"),
            RouterCallError::Router { code, message } => {
                format!("{message} Response code: {}", code.name())
            }
            RouterCallError::Decode(m) => m.clone(),
        }
    }
}

/// The standard reason phrase of an HTTP status (Python `requests`' `Response.reason`).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

fn body_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= MAX_ERROR_BODY {
        return text.into_owned();
    }
    let mut end = MAX_ERROR_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Commander's handling of a router answer: status ≥ `ok_below` → [`RouterCallError::Http`]; the body
/// is a protobuf `RouterResponse`; a non-OK code → [`RouterCallError::Router`]; otherwise the decrypted
/// `encryptedPayload`, or `None` when there is none.
pub fn parse_router_response(
    response: &HttpResponse,
    tokens: &Tokens,
    ok_below: u16,
) -> Result<Option<Vec<u8>>, RouterCallError> {
    if response.status >= ok_below {
        return Err(RouterCallError::Http {
            status: response.status,
            reason: reason_phrase(response.status).to_string(),
            body: body_text(&response.body),
        });
    }
    if response.body.len() > MAX_RESPONSE_BODY {
        return Err(RouterCallError::Decode(format!(
            "router response too large ({} bytes)",
            response.body.len()
        )));
    }
    let is_json = response.content_type.as_deref().is_some_and(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("application/json")
    });
    if is_json {
        return Err(RouterCallError::Decode(format!(
            "unexpected JSON answer from the router: {}",
            body_text(&response.body)
        )));
    }
    let rr = RouterResponse::decode(response.body.as_slice())
        .map_err(|e| RouterCallError::Decode(format!("invalid RouterResponse: {e}")))?;
    let code = RouterResponseCode::try_from(rr.response_code).map_err(|_| {
        RouterCallError::Decode(format!(
            "Enum RouterResponseCode has no name defined for value {}",
            rr.response_code
        ))
    })?;
    if code != RouterResponseCode::RrcOk {
        return Err(RouterCallError::Router {
            code,
            message: rr.error_message,
        });
    }
    if rr.encrypted_payload.is_empty() {
        return Ok(None);
    }
    tokens
        .open(&rr.encrypted_payload)
        .map(Some)
        .map_err(|e| RouterCallError::Decode(e.to_string()))
}

/// `PAMOnlineControllers` from a `get_controllers` payload (none = no gateway online).
pub fn parse_online_controllers(
    plain: Option<&[u8]>,
) -> Result<PAMOnlineControllers, RouterCallError> {
    PAMOnlineControllers::decode(plain.unwrap_or_default())
        .map_err(|e| RouterCallError::Decode(format!("invalid PAMOnlineControllers: {e}")))
}

/// Is `gateway_uid` among the online controllers (Commander's check before every action)?
pub fn gateway_online(list: &PAMOnlineControllers, gateway_uid: &str) -> bool {
    list.controllers
        .iter()
        .any(|c| uid_matches(&c.controller_uid, gateway_uid))
}

/// `RelayAccessCreds` from a `relay_access_creds` payload.
pub fn parse_relay_creds(plain: Option<&[u8]>) -> Result<RelayAccessCreds, RouterCallError> {
    let plain = plain
        .ok_or_else(|| RouterCallError::Decode("relay_access_creds returned no payload".into()))?;
    RelayAccessCreds::decode(plain)
        .map_err(|e| RouterCallError::Decode(format!("invalid RelayAccessCreds: {e}")))
}

/// The JSON of a `send_controller_message` payload (`ControllerResponse.payload`); `None` when the
/// router sent no payload (Commander then sees `{}`).
pub fn parse_controller_response(plain: Option<&[u8]>) -> Result<Option<Value>, RouterCallError> {
    let Some(plain) = plain else { return Ok(None) };
    let cr = ControllerResponse::decode(plain)
        .map_err(|e| RouterCallError::Decode(format!("invalid ControllerResponse: {e}")))?;
    serde_json::from_str(&cr.payload).map(Some).map_err(|e| {
        RouterCallError::Decode(format!("ControllerResponse payload is not JSON: {e}"))
    })
}

/// The `Cookie:` header a `requests.Session` would send after receiving `set_cookies`: `name=value`
/// pairs joined with `"; "`; a later cookie with the same name replaces the earlier one, `Max-Age=0`
/// deletes it. `None` when there is no cookie.
pub fn cookie_header(set_cookies: &[String]) -> Option<String> {
    let mut jar: Vec<(String, String)> = Vec::new();
    for raw in set_cookies.iter().take(64) {
        let mut parts = raw.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            continue;
        }
        let deleted = parts.any(|attr| {
            attr.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("max-age") && v.trim().starts_with(['0', '-'])
            })
        });
        match jar.iter_mut().position(|(n, _)| n == name) {
            Some(i) if deleted => {
                jar.remove(i);
            }
            Some(i) => {
                if let Some(entry) = jar.get_mut(i) {
                    entry.1 = value.to_string();
                }
            }
            None if !deleted => jar.push((name.to_string(), value.to_string())),
            None => {}
        }
    }
    if jar.is_empty() {
        return None;
    }
    Some(
        jar.iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::envelope::{OpenedTokens, ServerSecretKey};
    use crate::router::proto::PAMOnlineController;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn setup() -> (ChaCha20Rng, ServerSecretKey, Tokens) {
        let mut r = ChaCha20Rng::from_seed([1; 32]);
        let sk = ServerSecretKey::random(&mut r);
        let tokens = Tokens::new(b"session", &sk.public_key(7).unwrap(), &mut r);
        (r, sk, tokens)
    }

    fn answer(
        tokens: &Tokens,
        rng: &mut ChaCha20Rng,
        code: RouterResponseCode,
        msg: &str,
        payload: Option<&[u8]>,
    ) -> HttpResponse {
        let rr = RouterResponse {
            response_code: code as i32,
            error_message: msg.into(),
            encrypted_payload: payload.map(|p| tokens.seal(p, rng)).unwrap_or_default(),
        };
        HttpResponse {
            status: 200,
            body: rr.encode_to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn urls() {
        for base in [
            "https://connect.example.com",
            "https://connect.example.com/",
        ] {
            assert_eq!(
                relay_access_creds_url(base),
                "https://connect.example.com/api/user/relay_access_creds?expire-sec=60000000"
            );
            assert_eq!(ws_url(base), "wss://connect.example.com/api/user/client");
            assert_eq!(
                bind_to_controller_url(base, "AbC-_x"),
                "https://connect.example.com/api/user/bind_to_controller/AbC-_x"
            );
        }
        assert_eq!(
            ws_url("http://127.0.0.1:8080"),
            "ws://127.0.0.1:8080/api/user/client"
        );
        assert_eq!(
            get_controllers_url("http://h"),
            "http://h/api/user/get_controllers"
        );
        assert_eq!(
            send_controller_message_url("http://h"),
            "http://h/api/user/send_controller_message"
        );
        assert_eq!(
            bind_to_controller_url("http://h", "a/b"),
            "http://h/api/user/bind_to_controller/a%2Fb"
        );
        assert!(validate_base_url("https://connect.keepersecurity.com").is_ok());
        assert!(validate_base_url("http://127.0.0.1:9000/").is_ok());
        for bad in [
            "connect.keepersecurity.com",
            "ftp://x",
            "https://",
            "https://h?x=1",
            "https://h x",
        ] {
            assert!(validate_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_carry_the_right_auth() {
        let (mut r, sk, tokens) = setup();
        let req = relay_access_creds("http://h", &tokens, true, Duration::from_secs(5));
        assert_eq!(req.method, Method::Post);
        assert!(req.body.is_empty() && req.fresh_connection);
        assert_eq!(req.headers, tokens.headers());
        let bind = bind_to_controller("http://h", "gw", false, Duration::from_secs(10));
        assert_eq!(bind.method, Method::Get);
        assert!(
            bind.headers.is_empty(),
            "bind_to_controller has no auth headers"
        );
        let gc = get_controllers("http://h", &tokens, true, Duration::from_secs(5));
        assert!(gc.body.is_empty());

        let conv = ConversationId([3; 16]);
        let action = GatewayAction {
            conversation_id: conv.url(),
            inputs: Default::default(),
            message_id: Some(conv.url()),
        };
        let gw = "AAECAwQFBgcICQoLDA0ODw";
        let msg = controller_message(gw, &conv, &action, true, Duration::from_secs(30));
        assert_eq!(msg.controller_uid, (0u8..16).collect::<Vec<_>>());
        assert_eq!(msg.message_uid, vec![3; 16]);
        assert_eq!(msg.timeout, 30000);
        assert_eq!(msg.message_type, 3);
        let req = send_controller_message(
            "http://h",
            &tokens,
            &msg,
            Some("AWSALB=x"),
            false,
            Duration::from_secs(1),
            &mut r,
        );
        assert_eq!(
            req.headers.last().unwrap(),
            &("Cookie".to_string(), "AWSALB=x".to_string())
        );
        // The router side can open it.
        let opened = OpenedTokens::from_headers(&req.headers, &sk).unwrap();
        let decoded =
            RouterControllerMessage::decode(opened.open(&req.body).unwrap().as_slice()).unwrap();
        assert_eq!(decoded, msg);
        assert_eq!(
            String::from_utf8(decoded.payload).unwrap(),
            action.to_json()
        );
        assert_eq!(
            controller_message(gw, &conv, &action, false, Duration::from_secs(1 << 40)).timeout,
            i32::MAX
        );
    }

    #[test]
    fn commander_exception_strings() {
        let http = RouterCallError::Http {
            status: 503,
            reason: "Service Unavailable".into(),
            body: "busy".into(),
        };
        assert_eq!(
            http.to_string(),
            "503: error: Service Unavailable, message: busy"
        );
        assert_eq!(http.commander_post_message(), "503: busy");
        let rrc = RouterCallError::Router {
            code: RouterResponseCode::RrcBadState,
            message: "not ready".into(),
        };
        assert_eq!(rrc.to_string(), "not ready response code: RRC_BAD_STATE");
        assert_eq!(
            rrc.commander_post_message(),
            "not ready Response code: RRC_BAD_STATE"
        );
    }

    #[test]
    fn parse_answers() {
        let (mut r, _sk, tokens) = setup();
        // HTTP failures, with the threshold of each call.
        let resp = HttpResponse {
            status: 502,
            body: b"<html>bad gateway</html>".to_vec(),
            ..Default::default()
        };
        let err = parse_router_response(&resp, &tokens, OK_BELOW_SEND).unwrap_err();
        assert_eq!(
            err.to_string(),
            "502: error: Bad Gateway, message: <html>bad gateway</html>"
        );
        let redirect = HttpResponse {
            status: 302,
            ..Default::default()
        };
        assert!(matches!(
            parse_router_response(&redirect, &tokens, OK_BELOW_SEND),
            Err(RouterCallError::Http { status: 302, .. })
        ));
        // RRC errors.
        let resp = answer(
            &tokens,
            &mut r,
            RouterResponseCode::RrcTimeout,
            "gateway did not answer",
            None,
        );
        let err = parse_router_response(&resp, &tokens, OK_BELOW_SEND).unwrap_err();
        assert_eq!(
            err.to_string(),
            "gateway did not answer response code: RRC_TIMEOUT"
        );
        // OK without payload, OK with payload.
        let resp = answer(&tokens, &mut r, RouterResponseCode::RrcOk, "", None);
        assert_eq!(
            parse_router_response(&resp, &tokens, OK_BELOW_SEND),
            Ok(None)
        );
        let cr = ControllerResponse {
            payload: r#"{"payload": "{\"is_ok\": true}"}"#.into(),
        };
        let resp = answer(
            &tokens,
            &mut r,
            RouterResponseCode::RrcOk,
            "",
            Some(&cr.encode_to_vec()),
        );
        let plain = parse_router_response(&resp, &tokens, OK_BELOW_SEND).unwrap();
        let v = parse_controller_response(plain.as_deref())
            .unwrap()
            .unwrap();
        assert_eq!(v["payload"], "{\"is_ok\": true}");
        assert_eq!(parse_controller_response(None), Ok(None));
        // A payload sealed with another key, garbage bodies, unknown codes, JSON bodies.
        let (mut r2, _, other) = setup_other();
        let resp = answer(&other, &mut r2, RouterResponseCode::RrcOk, "", Some(b"x"));
        assert!(matches!(
            parse_router_response(&resp, &tokens, 300),
            Err(RouterCallError::Decode(_))
        ));
        let garbage = HttpResponse {
            status: 200,
            body: vec![0xff; 7],
            ..Default::default()
        };
        assert!(matches!(
            parse_router_response(&garbage, &tokens, 300),
            Err(RouterCallError::Decode(_))
        ));
        let unknown = HttpResponse {
            status: 200,
            body: vec![0x08, 42],
            ..Default::default()
        };
        assert_eq!(
            parse_router_response(&unknown, &tokens, 400)
                .unwrap_err()
                .to_string(),
            "Enum RouterResponseCode has no name defined for value 42"
        );
        let json = HttpResponse {
            status: 200,
            content_type: Some("application/json; charset=utf-8".into()),
            body: b"{}".to_vec(),
            ..Default::default()
        };
        assert!(matches!(
            parse_router_response(&json, &tokens, 400),
            Err(RouterCallError::Decode(_))
        ));
        let huge = HttpResponse {
            status: 500,
            body: vec![b'a'; 100_000],
            ..Default::default()
        };
        assert!(
            parse_router_response(&huge, &tokens, 400)
                .unwrap_err()
                .to_string()
                .len()
                < 9000
        );
    }

    fn setup_other() -> (ChaCha20Rng, ServerSecretKey, Tokens) {
        let mut r = ChaCha20Rng::from_seed([2; 32]);
        let sk = ServerSecretKey::random(&mut r);
        let tokens = Tokens::new(b"session", &sk.public_key(7).unwrap(), &mut r);
        (r, sk, tokens)
    }

    #[test]
    fn typed_payloads() {
        let list = PAMOnlineControllers {
            deprecated: vec![],
            controllers: vec![PAMOnlineController {
                controller_uid: (0u8..16).collect(),
                ..Default::default()
            }],
        };
        let parsed = parse_online_controllers(Some(&list.encode_to_vec())).unwrap();
        assert!(gateway_online(&parsed, "AAECAwQFBgcICQoLDA0ODw"));
        assert!(gateway_online(&parsed, "AAECAwQFBgcICQoLDA0ODw=="));
        assert!(!gateway_online(&parsed, "BBECAwQFBgcICQoLDA0ODw"));
        assert!(!gateway_online(&parsed, "!!"));
        assert!(parse_online_controllers(None)
            .unwrap()
            .controllers
            .is_empty());
        assert!(parse_online_controllers(Some(&[0x12, 0x40])).is_err());
        let creds = RelayAccessCreds {
            username: "u".into(),
            password: "p".into(),
            server_time: 1,
        };
        assert_eq!(
            parse_relay_creds(Some(&creds.encode_to_vec())).unwrap(),
            creds
        );
        assert!(parse_relay_creds(None).is_err());
    }

    #[test]
    fn cookies() {
        assert_eq!(cookie_header(&[]), None);
        let set = vec![
            "AWSALB=abc; Expires=Tue, 02 Dec 2025 13:00:00 GMT; Path=/".to_string(),
            "AWSALBCORS=abc; Path=/; SameSite=None; Secure".to_string(),
            "junk".to_string(),
            "=novalue".to_string(),
            "AWSALB=def; Path=/".to_string(),
            "gone=1; Max-Age=0".to_string(),
        ];
        assert_eq!(
            cookie_header(&set).as_deref(),
            Some("AWSALB=def; AWSALBCORS=abc")
        );
        let del = vec!["a=1".to_string(), "a=; Max-Age=0".to_string()];
        assert_eq!(cookie_header(&del), None);
    }
}
