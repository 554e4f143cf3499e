//! `pam-lite-bench`: see bench/README section in the project README.

mod launch;
mod network;
mod stats;
mod targets;

use std::time::Duration;

fn main() {
    let echo = targets::echo_server("127.0.0.1:0".parse().unwrap()).unwrap();
    let emu = pam_lite_emulator::Emulator::start(
        network::Network::REFERENCE.emulator_config(echo.addr()),
    )
    .unwrap();
    let t = emu.ticket();
    for p in [
        "fast",
        "commander-1984",
        "commander-1982",
        "commander-legacy",
    ] {
        for rt in [launch::Runtime::Smol, launch::Runtime::Blocking] {
            let prof = pam_lite_core::profile::Profile::by_name(p).unwrap();
            match launch::measure(&t, rt, prof, Duration::from_secs(30)) {
                Ok(s) => println!(
                    "{p} {rt:?} ready {:?} echo {:?}",
                    s.tube_ready, s.first_echo
                ),
                Err(e) => println!("{p} {rt:?} ERR {e}"),
            }
        }
    }
}
