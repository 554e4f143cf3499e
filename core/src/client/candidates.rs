//! ICE candidates, both ways, and their POSTs.
//!
//! * **Local candidates** the driver reports are kept (bounded) for `create_tube`; once the peer exists
//!   they go into it and, in trickle mode, into the batcher.
//! * **The batched ICE flush** (Commander PR #1984): candidates wait until the offer is through, then go
//!   out as `icecandidate` actions, all pending ones in one POST per flush ([`IceBatcher`]; Commander
//!   before #1984 sent one POST per candidate). One batch is in flight at a time; a failed batch is
//!   retried by the batcher, and reported lost after its retries.
//! * Commander's schedules pre-check every batch with `get_controllers`.
//! * **Remote candidates** that arrive before the answer are held (bounded) and applied right after it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;

use crate::ice_batch::IceBatcher;
use crate::offer::icecandidate_inputs;
use crate::profile::Profile;
use crate::CandidateKind;

use super::router_calls::Call;
use super::{Client, LocalCandidate};

/// Bound on candidates kept per side (a host has a handful; a flood is refused, not stored).
pub(super) const MAX_CANDIDATES: usize = 64;

/// The candidates' state.
pub(super) struct CandidateState {
    /// Gathering is over: the driver reported every host address and the relay layer is done.
    pub(super) gathering_complete: bool,
    /// The driver reported every host address.
    host_complete: bool,
    /// Every local candidate the driver reported (for `create_tube`).
    pub(super) local: Vec<LocalCandidate>,
    /// Gateway candidates that arrived before the answer.
    early_remote: Vec<String>,
    pub(super) batcher: IceBatcher,
    /// The batch whose POST (or pre-check) is in flight.
    in_flight: Option<Vec<String>>,
}

impl CandidateState {
    pub(super) fn new(profile: &Profile) -> Self {
        CandidateState {
            gathering_complete: false,
            host_complete: false,
            local: Vec::new(),
            early_remote: Vec::new(),
            batcher: IceBatcher::new(profile.batch_candidates),
            in_flight: None,
        }
    }
}

impl Client {
    /// The driver found a local address, or the relay layer gathered one.
    pub(super) fn on_local_candidate(&mut self, addr: core::net::SocketAddr, kind: CandidateKind) {
        let now = self.now;
        if kind == CandidateKind::Host {
            self.relay.host_candidate(addr);
        }
        if !self.relay.admits(kind) {
            tracing::debug!(%addr, "not offered (relay-only)");
            return;
        }
        if self.candidates.local.len() >= MAX_CANDIDATES {
            tracing::warn!(%addr, "too many local candidates; ignoring one");
            return;
        }
        self.candidates.local.push((addr, kind));
        if let Some(p) = self.peer.as_mut() {
            if let Some(c) = p.add_local_candidate(addr, kind, now) {
                if self.cfg.trickle_ice {
                    self.candidates.batcher.push(c);
                }
            }
        }
        self.pump_peer();
    }

    /// The driver reported every host address: the relay layer may start, and gathering may be over.
    pub(super) fn on_gathering_complete(&mut self) {
        self.candidates.host_complete = true;
        let now = self.now;
        self.relay.host_gathering_complete(now);
        self.pump_peer();
        self.sync_gathering();
    }

    /// Gathering is over once the driver and the relay layer both are: in trickle mode the
    /// end-of-candidates marker then joins the flush.
    pub(super) fn sync_gathering(&mut self) {
        if self.candidates.gathering_complete
            || !self.candidates.host_complete
            || !self.relay.is_gathered()
        {
            return;
        }
        self.candidates.gathering_complete = true;
        if self.peer.is_some() && self.cfg.trickle_ice {
            self.candidates.batcher.end_of_candidates();
        }
    }

    /// A gateway candidate: into the peer, or held until the answer is applied.
    pub(super) fn add_remote_candidate(&mut self, c: &str) {
        // Every allocation gets a permission and a channel for it, before ICE needs them.
        if let Some(addr) = crate::rtc::candidate_address(c) {
            let now = self.now;
            self.relay.remote_candidate(addr, now);
        }
        if !self.offer.answer_applied {
            if self.candidates.early_remote.len() < MAX_CANDIDATES {
                self.candidates.early_remote.push(c.to_string());
            } else {
                tracing::warn!("too many gateway candidates before the answer; dropping one");
            }
            return;
        }
        let now = self.now;
        if let Some(peer) = self.peer.as_mut() {
            if let Err(e) = peer.add_remote_candidate(c, now) {
                tracing::warn!(error = %e, "ignoring a gateway candidate");
            }
        }
    }

    /// Right after the answer: the candidates that came before it.
    pub(super) fn apply_early_remote_candidates(&mut self) {
        for c in std::mem::take(&mut self.candidates.early_remote) {
            self.add_remote_candidate(&c);
        }
    }

