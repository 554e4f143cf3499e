//! A forwarder on plain threads that works with any runtime's handle (runtime-blocking uses it as is): TCP
//! glue between local sockets and the node's tunneled connections, routed by [`super::Routes`].
//!
//! Threads: one accept thread (client side), and per connection a reader and a writer. The single consumer
//! of the handle's `recv` hands every output to [`Forwarder::dispatch`], which keeps the ones about
//! connections and gives the others back.
//!
//! Backpressure: the node says when a connection's local side must pause (`Output::Backpressure`: the
//! tube is full) and resume; the driver applies that to its [`FlowControl`] directly, and a
//! paused reader waits there before its next read. A writer's queue is bounded by the node's receive
//! budget, not by a count, so `dispatch` never waits for a slow local peer (see the parent module).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use pam_lite_core::{Command, ConnNo, Input, Output};

use super::{
    target_connected, Credit, Route, Routes, ToSocket, READ_CHUNK, TARGET_CONNECT_TIMEOUT,
};
use crate::flow::FlowControl;
use crate::runtime::{Forward, InputSink, NodeHandle};

struct Shared<S> {
    inputs: S,
    routes: Routes<Sender<ToSocket>>,
    /// A handle on each piped socket, to shut it down under a blocked writer ([`Route::Abort`]).
    sockets: Mutex<HashMap<ConnNo, TcpStream>>,
    stop: AtomicBool,
    /// Gateway side: where `ConnectTarget` connects.
    target: Option<SocketAddr>,
    /// The driver's flow control: readers wait here while their connection is paused.
    flow: Arc<FlowControl>,
}

impl<S> Shared<S> {
    fn sockets(&self) -> std::sync::MutexGuard<'_, HashMap<ConnNo, TcpStream>> {
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn socket(&self, conn: ConnNo) -> Option<TcpStream> {
        self.sockets().get(&conn).and_then(|s| s.try_clone().ok())
    }
}

impl<S: InputSink> Shared<S> {
    /// Block while `conn` is paused; `false` when the connection or the forwarder is gone meanwhile.
    fn wait_unpaused(&self, conn: ConnNo) -> bool {
        self.flow.wait(conn, || {
            !self.stop.load(Ordering::Relaxed) && self.routes.writer(conn).is_some()
        })
    }

    /// The local side of `conn` failed: tell the node and forget the connection.
    fn local_failed(&self, conn: ConnNo, what: &str, error: &io::Error) {
        tracing::debug!(conn, %error, "{what}");
        if let Some((writer, input)) = self.routes.lost(conn) {
            let _ = writer.send(ToSocket::Close);
            self.inputs.input(input);
        }
    }
}

/// Routes the outputs about tunneled connections to their local sockets (see the module docs).
pub struct Forwarder<S> {
    shared: Arc<Shared<S>>,
    /// Client side: the listener address, to wake the accept thread when the forwarder is dropped.
    listening: Option<SocketAddr>,
}

impl<S: InputSink> Forwarder<S> {
    fn new<H: NodeHandle<Sender = S>>(handle: &H, target: Option<SocketAddr>) -> Self {
        // This forwarder credits what its writers deliver (`Command::Delivered`).
        handle.flow().claim_delivery();
        Self {
            shared: Arc::new(Shared {
                inputs: handle.sender(),
                routes: Routes::default(),
                sockets: Mutex::new(HashMap::new()),
                stop: AtomicBool::new(false),
                target,
                flow: handle.flow(),
            }),
            listening: None,
        }
    }

    /// Handle `out` if it is about a tunneled connection (this forwarder owns all of them); give any other
    /// output back to the caller. Never waits for a local socket (the queues are bounded by the node's
    /// receive budget).
    pub fn dispatch(&self, out: Output) -> Option<Output> {
        match self.shared.routes.route(out) {
            Route::Back(out) => return Some(out),
            Route::Done => {}
            Route::Write(writer, what) => {
                let _ = writer.send(what);
            }
            Route::Abort(conn, writer) => {
                tracing::debug!(conn, "closed for a stall: shutting the local socket down");
                if let Some(s) = self.shared.socket(conn) {
                    let _ = s.shutdown(Shutdown::Both);
                }
                let _ = writer.send(ToSocket::Close);
            }
            Route::Dial(conn) => self.connect_target(conn),
        }
        None
    }

    /// Connections currently piped.
    pub fn open_connections(&self) -> usize {
        self.shared.routes.len()
    }

    fn connect_target(&self, conn: ConnNo) {
        let Some(target) = self.shared.target else {
            tracing::warn!(
                conn,
                "ConnectTarget on a forwarder without a target: refused"
            );
            self.shared.inputs.input(target_connected(conn, false));
            return;
        };
        // Register the writer now: data may arrive before the target is connected and must be kept.
        let (tx, rx) = mpsc::channel();
        self.shared.routes.insert(conn, tx);
        let shared = self.shared.clone();
        let spawned = thread::Builder::new()
            .name("pam-lite-dial".into())
            .spawn(
                move || match TcpStream::connect_timeout(&target, TARGET_CONNECT_TIMEOUT) {
                    Ok(stream) => {
                        tracing::debug!(conn, %target, "target connected");
                        shared.inputs.input(target_connected(conn, true));
                        pipe(shared, conn, stream, rx);
                    }
                    Err(e) => {
                        tracing::debug!(conn, %target, error = %e, "target connect failed");
                        shared.routes.remove(conn);
                        shared.inputs.input(target_connected(conn, false));
                    }
                },
            );
        if spawned.is_err() {
            self.shared.routes.remove(conn);
            self.shared.inputs.input(target_connected(conn, false));
        }
    }
}

