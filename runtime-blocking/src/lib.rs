//! Blocking driver for the pam-lite core: per node, one thread blocks in one `mio::Poll` for the UDP
//! socket, the router WebSocket (the kit's `ws::Client` over a registered mio socket), the TURN servers'
//! TCP/TLS streams (the kit's `stream` module), the application's inputs and the node's timer; the kit's
//! ureq HTTP requests run on its small worker pool (`pool`), which wakes the loop. It only moves data between a [`pam_lite_core::Node`] and the network: everything else is the
//! runtime-neutral `pam-lite-driver-kit` (its crate docs are the porting guide).
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

pub mod driver;

pub use driver::{spawn, Handle, InputSender};

/// The forwarder: the kit's `forward::ready`, on the node's own loop.
pub mod forward {
    pub use pam_lite_driver_kit::forward::ready::Forwarder;

    /// Client side: every TCP connection accepted on `listener` becomes tunneled connection 1, 2, 3…
    pub fn serve_tunnel(
        listener: std::net::TcpListener,
        handle: &crate::Handle,
    ) -> std::io::Result<Forwarder> {
        handle.serve_tunnel(listener)
    }

    /// Gateway side: answer every `Output::ConnectTarget` by connecting to `target`, then pipe.
    pub fn dial_targets(handle: &crate::Handle, target: std::net::SocketAddr) -> Forwarder {
        handle.dial_targets(target)
    }
}
pub use pam_lite_driver_kit::{DriverConfig, Stopped, TlsConfig};

use pam_lite_driver_kit::runtime::{InputSink, NodeHandle, Runtime};

/// This runtime, for code generic over [`Runtime`] (the CLI, the benchmark, the shared test suites).
#[derive(Debug, Clone, Copy)]
pub struct Blocking;

impl Runtime for Blocking {
    const NAME: &'static str = "blocking";
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
