//! Replays the kept fuzz corpora (`fuzz/corpus/<target>/`) and every crash ever found
//! (`fuzz/regressions/<target>/`) through the targets' bodies in `cargo test`, so a fix that regresses
//! or a change that makes a kept input panic fails CI, not the next campaign.
//!
//! The CLI's targets (`ticket`, `env`) are replayed by the same test in the CLI crate.

use std::path::{Path, PathBuf};

/// The targets whose bodies live in the CLI crate (cli/src/fuzzing.rs).
pub const CLI_TARGETS: &[&str] = &["ticket", "env"];

/// Run `data` through the body of fuzz target `target`. `false` when there is no such target here.
pub fn run(target: &str, data: &[u8]) -> bool {
    let t0 = pam_lite_dev_clock::origin();
    match target {
        "answer" => super::fuzz_answer(data, t0),
        "client_inputs" => super::fuzz_client_inputs(data, t0),
        "frame" => super::fuzz_frame(data, t0),
        "gateway_action" => super::fuzz_gateway_action(data),
        "gateway_inputs" => super::fuzz_gateway_inputs(data, t0),
        "guac" => super::fuzz_guac(data, t0),
        "ice_batch" => super::fuzz_ice_batch(data),
        "offer_retry" => super::fuzz_offer_retry(data, t0),
        "relay" => {
            super::fuzz_relay(data, t0);
        }
        "router_response" => super::fuzz_router_response(data),
        "router_server" => super::fuzz_router_server(data, t0),
        "tunnel_decrypt" => super::fuzz_tunnel_decrypt(data),
        "ws_frame" => super::fuzz_ws_frame(data),
        _ => return false,
    }
    true
}

/// `(target, file)` for every file under `fuzz/corpus/*/` and `fuzz/regressions/*/`.
pub fn kept_inputs(fuzz_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(targets) = std::fs::read_dir(fuzz_dir.join(kind)) else {
            continue;
        };
        for t in targets.flatten() {
            let name = t.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(t.path()) else {
                continue;
            };
            for f in files.flatten() {
                if f.path().is_file() {
                    out.push((name.clone(), f.path()));
                }
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    /// Replays one target's kept files; the number replayed.
    fn replay(target: &str) -> usize {
        let inputs = kept_inputs(&fuzz_dir());
        let mine: Vec<_> = inputs.iter().filter(|(t, _)| t == target).collect();
        for (_, file) in &mine {
            let data = std::fs::read(file).unwrap();
            assert!(
                run(target, &data),
                "{}: no fuzz target {target:?}",
                file.display()
            );
        }
        mine.len()
    }

    // One test per target, so the harness replays them in parallel.
    macro_rules! replay_tests {
        ($($name:ident),*) => {$(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*};
    }
    mod replay_kept_inputs {
        use super::replay;
        replay_tests!(
            answer,
            client_inputs,
            frame,
            gateway_action,
            gateway_inputs,
            guac,
            ice_batch,
            offer_retry,
            relay,
            router_response,
            router_server,
            tunnel_decrypt,
            ws_frame
        );
    }

    /// Every kept directory names a target, and the corpora are there (kept in the repository: an empty
    /// replay means they went missing).
    #[test]
    fn kept_inputs_all_belong_to_a_target() {
        let inputs = kept_inputs(&fuzz_dir());
        assert!(
            inputs.len() > 100,
            "corpora missing under {}",
            fuzz_dir().display()
        );
        for (target, file) in &inputs {
            assert!(
                run(target, b"") || CLI_TARGETS.contains(&target.as_str()),
                "{}: no fuzz target {target:?}",
                file.display()
            );
        }
    }

    #[test]
    fn every_fuzz_target_has_a_body_here_or_in_the_cli() {
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml"),
        )
        .unwrap();
        let names: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|n| *n != "pam-lite-fuzz")
            .collect();
        assert!(names.len() >= 15, "{names:?}");
        for n in names {
            assert!(
                run(n, b"") || CLI_TARGETS.contains(&n),
                "fuzz target {n} has no replay"
            );
        }
    }
}
