//! The smol driver: one task per node.
//!
//! The task races the node's sources each turn — application inputs, finished HTTP requests, UDP
//! readiness, the WebSocket, the TURN streams (the kit's [`Streams`] over `Async<TcpStream>`) and the
//! node's timer — and hands whichever is ready to the kit's [`Dispatcher`]. Every future in that race is cancel-safe, so losing the race loses nothing. UDP is
//! drained in batches on readiness (`recvmmsg`, GRO); transmits queue in the kit's [`TxQueue`] and leave
//! as GSO trains at the end of each turn, or on writability when the send buffer was full.

use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use pam_lite_core::{Datagram, HttpRequest, Input, Node, Output, StreamId, WsConnect};
use pam_lite_driver_kit::http::AsyncHttpClient;
use pam_lite_driver_kit::stream::Streams;
use pam_lite_driver_kit::udp::{self, Addressing, Offload, TxQueue};
use pam_lite_driver_kit::ws;
use pam_lite_driver_kit::{Dispatcher, DriverConfig, FlowControl, Io, Next, Stopped};
use smol::channel::{self, Receiver, Sender};
use smol::future::{self, FutureExt as _};
use smol::{Async, Executor, Task, Timer};

use crate::forward::SmolNet;

/// Capacity of the application's input queue. Its slots are allocated up front (~100 bytes each): 1024
/// of them were ~100 KB of every node (issue 11). 128 reads of the forwarder (16 KiB each: 2 MiB) still
/// wait for the node at once; a fuller queue only makes its senders wait (`input_async`).
pub const INPUT_QUEUE: usize = 128;

/// A node's resources, bound and ready to run: lets the caller learn the UDP address before running.
pub struct Prepared {
    socket: Async<UdpSocket>,
    offload: Offload,
    addressing: Addressing,
    http: AsyncHttpClient<SmolNet>,
    tls: Arc<rustls::ClientConfig>,
    config: DriverConfig,
    flow: Arc<FlowControl>,
}

impl Prepared {
    /// Bind the UDP socket and build the HTTP and TLS clients per `config`.
    pub fn new(config: DriverConfig) -> io::Result<Self> {
        let tls = pam_lite_driver_kit::tls::rustls_client_config(&config.tls)?;
        let http = AsyncHttpClient::new(&config, tls.clone());
        let (socket, addressing) = udp::bind(&config)?;
        let offload = Offload::new(&socket)?;
        Ok(Self {
            socket: Async::new(socket)?,
            offload,
            addressing,
            http,
            tls,
            config,
            flow: Arc::new(FlowControl::new()),
        })
    }

    /// The node's flow control for local sockets (kept current by the driver; see
    /// `pam_lite_driver_kit::flow`).
    pub fn flow(&self) -> Arc<FlowControl> {
        self.flow.clone()
    }

    /// The address the node's UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addressing.local
    }

    /// Run `node` until it finishes (plus the flush) or the application goes away: `inputs` closed, or
    /// `outputs` closed.
    pub async fn run<N: Node>(
        self,
        node: N,
        inputs: Receiver<Input>,
        outputs: Sender<Output>,
    ) -> io::Result<()> {
        let mut dispatcher = Dispatcher::new(node, self.addressing, self.flow, &self.config);
        let mut io = TaskIo {
            socket: Arc::new(self.socket),
            tx: TxQueue::new(self.offload),
            http: self.http,
            ws: ws::Client::new(self.tls.clone(), self.config.ws_frame_limit),
            resolving: None,
            streams: Streams::new(self.tls, self.config.stream_connect_timeout),
            outputs,
        };
        run_loop(&mut dispatcher, &mut io, inputs).await;
        tracing::debug!("driver stopped");
        Ok(())
    }
}

/// Run `node` with a new UDP socket and clients per `config`, talking to the application through
/// `inputs` and `outputs`. See [`Prepared`] to learn the UDP address first.
pub async fn run<N: Node>(
    node: N,
    config: DriverConfig,
    inputs: Receiver<Input>,
    outputs: Sender<Output>,
) -> io::Result<()> {
    Prepared::new(config)?.run(node, inputs, outputs).await
}

