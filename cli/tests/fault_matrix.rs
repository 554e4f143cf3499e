//! The fault matrix (issue 13, item 3): the real `pam-lite` binary against the real emulator (HTTP,
//! WebSocket, UDP with ICE/DTLS/SCTP, optional TLS) with one fault per case, on both runtimes. Each case
//! states its expected outcome (the exit code from cli/EXIT_CODES.md and what stderr must say), the bound
//! on the time it may take, and checks the peak memory of the `pam-lite` process (its `VmHWM`, sampled
//! from `/proc/<pid>/status` until it exits) and the SHA-256 of every transfer that completes.
//!
//! The result is a table, printed and written to `target/tmp/RELIABILITY.md`; with
//! `UPDATE_RELIABILITY=1` it is written to docs/RELIABILITY.md instead (that file is what such a run
//! produced). Cases run in a few parallel threads so the whole matrix takes about as long as its slowest
//! cases.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_emulator::{Emulator, EmulatorConfig, HttpFault, TargetConfig};
use sha2::{Digest, Sha256};

/// Parallel cases (each runs one pam-lite process and one emulator).
const PARALLEL: usize = 6;
/// Peak memory every case must stay under (a debug build idles at ~20 MiB). The oversized-input cases
/// send more than this, so passing them proves the input was not buffered whole.
const MEMORY_CEILING_KIB: u64 = 64 * 1024;
/// What the oversized-input cases send (more than the ceiling).
const OVERSIZE: usize = 96 << 20;
/// Bytes echoed (and hashed) through the tunnel in the cases where data flows.
const TRANSFER: usize = 1 << 20;
/// The answer / connect bound these runs set (`PAM_WEBRTC_CONNECT_TIMEOUT_SEC`).
const CONNECT_TIMEOUT_SECS: u64 = 6;
/// The path-loss bound these runs set (`PAM_LITE_PATH_LOSS_LIMIT_SEC`; 60 s by default): a path that
/// stays lost ends the session this long after its last datagram.
const PATH_LOSS_LIMIT_SECS: u64 = 15;
/// Hard deadline of any one process (a hung case fails instead of hanging the suite).
const KILL_AFTER: Duration = Duration::from_secs(90);

// ------------------------------------------------------------------------------------------------------
// The pam-lite process under test

/// A running `pam-lite`, its stdout lines, its stderr, and its sampled peak memory.
struct Pam {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Ends at the end of stderr (the process has no children that could hold the pipe open).
    stderr_reader: thread::JoinHandle<()>,
    hwm_kib: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

/// The `VmHWM` of our child `pid`, or `None` once that process is gone. The parent is checked: between the
/// child being reaped and the sampler stopping, the pid can be reused by any process on the machine (a
/// 524 MiB "peak" once came from a compiler that got the pid of a pam-lite that had just exited).
fn hwm_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    if field("PPid:")? != u64::from(std::process::id()) {
        return None;
    }
    field("VmHWM:")
}

impl Pam {
    fn spawn(args: &[&str], env: &[(&str, String)]) -> Pam {
        let mut cmd = Command::new(common::BIN);
        cmd.args(args)
            .env_remove("RUST_LOG")
            .env_remove("KROUTER_URL")
            .env_remove("PAM_CONNECT_TIMING")
            .env_remove("VERIFY_SSL")
            .env(
                "PAM_WEBRTC_CONNECT_TIMEOUT_SEC",
                CONNECT_TIMEOUT_SECS.to_string(),
            )
            .env("PAM_GATEWAY_OFFER_MAX_ATTEMPTS", "1")
            .env(
                "PAM_LITE_PATH_LOSS_LIMIT_SEC",
                PATH_LOSS_LIMIT_SECS.to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn pam-lite");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let stderr_reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        // VmHWM only grows: the last reading before the process is reaped is its peak (within 10 ms).
        let hwm_kib = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (pid, hwm, stop) = (child.id(), hwm_kib.clone(), done.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match hwm_of(pid) {
                    Some(k) => hwm.fetch_max(k, Ordering::AcqRel),
                    None => return,
                };
                thread::sleep(Duration::from_millis(10));
            }
        });
        Pam {
            child,
            lines,
            stderr,
            stderr_reader,
            hwm_kib,
            done,
        }
    }

    /// The address of `{"listening": "…"}` (the tunnel is up), or `None` by `within`.
    fn ready(&self, within: Duration) -> Option<SocketAddr> {
        let line = self.lines.recv_timeout(within).ok()?;
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        v["listening"].as_str()?.parse().ok()
    }

    fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status();
    }

    /// Wait for the exit (killed after [`KILL_AFTER`]): code, time from `since`, stderr, peak memory.
    fn finish(mut self, since: Instant) -> Finished {
        let code = loop {
            // Read the peak right before reaping (a zombie has no memory figures any more).
            if let Some(k) = hwm_of(self.child.id()) {
                self.hwm_kib.fetch_max(k, Ordering::AcqRel);
            }
            match self.child.try_wait() {
                Ok(Some(st)) => break st.code(),
                Ok(None) if since.elapsed() > KILL_AFTER => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("wait: {e}"),
            }
        };
        let secs = since.elapsed().as_secs_f64();
        self.done.store(true, Ordering::Release);
        let _ = self.stderr_reader.join();
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        Finished {
            code,
            secs,
            stderr,
            hwm_kib: self.hwm_kib.load(Ordering::Acquire),
        }
    }
}

