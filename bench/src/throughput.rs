//! Item 3: bytes through one tunneled TCP connection (and through 16 at once) on loopback, for a pam-lite
//! pair (pam-lite client on each driver ↔ the emulator's pam-lite gateway), a Keeper pair (client tube ↔
//! gateway tube, [`crate::keeper`]) and plain TCP.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use pam_lite_core::profile::Profile;
use pam_lite_emulator::Emulator;
use serde::Serialize;

use crate::keeper::{self, PairResult, TransferResult};
use crate::launch::{Runtime, Tunnel};
use crate::network::Network;
use crate::plan::Plan;
use crate::stats;
use crate::targets;

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    pub system: String,
    pub single: Option<TransferResult>,
    pub parallel: Option<TransferResult>,
    pub single_mb_s: Option<f64>,
    pub parallel_mb_s: Option<f64>,
    /// MB/s over the Keeper pair's (single, parallel).
    pub single_vs_keeper: Option<f64>,
    pub parallel_vs_keeper: Option<f64>,
    /// MB/s over raw TCP's.
    pub single_vs_raw: Option<f64>,
    pub parallel_vs_raw: Option<f64>,
    pub not_measured: Option<String>,
    pub errors: Vec<String>,
}

impl ThroughputRow {
    fn new(system: &str) -> Self {
        ThroughputRow {
            system: system.to_string(),
            single: None,
            parallel: None,
            single_mb_s: None,
            parallel_mb_s: None,
            single_vs_keeper: None,
            parallel_vs_keeper: None,
            single_vs_raw: None,
            parallel_vs_raw: None,
            not_measured: None,
            errors: Vec::new(),
        }
    }

