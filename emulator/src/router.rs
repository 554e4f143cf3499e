//! The core's sans-IO [`RouterServer`] behind the hub's [`RouterCore`] interface.

use std::time::Instant;

use pam_lite_core::router::server::{RouterEvent, RouterServer};
use pam_lite_core::Method;

use crate::hub::{RouterCore, RouterOut};

impl RouterCore for RouterServer {
    fn http_request(
        &mut self,
        id: u64,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
        now: Instant,
    ) {
        let _ = RouterServer::http_request(self, id, method, url, headers, body, now);
    }

    fn ws_open(&mut self, ws: u64, headers: &[(String, String)], now: Instant) -> Result<(), u16> {
        RouterServer::ws_open(self, ws, headers, now)
    }

    fn ws_closed(&mut self, ws: u64, _now: Instant) {
        RouterServer::ws_closed(self, ws);
    }

    fn gateway_reply(&mut self, reply_to: u64, payload: &str, now: Instant) {
        RouterServer::gateway_reply(self, reply_to, payload, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        RouterServer::handle_timeout(self, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        RouterServer::poll_timeout(self)
    }

    fn poll_event(&mut self) -> Option<RouterOut> {
        loop {
            return match RouterServer::poll_event(self)? {
                RouterEvent::HttpResponse { id, response } => {
                    Some(RouterOut::Http { id, response })
                }
                RouterEvent::WsSend { ws_id, text } => Some(RouterOut::WsSend { ws: ws_id, text }),
                RouterEvent::ToGateway {
                    reply_to,
                    stream,
                    payload,
                } => Some(RouterOut::ToGateway {
                    reply_to,
                    stream,
                    payload,
                }),
                RouterEvent::Log(line) => {
                    tracing::debug!(target: "pam_lite_emulator::router", "{line}");
                    continue;
                }
            };
        }
    }
}