/// A cloneable way to feed inputs to a running node.
#[derive(Clone, Debug)]
pub struct InputSender(Sender<Input>);

impl InputSender {
    /// Queue `input`, blocking the thread while the queue is full (do not call from inside an async task:
    /// use [`InputSender::input_async`]). Dropped if the driver stopped.
    pub fn input(&self, input: Input) {
        if self.0.send_blocking(input).is_err() {
            tracing::debug!("input dropped: the driver has stopped");
        }
    }

    /// Queue `input` (blocking while the queue is full); `false` if the driver has stopped.
    pub fn send(&self, input: Input) -> bool {
        self.0.send_blocking(input).is_ok()
    }

    /// Queue `input`, waiting asynchronously while the queue is full; `false` if the driver has stopped.
    pub async fn input_async(&self, input: Input) -> bool {
        self.0.send(input).await.is_ok()
    }
}

/// The application's side of a running node; the same methods as the blocking driver's `Handle`.
#[derive(Debug)]
pub struct Handle {
    inputs: InputSender,
    flow: Arc<FlowControl>,
    outputs: Receiver<Output>,
    local_addr: SocketAddr,
    task: Option<Task<io::Result<()>>>,
}

impl Handle {
    /// Feed `input` (usually `Input::Command(..)`) to the node; blocks the thread while its queue is full.
    pub fn input(&self, input: Input) {
        self.inputs.input(input);
    }

    /// A cloneable input side, for other threads or tasks.
    pub fn sender(&self) -> InputSender {
        self.inputs.clone()
    }

    /// The node's flow control for local sockets, kept current by the driver.
    pub fn flow(&self) -> Arc<FlowControl> {
        self.flow.clone()
    }

    /// The next output meant for the application; `None` once the driver stopped and all were received.
    /// Blocks the thread: from async code use [`Handle::recv_async`].
    pub fn recv(&self) -> Option<Output> {
        self.outputs.recv_blocking().ok()
    }

    /// Like [`Handle::recv`] but waits at most `timeout`: `Ok(None)` when nothing came in time.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Output>, Stopped> {
        future::block_on(self.recv_timeout_async(timeout))
    }

    /// The next output, awaited.
    pub async fn recv_async(&self) -> Option<Output> {
        self.outputs.recv().await.ok()
    }

    /// [`Handle::recv_timeout`], awaited.
    pub async fn recv_timeout_async(&self, timeout: Duration) -> Result<Option<Output>, Stopped> {
        let recv = async { self.outputs.recv().await.map(Some).map_err(|_| Stopped) };
        recv.or(async {
            Timer::after(timeout).await;
            Ok(None)
        })
        .await
    }

    /// The address the node's UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Wait until the driver stops (after the node's `Output::Finished` and the flush). Blocks the thread.
    pub fn join(mut self) -> io::Result<()> {
        match self.task.take() {
            Some(task) => future::block_on(task),
            None => Ok(()),
        }
    }
}

impl Drop for Handle {
    /// Dropping the handle without [`Handle::join`] closes the node (`Command::Close`) and lets it finish:
    /// the task is detached, not cancelled.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }
}

/// Run `node` as a task on smol's global executor.
pub fn spawn<N>(node: N, config: DriverConfig) -> io::Result<Handle>
where
    N: Node + Send + 'static,
{
    spawn_with(node, config, smol::spawn)
}

/// Run `node` as a task on `executor` (which the caller drives).
pub fn spawn_on<N>(
    executor: &Executor<'static>,
    node: N,
    config: DriverConfig,
) -> io::Result<Handle>
where
    N: Node + Send + 'static,
{
    spawn_with(node, config, |fut| executor.spawn(fut))
}