struct Finished {
    code: Option<i32>,
    secs: f64,
    stderr: String,
    hwm_kib: u64,
}

// ------------------------------------------------------------------------------------------------------
// Targets and transfers

/// A TCP server on 127.0.0.1 running `handler` per connection (for the life of the test process).
fn server(handler: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || handler(s));
        }
    });
    addr
}

fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = s.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Accept, let the client's bytes arrive unread, then close: Linux answers with a reset.
fn resetter(s: TcpStream) {
    thread::sleep(Duration::from_millis(300));
    drop(s);
}

/// Accept and never read or write (until the test process ends).
fn staller(s: TcpStream) {
    thread::sleep(Duration::from_secs(3600));
    drop(s);
}

/// A port where nothing listens.
fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Echo [`TRANSFER`] bytes through the tunnel at `addr`: `Ok(sha256 prefix)` when what came back hashes
/// the same as what was sent.
fn echo_transfer(addr: SocketAddr, seed: u64) -> Result<String, String> {
    let data = payload(TRANSFER, seed);
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = s.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut got = Vec::with_capacity(TRANSFER);
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < TRANSFER {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    });
    s.write_all(&data).map_err(|e| format!("write: {e}"))?;
    let got = reader.join().unwrap();
    let _ = s.shutdown(Shutdown::Both);
    let (want, have) = (Sha256::digest(&data), Sha256::digest(&got));
    if want == have {
        Ok(hex8(&want))
    } else {
        Err(format!(
            "SHA-256 mismatch: sent {} bytes {}, got {} bytes {}",
            data.len(),
            hex8(&want),
            got.len(),
            hex8(&have)
        ))
    }
}

fn hex8(d: &[u8]) -> String {
    d.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------------------------------------------------
// Cases

/// What a case expects.
struct Expect {
    code: i32,
    /// stderr must contain each of these.
    says: &'static [&'static str],
    /// The measured time (from the fault, or from the start) must be below this.
    bound: Duration,
}

/// What a case measured.
#[derive(Default)]
struct Measured {
    code: Option<i32>,
    secs: f64,
    hwm_kib: u64,
    /// SHA-256 (first 4 bytes) of each completed transfer, or the failure.
    transfers: Vec<Result<String, String>>,
    stderr: String,
    /// Anything the case itself found wrong (beyond code, text, time and memory).
    problems: Vec<String>,
}

type Run = Box<dyn FnOnce(&str) -> Measured + Send>;

struct Case {
    name: &'static str,
    fault: &'static str,
    expect: Expect,
    run: fn() -> Run,
}

fn emulator(config: EmulatorConfig) -> Emulator {
    Emulator::start(EmulatorConfig {
        seed: Some([13; 32]),
        ..config
    })
    .expect("emulator")
}

fn tunnel_to(target: SocketAddr) -> EmulatorConfig {
    EmulatorConfig {
        target: TargetConfig::Tunnel { forward_to: target },
        ..EmulatorConfig::default()
    }
}

