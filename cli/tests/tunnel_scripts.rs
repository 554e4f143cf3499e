//! `pam-lite tunnel` as scripts and ssh use it, through the in-process emulator: `--stdio` (one
//! connection on stdin/stdout, its exit codes), the readiness JSON line and `--ready-file`, graceful
//! SIGTERM / SIGINT, and the generated completions and man page. Both runtimes where a driver is involved.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const DEADLINE: Duration = Duration::from_secs(60);

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// 4 MiB through `tunnel --stdio` to the demo's echo server and back: more than the tube's high-water
/// mark, so the stdin reader's flow control and the EOF after held data are exercised.
fn stdio_echo(runtime: &str) {
    let data = payload(4 << 20, 0xC0FFEE);
    let r = common::run(
        &["tunnel", "--demo", "--stdio", "--runtime", runtime],
        &[],
        &data,
        DEADLINE,
    );
    assert!(!r.timed_out, "{runtime}: timed out; stderr:\n{}", r.stderr);
    assert_eq!(r.code, Some(0), "{runtime}: stderr:\n{}", r.stderr);
    // `run` decodes stdout lossily; compare through the same lens on both sides.
    let want = String::from_utf8_lossy(&data).into_owned();
    assert_eq!(r.stdout.len(), want.len(), "{runtime}: length");
    assert_eq!(
        Sha256::digest(r.stdout.as_bytes()),
        Sha256::digest(want.as_bytes()),
        "{runtime}: SHA-256"
    );
}

#[test]
fn stdio_carries_one_connection_smol() {
    stdio_echo("smol");
}

#[test]
fn stdio_carries_one_connection_blocking() {
    stdio_echo("blocking");
}

/// The tunnel opens but the gateway cannot reach the target: a clear message and exit code 12.
#[test]
fn stdio_target_unreachable_is_exit_12() {
    for runtime in ["smol", "blocking"] {
        let r = common::run(
            &[
                "tunnel",
                "--demo",
                "--stdio",
                "--target",
                "127.0.0.1:1",
                "--runtime",
                runtime,
            ],
            &[],
            b"x",
            DEADLINE,
        );
        assert_eq!(r.code, Some(12), "{runtime}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("could not open the connection to the target (ConnectionFailed)"),
            "{runtime}: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty());
    }
}

/// The tunnel itself cannot open (nothing listens at the router URL): one of the launch's own exit codes
/// (router unreachable, 4, whether the HTTP call or the WebSocket meets it first), not 12.
#[test]
fn stdio_router_unreachable_is_a_launch_error() {
    let ticket = common::write_temp(
        "unreachable.json",
        &serde_json::json!({
            "version": 1,
            "router_url": "http://127.0.0.1:1",
            "auth": {"session_token_b64url": "U0VTU0lPTi1UT0tFTg", "server_key_id": 7},
            "gateway_uid": "GwGwGwGwGwGwGwGwGwGw-_",
            "record_uid": "RecRecRecRecRecRecRec_",
            "traffic_encryption_seed_b64": "c2VlZA==",
        })
        .to_string(),
    );
    let r = common::run(
        &["tunnel", "--stdio", "--ticket", ticket.to_str().unwrap()],
        &[("PAM_GATEWAY_OFFER_MAX_ATTEMPTS", "1")],
        b"",
        DEADLINE,
    );
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert!(r.stderr.contains("127.0.0.1:1"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

/// Readiness for scripts (JSON line + ready file), a connection through the announced address, then a
/// signal: every connection is closed, the exit code is 0.
fn ready_then_signal(runtime: &str, signal: &str) {
    let ready = common::temp_path("ready.json");
    let mut child = common::spawn(
        &[
            "tunnel",
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            ready.to_str().unwrap(),
            "--runtime",
            runtime,
        ],
        &[],
    );
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let stderr = common::drain(child.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let _ = tx.send(line);
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
    });
    let line = rx.recv_timeout(DEADLINE).expect("the readiness line");
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("a JSON line");
    let addr = v["listening"].as_str().expect("listening").to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    // The file exists complete by the time the line is out.
    let file = std::fs::read_to_string(&ready).expect("the ready file");
    assert_eq!(file.trim(), line.trim());

    let mut s = TcpStream::connect(&addr).expect("connect to the tunnel");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).expect("echo");
    assert_eq!(&got, b"ping");

    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let start = Instant::now();
    // The open connection is closed by the tunnel (not left hanging).
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest);
    assert!(
        n.is_ok(),
        "{runtime}/{signal}: the connection was not closed: {n:?}"
    );
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{runtime}/{signal}: no exit"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let err = stderr.join().unwrap_or_default();
    assert_eq!(code, Some(0), "{runtime}/{signal}: {err}");
    assert!(
        err.contains(&format!("SIG{signal}: closing the tunnel's connections")),
        "{err}"
    );
    assert!(err.contains("tunnel closed"), "{err}");
}

#[test]
fn ready_line_and_sigterm_smol() {
    ready_then_signal("smol", "TERM");
}

#[test]
fn ready_line_and_sigint_blocking() {
    ready_then_signal("blocking", "INT");
}

#[test]
fn completions_for_each_shell() {
    for (shell, needle) in [
        ("bash", "complete -F _pam__lite"),
        ("zsh", "#compdef pam-lite"),
        ("fish", "complete -c pam-lite"),
    ] {
        let r = common::run(&["completions", shell], &[], b"", DEADLINE);
        assert_eq!(r.code, Some(0), "{shell}: {}", r.stderr);
        assert!(r.stdout.contains(needle), "{shell}: {}", r.stdout);
        // fish names long options without their dashes (`-l ready-file`).
        for word in [
            "launch",
            "tunnel",
            "stdio",
            "ready-file",
            "ssh",
            "completions",
        ] {
            assert!(r.stdout.contains(word), "{shell} lacks {word}");
        }
    }
    let r = common::run(&["completions", "tcsh"], &[], b"", DEADLINE);
    assert_eq!(r.code, Some(2));
}

#[test]
fn man_pages() {
    let r = common::run(&["man"], &[], b"", DEADLINE);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.starts_with(".ie"),
        "{}",
        &r.stdout[..80.min(r.stdout.len())]
    );
    for word in ["pam\\-lite", "launch", "tunnel", "SUBCOMMANDS"] {
        assert!(r.stdout.contains(word), "man page lacks {word}");
    }
    let dir = common::temp_path("man");
    let r = common::run(&["man", "--dir", dir.to_str().unwrap()], &[], b"", DEADLINE);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for page in [
        "pam-lite.1",
        "pam-lite-launch.1",
        "pam-lite-tunnel.1",
        "pam-lite-ssh.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_default();
        assert!(text.len() > 200, "{page} missing or empty");
    }
    assert!(std::fs::read_to_string(dir.join("pam-lite-tunnel.1"))
        .unwrap()
        .contains("stdio"));
}

