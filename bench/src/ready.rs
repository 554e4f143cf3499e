//! Items 1 and 2: time to ready (launch start → first byte echoed through the tunnel) of every system
//! on one emulator, launches of all systems interleaved round by round so that drift of the shared
//! machine hits every system alike.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_core::profile::Profile;
use pam_lite_emulator::{DemoTicket, Emulator};
use serde::Serialize;

use crate::launch::{self, Mark, Runtime};
use crate::network::Network;
use crate::plan::Plan;
use crate::procs::PrivateDir;
use crate::stats::{self, Summary};
use crate::timing_file::{TimingEntry, TimingFile};
use crate::{cli, commander, targets};

/// What runs a launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SystemKind {
    /// The core and a driver inside the benchmark process; the clock starts at `Client::new`.
    InProcess {
        runtime: Runtime,
        profile: &'static str,
    },
    /// The `pam-lite tunnel` binary; the clock starts right before the process is spawned.
    CliProcess {
        runtime: Runtime,
        profile: &'static str,
    },
    /// Commander 18.1.8's own tunnel-open code in Python (see `commander.rs`).
    Commander,
}

#[derive(Debug, Clone, Serialize)]
pub struct System {
    pub label: String,
    #[serde(flatten)]
    pub kind: SystemKind,
}

/// The systems of items 1 and 2, `fast · smol` first (the reference of every ratio).
pub fn systems() -> Vec<System> {
    let inproc = |runtime: Runtime, profile: &'static str| System {
        label: format!("pam-lite {profile} · {}", runtime.name()),
        kind: SystemKind::InProcess { runtime, profile },
    };
    vec![
        inproc(Runtime::Smol, "fast"),
        inproc(Runtime::Blocking, "fast"),
        inproc(Runtime::Smol, "commander-1984"),
        inproc(Runtime::Smol, "commander-1982"),
        inproc(Runtime::Smol, "commander-legacy"),
        System {
            label: "pam-lite CLI process, fast · smol".into(),
            kind: SystemKind::CliProcess {
                runtime: Runtime::Smol,
                profile: "fast",
            },
        },
        System {
            label: "Commander 18.1.8 (real, Python)".into(),
            kind: SystemKind::Commander,
        },
    ]
}

/// One system's row.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyRow {
    pub system: System,
    /// Launch start → first byte echoed.
    pub first_echo: Option<Summary>,
    /// Launch start → `TubeReady` (in-process rows only).
    pub tube_ready: Option<Summary>,
    pub ok: usize,
    pub failed: usize,
    /// Launches not started before the item's time bound.
    pub skipped: usize,
    pub first_error: Option<String>,
    /// p50 and p95 of `first_echo` divided by those of `pam-lite fast · smol`.
    pub p50_vs_fast: Option<f64>,
    pub p95_vs_fast: Option<f64>,
    /// Why the row has no numbers.
    pub not_measured: Option<String>,
    /// The median launch's waterfall in the CLI's `--timing-json` form: the median offset of every
    /// checkpoint (the core's, for in-process rows) plus the moments the benchmark sees itself
    /// (`tube_ready`, Commander's `start_rust_tunnel_returned`, `first_byte_echoed`), in time order.
    pub waterfall: Option<TimingFile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadyItem {
    pub network: Network,
    pub launches_per_system: usize,
    pub concurrency: usize,
    /// Spec §8 floor: 1 router RTT + 6 peer RTTs.
    pub floor_ms: u64,
    /// The floor plus the router ↔ gateway RTT and the gateway's answer delay.
    pub floor_with_gateway_ms: u64,
    /// `fast · smol` p50 over the floors.
    pub fast_p50_vs_floor: Option<f64>,
    pub fast_p50_vs_floor_with_gateway: Option<f64>,
    pub rows: Vec<ReadyRow>,
    pub wall_secs: f64,
}

/// Where each system's launches can run from.
pub struct Runners {
    pub pam_lite: Result<PathBuf, String>,
    pub commander: Result<commander::Harness, String>,
}

enum Sample {
    InProcess(launch::LaunchSample),
    /// A launch in another process: its first echo, and what else the benchmark saw of it.
    Process {
        first_echo: Duration,
        marks: Vec<Mark>,
    },
}