fn spawn_with<N, S>(node: N, config: DriverConfig, spawner: S) -> io::Result<Handle>
where
    N: Node + Send + 'static,
    S: FnOnce(
        std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>,
    ) -> Task<io::Result<()>>,
{
    let prepared = Prepared::new(config)?;
    let local_addr = prepared.local_addr();
    let flow = prepared.flow();
    let (inputs_tx, inputs_rx) = channel::bounded(INPUT_QUEUE);
    let (outputs_tx, outputs_rx) = channel::unbounded();
    let task = spawner(Box::pin(prepared.run(node, inputs_rx, outputs_tx)));
    Ok(Handle {
        inputs: InputSender(inputs_tx),
        flow,
        outputs: outputs_rx,
        local_addr,
        task: Some(task),
    })
}

/// What woke the node task.
enum Wake {
    App(Option<Input>),
    Http(Input),
    Readable,
    Writable,
    Ws,
    Resolved(u64, Result<Vec<SocketAddr>, String>),
    Streams,
    Timer,
}

/// The runtime's [`Io`]: everything the dispatcher asks for, started without blocking the task.
struct TaskIo {
    /// Shared with the datagram reads of the loop (the dispatcher holds `&mut TaskIo` meanwhile).
    socket: Arc<Async<UdpSocket>>,
    tx: TxQueue,
    http: AsyncHttpClient<SmolNet>,
    ws: ws::Client<Async<TcpStream>>,
    /// The WebSocket host's name being resolved (on smol's blocking pool: std has no async resolver).
    resolving: Option<Task<ws::Resolution>>,
    /// TURN streams, polled by the node task like everything else (no task per stream: the node may run
    /// on the caller's executor, see [`spawn_on`]).
    streams: Streams<Async<TcpStream>>,
    outputs: Sender<Output>,
}

impl Io for TaskIo {
    fn transmit(&mut self, datagram: Datagram) {
        self.tx.push(datagram);
    }

    fn flush_transmits(&mut self) {
        self.tx.flush(self.socket.get_ref());
    }

    fn http(&mut self, request: HttpRequest) -> Option<Input> {
        self.http.start(request);
        None
    }

    fn ws_connect(&mut self, connect: WsConnect) -> Option<Input> {
        match self.ws.connect(connect, Async::new) {
            Ok(Some(resolve)) => {
                let resolving = smol::unblock(move || (resolve.generation, resolve.run()));
                self.resolving = Some(resolving);
                None
            }
            Ok(None) => None,
            Err(input) => Some(input),
        }
    }

    fn ws_close(&mut self) {
        self.ws.close();
    }

    fn deliver(&mut self, out: Output) -> bool {
        self.outputs.try_send(out).is_ok()
    }

    fn stream_open(
        &mut self,
        stream: StreamId,
        to: SocketAddr,
        tls_name: Option<String>,
    ) -> Option<Input> {
        self.streams
            .open(stream, to, tls_name, |socket, _| Async::new(socket))
    }

    fn stream_write(&mut self, stream: StreamId, data: Vec<u8>) {
        self.streams.write(stream, data);
    }

    fn stream_close(&mut self, stream: StreamId) {
        self.streams.close(stream);
    }
}

/// Resolves when a stream has inputs for the dispatcher (after making the progress its readiness
/// allows). Cancel-safe: all state is in `streams`.
async fn stream_progress(streams: &mut Streams<Async<TcpStream>>) {
    future::poll_fn(|cx| loop {
        let ready: Vec<usize> = streams
            .watch()
            .filter(|(_, socket, wants_write)| {
                let readable = socket.poll_readable(cx).is_ready();
                readable | (*wants_write && socket.poll_writable(cx).is_ready())
            })
            .map(|(key, ..)| key)
            .collect();
        if ready.is_empty() && !streams.busy() {
            return Poll::Pending;
        }
        streams.resume();
        ready.into_iter().for_each(|key| streams.ready(key));
        if streams.busy() {
            return Poll::Ready(());
        }
    })
    .await
}

