//! `pam-lite-bench`: pam-lite side by side with Commander's schedules, the real Commander 18.1.8 and
//! Keeper's tube, in one run, as ratios (absolute times on a shared machine drift between runs; ratios of
//! systems measured together do not).
//!
//! ```text
//! cargo run --release -p pam-lite-bench -- [--quick | --tiny] [--out bench-results/]
//! ```
//!
//! Items (issue 6): 1 time to ready, 2 cold router, 3 throughput, 4 footprint, 5 scale. Results go to
//! `<out>/report.{md,json}` and the SVG pictures the page links (`waterfall.svg`, `throughput.svg`,
//! `scale.svg`; see `charts.rs`), plus dated copies of all; the markdown is also printed.
//!
//! `pam-lite-bench draw-timing FILE... --out x.svg` draws `pam-lite --timing-json` files side by side the
//! way the report draws item 1's waterfalls.
//!
//! The Python systems (Keeper's tube, Commander) need the interop venv (`tests/interop/setup.sh`, created
//! on first use) and a private network namespace (`tests/interop/netns_run.sh`): the benchmark re-runs
//! itself inside one so every system shares the same loopback. Where either is missing, those rows say
//! "not measured" and why; everything else still runs. Every wait is bounded; only 127.0.0.1 (and the
//! namespace's private address) is used.

mod charts;
mod cli;
mod commander;
mod footprint;
mod keeper;
mod launch;
mod network;
mod plan;
mod procs;
mod ready;
mod report;
mod scale;
mod soak;
mod stats;
mod targets;
mod throughput;
mod timing_file;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use pam_lite_emulator::Emulator;

use crate::network::Network;
use crate::plan::{Mode, Plan};
use crate::procs::PrivateDir;
use crate::report::{Item, Meta, Report};

/// Set in the copy of the benchmark that runs inside the network namespace.
const INSIDE_ENV: &str = "PAM_LITE_BENCH_INSIDE_NETNS";
/// The `pam-lite` binary the outer run located (the inner run must not build).
const BIN_ENV: &str = "PAM_LITE_BENCH_PAM_LITE";

#[derive(Debug, Parser)]
#[command(
    name = "pam-lite-bench",
    about = "Benchmarks pam-lite against Commander's schedules, the real Commander and Keeper's tube, in one run"
)]
struct Args {
    /// A small run (a couple of minutes): few launches, 32 MiB, N = 10 and 50.
    #[arg(long)]
    quick: bool,
    /// A tiny run (seconds): 1 launch per system, 1 MiB, N = 2. What the test suite runs.
    #[arg(long, conflicts_with = "quick")]
    tiny: bool,
    /// Directory for report.md / report.json and dated copies.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The `pam-lite` binary (default: next to this executable, built with cargo when missing).
    #[arg(long, value_name = "PATH")]
    pam_lite: Option<PathBuf>,
    /// Never run cargo to build `pam-lite` (its rows are "not measured" when the binary is missing).
    #[arg(long)]
    no_build: bool,
    /// Skip every Python system (Keeper's tube, Commander).
    #[arg(long)]
    no_python: bool,
    /// Do not create the interop venv when it is missing.
    #[arg(long)]
    no_setup: bool,
    /// Do not re-run inside a private network namespace (the Python rows are then not measured).
    #[arg(long)]
    no_netns: bool,
    /// Run only these items (comma-separated numbers 1-5).
    #[arg(long, value_delimiter = ',', value_name = "ITEMS")]
    only: Vec<u8>,
    /// Logs on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Internal: N concurrent launches in this process (item 5's child).
    #[command(hide = true)]
    ScaleChild {
        #[arg(long)]
        ticket: PathBuf,
        #[arg(long)]
        n: usize,
        #[arg(long)]
        limit_secs: u64,
    },
    /// Profiling aid (bench/PROFILE.md): one pam-lite pair moving MIB MiB through one connection, nothing
    /// else, so `perf record -g -- pam-lite-bench profile-throughput` sees only the tunnel.
    #[command(hide = true)]
    ProfileThroughput {
        #[arg(long, value_enum, default_value = "smol")]
        runtime: launch::Runtime,
        #[arg(long, default_value_t = 256)]
        mib: u64,
        /// Spread the MiB over this many connections at once (item 3's second column: 16).
        #[arg(long, default_value_t = 1)]
        conns: usize,
    },
    /// Draw `--timing-json` files (from `pam-lite … --timing-json FILE`) side by side as one Gantt chart
    /// of their checkpoints, as the report draws item 1's waterfalls.
    DrawTiming {
        /// Timing files, one lane each, in this order.
        #[arg(required = true, num_args = 1..=charts::MAX_LANES, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The SVG to write.
        #[arg(long, value_name = "SVG")]
        out: PathBuf,
        /// The chart's heading.
        #[arg(long, default_value = "Launch waterfall")]
        title: String,
    },
    /// Soak (issue 13): hold one `pam-lite tunnel` per runtime open for MINUTES while connections open
    /// and close and data flows; report RSS and open file descriptors over time (not part of the
    /// report; prints markdown and writes `<out>/soak.md` and `soak.json`).
    Soak {
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Which runtimes (both run at the same time).
        #[arg(long, value_enum, default_value = "both")]
        runtime: SoakRuntimes,
    },
    /// Profiling aid: LAUNCHES sequential `fast` launches on the reference network (item 1's), each to
    /// its first echoed byte.
    #[command(hide = true)]
    ProfileLaunch {
        #[arg(long, value_enum, default_value = "smol")]
        runtime: launch::Runtime,
        #[arg(long, default_value_t = 10)]
        launches: usize,
    },
}