/// Names of the moments the benchmark observes (phase [`launch::BENCH_PHASE`]).
pub mod marks {
    pub const TUBE_READY: &str = "tube_ready";
    pub const FIRST_BYTE_ECHOED: &str = "first_byte_echoed";
    pub const START_RUST_TUNNEL_RETURNED: &str = "start_rust_tunnel_returned";
}

/// A finished job: which system, and how its launch went.
type Outcome = (usize, Result<Sample, String>);

fn run_one(
    system: &System,
    ticket: &DemoTicket,
    ticket_file: &Path,
    runners: &Runners,
    limit: Duration,
) -> Result<Sample, String> {
    match &system.kind {
        SystemKind::InProcess { runtime, profile } => {
            let p = Profile::by_name(profile).map_err(|e| e.to_string())?;
            launch::measure(ticket, *runtime, p, limit).map(Sample::InProcess)
        }
        SystemKind::CliProcess { runtime, profile } => {
            let bin = runners.pam_lite.as_ref().map_err(Clone::clone)?;
            cli::measure_launch(bin, ticket_file, profile, *runtime, limit).map(|d| {
                Sample::Process {
                    first_echo: d,
                    marks: vec![Mark::bench(marks::FIRST_BYTE_ECHOED, d)],
                }
            })
        }
        SystemKind::Commander => {
            let h = runners.commander.as_ref().map_err(Clone::clone)?;
            h.measure_launch(ticket, limit).map(|l| Sample::Process {
                first_echo: l.first_echo,
                marks: vec![
                    Mark::bench(marks::START_RUST_TUNNEL_RETURNED, l.returned),
                    Mark::bench(marks::FIRST_BYTE_ECHOED, l.first_echo),
                ],
            })
        }
    }
}

/// Run `launches` launches of every system on `net` (see the module docs).
pub fn run(
    net: Network,
    launches: usize,
    plan: &Plan,
    runners: &Runners,
) -> Result<ReadyItem, String> {
    let started = Instant::now();
    let echo =
        targets::echo_server(([127, 0, 0, 1], 0).into()).map_err(|e| format!("echo: {e}"))?;
    let emulator = Emulator::start(net.emulator_config(echo.addr())).map_err(|e| e.to_string())?;
    let ticket = emulator.ticket();
    let dir = PrivateDir::new("ready")?;
    let ticket_file = dir.write("ticket.json", &ticket.to_json_string())?;
    let systems = systems();

    // Systems that cannot run at all get their reason once instead of N failures.
    let unavailable: Vec<Option<String>> = systems
        .iter()
        .map(|s| match &s.kind {
            SystemKind::CliProcess { .. } => runners.pam_lite.as_ref().err().cloned(),
            SystemKind::Commander => runners.commander.as_ref().err().cloned(),
            SystemKind::InProcess { .. } => None,
        })
        .collect();
    let mut jobs = VecDeque::new();
    for round in 0..launches {
        // Rotate the order every round: no system always goes first.
        for k in 0..systems.len() {
            let i = (k + round) % systems.len();
            if unavailable.get(i).is_some_and(Option::is_none) {
                jobs.push_back(i);
            }
        }
    }
    let jobs = Arc::new(Mutex::new(jobs));
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let skipped = Arc::new(Mutex::new(vec![0usize; systems.len()]));
    let item_deadline = started + plan.item_limit;
    let shared = Arc::new((systems.clone(), ticket.clone(), ticket_file.clone()));
    let runners = Arc::new(Runners {
        pam_lite: runners.pam_lite.clone(),
        commander: runners.commander.clone(),
    });
    let workers: Vec<_> = (0..plan.concurrency.max(1))
        .map(|w| {
            let (jobs, results, skipped, shared, runners) = (
                jobs.clone(),
                results.clone(),
                skipped.clone(),
                shared.clone(),
                runners.clone(),
            );
            let limit = plan.launch_limit;
            thread::Builder::new()
                .name(format!("bench-ready-{w}"))
                .spawn(move || loop {
                    let Some(i) = jobs.lock().ok().and_then(|mut j| j.pop_front()) else {
                        return;
                    };
                    if Instant::now() >= item_deadline {
                        if let Ok(mut s) = skipped.lock() {
                            if let Some(c) = s.get_mut(i) {
                                *c += 1;
                            }
                        }
                        continue;
                    }
                    let (systems, ticket, file) = &*shared;
                    let Some(system) = systems.get(i) else {
                        continue;
                    };
                    let r = run_one(system, ticket, file, &runners, limit);
                    if let Ok(mut res) = results.lock() {
                        res.push((i, r));
                    }
                })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("worker thread: {e}"))?;
    for w in workers {
        let _ = w.join();
    }
    drop(emulator);

    let results = std::mem::take(&mut *results.lock().map_err(|_| "results poisoned")?);
    let skipped = skipped.lock().map(|s| s.clone()).unwrap_or_default();
    let mut rows: Vec<ReadyRow> = systems
        .iter()
        .enumerate()
        .map(|(i, system)| {
            let mine: Vec<&Result<Sample, String>> = results
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, r)| r)
                .collect();
            row(
                system.clone(),
                &mine,
                skipped.get(i).copied().unwrap_or(0),
                unavailable.get(i).cloned().flatten(),
            )
        })
        .collect();
    let fast = rows.first().and_then(|r| r.first_echo);
    for r in &mut rows {
        r.p50_vs_fast = stats::ratio(r.first_echo.map(|s| s.p50_ms), fast.map(|s| s.p50_ms));
        r.p95_vs_fast = stats::ratio(r.first_echo.map(|s| s.p95_ms), fast.map(|s| s.p95_ms));
    }
    Ok(ReadyItem {
        network: net,
        launches_per_system: launches,
        concurrency: plan.concurrency,
        floor_ms: net.floor_ms(),
        floor_with_gateway_ms: net.floor_with_gateway_ms(),
        fast_p50_vs_floor: stats::ratio(fast.map(|s| s.p50_ms), Some(net.floor_ms() as f64)),
        fast_p50_vs_floor_with_gateway: stats::ratio(
            fast.map(|s| s.p50_ms),
            Some(net.floor_with_gateway_ms() as f64),
        ),
        rows,
        wall_secs: started.elapsed().as_secs_f64(),
    })
}

