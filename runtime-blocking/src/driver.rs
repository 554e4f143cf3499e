//! The blocking driver: one thread per node blocks in one `mio::Poll` for everything — the UDP socket, the
//! router WebSocket, the TURN streams (the kit's [`Streams`] over registered `mio::net::TcpStream`s), the
//! application's inputs and finished HTTP requests (both announced by a `mio::Waker`), and the node's
//! timer as the poll timeout, and the forwarder's local sockets (the kit's [`Pipes`]: the listener and
//! every local TCP connection, registered too). Datagrams and local bytes are read and written on that
//! thread with no hop between threads; only ureq requests (blocking by nature) run on a small worker pool.
//!
//! Application inputs (a terminal's reader, `tunnel --stdio`) arrive through a bounded queue, so a fast
//! reader is slowed down instead of growing memory; the forwarder's local sockets are not read while the
//! node pauses them. Senders wake the loop only when it sleeps (one flag, so a burst of
//! inputs costs one wake-up, not one syscall each). Outputs for the application go to an unbounded
//! channel, so a slow or absent reader of [`Handle::recv`] can never deadlock the node against
//! [`Handle::input`].

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use pam_lite_core::{Datagram, HttpRequest, Input, Node, Output, StreamId, WsConnect};
use pam_lite_driver_kit::forward::ready::{Forwarder, Pipes, Request};
use pam_lite_driver_kit::http::HttpClient;
use pam_lite_driver_kit::pool::Pool;
use pam_lite_driver_kit::stream::Streams;
use pam_lite_driver_kit::udp::{self, Offload, TxQueue};
use pam_lite_driver_kit::ws;
use pam_lite_driver_kit::{Dispatcher, DriverConfig, FlowControl, Io, Next, Stopped};

/// Capacity of the node's input queue (application inputs: a terminal's or `--stdio`'s reads; the
/// forwarder's local sockets are read on the node's own loop). Its slots are allocated up front (~100
/// bytes each): 1024 of them were ~100 KB of every node (issue 11).
pub const EVENT_QUEUE: usize = 128;
/// Inputs taken from each queue per loop turn before the sockets get a turn again.
const INPUT_BATCH: usize = 256;
const UDP: Token = Token(0);
const WAKE: Token = Token(1);
const WS: Token = Token(2);
/// TURN streams: `STREAMS + key` (the kit's key of each stream; 2 is the WebSocket's).
const STREAMS: usize = 16;
/// The forwarder's local sockets: `PIPES | key` (the kit's key of each).
const PIPES: usize = 1 << (usize::BITS - 2);

/// Wakes the loop, but only when it sleeps: a sender first queues, then calls [`Wake::wake`]; the loop
/// first sets `sleeping`, then looks at the queues once more before it blocks.
#[derive(Debug)]
struct Wake {
    waker: Waker,
    sleeping: AtomicBool,
    abandoned: AtomicBool,
}

impl Wake {
    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

/// What the worker pool reports to the loop.
enum Done {
    Http(Input),
    Resolved(u64, Result<Vec<SocketAddr>, String>),
    Forward(Request),
}

/// A cloneable way to feed inputs to a running node (for threads other than the [`Handle`] owner).
#[derive(Clone, Debug)]
pub struct InputSender {
    tx: SyncSender<Input>,
    wake: Arc<Wake>,
}

impl InputSender {
    /// Queue `input` for the node; blocks while the node's queue is full. Dropped if the driver stopped.
    pub fn input(&self, input: Input) {
        if !self.send(input) {
            tracing::debug!("input dropped: the driver has stopped");
        }
    }

