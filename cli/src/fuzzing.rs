//! Fuzz entry points for the inputs the CLI reads from outside the process (fuzz/fuzz_targets/ticket.rs
//! and env.rs), also run as never-panics property tests below. Each must return without panicking,
//! whatever `data` is.

use std::ffi::OsString;

use pam_lite_core::profile::{env, Profile};

use crate::settings::{self, KRELAY_URL, KROUTER_URL, PAM_CONNECT_TIMING, VERIFY_SSL};
use crate::ticket::{self, Ticket};

/// The launch ticket file's bytes through the parser and everything the CLI then derives from a ticket
/// that parsed (the offer, warnings, the redacted description, the router URL override).
pub fn fuzz_ticket(data: &[u8]) {
    let mut t = match Ticket::parse(data) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error without a message");
            return;
        }
    };
    let _ = t.check_terminal_protocol();
    let _ = t.launch_offer(None);
    let _ = t.launch_offer(Some((80, 24)));
    let _ = t.launch_offer(Some((u16::MAX, 0)));
    let _ = t.warnings(0);
    let _ = t.warnings(u64::MAX);
    let _ = t.describe();
    let _ = t.guacd_params.to_strings();
    let _ = t.guacd_params.redacted_pairs();
    let _ = format!("{t:?}");
    let url = t.router_url.clone();
    let _ = t.override_router_url(&url, "KROUTER_URL");
}

/// The variables [`fuzz_env`] sets, indexed by a byte of the input.
fn names() -> Vec<&'static str> {
    let mut names = vec![KROUTER_URL, KRELAY_URL, VERIFY_SSL, PAM_CONNECT_TIMING];
    names.extend(env::ALL);
    names
}

