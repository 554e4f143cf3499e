//! The run's results: one JSON document and one markdown page with the same numbers.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::charts::{self, ChartError, Lane};
use crate::footprint::FootprintItem;
use crate::plan::Plan;
use crate::ready::{ReadyItem, SystemKind};
use crate::scale::ScaleResult;
use crate::throughput::ThroughputItem;

#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub date_utc: String,
    pub machine: String,
    pub cores: usize,
    pub kernel: String,
    pub git_commit: Option<String>,
    /// The Python rows ran inside the private network namespace.
    pub netns: bool,
    pub command: String,
    pub wall_secs: f64,
}

/// An item that could not run at all.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Item<T> {
    Done(T),
    Failed { error: String },
    Skipped { skipped: String },
}

impl<T> Item<T> {
    pub fn from_result(r: Result<T, String>) -> Self {
        match r {
            Ok(t) => Item::Done(t),
            Err(error) => Item::Failed { error },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub plan: Plan,
    pub time_to_ready: Item<ReadyItem>,
    pub cold_router: Item<ReadyItem>,
    pub throughput: Item<ThroughputItem>,
    pub footprint: Item<FootprintItem>,
    pub scale: Item<Vec<ScaleResult>>,
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time (days-from-civil inverse, Howard Hinnant's algorithm).
pub fn utc(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60
    )
}

pub fn now_utc() -> String {
    utc(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

/// CPU model and memory, from /proc.
pub fn machine() -> (String, usize, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    (
        format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM"),
        cores,
        kernel,
    )
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into())
}

fn x(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}×")).unwrap_or_else(|| "–".into())
}

fn mb(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into())
}

fn mib_of_kib(v: Option<u64>) -> String {
    v.map(|k| format!("{:.1}", k as f64 / 1024.0))
        .unwrap_or_else(|| "–".into())
}

/// Table cells must not contain `|` or newlines.
fn cell(s: &str) -> String {
    let mut t: String = s.replace('|', "/").replace('\n', " ");
    if t.len() > 160 {
        let mut cut = 157;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
        t.push('…');
    }
    t
}

fn ready_section(md: &mut String, title: &str, item: &Item<ReadyItem>) {
    let _ = writeln!(md, "## {title}\n");
    let it = match item {
        Item::Done(it) => it,
        Item::Failed { error } => {
            let _ = writeln!(md, "Not measured: {error}\n");
            return;
        }
        Item::Skipped { skipped } => {
            let _ = writeln!(md, "Skipped: {skipped}\n");
            return;
        }
    };
    let n = it.network;
    let _ = writeln!(
        md,
        "Emulator: router RTT {} ms (fresh connection +{} ms, WebSocket auth {} ms), router ↔ gateway {} ms, \
         gateway answer delay {} ms, peer RTT {} ms{}. {} launches per system, {} in flight, all systems \
         interleaved; time = launch start → first byte echoed through the tunnel ({:.0} s wall).\n",
        n.router_rtt_ms,
        n.fresh_connection_ms,
        n.ws_auth_ms,
        n.gateway_rtt_ms,
        n.answer_delay_ms,
        n.peer_rtt_ms,
        if n.registration_lag_ms > 0 {
            format!(
                ", router registration lag {} ms (an offer sooner after the WebSocket opened gets RRC_BAD_STATE)",
                n.registration_lag_ms
            )
        } else {
            String::new()
        },
        it.launches_per_system,
        it.concurrency,
        it.wall_secs
    );
    let _ = writeln!(
        md,
        "| system | ok / failed | p50 ms | p95 ms | p50 × fast | p95 × fast | TubeReady p50 ms |\n|---|---|---|---|---|---|---|"
    );
    for r in &it.rows {
        if let Some(why) = &r.not_measured {
            let _ = writeln!(
                md,
                "| {} | not measured: {} | – | – | – | – | – |",
                r.system.label,
                cell(why)
            );
            continue;
        }
        let mut status = format!("{} / {}", r.ok, r.failed);
        if r.skipped > 0 {
            let _ = write!(status, " (+{} skipped)", r.skipped);
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.system.label,
            status,
            ms(r.first_echo.map(|s| s.p50_ms)),
            ms(r.first_echo.map(|s| s.p95_ms)),
            x(r.p50_vs_fast),
            x(r.p95_vs_fast),
            ms(r.tube_ready.map(|s| s.p50_ms)),
        );
    }
    let _ = writeln!(
        md,
        "\nRound-trip floor (spec §8: 1 router RTT for the offer + ICE 1 + DTLS 2 + SCTP 2 + open 1 peer RTTs) \
         = **{} ms**; with the router ↔ gateway RTT and the gateway's answer delay the offer must also wait for = \
         **{} ms**. pam-lite `fast · smol` p50 = **{}** the floor, **{}** the floor with the gateway's work.",
        it.floor_ms,
        it.floor_with_gateway_ms,
        x(it.fast_p50_vs_floor),
        x(it.fast_p50_vs_floor_with_gateway)
    );
    let errors: Vec<String> = it
        .rows
        .iter()
        .filter_map(|r| {
            r.first_error
                .as_ref()
                .map(|e| format!("* {}: {}", r.system.label, cell(e)))
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "\nFirst error per system:\n{}", errors.join("\n"));
    }
    let _ = writeln!(md);
}

/// The report's pictures. `None`: the item did not run, so there is nothing to draw (and no link).
pub struct Charts {
    pub waterfall: Option<Result<String, ChartError>>,
    pub throughput: Option<Result<String, ChartError>>,
    pub scale: Option<Result<String, ChartError>>,
}

impl Charts {
    /// `(file name without prefix, svg)` of every chart that was drawn.
    pub fn files(&self) -> Vec<(&'static str, &str)> {
        [
            (WATERFALL_SVG, &self.waterfall),
            (THROUGHPUT_SVG, &self.throughput),
            (SCALE_SVG, &self.scale),
        ]
        .into_iter()
        .filter_map(|(name, c)| match c {
            Some(Ok(svg)) => Some((name, svg.as_str())),
            _ => None,
        })
        .collect()
    }
}

pub const WATERFALL_SVG: &str = "waterfall.svg";
pub const THROUGHPUT_SVG: &str = "throughput.svg";
pub const SCALE_SVG: &str = "scale.svg";

/// The systems whose waterfalls item 1's picture puts side by side: pam-lite's fast schedule,
/// Commander's schedule replayed by pam-lite, and the real Commander.
fn in_waterfall_chart(kind: &SystemKind) -> bool {
    matches!(
        kind,
        SystemKind::InProcess {
            runtime: crate::launch::Runtime::Smol,
            profile: "fast" | "commander-1984",
        } | SystemKind::Commander
    )
}

/// Draw the report's pictures (see [`Charts`]).
pub fn charts(r: &Report) -> Charts {
    let waterfall = match &r.time_to_ready {
        Item::Done(it) => {
            let lanes: Vec<Lane> = it
                .rows
                .iter()
                .filter(|row| in_waterfall_chart(&row.system.kind))
                .filter_map(|row| {
                    row.waterfall.as_ref().map(|w| Lane {
                        label: format!("{} (median of {} launches)", row.system.label, row.ok),
                        checkpoints: w.checkpoints(),
                    })
                })
                .collect();
            Some(charts::waterfall(
                "Time to ready: where each launch's time goes (median checkpoint offsets)",
                &lanes,
            ))
        }
        _ => None,
    };
    let throughput = match &r.throughput {
        Item::Done(t) => {
            let panel = |f: fn(&crate::throughput::ThroughputRow) -> Option<f64>| {
                t.rows
                    .iter()
                    .map(|row| (row.system.clone(), f(row)))
                    .collect::<Vec<_>>()
            };
            Some(charts::bars(
                &format!(
                    "Tunnel throughput on loopback, {} MiB one-way",
                    t.bytes >> 20
                ),
                "MB/s (10^6 bytes per second)",
                &[
                    ("One connection".to_string(), panel(|r| r.single_mb_s)),
                    (
                        format!("{} connections at once", t.parallel_conns),
                        panel(|r| r.parallel_mb_s),
                    ),
                ],
            ))
        }
        _ => None,
    };
    let scale = match &r.scale {
        Item::Done(rows) => {
            let ok: Vec<&ScaleResult> = rows.iter().filter(|s| s.echo_ok > 0).collect();
            let points = |f: fn(&ScaleResult) -> Option<f64>| -> Vec<(f64, f64)> {
                ok.iter()
                    .filter_map(|s| f(s).map(|v| (s.n as f64, v)))
                    .collect()
            };
            Some(charts::against_n(
                "Scale: N concurrent launches in one smol process",
                &[
                    (
                        "Memory with N tunnels open".to_string(),
                        "RSS (MiB)".to_string(),
                        vec![(
                            "RSS, N tunnels open".to_string(),
                            points(|s| Some(s.rss_open_kib as f64 / 1024.0)),
                        )],
                    ),
                    (
                        "p99 against N".to_string(),
                        "ms since launch start".to_string(),
                        vec![
                            (
                                "TubeReady p99".to_string(),
                                points(|s| s.tube_ready.map(|v| v.p99_ms)),
                            ),
                            (
                                "first echo p99".to_string(),
                                points(|s| s.first_echo.map(|v| v.p99_ms)),
                            ),
                        ],
                    ),
                ],
            ))
        }
        _ => None,
    };
    Charts {
        waterfall,
        throughput,
        scale,
    }
}

/// The markdown line that shows a chart (or says why it is missing); `prefix` goes before the file name.
fn picture(
    md: &mut String,
    chart: &Option<Result<String, ChartError>>,
    prefix: &str,
    file: &str,
    alt: &str,
) {
    match chart {
        Some(Ok(_)) => {
            let _ = writeln!(md, "![{alt}]({prefix}{file})\n");
        }
        Some(Err(e)) => {
            let _ = writeln!(md, "_{alt}: {e}._\n");
        }
        None => {}
    }
}

/// The markdown page; its pictures are `<prefix><name>.svg` next to it.
pub fn markdown(r: &Report, charts: &Charts, prefix: &str) -> String {
    let mut md = String::new();
    let m = &r.meta;
    let _ = writeln!(
        md,
        "# pam-lite benchmark\n\n{} · {} · Linux {} · commit {} · mode `{:?}` · {:.0} s wall\n\n`{}`\n\n\
         Every number below comes from this one run; ratios compare systems measured side by side.{}\n",
        m.date_utc,
        m.machine,
        m.kernel,
        m.git_commit.as_deref().unwrap_or("?"),
        r.plan.mode,
        m.wall_secs,
        m.command,
        if m.netns {
            " Everything ran inside one private network namespace (tests/interop/netns_run.sh) so that \
             Keeper's tube, which never uses a loopback candidate, could take part."
        } else {
            ""
        }
    );
    ready_section(&mut md, "1. Time to ready", &r.time_to_ready);
    picture(
        &mut md,
        &charts.waterfall,
        prefix,
        WATERFALL_SVG,
        "Launch waterfalls of pam-lite fast, commander-1984 and the real Commander",
    );
    ready_section(&mut md, "2. Cold router (one offer retry)", &r.cold_router);

    let _ = writeln!(md, "## 3. Tunnel throughput (loopback)\n");
    match &r.throughput {
        Item::Done(t) => {
            let _ = writeln!(
                md,
                "{} MiB through one tunneled TCP connection, and the same total over {} connections at once; \
                 one-way to a counting sink (MB = 10^6 bytes).\n",
                t.bytes >> 20,
                t.parallel_conns
            );
            let _ = writeln!(md, "| system | 1 conn MB/s | × Keeper | × raw TCP | {} conns MB/s | × Keeper | × raw TCP |\n|---|---|---|---|---|---|---|", t.parallel_conns);
            for row in &t.rows {
                if let Some(why) = &row.not_measured {
                    let _ = writeln!(
                        md,
                        "| {} | not measured: {} | | | | | |",
                        row.system,
                        cell(why)
                    );
                    continue;
                }
                let partial = |t: &Option<crate::keeper::TransferResult>| match t {
                    Some(t) if !t.complete => format!(" (partial: {} MiB)", t.bytes >> 20),
                    _ => String::new(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {}{} | {} | {} | {}{} | {} | {} |",
                    row.system,
                    mb(row.single_mb_s),
                    partial(&row.single),
                    x(row.single_vs_keeper),
                    x(row.single_vs_raw),
                    mb(row.parallel_mb_s),
                    partial(&row.parallel),
                    x(row.parallel_vs_keeper),
                    x(row.parallel_vs_raw),
                );
            }
            let partial = t.rows.iter().any(|r| {
                [&r.single, &r.parallel]
                    .iter()
                    .any(|t| t.is_some_and(|t| !t.complete))
            });
            if partial {
                let _ = writeln!(
                    md,
                    "\n\"partial\": some connections ended before all their bytes were acknowledged (or the time bound \
                     hit); the rate counts acknowledged bytes only."
                );
            }
            let _ = writeln!(md);
        }
        Item::Failed { error } => {
            let _ = writeln!(md, "Not measured: {error}\n");
        }
        Item::Skipped { skipped } => {
            let _ = writeln!(md, "Skipped: {skipped}\n");
        }
    }
    picture(
        &mut md,
        &charts.throughput,
        prefix,
        THROUGHPUT_SVG,
        "Throughput per system",
    );

    let _ = writeln!(md, "## 4. Footprint\n");
    match &r.footprint {
        Item::Done(f) => {
            let release = f
                .pam_lite_binary
                .as_deref()
                .is_some_and(|p| p.contains("/release/"));
            let _ = writeln!(
                md,
                "* `pam-lite` binary ({}): **{}**\n\
                 * Keeper's tube native module as installed (what Commander loads for WebRTC): {}\n\
                 * Commander's venv (keepercommander 18.1.8 + keeper-pam-webrtc-rs 2.2.9 and their dependencies, \
                 without the Python interpreter): {}\n",
                if release {
                    "release profile: stripped, Rust dependencies linked in, needs only libc"
                } else {
                    "NOT a release build: size and memory are not representative"
                },
                f.pam_lite_binary_bytes
                    .map(|b| format!("{:.1} MiB ({b} bytes)", b as f64 / 1048576.0))
                    .unwrap_or_else(|| "–".into()),
                f.keeper_native_module_bytes
                    .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
                    .unwrap_or_else(|| "–".into()),
                f.commander_venv_bytes
                    .map(|b| format!("{:.0} MiB", b as f64 / 1048576.0))
                    .unwrap_or_else(|| "–".into()),
            );
            let _ = writeln!(
                md,
                "| process | RSS, one idle tunnel (MiB) | peak RSS while moving {} MiB (MiB) |\n|---|---|---|",
                f.moving_bytes >> 20
            );
            for row in &f.memory {
                match &row.not_measured {
                    Some(why) if row.idle.is_none() => {
                        let _ = writeln!(md, "| {} | not measured: {} | |", row.system, cell(why));
                    }
                    _ => {
                        let _ = writeln!(
                            md,
                            "| {} | {} | {} |",
                            row.system,
                            mib_of_kib(row.idle.map(|m| m.rss_kib)),
                            mib_of_kib(row.moving.map(|m| m.hwm_kib.max(m.rss_kib))),
                        );
                    }
                }
            }
            let _ = writeln!(
                md,
                "\n| process start → first router request | p50 ms | p95 ms | × pam-lite | peak RSS then (MiB) |\n|---|---|---|---|---|"
            );
            for row in &f.start {
                if let Some(why) = &row.not_measured {
                    let _ = writeln!(md, "| {} | not measured: {} | | | |", row.system, cell(why));
                    continue;
                }
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    row.system,
                    ms(row.to_first_request.map(|s| s.p50_ms)),
                    ms(row.to_first_request.map(|s| s.p95_ms)),
                    x(row.p50_vs_pam_lite),
                    mib_of_kib(row.hwm_at_request_kib),
                );
            }
            let _ = writeln!(md);
        }
        Item::Failed { error } => {
            let _ = writeln!(md, "Not measured: {error}\n");
        }
        Item::Skipped { skipped } => {
            let _ = writeln!(md, "Skipped: {skipped}\n");
        }
    }

    let _ = writeln!(
        md,
        "## 5. Scale: N concurrent launches in one smol process\n"
    );
    match &r.scale {
        Item::Done(rows) => {
            let _ = writeln!(
                md,
                "All N launches start at once (pam-lite `fast`, one smol executor thread, same emulated network as \
                 item 1); memory is the launching process's alone (the emulator runs in the parent).\n"
            );
            let _ = writeln!(md, "| N | ready | TubeReady p50 / p99 ms | first echo p50 / p99 ms | wall s | CPU ms per launch | RSS with N tunnels open (MiB) | KiB per tunnel |\n|---|---|---|---|---|---|---|---|");
            for s in rows {
                let _ = writeln!(
                    md,
                    "| {} | {} / {} | {} / {} | {} / {} | {:.1} | {} | {} | {} |",
                    s.n,
                    s.echo_ok,
                    s.n,
                    ms(s.tube_ready.map(|v| v.p50_ms)),
                    ms(s.tube_ready.map(|v| v.p99_ms)),
                    ms(s.first_echo.map(|v| v.p50_ms)),
                    ms(s.first_echo.map(|v| v.p99_ms)),
                    s.wall_ms / 1000.0,
                    s.cpu_ms_per_launch
                        .map(|c| format!("{c:.1}"))
                        .unwrap_or_else(|| "–".into()),
                    mib_of_kib(Some(s.rss_open_kib)),
                    s.kib_per_tunnel
                        .map(|k| format!("{k:.0}"))
                        .unwrap_or_else(|| "–".into()),
                );
            }
            let ok: Vec<&ScaleResult> = rows.iter().filter(|s| s.echo_ok > 0).collect();
            if let (Some(a), Some(b)) = (ok.first(), ok.last()) {
                if b.echo_ok > a.echo_ok {
                    let marginal = (b.rss_open_kib as f64 - a.rss_open_kib as f64)
                        / (b.echo_ok - a.echo_ok) as f64;
                    let _ = writeln!(
                        md,
                        "\nMarginal memory per tunnel between N = {} and N = {}: **{marginal:.0} KiB** (the per-tunnel \
                         column also carries the process's fixed start-up allocations, spread over N).",
                        a.n, b.n
                    );
                }
            }
            for s in rows {
                if let Some(e) = &s.first_error {
                    let _ = writeln!(md, "\nN = {}: first error: {}", s.n, cell(e));
                }
            }
            let _ = writeln!(md);
            picture(
                &mut md,
                &charts.scale,
                prefix,
                SCALE_SVG,
                "Memory and p99 against N",
            );
        }
        Item::Failed { error } => {
            let _ = writeln!(md, "Not measured: {error}\n");
        }
        Item::Skipped { skipped } => {
            let _ = writeln!(md, "Skipped: {skipped}\n");
        }
    }

    if let Item::Done(it) = &r.time_to_ready {
        if let Some((fast, w)) = it
            .rows
            .first()
            .and_then(|r| r.waterfall.as_ref().map(|w| (r, w)))
        {
            let _ = writeln!(
                md,
                "## Where `{}`'s time goes (median checkpoint offsets, item 1)\n\n| checkpoint | ms |\n|---|---|",
                fast.system.label
            );
            for (name, at) in w.checkpoints() {
                let _ = writeln!(md, "| {} | {at:.0} |", cell(&name));
            }
            let _ = writeln!(md);
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_764_165_600), "2025-11-26 14:00 UTC");
    }

    fn row(system: crate::ready::System, ok: usize, cps: &[(&str, f64)]) -> crate::ready::ReadyRow {
        use crate::timing_file::{TimingEntry, TimingFile};
        crate::ready::ReadyRow {
            system,
            first_echo: None,
            tube_ready: None,
            ok,
            failed: 0,
            skipped: 0,
            first_error: None,
            p50_vs_fast: None,
            p95_vs_fast: None,
            not_measured: None,
            waterfall: (!cps.is_empty()).then(|| TimingFile {
                entries: cps
                    .iter()
                    .map(|(n, ms)| TimingEntry {
                        phase: "p".into(),
                        name: n.to_string(),
                        ms: *ms,
                        summary: false,
                    })
                    .collect(),
                total_ms: cps.iter().map(|c| c.1).fold(0.0, f64::max),
            }),
        }
    }

    fn report(time_to_ready: Item<ReadyItem>, scale: Item<Vec<ScaleResult>>) -> Report {
        Report {
            meta: Meta {
                date_utc: utc(0),
                machine: "m".into(),
                cores: 2,
                kernel: "k".into(),
                git_commit: None,
                netns: false,
                command: "c".into(),
                wall_secs: 1.0,
            },
            plan: Plan::new(crate::plan::Mode::Tiny),
            time_to_ready,
            cold_router: Item::Skipped {
                skipped: "test".into(),
            },
            throughput: Item::Skipped {
                skipped: "test".into(),
            },
            footprint: Item::Skipped {
                skipped: "test".into(),
            },
            scale,
        }
    }

    #[test]
    fn the_waterfall_picture_holds_fast_commander_1984_and_the_real_commander() {
        use crate::charts::tests::{parse, rects_of, texts};
        let systems = crate::ready::systems();
        let mut rows = Vec::new();
        for s in systems {
            let cps: Vec<(&str, f64)> = match &s.kind {
                SystemKind::Commander => vec![
                    ("start_rust_tunnel_returned", 4000.0),
                    ("first_byte_echoed", 5200.0),
                ],
                SystemKind::InProcess {
                    profile: "commander-1984",
                    ..
                } => vec![
                    ("enter", 1.0),
                    ("pre_offer_sleep_done", 2500.0),
                    ("first_byte_echoed", 3300.0),
                ],
                _ => vec![
                    ("enter", 1.0),
                    ("relay_creds_ok", 300.0),
                    ("create_tube_ok", 310.0),
                    ("first_byte_echoed", 2200.0),
                ],
            };
            rows.push(row(s, 3, &cps));
        }
        let item = ReadyItem {
            network: crate::network::Network::REFERENCE,
            launches_per_system: 3,
            concurrency: 1,
            floor_ms: 325,
            floor_with_gateway_ms: 865,
            fast_p50_vs_floor: None,
            fast_p50_vs_floor_with_gateway: None,
            rows,
            wall_secs: 1.0,
        };
        let r = report(
            Item::Done(item),
            Item::Done(vec![
                ScaleResult {
                    n: 10,
                    echo_ok: 10,
                    rss_open_kib: 20_480,
                    ..ScaleResult::default()
                },
                ScaleResult {
                    n: 50,
                    echo_ok: 0,
                    first_error: Some("all failed".into()),
                    ..ScaleResult::default()
                },
            ]),
        );
        let c = charts(&r);
        let svg = c
            .waterfall
            .as_ref()
            .expect("item 1 ran")
            .as_ref()
            .expect("drawn");
        let doc = parse(svg);
        let t = texts(&doc);
        // Exactly three lanes, in the systems' order, each with one bar per checkpoint.
        let lanes: Vec<&String> = t
            .iter()
            .filter(|s| s.contains("(median of 3 launches)"))
            .collect();
        assert_eq!(
            lanes,
            vec![
                "pam-lite fast · smol (median of 3 launches)",
                "pam-lite commander-1984 · smol (median of 3 launches)",
                "Commander 18.1.8 (real, Python) (median of 3 launches)"
            ]
        );
        assert_eq!(rects_of(&doc, crate::charts::colour(0)), 4);
        assert_eq!(rects_of(&doc, crate::charts::colour(1)), 3);
        assert_eq!(rects_of(&doc, crate::charts::colour(2)), 2);
        assert!(t.iter().any(|s| s == "start_rust_tunnel_returned"));
        // Items that did not run draw nothing; a failed N is left out of the scale picture.
        assert!(c.throughput.is_none());
        assert!(c.scale.as_ref().is_some_and(|s| s.is_ok()));
        let names: Vec<&str> = c.files().iter().map(|f| f.0).collect();
        assert_eq!(names, vec![WATERFALL_SVG, SCALE_SVG]);
        // The page links what was drawn, under the prefix it is given.
        let md = markdown(&r, &c, "bench-X-");
        assert!(md.contains("](bench-X-waterfall.svg)"), "{md}");
        assert!(md.contains("](bench-X-scale.svg)"), "{md}");
        assert!(!md.contains("throughput.svg"), "{md}");
    }

    #[test]
    fn a_chart_that_cannot_be_drawn_says_why_in_the_page() {
        let r = report(
            Item::Skipped {
                skipped: "t".into(),
            },
            Item::Done(vec![ScaleResult {
                n: 2,
                first_error: Some("boom".into()),
                ..ScaleResult::default()
            }]),
        );
        let c = charts(&r);
        assert!(c.scale.as_ref().is_some_and(|s| s.is_err()));
        let md = markdown(&r, &c, "");
        assert!(
            md.contains("Memory and p99 against N: chart not drawn: no points to draw"),
            "{md}"
        );
        assert!(c.files().is_empty());
    }

    #[test]
    fn cells_are_safe() {
        assert_eq!(cell("a|b\nc"), "a/b c");
        assert!(cell(&"é".repeat(200)).ends_with('…'));
    }
}
