//! Blocking driver for the pam-lite core: plain threads, ureq for HTTP, tungstenite for the router
//! WebSocket and a std UDP socket. It only moves data between a [`pam_lite_core::Node`] and the network; all
//! protocol knowledge stays in the core.
//!
//! The building blocks ([`config`], [`tls`], [`http`], [`udp`]) are public because the smol driver reuses
//! them: ureq is blocking in both drivers.

pub mod config;
pub mod http;
pub mod tls;
pub mod udp;
pub mod ws;

pub use config::{DriverConfig, TlsConfig};
pub mod driver;
pub mod forward;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use driver::{spawn, Handle, InputSender, Stopped};
