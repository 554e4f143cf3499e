//! No secret in any output of a fully traced run (issue 13): `launch --stdin` and `tunnel --stdio`
//! with `-vvv` and `--timing-json`, both runtimes, against the in-process emulator with a fixed seed (so
//! the test knows the ticket's secrets; `--demo` runs the same code with secrets the test cannot know).
//! The ticket adds a target password, a private-key passphrase, TURN credentials and a 2FA value. Every
//! byte of stdout, stderr and the timing file is searched for each secret in the encodings a log could
//! plausibly use (as written, base64 / base64url, hex, and the raw bytes when they are text).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use pam_lite_emulator::{Emulator, EmulatorConfig, TargetConfig};

const DEADLINE: Duration = Duration::from_secs(60);
const PASSWORD: &str = "Tgt-Passw0rd-7f3a9c";
const PASSPHRASE: &str = "Key-Passphrase-55d1e";
const TURN_PASSWORD: &str = "Turn-Secret-0b8e2";
const TWO_FACTOR: &str = "2fa-914273";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Each secret in every form worth looking for (never shorter than 8 characters: no false hits).
fn needles(emu: &Emulator) -> Vec<(String, String)> {
    let t = emu.ticket();
    let mut n = Vec::new();
    for (name, bytes) in [
        ("session token", t.session_token()),
        ("traffic seed", t.traffic_seed()),
    ] {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        n.push((name.to_string(), b64.encode(&bytes)));
        n.push((name.to_string(), b64url.encode(&bytes)));
        n.push((name.to_string(), hex(&bytes)));
        n.push((
            name.to_string(),
            format!("{bytes:?}").trim_matches(['[', ']']).to_string(),
        ));
        if let Ok(s) = std::str::from_utf8(&bytes) {
            n.push((name.to_string(), s.to_string()));
        }
    }
    for (name, s) in [
        ("target password", PASSWORD),
        ("key passphrase", PASSPHRASE),
        ("TURN password", TURN_PASSWORD),
        ("two-factor value", TWO_FACTOR),
    ] {
        n.push((name.to_string(), s.to_string()));
        n.push((name.to_string(), hex(s.as_bytes())));
    }
    n.retain(|(_, s)| s.len() >= 8);
    n
}

fn ticket(emu: &Emulator, protocol: &str) -> std::path::PathBuf {
    let mut json = emu.ticket().to_json();
    json["protocol"] = protocol.into();
    json["guacd_params"] = serde_json::json!({
        "username": "admin", "password": PASSWORD, "passphrase": PASSPHRASE,
    });
    json["turn"] = serde_json::json!({"username": "turn-user", "password": TURN_PASSWORD});
    json["two_factor_value"] = TWO_FACTOR.into();
    let p = common::write_temp("secret-ticket.json", &json.to_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    p
}

fn assert_clean(what: &str, text: &str, needles: &[(String, String)]) {
    for (name, needle) in needles {
        assert!(
            !text.contains(needle.as_str()),
            "{what}: the {name} appears in the output"
        );
    }
}

fn traced_run(emu: &Emulator, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) {
    let timing = common::temp_path("timing.json");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-vvv", "--timing-json", timing.to_str().unwrap()]);
    let r = common::run(&all, env, stdin, DEADLINE);
    assert!(!r.timed_out, "{args:?}: timed out\n{}", r.stderr);
    // The launch must really have run (a trace of a failure proves little), with the config that holds
    // the secrets traced (without them) at least once.
    assert_eq!(r.code, Some(0), "{args:?}:\n{}", r.stderr);
    assert!(
        r.stderr.len() > 10_000,
        "{args:?}: a short trace?\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("cfg=ClientConfig"),
        "{args:?}: config not traced"
    );
    let needles = needles(emu);
    // The search can fail: every secret is found, in one of its forms, in the ticket file itself.
    let ticket_text = std::fs::read_to_string(args[args.len() - 1]).unwrap();
    for (name, _) in &needles {
        assert!(
            needles
                .iter()
                .any(|(n, s)| n == name && ticket_text.contains(s.as_str())),
            "the {name} is not in the ticket in any searched form"
        );
    }
    assert_clean(&format!("{args:?} stdout"), &r.stdout, &needles);
    assert_clean(&format!("{args:?} stderr"), &r.stderr, &needles);
    if Path::new(&timing).exists() {
        let t = std::fs::read_to_string(&timing).unwrap();
        assert_clean(&format!("{args:?} timing json"), &t, &needles);
    }
}

#[test]
fn a_traced_launch_prints_no_secret() {
    let emu = Emulator::start(EmulatorConfig {
        seed: Some([7; 32]),
        ..EmulatorConfig::default()
    })
    .unwrap();
    let t = ticket(&emu, "ssh");
    for runtime in ["smol", "blocking"] {
        traced_run(
            &emu,
            &[
                "launch",
                "--stdin",
                "--runtime",
                runtime,
                "--ticket",
                t.to_str().unwrap(),
            ],
            b"echo hi\nexit\n",
            &[("SHELL", "/bin/sh")],
        );
    }
}

#[test]
fn a_traced_tunnel_prints_no_secret() {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let emu = Emulator::start(EmulatorConfig {
        seed: Some([9; 32]),
        target: TargetConfig::Tunnel { forward_to: addr },
        ..EmulatorConfig::default()
    })
    .unwrap();
    let t = ticket(&emu, "ssh");
    for runtime in ["smol", "blocking"] {
        traced_run(
            &emu,
            &[
                "tunnel",
                "--stdio",
                "--runtime",
                runtime,
                "--ticket",
                t.to_str().unwrap(),
            ],
            b"ping through the tunnel\n",
            &[],
        );
    }
}
