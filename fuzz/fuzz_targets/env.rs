#![no_main]
//! Fuzz target: see `pam_lite::fuzzing::fuzz_env` (cli/src/fuzzing.rs).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pam_lite::fuzzing::fuzz_env(data);
});
