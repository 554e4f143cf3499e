//! A pair of Keeper tubes (`keeper-pam-webrtc-rs` 2.2.9, the library Commander and the Keeper Gateway
//! use): client role ↔ gateway role, each a `tests/interop/keeper_peer.py` process, with this benchmark
//! relaying their signalling. Throughput goes through the client tube's TCP listener to a sink behind
//! the gateway tube, the same path as pam-lite's rows.
//!
//! Keeper's tube never gathers a loopback candidate, so the pair only runs inside the interop suite's
//! private network namespace (`tests/interop/netns_run.sh`, address 198.18.0.1 on its own `lo`); `main`
//! re-runs the whole benchmark there so every system shares the same loopback.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::procs::{Memory, Proc};
use crate::targets::{self, Transfer};

/// The interop suite's files, relative to the workspace root.
pub const VENV_PYTHON: &str = "tests/interop/.venv/bin/python";
pub const PEER_SCRIPT: &str = "tests/interop/keeper_peer.py";
pub const NETNS_RUN: &str = "tests/interop/netns_run.sh";
pub const SETUP: &str = "tests/interop/setup.sh";
/// How long building the venv may take (pip downloads two wheels and their dependencies).
const SETUP_LIMIT: Duration = Duration::from_secs(600);

/// What the pair measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PairResult {
    /// From starting the two peers to the client tube reporting `ready` (no router: informational).
    pub ready_ms: Option<f64>,
    pub single: Option<TransferResult>,
    pub parallel: Option<TransferResult>,
    pub client_idle: Option<Memory>,
    pub client_peak: Option<Memory>,
    pub gateway_peak: Option<Memory>,
    pub errors: Vec<String>,
}

/// A transfer, serializable.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct TransferResult {
    pub bytes: u64,
    pub secs: f64,
    pub complete: bool,
}

impl From<Transfer> for TransferResult {
    fn from(t: Transfer) -> Self {
        TransferResult {
            bytes: t.bytes,
            secs: t.elapsed.as_secs_f64(),
            complete: t.complete,
        }
    }
}

impl TransferResult {
    pub fn mb_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 / 1e6 / self.secs
        } else {
            0.0
        }
    }
}

/// The venv's python, building the venv with the interop suite's `setup.sh` when allowed.
pub fn python(root: &Path, allow_setup: bool) -> Result<PathBuf, String> {
    let python = root.join(VENV_PYTHON);
    if python.is_file() {
        return Ok(python);
    }
    if !allow_setup {
        return Err(format!(
            "no interop venv at {} (run {SETUP}, or drop --no-setup)",
            python.display()
        ));
    }
    eprintln!("pam-lite-bench: creating the interop venv ({SETUP}: keeper-pam-webrtc-rs==2.2.9, keepercommander==18.1.8)");
    let mut p = Proc::spawn({
        let mut c = Command::new(root.join(SETUP));
        c.current_dir(root);
        c
    })?;
    match p.finish(Instant::now() + SETUP_LIMIT) {
        Some(0) if python.is_file() => Ok(python),
        code => Err(format!(
            "{SETUP} failed (exit {code:?}): {}",
            p.stderr_tail()
        )),
    }
}

/// Which peer a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Gateway,
}

/// The two peers' stdout lines in one channel.
fn merge(client: Receiver<String>, gateway: Receiver<String>) -> Receiver<(Side, Value)> {
    let (tx, rx) = mpsc::channel();
    for (side, lines) in [(Side::Client, client), (Side::Gateway, gateway)] {
        let tx = tx.clone();
        let _ = thread::Builder::new()
            .name("bench-keeper-lines".into())
            .spawn(move || {
                for line in lines {
                    let v = serde_json::from_str(&line)
                        .unwrap_or_else(|_| json!({"type": "unparsed", "line": line}));
                    if tx.send((side, v)).is_err() {
                        return;
                    }
                }
            });
    }
    rx
}

fn peer(python: &Path, script: &Path, args: &[&str], limit: Duration) -> Result<Proc, String> {
    let mut c = Command::new(python);
    c.arg(script)
        .args(args)
        .args(["--deadline", &limit.as_secs().max(10).to_string()])
        .args(["--log-level", "40"]);
    Proc::spawn(c)
}

/// The signalling relay: forwards offer, answer and candidates (holding candidates until the other side
/// has the description they belong to) until the client tube is ready.
struct Relay {
    lines: Receiver<(Side, Value)>,
    to_gateway: VecDeque<Value>,
    to_client: VecDeque<Value>,
    gateway_has_offer: bool,
    client_has_answer: bool,
    listen: Option<SocketAddr>,
    errors: Vec<String>,
}

