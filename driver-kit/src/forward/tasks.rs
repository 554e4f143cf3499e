//! A forwarder on any async runtime (runtime-smol's): TCP glue between local sockets and the node's
//! tunneled connections as detached tasks, routed by [`super::Routes`]. A runtime implements [`AsyncNet`]
//! (spawn, connect, accept, sleep, its node's async input) and gets the whole forwarder; no thread per
//! connection.
//!
//! Per connection a reader task and a writer task. The single consumer of the handle's outputs hands
//! every output to [`Forwarder::dispatch`] (or [`Forwarder::dispatch_async`] from async code), which
//! keeps the ones about connections and gives the others back.
//!
//! Backpressure: the node says when a connection's local side must pause (`Output::Backpressure`: the
//! tube is full) and resume; the driver applies that to its [`FlowControl`] directly and a paused reader
//! task waits there before its next read. A writer's queue is bounded by the node's receive budget, not by
//! a count, so `dispatch` never waits for a slow local peer (see the parent module; a stall close shuts
//! the socket down under its writer).

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
use pam_lite_core::{Command, ConnNo, Input, Output};

use super::{
    target_connected, Credit, Route, Routes, ToSocket, READ_CHUNK, TARGET_CONNECT_TIMEOUT,
};
use crate::flow::FlowControl;
use crate::runtime::{AsyncNet, Forward};

struct Shared<R: AsyncNet> {
    inputs: R::Sender,
    routes: Routes<Sender<ToSocket>>,
    /// A handle on each piped socket, to shut it down under a blocked writer ([`Route::Abort`]).
    sockets: Mutex<HashMap<ConnNo, R::Stream>>,
    /// Gateway side: where `ConnectTarget` connects.
    target: Option<SocketAddr>,
    /// The driver's flow control: readers wait here while their connection is paused.
    flow: Arc<FlowControl>,
}

impl<R: AsyncNet> Shared<R> {
    fn sockets(&self) -> MutexGuard<'_, HashMap<ConnNo, R::Stream>> {
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn input(&self, input: Input) -> bool {
        R::input(&self.inputs, input).await
    }

    /// Closed for a stall: shut the socket down under its (maybe blocked) writer, then queue the close.
    fn abort(&self, conn: ConnNo, writer: &Sender<ToSocket>) {
        tracing::debug!(conn, "closed for a stall: shutting the local socket down");
        if let Some(s) = self.sockets().get(&conn) {
            R::shutdown(s, Shutdown::Both);
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
            .or(R::sleep(Duration::from_millis(100)))
            .await;
        }
    }

    /// The local side of `conn` failed: tell the node and forget the connection.
    async fn local_failed(&self, conn: ConnNo, what: &str, error: &io::Error) {
        tracing::debug!(conn, %error, "{what}");
        if let Some((writer, input)) = self.routes.lost(conn) {
            let _ = writer.try_send(ToSocket::Close);
            self.input(input).await;
        }
    }
}

/// Routes the outputs about tunneled connections to their local sockets (see the module docs).
/// Dropping it closes every piped connection (and stops accepting: the accept task ends with the
/// forwarder's last reference).
pub struct Forwarder<R: AsyncNet> {
    shared: Arc<Shared<R>>,
    /// Client side: dropping it (with the forwarder) ends the accept task.
    stop: Option<Sender<()>>,
}

impl<R: AsyncNet> Forwarder<R> {
    fn new(inputs: R::Sender, flow: Arc<FlowControl>, target: Option<SocketAddr>) -> Self {
        // This forwarder credits what its writers deliver (`Command::Delivered`).
        flow.claim_delivery();
        Self {
            shared: Arc::new(Shared {
                inputs,
                routes: Routes::default(),
                sockets: Mutex::default(),
                target,
                flow,
            }),
            stop: None,
        }
    }

    /// Client side: every TCP connection accepted on `listener` becomes tunneled connection 1, 2, 3…
    /// (`Command::OpenConnection`), piped both ways. Call it once the tube is ready; clients that
    /// connect earlier wait in the listen backlog.
    pub fn serve_tunnel(listener: R::Listener, inputs: R::Sender, flow: Arc<FlowControl>) -> Self {
        let mut forwarder = Self::new(inputs, flow, None);
        let (stop, stopped) = async_channel::bounded(1);
        forwarder.stop = Some(stop);
        let shared = forwarder.shared.clone();
        R::spawn(accept_loop(listener, shared).or(async move {
            let _ = stopped.recv().await;
        }));
        forwarder
    }

    /// Gateway side: answer every `Output::ConnectTarget` by connecting to `target`, then pipe.
    pub fn dial_targets(inputs: R::Sender, flow: Arc<FlowControl>, target: SocketAddr) -> Self {
        Self::new(inputs, flow, Some(target))
    }

