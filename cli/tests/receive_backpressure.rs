//! Receive-side flow control end to end (issue 13, item 1), on both runtimes, with real sockets: the
//! standalone emulator (`pam-lite emulator --target`, its own process) in front of a TCP target run by
//! this test, and `pam-lite tunnel --ticket` (the process whose memory is measured).
//!
//! * **Client direction**: the target pushes `BYTES` into a local peer that does not read for `PAUSE`;
//!   pam-lite's RSS (`VmRSS` of `/proc/<pid>/status`, sampled every 50 ms) must stay under
//!   [`RSS_CEILING_KIB`] the whole time — before the fix it grew by ~20 MiB per second of pause — and
//!   once the peer reads, every byte arrives in order (SHA-256 of the stream against the generator's).
//! * **Gateway direction**: the local client pushes `BYTES` towards a target that does not read for
//!   `PAUSE`; the emulator's RSS (the gateway role) and pam-lite's stay under the same ceiling, and the
//!   target receives every byte in order.
//!
//! * **Terminal** (`launch --stdin` against `pam-lite emulator --terminal`): the remote shell prints
//!   [`terminal_lines`] lines of `seq` into pam-lite's stdout, a pipe this test does not read for
//!   `TERMINAL_PAUSE`; pam-lite's RSS stays under [`TERMINAL_RSS_CEILING_KIB`] (the terminal output is credited
//!   as stdout takes it, so the tube pauses at the receive budget), and then every byte between two markers
//!   arrives (SHA-256 against `seq`'s output with the PTY's `\r\n`).
//! * **Terminal input** (`launch --stdin` fed 32 MiB faster than the remote shell reads): while the
//!   shell reads nothing, pam-lite takes at most [`INPUT_TAKEN_CEILING`] of its stdin (the reader waits
//!   for the tube, the rest stays in the pipe) and its RSS stays under the terminal ceiling; then the
//!   shell counts every byte (the flow at full speed stays under the send side's ceiling).
//! * **Stall close, in real time** (both runtimes at once, ~65 s): connection B works, then connection
//!   A's target pushes into a local peer that never reads. As documented (ARCHITECTURE.md, "Flow
//!   control"), A holds the tube and B's traffic waits behind it; after `STALL_LIMIT` (60 s) A is closed
//!   with the reason logged (`CloseReason::Timeout` to the gateway), its local socket ends, B's echo
//!   arrives, and pam-lite's RSS stayed under the ceiling the whole minute.
//!
//! `BYTES` is 64 MiB in CI (`PAM_LITE_BP_MIB` overrides it). The ≥ 1 GiB run is the same test:
//! `PAM_LITE_BP_MIB=1024 cargo test -p pam-lite --test receive_backpressure -- --nocapture`
//! (ARCHITECTURE.md records the measured peaks; `PAM_LITE_BP_TERM_LINES` sets the terminal's lines).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, ChildStdout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The ceiling on each process's resident memory. A debug pam-lite with an open tunnel starts at
/// ~18 MiB and peaked at 21 MiB (slow reader) / 31 MiB (pushing into a slow target: the send side's
/// own bounded queues) in the measured runs; flow control adds at most the receive budget (2 MiB),
/// SCTP's receive buffer (1 MiB) and socket buffers. Without receive-side flow control the client grew
/// by ~20 MiB per second of pause, past this ceiling within the 5 s pause.
const RSS_CEILING_KIB: u64 = 48 * 1024;
/// How long the slow side does not read at all.
const PAUSE: Duration = Duration::from_secs(5);
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
const CHUNK: usize = 64 * 1024;

fn total_bytes() -> u64 {
    std::env::var("PAM_LITE_BP_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(64)
        * 1024
        * 1024
}

/// Deterministic pseudo-random stream (xorshift), generated in chunks so 1 GiB never sits in memory.
struct Payload(u64);

impl Payload {
    fn new() -> Self {
        Payload(0x9E37_79B9_7F4A_7C15)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0 >> 24) as u8;
        }
    }

    /// The SHA-256 of the first `total` bytes.
    fn digest(total: u64) -> Vec<u8> {
        let mut p = Payload::new();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            p.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            left -= n as u64;
        }
        h.finalize().to_vec()
    }
}

/// Write `total` payload bytes to `w`, then half-close.
fn push(mut w: TcpStream, total: u64) {
    let mut p = Payload::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).expect("push payload");
        left -= n as u64;
    }
    let _ = w.shutdown(Shutdown::Write);
}

