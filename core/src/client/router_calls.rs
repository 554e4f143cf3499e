//! The router HTTP calls that are not the offer or a candidate batch, and the routing of every HTTP
//! answer to the behaviour that asked.
//!
//! * `relay_access_creds`: in Commander's profiles serial, before everything else (its schedule waits for
//!   it); in `fast` only when the relay plan needs credentials the ticket lacks, in parallel with the
//!   first requests (`Call::TurnCreds`: only the TURN allocation waits for it).
//! * `bind_to_controller` (trickle only): the ALB stickiness cookie the WebSocket and the POSTs carry.
//!   Commander binds through the `requests.Session` that later carries the offer and the candidates, so
//!   this call opens the launch's keep-alive connection in every profile. A failure is ignored, as
//!   Commander does.
//! * The online check: `fast` asks `get_controllers` once, in parallel with setup, so an offline gateway
//!   is reported as such (the router itself only says `RRC_CONTROLLER_DOWN`). Commander's profiles ask
//!   before every action instead (the pre-checks, sent by the offer and candidate modules).

use std::collections::HashMap;
use std::time::Duration;

use crate::offer_retry::AttemptFailure;
use crate::relay::TurnCredentials;
use crate::router::endpoints::{self, RouterCallError};
use crate::router::envelope::Tokens;
use crate::signaling::GatewayAction;
use crate::timing::{names, PHASE_WEBRTC_TUNNEL as WEBRTC_TUNNEL};
use crate::{HttpRequest, HttpResponse, Output, RequestId};

use super::{Client, Step};

/// What an in-flight HTTP request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    /// Commander's serial `relay_access_creds`, before everything else.
    RelayCreds,
    /// `relay_access_creds` for the relay layer, in parallel with the other first calls (profiles that
    /// do not wait for it).
    TurnCreds,
    Bind,
    /// The one-off online check of the `fast` profile.
    OnlineCheck,
    /// get_controllers before the offer attempt (Commander's per-action pre-check).
    OfferPrecheck,
    Offer,
    /// get_controllers before a candidate batch.
    CandidatePrecheck,
    Candidates,
    /// An `ice_restart_offer` / `ice_restart_answer` POST (`recovery`).
    IceRestart,
}

/// The state of the router calls.
pub(super) struct RouterCalls {
    next_request: RequestId,
    /// What each in-flight request is for, and the tokens that will open its answer.
    calls: HashMap<RequestId, (Call, Tokens)>,
    relay: Step,
    bind: Step,
    /// The ALB stickiness cookie from `bind_to_controller`.
    pub(super) cookie: Option<String>,
    /// What the one-off online check said (`None`: not asked, or unreadable).
    pub(super) online: Option<bool>,
    online_step: Step,
    /// The relay layer's `relay_access_creds` went out.
    turn_creds_asked: bool,
}

impl RouterCalls {
    pub(super) fn new() -> Self {
        RouterCalls {
            next_request: 1,
            calls: HashMap::new(),
            relay: Step::NotStarted,
            bind: Step::NotStarted,
            cookie: None,
            online: None,
            online_step: Step::NotStarted,
            turn_creds_asked: false,
        }
    }

    pub(super) fn relay_done(&self) -> bool {
        self.relay == Step::Done
    }

    /// Whether the WS and the offer may go (bind is trickle-only).
    pub(super) fn bind_done(&self, trickle: bool) -> bool {
        !trickle || self.bind == Step::Done
    }
}

impl Client {
    /// Send `req` and remember what it is for.
    pub(super) fn request(&mut self, call: Call, tokens: Tokens, mut req: HttpRequest) {
        let id = self.router.next_request;
        self.router.next_request += 1;
        req.id = id;
        self.router.calls.insert(id, (call, tokens));
        self.outputs.push_back(Output::Http(req));
    }

    pub(super) fn base(&self) -> &str {
        &self.cfg.router_url
    }

