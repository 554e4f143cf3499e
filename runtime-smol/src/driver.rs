//! The smol driver: one task per node.
//!
//! The task races the node's sources each turn — application inputs, finished HTTP requests, UDP
//! readiness, the WebSocket and the node's timer — and feeds whichever is ready. Every future in that race
//! is cancel-safe, so losing the race loses nothing. UDP is drained in batches on readiness; transmits that
//! hit a full send buffer wait in a short queue for writability. Only HTTP requests (ureq is blocking) use
//! threads, from smol's blocking pool, and only while a request runs.

use pam_lite_blocking::flow::FlowControl;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pam_lite_blocking::http::HttpClient;
use pam_lite_blocking::udp::{self, Addressing};
use pam_lite_blocking::{DriverConfig, Stopped};
use pam_lite_core::{CandidateKind, Command, Datagram, Input, Node, Output};
use smol::channel::{self, Receiver, Sender};
use smol::future::{self, FutureExt as _};
use smol::{Async, Executor, Task, Timer};

use crate::ws::WsSlot;

/// Capacity of the application's input queue.
pub const INPUT_QUEUE: usize = 1024;
/// Datagrams read per readiness event before the other sources get a turn.
const UDP_BATCH: usize = 64;
/// Transmits kept while the socket's send buffer is full; more are dropped (UDP may lose them anyway).
const TX_QUEUE: usize = 1024;
/// After the application went away without the node finishing, give up after this long.
const ABANDON_GRACE: Duration = Duration::from_secs(2);
const MAX_DATAGRAM: usize = 65_536;

/// A node's resources, bound and ready to run: lets the caller learn the UDP address before running.
pub struct Prepared {
    socket: Async<UdpSocket>,
    addressing: Addressing,
    http: HttpClient,
    tls: Arc<rustls::ClientConfig>,
    config: DriverConfig,
    flow: Arc<FlowControl>,
}

impl Prepared {
    /// Bind the UDP socket and build the HTTP and TLS clients per `config`.
    pub fn new(config: DriverConfig) -> io::Result<Self> {
        let http = HttpClient::new(&config)?;
        let tls = pam_lite_blocking::tls::rustls_client_config(&config.tls)?;
        let (socket, addressing) = udp::bind(&config)?;
        Ok(Self {
            socket: Async::new(socket)?,
            addressing,
            http,
            tls,
            config,
            flow: Arc::new(FlowControl::new()),
        })
    }

    /// The node's flow control for local sockets (kept current by the driver; see
    /// `pam_lite_blocking::flow`).
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
        let (internal_tx, internal_rx) = channel::unbounded();
        let mut driver = Driver {
            node,
            flow: self.flow,
            socket: self.socket,
            addressing: self.addressing,
            http: self.http,
            tls: self.tls,
            ws_frame_limit: self.config.ws_frame_limit,
            finish_flush: self.config.finish_flush,
            internal: internal_tx,
            outputs,
            ws: WsSlot::Idle,
            tx_queue: VecDeque::new(),
            pending: VecDeque::new(),
            finish_deadline: None,
            abandoned: false,
            warned_source: false,
        };
        driver.run(inputs, internal_rx).await
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
pub struct Handle {
    inputs: InputSender,
    flow: Arc<FlowControl>,
    outputs: Receiver<Output>,
    local_addr: SocketAddr,
    task: Option<Task<io::Result<()>>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
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
    Internal(Input),
    Readable,
    Writable,
    Ws(Option<Input>),
    Timer,
}

struct Driver<N> {
    node: N,
    flow: Arc<FlowControl>,
    socket: Async<UdpSocket>,
    addressing: Addressing,
    http: HttpClient,
    tls: Arc<rustls::ClientConfig>,
    ws_frame_limit: usize,
    finish_flush: Duration,
    internal: Sender<Input>,
    outputs: Sender<Output>,
    ws: WsSlot,
    tx_queue: VecDeque<Datagram>,
    /// Inputs the driver produced itself while draining (fed after the drain, never re-entrantly).
    pending: VecDeque<Input>,
    finish_deadline: Option<Instant>,
    abandoned: bool,
    warned_source: bool,
}

impl<N: Node> Driver<N> {
    async fn run(&mut self, inputs: Receiver<Input>, internal: Receiver<Input>) -> io::Result<()> {
        for addr in self.addressing.candidates.clone() {
            self.feed(Input::LocalCandidate {
                addr,
                kind: CandidateKind::Host,
            });
        }
        self.feed(Input::GatheringComplete);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut app_open = true;
        loop {
            while let Some(input) = self.pending.pop_front() {
                self.feed(input);
            }
            let now = Instant::now();
            if self.finish_deadline.is_some_and(|end| now >= end) {
                break;
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.feed(Input::Timeout);
                continue;
            }
            let wake_at = match (self.node.poll_timeout(), self.finish_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wake = {
                let app = async {
                    if app_open {
                        Wake::App(inputs.recv().await.ok())
                    } else {
                        future::pending().await
                    }
                };
                let internal = async {
                    match internal.recv().await {
                        Ok(input) => Wake::Internal(input),
                        Err(_) => future::pending().await,
                    }
                };
                let readable = async {
                    // An error here (the socket is broken) shows up again in recv_from.
                    let _ = self.socket.readable().await;
                    Wake::Readable
                };
                let writable = async {
                    if self.tx_queue.is_empty() {
                        future::pending().await
                    } else {
                        let _ = self.socket.writable().await;
                        Wake::Writable
                    }
                };
                let ws = async { Wake::Ws(self.ws.next().await) };
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
                    future::race(app, internal),
                    future::race(future::race(readable, writable), future::race(ws, timer)),
                )
                .await
            };
            match wake {
                Wake::App(Some(input)) | Wake::Internal(input) | Wake::Ws(Some(input)) => {
                    self.feed(input)
                }
                Wake::App(None) => {
                    app_open = false;
                    self.abandon();
                }
                Wake::Readable => self.read_datagrams(&mut buf),
                Wake::Writable => self.flush_tx_queue(),
                Wake::Ws(None) | Wake::Timer => {}
            }
        }
        // Drop the WebSocket; a pending close handshake is abandoned with the task.
        self.ws = WsSlot::Idle;
        tracing::debug!("driver stopped");
        Ok(())
    }

