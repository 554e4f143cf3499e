//! TCP glue between local sockets and the node's tunneled connections, as async tasks on smol's global
//! executor; the routing and the contract are the kit's (`pam_lite_driver_kit::forward`).
//!
//! The single consumer of [`crate::Handle::recv`] hands every output to [`Forwarder::dispatch`] (or
//! [`Forwarder::dispatch_async`] from async code), which keeps the ones about connections and gives the
//! others back.
//!
//! Backpressure: the node says when a connection's local side must pause (`Output::Backpressure`: the
//! tube is full) and resume; the driver applies that to its flow control directly and a paused reader task
//! waits there before its next read. A writer's queue is bounded by the node's
//! receive budget, not by a count, so `dispatch` never waits for a slow local peer (the kit's
//! `forward` module says why; a stall close shuts the socket down under its writer).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use pam_lite_core::{Command, ConnNo, Input, Output};
use pam_lite_driver_kit::forward::{target_connected, Credit, Route, Routes, ToSocket};
use pam_lite_driver_kit::FlowControl;
use smol::channel::{self, Receiver, Sender};
use smol::future::FutureExt as _;
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};
use smol::net::TcpStream;
use smol::{Async, Task, Timer};

use crate::driver::{Handle, InputSender};

/// The same read size and connect bound as every runtime (the kit's).
pub use pam_lite_driver_kit::forward::{READ_CHUNK, TARGET_CONNECT_TIMEOUT};

struct Shared {
    inputs: InputSender,
    routes: Routes<Sender<ToSocket>>,
    /// A handle on each piped socket, to shut it down under a blocked writer ([`Route::Abort`]).
    sockets: std::sync::Mutex<std::collections::HashMap<ConnNo, TcpStream>>,
    /// Gateway side: where `ConnectTarget` connects.
    target: Option<SocketAddr>,
    /// The driver's flow control: readers wait here while their connection is paused.
    flow: Arc<FlowControl>,
}

