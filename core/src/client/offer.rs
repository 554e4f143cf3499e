//! `create_tube` and the offer, end to end: when the peer and its SDP are created, the backend and
//! pre-offer delays, the attempts with their retry and **backend catch-up**, the **no-trickle
//! shortcut**, and the answer.
//!
//! * **When `create_tube` runs.** Non-trickle: once gathering is complete (bounded by Commander's 15 s
//!   `create_tube` cap), so every candidate is inside the offer. Trickle with candidates in the offer
//!   (`fast`): once the WebSocket is open (the offer cannot go earlier anyway). Otherwise as soon as bind
//!   is done (early WS) or before the WS (legacy).
//! * **Backend delay** (`WEBSOCKET_BACKEND_DELAY`): Commander sleeps after the WS opens so the router
//!   has registered it before the offer arrives; then an optional **pre-offer** sleep. `fast` sleeps
//!   neither and relies on the retry instead.
//! * **Attempts and backend catch-up.** A transient failure (a cold router's `RRC_BAD_STATE`, 502/503/504,
//!   a network error) is retried after the catch-up delay ([`OfferRetry`]); anything else, or the last
//!   attempt, ends the launch with the failure's error.
//! * **No-trickle shortcut** (Commander PR #1984): in non-trickle mode the offer goes without waiting
//!   for the WS or its backend delay, and the answer comes back in the offer's own HTTP response.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::offer::StartInputs;
use crate::offer_retry::{AttemptFailure, Decision, OfferRetry};
use crate::profile::Profile;
use crate::router::endpoints;
use crate::rtc::{Peer, Role};
use crate::signaling::{self, GatewayAction, GatewayData};
use crate::timing::{names, PHASE_WEBRTC_TUNNEL as WEBRTC_TUNNEL};
use crate::{LaunchError, ProtocolError};

use super::router_calls::Call;
use super::{Client, Timer};

/// Commander caps the whole `create_tube` (incl. non-trickle gathering) at 15 s.
const ICE_GATHER_TIMEOUT: Duration = Duration::from_secs(15);

/// The offer's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum OfferTimer {
    /// Non-trickle: the bound on gathering before `create_tube`.
    Gather,
    /// `WEBSOCKET_BACKEND_DELAY` after the WS opened.
    BackendDelay,
    /// The pre-offer sleep.
    PreOffer,
    /// The backend catch-up before a retry.
    CatchUp,
}

