//! Guacamole over the tube: pam launch's PythonHandler terminal session (commander-protocol.md §6.3).
//!
//! The gateway runs guacd and forwards its instructions as data of tube connection 1; Commander's Python
//! handler answers them. This module has both ends, sans-IO:
//! * [`instruction`]: the `<len>.<elem>,…;` codec (lengths in code points), streaming and bounded;
//! * [`keysym`]: terminal keystrokes ↔ X11 keysyms (Commander's mapping, and its inverse);
//! * [`client`]: [`client::TerminalClient`], what `pam launch` does with the session;
//! * [`server`]: [`server::TerminalServer`], what the gateway + guacd show the client for a PTY-backed
//!   terminal (used by the emulator).

pub mod client;
pub mod instruction;
pub mod keysym;
pub mod server;

/// Entry points for fuzz targets (`fuzz/`) and the matching never-panics tests.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    use std::time::{Duration, Instant};

    use super::client::{InputMode, TerminalClient, TerminalConfig};
    use super::instruction::{InstructionParser, Limits};
    use super::keysym::{KeyEncoder, KeysymDecoder};
    use super::server::{ServerConfig, TerminalServer};

    /// Feeds `data` (the first byte picks the chunk size) to the instruction parser, both terminal ends
    /// (as network data and as user input) and the keysym codec. Must never panic.
    pub fn fuzz_guac(data: &[u8], t0: Instant) {
        let (size, data) = match data.split_first() {
            Some((first, rest)) => (usize::from(*first).max(1), rest),
            None => (1, data),
        };
        let mut parser = InstructionParser::with_limits(Limits {
            max_instruction_bytes: 4096,
            max_elements: 64,
        });
        let mut keys = KeyEncoder::default();
        let mut keysyms = Vec::new();
        let mut clients = [
            TerminalClient::new(TerminalConfig::default()),
            TerminalClient::new(TerminalConfig {
                input_mode: InputMode::Stdin,
                ..TerminalConfig::default()
            }),
        ];
        let mut server = TerminalServer::new(ServerConfig::default());
        server.start(0);
        for (i, part) in data.chunks(size).enumerate() {
            let now = t0 + Duration::from_millis(i as u64 * 10);
            parser.push(part);
            while let Some(r) = parser.next() {
                if let Ok(inst) = r {
                    let _ = inst.encode();
                }
            }
            keys.feed(part, now, &mut keysyms);
            for client in &mut clients {
                client.handle_data(part);
                client.input(part, now);
                client.handle_timeout(now);
                while client.poll_event().is_some() {}
            }
            server.handle_data(part);
            server.output(part);
            while server.poll_event().is_some() {}
        }
        keys.flush(t0, &mut keysyms);
        let mut decoder = KeysymDecoder::new();
        let mut bytes = Vec::new();
        for (i, k) in keysyms.into_iter().enumerate() {
            decoder.key(k, i % 3 != 2, &mut bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fuzz_guac_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::fuzzing::fuzz_guac(&data, pam_lite_dev_clock::origin());
        }

        #[test]
        fn fuzz_guac_near_valid(s in "[0-9]{0,3}(\\.[a-z0-9=/é]{0,5}[,;]){0,12}") {
            super::fuzzing::fuzz_guac(s.as_bytes(), pam_lite_dev_clock::origin());
        }
    }
}
