//! SIGINT / SIGTERM for `pam-lite tunnel`: the first one asks for a graceful close (the session loop
//! polls [`Shutdown::requested`]), a second SIGINT exits at once with 130 (as a shell reports Ctrl-C).
//!
//! Why flags and not a handler that closes things: a signal handler may only do async-signal-safe work;
//! the session loop already wakes every tick, so it does the real closing itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::exit::CliError;

/// Exit code of the second Ctrl-C (128 + SIGINT).
pub const FORCED_EXIT: i32 = 130;

/// Which of SIGINT / SIGTERM arrived.
pub struct Shutdown {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

impl Shutdown {
    /// Install the handlers (for the rest of the process).
    pub fn install() -> Result<Self, CliError> {
        let int = Arc::new(AtomicBool::new(false));
        let term = Arc::new(AtomicBool::new(false));
        let err = |e: std::io::Error| CliError::local("cannot install signal handlers", e);
        // Order matters: the conditional exit tests the flag before the plain registration sets it, so
        // only the second SIGINT exits.
        signal_hook::flag::register_conditional_shutdown(SIGINT, FORCED_EXIT, int.clone())
            .map_err(err)?;
        signal_hook::flag::register(SIGINT, int.clone()).map_err(err)?;
        signal_hook::flag::register(SIGTERM, term.clone()).map_err(err)?;
        Ok(Shutdown { int, term })
    }

    pub fn requested(&self) -> bool {
        self.int.load(Ordering::Relaxed) || self.term.load(Ordering::Relaxed)
    }

    /// For the message: which signal asked.
    pub fn signal_name(&self) -> &'static str {
        if self.term.load(Ordering::Relaxed) {
            "SIGTERM"
        } else {
            "SIGINT"
        }
    }
}
