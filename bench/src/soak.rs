//! Soak (issue 13, item 6): one `pam-lite tunnel` process per runtime held open for N minutes while
//! connections open and close through it and data flows, sampling the process's resident size and open
//! file descriptors over time. Flat is the goal: a leak of a connection's state or socket shows as a
//! slope over thousands of connections long before it would show in any test.
//!
//! ```text
//! pam-lite-bench soak --minutes 30 [--runtime smol|blocking|both] [--out bench-results]
//! ```
//!
//! Workload per runtime (both runtimes run at the same time, each against its own emulator and echo
//! server, so the two tables share the machine's conditions): a loop of rounds, each opening
//! [`CONNS_PER_ROUND`] connections at once, echoing [`BYTES_PER_CONN`] bytes through each (every echoed
//! byte is compared with what was sent), closing them, then pausing [`PAUSE`] so the soak measures
//! steady state rather than saturating two shared cores. Every [`SAMPLE_EVERY`] the process's `VmRSS`
//! (`/proc/<pid>/status`) and the entries of `/proc/<pid>/fd` are recorded with the running counts.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_emulator::Emulator;
use serde::Serialize;

use crate::cli;
use crate::launch::Runtime;
use crate::network::Network;
use crate::procs::{self, PrivateDir, Proc};
use crate::targets;

/// Connections opened together in one round.
pub const CONNS_PER_ROUND: usize = 4;
/// Bytes echoed through each connection.
pub const BYTES_PER_CONN: usize = 256 * 1024;
/// Pause between rounds.
pub const PAUSE: Duration = Duration::from_millis(200);
/// Sampling interval.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// One connection's echo must finish within this (a stuck tunnel fails the soak rather than hanging it).
const CONN_LIMIT: Duration = Duration::from_secs(30);

/// One sample of the tunnel process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub at_secs: u64,
    pub rss_kib: u64,
    pub fds: usize,
    pub connections: u64,
    pub mib_echoed: u64,
}

/// The soak of one runtime.
#[derive(Debug, Clone, Serialize)]
pub struct SoakResult {
    pub runtime: &'static str,
    pub samples: Vec<Sample>,
    pub connections: u64,
    pub failed_connections: u64,
    pub first_error: Option<String>,
    /// The tunnel process was still running at the end.
    pub alive_at_end: bool,
}