    /// Steps 1–3 of the reconciler: relay credentials, the online check, bind_to_controller.
    pub(super) fn advance_router_calls(&mut self) {
        let p = self.profile().clone();
        let trickle = self.cfg.trickle_ice;
        if self.router.relay == Step::NotStarted {
            if p.fetch_relay_creds {
                self.router.relay = Step::Running;
                let tokens = self.tokens_for(false);
                let req = endpoints::relay_access_creds(
                    self.base(),
                    &tokens,
                    p.fresh_connections,
                    p.http_timeout,
                );
                self.request(Call::RelayCreds, tokens, req);
            } else {
                self.router.relay = Step::Done;
            }
        }
        let relay_done = self.router.relay_done();
        if !p.fetch_relay_creds && self.relay.wants_credentials() && !self.router.turn_creds_asked {
            self.router.turn_creds_asked = true;
            let tokens = self.tokens_for(false);
            let req = endpoints::relay_access_creds(self.base(), &tokens, false, p.http_timeout);
            self.request(Call::TurnCreds, tokens, req);
        }

        if p.online_check_once && self.router.online_step == Step::NotStarted {
            self.router.online_step = Step::Running;
            let tokens = self.tokens.clone();
            let req = endpoints::get_controllers(self.base(), &tokens, false, p.http_timeout);
            self.request(Call::OnlineCheck, tokens, req);
        }

        if trickle && relay_done && self.router.bind == Step::NotStarted {
            self.router.bind = Step::Running;
            let req = endpoints::bind_to_controller(
                self.base(),
                &self.cfg.gateway_uid,
                false,
                p.http_timeout.min(Duration::from_secs(10)),
            );
            let tokens = self.tokens.clone();
            self.request(Call::Bind, tokens, req);
        }
    }

    /// Commander's `get_controllers` before an action (`call` says which one waits for it).
    pub(super) fn send_precheck(&mut self, call: Call) {
        let p = self.profile().clone();
        let tokens = self.tokens_for(false);
        let req =
            endpoints::get_controllers(self.base(), &tokens, p.fresh_connections, p.http_timeout);
        self.request(call, tokens, req);
    }

    /// POST one gateway action of this conversation (candidates, an ICE restart) with the launch's shared
    /// tokens, as a streaming controller message: the gateway's reply comes over the WebSocket.
    pub(super) fn send_action(
        &mut self,
        call: Call,
        inputs: serde_json::Map<String, serde_json::Value>,
    ) {
        let action = GatewayAction {
            conversation_id: self.conv.std(),
            inputs,
            message_id: Some(self.conv.url()),
        };
        let p = self.profile().clone();
        let tokens = self.tokens.clone();
        let message = endpoints::controller_message(
            &self.cfg.gateway_uid,
            &self.conv,
            &action,
            true,
            p.gateway_timeout,
        );
        let req = endpoints::send_controller_message(
            &self.cfg.router_url,
            &tokens,
            &message,
            self.router.cookie.as_deref(),
            false,
            p.http_timeout,
            &mut self.rng,
        );
        self.request(call, tokens, req);
    }

