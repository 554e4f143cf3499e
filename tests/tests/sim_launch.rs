//! Whole launches in the deterministic simulation: client core + emulated router + gateway core + network.

use std::time::Duration;

use pam_lite_core::profile::Profile;
use pam_lite_core::timing::names;
use pam_lite_core::Command;
use pam_lite_tests::scenario::{Mode, Scenario};

#[test]
fn fast_trickle_launch_reaches_a_ready_tube_and_echoes_bytes() {
    let start = pam_lite_dev_clock::origin();
    let mut sim = Scenario::new(Profile::fast()).build(start);
    sim.run_until(Duration::from_secs(30), |s| {
        s.record.tube_ready_at.is_some()
    });
    let ready = sim.record.tube_ready_at.unwrap_or_else(|| {
        panic!(
            "no tube: {:?}\n{}",
            sim.record.finished,
            sim.waterfall().render()
        )
    });
    assert!(ready > start);
    let now = sim.now;
    sim.command_at(now, Command::OpenConnection { conn: 1 });
    sim.command_at(
        now,
        Command::Send {
            conn: 1,
            data: b"hello tube".to_vec(),
        },
    );
    sim.run_until(Duration::from_secs(60), |s| {
        s.record.received.get(&1).is_some_and(|d| d.len() >= 10)
    });
    assert_eq!(
        sim.record.received.get(&1).map(Vec::as_slice),
        Some(&b"hello tube"[..])
    );
    println!("{}", sim.waterfall().render());
    let w = sim.waterfall();
    assert!(w.offset_of(names::GATEWAY_OFFER_HTTP_DONE).is_some());
    let _ = Mode::Tunnel;
}
