//! Item 4: what pam-lite costs a host next to Commander's Python process: binary size, resident memory of
//! `pam-lite tunnel` holding an idle tunnel and while moving data, and process start → first router
//! request (with the memory at that moment).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_emulator::Emulator;
use serde::Serialize;

use crate::cli::{self, RouterProbe};
use crate::keeper::PairResult;
use crate::launch::Runtime;
use crate::network::Network;
use crate::plan::Plan;
use crate::procs::{self, Memory, PrivateDir, Proc};
use crate::stats::{self, Summary};
use crate::targets;

#[derive(Debug, Clone, Serialize)]
pub struct MemoryRow {
    pub system: String,
    /// Holding one open, idle tunnel.
    pub idle: Option<Memory>,
    /// After moving data: `hwm_kib` is the peak over the whole life, `rss_kib` the largest sample seen
    /// while the data moved.
    pub moving: Option<Memory>,
    pub not_measured: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StartRow {
    pub system: String,
    pub to_first_request: Option<Summary>,
    /// Peak memory when the first request arrived (median sample).
    pub hwm_at_request_kib: Option<u64>,
    /// p50 over pam-lite's p50.
    pub p50_vs_pam_lite: Option<f64>,
    pub not_measured: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FootprintItem {
    pub pam_lite_binary: Option<String>,
    pub pam_lite_binary_bytes: Option<u64>,
    /// Keeper's tube library as installed (the native module Commander loads).
    pub keeper_native_module_bytes: Option<u64>,
    /// The whole interop venv: Python packages Commander + Keeper's tube need (not the interpreter).
    pub commander_venv_bytes: Option<u64>,
    pub moving_bytes: u64,
    pub memory: Vec<MemoryRow>,
    pub start: Vec<StartRow>,
}

/// Sum of file sizes under `dir` (symlinks not followed).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

/// The venv's `site-packages`.
fn site_packages(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib)
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
}

/// Memory of `pam-lite tunnel` on `runtime`: idle with one tunnel, then while `bytes` move through it.
fn pam_lite_memory(bin: &Path, runtime: Runtime, plan: &Plan) -> MemoryRow {
    let mut row = MemoryRow {
        system: format!("pam-lite tunnel · {}", runtime.name()),
        idle: None,
        moving: None,
        not_measured: None,
    };
    if let Err(e) = measure_pam_lite(bin, runtime, plan, &mut row) {
        row.not_measured = Some(e);
    }
    row
}

fn measure_pam_lite(
    bin: &Path,
    runtime: Runtime,
    plan: &Plan,
    row: &mut MemoryRow,
) -> Result<(), String> {
    let sink =
        targets::sink_server(([127, 0, 0, 1], 0).into()).map_err(|e| format!("sink: {e}"))?;
    let emulator = Emulator::start(Network::LOOPBACK.emulator_config(sink.addr()))
        .map_err(|e| e.to_string())?;
    let dir = PrivateDir::new("footprint")?;
    let ticket = dir.write("ticket.json", &emulator.ticket().to_json_string())?;
    let listen = cli::free_port().map_err(|e| format!("free port: {e}"))?;
    let p = Proc::spawn(cli::tunnel_command(
        bin,
        &ticket,
        listen,
        "fast",
        runtime,
        &[],
    ))?;
    // Ready = a small transfer went through.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match targets::push(listen, targets::ACK_UNIT, deadline) {
            Ok(t) if t.complete => break,
            _ if Instant::now() >= deadline => {
                return Err(format!(
                    "the tunnel never carried data: {}",
                    p.stderr_tail()
                ))
            }
            _ => thread::sleep(Duration::from_millis(20)),
        }
    }
    thread::sleep(Duration::from_secs(1));
    row.idle = p.memory();
    // Sample the resident size while the data moves.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let pid = p.pid().to_string();
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Some(m) = procs::memory(&pid) {
                    peak.fetch_max(m.rss_kib, Ordering::AcqRel);
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let moved = targets::push(
        listen,
        plan.footprint_bytes,
        Instant::now() + plan.transfer_limit,
    );
    stop.store(true, Ordering::Release);
    let _ = sampler.join();
    let after = p.memory();
    row.moving = after.map(|m| Memory {
        rss_kib: peak.load(Ordering::Acquire).max(m.rss_kib),
        hwm_kib: m.hwm_kib,
    });
    match moved {
        Ok(t) if t.complete => Ok(()),
        Ok(t) => Err(format!(
            "only {} of {} bytes moved",
            t.bytes, plan.footprint_bytes
        )),
        Err(e) => Err(format!("transfer: {e}")),
    }
}