/// `soak --runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SoakRuntimes {
    Smol,
    Blocking,
    Both,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    if let Some(Sub::ScaleChild {
        ticket,
        n,
        limit_secs,
    }) = &args.command
    {
        return scale_child(ticket, *n, Duration::from_secs(*limit_secs));
    }
    match &args.command {
        Some(Sub::ProfileThroughput {
            runtime,
            mib,
            conns,
        }) => return report_aid(throughput::profile(*runtime, mib << 20, *conns)),
        Some(Sub::ProfileLaunch { runtime, launches }) => {
            return report_aid(ready::profile(*runtime, *launches))
        }
        Some(Sub::Soak { minutes, runtime }) => {
            return report_aid(run_soak(&args, *minutes, *runtime));
        }
        Some(Sub::DrawTiming { files, out, title }) => {
            return report_aid(
                draw_timing(files, out, title).map_err(|e| format!("draw-timing: {e}")),
            )
        }
        _ => {}
    }
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pam-lite-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report_aid(r: Result<String, String>) -> ExitCode {
    match r {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pam-lite-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn scale_child(ticket: &Path, n: usize, limit: Duration) -> ExitCode {
    let parsed = std::fs::read(ticket)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .and_then(|v| scale::ticket_from_json(&v));
    let Some(t) = parsed else {
        eprintln!("scale-child: unreadable ticket {}", ticket.display());
        return ExitCode::FAILURE;
    };
    let r = scale::run_child(&t, n, limit);
    match serde_json::to_string(&r) {
        Ok(j) => {
            println!("RESULT {j}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scale-child: {e}");
            ExitCode::FAILURE
        }
    }
}

fn wants(args: &Args, item: u8) -> bool {
    args.only.is_empty() || args.only.contains(&item)
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let wall = Instant::now();
    let mode = if args.tiny {
        Mode::Tiny
    } else if args.quick {
        Mode::Quick
    } else {
        Mode::Full
    };
    let plan = Plan::new(mode);
    let root = cli::workspace_root();
    let inside = std::env::var_os(INSIDE_ENV).is_some();

    // The pam-lite binary: located (or built) once, outside the namespace.
    let pam_lite: Result<PathBuf, String> = match std::env::var_os(BIN_ENV) {
        Some(p) if inside => Ok(PathBuf::from(p)),
        _ if inside => Err("the outer run found no pam-lite binary".into()),
        _ => cli::locate(args.pam_lite.as_deref(), !args.no_build),
    };
    let needs_python = wants(args, 1) || wants(args, 2) || wants(args, 3) || wants(args, 4);
    let python: Result<PathBuf, String> = if args.no_python {
        Err("--no-python".into())
    } else if !needs_python {
        Err("not needed by the selected items".into())
    } else {
        keeper::python(&root, !args.no_setup && !inside)
    };

    if python.is_ok() && !inside && !args.no_netns && std::env::var_os("KP_TUBE_NETNS").is_none() {
        match reexec_in_netns(&root, pam_lite.as_ref().ok()) {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => eprintln!(
                "pam-lite-bench: no private network namespace here; the Python rows will say why they are missing"
            ),
            Err(e) => eprintln!("pam-lite-bench: {e}; running without the namespace"),
        }
    }
    let netns = std::env::var_os("KP_TUBE_NETNS").is_some();
    let commander = commander::Harness::new(&root, python.as_deref());
    let runners = ready::Runners {
        pam_lite: pam_lite.clone(),
        commander: commander.clone(),
    };
    let skipped = || "not selected (--only)".to_string();

    let time_to_ready = if wants(args, 1) {
        eprintln!(
            "pam-lite-bench: 1. time to ready ({} launches per system)",
            plan.launches
        );
        Item::from_result(ready::run(
            Network::REFERENCE,
            plan.launches,
            &plan,
            &runners,
        ))
    } else {
        Item::Skipped { skipped: skipped() }
    };
    let commander_idle = commander
        .as_ref()
        .ok()
        .and_then(commander::Harness::idle_memory);
    if let Ok(h) = &commander {
        h.clear();
    }
    let cold_router = if wants(args, 2) {
        eprintln!(
            "pam-lite-bench: 2. cold router ({} launches per system)",
            plan.cold_launches
        );
        Item::from_result(ready::run(
            Network::COLD_ROUTER,
            plan.cold_launches,
            &plan,
            &runners,
        ))
    } else {
        Item::Skipped { skipped: skipped() }
    };
    if let Ok(h) = &commander {
        h.clear();
    }
    let py_arg = python.as_deref();
    let throughput = if wants(args, 3) {
        eprintln!(
            "pam-lite-bench: 3. throughput ({} MiB)",
            plan.throughput_bytes >> 20
        );
        Item::from_result(throughput::run(&plan, &root, py_arg))
    } else {
        Item::Skipped { skipped: skipped() }
    };
    let keeper_pair = match &throughput {
        Item::Done(t) => t.keeper.clone(),
        _ => None,
    };
    let footprint = if wants(args, 4) {
        eprintln!("pam-lite-bench: 4. footprint");
        Item::from_result(footprint::run(
            &plan,
            &root,
            pam_lite.as_deref(),
            py_arg,
            keeper_pair.as_ref(),
            commander_idle,
        ))
    } else {
        Item::Skipped { skipped: skipped() }
    };
    let scale = if wants(args, 5) {
        eprintln!("pam-lite-bench: 5. scale (N = {:?})", plan.scale_ns);
        Item::from_result(run_scale(&plan))
    } else {
        Item::Skipped { skipped: skipped() }
    };

    let (machine, cores, kernel) = report::machine();
    let report = Report {
        meta: Meta {
            date_utc: report::now_utc(),
            machine,
            cores,
            kernel,
            git_commit: git_commit(&root),
            netns,
            command: command_line(),
            wall_secs: wall.elapsed().as_secs_f64(),
        },
        plan,
        time_to_ready,
        cold_router,
        throughput,
        footprint,
        scale,
    };
    let charts = report::charts(&report);
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let md = write_results(&args.out, &report, &charts, &json)?;
    println!("{md}");
    eprintln!(
        "pam-lite-bench: wrote {}/report.md and report.json ({:.0} s)",
        args.out.display(),
        report.meta.wall_secs
    );
    Ok(ExitCode::SUCCESS)
}

fn run_soak(args: &Args, minutes: u64, which: SoakRuntimes) -> Result<String, String> {
    let bin = cli::locate(args.pam_lite.as_deref(), !args.no_build)?;
    let runtimes: &[launch::Runtime] = match which {
        SoakRuntimes::Smol => &[launch::Runtime::Smol],
        SoakRuntimes::Blocking => &[launch::Runtime::Blocking],
        SoakRuntimes::Both => &[launch::Runtime::Smol, launch::Runtime::Blocking],
    };
    eprintln!(
        "pam-lite-bench: soak, {minutes} min, {} ({})",
        runtimes
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(" + "),
        bin.display()
    );
    let results = soak::run(&bin, runtimes, minutes);
    let md = soak::markdown(&command_line(), minutes, &results);
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    for (name, body) in [("soak.md", md.as_str()), ("soak.json", json.as_str())] {
        let p = args.out.join(name);
        std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(bad) = results
        .iter()
        .find(|r| r.first_error.is_some() || !r.alive_at_end)
    {
        eprintln!("{md}");
        return Err(format!(
            "soak {}: {}",
            bad.runtime,
            bad.first_error
                .as_deref()
                .unwrap_or("the tunnel process died")
        ));
    }
    Ok(md)
}

fn run_scale(plan: &Plan) -> Result<Vec<scale::ScaleResult>, String> {
    let mut out = Vec::new();
    for &n in &plan.scale_ns {
        let echo =
            targets::echo_server(([127, 0, 0, 1], 0).into()).map_err(|e| format!("echo: {e}"))?;
        let emulator = Emulator::start(Network::REFERENCE.emulator_config(echo.addr()))
            .map_err(|e| e.to_string())?;
        let dir = PrivateDir::new("scale")?;
        let ticket = dir.write("ticket.json", &emulator.ticket().to_json_string())?;
        match scale::run(&ticket, n, plan.scale_limit) {
            Ok(r) => out.push(r),
            Err(e) => out.push(scale::ScaleResult {
                n,
                first_error: Some(e),
                ..scale::ScaleResult::default()
            }),
        }
    }
    Ok(out)
}

/// Re-run this benchmark (same arguments) inside a private network namespace. `Ok(None)`: no namespace
/// can be made here.
fn reexec_in_netns(root: &Path, pam_lite: Option<&PathBuf>) -> Result<Option<ExitCode>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = std::process::Command::new(root.join(keeper::NETNS_RUN));
    cmd.arg(exe)
        .args(std::env::args_os().skip(1))
        .env(INSIDE_ENV, "1");
    if let Some(p) = pam_lite {
        cmd.env(BIN_ENV, p);
    }
    eprintln!(
        "pam-lite-bench: re-running inside a private network namespace ({})",
        keeper::NETNS_RUN
    );
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", keeper::NETNS_RUN))?;
    match status.code() {
        Some(77) => Ok(None),
        Some(c) => Ok(Some(ExitCode::from(u8::try_from(c).unwrap_or(1)))),
        None => Err("the namespaced run was killed by a signal".into()),
    }
}

fn git_commit(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn command_line() -> String {
    let rest: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "cargo run --release -p pam-lite-bench -- {}",
        rest.join(" ")
    )
    .trim_end()
    .to_string()
}

/// `report.{md,json}` and the charts they link, plus dated copies of all (a dated page links its own
/// dated charts, so a later run does not change an older page's pictures). Returns report.md's text.
fn write_results(
    out: &Path,
    report: &Report,
    charts: &report::Charts,
    json: &str,
) -> Result<String, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let stamp: String = report
        .meta
        .date_utc
        .chars()
        .filter_map(|c| match c {
            '0'..='9' => Some(c),
            ' ' => Some('T'),
            _ => None,
        })
        .collect();
    let dated = format!("bench-{stamp}-");
    let md = report::markdown(report, charts, "");
    let dated_md = report::markdown(report, charts, &dated);
    let mut files = vec![
        ("report.md".to_string(), md.as_str()),
        ("report.json".to_string(), json),
        (format!("bench-{stamp}.md"), dated_md.as_str()),
        (format!("bench-{stamp}.json"), json),
    ];
    for (name, svg) in charts.files() {
        files.push((name.to_string(), svg));
        files.push((format!("{dated}{name}"), svg));
    }
    for (name, body) in files {
        let p = out.join(&name);
        std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(md)
}

/// `draw-timing`: every file is read and checked before anything is drawn; one lane per file, labelled
/// with its file name.
fn draw_timing(files: &[PathBuf], out: &Path, title: &str) -> Result<String, String> {
    let mut lanes = Vec::new();
    for f in files {
        let t = timing_file::TimingFile::read(f).map_err(|e| e.to_string())?;
        let label = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| f.display().to_string());
        lanes.push(charts::Lane {
            label: timing_file::safe_text(&label),
            checkpoints: t.checkpoints(),
        });
    }
    if let Some(empty) = lanes.iter().find(|l| l.checkpoints.is_empty()) {
        return Err(format!("{} has no checkpoints to draw", empty.label));
    }
    let svg =
        charts::waterfall(&timing_file::safe_text(title), &lanes).map_err(|e| e.to_string())?;
    std::fs::write(out, svg).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(format!(
        "wrote {} ({} waterfall{})",
        out.display(),
        lanes.len(),
        if lanes.len() == 1 { "" } else { "s" }
    ))
}