/// Read `r` to the end: (bytes, SHA-256).
fn drain_hash(mut r: TcpStream) -> (u64, Vec<u8>) {
    r.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) => panic!("read after {n} bytes: {e}"),
        }
    }
    (n, h.finalize().to_vec())
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Samples the peak VmRSS of some processes until dropped.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peaks: Vec<Arc<AtomicU64>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pids: &[u32]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks: Vec<_> = pids.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
        let (s, p, pids) = (stop.clone(), peaks.clone(), pids.to_vec());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (pid, peak) in pids.iter().zip(&p) {
                    if let Some(kib) = vm_rss_kib(*pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        RssWatch {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    fn peaks(&self) -> Vec<u64> {
        self.peaks
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The emulator and the tunnel, killed when dropped.
struct Setup {
    emulator: Child,
    tunnel: Child,
    listen: String,
    /// Keeps the tunnel's stderr pipe drained.
    stderr: mpsc::Receiver<String>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for c in [&mut self.tunnel, &mut self.emulator] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, deadline: Instant) -> String {
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?}; saw:\n{}", seen.join("\n"));
}

/// The standalone emulator with `args`, once it wrote its ticket (`ticket` names the file; by `deadline`):
/// the process and the ticket's path.
fn emulator_with_ticket(
    args: &[&str],
    env: &[(&str, &str)],
    ticket: &str,
    deadline: Instant,
) -> (Child, String) {
    let ticket = common::temp_path(ticket);
    let t = ticket.to_str().unwrap().to_string();
    let mut all = vec!["emulator"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--ticket-out", &t]);
    let mut emulator = common::spawn(&all, env);
    let _e_out = common::drain(emulator.stdout.take().expect("stdout"));
    let _e_err = common::drain(emulator.stderr.take().expect("stderr"));
    while std::fs::metadata(&ticket).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the emulator wrote no ticket");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(100));
    (emulator, t)
}

/// `pam-lite launch --stdin` against a terminal emulator running `/bin/sh`: (emulator, launch).
fn terminal_launch(runtime: &str, ticket: &str) -> (Child, Child) {
    let deadline = Instant::now() + SETUP_DEADLINE;
    let (emulator, t) =
        emulator_with_ticket(&["--terminal"], &[("SHELL", "/bin/sh")], ticket, deadline);
    let launch = common::spawn(
        &["launch", "--ticket", &t, "--stdin", "--runtime", runtime],
        &[],
    );
    (emulator, launch)
}

fn setup(runtime: &str, target: &str) -> Setup {
    let deadline = Instant::now() + SETUP_DEADLINE;
    let (emulator, t) =
        emulator_with_ticket(&["--target", target], &[], "bp-ticket.json", deadline);
    let mut tunnel = common::spawn(
        &[
            "tunnel",
            "--ticket",
            &t,
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            runtime,
        ],
        &[],
    );
    let stderr = lines(tunnel.stderr.take().expect("stderr"));
    let _t_out = common::drain(tunnel.stdout.take().expect("stdout"));
    let line = wait_line(&stderr, "listening on ", deadline);
    let listen = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("address after `listening on`")
        .to_string();
    wait_line(&stderr, "tunnel ready", deadline);
    Setup {
        emulator,
        tunnel,
        listen,
        stderr,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The target pushes; the local peer does not read for `PAUSE`, then reads everything.
fn client_side_slow_reader(runtime: &str) {
    let total = total_bytes();
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    let pusher = thread::spawn(move || {
        let (s, _) = target.accept().expect("the gateway connects the target");
        push(s, total);
    });
    let s = setup(runtime, &target_addr);
    let watch = RssWatch::start(&[s.tunnel.id(), s.emulator.id()]);
    let start_rss = vm_rss_kib(s.tunnel.id()).unwrap_or(0);

    let local = TcpStream::connect(&s.listen).expect("connect to the tunnel");
    thread::sleep(PAUSE);
    let paused_peaks = watch.peaks();
    let started = Instant::now();
    let (n, digest) = drain_hash(local);
    let secs = started.elapsed().as_secs_f64();
    pusher.join().expect("pusher");
    let peaks = watch.peaks();
    drop(watch);
    eprintln!(
        "{runtime}: client side, {} MiB pushed into a reader paused {PAUSE:?}: pam-lite RSS {:.1} MiB at \
         start, peak {:.1} MiB during the pause, {:.1} MiB overall; emulator peak {:.1} MiB; drained at \
         {:.1} MiB/s",
        total >> 20,
        mib(start_rss),
        mib(paused_peaks[0]),
        mib(peaks[0]),
        mib(peaks[1]),
        n as f64 / 1048576.0 / secs
    );
    assert_eq!(n, total, "{runtime}: every byte arrived");
    assert_eq!(
        digest,
        Payload::digest(total),
        "{runtime}: SHA-256, in order"
    );
    assert!(
        peaks[0] < RSS_CEILING_KIB,
        "{runtime}: pam-lite RSS peaked at {:.1} MiB (ceiling {} MiB)",
        mib(peaks[0]),
        RSS_CEILING_KIB / 1024
    );
    assert!(
        peaks[1] < RSS_CEILING_KIB,
        "{runtime}: emulator RSS peaked at {:.1} MiB",
        mib(peaks[1])
    );
    drop(s);
}

/// The local client pushes; the target does not read for `PAUSE`, then reads everything.
fn gateway_side_slow_target(runtime: &str) {
    let total = total_bytes();
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    let reader = thread::spawn(move || {
        let (s, _) = target.accept().expect("the gateway connects the target");
        thread::sleep(PAUSE);
        drain_hash(s)
    });
    let s = setup(runtime, &target_addr);
    let watch = RssWatch::start(&[s.tunnel.id(), s.emulator.id()]);
    let local = TcpStream::connect(&s.listen).expect("connect to the tunnel");
    let writer = {
        let w = local.try_clone().unwrap();
        thread::spawn(move || push(w, total))
    };
    let (n, digest) = reader.join().expect("target reader");
    writer.join().expect("writer");
    let peaks = watch.peaks();
    drop(watch);
    eprintln!(
        "{runtime}: gateway side, {} MiB pushed into a target paused {PAUSE:?}: emulator RSS peak \
         {:.1} MiB, pam-lite peak {:.1} MiB",
        total >> 20,
        mib(peaks[1]),
        mib(peaks[0])
    );
    assert_eq!(n, total, "{runtime}: every byte reached the target");
    assert_eq!(
        digest,
        Payload::digest(total),
        "{runtime}: SHA-256, in order"
    );
    assert!(
        peaks[1] < RSS_CEILING_KIB,
        "{runtime}: emulator (gateway) RSS peaked at {:.1} MiB (ceiling {} MiB)",
        mib(peaks[1]),
        RSS_CEILING_KIB / 1024
    );
    assert!(
        peaks[0] < RSS_CEILING_KIB,
        "{runtime}: pam-lite RSS peaked at {:.1} MiB",
        mib(peaks[0])
    );
    drop(local);
    drop(s);
}

#[test]
fn slow_local_reader_bounded_and_lossless_smol() {
    client_side_slow_reader("smol");
}

#[test]
fn slow_local_reader_bounded_and_lossless_blocking() {
    client_side_slow_reader("blocking");
}

#[test]
fn slow_target_bounded_and_lossless_smol() {
    gateway_side_slow_target("smol");
}

#[test]
fn slow_target_bounded_and_lossless_blocking() {
    gateway_side_slow_target("blocking");
}

// ------------------------------------------------------------------------------------------ terminal

/// Lines of `seq` the terminal test's shell prints (`PAM_LITE_BP_TERM_LINES` overrides): 4 M lines
/// are 33.4 MiB of output with the PTY's `\r\n`, sixteen times the receive budget.
fn terminal_lines() -> u64 {
    std::env::var("PAM_LITE_BP_TERM_LINES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(4_000_000)
}

/// The terminal test's ceiling on pam-lite's RSS, tighter than [`RSS_CEILING_KIB`]: a debug launch
/// starts at ~18 MiB and peaked at 23 MiB; before terminal output was credited, the whole output
/// piled up in the process while stdout was not read (33 MiB here).
const TERMINAL_RSS_CEILING_KIB: u64 = 32 * 1024;
/// How long the terminal test does not read stdout (longer than `PAUSE`: the terminal's output is
/// slower than a raw connection's, and the pause must be long enough for the unbounded behaviour
/// to cross the ceiling).
const TERMINAL_PAUSE: Duration = Duration::from_secs(10);

/// What `seq 1 n` prints through a PTY (ONLCR: `\n` → `\r\n`): (bytes, SHA-256).
fn seq_digest(n: u64) -> (u64, Vec<u8>) {
    let mut h = Sha256::new();
    let mut len = 0u64;
    let mut buf = String::with_capacity(1 << 16);
    for i in 1..=n {
        use std::fmt::Write as _;
        let _ = write!(buf, "{i}\r\n");
        if buf.len() >= 60_000 {
            h.update(buf.as_bytes());
            len += buf.len() as u64;
            buf.clear();
        }
    }
    h.update(buf.as_bytes());
    len += buf.len() as u64;
    (len, h.finalize().to_vec())
}

const BEGIN: &[u8] = b"BEGINMARK\r\n";
const END: &[u8] = b"ENDMARK\r\n";

/// Read pam-lite's stdout to the end: the bytes between the markers (bytes, SHA-256), and how much
/// came in all.
fn read_terminal(mut r: ChildStdout) -> Result<(u64, Vec<u8>, u64), String> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => all.extend_from_slice(&buf[..k]),
            Err(e) => return Err(format!("stdout read after {} bytes: {e}", all.len())),
        }
    }
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let Some(b) = find(&all, BEGIN) else {
        return Err(format!(
            "no begin marker in {} bytes: {:?}",
            all.len(),
            String::from_utf8_lossy(&all[..all.len().min(2000)])
        ));
    };
    let body = &all[b + BEGIN.len()..];
    let Some(e) = find(body, END) else {
        return Err(format!(
            "no end marker after {} bytes; tail: {:?}",
            body.len(),
            String::from_utf8_lossy(&body[body.len().saturating_sub(300)..])
        ));
    };
    let body = &body[..e];
    Ok((
        body.len() as u64,
        Sha256::digest(body).to_vec(),
        all.len() as u64,
    ))
}

/// A terminal session whose output goes into a stdout pipe nobody reads for `PAUSE`.
fn terminal_stdout_not_read(runtime: &str) {
    let lines = terminal_lines();
    let (mut emulator, mut launch) = terminal_launch(runtime, "bp-term-ticket.json");
    // The markers are split in the script so that the PTY's echo of it never matches them.
    let script = format!("printf 'BEGIN''MARK\\n'; seq 1 {lines}; printf 'END''MARK\\n'\nexit\n");
    {
        let mut stdin = launch.stdin.take().expect("stdin");
        stdin.write_all(script.as_bytes()).expect("script");
    }
    let stdout = launch.stdout.take().expect("stdout");
    let stderr = common::drain(launch.stderr.take().expect("stderr"));
    let (launch_pid, emulator_pid) = (launch.id(), emulator.id());
    let watch = RssWatch::start(&[launch_pid, emulator_pid]);
    let started = Instant::now();
    // Nobody reads stdout meanwhile: the shell's output fills the pipe, then pam-lite's budget.
    thread::sleep(TERMINAL_PAUSE);
    let paused_peaks = watch.peaks();
    let read_from = Instant::now();
    let reader = thread::spawn(move || read_terminal(stdout));
    let exit_deadline = Instant::now() + Duration::from_secs(300);
    let code = loop {
        match launch.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if Instant::now() > exit_deadline => {
                let _ = launch.kill();
                let _ = launch.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait: {e}"),
        }
    };
    let read_secs = read_from.elapsed().as_secs_f64();
    let peaks = watch.peaks();
    drop(watch);
    let _ = emulator.kill();
    let _ = emulator.wait();
    let err = stderr.join().unwrap_or_default();
    let got = reader.join().expect("stdout reader");
    let (want_len, want_digest) = seq_digest(lines);
    let (n, digest, all) = got.unwrap_or_else(|e| panic!("{runtime}: {e}\nstderr:\n{err}"));
    eprintln!(
        "{runtime}: terminal, seq 1 {lines} ({:.1} MiB of output) into a stdout pipe unread for {TERMINAL_PAUSE:?}: \
         pam-lite RSS peak {:.1} MiB during the pause, {:.1} MiB overall; emulator peak {:.1} MiB; \
         {:.1} MiB on stdout in all, read in {read_secs:.1} s; session {:.1} s",
        mib(want_len / 1024),
        mib(paused_peaks[0]),
        mib(peaks[0]),
        mib(peaks[1]),
        all as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(code, Some(0), "{runtime}: exit code; stderr:\n{err}");
    assert_eq!(n, want_len, "{runtime}: every byte of the output arrived");
    assert_eq!(digest, want_digest, "{runtime}: SHA-256, in order");
    assert!(
        peaks[0] < TERMINAL_RSS_CEILING_KIB,
        "{runtime}: pam-lite RSS peaked at {:.1} MiB (ceiling {} MiB)",
        mib(peaks[0]),
        TERMINAL_RSS_CEILING_KIB / 1024
    );
    assert!(
        peaks[1] < RSS_CEILING_KIB,
        "{runtime}: emulator RSS peaked at {:.1} MiB",
        mib(peaks[1])
    );
}

#[test]
fn terminal_output_into_an_unread_stdout_bounded_and_lossless_smol() {
    terminal_stdout_not_read("smol");
}

#[test]
fn terminal_output_into_an_unread_stdout_bounded_and_lossless_blocking() {
    terminal_stdout_not_read("blocking");
}

// ------------------------------------------------------------------------------------- terminal input

/// Bytes the terminal-input test pipes into `launch --stdin` (`PAM_LITE_BP_INPUT_MIB` overrides).
fn input_bytes() -> u64 {
    std::env::var("PAM_LITE_BP_INPUT_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(32)
        * 1024
        * 1024
}

/// How much of a fast stdin pam-lite may have taken while the remote side reads nothing: the stdin
/// hold (1 MiB), the tube's high-water mark and SCTP's window (1 MiB each), the gateway's receive budget
/// (2 MiB), pipe and PTY buffers. Before the stdin reader waited on the tube, it took the whole input
/// at once (the outbox closed the session past 64 MiB).
const INPUT_TAKEN_CEILING: u64 = 16 * 1024 * 1024;
/// How long the remote shell reads nothing once it is ready.
const INPUT_REMOTE_PAUSE: Duration = Duration::from_secs(6);

/// A terminal session fed `input_bytes()` on stdin, faster than the remote side reads: the remote shell
/// goes raw, says `GOMARK`, sleeps, then counts what it reads. pam-lite takes at most
/// [`INPUT_TAKEN_CEILING`] of the pipe while the shell sleeps, its RSS stays under the terminal ceiling,
/// and the shell counts every byte (`wc -c`).
fn terminal_input_faster_than_the_remote(runtime: &str) {
    let total = input_bytes();
    let (mut emulator, mut launch) = terminal_launch(runtime, "bp-input-ticket.json");
    let mut stdin = launch.stdin.take().expect("stdin");
    // Raw mode first (no line discipline on the bulk), then the go signal; split so the echo of the
    // command line never matches it.
    let pause = INPUT_REMOTE_PAUSE.as_secs();
    let script = format!(
        "stty raw -echo; printf 'GO''MARK\\n'; sleep {pause}; head -c {total} | wc -c; exit\n"
    );
    stdin.write_all(script.as_bytes()).expect("script");
    let (go_tx, go_rx) = mpsc::channel();
    let mut stdout = launch.stdout.take().expect("stdout");
    let reader = thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        let mut go = Some(go_tx);
        while let Ok(k) = stdout.read(&mut buf) {
            if k == 0 {
                break;
            }
            all.extend_from_slice(&buf[..k]);
            if go.is_some() && all.windows(6).any(|w| w == b"GOMARK") {
                let _ = go.take().map(|g| g.send(()));
            }
        }
        all
    });
    let stderr = common::drain(launch.stderr.take().expect("stderr"));
    let watch = RssWatch::start(&[launch.id(), emulator.id()]);
    go_rx
        .recv_timeout(SETUP_DEADLINE)
        .expect("the remote shell never said GOMARK");
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let written = written.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            for (i, b) in buf.iter_mut().enumerate() {
                *b = b'a' + (i % 26) as u8;
            }
            let mut left = total;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                if stdin.write_all(&buf[..n]).is_err() {
                    break;
                }
                written.fetch_add(n as u64, Ordering::Relaxed);
                left -= n as u64;
            }
        })
    };
    // Sample before the shell wakes up: what pam-lite took meanwhile is bounded.
    thread::sleep(INPUT_REMOTE_PAUSE - Duration::from_secs(2));
    let taken = written.load(Ordering::Relaxed);
    let paused_peaks = watch.peaks();
    let exit_deadline = Instant::now() + Duration::from_secs(300);
    let code = loop {
        match launch.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if Instant::now() > exit_deadline => {
                let _ = launch.kill();
                let _ = launch.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait: {e}"),
        }
    };
    writer.join().expect("writer");
    let peaks = watch.peaks();
    drop(watch);
    let _ = emulator.kill();
    let _ = emulator.wait();
    let err = stderr.join().unwrap_or_default();
    let out = reader.join().expect("stdout reader");
    let tail = String::from_utf8_lossy(&out[out.len().saturating_sub(200)..]).to_string();
    eprintln!(
        "{runtime}: terminal input, {} MiB on stdin while the remote reads nothing for {INPUT_REMOTE_PAUSE:?}: \
         pam-lite took {:.1} MiB of it meanwhile, RSS peak {:.1} MiB then, {:.1} MiB overall; emulator \
         peak {:.1} MiB",
        total >> 20,
        taken as f64 / 1048576.0,
        mib(paused_peaks[0]),
        mib(peaks[0]),
        mib(peaks[1]),
    );
    assert_eq!(code, Some(0), "{runtime}: exit code; stderr:\n{err}");
    assert!(
        taken < INPUT_TAKEN_CEILING,
        "{runtime}: pam-lite took {taken} bytes of stdin while the remote read nothing"
    );
    let counted = format!("{total}");
    assert!(
        tail.lines().any(|l| l.trim() == counted),
        "{runtime}: the remote `wc -c` did not count {total} bytes; output tail: {tail:?}"
    );
    // While the remote reads nothing the input waits in its pipe: the terminal's ceiling. Once it reads,
    // the input flows at full speed through the send side's own bounded queues, under the ceiling of the
    // other send-side case (a client pushing into a slow target): measured 26.7 MiB alone, 32.2 MiB under CI.
    assert!(
        paused_peaks[0] < TERMINAL_RSS_CEILING_KIB,
        "{runtime}: pam-lite RSS peaked at {:.1} MiB while the remote read nothing (ceiling {} MiB)",
        mib(paused_peaks[0]),
        TERMINAL_RSS_CEILING_KIB / 1024
    );
    assert!(
        peaks[0] < RSS_CEILING_KIB,
        "{runtime}: pam-lite RSS peaked at {:.1} MiB while the input flowed (ceiling {} MiB)",
        mib(peaks[0]),
        RSS_CEILING_KIB / 1024
    );
}

