//! Helpers for the CLI tests: run the built `pam-lite` binary with a hard deadline, write temp files.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pam-lite");

/// What a finished run produced.
#[derive(Debug)]
pub struct Run {
    /// `None` when the process was killed at the deadline.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// A fresh path in cargo's per-test temp dir.
pub fn temp_path(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pam-lite-{}-{n}-{name}", std::process::id()))
}

pub fn write_temp(name: &str, contents: &str) -> PathBuf {
    let p = temp_path(name);
    std::fs::write(&p, contents).expect("write temp file");
    p
}

/// Spawn `pam-lite args…` with piped stdio and `env` added (and `RUST_LOG` removed).
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("KROUTER_URL")
        .env_remove("PAM_CONNECT_TIMING")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn pam-lite")
}

/// Read a pipe to the end on a thread (so a full pipe never blocks the child).
pub fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Wait for `child` at most `deadline`, then kill it.
pub fn wait_with_deadline(mut child: Child, deadline: Duration) -> Run {
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let start = Instant::now();
    let (code, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.code(), false),
            Ok(None) if start.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait: {e}"),
        }
    };
    Run {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    }
}

/// Run to completion with `stdin` as input, bounded by `deadline`.
pub fn run(args: &[&str], env: &[(&str, &str)], stdin: &[u8], deadline: Duration) -> Run {
    let mut child = spawn(args, env);
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&data);
        // dropping `input` closes the child's stdin
    });
    let r = wait_with_deadline(child, deadline);
    let _ = writer.join();
    r
}
