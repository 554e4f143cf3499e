//! Entry points for the fuzz targets in `fuzz/` (libFuzzer via cargo-fuzz) and for the never-panics
//! property tests that run the same bodies in `cargo test`. Every parser has one (re-exported here), and so
//! does the logic that turns untrusted input into decisions: the offer retry, the candidate batcher and a
//! whole [`Client`] fed arbitrary router, WebSocket and UDP input.
//!
//! Each function must never panic, whatever `data` is; the ones with invariants assert them.

use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub use crate::guac::fuzzing::fuzz_guac;
pub use crate::router::fuzzing::{fuzz_router_response, fuzz_router_server};
pub use crate::signaling::fuzzing::{fuzz_gateway_action, fuzz_tunnel_decrypt, fuzz_ws_frame};
pub use crate::tube::fuzzing::fuzz_frame;

use crate::client::{Client, ClientConfig, Session};
use crate::ice_batch::IceBatcher;
use crate::offer::LaunchOffer;
use crate::offer_retry::{AttemptFailure, Decision, OfferRetry};
use crate::profile::Profile;
use crate::router::envelope::ServerSecretKey;
use crate::{Datagram, HttpResponse, Input, Node, Output};

/// A byte cursor that never fails: past the end it yields zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The offer retry under an arbitrary sequence of failures: attempts never exceed the maximum, every
/// retry waits exactly the catch-up, non-transient failures are never retried.
pub fn fuzz_offer_retry(data: &[u8], t0: Instant) {
    let mut b = Bytes(data);
    let max = u32::from(b.u8() % 8) + 1;
    let catchup = Duration::from_millis(u64::from(b.u16()));
    let mut retry = OfferRetry::new(max, catchup);
    let mut now = t0;
    let mut attempts = retry.begin_attempt();
    while !b.is_empty() {
        let text =
            String::from_utf8_lossy(b.take(usize::from(b.0.first().copied().unwrap_or(0) % 16)))
                .to_string();
        let failure = match b.u8() % 6 {
            0 => AttemptFailure::Network(text),
            1 => AttemptFailure::Http {
                status: 500 + b.u16() % 10,
                text,
            },
            2 => AttemptFailure::Router {
                code_name: text.clone(),
                message: text,
            },
            3 => AttemptFailure::GatewayNotOnline { gateway_uid: text },
            4 => AttemptFailure::Gateway(text),
            _ => AttemptFailure::Protocol(text),
        };
        let transient = failure.is_transient();
        match retry.on_failure(&failure, now) {
            Decision::RetryAt { attempt, at } => {
                assert!(transient, "a non-transient failure was retried");
                assert_eq!(at, now + catchup, "retry must wait exactly the catch-up");
                assert!(attempt <= max, "attempt {attempt} > max {max}");
                now = at;
                attempts = retry.begin_attempt();
                assert_eq!(attempts, attempt);
            }
            Decision::GiveUp(e) => {
                assert!(!e.to_string().is_empty());
                return;
            }
        }
    }
    assert!(attempts <= max);
}

/// The candidate batcher under an arbitrary interleaving: every candidate is delivered once, in order,
/// or reported lost; nothing is ever sent twice.
pub fn fuzz_ice_batch(data: &[u8]) {
    let mut b = Bytes(data);
    let mut batcher = IceBatcher::new(b.u8() % 2 == 0);
    let mut pushed = Vec::new();
    let mut delivered: Vec<String> = Vec::new();
    let mut in_flight: Option<Vec<String>> = None;
    let mut next = 0u32;
    while !b.is_empty() {
        match b.u8() % 6 {
            0 | 1 => {
                let c = format!("candidate:{next} 1 udp 1 10.0.0.1 {next} typ host");
                next += 1;
                if batcher.push(c.clone()) {
                    pushed.push(c);
                }
            }
            2 => batcher.open(),
            3 => {
                if in_flight.is_none() {
                    in_flight = batcher.next_batch();
                }
            }
            4 => {
                if let Some(batch) = in_flight.take() {
                    batcher.batch_done();
                    delivered.extend(batch.into_iter().filter(|c| !c.is_empty()));
                }
            }
            _ => {
                if in_flight.take().is_some() {
                    batcher.batch_failed();
                }
            }
        }
    }
    let lost = batcher.take_lost();
    let mut seen = std::collections::HashSet::new();
    for c in &delivered {
        assert!(seen.insert(c.clone()), "{c} delivered twice");
        assert!(!lost.contains(c), "{c} delivered and reported lost");
    }
    // Delivered candidates keep their push order.
    let order: Vec<usize> = delivered
        .iter()
        .filter_map(|c| pushed.iter().position(|p| p == c))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order");
}

