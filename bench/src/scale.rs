//! Item 5: N concurrent launches in one smol process.
//!
//! The launches run in a child process (`pam-lite-bench scale-child`), so its memory is the clients'
//! alone (the emulator, with its gateway holding the other end of every tube, stays in the parent). Every
//! launch is a node task on smol's global executor plus a task that pumps its outputs through the async
//! forwarder (`dispatch_async`); a third task per launch connects to the tunnel listener at once and
//! times the first echoed byte, as item 1 does.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pam_lite_core::client::Client;
use pam_lite_core::profile::Profile;
use pam_lite_core::{Command as NodeCommand, Input, Output};
use pam_lite_emulator::DemoTicket;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use smol::future::FutureExt as _;
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::launch::{client_config, seed};
use crate::procs::{self, Proc};
use crate::stats::{self, Summary};

/// What one N measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScaleResult {
    pub n: usize,
    pub ready_ok: usize,
    pub echo_ok: usize,
    pub tube_ready: Option<Summary>,
    pub first_echo: Option<Summary>,
    /// Wall time from the first launch's start to the last echo.
    pub wall_ms: f64,
    pub rss_before_kib: u64,
    /// Resident memory with every tunnel open and idle.
    pub rss_open_kib: u64,
    pub hwm_kib: u64,
    /// `(rss_open − rss_before) / ready tunnels`.
    pub kib_per_tunnel: Option<f64>,
    /// CPU time (user + system, all threads) the process spent from the first launch to the last echo,
    /// per launch.
    pub cpu_ms_per_launch: Option<f64>,
    pub first_error: Option<String>,
}

/// The ticket JSON (`DemoTicket::to_json`) back into a [`DemoTicket`].
pub fn ticket_from_json(v: &Value) -> Option<DemoTicket> {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    Some(DemoTicket {
        router_url: s("/router_url")?,
        server_key_id: u32::try_from(v.pointer("/auth/server_key_id")?.as_u64()?).ok()?,
        server_public_key_b64url: s("/auth/server_public_key_b64url")?,
        session_token_b64url: s("/auth/session_token_b64url")?,
        gateway_uid: s("/gateway_uid")?,
        record_uid: s("/record_uid")?,
        traffic_seed_b64: s("/traffic_encryption_seed_b64")?,
        protocol: s("/protocol")?,
        ca_pem: s("/tls_ca_pem"),
        relay_host: None,
    })
}

/// Run `scale-child` for `n` launches against the emulator whose ticket is in `ticket_path`.
pub fn run(ticket_path: &Path, n: usize, limit: Duration) -> Result<ScaleResult, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("scale-child")
        .arg("--ticket")
        .arg(ticket_path)
        .args(["--n", &n.to_string()])
        .args(["--limit-secs", &limit.as_secs().to_string()])
        .env_remove("SMOL_THREADS");
    let mut p = Proc::spawn(cmd)?;
    let deadline = Instant::now() + limit + Duration::from_secs(20);
    while let Some(line) = p.line(deadline) {
        if let Some(rest) = line.strip_prefix("RESULT ") {
            let r = serde_json::from_str(rest).map_err(|e| format!("unreadable result: {e}"))?;
            p.finish(Instant::now() + Duration::from_secs(10));
            return Ok(r);
        }
    }
    p.finish(Instant::now());
    Err(format!("scale-child gave no result: {}", p.stderr_tail()))
}

/// Per-launch timings, as offsets from that launch's own start.
struct One {
    ready: Option<Duration>,
    echo: Option<Duration>,
    error: Option<String>,
}

/// `pam-lite-bench scale-child`: `n` launches at once on smol's global executor.
pub fn run_child(ticket: &DemoTicket, n: usize, limit: Duration) -> ScaleResult {
    let mut result = ScaleResult {
        n,
        ..ScaleResult::default()
    };
    // Warm the executor and the allocator before the baseline.
    smol::block_on(smol::spawn(async {}));
    let before = procs::memory("self").unwrap_or_default();
    result.rss_before_kib = before.rss_kib;
    let cpu_before = procs::cpu_time("self");
    let start = Instant::now();
    let deadline = start + limit;
    let ticket = Arc::new(ticket.clone());
    let (outcomes, closers) = smol::block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|_| smol::spawn(one_launch(ticket.clone(), deadline)))
            .collect();
        let mut outcomes = Vec::with_capacity(n);
        let mut closers = Vec::with_capacity(n);
        for t in tasks {
            let (one, closer) = t.await;
            outcomes.push(one);
            closers.extend(closer);
        }
        (outcomes, closers)
    });
    result.wall_ms = start.elapsed().as_secs_f64() * 1000.0;
    if let (Some(a), Some(b)) = (cpu_before, procs::cpu_time("self")) {
        result.cpu_ms_per_launch =
            Some(b.saturating_sub(a).as_secs_f64() * 1000.0 / n.max(1) as f64);
    }
    // Every tunnel that came up is still open (its closer holds it): this is the memory of N tunnels.
    std::thread::sleep(Duration::from_millis(500));
    let open = procs::memory("self").unwrap_or_default();
    result.rss_open_kib = open.rss_kib;
    result.hwm_kib = open.hwm_kib;
    let ready: Vec<Duration> = outcomes.iter().filter_map(|o| o.ready).collect();
    let echo: Vec<Duration> = outcomes.iter().filter_map(|o| o.echo).collect();
    result.ready_ok = ready.len();
    result.echo_ok = echo.len();
    result.tube_ready = stats::summarize(&ready);
    result.first_echo = stats::summarize(&echo);
    result.first_error = outcomes.iter().find_map(|o| o.error.clone());
    if !ready.is_empty() {
        result.kib_per_tunnel =
            Some(open.rss_kib.saturating_sub(before.rss_kib) as f64 / ready.len() as f64);
    }
    // Close everything (bounded).
    smol::block_on(async {
        let close_by = Timeout::at(Instant::now() + Duration::from_secs(10));
        let all = async {
            for c in closers {
                c.await;
            }
        };
        all.or(close_by.wait()).await;
    });
    result
}

