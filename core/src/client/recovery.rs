//! Path recovery mid-session (issue 14): the client's side of [`crate::path`].
//!
//! * **Watch.** Once ICE + DTLS are up, every DTLS record from the gateway feeds the [`PathWatch`]; after
//!   2 s of silence a tube Ping asks for one (Keeper's tube answers with a Pong). A quiet path or ICE's
//!   `Disconnected` is a loss (`path_lost` checkpoint, a warning), not the end of the session.
//! * **Regather.** At the loss (and at each later restart) the relay layer asks every STUN server again
//!   and allocates again on every TURN server, beside the old allocations: a NAT that rebound, a new
//!   network or a TURN server that restarted gives new candidates, which the restart offer carries.
//! * **Restart.** While lost, the watch asks for ICE restarts on a spaced schedule. Each one is a new offer
//!   from our str0m peer (new ufrag/pwd, our candidates re-announced) POSTed as `ice_restart_offer`, the
//!   way Commander relays its tube's restart (`{"type":"offer","sdp":…,"ice_restart":true}`, sealed with
//!   the tunnel key); the gateway's answer comes over the WebSocket like the first one. A restart whose
//!   answer does not come before the next is due is abandoned (str0m keeps the old ICE session meanwhile).
//! * **Answering.** A gateway that restarts (Keeper's tube does, 2 s after it sees ICE disconnect) sends
//!   an offer over the WebSocket; we accept it — winning over a restart of ours in flight (glare: Keeper's
//!   tube cannot resolve one, so the client yields) — and POST the answer as `ice_restart_answer`. Keeper's
//!   restart keeps its ufrag (a renegotiation, measured on 2.2.9), which str0m accepts as such.
//! * **Giving up.** Lost for the profile's `path_loss_limit`: the launch ends with
//!   [`LaunchError::Disconnected`] (exit code 11) naming the outage and the restarts tried.
//!
//! DTLS and SCTP never renegotiate: the tube, its connection numbers and every byte queued during the
//! outage (bounded by the tube's flow control) carry on once a path works again.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::offer::{ice_restart_inputs, RestartKind};
use crate::path::{PathConfig, PathEvent, PathWatch};
use crate::signaling::{ice_restart_answer_data_json, ice_restart_offer_data_json};
use crate::timing::{names, PHASE_CLI_SESSION as CLI_SESSION};
use crate::LaunchError;

use super::router_calls::Call;
use super::Client;

/// The client's path-recovery state.
pub(super) struct Recovery {
    pub(super) watch: PathWatch,
    /// Our restart offer is out and its answer not applied yet.
    restart_pending: bool,
}

impl Recovery {
    pub(super) fn new(give_up_after: std::time::Duration) -> Self {
        Recovery {
            watch: PathWatch::new(PathConfig::restarting(give_up_after)),
            restart_pending: false,
        }
    }

    /// Whether an answer on the WebSocket is for our ICE restart.
    pub(super) fn awaiting_restart_answer(&self) -> bool {
        self.restart_pending
    }
}

impl Client {
    /// ICE + DTLS came up: from now on the path is watched.
    pub(super) fn path_up(&mut self) {
        let now = self.now;
        self.recovery.watch.start(now);
    }

    /// A datagram from the gateway reached the peer.
    pub(super) fn path_heard(&mut self) {
        let now = self.now;
        let ice_ok = self.peer.as_ref().is_some_and(|p| !p.path_lost());
        if let Some(e) = self.recovery.watch.received(now, ice_ok) {
            self.on_path_event(e);
        }
    }

    /// The peer's ICE agent lost (`lost`) or regained its working pair (the latter counts only once a DTLS
    /// record follows: [`Client::path_heard`]).
    pub(super) fn path_ice(&mut self, lost: bool) {
        let now = self.now;
        // ICE working again is not yet the data path working: the next DTLS record says so.
        if !lost {
            return;
        }
        if let Some(e) = self.recovery.watch.ice_lost(now) {
            self.on_path_event(e);
        }
    }