async fn run_loop<N: Node>(
    dispatcher: &mut Dispatcher<N>,
    io: &mut TaskIo,
    inputs: Receiver<Input>,
) {
    dispatcher.start(io);
    let mut app_open = true;
    loop {
        let wake_at = match dispatcher.turn(io) {
            Next::Stop => break,
            Next::Wait(at) => at,
        };
        let now = Instant::now();
        if let Some(input) = io.ws.expire(now) {
            dispatcher.feed(input, io);
            continue;
        }
        io.streams.expire(now);
        let deadlines = [wake_at, io.streams.deadline(), io.ws.deadline()];
        let wake_at = deadlines.into_iter().flatten().min();
        let wake = {
            let TaskIo {
                socket,
                tx,
                http,
                ws,
                resolving,
                streams,
                ..
            } = &mut *io;
            let waiting = tx.is_waiting();
            let app = async {
                if app_open {
                    Wake::App(inputs.recv().await.ok())
                } else {
                    future::pending().await
                }
            };
            let http = async { Wake::Http(http.next().await) };
            let readable = async {
                // An error here (the socket is broken) shows up again in recv_from.
                let _ = socket.readable().await;
                Wake::Readable
            };
            let writable = async {
                if waiting {
                    let _ = socket.writable().await;
                    Wake::Writable
                } else {
                    future::pending().await
                }
            };
            let ws = async {
                future::poll_fn(|cx| ws_ready(ws, cx)).await;
                Wake::Ws
            };
            let resolved = async {
                match resolving {
                    Some(task) => {
                        let (generation, addrs) = task.await;
                        Wake::Resolved(generation, addrs)
                    }
                    None => future::pending().await,
                }
            };
            let streams = async {
                stream_progress(streams).await;
                Wake::Streams
            };
            let timer = async {
                match wake_at {
                    Some(t) => {
                        Timer::at(t).await;
                        Wake::Timer
                    }
                    None => future::pending().await,
                }
            };
            future::race(
                future::race(app, future::race(http, streams)),
                future::race(
                    future::race(readable, writable),
                    future::race(ws, future::race(resolved, timer)),
                ),
            )
            .await
        };
        match wake {
            Wake::App(Some(input)) | Wake::Http(input) => dispatcher.feed(input, io),
            Wake::App(None) => {
                app_open = false;
                dispatcher.abandon();
            }
            Wake::Readable => {
                let (socket, offload) = (io.socket.clone(), io.tx.offload().clone());
                dispatcher.read_datagrams(io, |batch| offload.receive(socket.get_ref(), batch));
            }
            Wake::Writable => io.tx.flush(io.socket.get_ref()),
            Wake::Streams => {
                while let Some(input) = io.streams.pop() {
                    dispatcher.feed(input, io);
                }
            }
            Wake::Ws => {
                let mut inputs = Vec::new();
                io.ws.ready(&mut inputs, Async::new);
                inputs
                    .into_iter()
                    .for_each(|input| dispatcher.feed(input, io));
            }
            Wake::Resolved(generation, addrs) => {
                io.resolving = None;
                if let Some(input) = io.ws.resolved(generation, addrs, Async::new) {
                    dispatcher.feed(input, io);
                }
            }
            Wake::Timer => {}
        }
    }
}

