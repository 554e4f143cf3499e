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
//! `BYTES` is 64 MiB in CI (`PAM_LITE_BP_MIB` overrides it). The ≥ 1 GiB run is the same test:
//! `PAM_LITE_BP_MIB=1024 cargo test -p pam-lite --test receive_backpressure -- --nocapture`
//! (ARCHITECTURE.md records the measured peaks).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Child;
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
    _stderr: mpsc::Receiver<String>,
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

fn setup(runtime: &str, target: &str) -> Setup {
    let ticket = common::temp_path("bp-ticket.json");
    let t = ticket.to_str().unwrap().to_string();
    let mut emulator = common::spawn(&["emulator", "--target", target, "--ticket-out", &t], &[]);
    let _e_out = common::drain(emulator.stdout.take().expect("stdout"));
    let _e_err = common::drain(emulator.stderr.take().expect("stderr"));
    let deadline = Instant::now() + SETUP_DEADLINE;
    while std::fs::metadata(&ticket).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the emulator wrote no ticket");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(100));
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
        _stderr: stderr,
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