    /// Queue `input` (blocking while the queue is full); `false` if the driver has stopped.
    pub fn send(&self, input: Input) -> bool {
        let sent = self.tx.send(input).is_ok();
        self.wake.wake();
        sent
    }
}

/// The application's side of a running node.
#[derive(Debug)]
pub struct Handle {
    inputs: InputSender,
    done: Sender<Done>,
    flow: Arc<FlowControl>,
    outputs: Receiver<Output>,
    local_addr: SocketAddr,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Handle {
    /// Feed `input` (usually `Input::Command(..)`) to the node; blocks while its queue is full.
    pub fn input(&self, input: Input) {
        self.inputs.input(input);
    }

    /// A cloneable input side, for other threads (forwarders, terminal readers).
    pub fn sender(&self) -> InputSender {
        self.inputs.clone()
    }

    /// The node's flow control for local sockets, kept current by the driver.
    pub fn flow(&self) -> Arc<FlowControl> {
        self.flow.clone()
    }

    /// The next output meant for the application; `None` once the driver stopped and all were received.
    pub fn recv(&self) -> Option<Output> {
        self.outputs.recv().ok()
    }

    /// Like [`Handle::recv`] but waits at most `timeout`: `Ok(None)` when nothing came in time.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Output>, Stopped> {
        match self.outputs.recv_timeout(timeout) {
            Ok(out) => Ok(Some(out)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Stopped),
        }
    }

    /// The address the node's UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Client side: every TCP connection accepted on `listener` becomes tunneled connection 1, 2, 3…,
    /// piped by this node's loop (the kit's `forward::ready`).
    pub fn serve_tunnel(&self, listener: std::net::TcpListener) -> io::Result<Forwarder> {
        Forwarder::serve_tunnel(listener, &self.flow, self.post())
    }

    /// Gateway side: answer every `Output::ConnectTarget` by connecting to `target`, then pipe.
    pub fn dial_targets(&self, target: SocketAddr) -> Forwarder {
        Forwarder::dial_targets(target, &self.flow, self.post())
    }

    fn post(&self) -> impl Fn(Request) + Send + Sync + 'static {
        let (done, wake) = (self.done.clone(), self.inputs.wake.clone());
        move |request| {
            let _ = done.send(Done::Forward(request));
            wake.wake();
        }
    }

    /// Wait until the driver stops (after the node's `Output::Finished` and the flush).
    pub fn join(mut self) -> io::Result<()> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the driver thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Handle {
    /// Dropping the handle without [`Handle::join`] closes the node (`Command::Close`) and lets it finish.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.inputs.wake.abandoned.store(true, Ordering::SeqCst);
            let _ = self.inputs.wake.waker.wake();
        }
    }
}

/// Run `node` on a new thread with a UDP socket, HTTP and WebSocket clients set up per `config`.
pub fn spawn<N>(node: N, config: DriverConfig) -> io::Result<Handle>
where
    N: Node + Send + 'static,
{
    let http = HttpClient::new(&config)?;
    let tls = pam_lite_driver_kit::tls::rustls_client_config(&config.tls)?;
    let (socket, addressing) = udp::bind(&config)?;
    let offload = Offload::new(&socket)?;
    let local_addr = addressing.local;
    let poll = Poll::new()?;
    let wake = Arc::new(Wake {
        waker: Waker::new(poll.registry(), WAKE)?,
        sleeping: AtomicBool::new(false),
        abandoned: AtomicBool::new(false),
    });
    let (inputs_tx, inputs_rx) = mpsc::sync_channel(EVENT_QUEUE);
    let (outputs_tx, outputs_rx) = mpsc::channel();
    let flow = Arc::new(FlowControl::new());
    let dispatcher = Dispatcher::new(node, addressing, flow.clone(), &config);
    let loop_wake = wake.clone();
    let (done_tx, done_rx) = mpsc::channel();
    let (done, pipes) = (done_tx.clone(), Pipes::new(flow.clone()));
    let thread = thread::Builder::new()
        .name("pam-lite-node".into())
        .spawn(move || {
            let mut socket = UdpSocket::from_std(socket);
            let registry = poll.registry().try_clone()?;
            registry.register(&mut socket, UDP, Interest::READABLE | Interest::WRITABLE)?;
            let socket = Rc::new(socket);
            let io = LoopIo {
                socket: socket.clone(),
                tx: TxQueue::new(offload),
                pool: Pool::new(),
                done: done_tx,
                wake: loop_wake.clone(),
                http,
                ws: ws::Client::new(tls.clone(), config.ws_frame_limit),
                streams: Streams::new(tls, config.stream_connect_timeout),
                registry,
                outputs: outputs_tx,
                pipes,
            };
            let node_loop = Loop {
                poll,
                socket,
                dispatcher,
                io,
                wake: loop_wake,
                inputs: inputs_rx,
                done: done_rx,
            };
            node_loop.run()
        })?;
    Ok(Handle {
        inputs: InputSender {
            tx: inputs_tx,
            wake,
        },
        done,
        flow,
        outputs: outputs_rx,
        local_addr,
        thread: Some(thread),
    })
}

