//! A sans-IO emulated Keeper router ("krouter"), for the deterministic simulation and the real-socket
//! emulator. It speaks the same wire as the real one (§2–§3, §9 of the protocol notes): the EC envelope,
//! protobuf `RouterResponse`s, streaming correlation between a client's WebSocket and its
//! `streamResponse=true` POSTs, and the gateway relay.
//!
//! No I/O and no timing: the caller feeds requests, WebSocket events and gateway replies (each with
//! `now`), and performs the [`RouterEvent`]s it drains. Latency is added around it by the simulation or
//! the emulator. Failure modes worth testing a launcher against are injected with [`Faults`].
//!
//! Every HTTP answer, immediate or deferred, is delivered as a [`RouterEvent::HttpResponse`];
//! [`RouterServer::http_request`] only says which of the two it was ([`Handled`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use prost::Message as _;
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore};
use serde_json::Value;

use super::endpoints::{gateway_uid_bytes, reason_phrase, RELAY_CREDS_EXPIRE_SEC};
use super::envelope::{OpenedTokens, ServerSecretKey};
use super::proto::{
    ControllerResponse, PAMOnlineController, PAMOnlineControllers, RelayAccessCreds,
    RouterControllerMessage, RouterResponse, RouterResponseCode,
};
use crate::signaling::{controller_response_payload, ws_push_frame, WS_FRAME_TYPE};
use crate::{HttpResponse, Method};

/// Largest request body accepted (a real offer is a few KiB).
pub const MAX_REQUEST_BODY: usize = 1 << 20;
/// Most WebSockets kept at once.
pub const MAX_WEBSOCKETS: usize = 1024;
/// Most relayed messages remembered for reply routing; the oldest are forgotten first.
pub const MAX_PENDING: usize = 16 * 1024;
/// `RouterControllerMessage.timeout` used when the client sends 0 or a negative value.
pub const DEFAULT_GATEWAY_TIMEOUT: Duration = Duration::from_secs(30);
/// The Unix time (ms) the emulated router reports at its first input (2026-01-01T00:00:00Z).
pub const EMULATED_EPOCH_MS: i64 = 1_767_225_600_000;
/// Content type of protobuf answers (anything but `application/json` means protobuf to Commander).
pub const PROTOBUF_CONTENT_TYPE: &str = "application/octet-stream";
/// The WebSocket path.
pub const WS_PATH: &str = "/api/user/client";

/// Failures to inject. Queues are consumed front first, one entry per `send_controller_message`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// A streaming offer (`kind:"start"`) that arrives less than this after its session's WebSocket
    /// opened is refused with `RRC_BAD_STATE` (what Commander's `WEBSOCKET_BACKEND_DELAY` guards against).
    pub registration_lag: Duration,
    /// The next `send_controller_message` calls answer these HTTP statuses (e.g. 502/503/504, as an
    /// ALB in front of the router would), before any authentication.
    pub http_status_failures: Vec<u16>,
    /// The next `send_controller_message` calls (after the HTTP failures) answer these codes.
    pub rrc_failures: Vec<RouterResponseCode>,
    /// Every gateway is missing from `get_controllers` and messages get `RRC_CONTROLLER_DOWN`.
    pub gateway_offline: bool,
}

/// What the emulated router is.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The router's private key; clients encrypt transmission keys to its public key.
    pub secret: ServerSecretKey,
    /// Uids (URL-safe base64) of the gateways connected to this router.
    pub gateways: Vec<String>,
    pub faults: Faults,
    /// What `relay_access_creds` answers: a real TURN server's long-term credentials (the emulator's
    /// `--relay-user/--relay-password`, so a client can allocate on coturn). `None`: random ones, as
    /// before (they work on no server).
    pub relay_credentials: Option<crate::relay::TurnCredentials>,
}

/// How [`RouterServer::http_request`] handled a request. Either way the response itself arrives as a
/// [`RouterEvent::HttpResponse`] with the request's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The response is already queued.
    Answered,
    /// The response waits for the gateway's first reply (non-streaming `send_controller_message`), or
    /// for the message's timeout ([`RouterServer::handle_timeout`]).
    Deferred,
}

/// What the router asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum RouterEvent {
    /// Answer HTTP request `id`.
    HttpResponse { id: u64, response: HttpResponse },
    /// Send a text frame on WebSocket `ws_id`.
    WsSend { ws_id: u64, text: String },
    /// Deliver a controller message (the decrypted `GatewayAction` JSON) to the gateway; answer with
    /// [`RouterServer::gateway_reply`] and the same `reply_to`. [`RouterServer::gateway_of`] names the
    /// addressed gateway when there are several.
    ToGateway {
        reply_to: u64,
        stream: bool,
        payload: String,
    },
    /// Something worth a debug line (never contains secrets).
    Log(String),
}

/// An authenticated client WebSocket.
#[derive(Debug, Clone)]
struct WsSession {
    transmission_key: [u8; 32],
    session_token: Vec<u8>,
    opened_at: Instant,
}

