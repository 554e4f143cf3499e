//! A forwarder driven by readiness, for a runtime that waits in one poll (runtime-blocking runs it on the
//! node's own mio loop): the local listener and every local TCP connection are non-blocking sockets the
//! runtime registers in its poll, and [`Pipes`] is the whole state machine over them, as
//! [`crate::stream::Streams`] is for TURN streams. No thread per connection, and no hop between threads
//! for local bytes: what a local socket sends is an input of the loop's own node, what the node outputs
//! for a connection is written by the same loop.
//!
//! The application keeps the usual handle, [`Forwarder`]: created by `serve_tunnel` / `dial_targets`, it
//! posts a [`Request`] to the loop (the runtime's `post`: queue it and wake the loop), and its
//! [`Forwarder::dispatch`] passes back any connection output that reached the application before the loop
//! took over. Dropping it stops the forwarding (every connection is closed after what is queued for it).
//!
//! A runtime only does this:
//!
//! * on a [`Request`], [`Pipes::request`], wrapping the listener / each new socket into its type
//!   (registering it under the key the kit gives: readable for the listener, readable and writable,
//!   edge-triggered, for connections);
//! * hand every output meant for the application to [`Pipes::output`] first (`None`: it was a
//!   connection's and is done);
//! * on readiness of a key, [`Pipes::ready`]; after every wait, [`Pipes::resume`];
//! * feed every [`Pipes::pop`] to the dispatcher, and do not sleep while [`Pipes::busy`];
//! * wake up at [`Pipes::deadline`] and call [`Pipes::expire`].
//!
//! Backpressure: a connection the node paused (`Output::Backpressure`, applied to the [`FlowControl`] by
//! the dispatcher on the same thread) is simply not read; [`Pipes::busy`] says when it may be read again.
//! A writer's queue is bounded by the node's receive budget (see the parent module); a stall close
//! ([`Route::Abort`]) shuts the socket down and drops what was queued for it.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pam_lite_core::{Command, ConnNo, Input, Output};
use socket2::{SockRef, Socket};

use super::{
    about_a_connection, target_connected, Credit, Route, Routes, ToSocket, READ_CHUNK,
    TARGET_CONNECT_TIMEOUT,
};
use crate::flow::FlowControl;
use crate::runtime::Forward;

/// Bytes read from one local socket per readiness before the other sources get a turn (and the node
/// its say on pausing it). Measured: 64 KiB here left the blocking driver ~15 % behind smol with 16
/// connections (more loop turns per byte); 256 KiB brought it level.
pub const READ_BUDGET: usize = 16 * READ_CHUNK;
/// Reads (of at most [`READ_CHUNK`]: 4 MiB) that may wait for the dispatcher at once: the reads of one
/// turn stop there whatever the number of connections, so what the node gets before its pause reaches
/// the sockets stays bounded (far below the core's `MAX_OUTBOX`).
pub const MAX_QUEUED_READS: usize = 256;
/// The listener's key; connections get 1, 2, 3…
pub const LISTENER: usize = 0;
/// After an accept error (e.g. out of descriptors), try again this much later.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// What the application's [`Forwarder`] asks of the loop.
#[derive(Debug)]
pub enum Request {
    /// Start forwarding (client side with a listener, gateway side with a target).
    Start(Setup),
    /// A connection output that reached the application before the loop took over.
    Output(Output),
    /// The forwarder was dropped: stop accepting, close every connection after what is queued for it.
    Stop,
}

/// What a forwarder forwards (see [`Request::Start`]).
#[derive(Debug)]
pub struct Setup {
    listener: Option<TcpListener>,
    target: Option<SocketAddr>,
    routes: Arc<Routes<usize>>,
}

/// The application's handle on the loop's forwarding (see the module docs).
pub struct Forwarder {
    routes: Arc<Routes<usize>>,
    post: Box<dyn Fn(Request) + Send + Sync>,
}

impl Forwarder {
    /// Client side: every TCP connection accepted on `listener` becomes tunneled connection 1, 2, 3…
    /// (`Command::OpenConnection`), piped both ways. `post` hands a request to the node's loop.
    pub fn serve_tunnel(
        listener: TcpListener,
        flow: &FlowControl,
        post: impl Fn(Request) + Send + Sync + 'static,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self::start(Some(listener), None, flow, post))
    }