    fn read_datagrams(&mut self, buf: &mut [u8]) {
        for _ in 0..UDP_BATCH {
            match self.socket.get_ref().recv_from(buf) {
                Ok((n, source)) => {
                    let datagram = Datagram {
                        source,
                        destination: self.addressing.destination_for(source),
                        contents: buf.get(..n).unwrap_or_default().to_vec(),
                    };
                    self.feed(Input::Datagram(datagram));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // e.g. ECONNREFUSED from an ICMP error: not fatal for an unconnected socket.
                    tracing::debug!(error = %e, "udp receive error");
                    return;
                }
            }
        }
    }

    fn feed(&mut self, input: Input) {
        self.node.handle_input(input, Instant::now());
        while let Some(out) = self.node.poll_output() {
            self.perform(out);
        }
    }

    fn perform(&mut self, out: Output) {
        match out {
            Output::Transmit(datagram) => self.transmit(datagram),
            Output::Http(req) => self.http(req),
            Output::WsConnect(connect) => {
                self.ws
                    .connect(connect, self.tls.clone(), self.ws_frame_limit)
            }
            Output::WsClose => self.ws.close(),
            Output::Finished(result) => {
                let flush_end = Instant::now() + self.finish_flush;
                self.finish_deadline =
                    Some(self.finish_deadline.map_or(flush_end, |d| d.min(flush_end)));
                self.deliver(Output::Finished(result));
            }
            // Applied here, not by the application: see `pam_lite_blocking::flow`.
            Output::Backpressure { conn, paused } => self.flow.set(conn, paused),
            Output::ConnectionClosed { conn, reason } => {
                self.flow.forget(conn);
                self.deliver(Output::ConnectionClosed { conn, reason });
            }
            other => self.deliver(other),
        }
    }

    fn deliver(&mut self, out: Output) {
        if self.outputs.try_send(out).is_err() {
            self.abandon();
        }
    }

    /// The application is gone: close the node, and stop soon even if it never finishes.
    fn abandon(&mut self) {
        if self.abandoned {
            return;
        }
        self.abandoned = true;
        tracing::debug!("application handle dropped: closing the node");
        self.pending.push_back(Input::Command(Command::Close));
        let limit = Instant::now() + ABANDON_GRACE;
        self.finish_deadline = Some(self.finish_deadline.map_or(limit, |d| d.min(limit)));
    }

    fn transmit(&mut self, datagram: Datagram) {
        if !self.addressing.owns(datagram.source) {
            if !self.warned_source {
                self.warned_source = true;
                tracing::warn!(source = %datagram.source, local = %self.addressing.local,
                    "transmit from an address this driver does not own: dropped");
            }
            return;
        }
        if !self.tx_queue.is_empty() {
            self.queue_transmit(datagram);
            return;
        }
        match self
            .socket
            .get_ref()
            .send_to(&datagram.contents, datagram.destination)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.queue_transmit(datagram),
            Err(e) => {
                tracing::debug!(error = %e, destination = %datagram.destination, "udp send failed: dropped");
            }
        }
    }

    fn queue_transmit(&mut self, datagram: Datagram) {
        if self.tx_queue.len() < TX_QUEUE {
            self.tx_queue.push_back(datagram);
        } else {
            tracing::debug!("udp send queue full: datagram dropped");
        }
    }

    fn flush_tx_queue(&mut self) {
        while let Some(datagram) = self.tx_queue.front() {
            match self
                .socket
                .get_ref()
                .send_to(&datagram.contents, datagram.destination)
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, destination = %datagram.destination, "udp send failed: dropped");
                }
                Ok(_) => {}
            }
            self.tx_queue.pop_front();
        }
    }

    fn http(&mut self, req: pam_lite_core::HttpRequest) {
        let client = self.http.clone();
        let internal = self.internal.clone();
        smol::unblock(move || {
            let input = client.perform(&req);
            let _ = internal.send_blocking(input);
        })
        .detach();
    }
}

#[cfg(test)]
pam_lite_blocking::driver_tests!(crate::spawn);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pam_lite_blocking::testing::{puppet, Echo};
    use std::collections::HashSet;

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
