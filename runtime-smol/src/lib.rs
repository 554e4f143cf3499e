//! smol driver for the pam-lite core: one async task per node (UDP, timers and the router WebSocket all
//! inside it), so one process can run many nodes; ureq HTTP requests run on smol's blocking pool.
//!
//! Configuration, the TLS policy, the HTTP client and UDP binding are shared with the blocking driver
//! (`pam-lite-blocking`), and [`Handle`] has the same methods as the blocking driver's handle.

pub mod ws;

pub use pam_lite_blocking::{DriverConfig, Stopped, TlsConfig};
pub mod driver;
pub mod forward;

pub use driver::{run, spawn, spawn_on, Handle, InputSender, Prepared};
