//! The runtime-neutral half of a pam-lite driver. A driver moves data between a sans-IO
//! [`pam_lite_core::Node`] and the network; everything about that which does not depend on *how* a runtime
//! waits lives here, once:
//!
//! * [`config`] — [`DriverConfig`] / [`TlsConfig`], the same for every runtime;
//! * [`tls`] — the TLS policy as a rustls `ClientConfig` (ring provider, extra CA, `--insecure`);
//! * [`udp`] — binding the node's socket, its host candidates, address checks, a non-blocking send queue;
//! * [`flow`] — the node's backpressure for local sockets, applied by the driver itself;
//! * [`http`] — URL logging and (feature `blocking-http`) a blocking ureq client for thread-based runtimes;
//! * [`ws`] — the router WebSocket request, endpoint, bounds and close wording;
//! * [`forward`] — the forwarder's routing of connection outputs;
//! * [`dispatch`] — the [`Dispatcher`] that owns the node and the [`Io`] trait a runtime implements;
//! * [`runtime`] — the traits the application sees ([`Runtime`], [`NodeHandle`], [`Forward`]).
//!
//! ```text
//!   pam-lite-core (sans-IO Node)
//!        │
//!   pam-lite-driver-kit  ── Dispatcher<N> + trait Io, config, TLS, UDP, flow, WS request, routing
//!        │
//!   ┌────┴──────────────┐
//!   runtime-blocking    runtime-smol     (an Io impl + a wait loop + a forwarder each)
//!   └────┬──────────────┘
//!   cli, bench, tests (generic over `Runtime`)
//! ```
//!
//! # Porting pam-lite to a new runtime
//!
//! A third runtime (tokio, glommio, an embedded executor…) is one small crate:
//!
//! 1. **Bind** with [`udp::bind`] (a std socket, to make non-blocking, plus its [`udp::Addressing`]) and build the TLS
//!    config with [`tls::rustls_client_config`]; create the [`FlowControl`] shared with your forwarder.
//! 2. **Implement [`Io`]** for a struct holding your socket and clients: `transmit` (non-blocking, e.g. via
//!    [`udp::TxQueue`]), `http` (start the request; fresh vs keep-alive connection as the request says),
//!    `ws_connect` / `ws_close` (build the request with [`ws::build_request`], bound frames with
//!    [`ws::config`]), `deliver` (to the application's output queue; `false` when it is gone). Results come
//!    back later as inputs.
//! 3. **Write the wait loop** around a [`Dispatcher`]: call [`Dispatcher::start`] once, then repeatedly
//!    [`Dispatcher::turn`]; on [`Next::Wait`] wait for the first of: an application input, a finished HTTP
//!    request, UDP readability (then [`Dispatcher::read_datagrams`]), UDP writability while the send queue
//!    waits, the WebSocket, and the instant `turn` returned (plus your own deadlines, e.g. a WebSocket
//!    connect timeout). Feed each input with [`Dispatcher::feed`]. Stop on [`Next::Stop`]. When the
//!    application drops its handle, call [`Dispatcher::abandon`].
//! 4. **Forwarder**: accept / dial TCP and pipe bytes, routing outputs with [`forward::Routes`] and waiting
//!    in [`FlowControl`] before each read.
//! 5. **Implement [`Runtime`]** for a marker type and run the shared suites of `pam-lite-driver-tests`
//!    (`driver_suite!`-free: they are plain generic functions, one `#[test]` line each) and the
//!    conformance suite in `tests/tests/conformance.rs`.
//!
//! Nothing of the protocol is in a driver: if a runtime needs to know what an output *means*, that
//! knowledge belongs in the core.

pub mod config;
pub mod dispatch;
pub mod flow;
pub mod forward;
pub mod http;
pub mod runtime;
pub mod tls;
pub mod udp;
pub mod ws;

pub use config::{DriverConfig, TlsConfig};
pub use dispatch::{Dispatcher, Io, Next};
pub use flow::FlowControl;
pub use runtime::{Forward, InputSink, NodeHandle, Runtime, Stopped};