/// A whole client launch fed arbitrary HTTP responses, WebSocket messages, datagrams and timer ticks:
/// it must never panic, and every output must be well-formed (bounded) whatever comes back.
pub fn fuzz_client_inputs(data: &[u8], t0: Instant) {
    let mut b = Bytes(data);
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(b.u16()));
    let secret = ServerSecretKey::random(&mut rng);
    let Ok(server_key) = secret.public_key(7) else {
        return;
    };
    let profile = match b.u8() % 4 {
        0 => Profile::fast(),
        1 => Profile::commander_1984(),
        2 => Profile::commander_1982(),
        _ => Profile::commander_legacy(),
    };
    let cfg = ClientConfig {
        router_url: "https://connect.fuzz.invalid".into(),
        session_token: vec![7; 32],
        server_key,
        gateway_uid: "AAAAAAAAAAAAAAAAAAAAAA".into(),
        record_uid: "BBBBBBBBBBBBBBBBBBBBBB".into(),
        traffic_seed: vec![9; 32],
        offer: LaunchOffer::tunnel(None),
        session: Session::Tunnel,
        trickle_ice: b.u8() % 2 == 0,
        profile,
        relay: Default::default(),
        unix_ms_at_start: 0,
    };
    let Ok(mut client) = Client::new(cfg, [3; 32], t0) else {
        return;
    };
    let mut now = t0;
    let mut requests = Vec::new();
    let drain = |client: &mut Client, requests: &mut Vec<u64>| {
        let mut n = 0;
        while let Some(out) = client.poll_output() {
            n += 1;
            assert!(n < 100_000, "unbounded output");
            if let Output::Http(r) = out {
                requests.push(r.id);
            }
        }
    };
    client.handle_input(
        Input::LocalCandidate {
            addr: ([10, 0, 0, 1], 5000).into(),
            kind: crate::CandidateKind::Host,
        },
        now,
    );
    drain(&mut client, &mut requests);
    while !b.is_empty() {
        now += Duration::from_millis(u64::from(b.u16() % 5000));
        let input = match b.u8() % 7 {
            0 => Input::Timeout,
            1 | 2 => {
                let id = requests
                    .get(usize::from(b.u8()) % requests.len().max(1))
                    .copied()
                    .unwrap_or(0);
                let status = [200u16, 200, 401, 502, 503, 504][usize::from(b.u8() % 6)];
                let len = usize::from(b.u8());
                Input::HttpResponse {
                    id,
                    response: HttpResponse {
                        status,
                        content_type: None,
                        set_cookies: vec![String::from_utf8_lossy(b.take(8)).to_string()],
                        body: b.take(len).to_vec(),
                    },
                }
            }
            3 => {
                let id = requests.first().copied().unwrap_or(0);
                Input::HttpError {
                    id,
                    error: "connection reset".into(),
                }
            }
            4 => Input::WsOpened,
            5 => {
                let len = usize::from(b.u8());
                Input::WsMessage(String::from_utf8_lossy(b.take(len)).to_string())
            }
            _ => {
                let len = usize::from(b.u8());
                Input::Datagram(Datagram {
                    source: ([10, 0, 0, 2], 6000).into(),
                    destination: ([10, 0, 0, 1], 5000).into(),
                    contents: b.take(len).to_vec(),
                })
            }
        };
        client.handle_input(input, now);
        drain(&mut client, &mut requests);
        if let Some(t) = client.poll_timeout() {
            assert!(t >= t0, "a timer before the launch started");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]
        #[test]
        fn offer_retry_never_breaks_its_invariants(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            super::fuzz_offer_retry(&data, pam_lite_dev_clock::origin());
        }

        #[test]
        fn ice_batch_never_loses_or_duplicates(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            super::fuzz_ice_batch(&data);
        }

        #[test]
        fn client_survives_arbitrary_network_input(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::fuzz_client_inputs(&data, pam_lite_dev_clock::origin());
        }
    }
}