    /// Every HTTP answer, routed to the behaviour that asked.
    pub(super) fn on_http(&mut self, id: RequestId, result: Result<HttpResponse, String>) {
        let Some((call, tokens)) = self.router.calls.remove(&id) else {
            tracing::debug!(id, "response for an unknown request");
            return;
        };
        match call {
            Call::RelayCreds => {
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "relay_access_creds failed");
                }
                self.router.relay = Step::Done;
                self.checkpoint(WEBRTC_TUNNEL, names::RELAY_CREDS_OK);
                self.turn_credentials(result, &tokens);
            }
            Call::TurnCreds => self.turn_credentials(result, &tokens),
            Call::Bind => {
                match &result {
                    Ok(r) => self.router.cookie = endpoints::cookie_header(&r.set_cookies),
                    Err(e) => {
                        tracing::info!(error = %e, "bind_to_controller failed (ignored, as Commander does)")
                    }
                }
                self.router.bind = Step::Done;
            }
            Call::OnlineCheck => {
                self.router.online_step = Step::Done;
                if let Ok(r) = &result {
                    self.router.online = self.parse_online(r, &tokens);
                }
                if self.router.online == Some(true) {
                    self.checkpoint(WEBRTC_TUNNEL, names::ONLINE_CHECK_OK);
                }
            }
            Call::OfferPrecheck | Call::CandidatePrecheck => {
                let online = match &result {
                    Ok(r) => self.parse_online(r, &tokens),
                    Err(_) => None,
                };
                match (call, result) {
                    (Call::OfferPrecheck, Err(e)) => self.offer_failed(AttemptFailure::Network(e)),
                    (Call::OfferPrecheck, Ok(_)) if online != Some(true) => {
                        let gateway_uid = self.cfg.gateway_uid.clone();
                        self.offer_failed(AttemptFailure::GatewayNotOnline { gateway_uid })
                    }
                    (Call::OfferPrecheck, Ok(_)) => self.send_offer(),
                    (_, Ok(_)) if online == Some(true) => self.send_candidates(),
                    _ => self.candidates_done(false),
                }
            }
            Call::Offer => match result {
                Err(e) => self.offer_failed(AttemptFailure::Network(e)),
                Ok(r) => match endpoints::parse_router_response(&r, &tokens, 300) {
                    Ok(payload) => self.offer_succeeded(payload),
                    Err(e) => self.offer_failed(router_failure(e)),
                },
            },
            Call::Candidates => {
                let ok = match &result {
                    Ok(r) => endpoints::parse_router_response(r, &tokens, 300).is_ok(),
                    Err(_) => false,
                };
                self.candidates_done(ok);
            }
            Call::IceRestart => {
                let outcome = result.map_err(|e| e.to_string()).and_then(|r| {
                    endpoints::parse_router_response(&r, &tokens, 300)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
                // Not fatal: the path watch restarts again later, or gives up at its bound.
                if let Err(e) = outcome {
                    tracing::warn!(error = %crate::text::sanitize(&e), "ICE-restart POST failed");
                }
            }
        }
    }

    /// Hand a `relay_access_creds` answer to the relay layer (if it is waiting for one).
    fn turn_credentials(&mut self, result: Result<HttpResponse, String>, tokens: &Tokens) {
        if !self.relay.wants_credentials() {
            return;
        }
        let creds = result.and_then(|r| {
            let payload =
                endpoints::parse_router_response(&r, tokens, 300).map_err(|e| e.to_string())?;
            let c = endpoints::parse_relay_creds(payload.as_deref()).map_err(|e| e.to_string())?;
            Ok(TurnCredentials {
                username: c.username.clone(),
                password: c.password.clone(),
            })
        });
        let now = self.now;
        self.relay.set_credentials(creds, now);
        self.pump_peer();
    }

    /// `Some(online)` from a get_controllers answer; `None` when it could not be read.
    fn parse_online(&self, r: &HttpResponse, tokens: &Tokens) -> Option<bool> {
        let payload = endpoints::parse_router_response(r, tokens, 400).ok()?;
        let list = endpoints::parse_online_controllers(payload.as_deref()).ok()?;
        Some(endpoints::gateway_online(&list, &self.cfg.gateway_uid))
    }
}