impl Shared {
    fn sockets(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<ConnNo, TcpStream>> {
        self.sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closed for a stall: shut the socket down under its (maybe blocked) writer, then queue the close.
    fn abort(&self, conn: ConnNo, writer: &Sender<ToSocket>) {
        tracing::debug!(conn, "closed for a stall: shutting the local socket down");
        if let Some(s) = self.sockets().get(&conn) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let _ = writer.try_send(ToSocket::Close);
    }

    /// Wait while `conn` is paused; `false` when the connection is gone meanwhile.
    async fn wait_unpaused(&self, conn: ConnNo) -> bool {
        loop {
            let listener = self.flow.listen();
            if !self.flow.is_paused(conn) {
                return true;
            }
            if self.routes.writer(conn).is_none() {
                return false;
            }
            // The timer only re-checks a connection closed while paused.
            async {
                listener.await;
            }
            .or(async {
                Timer::after(Duration::from_millis(100)).await;
            })
            .await;
        }
    }

    /// The local side of `conn` failed: tell the node and forget the connection.
    async fn local_failed(&self, conn: ConnNo, what: &str, error: &io::Error) {
        tracing::debug!(conn, %error, "{what}");
        let lost = self.routes.lost(conn);
        if let Some((writer, input)) = lost {
            let _ = writer.try_send(ToSocket::Close);
            self.inputs.input_async(input).await;
        }
    }
}

/// Routes the outputs about tunneled connections to their local sockets (see the module docs).
/// Dropping it stops accepting and closes every piped connection.
pub struct Forwarder {
    shared: Arc<Shared>,
    _accept: Option<Task<()>>,
}

impl Forwarder {
    fn new(handle: &Handle, target: Option<SocketAddr>) -> Self {
        // This forwarder credits what its writers deliver (`Command::Delivered`).
        handle.flow().claim_delivery();
        Self {
            shared: Arc::new(Shared {
                inputs: handle.sender(),
                routes: Routes::default(),
                sockets: Default::default(),
                target,
                flow: handle.flow(),
            }),
            _accept: None,
        }
    }

    /// Handle `out` if it is about a tunneled connection (this forwarder owns all of them); give any other
    /// output back. Never waits for a local socket (the queues are bounded by the node's receive
    /// budget); [`Forwarder::dispatch_async`] is the same for async callers.
    pub fn dispatch(&self, out: Output) -> Option<Output> {
        match self.shared.routes.route(out) {
            Route::Back(out) => return Some(out),
            Route::Done => {}
            Route::Write(writer, what) => {
                let _ = writer.send_blocking(what);
            }
            Route::Abort(conn, writer) => self.shared.abort(conn, &writer),
            Route::Dial(conn) => self.connect_target(conn),
        }
        None
    }

    /// [`Forwarder::dispatch`], waiting asynchronously for write-queue space.
    pub async fn dispatch_async(&self, out: Output) -> Option<Output> {
        match self.shared.routes.route(out) {
            Route::Back(out) => return Some(out),
            Route::Done => {}
            Route::Write(writer, what) => {
                let _ = writer.send(what).await;
            }
            Route::Abort(conn, writer) => self.shared.abort(conn, &writer),
            Route::Dial(conn) => self.connect_target(conn),
        }
        None
    }

    /// Connections currently piped.
    pub fn open_connections(&self) -> usize {
        self.shared.routes.len()
    }

    fn connect_target(&self, conn: ConnNo) {
        let shared = self.shared.clone();
        let Some(target) = shared.target else {
            tracing::warn!(
                conn,
                "ConnectTarget on a forwarder without a target: refused"
            );
            smol::spawn(async move {
                shared
                    .inputs
                    .input_async(target_connected(conn, false))
                    .await;
            })
            .detach();
            return;
        };
        // Register the writer now: data may arrive before the target is connected and must be kept.
        let (tx, rx) = channel::unbounded();
        shared.routes.insert(conn, tx);
        smol::spawn(async move {
            let connect = async { TcpStream::connect(target).await }.or(async {
                Timer::after(TARGET_CONNECT_TIMEOUT).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            });
            match connect.await {
                Ok(stream) => {
                    tracing::debug!(conn, %target, "target connected");
                    shared
                        .inputs
                        .input_async(target_connected(conn, true))
                        .await;
                    pipe(shared, conn, stream, rx);
                }
                Err(e) => {
                    tracing::debug!(conn, %target, error = %e, "target connect failed");
                    shared.routes.remove(conn);
                    shared
                        .inputs
                        .input_async(target_connected(conn, false))
                        .await;
                }
            }
        })
        .detach();
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for writer in self.shared.routes.drain() {
            let _ = writer.try_send(ToSocket::Close);
        }
    }
}

/// Client side: every TCP connection accepted on `listener` becomes tunneled connection 1, 2, 3…
/// (`Command::OpenConnection`), piped both ways. Call it once the tube is ready; clients that connect
/// earlier wait in the listen backlog.
pub fn serve_tunnel(listener: TcpListener, handle: &Handle) -> io::Result<Forwarder> {
    let listener = Async::new(listener)?;
    let mut forwarder = Forwarder::new(handle, None);
    let shared = forwarder.shared.clone();
    forwarder._accept = Some(smol::spawn(accept_loop(listener, shared)));
    Ok(forwarder)
}

/// Gateway side: answer every `Output::ConnectTarget` by connecting to `target`, then pipe.
pub fn dial_targets(handle: &Handle, target: SocketAddr) -> Forwarder {
    Forwarder::new(handle, Some(target))
}

async fn accept_loop(listener: Async<TcpListener>, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "local connection accepted");
                TcpStream::from(stream)
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                Timer::after(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (tx, rx) = channel::unbounded();
        let (conn, open) = shared.routes.accepted(tx);
        if !shared.inputs.input_async(open).await {
            return;
        }
        pipe(shared.clone(), conn, stream, rx);
    }
}

/// Pipe one connection with a reader task and a writer task.
fn pipe(shared: Arc<Shared>, conn: ConnNo, stream: TcpStream, rx: Receiver<ToSocket>) {
    let _ = stream.set_nodelay(true);
    shared.sockets().insert(conn, stream.clone());
    smol::spawn(read_loop(shared.clone(), conn, stream.clone())).detach();
    smol::spawn(async move {
        write_loop(shared.clone(), conn, stream, rx).await;
        shared.sockets().remove(&conn);
    })
    .detach();
}

async fn read_loop(shared: Arc<Shared>, conn: ConnNo, mut stream: TcpStream) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if !shared.wait_unpaused(conn).await {
            return;
        }
        match stream.read(&mut buf).await {
            Ok(0) => {
                tracing::debug!(conn, "local side finished writing");
                if shared.routes.writer(conn).is_some() {
                    shared
                        .inputs
                        .input_async(Input::Command(Command::SendEof { conn }))
                        .await;
                }
                return;
            }
            Ok(n) => {
                if shared.routes.writer(conn).is_none() {
                    return; // closed meanwhile
                }
                let data = buf.get(..n).unwrap_or_default().to_vec();
                if !shared
                    .inputs
                    .input_async(Input::Command(Command::Send { conn, data }))
                    .await
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                shared.local_failed(conn, "local read failed", &e).await;
                return;
            }
        }
    }
}

async fn write_loop(
    shared: Arc<Shared>,
    conn: ConnNo,
    mut stream: TcpStream,
    rx: Receiver<ToSocket>,
) {
    let mut credit = Credit::new(conn);
    loop {
        let what = match rx.try_recv() {
            Ok(what) => what,
            Err(channel::TryRecvError::Empty) => {
                // Queue drained: credit everything written before waiting for more.
                if let Some(input) = credit.take() {
                    shared.inputs.input_async(input).await;
                }
                match rx.recv().await {
                    Ok(what) => what,
                    Err(_) => break,
                }
            }
            Err(channel::TryRecvError::Closed) => break,
        };
        match what {
            ToSocket::Data(data) => {
                if let Err(e) = stream.write_all(&data).await {
                    shared.local_failed(conn, "local write failed", &e).await;
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                if let Some(input) = credit.wrote(data.len()) {
                    shared.inputs.input_async(input).await;
                }
            }
            ToSocket::Eof => {
                let _ = stream.flush().await;
                let _ = stream.shutdown(Shutdown::Write);
            }
            ToSocket::Close => break,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}
