//! The process exit codes of `pam-lite` (cli/EXIT_CODES.md), as a table that depends on nothing but the
//! core's [`LaunchError`]: the CLI uses it, and so does the test crate (`tests/src/lib.rs` includes this
//! file), which asserts the codes a user would see. The core itself knows nothing about processes.

use pam_lite_core::LaunchError;

/// A local problem: a file that cannot be read or written, the terminal, a socket that cannot be bound.
pub const LOCAL: i32 = 1;
/// The command line is wrong (clap uses the same code).
pub const USAGE: i32 = 2;
/// The configuration cannot work (a ticket, an environment override, or [`LaunchError::Config`]).
pub const CONFIG: i32 = 3;

/// The tunnel was up but its one connection could not be opened (`tunnel --stdio`: the gateway could
/// not reach the target). Above the core's range so it never collides with a `LaunchError` code.
pub const TUNNEL_CONNECTION: i32 = 12;

/// No network path to the gateway (ICE found no working pair; relay-only found no relay). After the CLI's
/// own 12 because it was added later; codes never move once documented.
pub const NO_PATH: i32 = 13;

/// The exit code of a launch that ended with `e`: 3–11 and 13, one per variant.
pub fn launch_exit_code(e: &LaunchError) -> i32 {
    match e {
        LaunchError::Config(_) => CONFIG,
        LaunchError::RouterUnreachable(_) => 4,
        LaunchError::Router(_) => 5,
        LaunchError::GatewayOffline { .. } => 6,
        LaunchError::Gateway(_) => 7,
        LaunchError::Timeout { .. } => 8,
        LaunchError::WebSocket(_) => 9,
        LaunchError::Protocol(_) => 10,
        LaunchError::Disconnected(_) => 11,
        LaunchError::NoPath(_) => NO_PATH,
    }
}