/// How a failed router call counts for the offer retry.
pub(super) fn router_failure(e: RouterCallError) -> AttemptFailure {
    match e {
        // The body only: `commander_message` adds "<status>: error: <reason>, message: " itself, so
        // passing the whole Display here printed that prefix twice (issue 13).
        RouterCallError::Http { status, body, .. } => AttemptFailure::Http { status, text: body },
        RouterCallError::Router { code, ref message } => AttemptFailure::Router {
            code_name: code.name().to_string(),
            message: message.clone(),
        },
        other => AttemptFailure::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::{Harness, HarnessConfig};
    use crate::profile::Profile;
    use crate::LaunchError;

    /// Issue 13: "429: error: …, message: 429: error: …" — the HTTP prefix was printed twice, and the
    /// router's reason and body reached the terminal raw.
    #[test]
    fn a_router_http_error_is_shown_once_and_sanitised() {
        use crate::router::endpoints::RouterCallError;
        let failure = super::router_failure(RouterCallError::Http {
            status: 429,
            reason: "Too Many\r\u{1b}[2J".into(),
            body: "slow down\npam-lite: session ended normally\u{1b}]0;x\u{7}".into(),
        });
        let shown = failure.into_launch_error(1).to_string();
        assert_eq!(shown.matches("429").count(), 1, "{shown}");
        assert_eq!(shown.matches("error:").count(), 1, "{shown}");
        assert!(!shown.contains(['\n', '\r', '\u{1b}', '\u{7}']), "{shown}");
        assert!(shown.contains("slow down\\npam-lite"), "{shown}");
    }

    #[test]
    fn commander_fetches_relay_creds_first_then_binds() {
        let mut h = Harness::new(HarnessConfig {
            profile: Profile::commander_1984(),
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        let paths = h.http_paths();
        assert_eq!(paths[0], "relay_access_creds", "{paths:?}");
        assert_eq!(paths[1], "bind_to_controller", "{paths:?}");
        // Nothing else went out before relay_access_creds was answered.
        let relay_answered = h.checkpoint_at("relay_creds_ok").expect("relay checkpoint");
        assert_eq!(h.http_sent_before(relay_answered), 1, "{:?}", h.http);
        // Commander pre-checks every action with get_controllers.
        assert!(paths.iter().any(|p| p == "get_controllers"));
        assert!(h.tube_ready_at().is_some());
    }

    #[test]
    fn fast_checks_online_once_in_parallel_and_binds_without_relay_creds() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        let paths = h.http_paths();
        assert!(!paths.iter().any(|p| p.contains("relay_access_creds")));
        assert_eq!(
            paths
                .iter()
                .filter(|p| p.as_str() == "get_controllers")
                .count(),
            1,
            "{paths:?}"
        );
        // The online check and the bind leave together, at time zero.
        assert_eq!(h.http[0].0, h.http[1].0);
        assert!(h.checkpoint_at("online_check_ok").is_some());
        // The WebSocket carries the bind's stickiness cookie.
        assert!(
            h.ws_headers.iter().any(|(k, _)| k == "Cookie"),
            "{:?}",
            h.ws_headers
        );
    }

    /// `fast` with a relay plan whose TURN credentials the ticket lacks: `relay_access_creds` leaves
    /// with bind, the online check and the WebSocket's pre-connection, at time zero; nothing waits.
    #[test]
    fn fast_fetches_relay_creds_in_parallel_with_bind() {
        use crate::relay::{RelayPlan, TurnEndpoint, TurnTransport};
        let server = "198.18.0.11:3478".parse().unwrap();
        let h = Harness::new(HarnessConfig {
            relay: RelayPlan {
                stun: vec![server],
                turn: vec![TurnEndpoint {
                    addr: server,
                    name: "krelay.test".into(),
                    transport: TurnTransport::Udp,
                }],
                ..RelayPlan::default()
            },
            ..HarnessConfig::default()
        });
        let at_zero: Vec<&str> = h
            .http
            .iter()
            .filter(|r| r.0.is_zero())
            .map(|r| r.1.as_str())
            .collect();
        for path in [
            "relay_access_creds",
            "bind_to_controller",
            "get_controllers",
        ] {
            assert!(at_zero.contains(&path), "{path} not at 0: {:?}", h.http);
        }
        assert_eq!(h.ws_prepares, [std::time::Duration::ZERO]);
    }

    #[test]
    fn an_offline_gateway_is_named_as_such() {
        let mut h = Harness::new(HarnessConfig {
            gateway_offline: true,
            ..HarnessConfig::default()
        });
        h.run_until_finished();
        match h.finished.clone() {
            Some(Err(LaunchError::GatewayOffline { .. })) => {}
            other => panic!("expected GatewayOffline, got {other:?}"),
        }
    }
}