    /// Gateway side: answer every `Output::ConnectTarget` by connecting to `target`, then pipe.
    pub fn dial_targets(
        target: SocketAddr,
        flow: &FlowControl,
        post: impl Fn(Request) + Send + Sync + 'static,
    ) -> Self {
        Self::start(None, Some(target), flow, post)
    }

    fn start(
        listener: Option<TcpListener>,
        target: Option<SocketAddr>,
        flow: &FlowControl,
        post: impl Fn(Request) + Send + Sync + 'static,
    ) -> Self {
        // The loop credits what it writes to local sockets (`Command::Delivered`).
        flow.claim_delivery();
        let routes = Arc::new(Routes::default());
        post(Request::Start(Setup {
            listener,
            target,
            routes: routes.clone(),
        }));
        Self {
            routes,
            post: Box::new(post),
        }
    }

    /// Take `out` if it is about a tunneled connection (the loop does the work), give any other output
    /// back. Never waits.
    pub fn dispatch(&self, out: Output) -> Option<Output> {
        if !about_a_connection(&out) {
            return Some(out);
        }
        (self.post)(Request::Output(out));
        None
    }

    /// Connections currently piped.
    pub fn open_connections(&self) -> usize {
        self.routes.len()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        (self.post)(Request::Stop);
    }
}

impl Forward for Forwarder {
    fn dispatch(&self, out: Output) -> Option<Output> {
        Forwarder::dispatch(self, out)
    }
    fn open_connections(&self) -> usize {
        Forwarder::open_connections(self)
    }
}

/// One local connection, without its socket.
#[derive(Debug)]
struct Pipe {
    conn: ConnNo,
    /// Gateway side: the end of the target's connect; `None` once connected.
    connecting: Option<Instant>,
    /// The writer's queue and what of its front was written.
    out: VecDeque<ToSocket>,
    sent: usize,
    credit: Credit,
    /// The local side may still send (no EOF, no error, not closed by the tunnel).
    reading: bool,
    /// `ToSocket::Close` was reached: the socket is shut down, the pipe is done.
    closed: bool,
}

impl Pipe {
    fn new(conn: ConnNo, connecting: Option<Instant>) -> Self {
        Self {
            conn,
            connecting,
            out: VecDeque::new(),
            sent: 0,
            credit: Credit::new(conn),
            reading: true,
            closed: false,
        }
    }

