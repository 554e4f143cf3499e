//! The real Commander 18.1.8 in the time-to-ready rows: `bench/py/commander_tunnel.py` workers (warm
//! Python processes of the interop venv) that run Commander's own `start_rust_tunnel` against the
//! emulator; this side times launch → first byte echoed through Commander's local listener.
//!
//! Keeper's tube needs a non-loopback address, so this only runs inside the private network namespace
//! (`KP_TUBE_NETNS` set by `tests/interop/netns_run.sh`; `main` re-runs the benchmark there).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_emulator::DemoTicket;
use serde_json::{json, Value};

use crate::procs::{Memory, Proc};

pub const SCRIPT: &str = "bench/py/commander_tunnel.py";
/// Commander's environment knobs that would change its schedule; removed so its defaults apply.
const SCRUBBED_ENV: &[&str] = &[
    "TUNNEL_START_RETRIES",
    "TUNNEL_RETRY_DELAY",
    "KROUTER_URL",
    "KRELAY_URL",
    "VERIFY_SSL",
];
/// Importing Commander takes about a second; a cold interpreter on a busy machine gets this long.
const HELLO_LIMIT: Duration = Duration::from_secs(60);
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

struct Worker {
    proc: Proc,
    router_url: String,
}

/// Warm Commander workers, one per launch in flight, reused across launches on the same emulator.
#[derive(Clone)]
pub struct Harness {
    python: PathBuf,
    script: PathBuf,
    idle: Arc<Mutex<Vec<Worker>>>,
}

impl Harness {
    /// A harness if the venv python exists and this process runs inside the private namespace.
    pub fn new(root: &Path, python: Result<&Path, &String>) -> Result<Harness, String> {
        let python = python.map_err(|e| e.clone())?;
        if std::env::var_os("KP_TUBE_NETNS").is_none() {
            return Err("Keeper's tube needs the private network namespace (tests/interop/netns_run.sh), which is not available here".into());
        }
        let script = root.join(SCRIPT);
        if !script.is_file() {
            return Err(format!("{} is missing", script.display()));
        }
        Ok(Harness {
            python: python.to_path_buf(),
            script,
            idle: Arc::default(),
        })
    }

    fn spawn(&self, ticket: &DemoTicket, target: SocketAddr) -> Result<Worker, String> {
        let cfg = json!({
            "router_url": ticket.router_url,
            "session_token_b64url": ticket.session_token_b64url,
            "server_key_id": ticket.server_key_id,
            "server_public_key_b64url": ticket.server_public_key_b64url,
            "gateway_uid": ticket.gateway_uid,
            "record_uid": ticket.record_uid,
            "traffic_seed_b64": ticket.traffic_seed_b64,
            "target_host": target.ip().to_string(),
            "target_port": target.port(),
        });
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script).arg(cfg.to_string());
        for k in SCRUBBED_ENV
            .iter()
            .chain(pam_lite_core::profile::env::ALL.iter())
        {
            cmd.env_remove(k);
        }
        let mut proc = Proc::spawn(cmd)?;
        let deadline = Instant::now() + HELLO_LIMIT;
        loop {
            match proc.line(deadline) {
                Some(l) if parse(&l)["type"] == "hello" => break,
                Some(_) => {}
                None => {
                    return Err(format!(
                        "the Commander worker did not start: {}",
                        proc.stderr_tail()
                    ))
                }
            }
        }
        Ok(Worker {
            proc,
            router_url: ticket.router_url.clone(),
        })
    }

    fn take(&self, ticket: &DemoTicket, target: SocketAddr) -> Result<Worker, String> {
        let found = self.idle.lock().ok().and_then(|mut idle| {
            // Workers of an earlier emulator are of no use any more.
            idle.retain(|w| w.router_url == ticket.router_url);
            idle.pop()
        });
        match found {
            Some(w) => Ok(w),
            None => self.spawn(ticket, target),
        }
    }

    /// Stop every idle worker (their emulator is gone).
    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// One launch: Commander's `start_rust_tunnel`, then connect to its listener and time the echo.
    pub fn measure_launch(
        &self,
        ticket: &DemoTicket,
        limit: Duration,
    ) -> Result<CommanderLaunch, String> {
        let mut w = self.take(ticket, settings_target())?;
        let t0 = Instant::now();
        let deadline = t0 + limit;
        let result = launch_and_echo(&mut w.proc, t0, deadline);
        // Close the tunnel; a worker that does not confirm is dropped (killed), not reused.
        let closed = w
            .proc
            .send_line(&json!({"type": "close"}).to_string())
            .is_ok()
            && {
                let by = Instant::now() + CLOSE_LIMIT;
                loop {
                    match w.proc.line(by) {
                        Some(l) if parse(&l)["type"] == "closed" => break true,
                        Some(_) => {}
                        None => break false,
                    }
                }
            };
        if closed {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(w);
            }
        }
        result
    }

    /// Memory of one idle worker (Commander + Keeper's tube loaded, no tunnel open), if any.
    pub fn idle_memory(&self) -> Option<Memory> {
        self.idle
            .lock()
            .ok()
            .and_then(|idle| idle.first().and_then(|w| w.proc.memory()))
    }
}