struct Timeout(Instant);

impl Timeout {
    fn at(t: Instant) -> Self {
        Timeout(t)
    }
    async fn wait(self) {
        smol::Timer::at(self.0).await;
    }
}

type Closer = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// One launch: returns its timings and, if it came up, a future that closes it.
async fn one_launch(ticket: Arc<DemoTicket>, deadline: Instant) -> (One, Option<Closer>) {
    let fail = |e: String| {
        (
            One {
                ready: None,
                echo: None,
                error: Some(e),
            },
            None,
        )
    };
    let listener = match TcpListener::bind(("127.0.0.1", 0)) {
        Ok(l) => l,
        Err(e) => return fail(format!("listen: {e}")),
    };
    let Ok(listen) = listener.local_addr() else {
        return fail("listener address".into());
    };
    let cfg = match client_config(&ticket, Profile::fast()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let started = Instant::now();
    let client = match Client::new(cfg, seed(), started) {
        Ok(c) => c,
        Err(e) => return fail(format!("client: {e}")),
    };
    let handle = match pam_lite_smol::spawn(client, pam_lite_smol::DriverConfig::default()) {
        Ok(h) => h,
        Err(e) => return fail(format!("driver: {e}")),
    };
    let inputs = handle.sender();
    let (ready_tx, ready_rx) = smol::channel::bounded::<Result<Instant, String>>(1);
    // The pump: single consumer of the node's outputs, for the launch's whole life.
    let pump = smol::spawn(async move {
        let mut listener = Some(listener);
        let mut forwarder: Option<pam_lite_smol::forward::Forwarder> = None;
        while let Some(out) = handle.recv_async().await {
            let out = match &forwarder {
                Some(f) => match f.dispatch_async(out).await {
                    Some(rest) => rest,
                    None => continue,
                },
                None => out,
            };
            match out {
                Output::TubeReady => {
                    let at = Instant::now();
                    if let Some(l) = listener.take() {
                        match pam_lite_smol::forward::serve_tunnel(l, &handle) {
                            Ok(f) => forwarder = Some(f),
                            Err(e) => {
                                let _ = ready_tx.try_send(Err(format!("serve_tunnel: {e}")));
                            }
                        }
                    }
                    let _ = ready_tx.try_send(Ok(at));
                }
                Output::Finished(Err(e)) => {
                    let _ = ready_tx.try_send(Err(e.to_string()));
                }
                _ => {}
            }
        }
        drop(forwarder);
    });
    // The probe: connect now, one byte, its echo.
    let probe = async {
        let mut s = smol::net::TcpStream::connect(listen)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"!").await.map_err(|e| format!("write: {e}"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .map_err(|e| format!("echo: {e}"))?;
        Ok::<_, String>((s, Instant::now()))
    }
    .or(async {
        smol::Timer::at(deadline).await;
        Err("deadline".to_string())
    });
    let echoed = probe.await;
    let ready = match ready_rx.try_recv() {
        Ok(Ok(at)) => Some(at.saturating_duration_since(started)),
        Ok(Err(e)) => return finish(fail(e), inputs, pump),
        Err(_) => None,
    };
    let (stream, echo) = match echoed {
        Ok((s, at)) => (Some(s), Some(at.saturating_duration_since(started))),
        Err(e) => {
            let one = One {
                ready,
                echo: None,
                error: Some(e),
            };
            return finish((one, None), inputs, pump);
        }
    };
    let one = One {
        ready,
        echo,
        error: None,
    };
    // Hold the tunnel (and its one connection) open until the closer runs.
    let closer: Closer = Box::pin(async move {
        drop(stream);
        let _ = inputs.input_async(Input::Command(NodeCommand::Close)).await;
        pump.or(async {
            smol::Timer::after(Duration::from_secs(5)).await;
        })
        .await;
    });
    (one, Some(closer))
}

/// A failed launch: close it now and return no closer.
fn finish(
    (one, _): (One, Option<Closer>),
    inputs: pam_lite_smol::InputSender,
    pump: smol::Task<()>,
) -> (One, Option<Closer>) {
    let closer: Closer = Box::pin(async move {
        let _ = inputs.input_async(Input::Command(NodeCommand::Close)).await;
        pump.or(async {
            smol::Timer::after(Duration::from_secs(5)).await;
        })
        .await;
    });
    (one, Some(closer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_json_round_trips() {
        let t = DemoTicket {
            router_url: "http://127.0.0.1:1".into(),
            server_key_id: 7,
            server_public_key_b64url: "AAAA".into(),
            session_token_b64url: "BBBB".into(),
            gateway_uid: "gw".into(),
            record_uid: "rec".into(),
            traffic_seed_b64: "CCCC".into(),
            protocol: "ssh".into(),
            ca_pem: None,
            relay_host: None,
        };
        assert_eq!(ticket_from_json(&t.to_json()), Some(t.clone()));
        let mut with_ca = t;
        with_ca.ca_pem = Some("PEM".into());
        assert_eq!(ticket_from_json(&with_ca.to_json()), Some(with_ca));
        assert_eq!(ticket_from_json(&serde_json::json!({})), None);
    }
}