#[test]
fn terminal_input_faster_than_the_remote_bounded_and_lossless_smol() {
    terminal_input_faster_than_the_remote("smol");
}

#[test]
fn terminal_input_faster_than_the_remote_bounded_and_lossless_blocking() {
    terminal_input_faster_than_the_remote("blocking");
}

// ---------------------------------------------------------------------------------------- stall close

/// `pam_lite_core::tube::delivery::STALL_LIMIT`, the real one (no knob).
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Connection B echoes; connection A's target pushes into a local peer that never reads. Returns a
/// summary line; panics on a failed check.
fn stall_close_in_real_time(runtime: &'static str) -> String {
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    let pushed = Arc::new(AtomicU64::new(0));
    {
        let pushed = pushed.clone();
        thread::spawn(move || {
            // First connection (B): an echo server.
            let (b, _) = target.accept().expect("the gateway connects B's target");
            thread::spawn(move || {
                let mut r = b.try_clone().unwrap();
                let mut w = b;
                let mut buf = vec![0u8; CHUNK];
                while let Ok(k) = r.read(&mut buf) {
                    if k == 0 || w.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            });
            // Second connection (A): pushes until the gateway closes it.
            let (mut a, _) = target.accept().expect("the gateway connects A's target");
            let mut p = Payload::new();
            let mut buf = vec![0u8; CHUNK];
            loop {
                p.fill(&mut buf);
                if a.write_all(&buf).is_err() {
                    break;
                }
                pushed.fetch_add(CHUNK as u64, Ordering::Relaxed);
            }
        });
    }
    let s = setup(runtime, &target_addr);
    let watch = RssWatch::start(&[s.tunnel.id(), s.emulator.id()]);

    // B works.
    let mut b = TcpStream::connect(&s.listen).expect("connect B");
    b.set_read_timeout(Some(STALL_LIMIT + Duration::from_secs(30)))
        .unwrap();
    let echo = |b: &mut TcpStream, msg: &[u8]| {
        b.write_all(msg).expect("B write");
        let mut got = vec![0u8; msg.len()];
        b.read_exact(&mut got).map(|()| got)
    };
    assert_eq!(echo(&mut b, b"before").expect("B echo"), b"before");

    // A: its local side never reads.
    let a = TcpStream::connect(&s.listen).expect("connect A");
    let a_connected = Instant::now();
    // A's backlog fills the budget, then everything behind it fills up to the target: wait until the
    // target's pushes stop moving for 1 s (the tube is paused end to end).
    let ready = Instant::now() + Duration::from_secs(30);
    let (mut last, mut still_since) = (0, Instant::now());
    loop {
        let now_pushed = pushed.load(Ordering::Relaxed);
        if now_pushed != last {
            (last, still_since) = (now_pushed, Instant::now());
        } else if now_pushed >= 2 << 20 && still_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
        assert!(
            Instant::now() < ready,
            "{runtime}: A's target never stopped"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let rss_stalled = vm_rss_kib(s.tunnel.id()).unwrap_or(0);
    // B's traffic now waits behind A (the tube is paused as a whole: the documented behaviour).
    let b_echo = {
        let mut b2 = b.try_clone().unwrap();
        thread::spawn(move || {
            let r = echo(&mut b2, b"during the stall");
            (r, Instant::now())
        })
    };
    let close_line = wait_line(
        &s.stderr,
        "took nothing for 60s",
        a_connected + STALL_LIMIT + Duration::from_secs(20),
    );
    let closed_after = a_connected.elapsed();
    let (b_got, b_at) = b_echo.join().expect("B echo thread");
    let b_got = b_got.unwrap_or_else(|e| panic!("{runtime}: B never got its echo: {e}"));
    assert_eq!(b_got, b"during the stall", "{runtime}");
    let b_after = b_at.duration_since(a_connected);
    // A's local socket is closed: reading it reaches its end (after what was already in its buffers).
    let (a_tail, a_end) = {
        let mut a = a;
        a.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut n = 0u64;
        let mut buf = vec![0u8; CHUNK];
        let end = loop {
            match a.read(&mut buf) {
                Ok(0) => break "EOF".to_string(),
                Ok(k) => n += k as u64,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("{runtime}: A's local socket still open 15 s after the stall close")
                }
                Err(e) => break format!("{e}"),
            }
        };
        (n, end)
    };
    // The tube reads on: B keeps working.
    assert_eq!(echo(&mut b, b"after").expect("B echo after"), b"after");
    let rss_end = vm_rss_kib(s.tunnel.id()).unwrap_or(0);
    let peaks = watch.peaks();
    drop(watch);
    let summary = format!(
        "{runtime}: stall close in real time: A closed {:.1} s after it connected ({} MiB pushed by its \
         target meanwhile), log: {:?}; B's echo held {:.1} s, then arrived; A's socket gave {:.1} MiB more, \
         then {a_end}; pam-lite RSS {:.1} MiB once stalled, {:.1} MiB at the end, peak {:.1} MiB; \
         emulator peak {:.1} MiB",
        closed_after.as_secs_f64(),
        pushed.load(Ordering::Relaxed) >> 20,
        close_line.trim(),
        b_after.as_secs_f64(),
        a_tail as f64 / 1048576.0,
        mib(rss_stalled),
        mib(rss_end),
        mib(peaks[0]),
        mib(peaks[1]),
    );
    assert!(
        closed_after >= STALL_LIMIT - Duration::from_secs(1)
            && closed_after <= STALL_LIMIT + Duration::from_secs(10),
        "{summary}"
    );
    assert!(
        b_after >= STALL_LIMIT - Duration::from_secs(2),
        "B was not held behind A: {summary}"
    );
    assert!(peaks[0] < RSS_CEILING_KIB, "{summary}");
    assert!(peaks[1] < RSS_CEILING_KIB, "{summary}");
    assert!(
        rss_end < rss_stalled + 8 * 1024,
        "pam-lite grew during the stall: {summary}"
    );
    drop(b);
    drop(s);
    summary
}

/// Both runtimes at once, so the real minute is paid once.
#[test]
fn a_stalled_connection_is_closed_after_the_real_stall_limit_and_the_tube_reads_on() {
    let runs: Vec<_> = ["smol", "blocking"]
        .into_iter()
        .map(|rt| (rt, thread::spawn(move || stall_close_in_real_time(rt))))
        .collect();
    let mut failed = Vec::new();
    for (rt, run) in runs {
        match run.join() {
            Ok(summary) => eprintln!("{summary}"),
            Err(e) => failed.push(format!(
                "{rt}: {}",
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
