//! smol driver for the pam-lite core: one async task per node (UDP, timers and the router WebSocket all
//! inside it), so one process can run many nodes on one executor thread; ureq HTTP requests run on
//! smol's blocking pool while they last.
//!
//! Three ways to run a node:
//! * [`spawn`] on smol's global executor, or [`spawn_on`] a caller's [`smol::Executor`], both returning a
//!   [`Handle`] with the same methods as the blocking driver's (`input`, `sender`, `recv`,
//!   `recv_timeout`, `local_addr`, `join`) plus async variants;
//! * [`run`] (or [`Prepared::run`], to learn the UDP address first) as a future with the caller's channels.
//!
//! Configuration, the TLS policy, the HTTP client and UDP binding are shared with the blocking driver
//! (`pam-lite-blocking`); [`forward`] is the async twin of its forwarder.

pub mod driver;
pub mod forward;
pub mod ws;

pub use driver::{run, spawn, spawn_on, Handle, InputSender, Prepared};
pub use pam_lite_blocking::{DriverConfig, Stopped, TlsConfig};