    /// Handle `out` if it is about a tunneled connection (this forwarder owns all of them); give any
    /// other output back. Never waits for a local socket (the queues are bounded by the node's receive
    /// budget).
    pub fn dispatch(&self, out: Output) -> Option<Output> {
        match self.shared.routes.route(out) {
            Route::Back(out) => return Some(out),
            Route::Done => {}
            Route::Write(writer, what) => {
                let _ = writer.try_send(what);
            }
            Route::Abort(conn, writer) => self.shared.abort(conn, &writer),
            Route::Dial(conn) => self.connect_target(conn),
        }
        None
    }

    /// [`Forwarder::dispatch`] for async callers (the same: it never waits).
    pub async fn dispatch_async(&self, out: Output) -> Option<Output> {
        self.dispatch(out)
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
            R::spawn(async move {
                shared.input(target_connected(conn, false)).await;
            });
            return;
        };
        // Register the writer now: data may arrive before the target is connected and must be kept.
        let (tx, rx) = async_channel::unbounded();
        shared.routes.insert(conn, tx);
        R::spawn(async move {
            let connect = R::connect(target).or(async {
                R::sleep(TARGET_CONNECT_TIMEOUT).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            });
            match connect.await {
                Ok(stream) => {
                    tracing::debug!(conn, %target, "target connected");
                    shared.input(target_connected(conn, true)).await;
                    pipe(shared, conn, stream, rx);
                }
                Err(e) => {
                    tracing::debug!(conn, %target, error = %e, "target connect failed");
                    shared.routes.remove(conn);
                    shared.input(target_connected(conn, false)).await;
                }
            }
        });
    }
}

impl<R: AsyncNet> Forward for Forwarder<R> {
    fn dispatch(&self, out: Output) -> Option<Output> {
        Forwarder::dispatch(self, out)
    }
    fn open_connections(&self) -> usize {
        Forwarder::open_connections(self)
    }
}

impl<R: AsyncNet> Drop for Forwarder<R> {
    fn drop(&mut self) {
        for writer in self.shared.routes.drain() {
            let _ = writer.try_send(ToSocket::Close);
        }
    }
}

async fn accept_loop<R: AsyncNet>(listener: R::Listener, shared: Arc<Shared<R>>) {
    loop {
        let stream = match R::accept(&listener).await {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "local connection accepted");
                stream
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                R::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (tx, rx) = async_channel::unbounded();
        let (conn, open) = shared.routes.accepted(tx);
        if !shared.input(open).await {
            return;
        }
        pipe(shared.clone(), conn, stream, rx);
    }
}

/// Pipe one connection with a reader task and a writer task.
fn pipe<R: AsyncNet>(
    shared: Arc<Shared<R>>,
    conn: ConnNo,
    stream: R::Stream,
    rx: Receiver<ToSocket>,
) {
    R::set_nodelay(&stream);
    shared.sockets().insert(conn, stream.clone());
    R::spawn(read_loop(shared.clone(), conn, stream.clone()));
    R::spawn(async move {
        write_loop(&shared, conn, stream, rx).await;
        shared.sockets().remove(&conn);
    });
}

async fn read_loop<R: AsyncNet>(shared: Arc<Shared<R>>, conn: ConnNo, mut stream: R::Stream) {
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
                        .input(Input::Command(Command::SendEof { conn }))
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
                    .input(Input::Command(Command::Send { conn, data }))
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

async fn write_loop<R: AsyncNet>(
    shared: &Shared<R>,
    conn: ConnNo,
    mut stream: R::Stream,
    rx: Receiver<ToSocket>,
) {
    let mut credit = Credit::new(conn);
    loop {
        let what = match rx.try_recv() {
            Ok(what) => what,
            Err(async_channel::TryRecvError::Empty) => {
                // Queue drained: credit everything written before waiting for more.
                if let Some(input) = credit.take() {
                    shared.input(input).await;
                }
                match rx.recv().await {
                    Ok(what) => what,
                    Err(_) => break,
                }
            }
            Err(async_channel::TryRecvError::Closed) => break,
        };
        match what {
            ToSocket::Data(data) => {
                if let Err(e) = stream.write_all(&data).await {
                    shared.local_failed(conn, "local write failed", &e).await;
                    R::shutdown(&stream, Shutdown::Both);
                    return;
                }
                if let Some(input) = credit.wrote(data.len()) {
                    shared.input(input).await;
                }
            }
            ToSocket::Eof => {
                let _ = stream.flush().await;
                R::shutdown(&stream, Shutdown::Write);
            }
            ToSocket::Close => break,
        }
    }
    R::shutdown(&stream, Shutdown::Both);
}
