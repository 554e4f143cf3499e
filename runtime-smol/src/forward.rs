//! smol's sockets, timers and tasks for the kit's async pieces ([`SmolNet`]: its task forwarder and HTTP
//! client), and the kit's task forwarder (`pam_lite_driver_kit::forward::tasks`) on smol's global executor: TCP glue
//! between local sockets and the node's tunneled connections, a reader and a writer task per connection.
//! The routing, the contract and the backpressure are the kit's.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::time::Duration;

use pam_lite_core::Input;
use pam_lite_driver_kit::forward::tasks;
use pam_lite_driver_kit::runtime::AsyncNet;
use smol::net::TcpStream;
use smol::{Async, Timer};

use crate::driver::{Handle, InputSender};

/// smol's sockets, timers and tasks for the kit's forwarder.
pub struct SmolNet;

impl AsyncNet for SmolNet {
    type Stream = TcpStream;
    type Listener = Async<TcpListener>;
    type Sender = InputSender;

    fn spawn(task: impl Future<Output = ()> + Send + 'static) {
        smol::spawn(task).detach();
    }
    async fn connect(to: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect(to).await
    }
    async fn accept(listener: &Async<TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        Ok((TcpStream::from(stream), peer))
    }
    async fn sleep(duration: Duration) {
        Timer::after(duration).await;
    }
    async fn resolve(host: String, port: u16) -> io::Result<Vec<SocketAddr>> {
        smol::net::resolve((host.as_str(), port)).await
    }
    fn shutdown(stream: &TcpStream, how: Shutdown) {
        let _ = stream.shutdown(how);
    }
    fn set_nodelay(stream: &TcpStream) {
        let _ = stream.set_nodelay(true);
    }
    async fn input(sender: &InputSender, input: Input) -> bool {
        sender.input_async(input).await
    }
}

/// The forwarder for this runtime's [`Handle`].
pub type Forwarder = tasks::Forwarder<SmolNet>;

/// Client side: every TCP connection accepted on `listener` becomes tunneled connection 1, 2, 3…
pub fn serve_tunnel(listener: TcpListener, handle: &Handle) -> io::Result<Forwarder> {
    let listener = Async::new(listener)?;
    Ok(Forwarder::serve_tunnel(
        listener,
        handle.sender(),
        handle.flow(),
    ))
}

/// Gateway side: answer every `Output::ConnectTarget` by connecting to `target`, then pipe.
pub fn dial_targets(handle: &Handle, target: SocketAddr) -> Forwarder {
    Forwarder::dial_targets(handle.sender(), handle.flow(), target)
}
