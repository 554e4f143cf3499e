//! Blocking driver for the pam-lite core: plain threads, ureq for HTTP, tungstenite for the router
//! WebSocket and a std UDP socket. It only moves data between a [`pam_lite_core::Node`] and the network;
//! all protocol knowledge stays in the core.
//!
//! ```no_run
//! # fn demo<N: pam_lite_core::Node + Send + 'static>(node: N) -> std::io::Result<()> {
//! use pam_lite_blocking::{forward, spawn, DriverConfig};
//! use pam_lite_core::Output;
//!
//! let handle = spawn(node, DriverConfig::default())?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let mut listener = Some(listener);
//! let mut forwarder: Option<forward::Forwarder> = None;
//! // The single consumer of `recv`: connection outputs go to the forwarder, the rest to the app.
//! while let Some(out) = handle.recv() {
//!     let out = match &forwarder {
//!         Some(f) => match f.dispatch(out) {
//!             Some(rest) => rest,
//!             None => continue,
//!         },
//!         None => out,
//!     };
//!     match out {
//!         Output::TubeReady => {
//!             if let Some(l) = listener.take() {
//!                 forwarder = Some(forward::serve_tunnel(l, &handle)?);
//!             }
//!         }
//!         Output::Finished(result) => println!("finished: {result:?}"),
//!         _ => {}
//!     }
//! }
//! handle.join()
//! # }
//! ```
//!
//! The building blocks ([`config`], [`tls`], [`http`], [`udp`], [`ws`]) are public because the smol
//! driver (`pam-lite-smol`) reuses them: ureq is blocking in both drivers. With the `testing` feature,
//! `testing` holds test nodes and 127.0.0.1 servers plus the conformance test macros both drivers run.

pub mod config;
pub mod driver;
pub mod flow;
pub mod forward;
pub mod http;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod udp;
pub mod ws;

pub use config::{DriverConfig, TlsConfig};
pub use driver::{spawn, Handle, InputSender, Stopped};