/// The runtime's [`Io`]: everything the dispatcher asks for, done without blocking the loop.
struct LoopIo {
    socket: Rc<UdpSocket>,
    tx: TxQueue,
    pool: Pool,
    done: Sender<Done>,
    wake: Arc<Wake>,
    http: HttpClient,
    ws: ws::Client<TcpStream>,
    streams: Streams<TcpStream>,
    registry: Registry,
    outputs: Sender<Output>,
    pipes: Pipes<TcpStream, TcpListener>,
}

impl Io for LoopIo {
    fn transmit(&mut self, datagram: Datagram) {
        self.tx.push(datagram);
    }

    fn flush_transmits(&mut self) {
        self.tx.flush(&*self.socket);
    }

    fn http(&mut self, request: HttpRequest) -> Option<Input> {
        let (client, done, wake) = (self.http.clone(), self.done.clone(), self.wake.clone());
        let id = request.id;
        let job = move || {
            let _ = done.send(Done::Http(client.perform(&request)));
            wake.wake();
        };
        let error = self.pool.run(job).err()?;
        Some(Input::HttpError {
            id,
            error: format!("cannot start an HTTP worker: {error}"),
        })
    }

    fn ws_connect(&mut self, connect: WsConnect) -> Option<Input> {
        let registry = &self.registry;
        let resolve = match self.ws.connect(connect, |s| watch(registry, s, WS)) {
            Ok(resolve) => resolve?,
            Err(input) => return Some(input),
        };
        let (done, wake) = (self.done.clone(), self.wake.clone());
        let job = move || {
            let _ = done.send(Done::Resolved(resolve.generation, resolve.run()));
            wake.wake();
        };
        let error = self.pool.run(job).err()?;
        self.ws.close();
        Some(Input::WsClosed {
            reason: format!("cannot start a resolver: {error}"),
        })
    }

    fn ws_close(&mut self) {
        self.ws.close();
    }

    fn deliver(&mut self, out: Output) -> bool {
        match self.pipes.output(out, pipe(&self.registry)) {
            Some(out) => self.outputs.send(out).is_ok(),
            None => true,
        }
    }

    fn stream_open(
        &mut self,
        stream: StreamId,
        to: SocketAddr,
        tls_name: Option<String>,
    ) -> Option<Input> {
        let registry = &self.registry;
        self.streams.open(stream, to, tls_name, |socket, key| {
            watch(registry, socket, Token(STREAMS.wrapping_add(key)))
        })
    }

    fn stream_write(&mut self, stream: StreamId, data: Vec<u8>) {
        self.streams.write(stream, data);
    }

    fn stream_close(&mut self, stream: StreamId) {
        self.streams.close(stream);
    }
}

impl LoopIo {
    fn forward(&mut self, request: Request) {
        let registry = &self.registry;
        let listen = |listener, key| {
            let mut listener = TcpListener::from_std(listener);
            registry.register(&mut listener, Token(PIPES | key), Interest::READABLE)?;
            Ok(listener)
        };
        self.pipes.request(request, listen, pipe(registry));
    }
}

/// A local connection of the forwarder, registered (edge-triggered) under its key.
fn pipe(
    registry: &Registry,
) -> impl FnMut(std::net::TcpStream, usize) -> io::Result<TcpStream> + '_ {
    move |socket, key| watch(registry, socket, Token(PIPES | key))
}

/// A connecting socket, registered (edge-triggered) under `token`.
fn watch(registry: &Registry, socket: std::net::TcpStream, token: Token) -> io::Result<TcpStream> {
    let mut socket = TcpStream::from_std(socket);
    registry.register(&mut socket, token, Interest::READABLE | Interest::WRITABLE)?;
    Ok(socket)
}

struct Loop<N> {
    poll: Poll,
    socket: Rc<UdpSocket>,
    dispatcher: Dispatcher<N>,
    io: LoopIo,
    wake: Arc<Wake>,
    inputs: Receiver<Input>,
    done: Receiver<Done>,
}