    /// The watch's deadline, for `poll_timeout`.
    pub(super) fn path_timeout(&self) -> Option<std::time::Instant> {
        self.recovery.watch.poll_timeout()
    }

    /// On `Input::Timeout`.
    pub(super) fn on_path_timeout(&mut self) {
        let now = self.now;
        while !self.finished {
            match self.recovery.watch.handle_timeout(now) {
                Some(e) => self.on_path_event(e),
                None => break,
            }
        }
    }

    fn on_path_event(&mut self, event: PathEvent) {
        match event {
            PathEvent::Probe => {
                let now = self.now;
                if let Some(conns) = self.session.conns.as_mut() {
                    if let Err(e) = conns.ping(now) {
                        tracing::debug!(error = %e, "no probe Ping");
                    }
                }
                self.pump_tube();
            }
            PathEvent::Lost { quiet } => {
                tracing::warn!(
                    quiet_ms = quiet.as_millis() as u64,
                    "the path to the gateway is lost; recovering (ICE restart)"
                );
                self.checkpoint(CLI_SESSION, names::PATH_LOST);
                self.ws_needed_now();
                // New server-reflexive and relayed candidates, in time for the first restart offer (2 s).
                let now = self.now;
                self.relay.regather(now);
                self.pump_peer();
            }
            PathEvent::Restart { attempt } => {
                if attempt > 1 {
                    let now = self.now;
                    self.relay.regather(now);
                }
                self.start_ice_restart(attempt)
            }
            PathEvent::Restored { outage, restarts } => {
                tracing::warn!(
                    outage_ms = outage.as_millis() as u64,
                    restarts,
                    "the path to the gateway is back"
                );
                self.recovery.restart_pending = false;
                if let Some(p) = self.peer.as_mut() {
                    if p.awaiting_answer() {
                        p.abandon_offer();
                    }
                }
                self.checkpoint(CLI_SESSION, names::PATH_RESTORED);
            }
            PathEvent::GiveUp { outage, restarts } => {
                let reason = PathWatch::give_up_reason(outage, restarts);
                self.finish(Err(LaunchError::Disconnected(reason)));
            }
        }
    }

