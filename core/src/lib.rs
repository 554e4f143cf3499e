//! # pam-lite-core
//!
//! The sans-IO protocol core of pam-lite: everything Keeper Commander's `pam launch` does on the wire
//! (router envelope, signaling, offer retry with backend catch-up, ICE batching, WebRTC via str0m, the tube
//! framing and the Guacamole terminal session), with **no sockets, threads, clocks, sleeps or ambient
//! randomness**. A runtime ("driver") feeds [`Input`]s stamped with the current [`Instant`] and performs the
//! [`Output`]s it drains, exactly like str0m's `Rtc`:
//!
//! ```text
//! loop {
//!     let timeout = node.poll_timeout();          // when must we wake up at the latest?
//!     let input = wait_for_io_or(timeout);        // a socket event, an HTTP reply, or Input::Timeout
//!     node.handle_input(input, Instant::now());   // the driver reads the clock, never the core
//!     while let Some(out) = node.poll_output() { perform(out) }
//! }
//! ```
//!
//! Two node roles speak the same formats: [`client::Client`] (the launcher, what `pam launch` is) and
//! [`gateway::Gateway`] (the answering side, used by the embedded emulator and the simulation).
//! The randomness pam-lite draws itself (transmission keys, nonces, conversation ids) comes from a
//! caller-seeded RNG ([`Seed`]).

pub mod client;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gateway;
// Internal modules (not part of the public API). Their accessors that only the unit tests and the fuzz
// entry points call were public API before and are not dead; the lint is quieted for builds without them.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod guac;
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod ice_batch;
mod io;
pub mod offer;
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod offer_retry;
pub mod path;
pub mod profile;
pub mod relay;
pub mod router;
pub mod rtc;
pub mod signaling;
pub mod text;
pub mod timing;
pub mod tube;

pub use error::{ConfigError, LaunchError, NoPath, NoPathReason, ProtocolError};
pub use io::*;

/// The shape every node (client, gateway) shares, so a driver can run any of them.
pub trait Node {
    /// Feed one input that happened at `now`.
    fn handle_input(&mut self, input: Input, now: std::time::Instant);
    /// Drain the next output; call until `None` after every `handle_input`.
    fn poll_output(&mut self) -> Option<Output>;
    /// The latest moment at which the driver must call `handle_input(Input::Timeout, now)`.
    fn poll_timeout(&self) -> Option<std::time::Instant>;
}
