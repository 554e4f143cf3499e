//! Property tests over whole simulated launches: random networks (latency, jitter/reordering, loss,
//! duplication), random candidate timing, random profiles and modes. On failure proptest prints the
//! minimal input; `Scenario::seed` inside it replays the run exactly.

use std::net::SocketAddr;
use std::time::Duration;

use pam_lite_core::profile::Profile;
use pam_lite_core::Command;
use pam_lite_tests::scenario::Scenario;
use pam_lite_tests::sim::LinkConfig;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// The launch bound: with every timeout of the profile (WS 15 s, offer attempts, connect 24 s) a launch
/// must be over well before this.
const BOUND: Duration = Duration::from_secs(120);

fn profile(i: usize) -> Profile {
    let names = Profile::names();
    Profile::by_name(names[i % names.len()]).unwrap_or_else(|e| panic!("{e}"))
}

prop_compose! {
    fn scenario()(seed in any::<u64>(), p in 0usize..4, trickle in any::<bool>(),
                  latency_ms in 1u64..80, jitter_ms in 0u64..30, loss in 0.0f64..0.15,
                  dup in 0.0f64..0.1, rtt_ms in 5u64..200, extra in 0u16..6,
                  lag_ms in prop::option::of(0u64..3000)) -> Scenario {
        let mut s = Scenario::new(profile(p));
        s.seed = seed;
        s.trickle = trickle;
        s.extra_candidates = extra;
        s.net.router_rtt = Duration::from_millis(rtt_ms);
        s.net.peer_link = LinkConfig {
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss,
            duplicate: dup,
        };
        if let Some(lag) = lag_ms {
            s.faults.registration_lag = Duration::from_millis(lag);
        }
        s
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Every launch either reaches a ready tube or ends with a clear error, within its bound.
    #[test]
    fn launch_is_ready_or_fails_clearly_within_bound(s in scenario()) {
        let mut sim = s.build(pam_lite_dev_clock::origin());
        sim.run_until(BOUND, |x| x.record.tube_ready_at.is_some());
        let ready = sim.record.tube_ready_at.is_some();
        let failed = matches!(sim.record.finished, Some(Err(_)));
        prop_assert!(ready || failed, "neither ready nor failed after {BOUND:?}:\n{}", sim.snapshot());
        if let Some(Err(e)) = &sim.record.finished {
            prop_assert!(!e.to_string().is_empty());
            prop_assert!(pam_lite_tests::exit_codes::launch_exit_code(e) >= 3);
        }
    }

    /// Every local candidate that trickles reaches the gateway exactly once, in the order it was
    /// gathered — whatever the interleaving of gathering, offer, answer and batch POSTs.
    #[test]
    fn trickled_candidates_arrive_exactly_once_in_order(
        s in scenario(), late in prop::collection::vec(0u64..4000, 0..6)
    ) {
        let mut s = s;
        s.trickle = true;
        s.faults.registration_lag = Duration::ZERO;
        let start = pam_lite_dev_clock::origin();
        let mut sim = s.build(start);
        let mut late_addrs = Vec::new();
        for (i, ms) in late.iter().enumerate() {
            let addr = SocketAddr::from(([198, 51, 100, 1 + i as u8], 30000 + i as u16));
            late_addrs.push(addr);
            sim.add_client_candidate_at(start + Duration::from_millis(*ms), addr);
        }
        sim.run_until(BOUND, |x| x.record.tube_ready_at.is_some());
        // Let late gathering and in-flight batches settle.
        let t = sim.now.saturating_duration_since(start) + Duration::from_secs(10);
        sim.run_until(t.min(BOUND), |_| false);
        if sim.record.finished.is_some() {
            return Ok(()); // a launch that failed (e.g. heavy loss) is covered by the property above
        }
        let received: Vec<String> = sim.gateway.received_candidates().concat();
        let real: Vec<&String> = received.iter().filter(|c| !c.is_empty()).collect();
        let mut seen = std::collections::HashSet::new();
        for c in &real {
            prop_assert!(seen.insert(c.as_str()), "candidate sent twice: {c}");
        }
        // A profile that puts candidates inside the offer SDP delivers those gathered before the offer
        // there (and must not trickle them again); everything gathered later trickles exactly once.
        let tube_at = sim
            .waterfall()
            .offset_of(pam_lite_core::timing::names::CREATE_TUBE_OK)
            .map(|d| d.as_millis() as u64);
        let mut expected_order = Vec::new();
        for (ms, addr) in late.iter().zip(&late_addrs) {
            let needle = format!(" {} {} ", addr.ip(), addr.port());
            let n = real.iter().filter(|c| c.contains(&needle)).count();
            let in_offer = s.profile.candidates_in_offer && tube_at.is_some_and(|t| *ms <= t);
            if in_offer {
                prop_assert!(n <= 1, "candidate {} sent {} times", addr, n);
                if *ms < tube_at.unwrap_or(0) {
                    prop_assert_eq!(n, 0, "candidate {} was in the offer and trickled again", addr);
                }
            } else {
                prop_assert_eq!(n, 1, "late candidate {} delivered {} times", addr, n);
                expected_order.push((*ms, *addr));
            }
        }
        // In gathering order: the late ones keep the order of their gathering times.
        let mut order = expected_order;
        order.sort_by_key(|(ms, _)| *ms);
        let positions: Vec<usize> = order.iter().filter_map(|(_, a)| {
            let needle = format!(" {} {} ", a.ip(), a.port());
            real.iter().position(|c| c.contains(&needle))
        }).collect();
        prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "out of order: {positions:?}");
    }

    /// Bytes in equal bytes out through the tunnel under loss, reordering and duplication.
    #[test]
    fn tunnel_bytes_survive_an_impaired_network(
        seed in any::<u64>(), loss in 0.0f64..0.1, jitter_ms in 0u64..20, dup in 0.0f64..0.05,
        len in 1usize..300_000,
    ) {
        let mut s = Scenario::new(Profile::fast());
        s.seed = seed;
        s.net.peer_link = LinkConfig {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(jitter_ms),
            loss,
            duplicate: dup,
        };
        let start = pam_lite_dev_clock::origin();
        let mut sim = s.build(start);
        sim.run_until(BOUND, |x| x.record.tube_ready_at.is_some());
        prop_assume!(sim.record.tube_ready_at.is_some());
        let data: Vec<u8> = (0..len).map(|i| (i as u64).wrapping_mul(seed | 1).to_le_bytes()[3]).collect();
        let now = sim.now;
        sim.command_at(now, Command::OpenConnection { conn: 1 });
        for chunk in data.chunks(16 * 1024) {
            sim.command_at(now, Command::Send { conn: 1, data: chunk.to_vec() });
        }
        sim.run_until(BOUND * 4, |x| x.record.received.get(&1).is_some_and(|d| d.len() >= len));
        let got = sim.record.received.get(&1).cloned().unwrap_or_default();
        prop_assert_eq!(got.len(), len, "{}", sim.snapshot());
        prop_assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    }
}
