//! The blocking driver: one thread runs the node, helper threads do the waiting.
//!
//! Every source of inputs (the application, HTTP workers, the WebSocket thread, the UDP reader) feeds one
//! bounded event queue, so the node sees them in arrival order and a fast source (a datagram flood, a TCP
//! reader of the forwarder) is slowed down instead of growing memory. The node thread itself never blocks
//! on anything but that queue and `send_to`; outputs for the application go to an unbounded channel so a
//! slow or absent reader of [`Handle::recv`] can never deadlock the node against [`Handle::input`].

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use pam_lite_core::{CandidateKind, Command, Datagram, Input, Node, Output};

use crate::config::DriverConfig;
use crate::http::HttpClient;
use crate::udp::{self, Addressing};
use crate::ws::{self, WsWorker};

/// Capacity of the node's input queue (datagrams, HTTP answers, application inputs).
pub const EVENT_QUEUE: usize = 1024;
/// How long the UDP reader blocks before it looks at its stop flag.
const UDP_POLL: Duration = Duration::from_millis(100);
/// After the application went away without the node finishing, give up after this long.
const ABANDON_GRACE: Duration = Duration::from_secs(2);
/// Largest UDP payload read (an IPv4 datagram cannot be larger).
const MAX_DATAGRAM: usize = 65_536;
/// Grace on top of a WebSocket connect timeout before the driver stops waiting for its worker.
const WS_DEADLINE_SLACK: Duration = Duration::from_millis(100);

/// The driver has stopped and every output has been received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the driver has stopped")]
pub struct Stopped;

pub(crate) enum Event {
    Input(Input),
    /// Something from WebSocket number `generation`; dropped if that socket is no longer current.
    Ws {
        generation: u64,
        input: Input,
    },
    /// The application dropped its [`Handle`]; just wakes the loop (the flag says what happened).
    Wake,
}

/// A cloneable way to feed inputs to a running node (for threads other than the [`Handle`] owner).
#[derive(Clone, Debug)]
pub struct InputSender(SyncSender<Event>);

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Event::Input(_) => "Event::Input",
            Event::Ws { .. } => "Event::Ws",
            Event::Wake => "Event::Wake",
        })
    }
}

impl InputSender {
    /// Queue `input` for the node; blocks while the node's queue is full. Dropped if the driver stopped.
    pub fn input(&self, input: Input) {
        if self.0.send(Event::Input(input)).is_err() {
            tracing::debug!("input dropped: the driver has stopped");
        }
    }

    /// Queue `input` (blocking while the queue is full); `false` if the driver has stopped.
    pub fn send(&self, input: Input) -> bool {
        self.0.send(Event::Input(input)).is_ok()
    }
}

/// The application's side of a running node.
#[derive(Debug)]
pub struct Handle {
    inputs: InputSender,
    flow: Arc<crate::flow::FlowControl>,
    outputs: Receiver<Output>,
    local_addr: SocketAddr,
    abandoned: Arc<AtomicBool>,
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

    /// The node's flow control for local sockets, kept current by the driver (see [`crate::flow`]).
    pub fn flow(&self) -> Arc<crate::flow::FlowControl> {
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
            self.abandoned.store(true, Ordering::Relaxed);
            let _ = self.inputs.0.try_send(Event::Wake);
        }
    }
}