/// `profile-launch`: `launches` sequential `fast` launches on the reference network; a one-line summary.
pub fn profile(runtime: Runtime, launches: usize) -> Result<String, String> {
    let net = Network::REFERENCE;
    let echo =
        targets::echo_server(([127, 0, 0, 1], 0).into()).map_err(|e| format!("echo: {e}"))?;
    let emulator = Emulator::start(net.emulator_config(echo.addr())).map_err(|e| e.to_string())?;
    let ticket = emulator.ticket();
    let mut echo_times = Vec::new();
    for _ in 0..launches.max(1) {
        let s = launch::measure(&ticket, runtime, Profile::fast(), Duration::from_secs(30))?;
        echo_times.push(s.first_echo);
    }
    let s = stats::summarize(&echo_times).ok_or("no launch")?;
    Ok(format!(
        "{} fast launches on {}: first echo p50 {:.0} ms, max {:.0} ms",
        s.n,
        runtime.name(),
        s.p50_ms,
        s.max_ms
    ))
}

fn row(
    system: System,
    results: &[&Result<Sample, String>],
    skipped: usize,
    not_measured: Option<String>,
) -> ReadyRow {
    let mut echo = Vec::new();
    let mut ready = Vec::new();
    // (phase, name) → (summary, offsets of every launch that reached it).
    let mut offsets: BTreeMap<(String, String), (bool, Vec<f64>)> = BTreeMap::new();
    let mut first_error = None;
    let mut add = |marks: &[Mark]| {
        // A checkpoint a launch passes twice (a retried offer's) counts at its first pass.
        let mut seen = std::collections::HashSet::new();
        for m in marks {
            let key = (m.phase.clone(), m.name.clone());
            if seen.insert(key.clone()) {
                let e = offsets.entry(key).or_insert((m.summary, Vec::new()));
                e.1.push(m.at.as_secs_f64() * 1000.0);
            }
        }
    };
    for r in results {
        match r {
            Ok(Sample::InProcess(s)) => {
                echo.push(s.first_echo);
                ready.push(s.tube_ready);
                let mut all = s.waterfall.clone();
                all.push(Mark::bench(marks::TUBE_READY, s.tube_ready));
                all.push(Mark::bench(marks::FIRST_BYTE_ECHOED, s.first_echo));
                add(&all);
            }
            Ok(Sample::Process { first_echo, marks }) => {
                echo.push(*first_echo);
                add(marks);
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.clone());
            }
        }
    }
    let mut entries: Vec<TimingEntry> = offsets
        .into_iter()
        .filter_map(|((phase, name), (summary, mut v))| {
            stats::summarize_ms(&mut v).map(|s| TimingEntry {
                phase,
                name,
                ms: s.p50_ms,
                summary,
            })
        })
        .collect();
    entries.sort_by(|a, b| a.ms.total_cmp(&b.ms));
    let waterfall = (!entries.is_empty()).then(|| TimingFile {
        total_ms: entries.iter().map(|e| e.ms).fold(0.0, f64::max),
        entries,
    });
    ReadyRow {
        system,
        first_echo: stats::summarize(&echo),
        tube_ready: stats::summarize(&ready),
        ok: echo.len(),
        failed: results.len() - echo.len(),
        skipped,
        first_error,
        p50_vs_fast: None,
        p95_vs_fast: None,
        not_measured,
        waterfall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_smol_is_the_reference_row() {
        let s = systems();
        assert_eq!(
            s.first().map(|s| &s.kind),
            Some(&SystemKind::InProcess {
                runtime: Runtime::Smol,
                profile: "fast"
            })
        );
        for p in Profile::names() {
            assert!(
                s.iter().any(
                    |s| matches!(&s.kind, SystemKind::InProcess { profile, .. } if profile == p)
                ),
                "{p} has a row"
            );
        }
        assert!(s.iter().any(|s| s.kind == SystemKind::Commander));
    }

    #[test]
    fn rows_count_failures_and_order_the_waterfall() {
        let core = |name: &str, ms: u64| Mark {
            phase: "pam-launch:webrtc-tunnel".into(),
            name: name.into(),
            at: Duration::from_millis(ms),
            summary: false,
        };
        let ok = Ok(Sample::InProcess(launch::LaunchSample {
            tube_ready: Duration::from_millis(90),
            first_echo: Duration::from_millis(100),
            waterfall: vec![core("b", 20), core("a", 10), core("b", 80)],
        }));
        let bad: Result<Sample, String> = Err("boom".into());
        let r = row(systems().remove(0), &[&ok, &bad], 3, None);
        assert_eq!((r.ok, r.failed, r.skipped), (1, 1, 3));
        assert_eq!(r.first_error.as_deref(), Some("boom"));
        assert_eq!(r.first_echo.map(|s| s.p50_ms), Some(100.0));
        let w = r.waterfall.expect("a waterfall");
        let got: Vec<(&str, &str, f64)> = w
            .entries
            .iter()
            .map(|e| (e.phase.as_str(), e.name.as_str(), e.ms))
            .collect();
        assert_eq!(
            got,
            vec![
                ("pam-launch:webrtc-tunnel", "a", 10.0),
                ("pam-launch:webrtc-tunnel", "b", 20.0),
                (launch::BENCH_PHASE, marks::TUBE_READY, 90.0),
                (launch::BENCH_PHASE, marks::FIRST_BYTE_ECHOED, 100.0),
            ]
        );
        assert_eq!(w.total_ms, 100.0);
        w.validate()
            .expect("the report's waterfall is a valid timing file");
    }

    #[test]
    fn process_rows_keep_what_the_bench_saw_as_medians() {
        let commander = |ret: u64, echo: u64| {
            Ok(Sample::Process {
                first_echo: Duration::from_millis(echo),
                marks: vec![
                    Mark::bench(
                        marks::START_RUST_TUNNEL_RETURNED,
                        Duration::from_millis(ret),
                    ),
                    Mark::bench(marks::FIRST_BYTE_ECHOED, Duration::from_millis(echo)),
                ],
            })
        };
        let (a, b, c) = (
            commander(500, 900),
            commander(700, 1000),
            commander(600, 2000),
        );
        let real = || {
            systems()
                .into_iter()
                .find(|s| s.kind == SystemKind::Commander)
                .expect("a Commander row")
        };
        let r = row(real(), &[&a, &b, &c], 0, None);
        let w = r.waterfall.expect("a waterfall");
        let got: Vec<(&str, f64)> = w.entries.iter().map(|e| (e.name.as_str(), e.ms)).collect();
        assert_eq!(
            got,
            vec![
                (marks::START_RUST_TUNNEL_RETURNED, 600.0),
                (marks::FIRST_BYTE_ECHOED, 1000.0)
            ]
        );
        // No launch succeeded: no waterfall.
        let bad: Result<Sample, String> = Err("down".into());
        assert!(row(real(), &[&bad], 0, None).waterfall.is_none());
    }
}
