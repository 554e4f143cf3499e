//! Stand-in for `demo.rs` when pam-lite is built without the `demo` feature (the shipped static binary,
//! `scripts/build-static.sh`): the embedded router + gateway emulator (hyper, rcgen, a PTY) is test and
//! demonstration code that a real launch never runs, so it stays out of that binary. `--demo` and
//! `pam-lite emulator` then say how to get them instead of failing obscurely.

use crate::args::EmulatorArgs;
use crate::exit::CliError;
use crate::ticket::Ticket;

/// Never constructed in this build; it only keeps `main`'s demo handling type-checked.
#[allow(dead_code)]
pub struct Demo {
    pub ticket: Ticket,
}

fn not_built() -> CliError {
    CliError::Usage(
        "this pam-lite was built without the demo emulator (cargo feature `demo`); \
         run a build with default features for --demo and `pam-lite emulator`"
            .into(),
    )
}

pub fn terminal() -> Result<Demo, CliError> {
    Err(not_built())
}

pub fn tunnel(_target: Option<&str>) -> Result<Demo, CliError> {
    Err(not_built())
}

pub fn run_emulator(_a: &EmulatorArgs) -> Result<(), CliError> {
    Err(not_built())
}
