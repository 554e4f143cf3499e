//! The benchmark harness still builds and runs: one tiny iteration (`--tiny`: 1 launch per system, 1 MiB,
//! N = 2) whose JSON must hold real numbers for the pam-lite rows, and whose page links its pictures. This is not a benchmark: nothing here
//! asserts on speed.
//!
//! The Python systems (Keeper's tube, Commander) are left out unless PAM_LITE_BENCH_SMOKE_PYTHON=1 (they
//! need the interop venv and a network namespace; the interop suite covers them). The `pam-lite` CLI
//! rows run when a `pam-lite` binary sits next to the harness, and are "not measured" otherwise.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn tiny_run_writes_every_item() {
    let out = std::env::temp_dir().join(format!("pam-lite-bench-smoke-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pam-lite-bench"));
    cmd.args(["--tiny", "--no-build", "--no-setup", "--out"])
        .arg(&out);
    if std::env::var("PAM_LITE_BENCH_SMOKE_PYTHON").as_deref() != Ok("1") {
        cmd.arg("--no-python");
    }
    let started = Instant::now();
    let output = cmd.output().expect("run pam-lite-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "pam-lite-bench failed: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "the tiny run must stay tiny"
    );

    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    for heading in [
        "## 1. Time to ready",
        "## 2. Cold router",
        "## 3. Tunnel throughput",
        "## 4. Footprint",
        "## 5. Scale",
    ] {
        assert!(md.contains(heading), "{heading} missing from:\n{md}");
    }
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json"),
    )
    .expect("valid JSON");

    for item in ["time_to_ready", "cold_router"] {
        let rows = json[item]["rows"].as_array().expect("rows");
        for label in ["pam-lite fast · smol", "pam-lite fast · blocking"] {
            let row = rows
                .iter()
                .find(|r| r["system"]["label"] == label)
                .unwrap_or_else(|| panic!("{item}: no row {label}"));
            assert_eq!(row["ok"], 1, "{item}/{label}: {row}");
            assert!(row["first_echo"]["p50_ms"]
                .as_f64()
                .is_some_and(|v| v > 0.0));
        }
        // The reference row's ratio to itself.
        assert_eq!(rows[0]["p50_vs_fast"], 1.0);
        // Every system has a row, measured or saying why not.
        assert!(rows.iter().all(|r| r["ok"].as_u64() > Some(0)
            || r["not_measured"].is_string()
            || r["failed"].as_u64() > Some(0)));
    }
    assert!(json["time_to_ready"]["floor_ms"].as_u64() == Some(325));

    let rows = json["throughput"]["rows"]
        .as_array()
        .expect("throughput rows");
    for label in [
        "pam-lite pair · smol",
        "pam-lite pair · blocking",
        "raw TCP loopback",
    ] {
        let row = rows
            .iter()
            .find(|r| r["system"] == label)
            .unwrap_or_else(|| panic!("no throughput row {label}"));
        assert_eq!(row["single"]["complete"], true, "{label}: {row}");
        assert_eq!(row["single"]["bytes"], 1 << 20);
        assert_eq!(row["parallel"]["complete"], true, "{label}: {row}");
    }

    let memory = json["footprint"]["memory"].as_array().expect("memory rows");
    assert!(!memory.is_empty());

    let scale = json["scale"].as_array().expect("scale results");
    assert_eq!(scale.len(), 1);
    assert_eq!(scale[0]["n"], 2);
    assert_eq!(scale[0]["echo_ok"], 2, "{}", scale[0]);

    // The pictures: linked from the page, well-formed, one lane / bar per system with its label.
    for (file, labels) in [
        (
            "waterfall.svg",
            &[
                "pam-lite fast · smol (median of 1 launches)",
                "pam-lite commander-1984 · smol (median of 1 launches)",
                "first_byte_echoed",
            ][..],
        ),
        (
            "throughput.svg",
            &[
                "pam-lite pair · smol",
                "pam-lite pair · blocking",
                "raw TCP loopback",
            ][..],
        ),
        (
            "scale.svg",
            &["RSS, N tunnels open", "TubeReady p99", "first echo p99"][..],
        ),
    ] {
        assert!(
            md.contains(&format!("]({file})")),
            "{file} not linked from:\n{md}"
        );
        let svg = std::fs::read_to_string(out.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{file}: {e}"));
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::trim))
            .collect();
        for l in labels {
            assert!(texts.contains(l), "{file}: {l} in {texts:?}");
        }
    }

    let _ = std::fs::remove_dir_all(&out);
}