    /// Write what the socket takes now, in order, crediting what was written (always when the queue
    /// runs empty). `Eof` half-closes, `Close` shuts the socket down.
    fn flush(&mut self, socket: &Socket, events: &mut VecDeque<Input>) -> io::Result<()> {
        if self.connecting.is_some() {
            return Ok(());
        }
        while let Some(front) = self.out.front() {
            match front {
                ToSocket::Data(data) => {
                    let rest = data.get(self.sent..).unwrap_or_default();
                    if !rest.is_empty() {
                        match (&*socket).write(rest) {
                            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                            Ok(n) => {
                                self.sent = self.sent.saturating_add(n);
                                events.extend(self.credit.wrote(n));
                                continue;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(e),
                        }
                    }
                }
                ToSocket::Eof => {
                    let _ = socket.shutdown(Shutdown::Write);
                }
                ToSocket::Close => {
                    self.closed = true;
                    self.reading = false;
                    let _ = socket.shutdown(Shutdown::Both);
                }
            }
            self.out.pop_front();
            self.sent = 0;
        }
        // Queue drained: credit everything written before waiting for more.
        events.extend(self.credit.take());
        Ok(())
    }

    /// Read what the local side sent, up to `budget` bytes and while the node does not pause it;
    /// `Ok(true)` when bytes may remain unread (the budget ran out, or paused).
    fn read(
        &mut self,
        socket: &Socket,
        flow: &FlowControl,
        buf: &mut [u8],
        mut budget: usize,
        events: &mut VecDeque<Input>,
    ) -> io::Result<bool> {
        let conn = self.conn;
        while self.reading && self.connecting.is_none() {
            if budget == 0 || flow.is_paused(conn) {
                return Ok(true);
            }
            match (&*socket).read(buf) {
                Ok(0) => {
                    tracing::debug!(conn, "local side finished writing");
                    self.reading = false;
                    events.push_back(Input::Command(Command::SendEof { conn }));
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    let data = buf.get(..n).unwrap_or_default().to_vec();
                    events.push_back(Input::Command(Command::Send { conn, data }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

/// The loop's side: every local socket of one node (see the module docs). `S` and `L` are the runtime's
/// wrappers of a connection and of the listener; the kit reads, writes and accepts through
/// `socket2::SockRef`.
pub struct Pipes<S, L> {
    flow: Arc<FlowControl>,
    /// `None` until a forwarder starts: outputs then all go to the application.
    routes: Option<Arc<Routes<usize>>>,
    listener: Option<L>,
    accept_retry: Option<Instant>,
    target: Option<SocketAddr>,
    pipes: HashMap<usize, (S, Pipe)>,
    next_key: usize,
    /// Inputs for the dispatcher, in order.
    events: VecDeque<Input>,
    /// Keys whose socket may hold unread bytes (read budget ran out, or paused).
    unread: Vec<usize>,
    buf: Vec<u8>,
}

impl<S, L> Pipes<S, L>
where
    for<'s> SockRef<'s>: From<&'s S> + From<&'s L>,
{
    /// `flow` is the node's (the dispatcher applies `Backpressure` to it).
    pub fn new(flow: Arc<FlowControl>) -> Self {
        Self {
            flow,
            routes: None,
            listener: None,
            accept_retry: None,
            target: None,
            pipes: HashMap::new(),
            next_key: LISTENER.wrapping_add(1),
            events: VecDeque::new(),
            unread: Vec::new(),
            buf: vec![0; READ_CHUNK],
        }
    }

    /// Carry out the application's request. `listen` wraps the listener (registered under
    /// [`LISTENER`]), `wrap` a connection's socket (under the key given).
    pub fn request(
        &mut self,
        request: Request,
        listen: impl FnOnce(TcpListener, usize) -> io::Result<L>,
        wrap: impl FnMut(TcpStream, usize) -> io::Result<S>,
    ) {
        match request {
            Request::Start(setup) => {
                self.stop();
                self.pipes.clear();
                self.listener = setup.listener.and_then(|l| {
                    listen(l, LISTENER)
                        .inspect_err(|e| tracing::warn!(error = %e, "cannot watch the listener"))
                        .ok()
                });
                self.target = setup.target;
                self.routes = Some(setup.routes);
            }
            Request::Output(out) => {
                if let Some(out) = self.output(out, wrap) {
                    tracing::debug!(?out, "not a connection output: dropped");
                }
            }
            Request::Stop => self.stop(),
        }
    }

    /// Handle `out` if it is about a tunneled connection (`None`), or give it back for the application.
    pub fn output(
        &mut self,
        out: Output,
        wrap: impl FnMut(TcpStream, usize) -> io::Result<S>,
    ) -> Option<Output> {
        let Some(routes) = &self.routes else {
            return Some(out);
        };
        match routes.route(out) {
            Route::Back(out) => return Some(out),
            Route::Done => {}
            Route::Write(key, what) => {
                if let Some((_, pipe)) = self.pipes.get_mut(&key) {
                    pipe.reading &= what != ToSocket::Close;
                    pipe.out.push_back(what);
                }
                self.progress(key);
            }
            Route::Abort(conn, key) => {
                tracing::debug!(conn, "closed for a stall: shutting the local socket down");
                if let Some((socket, _)) = self.pipes.remove(&key) {
                    let _ = SockRef::from(&socket).shutdown(Shutdown::Both);
                }
            }
            Route::Dial(conn) => self.dial(conn, wrap),
        }
        None
    }

    /// The socket of `key` is ready (readable, writable or in error): make all the progress possible;
    /// the resulting inputs wait in [`Pipes::pop`].
    pub fn ready(&mut self, key: usize, wrap: impl FnMut(TcpStream, usize) -> io::Result<S>) {
        match key {
            LISTENER => self.accept(wrap),
            key => self.progress(key),
        }
    }

    /// Read on where bytes were left unread and the node no longer pauses the connection.
    pub fn resume(&mut self) {
        for key in std::mem::take(&mut self.unread) {
            self.progress(key);
        }
    }

    /// The next input for the dispatcher.
    pub fn pop(&mut self) -> Option<Input> {
        self.events.pop_front()
    }

    /// Inputs are waiting, or a connection that is not paused has bytes left: the runtime must not sleep.
    pub fn busy(&self) -> bool {
        !self.events.is_empty()
            || self.unread.iter().any(|key| {
                self.pipes
                    .get(key)
                    .is_some_and(|(_, p)| !self.flow.is_paused(p.conn))
            })
    }

    /// When [`Pipes::expire`] must be called at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        let connects = self.pipes.values().filter_map(|(_, p)| p.connecting);
        connects.chain(self.accept_retry).min()
    }

    /// Fail the target connects that did not finish in time; retry accepting after an error.
    pub fn expire(&mut self, now: Instant, wrap: impl FnMut(TcpStream, usize) -> io::Result<S>) {
        let late: Vec<usize> = (self.pipes.iter())
            .filter(|(_, (_, p))| p.connecting.is_some_and(|d| d <= now))
            .map(|(key, _)| *key)
            .collect();
        for key in late {
            let secs = TARGET_CONNECT_TIMEOUT.as_secs();
            self.connect_failed(key, &format!("connect timed out after {secs}s"));
        }
        if self.accept_retry.is_some_and(|t| t <= now) {
            self.accept(wrap);
        }
    }

    /// Stop accepting; close every connection after what is queued for it.
    fn stop(&mut self) {
        self.listener = None;
        self.accept_retry = None;
        let keys = self.routes.as_ref().map(|r| r.drain()).unwrap_or_default();
        for key in keys {
            if let Some((_, pipe)) = self.pipes.get_mut(&key) {
                pipe.reading = false;
                pipe.out.push_back(ToSocket::Close);
            }
            self.progress(key);
        }
    }

    fn accept(&mut self, mut wrap: impl FnMut(TcpStream, usize) -> io::Result<S>) {
        self.accept_retry = None;
        let (Some(listener), Some(routes)) = (&self.listener, &self.routes) else {
            return;
        };
        loop {
            let socket = match SockRef::from(listener).accept() {
                Ok((socket, _)) => socket,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    self.accept_retry = Instant::now().checked_add(ACCEPT_RETRY);
                    return;
                }
            };
            let key = self.next_key;
            self.next_key = self.next_key.wrapping_add(1).max(LISTENER + 1);
            let _ = socket.set_tcp_nodelay(true);
            let wrapped = socket
                .set_nonblocking(true)
                .and_then(|()| wrap(socket.into(), key));
            match wrapped {
                Ok(socket) => {
                    let (conn, open) = routes.accepted(key);
                    tracing::debug!(conn, "local connection accepted");
                    self.events.push_back(open);
                    self.pipes.insert(key, (socket, Pipe::new(conn, None)));
                    self.unread.push(key);
                }
                Err(e) => tracing::debug!(error = %e, "cannot watch an accepted connection"),
            }
        }
    }

    fn dial(&mut self, conn: ConnNo, wrap: impl FnOnce(TcpStream, usize) -> io::Result<S>) {
        let Some(routes) = &self.routes else { return };
        let Some(target) = self.target else {
            tracing::warn!(
                conn,
                "ConnectTarget on a forwarder without a target: refused"
            );
            self.events.push_back(target_connected(conn, false));
            return;
        };
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1).max(LISTENER + 1);
        match crate::stream::connect(target).and_then(|s| wrap(s, key)) {
            Ok(socket) => {
                // Registered now: data may arrive before the target is connected and must be kept.
                routes.insert(conn, key);
                let deadline = Instant::now().checked_add(TARGET_CONNECT_TIMEOUT);
                self.pipes.insert(key, (socket, Pipe::new(conn, deadline)));
            }
            Err(e) => {
                tracing::debug!(conn, %target, error = %e, "target connect failed");
                self.events.push_back(target_connected(conn, false));
            }
        }
    }

    fn connect_failed(&mut self, key: usize, error: &dyn std::fmt::Display) {
        if let Some((_, pipe)) = self.pipes.remove(&key) {
            tracing::debug!(conn = pipe.conn, target = ?self.target, %error, "target connect failed");
            if let Some(routes) = &self.routes {
                routes.remove(pipe.conn);
            }
            self.events.push_back(target_connected(pipe.conn, false));
        }
    }

    /// Everything possible on `key` without blocking: finish its connect, write, read.
    fn progress(&mut self, key: usize) {
        self.unread.retain(|k| *k != key);
        let Some((socket, pipe)) = self.pipes.get_mut(&key) else {
            return;
        };
        let socket = SockRef::from(&*socket);
        if pipe.connecting.is_some() {
            match crate::stream::connected(&socket) {
                Ok(false) => return,
                Ok(true) => {
                    tracing::debug!(conn = pipe.conn, "target connected");
                    pipe.connecting = None;
                    let _ = socket.set_tcp_nodelay(true);
                    self.events.push_back(target_connected(pipe.conn, true));
                }
                Err(e) => {
                    self.connect_failed(key, &e);
                    return;
                }
            }
        }
        let queued = MAX_QUEUED_READS.saturating_sub(self.events.len());
        let budget = READ_BUDGET.min(queued.saturating_mul(READ_CHUNK));
        let events = &mut self.events;
        let result = (pipe.flush(&socket, events))
            .map_err(|e| ("local write failed", e))
            .and_then(|()| {
                (pipe.read(&socket, &self.flow, &mut self.buf, budget, events))
                    .map_err(|e| ("local read failed", e))
            });
        match result {
            Ok(_) if pipe.closed => {}
            Ok(more) => {
                if more {
                    self.unread.push(key);
                }
                return;
            }
            Err((what, error)) => {
                tracing::debug!(conn = pipe.conn, %error, "{what}");
                let _ = socket.shutdown(Shutdown::Both);
                let lost = self.routes.as_ref().and_then(|r| r.lost(pipe.conn));
                self.events.extend(lost.map(|(_, input)| input));
            }
        }
        self.pipes.remove(&key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pam_lite_core::tube::CloseReason;
    use std::sync::Mutex;

    type StdPipes = Pipes<TcpStream, TcpListener>;

    fn wrap(s: TcpStream, _key: usize) -> io::Result<TcpStream> {
        Ok(s)
    }

    /// Make progress on `key` until an input comes (bounded: loopback sockets are quick).
    fn next_input(pipes: &mut StdPipes, key: usize) -> Input {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(input) = pipes.pop() {
                return input;
            }
            assert!(Instant::now() < end, "no input from key {key}");
            pipes.ready(key, wrap);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_paused_connection_is_not_read_writes_are_credited_and_a_stall_close_shuts_it_down() {
        let flow = Arc::new(FlowControl::new());
        let mut pipes = StdPipes::new(flow.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let posted = Arc::new(Mutex::new(Vec::new()));
        let post = posted.clone();
        let forwarder = Forwarder::serve_tunnel(listener, &flow, move |r| {
            post.lock().unwrap().push(r);
        })
        .unwrap();
        assert!(flow.delivery_claimed());
        for request in posted.lock().unwrap().drain(..) {
            pipes.request(request, |l, _| Ok(l), wrap);
        }
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(b"hello").unwrap();
        let open = Input::Command(Command::OpenConnection { conn: 1 });
        assert_eq!(next_input(&mut pipes, LISTENER), open);
        assert_eq!(forwarder.open_connections(), 1);

        // Paused by the node: nothing is read, and the loop may sleep.
        flow.set(1, true);
        pipes.resume();
        std::thread::sleep(Duration::from_millis(20));
        pipes.ready(1, wrap);
        assert_eq!(pipes.pop(), None);
        assert!(!pipes.busy());
        flow.set(1, false);
        assert!(pipes.busy(), "resumed with bytes unread");
        pipes.resume();
        let hello = Input::Command(Command::Send {
            conn: 1,
            data: b"hello".to_vec(),
        });
        assert_eq!(next_input(&mut pipes, 1), hello);

        // Output data is written and credited once the queue runs empty.
        let data = Output::ConnectionData {
            conn: 1,
            data: b"abc".to_vec(),
        };
        assert_eq!(pipes.output(data, wrap), None);
        let delivered = Input::Command(Command::Delivered { conn: 1, bytes: 3 });
        assert_eq!(pipes.pop(), Some(delivered));
        let mut got = [0u8; 3];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");

        // The local side's half-close is the tunnel's SendEof.
        client.shutdown(Shutdown::Write).unwrap();
        let eof = Input::Command(Command::SendEof { conn: 1 });
        assert_eq!(next_input(&mut pipes, 1), eof);

        // A stall close shuts the socket down at once; other outputs are the application's.
        let closed = Output::ConnectionClosed {
            conn: 1,
            reason: CloseReason::Timeout,
        };
        assert_eq!(pipes.output(closed, wrap), None);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(client.read(&mut got).unwrap(), 0);
        assert_eq!(forwarder.open_connections(), 0);
        assert_eq!(
            pipes.output(Output::TubeReady, wrap),
            Some(Output::TubeReady)
        );
        assert_eq!(
            forwarder.dispatch(Output::TubeReady),
            Some(Output::TubeReady)
        );
        drop(forwarder);
        assert!(matches!(posted.lock().unwrap().pop(), Some(Request::Stop)));
    }
}