    /// Send ICE-restart offer number `attempt` through the router.
    fn start_ice_restart(&mut self, attempt: u32) {
        let now = self.now;
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if self.recovery.restart_pending {
            // The previous restart's answer never came: str0m still runs the old ICE session.
            tracing::info!(
                attempt,
                "the last ICE restart was not answered; restarting again"
            );
            peer.abandon_offer();
        }
        let sdp = match peer.restart_offer(now) {
            Ok(sdp) => sdp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create an ICE-restart offer");
                self.recovery.watch.restart_sent(now);
                return;
            }
        };
        tracing::info!(attempt, "ICE restart: sending a new offer to the gateway");
        let plaintext = ice_restart_offer_data_json(&sdp);
        self.post_restart(RestartKind::Offer, &plaintext);
        self.recovery.restart_pending = true;
        self.recovery.watch.restart_sent(now);
        self.checkpoint(CLI_SESSION, names::ICE_RESTART_OFFER_SENT);
        self.pump_peer();
    }

    /// The gateway's answer to our restart (from the WebSocket).
    pub(super) fn apply_restart_answer(&mut self, sdp: &str) {
        let now = self.now;
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        self.recovery.restart_pending = false;
        if let Err(e) = peer.accept_answer(sdp, now) {
            // Not fatal: the old ICE session runs on and the next restart tries again.
            tracing::warn!(error = %e, "the gateway's ICE-restart answer was refused");
            return;
        }
        self.checkpoint(CLI_SESSION, names::ICE_RESTART_ANSWER_APPLIED);
        for addr in crate::rtc::sdp_candidate_addresses(sdp) {
            self.relay.remote_candidate(addr, now);
        }
        self.pump_peer();
    }

    /// The gateway refused our restart (it no longer knows the conversation: restarted, or the tube
    /// closed on its side). Nothing can bring this session back: end it now, not at the bound.
    pub(super) fn restart_refused(&mut self, error: &str) {
        self.recovery.restart_pending = false;
        self.finish(Err(LaunchError::Disconnected(format!(
            "the path to the gateway was lost and the gateway refused to restart ICE ({}): the session \
             is gone on its side",
            crate::text::sanitize_max(error, 200)
        ))));
    }

    /// The gateway restarts ICE: answer its offer (ours, if one is in flight, yields).
    pub(super) fn answer_gateway_restart(&mut self, sdp: &str) {
        let now = self.now;
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        if !peer.is_connected() {
            tracing::warn!("an ICE-restart offer before the session was up; ignoring");
            return;
        }
        let answer = match peer.accept_offer(sdp, &[], now) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "the gateway's ICE-restart offer was refused");
                return;
            }
        };
        self.recovery.restart_pending = false;
        tracing::info!("the gateway restarted ICE; answering");
        for addr in crate::rtc::sdp_candidate_addresses(sdp) {
            self.relay.remote_candidate(addr, now);
        }
        let plaintext = ice_restart_answer_data_json(&answer);
        self.post_restart(RestartKind::Answer, &plaintext);
        self.checkpoint(CLI_SESSION, names::ICE_RESTART_ANSWERED);
        self.pump_peer();
    }

    fn post_restart(&mut self, kind: RestartKind, plaintext: &str) {
        let data = self.key.encrypt(plaintext.as_bytes(), &mut self.rng);
        let inputs = ice_restart_inputs(
            &self.cfg.record_uid,
            kind,
            &B64.encode(self.nonce),
            "tunnel",
            &data,
        );
        self.send_action(Call::IceRestart, inputs);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::super::harness::{Harness, HarnessConfig};
    use crate::rtc::{DtlsIdentity, Peer, Role};
    use crate::signaling::{gateway_reply_ok, ice_restart_offer_data_json, ws_push_frame};
    use crate::timing::names;
    use crate::Input;

    /// A gateway's restart offer as the router pushes it over the WebSocket: an offer with new ICE
    /// credentials, from a peer of its own (only the signaling is under test here).
    fn restart_offer_from_the_gateway(h: &Harness) -> Input {
        let mut other = Peer::new(
            Role::Offerer,
            "restart",
            &DtlsIdentity::fixed_for_tests(),
            h.now,
        );
        let sdp = other.create_offer(h.now).expect("offer");
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let data = h
            .client
            .key
            .encrypt(ice_restart_offer_data_json(&sdp).as_bytes(), &mut rng);
        Input::WsMessage(ws_push_frame(
            h.client.conv.bytes(),
            "x",
            &gateway_reply_ok(&data),
        ))
    }

    /// A restart offer from the gateway (Keeper's tube sends one 2 s after it sees ICE disconnect) is
    /// answered with an `ice_restart_answer` action through the router, whatever the client was doing.
    #[test]
    fn a_gateway_restart_offer_is_answered_through_the_router() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        h.client_input(restart_offer_from_the_gateway(&h));
        h.run_for(Duration::from_secs(1));
        assert!(
            h.to_gateway.iter().any(|(_, k)| k == "ice_restart_answer"),
            "{:?}",
            h.to_gateway
        );
        assert!(h.checkpoint_names().contains(&names::ICE_RESTART_ANSWERED));
        assert_eq!(h.finished, None, "answering a restart ends nothing");
    }

    /// A restart offer before the session is up is not ours to answer (the first answer is pending).
    #[test]
    fn a_restart_offer_before_the_session_is_up_is_ignored() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until(Duration::from_secs(10), |h| h.client.ws.is_open());
        h.client_input(restart_offer_from_the_gateway(&h));
        assert!(!h.to_gateway.iter().any(|(_, k)| k == "ice_restart_answer"));
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "the launch goes on");
    }
}
