//! End to end through the built binary and the in-process emulator: a real shell behind the emulated
//! gateway (`launch --demo --stdin`) and bytes through a port forward (`tunnel --demo`), on both runtimes.
//! Every child is killed at its deadline.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ChildStderr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const LAUNCH_DEADLINE: Duration = Duration::from_secs(60);

/// `echo hi` through the demo shell. The smol run asks for the waterfall with `--timing`, the blocking
/// one with Commander's `PAM_CONNECT_TIMING=1`; both write `--timing-json`.
fn launch_echo_hi(runtime: &str) {
    let json = common::temp_path("timing.json");
    let json_arg = json.to_str().unwrap();
    let mut args = vec![
        "launch",
        "--demo",
        "--stdin",
        "--runtime",
        runtime,
        "--timing-json",
        json_arg,
    ];
    let mut env = vec![("SHELL", "/bin/sh")];
    if runtime == "smol" {
        args.push("--timing");
    } else {
        env.push(("PAM_CONNECT_TIMING", "1"));
    }
    let r = common::run(&args, &env, b"echo hi\nexit\n", LAUNCH_DEADLINE);
    assert!(
        !r.timed_out,
        "{runtime}: timed out\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    assert_eq!(
        r.code,
        Some(0),
        "{runtime}: stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        // The PTY echoes the typed-ahead script and the shell's prompt may precede the output on the
        // same line (`# hi`): strip a prompt, then look for the command's output alone.
        r.stdout
            .lines()
            .any(|l| l.trim().trim_start_matches(['#', '$', '>', ' ']) == "hi"),
        "{runtime}: no `hi` line from the shell:\n{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("pam-launch:total | ready_for_prompt"),
        "{runtime}: timing waterfall missing:\n{}",
        r.stderr
    );
    let timing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("timing JSON written"))
            .expect("valid JSON");
    let names: Vec<&str> = timing["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.contains(&"enter") && names.contains(&"ready_for_prompt"),
        "{names:?}"
    );
}

#[test]
fn launch_demo_stdin_runs_a_real_shell_smol() {
    launch_echo_hi("smol");
}

#[test]
fn launch_demo_stdin_runs_a_real_shell_blocking() {
    launch_echo_hi("blocking");
}

/// Read stderr lines on a thread; hand them over through a channel (and keep the pipe drained).
fn stderr_lines(stderr: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Wait for a stderr line containing `needle`; returns it, or panics with what was seen.
fn wait_line(
    rx: &mpsc::Receiver<String>,
    needle: &str,
    deadline: Instant,
    seen: &mut Vec<String>,
) -> String {
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no stderr line with {needle:?}; saw:\n{}", seen.join("\n"));
}

/// Deterministic pseudo-random bytes (xorshift), so a failure is reproducible.
fn payload(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn tunnel_roundtrip(runtime: &str) {
    let mut child = common::spawn(
        &[
            "tunnel",
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            runtime,
        ],
        &[],
    );
    let lines = stderr_lines(child.stderr.take().expect("stderr"));
    let _stdout = common::drain(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + LAUNCH_DEADLINE;
    let mut seen = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let line = wait_line(&lines, "listening on ", deadline, &mut seen);
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address after `listening on`")
            .to_string();
        wait_line(&lines, "tunnel ready", deadline, &mut seen);

        // Two connections, one after the other, each moving 2 MiB both ways (more than the tube's
        // high-water mark, so backpressure and the EOF after held data are exercised).
        for round in 0..2u64 {
            let data = payload(2 << 20, 0x9E37_79B9_7F4A_7C15 ^ round);
            let mut s = TcpStream::connect(&addr).expect("connect to the tunnel");
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut w = s.try_clone().unwrap();
            let to_send = data.clone();
            let writer = thread::spawn(move || {
                w.write_all(&to_send).expect("write through the tunnel");
                w.shutdown(std::net::Shutdown::Write).expect("half-close");
            });
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read the echo");
            writer.join().unwrap();
            assert_eq!(got.len(), data.len(), "{runtime}: round {round}: length");
            assert_eq!(
                Sha256::digest(&got),
                Sha256::digest(&data),
                "{runtime}: round {round}: SHA-256 of the echo"
            );
        }
    }));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(p) = result {
        while let Ok(l) = lines.try_recv() {
            seen.push(l);
        }
        eprintln!("pam-lite stderr:\n{}", seen.join("\n"));
        std::panic::resume_unwind(p);
    }
}

#[test]
fn tunnel_demo_moves_bytes_smol() {
    tunnel_roundtrip("smol");
}

#[test]
fn tunnel_demo_moves_bytes_blocking() {
    tunnel_roundtrip("blocking");
}

/// Readiness later than the stdin settle window (1.5 s) must not close the session before the script
/// ran (regression: the settle clock started at stdin's end, not at readiness).
#[test]
fn slow_launch_still_runs_the_whole_script() {
    let r = common::run(
        &["launch", "--demo", "--stdin", "--profile", "commander-1984"],
        &[("SHELL", "/bin/sh"), ("WEBSOCKET_BACKEND_DELAY", "1.8")],
        b"echo hi\nexit\n",
        LAUNCH_DEADLINE,
    );
    assert_eq!(
        r.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.trim().trim_start_matches(['#', '$', '>', ' ']) == "hi"),
        "no `hi`:\n{}",
        r.stdout
    );
}

/// The standalone emulator writes a ticket; a launch against its offline gateway exits with code 6.
#[test]
fn standalone_emulator_ticket_and_offline_gateway_exit_code() {
    let ticket = common::temp_path("offline-ticket.json");
    let t = ticket.to_str().unwrap();
    let emulator = common::spawn(&["emulator", "--gateway-offline", "--ticket-out", t], &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ticket.exists() || std::fs::metadata(&ticket).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the emulator wrote no ticket");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(100));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ticket).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the ticket must be private, mode {mode:o}");
    }
    let check = common::run(&["ticket", "check", t], &[], b"", LAUNCH_DEADLINE);
    let r = common::run(
        &["launch", "--ticket", t, "--stdin"],
        &[],
        b"exit\n",
        LAUNCH_DEADLINE,
    );
    let mut emulator = emulator;
    let _ = emulator.kill();
    let _ = emulator.wait();
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    assert_eq!(
        r.code,
        Some(6),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("not online"), "{}", r.stderr);
}