fn start_row(
    system: &str,
    samples: usize,
    limit: Duration,
    mut command: impl FnMut(&RouterProbe) -> Result<Command, String>,
) -> StartRow {
    let mut times = Vec::new();
    let mut hwm = Vec::new();
    let mut error = None;
    for _ in 0..samples.max(1) {
        let probe = match RouterProbe::start() {
            Ok(p) => p,
            Err(e) => {
                error = Some(format!("probe: {e}"));
                break;
            }
        };
        match command(&probe).and_then(|cmd| cli::measure_start(cmd, &probe, limit)) {
            Ok(s) => {
                times.push(s.to_first_request);
                if let Some(m) = s.memory {
                    hwm.push(m.hwm_kib as f64);
                }
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    StartRow {
        system: system.to_string(),
        to_first_request: stats::summarize(&times),
        hwm_at_request_kib: stats::summarize_ms(&mut hwm).map(|s| s.p50_ms as u64),
        p50_vs_pam_lite: None,
        not_measured: if times.is_empty() { error } else { None },
    }
}

/// Run item 4. `keeper`: the Keeper pair's result from item 3, if it ran.
pub fn run(
    plan: &Plan,
    root: &Path,
    pam_lite: Result<&Path, &String>,
    python: Result<&Path, &String>,
    keeper: Option<&PairResult>,
    commander_idle: Option<Memory>,
) -> Result<FootprintItem, String> {
    let mut item = FootprintItem {
        pam_lite_binary: pam_lite.ok().map(|p| p.display().to_string()),
        pam_lite_binary_bytes: pam_lite
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len()),
        keeper_native_module_bytes: None,
        commander_venv_bytes: None,
        moving_bytes: plan.footprint_bytes,
        memory: Vec::new(),
        start: Vec::new(),
    };
    if let Ok(py) = python {
        if let Some(venv) = py.parent().and_then(Path::parent) {
            item.commander_venv_bytes = Some(dir_size(venv));
            item.keeper_native_module_bytes =
                site_packages(venv).map(|sp| dir_size(&sp.join("keeper_pam_webrtc_rs")));
        }
    }

    // Memory.
    for runtime in [Runtime::Smol, Runtime::Blocking] {
        item.memory.push(match pam_lite {
            Ok(bin) => pam_lite_memory(bin, runtime, plan),
            Err(why) => MemoryRow {
                system: format!("pam-lite tunnel · {}", runtime.name()),
                idle: None,
                moving: None,
                not_measured: Some(why.clone()),
            },
        });
    }
    let keeper_why = "the Keeper pair did not run (see item 3)".to_string();
    item.memory.push(MemoryRow {
        system: "Keeper client tube (Python + keeper-pam-webrtc-rs)".into(),
        idle: keeper.and_then(|k| k.client_idle),
        moving: keeper.and_then(|k| k.client_peak),
        not_measured: keeper.is_none().then(|| keeper_why.clone()),
    });
    item.memory.push(MemoryRow {
        system: "Commander worker (Python: Commander + Keeper's tube, after its launches, tunnel closed)"
            .into(),
        idle: commander_idle,
        moving: None,
        not_measured: commander_idle
            .is_none()
            .then(|| "no Commander worker ran (see item 1)".to_string()),
    });

    // Start → first router request.
    let limit = Duration::from_secs(30);
    let ticket_holder = (|| -> Result<(Emulator, PrivateDir, PathBuf), String> {
        let e = Emulator::start(Network::LOOPBACK.emulator_config(([127, 0, 0, 1], 9).into()))
            .map_err(|e| e.to_string())?;
        let d = PrivateDir::new("start")?;
        let t = d.write("ticket.json", &e.ticket().to_json_string())?;
        Ok((e, d, t))
    })();
    let pam_row = match (pam_lite, &ticket_holder) {
        (Ok(bin), Ok((_, _, ticket))) => start_row(
            "pam-lite tunnel (smol)",
            plan.start_samples,
            limit,
            |probe| {
                let listen = cli::free_port().map_err(|e| e.to_string())?;
                Ok(cli::tunnel_command(
                    bin,
                    ticket,
                    listen,
                    "fast",
                    Runtime::Smol,
                    &[("KROUTER_URL", probe.url.clone())],
                ))
            },
        ),
        (Err(why), _) | (_, Err(why)) => StartRow {
            system: "pam-lite tunnel (smol)".into(),
            to_first_request: None,
            hwm_at_request_kib: None,
            p50_vs_pam_lite: None,
            not_measured: Some(why.clone()),
        },
    };
    let script = root.join("bench/py/commander_first_request.py");
    let py_row = match (python, &ticket_holder) {
        (Ok(py), Ok((emulator, _, _))) => {
            let t = emulator.ticket();
            start_row(
                "Commander (Python: imports + router_get_relay_access_creds)",
                plan.start_samples,
                limit,
                |probe| {
                    let mut c = Command::new(py);
                    c.arg(&script)
                        .args([
                            t.session_token_b64url.as_str(),
                            &t.server_key_id.to_string(),
                            t.server_public_key_b64url.as_str(),
                        ])
                        .env("KROUTER_URL", &probe.url);
                    Ok(c)
                },
            )
        }
        (Err(why), _) | (_, Err(why)) => StartRow {
            system: "Commander (Python: imports + router_get_relay_access_creds)".into(),
            to_first_request: None,
            hwm_at_request_kib: None,
            p50_vs_pam_lite: None,
            not_measured: Some(why.clone()),
        },
    };
    let base = pam_row.to_first_request.map(|s| s.p50_ms);
    item.start = vec![pam_row, py_row];
    for r in &mut item.start {
        r.p50_vs_pam_lite = stats::ratio(r.to_first_request.map(|s| s.p50_ms), base);
    }
    drop(ticket_holder);
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_size_sums_files() {
        let d = PrivateDir::new("dirsize").unwrap();
        d.write("a", "12345").unwrap();
        std::fs::create_dir_all(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), "123").unwrap();
        assert_eq!(dir_size(d.path()), 8);
        assert_eq!(dir_size(&d.path().join("missing")), 0);
    }
}