/// The emulator's ticket (edited) as a private file.
fn ticket(emu: &Emulator, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let mut json = emu.ticket().to_json();
    edit(&mut json);
    let p = common::write_temp("ticket.json", &json.to_string());
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn listen_args<'a>(t: &'a str, runtime: &'a str) -> Vec<&'a str> {
    vec![
        "tunnel",
        "--ticket",
        t,
        "--listen",
        "127.0.0.1:0",
        "--runtime",
        runtime,
    ]
}

/// `tunnel --listen` up, one transfer, then `fault` (given the emulator); measured from the fault.
/// `after` runs after the fault (e.g. a second transfer) and may signal the process.
fn session_then(
    emu: Emulator,
    runtime: &str,
    edit: impl Fn(&mut serde_json::Value),
    fault: impl FnOnce(&Emulator),
    after: impl FnOnce(&Pam, SocketAddr, &mut Measured),
) -> Measured {
    let t = ticket(&emu, edit);
    let p = Pam::spawn(&listen_args(t.to_str().unwrap(), runtime), &[]);
    let mut m = Measured::default();
    let Some(addr) = p.ready(Duration::from_secs(30)) else {
        m.problems.push("the tunnel never came up".into());
        p.signal("KILL");
        return fill(m, p.finish(Instant::now()));
    };
    m.transfers.push(echo_transfer(addr, 1));
    let at = Instant::now();
    fault(&emu);
    after(&p, addr, &mut m);
    let f = p.finish(at);
    drop(emu);
    fill(m, f)
}

fn fill(mut m: Measured, f: Finished) -> Measured {
    m.code = f.code;
    m.secs = f.secs;
    m.hwm_kib = f.hwm_kib;
    m.stderr = f.stderr;
    m
}

/// A `tunnel --stdio` launch with `stdin` as its input, measured from the start.
fn stdio(emu: Emulator, runtime: &str, edit: impl Fn(&mut serde_json::Value)) -> Measured {
    let t = ticket(&emu, edit);
    let at = Instant::now();
    let mut p = Pam::spawn(
        &[
            "tunnel",
            "--stdio",
            "--ticket",
            t.to_str().unwrap(),
            "--runtime",
            runtime,
        ],
        &[],
    );
    // One byte and EOF: the connection is attempted, then ends.
    let mut input = p.child.stdin.take().unwrap();
    let _ = input.write_all(b"x");
    drop(input);
    let f = p.finish(at);
    drop(emu);
    fill(Measured::default(), f)
}

/// Start a `tunnel --listen`, wait `delay` into the launch (`before` has set the fault), send SIGINT.
fn sigint_after(emu: Emulator, runtime: &str, delay: Duration) -> Measured {
    let t = ticket(&emu, |_| {});
    let p = Pam::spawn(&listen_args(t.to_str().unwrap(), runtime), &[]);
    let mut m = Measured::default();
    if p.ready(delay).is_some() {
        m.problems
            .push("the tunnel came up although the fault should prevent it".into());
    }
    let at = Instant::now();
    p.signal("INT");
    let f = p.finish(at);
    drop(emu);
    fill(m, f)
}

fn graceful_end(p: &Pam) {
    p.signal("TERM");
}

fn cases() -> Vec<Case> {
    let s = Duration::from_secs;
    vec![
        Case {
            name: "gateway restart mid-session",
            fault: "Emulator::restart_gateway after a 1 MiB echo (every tube lost, same address): the path \
                    goes quiet, the client's ICE restart is refused (unknown conversation)",
            expect: Expect {
                code: 11,
                says: &["WebRTC session closed", "refused to restart ICE"],
                bound: s(20),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(tunnel_to(server(echo)));
                    let rt = rt.to_string();
                    session_then(emu, &rt, |_| {}, |e| e.restart_gateway(), |_, _, _| {})
                })
            },
        },
        Case {
            name: "UDP blackhole mid-session",
            fault: "Emulator::set_udp_blackhole for good after a 1 MiB echo (ICE restarts through the \
                    router, then the path-loss bound, PAM_LITE_PATH_LOSS_LIMIT_SEC=15)",
            expect: Expect {
                code: 11,
                says: &["WebRTC session closed", "did not come back within"],
                bound: s(PATH_LOSS_LIMIT_SECS + 10),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(tunnel_to(server(echo)));
                    session_then(emu, rt, |_| {}, |e| e.set_udp_blackhole(true), |_, _, _| {})
                })
            },
        },
        Case {
            name: "UDP blackhole for 8 s mid-session, then lifted",
            fault: "Emulator::set_udp_blackhole after a 1 MiB echo, lifted 8 s later (path lost at ~6 s, \
                    one ICE restart); a second 1 MiB echo, then SIGTERM",
            expect: Expect {
                code: 0,
                says: &["tunnel closed"],
                bound: s(PATH_LOSS_LIMIT_SECS + 10),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(tunnel_to(server(echo)));
                    session_then(
                        emu,
                        rt,
                        |_| {},
                        |e| {
                            e.set_udp_blackhole(true);
                            thread::sleep(Duration::from_secs(8));
                            e.set_udp_blackhole(false);
                        },
                        |p, addr, m| {
                            m.transfers.push(echo_transfer(addr, 3));
                            graceful_end(p);
                        },
                    )
                })
            },
        },
        Case {
            name: "router WebSocket lost after connect",
            fault: "ws_drop_after 2 s; a second 1 MiB echo after the drop, then SIGTERM",
            expect: Expect {
                code: 0,
                says: &["tunnel closed"],
                bound: s(10),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        ws_drop_after: Some(Duration::from_secs(2)),
                        ..tunnel_to(server(echo))
                    });
                    session_then(
                        emu,
                        rt,
                        |_| {},
                        |_| thread::sleep(Duration::from_millis(2500)),
                        |p, addr, m| {
                            m.transfers.push(echo_transfer(addr, 2));
                            graceful_end(p);
                        },
                    )
                })
            },
        },
        Case {
            name: "answer never arrives",
            fault: "answer_delay 1 h",
            expect: Expect {
                code: 8,
                says: &["timed out"],
                bound: s(CONNECT_TIMEOUT_SECS + 10),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        answer_delay: Duration::from_secs(3600),
                        ..tunnel_to(server(echo))
                    });
                    stdio(emu, rt, |_| {})
                })
            },
        },
        Case {
            name: "answer for another conversation",
            fault: "ws_wrong_conversation (every push names another conversation)",
            expect: Expect {
                code: 8,
                says: &["timed out"],
                bound: s(CONNECT_TIMEOUT_SECS + 10),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        ws_wrong_conversation: true,
                        ..tunnel_to(server(echo))
                    });
                    stdio(emu, rt, |_| {})
                })
            },
        },
        Case {
            name: "duplicate answers",
            fault: "ws_duplicate 3 (answer and candidates pushed 4 times each)",
            expect: Expect {
                code: 0,
                says: &["tunnel closed"],
                bound: s(10),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        ws_duplicate: 3,
                        ..tunnel_to(server(echo))
                    });
                    session_then(emu, rt, |_| {}, |_| {}, |p, _, _| graceful_end(p))
                })
            },
        },
        Case {
            name: "DTLS fingerprint mismatch in the answer",
            fault: "answer_bad_fingerprint",
            expect: Expect {
                code: 11,
                says: &["WebRTC session closed"],
                bound: s(CONNECT_TIMEOUT_SECS + 10),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        answer_bad_fingerprint: true,
                        ..tunnel_to(server(echo))
                    });
                    stdio(emu, rt, |_| {})
                })
            },
        },
        Case {
            name: "TLS certificate not trusted",
            fault: "tls, ticket without tls_ca_pem",
            expect: Expect {
                code: 4,
                says: &["router unreachable"],
                bound: s(15),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        tls: true,
                        ..tunnel_to(server(echo))
                    });
                    stdio(emu, rt, |t| {
                        t.as_object_mut().unwrap().remove("tls_ca_pem");
                    })
                })
            },
        },
        Case {
            name: "TLS certificate trusted (tls_ca_pem)",
            fault: "tls, ticket with the emulator's CA; 1 MiB echo, SIGTERM",
            expect: Expect {
                code: 0,
                says: &["tunnel closed"],
                bound: s(10),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        tls: true,
                        ..tunnel_to(server(echo))
                    });
                    session_then(emu, rt, |_| {}, |_| {}, |p, _, _| graceful_end(p))
                })
            },
        },
        Case {
            name: "TLS not trusted, verify_tls: false",
            fault: "tls, no tls_ca_pem, verify_tls false; 1 MiB echo, SIGTERM",
            expect: Expect {
                code: 0,
                says: &["NOT verified", "tunnel closed"],
                bound: s(10),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        tls: true,
                        ..tunnel_to(server(echo))
                    });
                    session_then(
                        emu,
                        rt,
                        |t| {
                            t.as_object_mut().unwrap().remove("tls_ca_pem");
                            t["verify_tls"] = false.into();
                        },
                        |_| {},
                        |p, _, _| graceful_end(p),
                    )
                })
            },
        },
        Case {
            name: "router 401",
            fault: "HTTP 401 on send_controller_message",
            expect: Expect {
                code: 5,
                says: &["session expired"],
                bound: s(10),
            },
            run: || Box::new(|rt| stdio(emulator(http_status(401)), rt, |_| {})),
        },
        Case {
            name: "router 403",
            fault: "HTTP 403 on send_controller_message",
            expect: Expect {
                code: 5,
                says: &["access denied"],
                bound: s(10),
            },
            run: || Box::new(|rt| stdio(emulator(http_status(403)), rt, |_| {})),
        },
        Case {
            name: "router body over the size limit",
            fault: "http_oversize 96 MiB on every successful response",
            expect: Expect {
                code: 4,
                says: &["router unreachable"],
                bound: s(15),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        http_oversize: Some(OVERSIZE),
                        ..tunnel_to(server(echo))
                    });
                    stdio(emu, rt, |_| {})
                })
            },
        },
        Case {
            name: "WebSocket message over the size limit",
            fault: "ws_oversize 96 MiB pushed when the WebSocket opens",
            expect: Expect {
                code: 9,
                says: &["router WebSocket failed", "Message too long"],
                bound: s(15),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        ws_oversize: Some(OVERSIZE),
                        ..tunnel_to(server(echo))
                    });
                    stdio(emu, rt, |_| {})
                })
            },
        },
        Case {
            name: "WebSocket flood",
            fault: "ws_flood 20000 messages for other conversations before the answer; 1 MiB echo",
            expect: Expect {
                code: 0,
                says: &["tunnel closed"],
                bound: s(10),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        ws_flood: 20_000,
                        ..tunnel_to(server(echo))
                    });
                    session_then(emu, rt, |_| {}, |_| {}, |p, _, _| graceful_end(p))
                })
            },
        },
        Case {
            name: "target refuses",
            fault: "gateway target: a closed port (tunnel --stdio)",
            expect: Expect {
                code: 12,
                says: &["could not open the connection to the target"],
                bound: s(15),
            },
            run: || Box::new(|rt| stdio(emulator(tunnel_to(dead_addr())), rt, |_| {})),
        },
        Case {
            name: "target resets",
            fault: "gateway target: accepts, then resets (tunnel --stdio)",
            expect: Expect {
                code: 0,
                says: &[],
                bound: s(15),
            },
            run: || Box::new(|rt| stdio(emulator(tunnel_to(server(resetter))), rt, |_| {})),
        },
        Case {
            name: "target stalls",
            fault: "gateway target: accepts, never reads or writes; 2 s, then SIGTERM",
            expect: Expect {
                code: 0,
                says: &["tunnel closed"],
                bound: s(10),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(tunnel_to(server(staller)));
                    let t = ticket(&emu, |_| {});
                    let p = Pam::spawn(&listen_args(t.to_str().unwrap(), rt), &[]);
                    let mut m = Measured::default();
                    let Some(addr) = p.ready(Duration::from_secs(30)) else {
                        m.problems.push("the tunnel never came up".into());
                        p.signal("KILL");
                        return fill(m, p.finish(Instant::now()));
                    };
                    let mut c = TcpStream::connect(addr).unwrap();
                    let _ = c.write_all(&payload(64 * 1024, 5));
                    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut b = [0u8; 1];
                    match c.read(&mut b) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        other => m
                            .problems
                            .push(format!("a stalled target produced {other:?}")),
                    }
                    let at = Instant::now();
                    graceful_end(&p);
                    let f = p.finish(at);
                    drop(emu);
                    fill(m, f)
                })
            },
        },
        Case {
            name: "Ctrl-C before the answer",
            fault: "answer_delay 1 h; SIGINT 1.5 s into the launch",
            expect: Expect {
                code: 0,
                says: &[],
                bound: s(5),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(EmulatorConfig {
                        answer_delay: Duration::from_secs(3600),
                        ..tunnel_to(server(echo))
                    });
                    sigint_after(emu, rt, Duration::from_millis(1500))
                })
            },
        },
        Case {
            name: "Ctrl-C while connecting",
            fault: "UDP blackholed from the start (ICE never connects); SIGINT 2 s into the launch",
            expect: Expect {
                code: 0,
                says: &[],
                bound: s(5),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(tunnel_to(server(echo)));
                    emu.set_udp_blackhole(true);
                    sigint_after(emu, rt, Duration::from_secs(2))
                })
            },
        },
        Case {
            name: "Ctrl-C with the session up",
            fault: "SIGINT after a 1 MiB echo",
            expect: Expect {
                code: 0,
                says: &["SIGINT", "tunnel closed"],
                bound: s(5),
            },
            run: || {
                Box::new(|rt| {
                    let emu = emulator(tunnel_to(server(echo)));
                    session_then(emu, rt, |_| {}, |_| {}, |p, _, _| p.signal("INT"))
                })
            },
        },
    ]
}