/// Environment values as the OS hands them over (not necessarily UTF-8) into the CLI's environment
/// reading (`settings::from_env`: the Commander timing variables, `KROUTER_URL`, `VERIFY_SSL`,
/// `PAM_CONNECT_TIMING`) and, for `KROUTER_URL`, into a ticket's router URL. Input: a profile byte,
/// then NUL-separated records, each a name byte and the raw value.
pub fn fuzz_env(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let names = names();
    let mut vars: Vec<(&str, OsString)> = Vec::new();
    for record in rest.split(|b| *b == 0) {
        let Some((name, value)) = record.split_first() else {
            continue;
        };
        let name = names[usize::from(*name) % names.len()];
        vars.push((name, os_string(value)));
    }
    let profile_names = Profile::names();
    let profile = profile_names
        .get(usize::from(selector) % (profile_names.len() + 1))
        .copied()
        .unwrap_or("no-such-profile");
    let lookup = |name: &str| {
        vars.iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    match settings::from_env(profile, selector & 0x80 != 0, lookup) {
        Ok(s) => {
            if let Some(url) = s.router_url {
                let _ = ticket::validate_router_url(&url);
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
    }
}

#[cfg(unix)]
fn os_string(bytes: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStringExt as _;
    OsString::from_vec(bytes.to_vec())
}

#[cfg(not(unix))]
fn os_string(bytes: &[u8]) -> OsString {
    OsString::from(String::from_utf8_lossy(bytes).into_owned())
}

/// Seeds: real tickets (the emulator's demo ticket as `pam-lite emulator` writes it, a complete ticket
/// with every field of cli/TICKET.md, a minimal one) and environments with every variable set to a
/// value Commander users set.
#[cfg(test)]
pub(crate) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use pam_lite_core::router::envelope::ServerPublicKey;
    use serde_json::json;

    let key7 = ServerPublicKey::keeper(7)
        .map(|k| URL_SAFE_NO_PAD.encode(k.to_sec1()))
        .unwrap_or_default();
    let full = json!({
        "version": 1,
        "router_url": "https://connect.keepersecurity.com/",
        "relay_host": "krelay.keepersecurity.com",
        "verify_tls": true,
        "auth": {
            "session_token_b64url": URL_SAFE_NO_PAD.encode(b"SESSION-TOKEN"),
            "server_key_id": 7,
            "server_public_key_b64url": key7,
            "expires_hint_unix": 0
        },
        "gateway_uid": "GwGwGwGwGwGwGwGwGwGw-_",
        "record_uid": "RecRecRecRecRecRecRec_",
        "traffic_encryption_seed_b64": STANDARD.encode([7u8; 32]),
        "protocol": "ssh",
        "target": {"hostName": "10.0.0.5", "port": 22},
        "credential": {"type": "linked", "user_record_uid": "UserUserUserUserUser12"},
        "guacd_params": {"protocol": "ssh", "hostname": "10.0.0.5", "port": "22",
                         "username": "alice", "password": "pw", "private-key": "PEM",
                         "color-scheme": "gray-black", "font-size": 12},
        "clipboard": {"disableCopy": false, "disablePaste": true},
        "turn": {"username": "u", "password": "p", "expires_unix": 0},
        "two_factor_value": null
    });
    let minimal = json!({
        "version": 1,
        "router_url": "http://127.0.0.1:8080",
        "auth": {"session_token_b64url": "c2Vzc2lvbg", "server_key_id": 1},
        "gateway_uid": "GwGwGwGwGwGwGwGwGwGw-_",
        "record_uid": "RecRecRecRecRecRecRec_",
        "traffic_encryption_seed_b64": STANDARD.encode([7u8; 32]),
        "protocol": "rdp"
    });
    let mut out = vec![
        (
            "ticket",
            serde_json::to_vec_pretty(&full).unwrap_or_default(),
        ),
        ("ticket", minimal.to_string().into_bytes()),
    ];
    // env: profile byte, then (name index, value) records separated by NUL.
    let names = names();
    let values = [
        "https://connect.keepersecurity.com",
        "false",
        "1",
        "2.5",
        "1500",
        "3",
        "0.2",
        "24",
        "100",
        "60",
        "0",
        "15000",
        "5",
        "30",
        "1",
    ];
    let mut env = vec![0u8];
    for (i, _) in names.iter().enumerate() {
        env.push(u8::try_from(i).unwrap_or(0));
        env.extend(values[i % values.len()].as_bytes());
        env.push(0);
    }
    out.push(("env", env));
    out.push(("env", b"\x01\x00http://127.0.0.1:9\x00\x01no".to_vec()));
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// Writes the seeds to `$FUZZ_SEEDS_DIR/<target>/` (default `fuzz/seeds/`). Ignored: writes files.
    #[test]
    #[ignore = "writes fuzz seed files; run with --ignored to regenerate them"]
    fn write_fuzz_seeds() {
        let dir = std::env::var("FUZZ_SEEDS_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds").into());
        let mut seeds = super::seeds();
        // The ticket `pam-lite emulator` writes (a real one: the emulator's own key, uids and seed).
        #[cfg(feature = "demo")]
        {
            let config = pam_lite_emulator::EmulatorConfig {
                seed: Some([1; 32]),
                ..Default::default()
            };
            let emulator = pam_lite_emulator::Emulator::start(config).unwrap();
            seeds.push(("ticket", emulator.ticket().to_json_string().into_bytes()));
            emulator.shutdown();
        }
        for (i, (target, seed)) in seeds.into_iter().enumerate() {
            let d = std::path::Path::new(&dir).join(target);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("seed-{i:02}")), seed).unwrap();
        }
    }

    /// The kept corpora and every regression of the CLI's targets (fuzz/corpus/{ticket,env},
    /// fuzz/regressions/{ticket,env}) replay without a panic; the seeds parse where they should.
    #[test]
    fn kept_corpora_and_regressions_replay_without_panics() {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut replayed = 0;
        for kind in ["corpus", "regressions"] {
            for target in ["ticket", "env"] {
                let Ok(files) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
                    continue;
                };
                for f in files.flatten() {
                    let data = std::fs::read(f.path()).unwrap();
                    match target {
                        "ticket" => super::fuzz_ticket(&data),
                        _ => super::fuzz_env(&data),
                    }
                    replayed += 1;
                }
            }
        }
        assert!(
            replayed > 0,
            "no corpus for the CLI's fuzz targets under {}",
            fuzz.display()
        );
        for (target, seed) in super::seeds() {
            if target == "ticket" {
                assert!(
                    crate::ticket::Ticket::parse(&seed).is_ok(),
                    "a seed ticket does not parse"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn ticket_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::fuzz_ticket(&data);
        }

        #[test]
        fn env_reading_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            super::fuzz_env(&data);
        }

        #[test]
        fn env_numbers_never_panic(name in 0u8..20, value in "[-+]?[0-9.eE]{0,30}|inf|nan|NaN|-0") {
            let mut data = vec![0, name];
            data.extend(value.as_bytes());
            super::fuzz_env(&data);
        }
    }
}