impl From<OfferTimer> for Timer {
    fn from(t: OfferTimer) -> Timer {
        Timer::Offer(t)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OfferStep {
    /// Waiting for its preconditions (tube, WS, delays).
    Waiting,
    BackendDelay,
    PreOffer,
    /// Attempt in flight (pre-check or send).
    InFlight,
    CatchUp,
    Done,
}

/// The offer's state.
pub(super) struct OfferState {
    /// The offer SDP, once `create_tube` ran.
    sdp: Option<String>,
    step: OfferStep,
    retry: OfferRetry,
    attempt: u32,
    /// Whether the gateway's answer is in the peer.
    pub(super) answer_applied: bool,
}

impl OfferState {
    pub(super) fn new(profile: &Profile) -> Self {
        OfferState {
            sdp: None,
            step: OfferStep::Waiting,
            retry: OfferRetry::new(profile.offer_max_attempts, profile.offer_catchup_delay()),
            attempt: 0,
            answer_applied: false,
        }
    }
}

impl Client {
    /// Whether the offer went through.
    pub(super) fn offer_done(&self) -> bool {
        self.offer.step == OfferStep::Done
    }

    /// Step 4 of the reconciler: may `create_tube` run now? Arms the non-trickle gathering bound.
    pub(super) fn tube_allowed(&mut self, relay_done: bool, bind_done: bool) -> bool {
        let trickle = self.cfg.trickle_ice;
        let p = self.profile();
        let (candidates_in_offer, websocket_early) = (p.candidates_in_offer, p.websocket_early);
        let allowed = if !trickle {
            // Non-trickle: gathering must be complete so every candidate is inside the offer.
            relay_done && (self.candidates.gathering_complete || self.due(OfferTimer::Gather))
        } else if candidates_in_offer {
            // Wait until the WS is open (the offer cannot go earlier anyway), so every candidate the
            // driver reported by then is inside the offer.
            bind_done && (self.ws.is_open() || self.candidates.gathering_complete)
        } else {
            bind_done && (websocket_early || self.ws.state == super::websocket::WsState::Closed)
        };
        if !trickle && relay_done && self.peer.is_none() && !self.is_armed(OfferTimer::Gather) {
            self.arm(OfferTimer::Gather, ICE_GATHER_TIMEOUT);
        }
        allowed
    }

    /// `create_tube`: the peer and its offer SDP.
    pub(super) fn create_tube(&mut self) {
        // The gathering bound is over either way; a deadline left behind would make `poll_timeout`
        // report a past instant forever (a busy loop; found by proptest).
        self.disarm(OfferTimer::Gather);
        let now = self.now;
        let in_offer = !self.cfg.trickle_ice || self.profile().candidates_in_offer;
        let mut peer = Peer::new(Role::Offerer, &self.conv.std(), &self.cfg.dtls, now);
        if in_offer {
            for (addr, kind) in self.candidates.local.clone() {
                peer.add_local_candidate(addr, kind, now);
            }
        }
        let sdp = match peer.create_offer(now) {
            Ok(sdp) => sdp,
            Err(e) => return self.finish(Err(ProtocolError::Offer(e).into())),
        };
        if !in_offer {
            // Commander's Rust starts gathering after set_local_description: every candidate trickles.
            for (addr, kind) in self.candidates.local.clone() {
                if let Some(c) = peer.add_local_candidate(addr, kind, now) {
                    self.candidates.batcher.push(c);
                }
            }
        }
        self.offer.sdp = Some(sdp);
        self.peer = Some(peer);
        self.checkpoint(WEBRTC_TUNNEL, names::CREATE_TUBE_OK);
        self.pump_peer();
    }

    /// Step 6 of the reconciler: walk the offer's steps as far as the facts allow.
    pub(super) fn advance_offer(&mut self) {
        let p = self.profile().clone();
        let trickle = self.cfg.trickle_ice;
        loop {
            match self.offer.step {
                OfferStep::Waiting => {
                    if self.peer.is_none() {
                        return;
                    }
                    if trickle {
                        if !self.ws.is_open() {
                            return;
                        }
                        if p.backend_delay_before_offer {
                            self.offer.step = OfferStep::BackendDelay;
                            self.arm(OfferTimer::BackendDelay, p.websocket_backend_delay);
                            continue;
                        }
                    } else if p.non_trickle_waits_for_ws {
                        if !self.ws.is_open() {
                            return;
                        }
                        self.offer.step = OfferStep::BackendDelay;
                        self.arm(OfferTimer::BackendDelay, p.websocket_backend_delay);
                        continue;
                    } else {
                        // The no-trickle shortcut: no WS, no backend delay.
                        self.checkpoint(WEBRTC_TUNNEL, names::NON_TRICKLE_SKIP_BACKEND_DELAY);
                    }
                    if p.backend_delay_before_offer {
                        self.begin_pre_offer(&p);
                    } else {
                        self.start_attempt();
                    }
                }
                OfferStep::BackendDelay => {
                    if !self.due(OfferTimer::BackendDelay) {
                        return;
                    }
                    self.checkpoint(WEBRTC_TUNNEL, names::WEBSOCKET_READY_BACKEND_DELAY_DONE);
                    self.begin_pre_offer(&p);
                }
                OfferStep::PreOffer => {
                    if !self.due(OfferTimer::PreOffer) {
                        return;
                    }
                    self.checkpoint(WEBRTC_TUNNEL, names::PRE_OFFER_SLEEP_DONE);
                    self.start_attempt();
                }
                OfferStep::CatchUp => {
                    if !self.due(OfferTimer::CatchUp) {
                        return;
                    }
                    if self.offer.retry.logs_catchup() {
                        self.checkpoint(
                            WEBRTC_TUNNEL,
                            names::GATEWAY_OFFER_BACKEND_CATCHUP_DELAY_DONE,
                        );
                    }
                    self.start_attempt();
                }
                OfferStep::InFlight | OfferStep::Done => return,
            }
        }
    }

    fn begin_pre_offer(&mut self, p: &Profile) {
        self.checkpoint(WEBRTC_TUNNEL, names::PRE_OFFER_SLEEP_START);
        self.offer.step = OfferStep::PreOffer;
        self.arm(OfferTimer::PreOffer, p.pre_offer_delay);
    }

    fn start_attempt(&mut self) {
        self.offer.attempt = self.offer.retry.begin_attempt();
        self.offer.step = OfferStep::InFlight;
        self.checkpoint(
            WEBRTC_TUNNEL,
            names::gateway_offer_http_attempt(self.offer.attempt),
        );
        if self.profile().precheck_each_action {
            self.send_precheck(Call::OfferPrecheck);
        } else if self.router.online == Some(false) {
            let gateway_uid = self.cfg.gateway_uid.clone();
            self.offer_failed(AttemptFailure::GatewayNotOnline { gateway_uid });
        } else {
            self.send_offer();
        }
    }

    /// The encrypted offer `data`: the typed [`OfferData`](crate::offer::OfferData) plus the SDP.
    fn offer_payload(&mut self) -> String {
        let sdp = self.offer.sdp.clone().unwrap_or_default();
        let offer_b64 = B64.encode(signaling::ensure_max_message_size(&sdp));
        let plaintext = self.cfg.offer.data.to_json(&offer_b64);
        self.key.encrypt(&plaintext, &mut self.rng)
    }

    /// The offer attempt itself (`send_controller_message`, `kind:"start"`).
    pub(super) fn send_offer(&mut self) {
        let data = self.offer_payload();
        let offer = &self.cfg.offer;
        let inputs = StartInputs {
            record_uid: self.cfg.record_uid.clone(),
            base64_nonce: B64.encode(self.nonce),
            conversation_type: offer.conversation_type.clone(),
            data,
            trickle_ice: self.cfg.trickle_ice,
            credential: offer.credential.clone(),
            two_factor_value: offer.two_factor_value.clone(),
        };
        let action = GatewayAction {
            conversation_id: self.conv.url(),
            inputs: inputs.to_map(),
            message_id: Some(self.conv.url()),
        };
        let p = self.profile().clone();
        let timeout = if self.cfg.offer.ephemeral() {
            p.offer_timeout_ephemeral
        } else {
            p.offer_timeout
        };
        let trickle = self.cfg.trickle_ice;
        let tokens = self.tokens_for(trickle);
        // Non-streaming: the router holds the request until the gateway answers, so our bound must
        // cover the router's own wait.
        let http_timeout = if trickle {
            p.http_timeout
        } else {
            timeout + p.http_timeout
        };
        let message = endpoints::controller_message(
            &self.cfg.gateway_uid,
            &self.conv,
            &action,
            trickle,
            timeout,
        );
        let req = endpoints::send_controller_message(
            &self.cfg.router_url,
            &tokens,
            &message,
            self.router.cookie.as_deref(),
            !trickle && p.fresh_connections,
            http_timeout,
            &mut self.rng,
        );
        self.request(Call::Offer, tokens, req);
    }

    /// An attempt failed: retry after the catch-up, or give up.
    pub(super) fn offer_failed(&mut self, failure: AttemptFailure) {
        // The one-off online check already said the gateway is offline: that is the real reason
        // (the router only says RRC_CONTROLLER_DOWN), and it is what the user must read.
        let failure = match failure {
            AttemptFailure::Router { .. } | AttemptFailure::Http { .. }
                if self.router.online == Some(false) =>
            {
                AttemptFailure::GatewayNotOnline {
                    gateway_uid: self.cfg.gateway_uid.clone(),
                }
            }
            other => other,
        };
        tracing::info!(attempt = self.offer.attempt, failure = %failure.commander_message(), "offer attempt failed");
        match self.offer.retry.on_failure(&failure, self.now) {
            Decision::RetryAt { at, .. } => {
                self.offer.step = OfferStep::CatchUp;
                if self.offer.retry.logs_catchup() {
                    self.checkpoint(
                        WEBRTC_TUNNEL,
                        names::GATEWAY_OFFER_BACKEND_CATCHUP_DELAY_START,
                    );
                }
                self.arm_at(OfferTimer::CatchUp, at);
            }
            Decision::GiveUp(e) => self.finish(Err(e)),
        }
    }

    /// The offer went through. Trickle: the candidate flush may start. Non-trickle: the answer is in
    /// the response.
    pub(super) fn offer_succeeded(&mut self, payload: Option<Vec<u8>>) {
        self.offer.step = OfferStep::Done;
        self.checkpoint(WEBRTC_TUNNEL, names::GATEWAY_OFFER_HTTP_DONE);
        if self.cfg.trickle_ice {
            self.candidates.batcher.open();
            // Commander's main thread flushes the candidates before it polls; an event-driven profile
            // watches the connection from the moment the offer is through.
            if self.candidates.batcher.is_idle() || self.cfg.profile.poll_interval.is_none() {
                self.main_thread_free();
            }
        } else {
            let answer = endpoints::parse_controller_response(payload.as_deref())
                .map_err(|e| LaunchError::from(ProtocolError::OfferResponse(e)))
                .and_then(|value| {
                    signaling::non_streaming_answer(&self.key, value.as_ref())
                        .map_err(LaunchError::Gateway)
                });
            match answer {
                Ok(GatewayData::Answer(sdp)) => {
                    self.apply_answer(&sdp);
                    self.main_thread_free();
                }
                Ok(other) => {
                    self.finish(Err(ProtocolError::NotAnAnswer(format!("{other:?}")).into()))
                }
                Err(e) => self.finish(Err(e)),
            }
        }
    }

    /// The gateway's answer (from the WS or the offer response); a second one is ignored.
    pub(super) fn apply_answer(&mut self, sdp: &str) {
        let now = self.now;
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if !peer.awaiting_answer() {
            tracing::debug!("ignoring a second answer");
            return;
        }
        if let Err(e) = peer.accept_answer(sdp, now) {
            return self.finish(Err(ProtocolError::Answer(e).into()));
        }
        self.offer.answer_applied = true;
        self.checkpoint(WEBRTC_TUNNEL, names::SDP_ANSWER_APPLIED);
        for addr in crate::rtc::sdp_candidate_addresses(sdp) {
            self.relay.remote_candidate(addr, now);
        }
        self.apply_early_remote_candidates();
        self.pump_peer();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::harness::{Harness, HarnessConfig};
    use crate::profile::Profile;
    use crate::router::proto::RouterResponseCode;
    use crate::LaunchError;

    fn gap(h: &Harness, from: &str, to: &str) -> Duration {
        let a = h.checkpoint_at(from).unwrap_or_else(|| panic!("no {from}"));
        let b = h.checkpoint_at(to).unwrap_or_else(|| panic!("no {to}"));
        b - a
    }

    #[test]
    fn backend_and_pre_offer_delays_are_slept_after_the_websocket_opens() {
        let profile = Profile::commander_legacy();
        let (backend, pre) = (profile.websocket_backend_delay, profile.pre_offer_delay);
        assert!(!backend.is_zero() && !pre.is_zero());
        let mut h = Harness::new(HarnessConfig {
            profile,
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        // The backend delay starts when the WS opens, i.e. ends `backend` after it.
        let ws_open = h
            .checkpoint_at("websocket_ready_backend_delay_done")
            .unwrap()
            - backend;
        assert!(ws_open > h.ws_connects[0]);
        assert_eq!(
            gap(
                &h,
                "websocket_ready_backend_delay_done",
                "pre_offer_sleep_done"
            ),
            pre
        );
        assert_eq!(
            gap(&h, "pre_offer_sleep_done", "gateway_offer_http_attempt_1"),
            Duration::ZERO
        );
    }

    #[test]
    fn fast_sends_the_offer_the_moment_the_websocket_opens() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        let names = h.checkpoint_names();
        assert!(!names.contains(&"websocket_ready_backend_delay_done"));
        assert!(!names.contains(&"pre_offer_sleep_start"));
        assert_eq!(h.controller_messages_sent().len(), 1, "{:?}", h.http);
        assert!(h.tube_ready.is_some());
    }

    #[test]
    fn a_cold_router_is_retried_after_the_backend_catch_up() {
        let profile = Profile::commander_1984();
        let catchup = profile.offer_catchup_delay();
        let mut h = Harness::new(HarnessConfig {
            profile,
            rrc_failures: vec![RouterResponseCode::RrcBadState],
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        assert_eq!(
            gap(
                &h,
                "gateway_offer_backend_catchup_delay_start",
                "gateway_offer_backend_catchup_delay_done"
            ),
            catchup
        );
        assert_eq!(
            gap(
                &h,
                "gateway_offer_backend_catchup_delay_done",
                "gateway_offer_http_attempt_2"
            ),
            Duration::ZERO
        );
        assert_eq!(
            h.offers_delivered().len(),
            1,
            "only the retry reached the gateway"
        );
    }

    #[test]
    fn retries_stop_at_the_profiles_maximum() {
        let profile = Profile::fast();
        let max = profile.offer_max_attempts;
        let mut h = Harness::new(HarnessConfig {
            profile,
            rrc_failures: vec![RouterResponseCode::RrcBadState; 10],
            ..HarnessConfig::default()
        });
        h.run_until_finished();
        assert!(
            matches!(h.finished, Some(Err(LaunchError::Router(_)))),
            "{:?}",
            h.finished
        );
        assert_eq!(h.controller_messages_sent().len(), max as usize);
        let last = format!("gateway_offer_http_attempt_{max}");
        assert!(h.checkpoint_at(&last).is_some());
    }

    #[test]
    fn a_non_transient_failure_is_not_retried() {
        let mut h = Harness::new(HarnessConfig {
            rrc_failures: vec![RouterResponseCode::RrcNotAllowed],
            ..HarnessConfig::default()
        });
        h.run_until_finished();
        assert!(matches!(h.finished, Some(Err(LaunchError::Router(_)))));
        assert_eq!(h.controller_messages_sent().len(), 1);
    }

    #[test]
    fn the_no_trickle_shortcut_skips_the_websocket_and_reads_the_answer_from_the_response() {
        let mut h = Harness::new(HarnessConfig {
            profile: Profile::commander_1984(),
            trickle: false,
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        let names = h.checkpoint_names();
        assert!(
            names.contains(&"non_trickle_skip_backend_delay"),
            "{names:?}"
        );
        assert!(!names.contains(&"websocket_ready_backend_delay_done"));
        assert!(names.contains(&"webrtc_tunnel_open_ok_non_streaming"));
        // The offer did not wait for the WebSocket (Commander still opens one for late messages).
        let attempt = h.checkpoint_at("gateway_offer_http_attempt_1").unwrap();
        assert!(attempt < h.ws_connects[0] + Duration::from_millis(100));
        // Every candidate was inside the offer: no icecandidate action.
        assert!(h.candidate_batches.is_empty());
    }

    #[test]
    fn before_pr_1984_non_trickle_waits_for_the_websocket_and_its_delay() {
        let profile = Profile::commander_1982();
        let backend = profile.websocket_backend_delay;
        let mut h = Harness::new(HarnessConfig {
            profile,
            trickle: false,
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        let done = h
            .checkpoint_at("websocket_ready_backend_delay_done")
            .unwrap();
        assert!(done >= h.ws_connects[0] + backend);
        assert!(!h
            .checkpoint_names()
            .contains(&"non_trickle_skip_backend_delay"));
    }
}
