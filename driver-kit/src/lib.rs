//! The runtime-neutral half of a pam-lite driver. A driver moves data between a sans-IO
//! [`pam_lite_core::Node`] and the network; everything about that which does not depend on *how* a runtime
//! waits lives here, once:
//!
//! * [`config`] — [`DriverConfig`] / [`TlsConfig`], the same for every runtime;
//! * [`tls`] — the TLS policy as a rustls `ClientConfig` (aws-lc-rs provider, extra CA, `--insecure`);
//! * [`udp`] — binding the node's socket, its host candidates, address checks, a non-blocking send queue;
//! * [`host_candidates`] — which interface addresses a socket bound to all interfaces announces;
//! * [`flow`] — the node's backpressure for local sockets, applied by the driver itself;
//! * [`http`] — URL logging and (feature `blocking-http`) a blocking ureq client for thread-based runtimes,
//!   with [`pool`], the small worker pool it runs on;
//! * [`ws`] — the router WebSocket: the whole client ([`ws::Client`], tungstenite driven by readiness over
//!   a runtime's socket type, like the streams), the request, bounds and close wording;
//! * [`forward`] — the forwarder: the routing of connection outputs, and two complete forwarders, one on
//!   non-blocking sockets on a runtime's own poll loop ([`forward::ready`]) and one on any async runtime
//!   ([`forward::tasks`]);
//! * [`stream`] — TURN over TCP/TLS: the streams' whole state machine ([`stream::Streams`]) over a runtime's
//!   socket type, so a runtime only waits for readiness;
//! * [`dispatch`] — the [`Dispatcher`] that owns the node and the [`Io`] trait a runtime implements;
//! * [`runtime`] — the traits the application sees ([`Runtime`], [`NodeHandle`], [`Forward`]).
//!
//! ```text
//!   pam-lite-core (sans-IO Node)
//!        │
//!   pam-lite-driver-kit  ── Dispatcher<N> + trait Io, config, TLS, UDP, flow, WS request, routing, streams
//!        │
//!   ┌────┴──────────────┐
//!   runtime-blocking    runtime-smol     (an Io impl + a wait loop each)
//!   └────┬──────────────┘
//!   cli, bench, tests (generic over `Runtime`)
//! ```
//!
//! # Porting pam-lite to a new runtime
//!
//! A third runtime (tokio, glommio, an embedded executor…) is one small crate:
//!
//! 1. **Bind** with [`udp::bind`] (a std socket plus its [`udp::Addressing`]), probe its batching with
//!    [`udp::Offload::new`] (which makes it non-blocking), and build the TLS config with [`tls::rustls_client_config`]; create the [`FlowControl`] shared with your
//!    forwarder.
//! 2. **Implement [`Io`]** for a struct holding your socket and clients: `transmit` and
//!    `flush_transmits` ([`udp::TxQueue::push`] and [`udp::TxQueue::flush`]), `http` (start the request; fresh vs keep-alive connection as the request says;
//!    a runtime without an async HTTP client runs the kit's blocking one on [`pool::Pool`]),
//!    `ws_connect` / `ws_close` (hold a [`ws::Client`] over your socket type, as for the streams below;
//!    resolve a host name where blocking is allowed with [`ws::Resolve::run`]), `deliver` (to the
//!    application's output queue; `false` when it is gone), and the TURN
//!    streams: hold a [`stream::Streams`] over your socket type and forward `stream_open` (wrapping the
//!    connecting `std::net::TcpStream` into your type, registering it under the key the kit gives),
//!    `stream_write` and `stream_close` to it (skipping them keeps the default: TURN over TCP/TLS is
//!    reported unreachable, UDP relays still work). Results come back later as inputs.
//! 3. **Write the wait loop** around a [`Dispatcher`]: call [`Dispatcher::start`] once, then repeatedly
//!    [`Dispatcher::turn`]; on [`Next::Wait`] wait for the first of: an application input, a finished HTTP
//!    request, UDP readability (then [`Dispatcher::read_datagrams`] with [`udp::Offload::receive`]), UDP
//!    writability while [`udp::TxQueue::is_waiting`] (then [`udp::TxQueue::flush`]), the WebSocket's socket ([`ws::Client::socket`]: readable, writable while
//!    [`ws::Client::wants_write`]; then [`ws::Client::ready`]) and its name resolution, each stream's socket (readable; writable while [`stream::Streams::watch`] says
//!    so, or always with edge-triggered readiness; then [`stream::Streams::ready`] with its key), and the
//!    instant `turn` returned (plus the deadlines: [`ws::Client::deadline`] then [`ws::Client::expire`],
//!    [`stream::Streams::deadline`] then [`stream::Streams::expire`]). Feed each input with
//!    [`Dispatcher::feed`], including every [`stream::Streams::pop`] (one at a time: an input may close a
//!    stream, dropping its rest); never sleep while [`stream::Streams::busy`]. Stop on [`Next::Stop`]. When
//!    the application drops its handle, call [`Dispatcher::abandon`].
//! 4. **Forwarder**: register the local sockets in your wait loop and drive [`forward::ready::Pipes`]
//!    (runtime-blocking does, on its `mio::Poll`: its module docs list the five calls), or implement
//!    [`forward::tasks::AsyncNet`] (spawn, connect, accept, sleep, your node's async input: a few lines)
//!    and use [`forward::tasks::Forwarder`] (runtime-smol does).
//! 5. **Implement [`Runtime`]** (with [`NodeHandle`], [`InputSink`], [`Forward`]) for a marker type, then
//!    run the shared suites: `pam-lite-driver-tests` holds them as plain generic functions (list each as a
//!    one-line `#[test]`, see `runtime-smol/tests/suite.rs`), and add your runtime to the end-to-end
//!    conformance suite in `tests/tests/conformance.rs` (one module of one-liners). The stream suite
//!    (`pam_lite_driver_tests::stream`) needs real TCP and TLS servers only, all on 127.0.0.1.
//!
//! runtime-smol's wait loop (`runtime-smol/src/driver.rs`, `run_loop`) is the shortest example of step 3;
//! runtime-blocking's (`runtime-blocking/src/driver.rs`, `Loop::run`) shows the same with `mio::Poll`.
//!
//! A new kind of I/O is added once, in the kit, without touching the dispatcher's callers: see [`Io`]
//! (TURN over TCP/TLS was added that way: [`stream`]).
//!
//! Nothing of the protocol is in a driver: if a runtime needs to know what an output *means*, that
//! knowledge belongs in the core.

pub mod config;
pub mod dispatch;
pub mod dtls;
pub mod flow;
pub mod forward;
pub mod host_candidates;
pub mod http;
#[cfg(feature = "blocking-http")]
pub mod pool;
pub mod runtime;
pub mod stream;
pub mod tls;
pub mod udp;
pub mod ws;

pub use config::{DriverConfig, TlsConfig};
pub use dispatch::{Dispatcher, Io, Next};
pub use flow::FlowControl;
pub use runtime::{AsyncNet, Forward, InputSink, NodeHandle, Runtime, Stopped};
