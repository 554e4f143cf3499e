//! The part of `pam-lite` that reads input from outside the process and depends on nothing else of the
//! CLI: the launch ticket ([`ticket`], with its [`secret`] wrapper), the environment ([`settings`]) and the
//! errors and exit codes they end in ([`exit`], [`exit_codes`]). It is a library so the fuzz targets
//! (`fuzz/`) run exactly the parsers the binary runs; the binary (`main.rs`) uses these modules from here.
//!
//! Not a stable API: only the `pam-lite` binary and the fuzz crate use it.

pub mod exit;
pub mod exit_codes;
pub mod secret;
pub mod settings;
pub mod ticket;

/// Entry points for the fuzz targets and their never-panics tests.
pub mod fuzzing;