impl<N: Node> Loop<N> {
    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut ws_inputs = Vec::new();
        // Datagrams may have arrived before the socket was registered.
        let mut udp_pending = true;
        self.dispatcher.start(&mut self.io);
        loop {
            if self.wake.abandoned.load(Ordering::SeqCst) {
                self.dispatcher.abandon();
            }
            let wait = match self.dispatcher.turn(&mut self.io) {
                Next::Stop => break,
                Next::Wait(wait) => wait,
            };
            let now = Instant::now();
            if let Some(input) = self.io.ws.expire(now) {
                self.dispatcher.feed(input, &mut self.io);
                continue;
            }
            self.io.streams.expire(now);
            self.io.pipes.expire(now, pipe(&self.io.registry));
            if self.feed_streams() {
                continue;
            }
            let deadlines = [
                wait,
                self.io.ws.deadline(),
                self.io.streams.deadline(),
                self.io.pipes.deadline(),
            ];
            let wake_at = deadlines.into_iter().flatten().min();
            let mut timeout = wake_at.map(|t| t.saturating_duration_since(now));
            let busy = self.io.streams.busy() || self.io.pipes.busy();
            if udp_pending || busy || self.take_inputs() {
                timeout = Some(Duration::ZERO);
            } else {
                // A swap, not a store: it reads the sender's last swap, so whatever that sender queued
                // before it is visible to the look below.
                self.wake.sleeping.swap(true, Ordering::SeqCst);
                if self.take_inputs() {
                    timeout = Some(Duration::ZERO);
                }
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.wake.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.io.streams.resume();
            self.io.pipes.resume();
            for event in events.iter() {
                match event.token() {
                    UDP => {
                        udp_pending |= event.is_readable() || event.is_error();
                        if event.is_writable() {
                            self.io.tx.flush(&*self.socket);
                        }
                    }
                    WS => {
                        let registry = &self.io.registry;
                        self.io.ws.ready(&mut ws_inputs, |s| watch(registry, s, WS));
                    }
                    Token(t) if t & PIPES != 0 => {
                        self.io.pipes.ready(t & !PIPES, pipe(&self.io.registry));
                    }
                    Token(t) if t >= STREAMS => self.io.streams.ready(t - STREAMS),
                    _ => {} // WAKE: the queues are looked at below
                }
            }
            for input in ws_inputs.drain(..) {
                self.dispatcher.feed(input, &mut self.io);
            }
            self.feed_streams();
            if udp_pending {
                let (socket, offload) = (&self.socket, self.io.tx.offload().clone());
                let drained = self
                    .dispatcher
                    .read_datagrams(&mut self.io, |batch| offload.receive(&**socket, batch));
                udp_pending = !drained;
            }
            self.take_inputs();
        }
        tracing::debug!("driver stopped");
        Ok(())
    }

    /// Feed what the streams and the local sockets produced (one at a time: an input may close a
    /// stream, dropping its rest); `true` if anything came.
    fn feed_streams(&mut self) -> bool {
        let mut any = false;
        while let Some(input) = self.io.streams.pop().or_else(|| self.io.pipes.pop()) {
            self.dispatcher.feed(input, &mut self.io);
            any = true;
        }
        any
    }

    /// Feed a batch from the input queues; `true` if anything came (more may be waiting).
    fn take_inputs(&mut self) -> bool {
        let mut any = false;
        for _ in 0..INPUT_BATCH {
            match self.done.try_recv() {
                Ok(Done::Http(input)) => self.dispatcher.feed(input, &mut self.io),
                Ok(Done::Resolved(generation, addrs)) => {
                    let registry = &self.io.registry;
                    let answer = self
                        .io
                        .ws
                        .resolved(generation, addrs, |s| watch(registry, s, WS));
                    if let Some(input) = answer {
                        self.dispatcher.feed(input, &mut self.io);
                    }
                }
                Ok(Done::Forward(request)) => self.io.forward(request),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
            any = true;
        }
        for _ in 0..INPUT_BATCH {
            match self.inputs.try_recv() {
                Ok(input) => self.dispatcher.feed(input, &mut self.io),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
            any = true;
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input queue's slots are allocated up front: they must stay a small part of a node's memory.
    #[test]
    fn input_queue_stays_small() {
        let bytes = EVENT_QUEUE * std::mem::size_of::<Input>();
        assert!(bytes <= 16 * 1024, "{EVENT_QUEUE} slots: {bytes} bytes");
    }
}
