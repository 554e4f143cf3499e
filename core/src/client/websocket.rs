//! The router WebSocket: where the gateway's answer and candidates arrive in trickle mode.
//!
//! * **When it opens.** Early (Commander ≥ PR #1982 and `fast`: in parallel with `create_tube`, as soon
//!   as relay credentials and bind are done) or after `create_tube` (Commander before #1982). Commander
//!   opens it in non-trickle mode too (for late messages); `fast` does not need it there.
//! * **Its connection** (`fast`, [`Profile::ws_preconnect`](crate::profile::Profile::ws_preconnect)):
//!   the upgrade needs bind's stickiness cookie, its TCP+TLS connection does not. So the connection is
//!   asked for at launch start ([`WsPhase::Prepare`], in parallel with bind) and the upgrade goes on it
//!   the moment bind answers ([`WsPhase::Upgrade`]): the handshakes leave the critical path. A
//!   pre-connection that fails, or closes while idle, only means the upgrade goes on a fresh connection
//!   ([`WsPhase::Fresh`]); so does an upgrade the pre-connection could not carry. Never a failed launch,
//!   and still within `ws_ready_timeout`, armed when the upgrade is first asked for.
//! * **Its bound.** When the offer waits for it (always in trickle mode; in non-trickle mode only for
//!   schedules before PR #1984), it must be open within `ws_ready_timeout`.
//! * **Its messages.** Router frames are routed by conversation id and classified (see
//!   [`crate::signaling::parse_ws_frame`]): an answer goes to the offer module, candidates to the
//!   candidates module, a gateway error ends the launch while the data plane is not up yet.
//! * **Its loss.** A close while the launch still needs it (offer not through, or no answer yet in
//!   trickle mode) ends the launch. Later, in trickle mode, it is opened again (1 s after the loss, then
//!   doubling up to 30 s): ICE-restart answers and the gateway's own restart offers arrive over it, and a
//!   client that changed networks, or a router that drops idle sockets, loses it (Commander's listener
//!   simply ends after 300 s). A path loss reopens it at once ([`Client::ws_needed_now`]).

use std::time::Instant;

use crate::signaling::{self, GatewayData};
use crate::timing::{names, PHASE_WEBRTC_TUNNEL as WEBRTC_TUNNEL};
use crate::{LaunchError, Output, WsConnect, WsPhase};

use super::{Client, Timer};

/// The WebSocket's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum WsTimer {
    /// The bound on the WebSocket opening (`ws_ready_timeout`), when the offer waits for it.
    Ready,
    /// Open it again after a loss mid-session.
    Reopen,
}

/// The first wait before reopening a WebSocket lost mid-session; it doubles up to [`REOPEN_MAX`].
const REOPEN_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const REOPEN_MAX: std::time::Duration = std::time::Duration::from_secs(30);

