//! smol driver for the pam-lite core: one async task per node — UDP, timers, the router WebSocket
//! (the kit's client, by readiness), HTTP (the kit's hyper client over smol sockets) and the TURN servers' TCP/TLS
//! streams (the kit's `stream` module) all inside it, so one process can
//! run many nodes on one executor thread and a request costs no thread. It only moves data between a
//! [`pam_lite_core::Node`] and the network: everything else is the runtime-neutral `pam-lite-driver-kit`
//! (its crate docs are the porting guide).
//!
//! Three ways to run a node:
//! * [`spawn`] on smol's global executor, or [`spawn_on`] a caller's [`smol::Executor`], both returning a
//!   [`Handle`] with the same methods as the blocking driver's (`input`, `sender`, `recv`,
//!   `recv_timeout`, `local_addr`, `join`) plus async variants;
//! * [`run`] (or [`Prepared::run`], to learn the UDP address first) as a future with the caller's channels.

pub mod driver;
pub mod forward;

pub use driver::{run, spawn, spawn_on, Handle, InputSender, Prepared};
pub use pam_lite_driver_kit::{DriverConfig, Stopped, TlsConfig};

use pam_lite_driver_kit::runtime::{InputSink, NodeHandle, Runtime};

/// This runtime, for code generic over [`Runtime`] (the CLI, the benchmark, the shared test suites).
#[derive(Debug, Clone, Copy)]
pub struct Smol;

impl Runtime for Smol {
    const NAME: &'static str = "smol";
    type Handle = Handle;
    type Forwarder = forward::Forwarder;

    fn spawn<N: pam_lite_core::Node + Send + 'static>(
        node: N,
        config: DriverConfig,
    ) -> std::io::Result<Handle> {
        spawn(node, config)
    }

    fn serve_tunnel(
        listener: std::net::TcpListener,
        handle: &Handle,
    ) -> std::io::Result<Self::Forwarder> {
        forward::serve_tunnel(listener, handle)
    }

    fn dial_targets(handle: &Handle, target: std::net::SocketAddr) -> Self::Forwarder {
        forward::dial_targets(handle, target)
    }
}

impl NodeHandle for Handle {
    type Sender = InputSender;
    fn sender(&self) -> InputSender {
        Handle::sender(self)
    }
    fn recv(&self) -> Option<pam_lite_core::Output> {
        Handle::recv(self)
    }
    fn recv_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Option<pam_lite_core::Output>, Stopped> {
        Handle::recv_timeout(self, timeout)
    }
    fn local_addr(&self) -> std::net::SocketAddr {
        Handle::local_addr(self)
    }
    fn flow(&self) -> std::sync::Arc<pam_lite_driver_kit::FlowControl> {
        Handle::flow(self)
    }
    fn join(self) -> std::io::Result<()> {
        Handle::join(self)
    }
}

impl InputSink for InputSender {
    fn send(&self, input: pam_lite_core::Input) -> bool {
        InputSender::send(self, input)
    }
}
