//! What the application (the CLI, the benchmark, the shared test suites) sees of a runtime, as traits, so
//! code that runs a node can be written once, generic over the runtime. Each runtime crate implements them
//! for its `Handle`, `InputSender` and `forward::Forwarder`, and names itself with a marker type.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::time::Duration;

use pam_lite_core::{Input, Node, Output};

use crate::config::DriverConfig;

/// The driver has stopped and every output has been received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the driver has stopped")]
pub struct Stopped;

/// A runtime: how to start a node on it and pipe its tunneled connections.
pub trait Runtime: 'static {
    /// For logs and test names.
    const NAME: &'static str;
    type Handle: NodeHandle;
    type Forwarder: Forward;

    /// Run `node` with a UDP socket, HTTP and WebSocket clients set up per `config`.
    fn spawn<N: Node + Send + 'static>(node: N, config: DriverConfig) -> io::Result<Self::Handle>;
    /// Client side: every TCP connection accepted on `listener` becomes tunneled connection 1, 2, 3…
    fn serve_tunnel(listener: TcpListener, handle: &Self::Handle) -> io::Result<Self::Forwarder>;
    /// Gateway side: answer every `Output::ConnectTarget` by connecting to `target`, then pipe.
    fn dial_targets(handle: &Self::Handle, target: SocketAddr) -> Self::Forwarder;
}

/// The application's side of a running node.
pub trait NodeHandle: std::fmt::Debug + Send + 'static {
    type Sender: InputSink;
    /// Feed `input` to the node; blocks the thread while its queue is full.
    fn input(&self, input: Input) {
        self.sender().input(input);
    }
    /// A cloneable input side, for other threads.
    fn sender(&self) -> Self::Sender;
    /// The next output meant for the application; `None` once the driver stopped and all were received.
    fn recv(&self) -> Option<Output>;
    /// Like [`NodeHandle::recv`] but waits at most `timeout`: `Ok(None)` when nothing came in time.
    fn recv_timeout(&self, timeout: Duration) -> Result<Option<Output>, Stopped>;
    /// The address the node's UDP socket is bound to.
    fn local_addr(&self) -> SocketAddr;
    /// The node's flow control for local sockets, kept current by the driver (forwarders wait in it).
    fn flow(&self) -> std::sync::Arc<crate::flow::FlowControl>;
    /// Wait until the driver stops (after the node's `Output::Finished` and the flush).
    fn join(self) -> io::Result<()>;
}

/// A cloneable way to feed inputs to a running node.
pub trait InputSink: Clone + Send + Sync + 'static {
    /// Queue `input` (blocking while the queue is full); dropped if the driver stopped.
    fn input(&self, input: Input) {
        if !self.send(input) {
            tracing::debug!("input dropped: the driver has stopped");
        }
    }
    /// Queue `input` (blocking while the queue is full); `false` if the driver has stopped.
    fn send(&self, input: Input) -> bool;
}

/// A forwarder: takes the outputs about tunneled connections, gives the others back.
pub trait Forward: Send + 'static {
    fn dispatch(&self, out: Output) -> Option<Output>;
    fn open_connections(&self) -> usize;
}

/// What an async runtime provides to the kit's async pieces: the task forwarder
/// ([`crate::forward::tasks`]) and (feature `async-http`) the HTTP client ([`crate::http::AsyncHttpClient`]).
pub trait AsyncNet: Send + Sync + 'static {
    /// A connected TCP socket; clones share it (one for the reader, one for the writer).
    type Stream: futures_io::AsyncRead
        + futures_io::AsyncWrite
        + Clone
        + Unpin
        + Send
        + Sync
        + 'static;
    type Listener: Send + 'static;
    /// The node's input side.
    type Sender: Clone + Send + Sync + 'static;

    /// Run `task` in the background (detached).
    fn spawn(task: impl Future<Output = ()> + Send + 'static);
    fn connect(to: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    fn accept(
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send;
    /// The addresses of a host name (std has no non-blocking resolver: e.g. on a blocking pool).
    fn resolve(host: String, port: u16)
        -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
    fn shutdown(stream: &Self::Stream, how: Shutdown);
    fn set_nodelay(stream: &Self::Stream);
    /// Queue `input` for the node, waiting while its queue is full; `false` if the driver stopped.
    fn input(sender: &Self::Sender, input: Input) -> impl Future<Output = bool> + Send;
}