/// What the benchmark can see of one Commander launch from outside: Commander's tunnel path
/// (`start_rust_tunnel`) has no `PamConnectTiming` checkpoints of its own (only `pam launch` has them).
#[derive(Debug, Clone, Copy)]
pub struct CommanderLaunch {
    /// Launch start → `start_rust_tunnel` returned (its `started` line arrived).
    pub returned: Duration,
    /// Launch start → first byte echoed through Commander's listener.
    pub first_echo: Duration,
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or(Value::Null)
}

/// Commander's `target_host`/`target_port` settings: informational here, because the emulator's gateway
/// connects every tunneled connection to its own configured target (the benchmark's echo server).
fn settings_target() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7))
}

fn launch_and_echo(
    p: &mut Proc,
    t0: Instant,
    deadline: Instant,
) -> Result<CommanderLaunch, String> {
    p.send_line(&json!({"type": "launch", "trickle": true}).to_string())?;
    let (started, returned) = loop {
        match p.line(deadline) {
            Some(l) => {
                let v = parse(&l);
                if v["type"] == "started" {
                    break (v, Instant::now());
                }
            }
            None => {
                return Err(format!(
                    "Commander did not return from start_rust_tunnel in time: {}",
                    p.stderr_tail()
                ))
            }
        }
    };
    if started["ok"] != true {
        return Err(format!("Commander: {}", started["error"]));
    }
    let listen: SocketAddr = started["listen"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or("Commander reported no listen address")?;
    // Connect at once and retry while Keeper's listener refuses or drops connections before its
    // channel is up (a script would do the same).
    let mut last_error = String::from("none");
    while Instant::now() < deadline {
        match echo_once(listen, deadline) {
            Ok(at) => {
                return Ok(CommanderLaunch {
                    returned: returned.saturating_duration_since(t0),
                    first_echo: at.saturating_duration_since(t0),
                })
            }
            Err(e) => {
                last_error = e;
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
    Err(format!(
        "no echo through Commander's tunnel in time (last: {last_error})"
    ))
}

fn echo_once(addr: SocketAddr, deadline: Instant) -> Result<Instant, String> {
    let budget = deadline.saturating_duration_since(Instant::now());
    let mut s = TcpStream::connect_timeout(&addr, budget.max(Duration::from_millis(1)))
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    s.write_all(b"!").map_err(|e| format!("write: {e}"))?;
    let budget = deadline.saturating_duration_since(Instant::now());
    s.set_read_timeout(Some(budget.max(Duration::from_millis(1))))
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
    Ok(Instant::now())
}