impl From<WsTimer> for Timer {
    fn from(t: WsTimer) -> Timer {
        Timer::Ws(t)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WsState {
    Closed,
    /// Its connection is being opened ahead of the upgrade ([`WsPhase::Prepare`]); no upgrade yet.
    Preparing,
    Connecting,
    Open,
    Failed,
}

/// The WebSocket's state.
pub(super) struct WsSide {
    pub(super) state: WsState,
    /// When the first connect was asked for (`None`: not yet; the launch asks once, a session reopens).
    started_at: Option<Instant>,
    /// The wait before the next reopening (doubles while they fail).
    reopen_after: std::time::Duration,
    /// The pre-connection was asked for (once per launch).
    prepare_asked: bool,
    /// The upgrade in flight goes on the pre-connection (a failure then falls back to a fresh one).
    on_prepared: bool,
}

impl WsSide {
    pub(super) fn new() -> Self {
        WsSide {
            state: WsState::Closed,
            started_at: None,
            reopen_after: REOPEN_FIRST,
            prepare_asked: false,
            on_prepared: false,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.state == WsState::Open
    }
}

impl Client {
    /// Whether this launch wants a WebSocket at all: trickle mode, and Commander's schedules in
    /// non-trickle mode.
    fn want_ws(&self) -> bool {
        self.cfg.trickle_ice || self.profile().fetch_relay_creds
    }

    /// Step 5 of the reconciler: the early WebSocket (or, for the schedules that open it after
    /// `create_tube`, once the peer exists).
    pub(super) fn advance_ws(&mut self, relay_done: bool, bind_done: bool) {
        let wanted = self.want_ws() && self.ws.started_at.is_none();
        if wanted && self.profile().ws_preconnect && !self.ws.prepare_asked {
            self.prepare_ws();
        }
        let ws_allowed =
            bind_done && relay_done && (self.profile().websocket_early || self.peer.is_some());
        if wanted && ws_allowed && matches!(self.ws.state, WsState::Closed | WsState::Preparing) {
            self.start_ws();
        }
    }

    /// Ask for the WebSocket's TCP+TLS connection now, ahead of the upgrade (`fast`: at launch start,
    /// in parallel with bind). Only the URL goes: the upgrade's headers (tokens, cookie) follow with it.
    fn prepare_ws(&mut self) {
        self.ws.prepare_asked = true;
        self.ws.state = WsState::Preparing;
        self.outputs.push_back(Output::WsConnect(WsConnect {
            url: crate::router::endpoints::ws_url(self.base()),
            headers: Vec::new(),
            timeout: self.profile().ws_ready_timeout,
            phase: WsPhase::Prepare,
        }));
        self.checkpoint(WEBRTC_TUNNEL, names::WEBSOCKET_PRECONNECT_STARTED);
    }

    /// Right after `create_tube`: the WebSocket of the schedules that open it after the tube.
    pub(super) fn start_ws_after_tube(&mut self, bind_done: bool) {
        if self.want_ws() && self.ws.started_at.is_none() && bind_done {
            self.start_ws();
        }
    }

    fn start_ws(&mut self) {
        let p = self.profile().clone();
        let phase = match self.ws.state {
            WsState::Preparing => WsPhase::Upgrade,
            _ => WsPhase::Fresh,
        };
        self.ws_connect(phase);
        self.ws.started_at = Some(self.now);
        if self.ws_required() {
            self.arm(WsTimer::Ready, p.ws_ready_timeout);
        }
        let name = if p.websocket_early {
            names::WEBSOCKET_LISTENER_STARTED_EARLY
        } else {
            names::WEBSOCKET_LISTENER_STARTED
        };
        self.checkpoint(WEBRTC_TUNNEL, name);
    }

    /// Ask the driver for the WebSocket (with the launch's tokens in trickle mode: the router ties it to
    /// them), on the pre-connection (`Upgrade`) or a new connection (`Fresh`).
    fn ws_connect(&mut self, phase: WsPhase) {
        let tokens = self.tokens_for(self.cfg.trickle_ice);
        let mut headers = tokens.headers();
        if let Some(c) = &self.router.cookie {
            headers.push(("Cookie".into(), c.clone()));
        }
        self.ws.state = WsState::Connecting;
        self.ws.on_prepared = phase == WsPhase::Upgrade;
        self.outputs.push_back(Output::WsConnect(WsConnect {
            url: crate::router::endpoints::ws_url(self.base()),
            headers,
            timeout: self.profile().ws_ready_timeout,
            phase,
        }));
    }

    /// On `Input::Timeout`: reopen a WebSocket lost mid-session when its wait is over.
    pub(super) fn on_ws_timeout(&mut self) {
        if self.due(WsTimer::Reopen) && self.ws.state == WsState::Failed {
            tracing::info!("reopening the router WebSocket");
            self.ws_connect(WsPhase::Fresh);
        }
    }

    /// A path loss: the restart's answer comes over the WebSocket, so a lost one is reopened now.
    pub(super) fn ws_needed_now(&mut self) {
        if self.is_armed(WsTimer::Reopen) && self.ws.state == WsState::Failed {
            self.disarm(WsTimer::Reopen);
            tracing::info!("reopening the router WebSocket for the ICE restart");
            self.ws_connect(WsPhase::Fresh);
        }
    }

    /// Whether the offer waits for the WebSocket: always in trickle mode (the answer comes over it), and
    /// in non-trickle mode only for schedules before PR #1984.
    pub(super) fn ws_required(&self) -> bool {
        self.cfg.trickle_ice || self.cfg.profile.non_trickle_waits_for_ws
    }

    /// On `Input::Timeout`: whether the WebSocket missed its bound (the launch is then over).
    pub(super) fn ws_ready_expired(&mut self) -> bool {
        if self.due(WsTimer::Ready) && self.ws.state != WsState::Open {
            self.finish(Err(LaunchError::Timeout {
                what: "the router WebSocket to connect",
                waited: self.profile().ws_ready_timeout,
            }));
            return true;
        }
        false
    }

    pub(super) fn on_ws_opened(&mut self) {
        if self.ws.state == WsState::Connecting {
            self.ws.state = WsState::Open;
            self.ws.reopen_after = REOPEN_FIRST;
            self.disarm(WsTimer::Ready);
        }
    }

    /// The WebSocket closed or could not open. Returns whether that ended the launch.
    pub(super) fn on_ws_closed(&mut self, reason: String) -> bool {
        let was = self.ws.state;
        if was == WsState::Preparing {
            // The pre-connection failed or closed while idle: the upgrade will go on a fresh one.
            tracing::info!(
                reason = %crate::text::sanitize_max(&reason, 200),
                "the router WebSocket's pre-connection is gone; the upgrade will open its own"
            );
            self.ws.state = WsState::Closed;
            return false;
        }
        if was == WsState::Connecting && self.ws.on_prepared {
            // The pre-connection could not carry the upgrade (gone, or closed under it): once more on a
            // fresh connection, within the same `ws_ready_timeout`.
            tracing::info!(
                reason = %crate::text::sanitize_max(&reason, 200),
                "the upgrade on the pre-connection failed; opening the router WebSocket afresh"
            );
            self.ws_connect(WsPhase::Fresh);
            return false;
        }
        self.ws.state = WsState::Failed;
        let needed = (self.ws_required() && !self.offer_done())
            || (self.cfg.trickle_ice && !self.offer.answer_applied);
        if needed && was != WsState::Closed {
            // Never opened: the router could not be reached at the WebSocket step (refused, DNS, an
            // untrusted certificate). That is the same failure as an unreachable router over HTTP, and
            // EXIT_CODES.md gives it code 4; `WebSocket` (9) is for a socket that was up and then failed.
            let error = if was == WsState::Connecting {
                LaunchError::RouterUnreachable(format!("router WebSocket: {reason}"))
            } else {
                LaunchError::WebSocket(reason)
            };
            self.finish(Err(error));
            return true;
        }
        // Mid-session (trickle mode: restarts are signalled over it): open it again, spaced.
        if self.cfg.trickle_ice && self.data_plane.seen && !self.finished {
            let after = self.ws.reopen_after;
            self.ws.reopen_after = (after * 2).min(REOPEN_MAX);
            tracing::info!(
                reason = %crate::text::sanitize_max(&reason, 200),
                after_ms = after.as_millis() as u64,
                "the router WebSocket closed mid-session; reopening"
            );
            self.arm(WsTimer::Reopen, after);
        }
        false
    }

    /// On finish: close the WebSocket if it was ever asked for.
    pub(super) fn close_ws(&mut self) {
        if self.ws.state != WsState::Closed {
            self.outputs.push_back(Output::WsClose);
            self.ws.state = WsState::Closed;
        }
    }

    /// A router frame: route each gateway reply of this conversation to the behaviour it is for.
    pub(super) fn on_ws_message(&mut self, text: &str) {
        let items = match signaling::parse_ws_frame(text) {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unparsable WebSocket message");
                return;
            }
        };
        for item in items {
            if !self.conv.matches(&item.conversation_id) {
                tracing::debug!("WebSocket message for another conversation");
                continue;
            }
            match signaling::classify_gateway_data(&self.key, &item.payload) {
                GatewayData::Answer(sdp) if self.recovery.awaiting_restart_answer() => {
                    self.apply_restart_answer(&sdp);
                }
                GatewayData::Answer(sdp) => {
                    self.apply_answer(&sdp);
                }
                GatewayData::Candidates(list) => {
                    for c in list {
                        self.add_remote_candidate(&c);
                    }
                    self.pump_peer();
                }
                GatewayData::Offer(sdp) => self.answer_gateway_restart(&sdp),
                GatewayData::Ack => {}
                GatewayData::Ignored(why) => tracing::debug!(%why, "ignoring a gateway message"),
                GatewayData::Error(e) => {
                    if !self.data_plane.seen {
                        return self.finish(Err(LaunchError::Gateway(e)));
                    }
                    if self.recovery.awaiting_restart_answer() {
                        return self.restart_refused(&e);
                    }
                    tracing::warn!(error = %e, "gateway reported an error");
                }
            }
            if self.finished {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::harness::{Harness, HarnessConfig, Preconnect, ROUTER_ONE_WAY};
    use crate::profile::Profile;
    use crate::{Input, LaunchError, Node as _, WsPhase};

    #[test]
    fn early_websocket_starts_with_create_tube() {
        let mut h = Harness::new(HarnessConfig {
            profile: Profile::commander_1984(),
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        let names = h.checkpoint_names();
        let ws = names
            .iter()
            .position(|n| *n == "websocket_listener_started_early")
            .expect("early WS checkpoint");
        let tube = names.iter().position(|n| *n == "create_tube_ok").unwrap();
        assert!(ws < tube, "{names:?}");
        assert_eq!(h.ws_connects.len(), 1);
        assert!(h.tube_ready.is_some());
    }

    #[test]
    fn legacy_websocket_starts_after_create_tube() {
        let mut h = Harness::new(HarnessConfig {
            profile: Profile::commander_legacy(),
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        let names = h.checkpoint_names();
        let ws = names
            .iter()
            .position(|n| *n == "websocket_listener_started")
            .expect("WS checkpoint");
        let tube = names.iter().position(|n| *n == "create_tube_ok").unwrap();
        assert!(tube < ws, "{names:?}");
        assert!(h.tube_ready.is_some());
    }

    #[test]
    fn a_websocket_that_never_opens_times_out_at_its_bound() {
        let profile = Profile::fast();
        let bound = profile.ws_ready_timeout;
        let mut h = Harness::new(HarnessConfig {
            profile,
            ws_never_opens: true,
            ..HarnessConfig::default()
        });
        h.run_until_finished();
        assert!(
            matches!(h.finished, Some(Err(LaunchError::Timeout { waited, .. })) if waited == bound),
            "{:?}",
            h.finished
        );
        let started = h.ws_connects[0];
        assert_eq!(h.finished_at, Some(started + bound));
        // The offer never went: it waits for the WebSocket in trickle mode.
        assert!(h.controller_messages_sent().is_empty());
    }

    #[test]
    fn a_websocket_that_never_opened_is_an_unreachable_router() {
        // Issue 13: a refused or untrusted connection at the WebSocket step exited 9 where
        // EXIT_CODES.md says 4 (router unreachable).
        let mut h = Harness::new(HarnessConfig {
            ws_never_opens: true,
            ..HarnessConfig::default()
        });
        h.run_until(Duration::from_secs(10), |h| !h.ws_connects.is_empty());
        // `fast` upgrades on its pre-connection first; a refusal there is retried on a fresh one,
        // and only that one's failure is the router's.
        assert_eq!(h.ws_phases, [WsPhase::Upgrade]);
        h.client_input(Input::WsClosed {
            reason: "connection reset".into(),
        });
        assert_eq!(h.finished, None);
        assert_eq!(h.ws_phases, [WsPhase::Upgrade, WsPhase::Fresh]);
        h.client_input(Input::WsClosed {
            reason: "connection refused".into(),
        });
        assert_eq!(
            h.finished,
            Some(Err(LaunchError::RouterUnreachable(
                "router WebSocket: connection refused".into()
            )))
        );
    }

    /// `fast`: the WebSocket's connection opens at launch start, beside bind, and the upgrade goes on
    /// it the moment bind's cookie is known (Commander's schedules open it after bind).
    #[test]
    fn fast_opens_the_websocket_connection_beside_bind_and_upgrades_on_the_cookie() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        let bind_sent = h
            .http
            .iter()
            .find(|r| r.1 == "bind_to_controller")
            .unwrap()
            .0;
        assert_eq!(
            h.ws_prepares,
            [bind_sent],
            "prepared with bind, at launch start"
        );
        assert_eq!(h.ws_phases, [WsPhase::Upgrade]);
        // The upgrade leaves as bind's answer arrives (one router round trip later) with its cookie.
        assert_eq!(h.ws_connects, [bind_sent + 2 * ROUTER_ONE_WAY]);
        assert!(h.ws_headers.iter().any(|(k, _)| k == "Cookie"));
        let names = h.checkpoint_names();
        assert_eq!(names[1], "websocket_preconnect_started", "{names:?}");
        assert!(h.tube_ready.is_some());

        for profile in [
            Profile::commander_1984(),
            Profile::commander_1982(),
            Profile::commander_legacy(),
        ] {
            let mut h = Harness::new(HarnessConfig {
                profile,
                ..HarnessConfig::default()
            });
            h.run_until_ready();
            assert!(h.ws_prepares.is_empty(), "Commander connects after bind");
            assert_eq!(h.ws_phases, [WsPhase::Fresh]);
        }
    }

    #[test]
    fn a_failed_preconnection_falls_back_to_a_fresh_websocket() {
        let mut h = Harness::new(HarnessConfig {
            preconnect: Preconnect::Fails,
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        assert_eq!(h.finished, None, "{:?}", h.finished);
        assert!(h.tube_ready.is_some());
        assert_eq!(h.ws_prepares.len(), 1);
        // Known failed before bind answered: the upgrade goes straight to a fresh connection.
        assert_eq!(h.ws_phases, [WsPhase::Fresh]);
    }

    #[test]
    fn an_upgrade_the_preconnection_cannot_carry_is_retried_fresh_within_the_bound() {
        let mut h = Harness::new(HarnessConfig {
            preconnect: Preconnect::GoneAtUpgrade,
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        assert_eq!(h.ws_phases, [WsPhase::Upgrade, WsPhase::Fresh]);
        assert_eq!(h.ws_connects[0], h.ws_connects[1], "retried at once");

        // The fallback keeps the bound armed by the first upgrade: a fresh connection that never
        // opens ends the launch `ws_ready_timeout` after the upgrade was first asked for.
        let bound = Profile::fast().ws_ready_timeout;
        let mut h = Harness::new(HarnessConfig {
            preconnect: Preconnect::GoneAtUpgrade,
            ws_never_opens: true,
            ..HarnessConfig::default()
        });
        h.run_until_finished();
        assert!(
            matches!(h.finished, Some(Err(LaunchError::Timeout { waited, .. })) if waited == bound),
            "{:?}",
            h.finished
        );
        assert_eq!(h.finished_at, Some(h.ws_connects[0] + bound));
    }

    #[test]
    fn a_launch_that_ends_before_the_upgrade_closes_its_preconnection() {
        // A launch that ends before bind answers must not leave the idle connection behind.
        let mut h = Harness::new(HarnessConfig::default());
        assert_eq!(h.ws_prepares.len(), 1);
        assert_eq!(h.client.ws.state, super::WsState::Preparing);
        h.client.finish(Err(LaunchError::WebSocket("test".into())));
        let outputs: Vec<_> = std::iter::from_fn(|| h.client.poll_output()).collect();
        assert!(
            outputs.iter().any(|o| matches!(o, crate::Output::WsClose)),
            "{outputs:?}"
        );
    }

    #[test]
    fn losing_the_websocket_before_the_answer_ends_the_launch() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until(Duration::from_secs(10), |h| h.client.ws.is_open());
        assert!(h.tube_ready.is_none());
        h.client_input(Input::WsClosed {
            reason: "reset by peer".into(),
        });
        assert_eq!(
            h.finished,
            Some(Err(LaunchError::WebSocket("reset by peer".into())))
        );
    }

    #[test]
    fn a_websocket_lost_mid_session_is_reopened_with_backoff() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        assert_eq!(h.ws_connects.len(), 1);
        h.client_input(Input::WsClosed {
            reason: "reset by peer".into(),
        });
        assert_eq!(h.finished, None, "not fatal once the session is up");
        h.run_for(Duration::from_millis(900));
        assert_eq!(h.ws_connects.len(), 1, "not before 1 s");
        h.run_for(Duration::from_millis(300));
        assert_eq!(h.ws_connects.len(), 2, "reopened after 1 s");
        assert!(
            h.client.ws.is_open(),
            "the emulated router accepts it again"
        );
        // A second loss waits 1 s again (the open reset the backoff).
        h.client_input(Input::WsClosed {
            reason: "again".into(),
        });
        h.run_for(Duration::from_millis(1200));
        assert_eq!(h.ws_connects.len(), 3);
    }

    #[test]
    fn messages_for_other_conversations_and_garbage_are_ignored() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until(Duration::from_secs(10), |h| !h.ws_connects.is_empty());
        h.client_input(Input::WsMessage("{not json".into()));
        h.client_input(Input::WsMessage(
            r#"{"conversationId":"AAAAAAAAAAAAAAAAAAAAAA==","payload":"{\"is_ok\":false,\"data\":\"boom\"}"}"#
                .into(),
        ));
        assert!(h.finished.is_none());
        h.run_until_ready();
        assert!(h.tube_ready.is_some());
    }
}