/// `pam-lite ssh` builds ssh's command line: the ProxyCommand (this binary, quoted for the shell and for
/// ssh's `%` expansion, with the runtime and profile), and without ssh arguments the ticket's target as
/// the destination, with the record's login. `PAM_LITE_SSH=echo` shows what ssh would get.
#[test]
fn pam_lite_ssh_command_line() {
    let dir = common::temp_path("100% dir");
    std::fs::create_dir_all(&dir).unwrap();
    let ticket = dir.join("t.json");
    std::fs::write(
        &ticket,
        serde_json::json!({
            "version": 1,
            "router_url": "https://connect.example.test",
            "auth": {"session_token_b64url": "U0VTU0lPTi1UT0tFTg", "server_key_id": 7},
            "gateway_uid": "GwGwGwGwGwGwGwGwGwGw-_",
            "record_uid": "RecRecRecRecRecRecRec_",
            "traffic_encryption_seed_b64": "c2VlZA==",
            "target": {"hostName": "db-1.internal", "port": 2222},
            "guacd_params": {"username": "alice", "password": "Hunter2Password"},
        })
        .to_string(),
    )
    .unwrap();
    let t = ticket.to_str().unwrap();
    let r = common::run(
        &["ssh", "--ticket", t, "--runtime", "blocking"],
        &[("PAM_LITE_SSH", "echo")],
        b"",
        DEADLINE,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let want_proxy = format!(
        "ProxyCommand='{}' tunnel --stdio --ticket '{}' --runtime blocking --profile 'fast'",
        common::BIN,
        t.replace('%', "%%")
    );
    assert_eq!(
        r.stdout.trim(),
        format!("-o {want_proxy} -p 2222 alice@db-1.internal")
    );
    assert!(!r.stdout.contains("Hunter2Password"));
    // With ssh arguments they go through unchanged, after the ProxyCommand.
    let r = common::run(
        &["ssh", "--ticket", t, "--", "-l", "bob", "host", "uptime"],
        &[("PAM_LITE_SSH", "echo")],
        b"",
        DEADLINE,
    );
    assert!(
        r.stdout
            .trim()
            .ends_with("--profile 'fast' -l bob host uptime"),
        "{}",
        r.stdout
    );
    // A bad ticket is reported before ssh runs.
    let r = common::run(
        &["ssh", "--ticket", "/nonexistent/t.json"],
        &[("PAM_LITE_SSH", "echo")],
        b"",
        DEADLINE,
    );
    assert_eq!(r.code, Some(1));
    assert!(r.stdout.is_empty());
}