    fn set(&mut self, single: Option<TransferResult>, parallel: Option<TransferResult>) {
        self.single_mb_s = single.map(|t| t.mb_per_s());
        self.parallel_mb_s = parallel.map(|t| t.mb_per_s());
        self.single = single;
        self.parallel = parallel;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputItem {
    pub bytes: u64,
    pub parallel_conns: usize,
    pub rows: Vec<ThroughputRow>,
    /// The Keeper pair's whole result (its memory goes to item 4).
    #[serde(skip)]
    pub keeper: Option<PairResult>,
}

fn transfers(addr: SocketAddr, plan: &Plan, row: &mut ThroughputRow) {
    let single = match targets::push(
        addr,
        plan.throughput_bytes,
        Instant::now() + plan.transfer_limit,
    ) {
        Ok(t) => Some(TransferResult::from(t)),
        Err(e) => {
            row.errors.push(format!("single: {e}"));
            None
        }
    };
    let parallel = match targets::push_parallel(
        addr,
        plan.throughput_bytes,
        plan.parallel_conns,
        Instant::now() + plan.transfer_limit,
    ) {
        Ok(t) => Some(TransferResult::from(t)),
        Err(e) => {
            row.errors.push(format!("parallel: {e}"));
            None
        }
    };
    row.set(single, parallel);
}

/// A pam-lite client on `runtime` ↔ the emulator's gateway, to `sink`.
fn pam_lite(runtime: Runtime, sink: SocketAddr, plan: &Plan) -> ThroughputRow {
    let mut row = ThroughputRow::new(&format!("pam-lite pair · {}", runtime.name()));
    let emulator = match Emulator::start(Network::LOOPBACK.emulator_config(sink)) {
        Ok(e) => e,
        Err(e) => {
            row.not_measured = Some(format!("emulator: {e}"));
            return row;
        }
    };
    let mut tunnel = match Tunnel::open(&emulator.ticket(), runtime, Profile::fast()) {
        Ok(t) => t,
        Err(e) => {
            row.not_measured = Some(e);
            return row;
        }
    };
    match tunnel.wait_ready(Instant::now() + Duration::from_secs(20)) {
        Ok(_) => transfers(tunnel.listen, plan, &mut row),
        Err(e) => row.not_measured = Some(e),
    }
    tunnel.close();
    drop(emulator);
    row
}

/// Run item 3. `python`: the interop venv's interpreter, or why there is none.
pub fn run(
    plan: &Plan,
    root: &Path,
    python: Result<&Path, &String>,
) -> Result<ThroughputItem, String> {
    let sink =
        targets::sink_server(([127, 0, 0, 1], 0).into()).map_err(|e| format!("sink: {e}"))?;
    let mut raw = ThroughputRow::new("raw TCP loopback");
    transfers(sink.addr(), plan, &mut raw);
    let smol = pam_lite(Runtime::Smol, sink.addr(), plan);
    let blocking = pam_lite(Runtime::Blocking, sink.addr(), plan);

    let mut keeper_row =
        ThroughputRow::new("Keeper tube pair (keeper-pam-webrtc-rs 2.2.9, Python)");
    let mut keeper_result = None;
    match python {
        Err(why) => keeper_row.not_measured = Some(why.clone()),
        Ok(_) if std::env::var_os("KP_TUBE_NETNS").is_none() => {
            keeper_row.not_measured = Some(
                "Keeper's tube needs the private network namespace (tests/interop/netns_run.sh), not available here"
                    .into(),
            )
        }
        Ok(py) => {
            // Both transfers, plus start-up, within the pair's bound.
            let limit = plan.transfer_limit * 2 + Duration::from_secs(60);
            let r = keeper::run_inside(
                py,
                &root.join(keeper::PEER_SCRIPT),
                plan.throughput_bytes,
                plan.parallel_conns,
                limit,
            );
            keeper_row.errors = r.errors.clone();
            keeper_row.set(r.single, r.parallel);
            if r.single.is_none() && r.parallel.is_none() {
                keeper_row.not_measured = Some(format!("the pair failed: {}", r.errors.join("; ")));
            }
            keeper_result = Some(r);
        }
    }
    drop(sink);

    let mut rows = vec![smol, blocking, keeper_row, raw];
    let keeper = rows.get(2).map(|r| (r.single_mb_s, r.parallel_mb_s));
    let raw = rows.get(3).map(|r| (r.single_mb_s, r.parallel_mb_s));
    for r in &mut rows {
        if let Some((ks, kp)) = keeper {
            r.single_vs_keeper = stats::ratio(r.single_mb_s, ks);
            r.parallel_vs_keeper = stats::ratio(r.parallel_mb_s, kp);
        }
        if let Some((rs, rp)) = raw {
            r.single_vs_raw = stats::ratio(r.single_mb_s, rs);
            r.parallel_vs_raw = stats::ratio(r.parallel_mb_s, rp);
        }
    }
    Ok(ThroughputItem {
        bytes: plan.throughput_bytes,
        parallel_conns: plan.parallel_conns,
        rows,
        keeper: keeper_result,
    })
}

/// `profile-throughput`: one pam-lite pair, one connection, `bytes`; a one-line summary.
pub fn profile(runtime: Runtime, bytes: u64, conns: usize) -> Result<String, String> {
    let sink =
        targets::sink_server(([127, 0, 0, 1], 0).into()).map_err(|e| format!("sink: {e}"))?;
    let emulator = Emulator::start(Network::LOOPBACK.emulator_config(sink.addr()))
        .map_err(|e| e.to_string())?;
    let mut tunnel = Tunnel::open(&emulator.ticket(), runtime, Profile::fast())?;
    tunnel.wait_ready(Instant::now() + Duration::from_secs(20))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let t = match conns {
        0 | 1 => targets::push(tunnel.listen, bytes, deadline),
        n => targets::push_parallel(tunnel.listen, bytes, n, deadline),
    }
    .map_err(|e| e.to_string())?;
    tunnel.close();
    let r = TransferResult::from(t);
    Ok(format!(
        "pam-lite pair · {}, {} connection(s): {} MiB in {:.2} s = {:.1} MB/s{}",
        runtime.name(),
        conns.max(1),
        r.bytes >> 20,
        r.secs,
        r.mb_per_s(),
        if r.complete { "" } else { " (incomplete)" }
    ))
}
