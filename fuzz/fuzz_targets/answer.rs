#![no_main]
//! Fuzz target: see `pam_lite_core::fuzzing::fuzz_answer`.

use libfuzzer_sys::fuzz_target;

fn start() -> std::time::Instant {
    // The harness, not the core, reads the clock: one origin per process.
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

fuzz_target!(|data: &[u8]| {
    let _ = pam_lite_core::fuzzing::fuzz_answer(data, start());
});