impl Relay {
    fn step(
        &mut self,
        client: &mut Proc,
        gateway: &mut Proc,
        deadline: Instant,
    ) -> Result<Option<Side>, String> {
        let (side, v) = match self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(x) => x,
            Err(RecvTimeoutError::Timeout) => return Err("timed out".into()),
            Err(RecvTimeoutError::Disconnected) => return Err("both peers exited".into()),
        };
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        match (side, kind.as_str()) {
            (Side::Client, "offer") => {
                self.listen = v["listen"].as_str().and_then(|s| s.parse().ok());
                gateway.send_line(&json!({"type": "offer", "sdp": v["sdp"]}).to_string())?;
                self.gateway_has_offer = true;
            }
            (Side::Gateway, "answer") => {
                client.send_line(&json!({"type": "answer", "sdp": v["sdp"]}).to_string())?;
                self.client_has_answer = true;
            }
            (Side::Client, "candidate") => self
                .to_gateway
                .push_back(json!({"type": "candidate", "candidate": v["candidate"]})),
            (Side::Gateway, "candidate") => self
                .to_client
                .push_back(json!({"type": "candidate", "candidate": v["candidate"]})),
            (_, "ready") => return Ok(Some(side)),
            (_, "error") => self.errors.push(format!("{side:?}: {}", v["error"])),
            _ => {}
        }
        if self.gateway_has_offer {
            while let Some(c) = self.to_gateway.pop_front() {
                gateway.send_line(&c.to_string())?;
            }
        }
        if self.client_has_answer {
            while let Some(c) = self.to_client.pop_front() {
                client.send_line(&c.to_string())?;
            }
        }
        Ok(None)
    }
}

/// Run the pair (inside the namespace) and measure it; failures end up in `errors`.
pub fn run_inside(
    python: &Path,
    script: &Path,
    bytes: u64,
    conns: usize,
    limit: Duration,
) -> PairResult {
    let mut out = PairResult::default();
    if let Err(e) = pair(python, script, bytes, conns, limit, &mut out) {
        out.errors.push(e);
    }
    out
}

fn pair(
    python: &Path,
    script: &Path,
    bytes: u64,
    conns: usize,
    limit: Duration,
    out: &mut PairResult,
) -> Result<(), String> {
    let start = Instant::now();
    let end = start + limit;
    let sink = targets::sink_server(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| format!("sink: {e}"))?;
    let port = sink.addr().port().to_string();
    let mut gateway = peer(
        python,
        script,
        &[
            "--role",
            "gateway",
            "--target-host",
            "127.0.0.1",
            "--target-port",
            &port,
        ],
        limit,
    )?;
    let mut client = peer(
        python,
        script,
        &["--role", "client", "--listen", "127.0.0.1:0"],
        limit,
    )?;
    let (Some(c_lines), Some(g_lines)) = (client.take_stdout(), gateway.take_stdout()) else {
        return Err("no stdout from the peers".into());
    };
    let mut relay = Relay {
        lines: merge(c_lines, g_lines),
        to_gateway: VecDeque::new(),
        to_client: VecDeque::new(),
        gateway_has_offer: false,
        client_has_answer: false,
        listen: None,
        errors: Vec::new(),
    };
    let ready_deadline = (start + Duration::from_secs(60)).min(end);
    loop {
        match relay.step(&mut client, &mut gateway, ready_deadline) {
            Ok(Some(Side::Client)) => break,
            Ok(_) => {}
            Err(e) => {
                out.errors.append(&mut relay.errors);
                return Err(format!(
                    "the Keeper pair did not get ready: {e}; client stderr: {}; gateway stderr: {}",
                    client.stderr_tail(),
                    gateway.stderr_tail()
                ));
            }
        }
    }
    out.ready_ms = Some(start.elapsed().as_secs_f64() * 1000.0);
    let listen = relay
        .listen
        .ok_or("the client tube announced no listen address")?;
    // Keep relaying late signals (and draining the pipes) in the background.
    let _ = thread::Builder::new()
        .name("bench-keeper-drain".into())
        .spawn(move || for _ in relay.lines.iter() {});
    thread::sleep(Duration::from_secs(1));
    out.client_idle = client.memory();

    // Half the remaining budget for each transfer.
    let each = end.saturating_duration_since(Instant::now()) / 2;
    match targets::push(listen, bytes, Instant::now() + each) {
        Ok(t) => out.single = Some(t.into()),
        Err(e) => out.errors.push(format!("single transfer: {e}")),
    }
    match targets::push_parallel(listen, bytes, conns, Instant::now() + each) {
        Ok(t) => out.parallel = Some(t.into()),
        Err(e) => out.errors.push(format!("parallel transfer: {e}")),
    }
    out.client_peak = client.memory();
    out.gateway_peak = gateway.memory();
    for p in [&mut client, &mut gateway] {
        let _ = p.send_line(&json!({"type": "close"}).to_string());
        p.close_stdin();
    }
    let close_by = Instant::now() + Duration::from_secs(5);
    client.finish(close_by);
    gateway.finish(close_by);
    drop(sink);
    Ok(())
}