/// A relayed message whose replies are still routable.
#[derive(Debug, Clone)]
struct Pending {
    gateway_uid: String,
    message_uid: Vec<u8>,
    transmission_key: [u8; 32],
    session_token: Vec<u8>,
    /// The held HTTP request of a non-streaming message, until its first reply or timeout.
    waiting: Option<Waiting>,
}

#[derive(Debug, Clone)]
struct Waiting {
    http_id: u64,
    tokens: OpenedTokens,
    deadline: Instant,
}

/// The emulated router. Deterministic for a given RNG and input sequence.
pub struct RouterServer<R: RngCore + CryptoRng = ChaCha20Rng> {
    config: RouterConfig,
    rng: R,
    events: VecDeque<RouterEvent>,
    websockets: BTreeMap<u64, WsSession>,
    pending: BTreeMap<u64, Pending>,
    next_reply_to: u64,
    epoch: Option<Instant>,
}

impl<R: RngCore + CryptoRng> std::fmt::Debug for RouterServer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterServer")
            .field("gateways", &self.config.gateways)
            .field("faults", &self.config.faults)
            .field("websockets", &self.websockets.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

fn text_response(status: u16, body: &str) -> HttpResponse {
    HttpResponse {
        status,
        content_type: Some("text/plain; charset=utf-8".into()),
        set_cookies: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

/// An HTML error page like the AWS load balancer in front of the real router serves.
fn alb_error(status: u16) -> HttpResponse {
    let title = format!("{status} {}", reason_phrase(status));
    HttpResponse {
        status,
        content_type: Some("text/html".into()),
        set_cookies: Vec::new(),
        body: format!("<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n</body>\r\n</html>\r\n")
            .into_bytes(),
    }
}

fn protobuf_response(rr: &RouterResponse) -> HttpResponse {
    HttpResponse {
        status: 200,
        content_type: Some(PROTOBUF_CONTENT_TYPE.into()),
        set_cookies: Vec::new(),
        body: rr.encode_to_vec(),
    }
}

fn rrc_response(code: RouterResponseCode, message: &str) -> HttpResponse {
    protobuf_response(&RouterResponse {
        response_code: code as i32,
        error_message: message.to_string(),
        encrypted_payload: Vec::new(),
    })
}

/// The router's error text for an injected or real non-OK code.
fn rrc_message(code: RouterResponseCode) -> &'static str {
    match code {
        RouterResponseCode::RrcOk => "",
        RouterResponseCode::RrcTimeout => "Timed out waiting for the controller's response.",
        RouterResponseCode::RrcBadState => "The connection is not ready for this message.",
        RouterResponseCode::RrcControllerDown => "Controller is not connected.",
        RouterResponseCode::RrcBadRequest => "Bad request.",
        RouterResponseCode::RrcNotAllowed => "Not allowed.",
        RouterResponseCode::RrcWrongInstance => "Wrong router instance.",
        RouterResponseCode::RrcGeneralError => "General error.",
        RouterResponseCode::RrcNotAllowedEnforcementNotEnabled => {
            "Not allowed: enforcement is not enabled."
        }
        RouterResponseCode::RrcNotAllowedPamConfigFeaturesNotEnabled => {
            "Not allowed: the PAM configuration feature is not enabled."
        }
    }
}

/// Split `target` (`/path?query`, or a full `http(s)://` / `ws(s)://` URL) into path and query.
fn split_target(target: &str) -> (&str, &str) {
    let without_scheme = ["https://", "http://", "wss://", "ws://"]
        .iter()
        .find_map(|scheme| target.strip_prefix(scheme))
        .map(|rest| rest.find('/').map_or("/", |i| &rest[i..]))
        .unwrap_or(target);
    let without_fragment = without_scheme.split('#').next().unwrap_or("");
    without_fragment
        .split_once('?')
        .unwrap_or((without_fragment, ""))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

impl<R: RngCore + CryptoRng> RouterServer<R> {
    pub fn new(config: RouterConfig, rng: R) -> Self {
        RouterServer {
            config,
            rng,
            events: VecDeque::new(),
            websockets: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_reply_to: 1,
            epoch: None,
        }
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Change the injected failures at run time.
    pub fn faults_mut(&mut self) -> &mut Faults {
        &mut self.config.faults
    }

    /// Is this the router WebSocket path (the driver routes upgrades with it)?
    pub fn is_ws_path(target: &str) -> bool {
        split_target(target).0 == WS_PATH
    }

    /// The gateway a relayed message is addressed to.
    pub fn gateway_of(&self, reply_to: u64) -> Option<&str> {
        self.pending.get(&reply_to).map(|p| p.gateway_uid.as_str())
    }

    /// The next thing to do, if any. Drain after every input.
    pub fn poll_event(&mut self) -> Option<RouterEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline of a held non-streaming request.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter_map(|p| p.waiting.as_ref().map(|w| w.deadline))
            .min()
    }

    fn log(&mut self, text: String) {
        self.events.push_back(RouterEvent::Log(text));
    }

    fn respond(&mut self, id: u64, response: HttpResponse) -> Handled {
        self.events
            .push_back(RouterEvent::HttpResponse { id, response });
        Handled::Answered
    }

    fn touch(&mut self, now: Instant) {
        self.epoch.get_or_insert(now);
    }

    /// Unix milliseconds "now", on the emulated clock.
    fn server_time_ms(&self, now: Instant) -> i64 {
        let since = self
            .epoch
            .map(|e| now.saturating_duration_since(e))
            .unwrap_or_default();
        EMULATED_EPOCH_MS.saturating_add(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    fn online_gateways(&self) -> Vec<String> {
        if self.config.faults.gateway_offline {
            Vec::new()
        } else {
            self.config.gateways.clone()
        }
    }

    fn random_hex(&mut self, n: usize) -> String {
        let mut b = vec![0u8; n];
        self.rng.fill_bytes(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// An HTTP request: `target` is the path with query (a full URL is accepted too).
    pub fn http_request(
        &mut self,
        id: u64,
        method: Method,
        target: &str,
        headers: &[(String, String)],
        body: &[u8],
        now: Instant,
    ) -> Handled {
        self.touch(now);
        let (path, query) = split_target(target);
        let method_name = match method {
            Method::Get => "GET",
            Method::Post => "POST",
        };
        self.log(format!("{method_name} {path}"));
        if body.len() > MAX_REQUEST_BODY {
            return self.respond(id, text_response(413, "request body too large"));
        }
        let Some(endpoint) = path.strip_prefix("/api/user/") else {
            if path == "/api/device/connect_state" && method == Method::Post {
                return self.respond(id, text_response(200, ""));
            }
            return self.respond(id, text_response(404, "not found"));
        };
        if let Some(gateway) = endpoint.strip_prefix("bind_to_controller/") {
            if method != Method::Get {
                return self.respond(id, text_response(405, "method not allowed"));
            }
            return self.bind_to_controller(id, gateway);
        }
        let expected = match endpoint {
            "relay_access_creds" | "get_controllers" | "send_controller_message" => Method::Post,
            "client" => return self.respond(id, text_response(426, "WebSocket upgrade required")),
            _ => return self.respond(id, text_response(404, "not found")),
        };
        if method != expected {
            return self.respond(id, text_response(405, "method not allowed"));
        }
        if endpoint == "send_controller_message"
            && !self.config.faults.http_status_failures.is_empty()
        {
            let status = self.config.faults.http_status_failures.remove(0);
            self.log(format!(
                "fault: send_controller_message answers HTTP {status}"
            ));
            return self.respond(id, alb_error(status));
        }
        let tokens = match OpenedTokens::from_headers(headers, &self.config.secret) {
            Ok(t) => t,
            Err(e) => {
                self.log(format!("{path}: authentication failed: {e}"));
                return self.respond(
                    id,
                    text_response(401, &format!("invalid router credentials: {e}")),
                );
            }
        };
        match endpoint {
            "relay_access_creds" => self.relay_access_creds(id, &tokens, query, now),
            "get_controllers" => self.get_controllers(id, &tokens, now),
            _ => self.send_controller_message(id, tokens, body, now),
        }
    }

    fn bind_to_controller(&mut self, id: u64, gateway: &str) -> Handled {
        let sticky = self.random_hex(16);
        let response = HttpResponse {
            status: 200,
            content_type: Some("text/plain; charset=utf-8".into()),
            set_cookies: vec![
                format!("AWSALB={sticky}; Path=/"),
                format!("AWSALBCORS={sticky}; Path=/; SameSite=None; Secure"),
            ],
            body: Vec::new(),
        };
        self.log(format!("bind_to_controller {gateway}: sticky cookie set"));
        self.respond(id, response)
    }

    fn ok_with_payload(&mut self, id: u64, tokens: &OpenedTokens, payload: &[u8]) -> Handled {
        let rr = RouterResponse {
            response_code: RouterResponseCode::RrcOk as i32,
            error_message: String::new(),
            encrypted_payload: tokens.seal(payload, &mut self.rng),
        };
        self.respond(id, protobuf_response(&rr))
    }

    fn relay_access_creds(
        &mut self,
        id: u64,
        tokens: &OpenedTokens,
        query: &str,
        now: Instant,
    ) -> Handled {
        let expire_sec = query_param(query, "expire-sec")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(RELAY_CREDS_EXPIRE_SEC);
        let server_time = self.server_time_ms(now);
        let expiry =
            (server_time / 1000).saturating_add(i64::try_from(expire_sec).unwrap_or(i64::MAX));
        let user = self.random_hex(8);
        let mut secret = [0u8; 20];
        self.rng.fill_bytes(&mut secret);
        let creds = match &self.config.relay_credentials {
            Some(c) => RelayAccessCreds {
                username: c.username.clone(),
                password: c.password.clone(),
                server_time,
            },
            None => RelayAccessCreds {
                username: format!("{expiry}:{user}"),
                password: STANDARD.encode(secret),
                server_time,
            },
        };
        self.ok_with_payload(id, tokens, &creds.encode_to_vec())
    }

    fn get_controllers(&mut self, id: u64, tokens: &OpenedTokens, now: Instant) -> Handled {
        let connected_on = self.server_time_ms(now);
        let controllers = self
            .online_gateways()
            .into_iter()
            .map(|uid| PAMOnlineController {
                controller_uid: gateway_uid_bytes(&uid).unwrap_or_else(|_| uid.into_bytes()),
                connected_on,
                ip_address: "127.0.0.1".into(),
                version: "pam-lite-emulator".into(),
                connections: Vec::new(),
            })
            .collect();
        let list = PAMOnlineControllers {
            deprecated: Vec::new(),
            controllers,
        };
        self.ok_with_payload(id, tokens, &list.encode_to_vec())
    }

    /// The online gateway with these `controllerUid` bytes.
    fn find_gateway(&self, controller_uid: &[u8]) -> Option<String> {
        self.online_gateways().into_iter().find(|uid| {
            gateway_uid_bytes(uid).map_or_else(
                |_| uid.as_bytes() == controller_uid,
                |b| b == controller_uid,
            )
        })
    }

    /// The WebSockets a streamed reply goes to: those opened with the same transmission key (Commander's
    /// trickle mode shares one), else those of the same session token.
    fn ws_targets(&self, transmission_key: &[u8; 32], session_token: &[u8]) -> Vec<u64> {
        let same_tk: Vec<u64> = self
            .websockets
            .iter()
            .filter(|(_, w)| &w.transmission_key == transmission_key)
            .map(|(id, _)| *id)
            .collect();
        if !same_tk.is_empty() {
            return same_tk;
        }
        self.websockets
            .iter()
            .filter(|(_, w)| w.session_token == session_token)
            .map(|(id, _)| *id)
            .collect()
    }

    fn send_controller_message(
        &mut self,
        id: u64,
        tokens: OpenedTokens,
        body: &[u8],
        now: Instant,
    ) -> Handled {
        let plain = match tokens.open(body) {
            Ok(p) => p,
            Err(e) => {
                return self.respond(
                    id,
                    rrc_response(RouterResponseCode::RrcBadRequest, &format!("{e}")),
                );
            }
        };
        let msg = match RouterControllerMessage::decode(plain.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                let text = format!("invalid RouterControllerMessage: {e}");
                return self.respond(id, rrc_response(RouterResponseCode::RrcBadRequest, &text));
            }
        };
        if !self.config.faults.rrc_failures.is_empty() {
            let code = self.config.faults.rrc_failures.remove(0);
            self.log(format!(
                "fault: send_controller_message answers {}",
                code.name()
            ));
            return self.respond(id, rrc_response(code, rrc_message(code)));
        }
        let Some(gateway_uid) = self.find_gateway(&msg.controller_uid) else {
            self.log("send_controller_message: the gateway is not connected".into());
            let code = RouterResponseCode::RrcControllerDown;
            return self.respond(id, rrc_response(code, rrc_message(code)));
        };
        let Ok(payload) = String::from_utf8(msg.payload) else {
            return self.respond(
                id,
                rrc_response(RouterResponseCode::RrcBadRequest, "payload is not UTF-8"),
            );
        };
        let kind = serde_json::from_str::<Value>(&payload)
            .ok()
            .and_then(|v| v.get("inputs")?.get("kind")?.as_str().map(str::to_string));
        if msg.stream_response {
            let targets = self.ws_targets(&tokens.transmission_key, &tokens.session_token);
            let newest_open = targets
                .iter()
                .filter_map(|t| self.websockets.get(t))
                .map(|w| w.opened_at)
                .max();
            let Some(opened_at) = newest_open else {
                self.log("streaming message without a WebSocket for its session".into());
                let text = "No WebSocket connection for this session; cannot stream the response.";
                return self.respond(id, rrc_response(RouterResponseCode::RrcBadState, text));
            };
            let lag = self.config.faults.registration_lag;
            if kind.as_deref() == Some("start") && now.saturating_duration_since(opened_at) < lag {
                self.log("fault: offer before the WebSocket registration finished".into());
                let code = RouterResponseCode::RrcBadState;
                return self.respond(id, rrc_response(code, rrc_message(code)));
            }
        }
        let reply_to = self.next_reply_to;
        self.next_reply_to = self.next_reply_to.wrapping_add(1).max(1);
        let waiting = if msg.stream_response {
            None
        } else {
            let timeout = u64::try_from(msg.timeout)
                .ok()
                .filter(|t| *t > 0)
                .map_or(DEFAULT_GATEWAY_TIMEOUT, Duration::from_millis);
            let deadline = now.checked_add(timeout).unwrap_or(now);
            Some(Waiting {
                http_id: id,
                tokens: tokens.clone(),
                deadline,
            })
        };
        self.evict_if_full();
        self.pending.insert(
            reply_to,
            Pending {
                gateway_uid,
                message_uid: msg.message_uid,
                transmission_key: tokens.transmission_key,
                session_token: tokens.session_token.clone(),
                waiting,
            },
        );
        self.log(format!(
            "relaying message #{reply_to} (kind {}, stream {}) to the gateway",
            kind.as_deref().unwrap_or("?"),
            msg.stream_response
        ));
        self.events.push_back(RouterEvent::ToGateway {
            reply_to,
            stream: msg.stream_response,
            payload,
        });
        if msg.stream_response {
            let rr = RouterResponse::default();
            self.respond(id, protobuf_response(&rr))
        } else {
            Handled::Deferred
        }
    }

    fn evict_if_full(&mut self) {
        while self.pending.len() >= MAX_PENDING {
            let Some((reply_to, old)) = self.pending.pop_first() else {
                break;
            };
            if let Some(w) = old.waiting {
                let code = RouterResponseCode::RrcGeneralError;
                self.respond(w.http_id, rrc_response(code, "router overloaded"));
            }
            self.log(format!(
                "forgot message #{reply_to} (too many pending messages)"
            ));
        }
    }

    /// A client WebSocket upgrade with its headers. `Err` is the HTTP status to refuse it with.
    pub fn ws_open(
        &mut self,
        ws_id: u64,
        headers: &[(String, String)],
        now: Instant,
    ) -> Result<(), u16> {
        self.touch(now);
        if self.websockets.len() >= MAX_WEBSOCKETS && !self.websockets.contains_key(&ws_id) {
            self.log("WebSocket refused: too many connections".into());
            return Err(503);
        }
        match OpenedTokens::from_headers(headers, &self.config.secret) {
            Ok(t) => {
                self.websockets.insert(
                    ws_id,
                    WsSession {
                        transmission_key: t.transmission_key,
                        session_token: t.session_token,
                        opened_at: now,
                    },
                );
                self.log(format!("WebSocket {ws_id} open"));
                Ok(())
            }
            Err(e) => {
                self.log(format!("WebSocket {ws_id} refused: {e}"));
                Err(401)
            }
        }
    }

    /// A client WebSocket closed.
    pub fn ws_closed(&mut self, ws_id: u64) {
        if self.websockets.remove(&ws_id).is_some() {
            self.log(format!("WebSocket {ws_id} closed"));
        }
    }

    /// The gateway's reply to message `reply_to` (its `{"is_ok":…,"data":…}` JSON). The first reply to a
    /// non-streaming message answers the held HTTP request; every other reply is pushed to the session's
    /// WebSocket(s).
    pub fn gateway_reply(&mut self, reply_to: u64, payload: &str, now: Instant) {
        self.touch(now);
        let Some(pending) = self.pending.get_mut(&reply_to) else {
            self.log(format!("reply to unknown message #{reply_to} dropped"));
            return;
        };
        if let Some(w) = pending.waiting.take() {
            let cr = ControllerResponse {
                payload: controller_response_payload(payload),
            };
            let plain = cr.encode_to_vec();
            self.ok_with_payload(w.http_id, &w.tokens, &plain);
            return;
        }
        let (message_uid, tk, token) = (
            pending.message_uid.clone(),
            pending.transmission_key,
            pending.session_token.clone(),
        );
        let targets = self.ws_targets(&tk, &token);
        if targets.is_empty() {
            self.log(format!(
                "reply to #{reply_to} dropped: no WebSocket for its session"
            ));
            return;
        }
        let text = ws_push_frame(&message_uid, WS_FRAME_TYPE, payload);
        for ws_id in targets {
            self.events.push_back(RouterEvent::WsSend {
                ws_id,
                text: text.clone(),
            });
        }
    }

    /// Time passed: held non-streaming requests past their `timeout` get `RRC_TIMEOUT` (later replies
    /// then go to the WebSocket, if any).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.waiting.as_ref().is_some_and(|w| w.deadline <= now))
            .map(|(k, _)| *k)
            .collect();
        for reply_to in expired {
            let Some(w) = self
                .pending
                .get_mut(&reply_to)
                .and_then(|p| p.waiting.take())
            else {
                continue;
            };
            self.log(format!(
                "message #{reply_to}: the gateway did not answer in time"
            ));
            let code = RouterResponseCode::RrcTimeout;
            self.respond(w.http_id, rrc_response(code, rrc_message(code)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::endpoints::{
        self, parse_router_response, RouterCallError, OK_BELOW_OTHER, OK_BELOW_SEND,
    };
    use crate::router::envelope::Tokens;
    use crate::signaling::{self, ConversationId, GatewayAction, GatewayData, TunnelKey};
    use rand_chacha::rand_core::SeedableRng;

    const GW: &str = "AAECAwQFBgcICQoLDA0ODw";

    struct Fixture {
        server: RouterServer,
        tokens: Tokens,
        rng: ChaCha20Rng,
        t0: Instant,
        next_id: u64,
    }

    fn fixture(faults: Faults) -> Fixture {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let secret = ServerSecretKey::random(&mut rng);
        let tokens = Tokens::new(b"session", &secret.public_key(7).unwrap(), &mut rng);
        let server = RouterServer::new(
            RouterConfig {
                secret,
                gateways: vec![GW.into()],
                faults,
                relay_credentials: None,
            },
            ChaCha20Rng::from_seed([5; 32]),
        );
        Fixture {
            server,
            tokens,
            rng,
            t0: pam_lite_dev_clock::origin(),
            next_id: 1,
        }
    }

    fn events(s: &mut RouterServer) -> Vec<RouterEvent> {
        std::iter::from_fn(|| s.poll_event())
            .filter(|e| !matches!(e, RouterEvent::Log(_)))
            .collect()
    }

    impl Fixture {
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        fn call(&mut self, req: crate::HttpRequest, ms: u64) -> (Handled, u64) {
            let id = self.next_id;
            self.next_id += 1;
            let now = self.at(ms);
            let h =
                self.server
                    .http_request(id, req.method, &req.url, &req.headers, &req.body, now);
            (h, id)
        }

        fn response(&mut self, id: u64) -> HttpResponse {
            let evs = events(&mut self.server);
            evs.into_iter()
                .find_map(|e| match e {
                    RouterEvent::HttpResponse { id: i, response } if i == id => Some(response),
                    _ => None,
                })
                .expect("a response")
        }

        fn send(
            &mut self,
            kind: &str,
            stream: bool,
            ms: u64,
            tokens: &Tokens,
        ) -> (Handled, u64, Vec<RouterEvent>) {
            let conv = ConversationId([9; 16]);
            let mut inputs = serde_json::Map::new();
            inputs.insert("kind".into(), kind.into());
            let action = GatewayAction {
                conversation_id: conv.url(),
                inputs,
                message_id: Some(conv.url()),
            };
            let msg =
                endpoints::controller_message(GW, &conv, &action, stream, Duration::from_secs(30));
            let req = endpoints::send_controller_message(
                "http://127.0.0.1:1",
                tokens,
                &msg,
                None,
                false,
                Duration::from_secs(1),
                &mut self.rng,
            );
            let (h, id) = self.call(req, ms);
            (h, id, events(&mut self.server))
        }
    }

    fn http_of(evs: &[RouterEvent], id: u64) -> Option<&HttpResponse> {
        evs.iter().find_map(|e| match e {
            RouterEvent::HttpResponse { id: i, response } if *i == id => Some(response),
            _ => None,
        })
    }

    fn to_gateway(evs: &[RouterEvent]) -> Option<(u64, bool, String)> {
        evs.iter().find_map(|e| match e {
            RouterEvent::ToGateway {
                reply_to,
                stream,
                payload,
            } => Some((*reply_to, *stream, payload.clone())),
            _ => None,
        })
    }

    #[test]
    fn relay_creds_controllers_and_bind() {
        let mut f = fixture(Faults::default());
        let tokens = f.tokens.clone();
        let (h, id) = f.call(
            endpoints::relay_access_creds("http://x", &tokens, true, Duration::ZERO),
            0,
        );
        assert_eq!(h, Handled::Answered);
        let r = f.response(id);
        let creds = endpoints::parse_relay_creds(
            parse_router_response(&r, &tokens, OK_BELOW_OTHER)
                .unwrap()
                .as_deref(),
        )
        .unwrap();
        assert!(creds
            .username
            .starts_with(&(EMULATED_EPOCH_MS / 1000 + 60_000_000).to_string()));
        assert!(!creds.password.is_empty());
        assert_eq!(creds.server_time, EMULATED_EPOCH_MS);

        let (_, id) = f.call(
            endpoints::get_controllers("http://x", &tokens, true, Duration::ZERO),
            1500,
        );
        let r = f.response(id);
        let list = endpoints::parse_online_controllers(
            parse_router_response(&r, &tokens, 400).unwrap().as_deref(),
        )
        .unwrap();
        assert!(endpoints::gateway_online(&list, GW));
        assert_eq!(list.controllers[0].connected_on, EMULATED_EPOCH_MS + 1500);

        let (_, id) = f.call(
            endpoints::bind_to_controller("http://x", GW, true, Duration::ZERO),
            0,
        );
        let r = f.response(id);
        assert_eq!(r.status, 200);
        assert!(endpoints::cookie_header(&r.set_cookies)
            .unwrap()
            .starts_with("AWSALB="));
    }

    #[test]
    fn bad_auth_is_401_with_a_message() {
        let mut f = fixture(Faults::default());
        let mut rng = ChaCha20Rng::from_seed([8; 32]);
        let stranger = ServerSecretKey::random(&mut rng);
        let wrong = Tokens::new(b"s", &stranger.public_key(7).unwrap(), &mut rng);
        let (_, id) = f.call(
            endpoints::get_controllers("http://x", &wrong, true, Duration::ZERO),
            0,
        );
        let r = f.response(id);
        assert_eq!(r.status, 401);
        assert!(String::from_utf8_lossy(&r.body).contains("transmission key"));
        let (_, id) = f.call(
            crate::HttpRequest {
                id: 0,
                method: Method::Post,
                url: "/api/user/get_controllers".into(),
                headers: vec![],
                body: vec![],
                fresh_connection: true,
                timeout: Duration::ZERO,
            },
            0,
        );
        assert!(String::from_utf8_lossy(&f.response(id).body)
            .contains("missing TransmissionKey header"));
        assert_eq!(f.server.ws_open(1, &wrong.headers(), f.t0), Err(401));
    }

    #[test]
    fn streaming_replies_go_to_the_sessions_websocket() {
        let mut f = fixture(Faults::default());
        let tokens = f.tokens.clone();
        // No WebSocket yet: streaming needs one.
        let (_, id, evs) = f.send("start", true, 0, &tokens);
        let err =
            parse_router_response(http_of(&evs, id).unwrap(), &tokens, OK_BELOW_SEND).unwrap_err();
        assert!(matches!(
            err,
            RouterCallError::Router {
                code: RouterResponseCode::RrcBadState,
                ..
            }
        ));

        assert_eq!(f.server.ws_open(7, &tokens.headers(), f.at(10)), Ok(()));
        let (h, id, evs) = f.send("start", true, 20, &tokens);
        assert_eq!(h, Handled::Answered);
        assert_eq!(
            parse_router_response(http_of(&evs, id).unwrap(), &tokens, OK_BELOW_SEND),
            Ok(None)
        );
        let (reply_to, stream, payload) = to_gateway(&evs).unwrap();
        assert!(stream);
        let action = GatewayAction::parse(&payload).unwrap();
        assert_eq!(action.kind(), Some("start"));
        assert_eq!(f.server.gateway_of(reply_to), Some(GW));

        // The gateway answers twice (answer, then candidates): both are pushed to WS 7.
        let key = TunnelKey::derive(b"seed", &[1; 16]);
        let data = key.encrypt(
            signaling::answer_data_json("v=0\r\n").as_bytes(),
            &mut f.rng,
        );
        f.server
            .gateway_reply(reply_to, &signaling::gateway_reply_ok(&data), f.at(30));
        f.server.gateway_reply(
            reply_to,
            &signaling::gateway_reply_ok("ice candidate received"),
            f.at(31),
        );
        let evs = events(&mut f.server);
        assert_eq!(evs.len(), 2);
        let RouterEvent::WsSend { ws_id, text } = &evs[0] else {
            panic!("{evs:?}")
        };
        assert_eq!(*ws_id, 7);
        let items = signaling::parse_ws_frame(text).unwrap();
        assert_eq!(items[0].conversation_id, ConversationId([9; 16]).std());
        assert_eq!(
            signaling::classify_gateway_data(&key, &items[0].payload),
            GatewayData::Answer("v=0\r\n".into())
        );

        // A WS of another session gets nothing; after WS 7 closes, replies are dropped.
        let other = Tokens::new(
            b"other session",
            &f.server.config().secret.public_key(7).unwrap(),
            &mut f.rng,
        );
        f.server.ws_open(8, &other.headers(), f.at(40)).unwrap();
        f.server.ws_closed(7);
        f.server.gateway_reply(reply_to, "{}", f.at(50));
        assert!(events(&mut f.server).is_empty());
        f.server.gateway_reply(999, "{}", f.at(50));
        assert!(events(&mut f.server).is_empty());
    }

    #[test]
    fn same_session_other_tk_still_streams() {
        let mut f = fixture(Faults::default());
        let tokens = f.tokens.clone();
        f.server.ws_open(1, &tokens.headers(), f.t0).unwrap();
        let fresh = Tokens::new(
            b"session",
            &f.server.config().secret.public_key(7).unwrap(),
            &mut f.rng,
        );
        let (_, _, evs) = f.send("icecandidate", true, 10, &fresh);
        let (reply_to, ..) = to_gateway(&evs).unwrap();
        f.server
            .gateway_reply(reply_to, "{\"is_ok\":true}", f.at(20));
        assert!(matches!(
            events(&mut f.server).as_slice(),
            [RouterEvent::WsSend { ws_id: 1, .. }]
        ));
    }

    #[test]
    fn non_streaming_first_reply_is_the_http_answer() {
        let mut f = fixture(Faults::default());
        let tokens = f.tokens.clone();
        let (h, id, evs) = f.send("start", false, 0, &tokens);
        assert_eq!(h, Handled::Deferred);
        assert!(http_of(&evs, id).is_none());
        let (reply_to, stream, _) = to_gateway(&evs).unwrap();
        assert!(!stream);
        assert_eq!(f.server.poll_timeout(), Some(f.at(30_000)));
        let key = TunnelKey::derive(b"seed", &[1; 16]);
        let data = key.encrypt(
            signaling::answer_data_json("v=0\r\n").as_bytes(),
            &mut f.rng,
        );
        f.server
            .gateway_reply(reply_to, &signaling::gateway_reply_ok(&data), f.at(100));
        let r = f.response(id);
        let plain = parse_router_response(&r, &tokens, OK_BELOW_SEND).unwrap();
        let value = endpoints::parse_controller_response(plain.as_deref()).unwrap();
        assert_eq!(
            signaling::non_streaming_answer(&key, value.as_ref()),
            Ok(GatewayData::Answer("v=0\r\n".into()))
        );
        assert_eq!(f.server.poll_timeout(), None);
    }

    #[test]
    fn non_streaming_timeout_is_rrc_timeout() {
        let mut f = fixture(Faults::default());
        let tokens = f.tokens.clone();
        let (_, id, _) = f.send("start", false, 0, &tokens);
        f.server.handle_timeout(f.at(29_999));
        assert!(events(&mut f.server).is_empty());
        f.server.handle_timeout(f.at(30_000));
        let r = f.response(id);
        let err = parse_router_response(&r, &tokens, OK_BELOW_SEND).unwrap_err();
        assert!(
            err.to_string().ends_with("response code: RRC_TIMEOUT"),
            "{err}"
        );
    }

    #[test]
    fn faults() {
        let mut f = fixture(Faults {
            registration_lag: Duration::from_millis(500),
            http_status_failures: vec![503],
            rrc_failures: vec![RouterResponseCode::RrcTimeout],
            gateway_offline: false,
        });
        let tokens = f.tokens.clone();
        f.server.ws_open(1, &tokens.headers(), f.t0).unwrap();
        let (_, id, evs) = f.send("start", true, 100, &tokens);
        let err =
            parse_router_response(http_of(&evs, id).unwrap(), &tokens, OK_BELOW_SEND).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("503: error: Service Unavailable, message: <html>"),
            "{err}"
        );
        let (_, id, evs) = f.send("start", true, 200, &tokens);
        let err =
            parse_router_response(http_of(&evs, id).unwrap(), &tokens, OK_BELOW_SEND).unwrap_err();
        assert!(err.to_string().ends_with("RRC_TIMEOUT"));
        // Registration lag: an offer 300 ms after the WS opened is refused, candidates are not.
        let (_, id, evs) = f.send("start", true, 300, &tokens);
        let err =
            parse_router_response(http_of(&evs, id).unwrap(), &tokens, OK_BELOW_SEND).unwrap_err();
        assert!(err.to_string().ends_with("RRC_BAD_STATE"));
        assert!(to_gateway(&evs).is_none());
        let (_, _, evs) = f.send("icecandidate", true, 300, &tokens);
        assert!(to_gateway(&evs).is_some());
        let (_, _, evs) = f.send("start", true, 500, &tokens);
        assert!(to_gateway(&evs).is_some());
        // Gateway offline.
        f.server.faults_mut().gateway_offline = true;
        let (_, id, evs) = f.send("start", true, 600, &tokens);
        let err =
            parse_router_response(http_of(&evs, id).unwrap(), &tokens, OK_BELOW_SEND).unwrap_err();
        assert!(err.to_string().ends_with("RRC_CONTROLLER_DOWN"));
        let (_, id) = f.call(
            endpoints::get_controllers("http://x", &tokens, true, Duration::ZERO),
            700,
        );
        let r = f.response(id);
        let list = endpoints::parse_online_controllers(
            parse_router_response(&r, &tokens, 400).unwrap().as_deref(),
        )
        .unwrap();
        assert!(list.controllers.is_empty());
    }

    #[test]
    fn routing_edge_cases() {
        let mut f = fixture(Faults::default());
        let now = f.t0;
        let mut req = |m, t: &str| {
            f.server.http_request(1, m, t, &[], b"", now);
            events(&mut f.server).into_iter().find_map(|e| match e {
                RouterEvent::HttpResponse { response, .. } => Some(response.status),
                _ => None,
            })
        };
        assert_eq!(req(Method::Get, "/nope"), Some(404));
        assert_eq!(req(Method::Get, "/api/user/get_controllers"), Some(405));
        assert_eq!(
            req(Method::Post, "/api/user/bind_to_controller/x"),
            Some(405)
        );
        assert_eq!(
            req(Method::Get, "https://h:1/api/user/bind_to_controller/x?y#z"),
            Some(200)
        );
        assert_eq!(req(Method::Post, "/api/device/connect_state"), Some(200));
        assert_eq!(req(Method::Get, "/api/user/client"), Some(426));
        assert!(RouterServer::<ChaCha20Rng>::is_ws_path(
            "wss://h/api/user/client"
        ));
        assert!(RouterServer::<ChaCha20Rng>::is_ws_path(
            "/api/user/client?x=1"
        ));
    }

    #[test]
    fn garbage_bodies_are_bad_requests() {
        let mut f = fixture(Faults::default());
        let tokens = f.tokens.clone();
        let now = f.t0;
        for body in [
            b"short".to_vec(),
            tokens.seal(&[0xff, 0xff, 0xff], &mut f.rng),
        ] {
            f.server.http_request(
                1,
                Method::Post,
                "/api/user/send_controller_message",
                &tokens.headers(),
                &body,
                now,
            );
            let r = f.response(1);
            let err = parse_router_response(&r, &tokens, OK_BELOW_SEND).unwrap_err();
            assert!(err.to_string().ends_with("RRC_BAD_REQUEST"), "{err}");
        }
    }
}