impl SoakResult {
    fn summary(&self) -> String {
        let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) else {
            return format!(
                "| {} | no samples | | | | {} |",
                self.runtime,
                self.first_error.as_deref().unwrap_or("")
            );
        };
        let max_rss = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let max_fds = self.samples.iter().map(|s| s.fds).max().unwrap_or(0);
        format!(
            "| {} | {:.1} / {:.1} / {:.1} | {} / {} / {} | {} ({} failed) | {} MiB |",
            self.runtime,
            mib(first.rss_kib),
            mib(last.rss_kib),
            mib(max_rss),
            first.fds,
            last.fds,
            max_fds,
            self.connections,
            self.failed_connections,
            last.mib_echoed,
        )
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Open file descriptors of `pid` (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Deterministic bytes for connection `n` (so every echo can be checked without keeping copies).
fn pattern(n: u64, len: usize) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Echo `len` bytes of connection `n`'s pattern through `addr` and check what comes back.
fn echo_once(addr: SocketAddr, n: u64, len: usize) -> Result<(), String> {
    let data = pattern(n, len);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(CONN_LIMIT)).ok();
    s.set_write_timeout(Some(CONN_LIMIT)).ok();
    let mut reader = s.try_clone().map_err(|e| format!("clone: {e}"))?;
    let want = data.clone();
    let read = thread::spawn(move || -> Result<(), String> {
        let mut got = vec![0u8; want.len()];
        reader
            .read_exact(&mut got)
            .map_err(|e| format!("read: {e}"))?;
        if got != want {
            return Err("echoed bytes differ".into());
        }
        Ok(())
    });
    s.write_all(&data).map_err(|e| format!("write: {e}"))?;
    let r = read.join().map_err(|_| "reader panicked".to_string())?;
    let _ = s.shutdown(Shutdown::Both);
    r
}

/// Soak `runtime` for `duration` with the `pam-lite` binary `bin`.
pub fn run_one(bin: &Path, runtime: Runtime, duration: Duration) -> SoakResult {
    let mut result = SoakResult {
        runtime: runtime.name(),
        samples: Vec::new(),
        connections: 0,
        failed_connections: 0,
        first_error: None,
        alive_at_end: false,
    };
    if let Err(e) = soak(bin, runtime, duration, &mut result) {
        result.first_error.get_or_insert(e);
    }
    result
}

fn soak(
    bin: &Path,
    runtime: Runtime,
    duration: Duration,
    result: &mut SoakResult,
) -> Result<(), String> {
    let echo =
        targets::echo_server(([127, 0, 0, 1], 0).into()).map_err(|e| format!("echo: {e}"))?;
    let emulator = Emulator::start(Network::LOOPBACK.emulator_config(echo.addr()))
        .map_err(|e| e.to_string())?;
    let dir = PrivateDir::new("soak")?;
    let ticket = dir.write("ticket.json", &emulator.ticket().to_json_string())?;
    let listen = cli::free_port().map_err(|e| format!("free port: {e}"))?;
    let mut p = Proc::spawn(cli::tunnel_command(
        bin,
        &ticket,
        listen,
        "fast",
        runtime,
        &[],
    ))?;
    let pid = p.pid();
    // Ready = one echo went through.
    let ready_by = Instant::now() + Duration::from_secs(30);
    while echo_once(listen, 0, 16).is_err() {
        if Instant::now() >= ready_by {
            return Err(format!("the tunnel never opened: {}", p.stderr_tail()));
        }
        thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    let mut next_sample = start;
    let mut n = 1u64;
    let mut echoed = 0u64;
    let sample = |result: &mut SoakResult, echoed: u64| -> Result<(), String> {
        let m = procs::memory(&pid.to_string()).ok_or("the tunnel process is gone")?;
        let fds = open_fds(pid).ok_or("the tunnel process is gone")?;
        result.samples.push(Sample {
            at_secs: start.elapsed().as_secs(),
            rss_kib: m.rss_kib,
            fds,
            connections: result.connections,
            mib_echoed: echoed >> 20,
        });
        Ok(())
    };
    while start.elapsed() < duration {
        if Instant::now() >= next_sample {
            sample(result, echoed)?;
            eprintln!(
                "pam-lite-bench: soak {}: {:>5} s rss {:.1} MiB fds {} connections {}",
                runtime.name(),
                start.elapsed().as_secs(),
                mib(result.samples.last().map_or(0, |s| s.rss_kib)),
                result.samples.last().map_or(0, |s| s.fds),
                result.connections
            );
            next_sample += SAMPLE_EVERY;
        }
        let round: Vec<_> = (0..CONNS_PER_ROUND as u64)
            .map(|i| {
                let id = n + i;
                thread::spawn(move || echo_once(listen, id, BYTES_PER_CONN))
            })
            .collect();
        n += CONNS_PER_ROUND as u64;
        for h in round {
            result.connections += 1;
            match h.join().unwrap_or_else(|_| Err("panicked".into())) {
                Ok(()) => echoed += BYTES_PER_CONN as u64,
                Err(e) => {
                    result.failed_connections += 1;
                    result.first_error.get_or_insert(e);
                }
            }
        }
        thread::sleep(PAUSE);
    }
    // Let closed connections settle, then the final sample.
    thread::sleep(Duration::from_secs(2));
    sample(result, echoed)?;
    result.alive_at_end = matches!(p.child.try_wait(), Ok(None));
    let _ = p.child.kill();
    let _ = p.finish(Instant::now() + Duration::from_secs(3));
    Ok(())
}

/// The markdown of a soak: a summary row per runtime, then the samples.
pub fn markdown(command: &str, minutes: u64, results: &[SoakResult]) -> String {
    let mut md = format!(
        "Soak: `{command}` ({minutes} min per runtime, both at once; rounds of {CONNS_PER_ROUND} \
         connections × {} KiB echoed and checked, {} ms apart; sampled every {} s)\n\n\
         | runtime | RSS MiB start / end / max | open fds start / end / max | connections | echoed |\n\
         |---|---|---|---|---|\n",
        BYTES_PER_CONN / 1024,
        PAUSE.as_millis(),
        SAMPLE_EVERY.as_secs()
    );
    for r in results {
        md.push_str(&r.summary());
        md.push('\n');
        if let Some(e) = &r.first_error {
            md.push_str(&format!("\n{}: first error: {e}\n", r.runtime));
        }
    }
    md.push_str("\n| t (s) |");
    for r in results {
        md.push_str(&format!(" {0} RSS MiB | {0} fds | {0} conns |", r.runtime));
    }
    md.push_str("\n|---|");
    for _ in results {
        md.push_str("---|---|---|");
    }
    md.push('\n');
    let rows = results.iter().map(|r| r.samples.len()).max().unwrap_or(0);
    for i in 0..rows {
        let at = results
            .iter()
            .find_map(|r| r.samples.get(i))
            .map_or(0, |s| s.at_secs);
        md.push_str(&format!("| {at} |"));
        for r in results {
            match r.samples.get(i) {
                Some(s) => md.push_str(&format!(
                    " {:.1} | {} | {} |",
                    mib(s.rss_kib),
                    s.fds,
                    s.connections
                )),
                None => md.push_str(" | | |"),
            }
        }
        md.push('\n');
    }
    md
}

/// Soak every runtime in `runtimes` at once for `minutes`; returns the markdown.
pub fn run(bin: &Path, runtimes: &[Runtime], minutes: u64) -> Vec<SoakResult> {
    let duration = Duration::from_secs(minutes * 60);
    let handles: Vec<_> = runtimes
        .iter()
        .map(|&rt| {
            let bin = bin.to_path_buf();
            thread::spawn(move || run_one(&bin, rt, duration))
        })
        .collect();
    handles
        .into_iter()
        .zip(runtimes)
        .map(|(h, rt)| {
            h.join().unwrap_or_else(|_| SoakResult {
                runtime: rt.name(),
                samples: Vec::new(),
                connections: 0,
                failed_connections: 0,
                first_error: Some("the soak thread panicked".into()),
                alive_at_end: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_per_connection_and_repeat_per_id() {
        assert_eq!(pattern(3, 64), pattern(3, 64));
        assert_ne!(pattern(3, 64), pattern(4, 64));
    }

    #[test]
    fn fds_of_this_process_are_counted() {
        assert!(open_fds(std::process::id()).is_some_and(|n| n >= 3));
    }

    #[test]
    fn markdown_has_a_row_per_sample() {
        let s = |at, rss| Sample {
            at_secs: at,
            rss_kib: rss,
            fds: 9,
            connections: at,
            mib_echoed: 1,
        };
        let r = SoakResult {
            runtime: "smol",
            samples: vec![s(0, 2048), s(30, 4096)],
            connections: 30,
            failed_connections: 0,
            first_error: None,
            alive_at_end: true,
        };
        let md = markdown("soak --minutes 1", 1, &[r]);
        assert!(
            md.contains("| smol | 2.0 / 4.0 / 4.0 | 9 / 9 / 9 | 30 (0 failed) |"),
            "{md}"
        );
        assert!(md.contains("| 30 | 4.0 | 9 | 30 |"), "{md}");
    }
}