/// Ready when the WebSocket's socket is readable, or writable while that matters. Cancel-safe.
fn ws_ready(ws: &ws::Client<Async<TcpStream>>, cx: &mut std::task::Context<'_>) -> Poll<()> {
    match ws.socket() {
        Some(s) if s.poll_readable(cx).is_ready() => Poll::Ready(()),
        Some(s) if ws.wants_write() && s.poll_writable(cx).is_ready() => Poll::Ready(()),
        _ => Poll::Pending,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pam_lite_core::{CandidateKind, Command};
    use pam_lite_driver_tests::{puppet, Echo};
    use std::collections::HashSet;
    use std::time::Instant;

    const WAIT: Duration = Duration::from_secs(5);

    /// 200 nodes on ONE executor driven by the test thread alone: UDP and timers of every node make
    /// progress without any thread per node.
    #[test]
    fn many_nodes_share_one_executor_thread() {
        let ex: &'static Executor<'static> = Box::leak(Box::new(Executor::new()));
        let handles: Vec<Handle> = (0..200)
            .map(|_| spawn_on(ex, Echo::default(), DriverConfig::default()).unwrap())
            .collect();
        let (timed, ctl) = puppet();
        let timed = spawn_on(ex, timed, DriverConfig::default()).unwrap();
        future::block_on(ex.run(async {
            let due = Instant::now() + Duration::from_millis(50);
            ctl.wake_at(Some(due));
            timed.sender().input_async(Input::Timeout).await;

            let peer = Async::<UdpSocket>::bind(([127, 0, 0, 1], 0)).unwrap();
            for h in &handles {
                peer.send_to(b"ping", h.local_addr()).await.unwrap();
            }
            let expected: HashSet<SocketAddr> = handles.iter().map(Handle::local_addr).collect();
            let mut answered = HashSet::new();
            let mut buf = [0u8; 16];
            let collect = async {
                while answered.len() < expected.len() {
                    let (n, from) = peer.recv_from(&mut buf).await.unwrap();
                    assert_eq!(&buf[..n], b"ping");
                    answered.insert(from);
                }
            };
            collect
                .or(async {
                    Timer::after(WAIT).await;
                })
                .await;
            assert_eq!(answered, expected);

            for h in &handles {
                h.sender().input_async(Input::Command(Command::Close)).await;
            }
            for h in &handles {
                assert_eq!(
                    h.recv_timeout_async(WAIT).await,
                    Ok(Some(Output::Finished(Ok(()))))
                );
            }
            // The puppet's timer fires on the same thread.
            let end = Instant::now() + WAIT;
            let mut fired = false;
            while !fired && Instant::now() < end {
                fired = ctl
                    .seen
                    .try_iter()
                    .any(|(input, at)| input == Input::Timeout && at >= due);
                Timer::after(Duration::from_millis(10)).await;
            }
            assert!(fired, "timer never fired");
        }));
    }

    /// The input queue is bounded (by [`INPUT_QUEUE`]) and small: its slots are allocated up front.
    #[test]
    fn input_queue_is_bounded_and_small() {
        let (node, _ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        assert_eq!(handle.inputs.0.capacity(), Some(INPUT_QUEUE));
        assert!(
            INPUT_QUEUE * std::mem::size_of::<Input>() <= 16 * 1024,
            "{INPUT_QUEUE} slots of {} bytes",
            std::mem::size_of::<Input>()
        );
    }

    #[test]
    fn run_with_caller_channels_and_prepared_address() {
        let (node, ctl) = puppet();
        let prepared = Prepared::new(DriverConfig::default()).unwrap();
        let addr = prepared.local_addr();
        let (in_tx, in_rx) = channel::bounded(8);
        let (out_tx, out_rx) = channel::unbounded();
        let test = async {
            assert_eq!(
                ctl.next(WAIT),
                Some(Input::LocalCandidate {
                    addr,
                    kind: CandidateKind::Host
                })
            );
            ctl.script(Output::TubeReady);
            in_tx.send(Input::Timeout).await.unwrap();
            assert_eq!(out_rx.recv().await, Ok(Output::TubeReady));
            // Closing the input channel means the application is gone: the node is told to close.
            drop(in_tx);
            ctl.script(Output::Finished(Ok(())));
        };
        let (result, ()) = future::block_on(future::zip(prepared.run(node, in_rx, out_tx), test));
        result.unwrap();
        assert_eq!(
            ctl.wait_for(WAIT, |i| matches!(i, Input::Command(_))),
            Some(Input::Command(Command::Close))
        );
        assert_eq!(out_rx.try_recv(), Ok(Output::Finished(Ok(()))));
    }
}
