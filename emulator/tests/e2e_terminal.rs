//! End to end in terminal mode: the real client core runs a Guacamole terminal session through the
//! emulator to a command under a real pseudo-terminal, and the command's output comes back.

use std::time::{Duration, Instant};

use pam_lite_core::client::{Client, ClientConfig, Session, TerminalSettings};
use pam_lite_core::offer::LaunchOffer;
use pam_lite_core::profile::Profile;
use pam_lite_core::router::envelope::ServerPublicKey;
use pam_lite_core::{Command, Input, Output};
use pam_lite_emulator::{Emulator, EmulatorConfig, TargetConfig};

#[test]
fn terminal_session_runs_a_command_under_a_pty() {
    let script = "read line; echo \"emulated:$line\"; sleep 5".to_string();
    let emu = Emulator::start(EmulatorConfig {
        target: TargetConfig::Terminal {
            command: vec!["/bin/sh".into(), "-c".into(), script],
        },
        ..Default::default()
    })
    .expect("emulator");
    let t = emu.ticket();
    let cfg = ClientConfig {
        router_url: t.router_url.clone(),
        session_token: t.session_token(),
        server_key: ServerPublicKey::from_b64url(t.server_key_id, &t.server_public_key_b64url)
            .expect("key"),
        gateway_uid: t.gateway_uid.clone(),
        record_uid: t.record_uid.clone(),
        traffic_seed: t.traffic_seed(),
        offer: LaunchOffer {
            conversation_type: t.protocol.clone(),
            ..LaunchOffer::tunnel(None)
        },
        session: Session::Terminal(TerminalSettings {
            cols: 80,
            rows: 24,
            stdin_mode: true,
            guacd_params: Default::default(),
        }),
        trickle_ice: true,
        profile: Profile::fast(),
        relay: Default::default(),
        unix_ms_at_start: 0,
        dtls: pam_lite_driver_kit::dtls::identity(),
    };
    let client = Client::new(cfg, [5; 32], Instant::now()).expect("client");
    let handle = pam_lite_blocking::spawn(client, Default::default()).expect("driver");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut screen = Vec::new();
    let mut typed = false;
    while Instant::now() < deadline {
        let Ok(Some(out)) = handle.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        match out {
            Output::TerminalOutput(bytes) => {
                screen.extend_from_slice(&bytes);
                if String::from_utf8_lossy(&screen).contains("emulated:hello") {
                    return;
                }
            }
            Output::ConnectionOpened { .. } | Output::TubeReady if !typed => {
                typed = true;
                handle.input(Input::Command(Command::TerminalInput {
                    data: b"hello\n".to_vec(),
                }));
            }
            Output::Finished(r) => panic!(
                "launch finished early: {r:?}; screen {:?}",
                String::from_utf8_lossy(&screen)
            ),
            _ => {}
        }
    }
    panic!(
        "no command output; screen {:?}",
        String::from_utf8_lossy(&screen)
    );
}