impl<S: InputSink> Forward for Forwarder<S> {
    fn dispatch(&self, out: Output) -> Option<Output> {
        Forwarder::dispatch(self, out)
    }
    fn open_connections(&self) -> usize {
        Forwarder::open_connections(self)
    }
}

impl<S> Drop for Forwarder<S> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(addr) = self.listening {
            // Wake the blocking accept so the thread sees the stop flag.
            let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
        }
        for writer in self.shared.routes.drain() {
            let _ = writer.send(ToSocket::Close);
        }
    }
}

/// Client side: every TCP connection accepted on `listener` becomes tunneled connection 1, 2, 3…
/// (`Command::OpenConnection`), piped both ways. Call it once the tube is ready; clients that connect
/// earlier wait in the listen backlog.
pub fn serve_tunnel<H: NodeHandle>(
    listener: TcpListener,
    handle: &H,
) -> io::Result<Forwarder<H::Sender>> {
    let mut forwarder = Forwarder::new(handle, None);
    let local = listener.local_addr()?;
    forwarder.listening = Some(if local.ip().is_unspecified() {
        SocketAddr::new(
            if local.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            local.port(),
        )
    } else {
        local
    });
    let shared = forwarder.shared.clone();
    thread::Builder::new()
        .name("pam-lite-accept".into())
        .spawn(move || accept_loop(listener, shared))?;
    Ok(forwarder)
}

/// Gateway side: answer every `Output::ConnectTarget` by connecting to `target`, then pipe.
pub fn dial_targets<H: NodeHandle>(handle: &H, target: SocketAddr) -> Forwarder<H::Sender> {
    Forwarder::new(handle, Some(target))
}

fn accept_loop<S: InputSink>(listener: TcpListener, shared: Arc<Shared<S>>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let (tx, rx) = mpsc::channel();
        let (conn, open) = shared.routes.accepted(tx);
        tracing::debug!(conn, peer = ?stream.peer_addr().ok(), "local connection accepted");
        if !shared.inputs.send(open) {
            return;
        }
        let shared = shared.clone();
        let _ = thread::Builder::new()
            .name("pam-lite-conn".into())
            .spawn(move || pipe(shared, conn, stream, rx));
    }
}

/// Pipe one connection: this thread writes (from `rx`), a second one reads.
fn pipe<S: InputSink>(
    shared: Arc<Shared<S>>,
    conn: ConnNo,
    stream: TcpStream,
    rx: Receiver<ToSocket>,
) {
    let _ = stream.set_nodelay(true);
    if let Ok(handle) = stream.try_clone() {
        shared.sockets().insert(conn, handle);
    }
    match stream.try_clone() {
        Ok(reader) => {
            let for_reader = shared.clone();
            let spawned = thread::Builder::new()
                .name("pam-lite-read".into())
                .spawn(move || read_loop(&for_reader, conn, reader));
            if let Err(e) = spawned {
                shared.local_failed(conn, "cannot start a reader", &e);
                return;
            }
        }
        Err(e) => {
            shared.local_failed(conn, "cannot clone the socket", &e);
            return;
        }
    }
    write_loop(&shared, conn, stream, rx);
    shared.sockets().remove(&conn);
}

fn read_loop<S: InputSink>(shared: &Shared<S>, conn: ConnNo, mut stream: TcpStream) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if !shared.wait_unpaused(conn) {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                tracing::debug!(conn, "local side finished writing");
                if shared.routes.writer(conn).is_some() {
                    shared
                        .inputs
                        .input(Input::Command(Command::SendEof { conn }));
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
                    .send(Input::Command(Command::Send { conn, data }))
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                shared.local_failed(conn, "local read failed", &e);
                return;
            }
        }
    }
}

fn write_loop<S: InputSink>(
    shared: &Shared<S>,
    conn: ConnNo,
    mut stream: TcpStream,
    rx: Receiver<ToSocket>,
) {
    let mut credit = Credit::new(conn);
    loop {
        let what = match rx.try_recv() {
            Ok(what) => what,
            Err(mpsc::TryRecvError::Empty) => {
                // Queue drained: credit everything written before waiting for more.
                if let Some(input) = credit.take() {
                    shared.inputs.input(input);
                }
                match rx.recv() {
                    Ok(what) => what,
                    Err(_) => break,
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
        };
        match what {
            ToSocket::Data(data) => {
                if let Err(e) = stream.write_all(&data) {
                    shared.local_failed(conn, "local write failed", &e);
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                if let Some(input) = credit.wrote(data.len()) {
                    shared.inputs.input(input);
                }
            }
            ToSocket::Eof => {
                let _ = stream.shutdown(Shutdown::Write);
            }
            ToSocket::Close => break,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}
