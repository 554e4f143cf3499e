//! `pam-lite-bench draw-timing`: `--timing-json` files side by side as one SVG Gantt chart; a malformed
//! file is refused with a clear error, never a panic.

use std::path::PathBuf;
use std::process::Command;

/// Lane colours as the chart writes them (`charts::PALETTE`, first two).
const LANE_COLOURS: [&str; 2] = ["#1F77B4", "#D62728"];

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pam-lite-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn draw(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pam-lite-bench"))
        .arg("draw-timing")
        .args(args)
        .output()
        .expect("run pam-lite-bench")
}

#[test]
fn draws_several_files_side_by_side() {
    let d = dir("draw");
    let a = d.join("fast.json");
    let b = d.join("commander.json");
    std::fs::write(
        &a,
        r#"{"entries":[
            {"phase":"pam-launch:webrtc-tunnel","name":"enter","ms":0.4,"summary":false},
            {"phase":"pam-launch:webrtc-tunnel","name":"relay_creds_ok","ms":385.0,"summary":false},
            {"phase":"pam-launch:total","name":"ready_for_prompt","ms":2210.0,"summary":true},
            {"phase":"pam-launch:webrtc-tunnel","name":"data_channel_open","ms":2200.0,"summary":false}
        ],"total_ms":2210.0}"#,
    )
    .unwrap();
    std::fs::write(
        &b,
        r#"{"entries":[
            {"phase":"pam-launch:webrtc-tunnel","name":"enter","ms":1.0,"summary":false},
            {"phase":"pam-launch:webrtc-tunnel","name":"<pre_offer> & \u001b[31m","ms":3300.0,"summary":false}
        ],"total_ms":3300.0}"#,
    )
    .unwrap();
    let out = d.join("w.svg");
    let o = draw(&[
        a.as_os_str(),
        b.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(&out).expect("the SVG");
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(str::trim))
        .collect();
    let bars = |colour: &str| {
        doc.descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some(colour))
            .count()
    };
    // One lane per file, named after it; one bar per checkpoint (the summary line is not one).
    assert_eq!(bars(LANE_COLOURS[0]), 3);
    assert_eq!(bars(LANE_COLOURS[1]), 2);
    for label in [
        "fast.json",
        "commander.json",
        "relay_creds_ok",
        "data_channel_open",
        "385",
    ] {
        assert!(texts.contains(&label), "{label} in {texts:?}");
    }
    assert!(!texts.contains(&"ready_for_prompt"));
    // Outside text arrives escaped and without control characters.
    assert!(texts.contains(&"<pre_offer> & ?[31m"), "{texts:?}");
    assert!(!svg.contains('\u{1b}'));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn refuses_a_malformed_file_with_a_clear_error() {
    let d = dir("draw-bad");
    let good = d.join("good.json");
    std::fs::write(
        &good,
        r#"{"entries":[{"phase":"p","name":"enter","ms":1}],"total_ms":1}"#,
    )
    .unwrap();
    let out = d.join("w.svg");
    for (name, body, says) in [
        (
            "trunc.json",
            r#"{"entries":[{"phase":"p""#,
            "is not a --timing-json file",
        ),
        (
            "negative.json",
            r#"{"entries":[{"phase":"p","name":"x","ms":-5}],"total_ms":1}"#,
            "ms -5",
        ),
        (
            "empty.json",
            r#"{"entries":[],"total_ms":0}"#,
            "has no checkpoints to draw",
        ),
    ] {
        let bad = d.join(name);
        std::fs::write(&bad, body).unwrap();
        let o = draw(&[
            good.as_os_str(),
            bad.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.starts_with("pam-lite-bench: draw-timing: "),
            "{stderr}"
        );
        assert!(
            stderr.contains(name) && stderr.contains(says),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists(), "nothing is written for a bad input");
    }
    let o = draw(&[
        d.join("missing.json").as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
    let _ = std::fs::remove_dir_all(&d);
}