fn http_status(status: u16) -> EmulatorConfig {
    EmulatorConfig {
        http_faults: vec![HttpFault {
            path_prefix: "/api/user/send_controller_message".into(),
            status,
            times: 10,
        }],
        ..tunnel_to(dead_addr())
    }
}

// ------------------------------------------------------------------------------------------------------
// The matrix

struct Row {
    case: &'static str,
    fault: &'static str,
    runtime: &'static str,
    expect_code: i32,
    bound: Duration,
    m: Measured,
    failures: Vec<String>,
}

fn judge(case: &Case, m: &Measured) -> Vec<String> {
    let mut f = m.problems.clone();
    if m.code != Some(case.expect.code) {
        f.push(format!("exit {:?}, expected {}", m.code, case.expect.code));
    }
    for want in case.expect.says {
        if !m.stderr.contains(want) {
            f.push(format!("stderr lacks {want:?}"));
        }
    }
    if m.secs >= case.expect.bound.as_secs_f64() {
        f.push(format!(
            "took {:.1} s, bound {} s",
            m.secs,
            case.expect.bound.as_secs()
        ));
    }
    if m.hwm_kib == 0 || m.hwm_kib > MEMORY_CEILING_KIB {
        f.push(format!(
            "peak memory {} KiB (ceiling {MEMORY_CEILING_KIB})",
            m.hwm_kib
        ));
    }
    for t in &m.transfers {
        if let Err(e) = t {
            f.push(e.clone());
        }
    }
    // A failure's last line is one `pam-lite: …` line (cli/EXIT_CODES.md).
    if !matches!(m.code, Some(0) | None) {
        let last = m.stderr.lines().last().unwrap_or("");
        if !last.starts_with("pam-lite: ") {
            f.push(format!("last stderr line is not pam-lite's: {last:?}"));
        }
    }
    f
}