/// Run `node` on a new thread with a UDP socket, HTTP and WebSocket clients set up per `config`.
pub fn spawn<N>(node: N, config: DriverConfig) -> io::Result<Handle>
where
    N: Node + Send + 'static,
{
    let http = HttpClient::new(&config)?;
    let tls = crate::tls::rustls_client_config(&config.tls)?;
    let (socket, addressing) = udp::bind(&config)?;
    let (events_tx, events_rx) = mpsc::sync_channel(EVENT_QUEUE);
    let (outputs_tx, outputs_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let abandoned = Arc::new(AtomicBool::new(false));
    spawn_udp_reader(
        socket.try_clone()?,
        addressing.clone(),
        events_tx.clone(),
        stop.clone(),
    )?;
    let local_addr = addressing.local;
    let flow = Arc::new(crate::flow::FlowControl::new());
    let driver = Driver {
        flow: flow.clone(),
        node,
        socket,
        addressing,
        http,
        tls,
        ws_frame_limit: config.ws_frame_limit,
        finish_flush: config.finish_flush,
        events: events_tx.clone(),
        outputs: outputs_tx,
        ws: None,
        ws_generation: 0,
        ws_handshake_deadline: None,
        pending: VecDeque::new(),
        finish_deadline: None,
        abandoned: abandoned.clone(),
        closing_abandoned: false,
        warned_source: false,
    };
    let thread = thread::Builder::new()
        .name("pam-lite-node".into())
        .spawn(move || {
            let result = driver.run(events_rx);
            stop.store(true, Ordering::Relaxed);
            result
        })?;
    Ok(Handle {
        inputs: InputSender(events_tx),
        flow,
        outputs: outputs_rx,
        local_addr,
        abandoned,
        thread: Some(thread),
    })
}

fn spawn_udp_reader(
    socket: UdpSocket,
    addressing: Addressing,
    events: SyncSender<Event>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    socket.set_read_timeout(Some(UDP_POLL))?;
    thread::Builder::new()
        .name("pam-lite-udp".into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while !stop.load(Ordering::Relaxed) {
                match socket.recv_from(&mut buf) {
                    Ok((n, source)) => {
                        let datagram = Datagram {
                            source,
                            destination: addressing.destination_for(source),
                            contents: buf.get(..n).unwrap_or_default().to_vec(),
                        };
                        if events
                            .send(Event::Input(Input::Datagram(datagram)))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => {
                        // e.g. ECONNREFUSED from an ICMP error: not fatal for an unconnected socket.
                        tracing::debug!(error = %e, "udp receive error");
                        thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        })?;
    Ok(())
}

struct Driver<N> {
    node: N,
    flow: Arc<crate::flow::FlowControl>,
    socket: UdpSocket,
    addressing: Addressing,
    http: HttpClient,
    tls: Arc<rustls::ClientConfig>,
    ws_frame_limit: usize,
    finish_flush: Duration,
    events: SyncSender<Event>,
    outputs: Sender<Output>,
    /// The current WebSocket and its generation number.
    ws: Option<(u64, WsWorker)>,
    ws_generation: u64,
    /// When the current WebSocket must have opened (or failed) at the latest.
    ws_handshake_deadline: Option<Instant>,
    /// Inputs the driver produced itself while draining (fed after the drain, never re-entrantly).
    pending: VecDeque<Input>,
    finish_deadline: Option<Instant>,
    abandoned: Arc<AtomicBool>,
    closing_abandoned: bool,
    warned_source: bool,
}

impl<N: Node> Driver<N> {
    fn run(mut self, events: Receiver<Event>) -> io::Result<()> {
        for addr in self.addressing.candidates.clone() {
            self.feed(Input::LocalCandidate {
                addr,
                kind: CandidateKind::Host,
            });
        }
        self.feed(Input::GatheringComplete);
        loop {
            while let Some(input) = self.pending.pop_front() {
                self.feed(input);
            }
            if self.abandoned.load(Ordering::Relaxed) {
                self.abandon();
            }
            let now = Instant::now();
            if self.finish_deadline.is_some_and(|end| now >= end) {
                break;
            }
            if self.ws_handshake_deadline.is_some_and(|end| now >= end) {
                // The worker is stuck (e.g. in name resolution): give up on it as the core asked.
                self.ws = None;
                self.ws_handshake_deadline = None;
                self.feed(Input::WsClosed {
                    reason: "WebSocket connect timed out".into(),
                });
                continue;
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.feed(Input::Timeout);
                continue;
            }
            let wake = [
                self.node.poll_timeout(),
                self.finish_deadline,
                self.ws_handshake_deadline,
            ]
            .into_iter()
            .flatten()
            .min();
            let event = match wake {
                Some(t) => events.recv_timeout(t.saturating_duration_since(Instant::now())),
                None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match event {
                Ok(Event::Input(input)) => self.feed(input),
                Ok(Event::Ws { generation, input }) => self.ws_event(generation, input),
                Ok(Event::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.ws = None;
        tracing::debug!("driver stopped");
        Ok(())
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
            Output::WsConnect(connect) => self.ws_connect(connect),
            Output::WsClose => {
                self.ws = None;
                self.ws_handshake_deadline = None;
            }
            Output::Finished(result) => {
                let flush_end = Instant::now() + self.finish_flush;
                self.finish_deadline =
                    Some(self.finish_deadline.map_or(flush_end, |d| d.min(flush_end)));
                self.deliver(Output::Finished(result));
            }
            // Applied here, not by the application: see `crate::flow`.
            Output::Backpressure { conn, paused } => self.flow.set(conn, paused),
            Output::ConnectionClosed { conn, reason } => {
                self.flow.forget(conn);
                self.deliver(Output::ConnectionClosed { conn, reason });
            }
            other => self.deliver(other),
        }
    }

    fn deliver(&mut self, out: Output) {
        if self.outputs.send(out).is_err() {
            self.abandon();
        }
    }

    /// The application is gone: close the node, and stop soon even if it never finishes.
    fn abandon(&mut self) {
        if self.closing_abandoned {
            return;
        }
        self.closing_abandoned = true;
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
        if let Err(e) = self
            .socket
            .send_to(&datagram.contents, datagram.destination)
        {
            tracing::debug!(error = %e, destination = %datagram.destination, "udp send failed: dropped");
        }
    }

    fn http(&mut self, req: pam_lite_core::HttpRequest) {
        let client = self.http.clone();
        let events = self.events.clone();
        let id = req.id;
        let spawned = thread::Builder::new()
            .name("pam-lite-http".into())
            .spawn(move || {
                let input = client.perform(&req);
                let _ = events.send(Event::Input(input));
            });
        if let Err(e) = spawned {
            self.pending.push_back(Input::HttpError {
                id,
                error: format!("cannot start an HTTP worker: {e}"),
            });
        }
    }

    fn ws_connect(&mut self, connect: pam_lite_core::WsConnect) {
        self.ws_generation += 1;
        let generation = self.ws_generation;
        let events = self.events.clone();
        let emit = move |input| events.send(Event::Ws { generation, input }).is_ok();
        // The worker enforces the timeout itself; this backstop covers what it cannot interrupt (DNS).
        let deadline = Instant::now() + connect.timeout + WS_DEADLINE_SLACK;
        match ws::spawn(connect, self.tls.clone(), self.ws_frame_limit, emit) {
            Ok(worker) => {
                self.ws = Some((generation, worker));
                self.ws_handshake_deadline = Some(deadline);
            }
            Err(e) => {
                self.ws = None;
                self.pending.push_back(Input::WsClosed {
                    reason: format!("cannot start the WebSocket thread: {e}"),
                });
            }
        }
    }

    fn ws_event(&mut self, generation: u64, input: Input) {
        if self.ws.as_ref().map(|(g, _)| *g) != Some(generation) {
            return;
        }
        self.ws_handshake_deadline = None;
        if matches!(input, Input::WsClosed { .. }) {
            self.ws = None;
        }
        self.feed(input);
    }
}

#[cfg(test)]
crate::driver_tests!(crate::spawn);
