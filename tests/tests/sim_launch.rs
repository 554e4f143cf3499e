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

#[test]
fn terminal_launch_runs_a_guacamole_session_end_to_end() {
    let start = pam_lite_dev_clock::origin();
    let mut s = Scenario::new(Profile::commander_1984());
    s.mode = Mode::Terminal;
    let mut sim = s.build(start);
    sim.run_until(Duration::from_secs(30), |s| {
        s.waterfall().offset_of(names::READY_FOR_PROMPT).is_some()
    });
    let w = sim.waterfall();
    assert!(
        w.offset_of(names::GUACAMOLE_WAIT_FOR_READY_OK).is_some(),
        "{}",
        sim.snapshot()
    );
    let now = sim.now;
    sim.command_at(
        now,
        Command::TerminalInput {
            data: b"echo hi\n".to_vec(),
        },
    );
    sim.run_until(Duration::from_secs(40), |s| {
        String::from_utf8_lossy(&s.record.terminal_output).contains("echo hi")
    });
    let out = String::from_utf8_lossy(&sim.record.terminal_output).to_string();
    assert!(out.contains("echo hi"), "terminal output: {out:?}");
    // A resize travels as a Guacamole `size` and reaches the gateway's PTY.
    let now = sim.now;
    sim.command_at(
        now,
        Command::TerminalResize {
            cols: 120,
            rows: 40,
        },
    );
    sim.run_until(Duration::from_secs(45), |s| {
        s.record.target_resizes.last() == Some(&(120, 40))
    });
    assert_eq!(sim.record.target_resizes.last(), Some(&(120, 40)));
    // Closing ends the launch cleanly.
    let now = sim.now;
    sim.command_at(now, Command::Close);
    sim.run_until(Duration::from_secs(50), |_| false);
    assert_eq!(sim.record.finished, Some(Ok(())), "{}", sim.snapshot());
}

/// A seed replays a launch: on a network with fixed latencies every checkpoint lands on the same virtual
/// microsecond, for every profile and both ICE modes. With jitter or loss the network's decisions are still
/// a pure function of the seed (per flow and packet index), and so is the outcome; what can move by a few
/// milliseconds is the DTLS handshake, because dimpl (str0m's DTLS) times its flight retransmissions with
/// an OS-seeded RNG that str0m 0.24.1's aws-lc-rs provider does not let us seed (ARCHITECTURE.md,
/// "Determinism").
#[test]
fn the_same_seed_replays_the_same_schedule() {
    let run = |s: &Scenario| {
        let mut sim = s.build(pam_lite_dev_clock::origin());
        sim.run_until(Duration::from_secs(30), |s| {
            s.record.tube_ready_at.is_some()
        });
        sim
    };
    for name in Profile::names() {
        for trickle in [true, false] {
            let mut s = Scenario::new(Profile::by_name(name).unwrap_or_else(|e| panic!("{e}")));
            s.trickle = trickle;
            s.seed = 42;
            assert_eq!(
                run(&s).snapshot(),
                run(&s).snapshot(),
                "{name}: seed 42 must replay exactly"
            );

            s.net.peer_link.jitter = Duration::from_millis(15);
            s.net.peer_link.loss = 0.05;
            let (a, b) = (run(&s), run(&s));
            assert_eq!(a.record.finished, b.record.finished, "{name}");
            assert_eq!(a.ready_ms().is_some(), b.ready_ms().is_some(), "{name}");
        }
    }
}

#[test]
fn gateway_offline_is_a_clear_error_not_a_silent_wait() {
    for p in Profile::names() {
        let mut s = Scenario::new(Profile::by_name(p).unwrap_or_else(|e| panic!("{e}")));
        s.faults.gateway_offline = true;
        let mut sim = s.build(pam_lite_dev_clock::origin());
        sim.run_until(Duration::from_secs(60), |_| false);
        match &sim.record.finished {
            Some(Err(e)) => {
                assert!(e.to_string().contains("not online"), "{p}: {e}");
                assert_eq!(
                    pam_lite_tests::exit_codes::launch_exit_code(e),
                    6,
                    "{p}: {e}"
                );
                // Commander would wait 24 s for the data plane after a silent failure; we stop at once
                // after the last attempt.
                let ended = sim.now.saturating_duration_since(sim.start);
                assert!(ended < Duration::from_secs(12), "{p}: took {ended:?}");
            }
            other => panic!("{p}: expected an error, got {other:?}\n{}", sim.snapshot()),
        }
    }
}

/// A burst larger than the tube's buffers: the client asks the local side to pause, keeps every byte it
/// was given, and resumes when the tube drains — bytes in equal bytes out.
#[test]
fn a_large_burst_pauses_the_local_side_and_loses_nothing() {
    let start = pam_lite_dev_clock::origin();
    let mut sim = Scenario::new(Profile::fast()).build(start);
    sim.run_until(Duration::from_secs(30), |s| {
        s.record.tube_ready_at.is_some()
    });
    let data: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let now = sim.now;
    sim.command_at(now, Command::OpenConnection { conn: 1 });
    for chunk in data.chunks(16 * 1024) {
        sim.command_at(
            now,
            Command::Send {
                conn: 1,
                data: chunk.to_vec(),
            },
        );
    }
    // A connection opened while the tube is paused starts paused (and is resumed with the rest).
    sim.command_at(now, Command::OpenConnection { conn: 2 });
    sim.run_until(Duration::from_secs(600), |s| {
        s.record
            .received
            .get(&1)
            .is_some_and(|d| d.len() >= data.len())
    });
    assert!(
        sim.record.pauses > 0,
        "a 6 MiB burst must pause the local side"
    );
    assert_eq!(sim.record.paused.get(&1), Some(&false), "and resume it");
    assert!(
        sim.record.paused_ever.contains(&2),
        "a connection opened during the pause must start paused"
    );
    assert_eq!(sim.record.paused.get(&2), Some(&false), "and be resumed");
    let got = sim.record.received.get(&1).cloned().unwrap_or_default();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ");
}