fn last_line(stderr: &str) -> String {
    let l = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("pam-lite: "))
        .unwrap_or("");
    let l: String = l.chars().take(110).collect();
    l.replace('|', "\\|")
}

fn markdown(rows: &[Row], wall: Duration) -> String {
    let passed = rows.iter().filter(|r| r.failures.is_empty()).count();
    let mut md = format!(
        "# Reliability: the fault matrix\n\n\
         Produced by `UPDATE_RELIABILITY=1 cargo test -p pam-lite --test fault_matrix -- --nocapture` \
         (cli/tests/fault_matrix.rs; debug build, {PARALLEL} cases in parallel on this machine's {} cores, \
         {:.0} s wall). Do not edit by hand: run it again.\n\n\
         Every case runs the real `pam-lite` binary against the real emulator (HTTP, WebSocket, UDP with \
         ICE/DTLS/SCTP, TLS where named) on both runtimes. *Time* is measured from the fault (from the \
         start where the fault is there from the start) to the process's exit; *peak* is the process's \
         `VmHWM`, sampled every 10 ms until it exits (ceiling {} MiB; the oversized inputs are {} MiB, so \
         staying under the ceiling proves they were not buffered). *SHA-256* is the first 4 bytes of the \
         hash of each {} KiB echo that completed (sent = received). Launches run with \
         `PAM_WEBRTC_CONNECT_TIMEOUT_SEC={CONNECT_TIMEOUT_SECS}` and one offer attempt.\n\n\
         **{passed} of {} runs pass** ({} cases × 2 runtimes).\n",
        thread::available_parallelism().map_or(0, |n| n.get()),
        wall.as_secs_f64(),
        MEMORY_CEILING_KIB / 1024,
        OVERSIZE >> 20,
        TRANSFER >> 10,
        rows.len(),
        rows.len() / 2,
    );
    md.push_str(
        "\nReading the table:\n\n\
         * A path that goes quiet for 6 s is lost, not over (path recovery, issue 14): the client regathers \
         and restarts ICE through the router. A blackout that is lifted (8 s here) costs nothing: the second echo \
         completes and the session ends normally. One that stays ends with 11 at the path-loss bound (15 s in these \
         runs, `PAM_LITE_PATH_LOSS_LIMIT_SEC`; 60 s by default). A restarted gateway no longer knows the \
         conversation and refuses the restart, which ends the session at once (~8 s: 6 s of quiet, 2 s to the first \
         restart) instead of at the bound.\n\
         * A DTLS fingerprint that is not the gateway certificate's is refused during the handshake \
         (str0m: `remote fingerprint no match`), well before the connect timeout.\n\
         * Oversized input is refused at its limit without being buffered: HTTP bodies at the driver's \
         4 MiB body limit (exit 4), WebSocket messages at the 1 MiB frame limit (exit 9).\n\
         * A target that resets after accepting is, for the emulated gateway, a closed connection \
         (reason Normal): `tunnel --stdio` ends with EOF and exit 0.\n\
         * SIGINT before the tunnel is up ends the launch at once with 0 (nothing was open), as with the \
         session up.\n\
         * A local side that stops reading (a paused peer, a stdout nobody reads, a connection stalled past \
         the 60 s limit while another one waits behind it) is not a row here: \
         `cli/tests/receive_backpressure.rs` proves those on both runtimes, and ARCHITECTURE.md (\"Flow \
         control\") records what happens to the other connections and the measured memory ceilings.\n\n\
         | case | fault | runtime | expected exit | exit | time s (bound) | peak MiB | SHA-256 | last line | result |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let hashes = if r.m.transfers.is_empty() {
            "—".to_string()
        } else {
            r.m.transfers
                .iter()
                .map(|t| match t {
                    Ok(h) => format!("{h} ✓"),
                    Err(_) => "✗".into(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} ({}) | {:.1} | {} | {} | {} |\n",
            r.case,
            r.fault,
            r.runtime,
            r.expect_code,
            r.m.code.map_or("killed".into(), |c| c.to_string()),
            r.m.secs,
            r.bound.as_secs(),
            r.m.hwm_kib as f64 / 1024.0,
            hashes,
            last_line(&r.m.stderr),
            if r.failures.is_empty() {
                "pass".to_string()
            } else {
                format!("**FAIL**: {}", r.failures.join("; ").replace('|', "\\|"))
            }
        ));
    }
    md
}

