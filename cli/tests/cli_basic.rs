//! The binary's surface without any network: help, usage errors, ticket validation and redaction.

mod common;

use std::time::Duration;

use common::{run, write_temp};

const DEADLINE: Duration = Duration::from_secs(20);

/// A valid ticket (server key 7 is Keeper's built-in EC key, so no key material is needed here).
fn valid_ticket() -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "router_url": "https://connect.example.test",
        "auth": {"session_token_b64url": "U0VTU0lPTi1UT0tFTi1TRUNSRVQ", "server_key_id": 7},
        "gateway_uid": "GwGwGwGwGwGwGwGwGwGw-_",
        "record_uid": "RecRecRecRecRecRecRec_",
        "traffic_encryption_seed_b64": "c2VlZC1zZWNyZXQtc2VlZC1zZWNyZXQtc2VlZC1zZWM=",
        "protocol": "ssh",
        "target": {"hostName": "10.0.0.5", "port": "22"},
        "guacd_params": {"username": "alice", "password": "Hunter2Password", "private-key": "-----BEGIN KEY-----"},
        "two_factor_value": "424242"
    })
}

#[test]
fn help_explains_commands_and_exit_codes() {
    let r = run(&["--help"], &[], b"", DEADLINE);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for needle in [
        "launch",
        "tunnel",
        "emulator",
        "ticket",
        "Exit codes",
        "11  WebRTC session disconnected",
        "KROUTER_URL",
    ] {
        assert!(
            r.stdout.contains(needle),
            "--help lacks {needle:?}:\n{}",
            r.stdout
        );
    }
    for sub in [
        &["launch", "--help"][..],
        &["tunnel", "--help"],
        &["emulator", "--help"],
        &["ticket", "check", "--help"],
    ] {
        let r = run(sub, &[], b"", DEADLINE);
        assert_eq!(r.code, Some(0), "{sub:?}: {}", r.stderr);
        assert!(r.stdout.len() > 200, "{sub:?} help too short: {}", r.stdout);
    }
    let r = run(&["launch", "--help"], &[], b"", DEADLINE);
    for flag in [
        "--demo",
        "--ticket",
        "--stdin",
        "--no-trickle-ice",
        "--runtime",
        "--profile",
        "--timing",
        "--timing-json",
        "--verbose",
        "commander-1984",
    ] {
        assert!(r.stdout.contains(flag), "launch --help lacks {flag}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["launch"][..],
        &["launch", "--demo", "--ticket", "x.json"],
        &["launch", "--demo", "--profile", "slow"],
        &["tunnel", "--demo"],
        &["frobnicate"],
    ] {
        let r = run(args, &[], b"", DEADLINE);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn missing_ticket_file_is_a_local_error_naming_the_path() {
    let path = common::temp_path("does-not-exist.json");
    let p = path.to_str().unwrap();
    for args in [
        &["ticket", "check", p][..],
        &["launch", "--ticket", p, "--stdin"],
    ] {
        let r = run(args, &[], b"", DEADLINE);
        assert_eq!(r.code, Some(1), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(p),
            "message should name the path: {}",
            r.stderr
        );
    }
}

#[test]
fn invalid_tickets_exit_3_and_name_the_field() {
    type Mutate = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Mutate)> = vec![
        (
            "auth.session_token_b64url",
            Box::new(|v| v["auth"]["session_token_b64url"] = "%%%".into()),
        ),
        (
            "auth.server_key_id",
            Box::new(|v| v["auth"]["server_key_id"] = 19.into()),
        ),
        (
            "auth.server_public_key_b64url",
            Box::new(|v| v["auth"]["server_public_key_b64url"] = "AAAA".into()),
        ),
        (
            "traffic_encryption_seed_b64",
            Box::new(|v| {
                v.as_object_mut()
                    .unwrap()
                    .remove("traffic_encryption_seed_b64");
            }),
        ),
        (
            "router_url",
            Box::new(|v| v["router_url"] = "connect.example.test".into()),
        ),
        (
            "target.port",
            Box::new(|v| v["target"]["port"] = 70000.into()),
        ),
        ("version", Box::new(|v| v["version"] = 7.into())),
    ];
    for (field, mutate) in cases {
        let mut v = valid_ticket();
        mutate(&mut v);
        let path = write_temp("bad.json", &v.to_string());
        let p = path.to_str().unwrap();
        for args in [
            &["ticket", "check", p][..],
            &["launch", "--ticket", p, "--stdin"],
        ] {
            let r = run(args, &[], b"", DEADLINE);
            assert_eq!(r.code, Some(3), "{field} {args:?}: {}", r.stderr);
            assert!(
                r.stderr.contains(&format!("`{field}`")),
                "{field}: {}",
                r.stderr
            );
            assert!(r.stderr.contains(p), "names the file: {}", r.stderr);
        }
    }
    let path = write_temp("notjson.json", "{\"version\": 1,");
    let r = run(
        &["ticket", "check", path.to_str().unwrap()],
        &[],
        b"",
        DEADLINE,
    );
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("not valid JSON"), "{}", r.stderr);
}

#[test]
fn ticket_check_redacts_secrets() {
    let path = write_temp("good.json", &valid_ticket().to_string());
    let r = run(
        &["ticket", "check", path.to_str().unwrap()],
        &[],
        b"",
        DEADLINE,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    for secret in [
        "U0VTU0lPTi1UT0tFTi1TRUNSRVQ",
        "SESSION-TOKEN-SECRET",
        "c2VlZC1zZWNyZXQtc2VlZC1zZWNyZXQtc2VlZC1zZWM",
        "Hunter2Password",
        "BEGIN KEY",
        "424242",
    ] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    for shown in [
        "GwGwGwGwGwGwGwGwGwGw-_",
        "10.0.0.5:22",
        "username=alice",
        "<redacted",
        "id 7",
    ] {
        assert!(r.stdout.contains(shown), "{shown} missing:\n{}", r.stdout);
    }
}

#[test]
fn interactive_launch_without_a_terminal_is_a_local_error() {
    // stdin is a pipe here: refused before the emulator even starts.
    let r = run(&["launch", "--demo"], &[], b"", DEADLINE);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("--stdin"), "{}", r.stderr);
    assert!(!r.stderr.contains("emulated router"), "{}", r.stderr);
}

#[test]
fn bad_environment_is_a_configuration_error_naming_the_variable() {
    let path = write_temp("env.json", &valid_ticket().to_string());
    let p = path.to_str().unwrap();
    for (var, value) in [
        ("KROUTER_URL", "ftp://router"),
        ("PAM_WEBRTC_POLL_MS", "soon"),
    ] {
        let r = run(
            &["launch", "--ticket", p, "--stdin"],
            &[(var, value)],
            b"",
            DEADLINE,
        );
        assert_eq!(r.code, Some(3), "{var}: {}", r.stderr);
        assert!(r.stderr.contains(var), "{var}: {}", r.stderr);
    }
}
