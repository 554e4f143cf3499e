//! Checkpoint waterfalls of every timing profile under the same simulated network (router RTT 85 ms,
//! peer RTT 40 ms, gateway answer delay 500 ms), as insta snapshots. They show the seeds' arithmetic
//! (the 2.95 s catch-up, the 0.30 s backend delay, serial vs batched candidates) and pam-lite's `fast`
//! profile beating today's Commander (`commander-1984`).

use std::time::Duration;

use pam_lite_core::profile::Profile;
use pam_lite_core::router::proto::RouterResponseCode;
use pam_lite_core::timing::names;
use pam_lite_tests::scenario::{RelaySetup, Scenario};
use pam_lite_tests::sim::nat::NatConfig;
use pam_lite_tests::sim::Sim;

const LIMIT: Duration = Duration::from_secs(60);

fn run(scenario: &Scenario) -> Sim {
    let mut sim = scenario.build(pam_lite_dev_clock::origin());
    sim.run_until(LIMIT, |s| s.record.tube_ready_at.is_some());
    sim
}

fn profiles() -> Vec<Profile> {
    Profile::names()
        .iter()
        .map(|n| Profile::by_name(n).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn cold_router(p: Profile) -> Scenario {
    let mut s = Scenario::new(p);
    // The router refuses a streaming offer that arrives < 1 s after its WebSocket registered.
    s.faults.registration_lag = Duration::from_millis(1000);
    s
}

#[test]
fn trickle_happy_path() {
    for p in profiles() {
        let name = p.name;
        let sim = run(&Scenario::new(p));
        assert!(sim.ready_ms().is_some(), "{name}: {}", sim.snapshot());
        insta::assert_snapshot!(format!("trickle_{name}"), sim.snapshot());
    }
}

#[test]
fn no_trickle() {
    for p in profiles() {
        let name = p.name;
        let mut s = Scenario::new(p);
        s.trickle = false;
        let sim = run(&s);
        assert!(sim.ready_ms().is_some(), "{name}: {}", sim.snapshot());
        insta::assert_snapshot!(format!("no_trickle_{name}"), sim.snapshot());
    }
}

#[test]
fn cold_router_one_retry() {
    for p in profiles() {
        let name = p.name;
        let sim = run(&cold_router(p));
        insta::assert_snapshot!(format!("cold_router_{name}"), sim.snapshot());
    }
}

#[test]
fn all_attempts_failing() {
    for p in profiles() {
        let name = p.name;
        let mut s = Scenario::new(p);
        s.faults.rrc_failures = vec![RouterResponseCode::RrcTimeout; 16];
        let sim = run(&s);
        assert!(
            matches!(sim.record.finished, Some(Err(_))),
            "{name} must fail clearly: {}",
            sim.snapshot()
        );
        insta::assert_snapshot!(format!("all_attempts_failing_{name}"), sim.snapshot());
    }
}

/// The relay path: both nodes behind symmetric NATs (no direct path), both gathering from the one
/// TURN/STUN server (relay link 15 ms one way). The client's server-reflexive and relayed candidates
/// are found, gathering ends, and the tube comes up through a relay.
#[test]
fn relay_path() {
    let mut s = Scenario::new(Profile::fast());
    s.net.client_nat = Some(NatConfig::SYMMETRIC);
    s.net.gateway_nat = Some(NatConfig::SYMMETRIC);
    s.relay = Some(RelaySetup::default());
    let sim = run(&s);
    assert!(sim.ready_ms().is_some(), "{}", sim.snapshot());
    let w = sim.waterfall();
    for name in [
        names::RELAY_SRFLX_CANDIDATE,
        names::RELAY_CANDIDATE,
        names::RELAY_GATHERING_DONE,
    ] {
        assert!(
            w.offset_of(name).is_some(),
            "no {name}:\n{}",
            sim.snapshot()
        );
    }
    assert!(sim.turn.relayed > 0, "the tube must be relayed");
    insta::assert_snapshot!("relay_path_fast", sim.snapshot());
}

/// Seed #1982's arithmetic: today's Commander waits exactly 1.25 + (2.0 − 0.30) = 2.95 s before the
/// second offer attempt of a cold router.
#[test]
fn commander_1984_catch_up_is_2_95_seconds() {
    let sim = run(&cold_router(Profile::commander_1984()));
    let w = sim.waterfall();
    let start = w.offset_of(names::GATEWAY_OFFER_BACKEND_CATCHUP_DELAY_START);
    let done = w.offset_of(names::GATEWAY_OFFER_BACKEND_CATCHUP_DELAY_DONE);
    match (start, done) {
        (Some(a), Some(b)) => assert_eq!(b - a, Duration::from_millis(2950)),
        _ => panic!("no catch-up in:\n{}", sim.snapshot()),
    }
    assert!(w.offset_of(&names::gateway_offer_http_attempt(2)).is_some());
    assert!(
        sim.ready_ms().is_some(),
        "the retry must succeed: {}",
        sim.snapshot()
    );
}

/// The headline: time-to-ready of every profile under one network, fastest first, and `fast` ahead of
/// every Commander schedule in every scenario.
#[test]
fn fast_beats_every_commander_profile() {
    type MakeScenario = fn(Profile) -> Scenario;
    let scenarios: Vec<(&str, MakeScenario)> = vec![
        ("trickle", Scenario::new),
        ("no-trickle", |p| {
            let mut s = Scenario::new(p);
            s.trickle = false;
            s
        }),
        ("cold router", cold_router),
    ];
    let mut table = String::from("scenario      profile            ready (virtual ms)\n");
    for (label, make) in scenarios {
        let mut fast = None;
        for p in profiles() {
            let name = p.name;
            let sim = run(&make(p));
            let ms = sim
                .ready_ms()
                .unwrap_or_else(|| panic!("{label}/{name} never ready:\n{}", sim.snapshot()));
            table.push_str(&format!("{label:<13} {name:<18} {ms:>6}\n"));
            match fast {
                None => fast = Some(ms),
                Some(f) => assert!(f < ms, "{label}: fast ({f} ms) must beat {name} ({ms} ms)"),
            }
        }
    }
    println!("{table}");
    insta::assert_snapshot!("time_to_ready_table", table);
}