#[test]
fn fault_matrix_both_runtimes() {
    let wall = Instant::now();
    let all = cases();
    let jobs: Vec<(usize, &'static str)> = (0..all.len())
        .flat_map(|i| [(i, "smol"), (i, "blocking")])
        .collect();
    let queue = Arc::new(Mutex::new(jobs.into_iter()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let runs: Vec<fn() -> Run> = all.iter().map(|c| c.run).collect();
    let runs = Arc::new(runs);
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (queue, results, runs) = (queue.clone(), results.clone(), runs.clone());
            thread::spawn(move || loop {
                let Some((i, rt)) = queue.lock().unwrap().next() else {
                    return;
                };
                let m = (runs[i])()(rt);
                results.lock().unwrap().push((i, rt, m));
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a case panicked");
    }
    let mut done = std::mem::take(&mut *results.lock().unwrap());
    done.sort_by_key(|(i, rt, _)| (*i, *rt != "smol"));
    let rows: Vec<Row> = done
        .into_iter()
        .map(|(i, rt, m)| {
            let case = &all[i];
            Row {
                case: case.name,
                fault: case.fault,
                runtime: rt,
                expect_code: case.expect.code,
                bound: case.expect.bound,
                failures: judge(case, &m),
                m,
            }
        })
        .collect();
    let md = markdown(&rows, wall.elapsed());
    println!("{md}");
    let out = if std::env::var_os("UPDATE_RELIABILITY").is_some() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/RELIABILITY.md")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("RELIABILITY.md")
    };
    std::fs::write(&out, &md).expect("write the matrix");
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| {
            format!(
                "{} [{}]: {}\n--- stderr:\n{}",
                r.case,
                r.runtime,
                r.failures.join("; "),
                r.m.stderr
            )
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