    /// Step 7 of the reconciler: start the next batch if none is in flight.
    pub(super) fn advance_candidates(&mut self) {
        if !self.cfg.trickle_ice || self.candidates.in_flight.is_some() || !self.ws.is_open() {
            return;
        }
        let Some(batch) = self.candidates.batcher.next_batch() else {
            return;
        };
        self.candidates.in_flight = Some(batch);
        if self.profile().precheck_each_action {
            self.send_precheck(Call::CandidatePrecheck);
        } else {
            self.send_candidates();
        }
    }

    /// The batch's `icecandidate` POST.
    pub(super) fn send_candidates(&mut self) {
        let Some(batch) = self.candidates.in_flight.clone() else {
            return;
        };
        let plaintext = json!({ "candidates": batch }).to_string();
        let data = self.key.encrypt(plaintext.as_bytes(), &mut self.rng);
        // Commander bug §10.5 kept on purpose: the gateway only accepts what Commander sends.
        let inputs = icecandidate_inputs(
            &self.cfg.record_uid,
            &B64.encode(self.nonce),
            "tunnel",
            &data,
            true,
        );
        self.send_action(Call::Candidates, inputs);
    }

    /// The batch's POST (or pre-check) is over. When the flush is done and the offer through,
    /// Commander's main thread is free to poll the connection.
    pub(super) fn candidates_done(&mut self, ok: bool) {
        self.candidates.in_flight = None;
        if ok {
            self.candidates.batcher.batch_done();
        } else if !self.candidates.batcher.batch_failed() {
            tracing::warn!("a candidate batch could not be delivered after retries");
        }
        if self.candidates.batcher.is_idle() && self.offer_done() {
            self.main_thread_free();
        }
    }
}

#[cfg(test)]
mod tests {
    use core::net::SocketAddr;
    use std::time::Duration;

    use super::super::harness::{Harness, HarnessConfig};
    use super::MAX_CANDIDATES;
    use crate::profile::Profile;
    use crate::{CandidateKind, Input};

    #[test]
    fn batched_ice_flush_sends_every_pending_candidate_in_one_post_after_the_offer() {
        let mut h = Harness::new(HarnessConfig {
            profile: Profile::commander_1984(),
            extra_candidates: 3,
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        // 4 host candidates, one flush (the end-of-candidates marker is not a candidate).
        assert_eq!(
            h.candidate_batches.first(),
            Some(&4),
            "{:?}",
            h.candidate_batches
        );
        // The flush follows the offer.
        let offer_done = h.checkpoint_at("gateway_offer_http_done").unwrap();
        let to_gateway: Vec<_> = h
            .to_gateway
            .iter()
            .filter(|(_, k)| k == "icecandidate")
            .collect();
        assert!(to_gateway.iter().all(|(t, _)| *t > offer_done));
    }

    #[test]
    fn before_pr_1984_every_candidate_has_its_own_post() {
        let mut h = Harness::new(HarnessConfig {
            profile: Profile::commander_1982(),
            extra_candidates: 2,
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        assert!(h.candidate_batches.len() >= 3, "{:?}", h.candidate_batches);
        assert!(h.candidate_batches.iter().all(|n| *n <= 1));
    }

    #[test]
    fn fast_puts_the_candidates_known_at_create_tube_inside_the_offer() {
        let mut h = Harness::new(HarnessConfig {
            extra_candidates: 3,
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        assert_eq!(
            h.candidate_batches.iter().sum::<usize>(),
            0,
            "{:?}",
            h.candidate_batches
        );
    }

    #[test]
    fn a_late_candidate_trickles_in_its_own_flush() {
        let mut h = Harness::new(HarnessConfig {
            gathering_complete: false,
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        h.client_input(Input::LocalCandidate {
            addr: SocketAddr::from(([172, 16, 0, 9], 41000)),
            kind: CandidateKind::Host,
        });
        h.run_for(Duration::from_secs(1));
        assert_eq!(h.candidate_batches, vec![1]);
    }

    #[test]
    fn a_local_candidate_flood_is_capped() {
        let mut h = Harness::new(HarnessConfig {
            profile: Profile::commander_1984(),
            gathering_complete: false,
            ..HarnessConfig::default()
        });
        for i in 0..(MAX_CANDIDATES as u16 * 2) {
            h.client_input(Input::LocalCandidate {
                addr: SocketAddr::from(([192, 168, 1, 1], 20000 + i)),
                kind: CandidateKind::Host,
            });
        }
        assert_eq!(h.client.candidates.local.len(), MAX_CANDIDATES);
    }

    #[test]
    fn gateway_candidates_before_the_answer_are_held_then_applied() {
        let mut h = Harness::new(HarnessConfig::default());
        for i in 0..(MAX_CANDIDATES + 5) {
            h.client.add_remote_candidate(&format!(
                "candidate:{i} 1 udp 2130706431 10.0.0.2 {} typ host",
                30000 + i
            ));
        }
        assert_eq!(h.client.candidates.early_remote.len(), MAX_CANDIDATES);
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        assert!(h.client.candidates.early_remote.is_empty());
    }
}
