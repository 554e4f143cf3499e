//! The emulated gateway machine: one thread runs the sans-IO gateway node with a real UDP socket on
//! 127.0.0.1, the router link, and the targets (TCP forward or PTY).
//!
//! Why its own loop instead of the generic blocking driver: the emulator must impair the gateway's UDP path
//! (latency, jitter, loss, duplication) and delay the router↔gateway hop, which needs delay queues between
//! the node and its socket. Those queues ([`ImpairedLink`]) live here, next to the only socket they touch,
//! and the node itself stays unaware of them.
//!
//! ```text
//!  router ──ctl_in(G/2)──►┐                 ┌──udp_out(impair)──► socket ──► client
//!                         │   gateway node  │
//!  router ◄─ctl_out(G/2)──┘ (sans-IO core)  └◄─udp_in(impair)─── socket ◄── client
//!                               ▲   │
//!                  TargetEvent  │   │ ConnectionData / Eof / Closed
//!                               │   ▼
//!                         TCP target / PTY
//! ```

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use pam_lite_core::tube::CloseReason;
use pam_lite_core::{CandidateKind, Command, ConnNo, Datagram, Input, Node, Output};
use pam_lite_driver_kit::udp::{Offload, TxQueue};

use crate::impair::{ImpairedLink, LinkStats, UdpImpairment};
use crate::target::{self, TargetConfig, TargetEvent, TargetSink};

/// How often the UDP reader looks at the stop flag.
const UDP_POLL: Duration = Duration::from_millis(100);
/// The loop wakes at least this often (stop flag, pending target data).
const MAX_IDLE: Duration = Duration::from_millis(250);

/// A node that can play the gateway: the sans-IO [`pam_lite_core::gateway::Gateway`], or a test double.
pub trait GatewayNode: Node + Send + 'static {
    /// Whether connection `conn` accepts more target bytes now (flow control towards the tube).
    fn can_send(&self, _conn: ConnNo) -> bool {
        true
    }
}

impl GatewayNode for pam_lite_core::gateway::Gateway {
    fn can_send(&self, conn: ConnNo) -> bool {
        pam_lite_core::gateway::Gateway::can_send(self, conn)
    }
}

/// Called with every controller reply of the gateway (after the router↔gateway delay).
pub type ReplySink = Box<dyn FnMut(u64, String) + Send>;

/// Knobs of the gateway machine.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where the gateway's UDP socket binds; its address is the gateway's only ICE host candidate, so it
    /// must be a specific address (default `127.0.0.1:0`).
    pub udp_bind: SocketAddr,
    pub target: TargetConfig,
    /// Router ↔ gateway round trip: each controller message and reply waits half of it.
    pub router_rtt: Duration,
    /// Impairment of datagrams arriving at the gateway.
    pub udp_inbound: UdpImpairment,
    /// Impairment of datagrams the gateway sends.
    pub udp_outbound: UdpImpairment,
    /// Seed of the impairment RNGs (same seed, same fate for the same traffic).
    pub impairment_seed: u64,
    /// Restart the gateway (a fresh node: every session and target connection lost, same address and
    /// identity) this long after the first datagram from a client. See [`GatewayHost::restart`].
    pub restart_after: Option<Duration>,
    /// Drop every datagram in both directions from this long after the first datagram from a client (a
    /// path that goes dark). See [`GatewayHost::set_blackhole`].
    pub blackhole_after: Option<Duration>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            udp_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            target: TargetConfig::default(),
            router_rtt: Duration::ZERO,
            udp_inbound: UdpImpairment::default(),
            udp_outbound: UdpImpairment::default(),
            impairment_seed: 0,
            restart_after: None,
            blackhole_after: None,
        }
    }
}

enum Event {
    Controller {
        reply_to: u64,
        stream: bool,
        payload: String,
    },
    /// What one batched read returned (one channel send, one wake-up, per batch).
    Datagrams(Vec<Datagram>),
    Target(TargetEvent),
    Restart,
    Stop,
}

impl From<TargetEvent> for Event {
    fn from(t: TargetEvent) -> Self {
        Event::Target(t)
    }
}

/// Per-connection bytes waiting for the node's flow control, in order.
enum Pending {
    Data(Vec<u8>),
    Eof,
    Closed,
}

/// A running gateway machine. Dropping it stops its threads.
pub struct GatewayHost {
    tx: Sender<Event>,
    stop: Arc<AtomicBool>,
    udp_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<std::sync::Mutex<(LinkStats, LinkStats)>>,
    blackhole: Arc<AtomicBool>,
}

impl std::fmt::Debug for GatewayHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHost")
            .field("udp_addr", &self.udp_addr)
            .finish_non_exhaustive()
    }
}

/// A cloneable handle to deliver controller messages to the gateway (this crate's gateway machine, or an
/// external gateway process: [`crate::external`]).
#[derive(Clone)]
pub struct ControllerInbox(Arc<dyn Fn(u64, bool, String) -> bool + Send + Sync>);

impl ControllerInbox {
    /// An inbox that hands each message to `deliver` (`false`: the gateway has stopped).
    pub fn from_fn(deliver: impl Fn(u64, bool, String) -> bool + Send + Sync + 'static) -> Self {
        ControllerInbox(Arc::new(deliver))
    }

    /// Deliver a controller message (the router↔gateway delay is applied by the gateway machine).
    pub fn deliver(&self, reply_to: u64, stream: bool, payload: String) -> bool {
        (self.0)(reply_to, stream, payload)
    }
}

impl GatewayHost {
    /// Bind the gateway's UDP socket on `config.udp_bind` and start the node built by `make_node` (given the
    /// start instant and the restart generation, 0 first; a restart builds a new node). `replies` receives
    /// every controller reply.
    pub fn start<N: GatewayNode>(
        make_node: impl Fn(Instant, u32) -> N + Send + 'static,
        config: HostConfig,
        replies: ReplySink,
    ) -> io::Result<Self> {
        for imp in [&config.udp_inbound, &config.udp_outbound] {
            imp.validate()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        }
        if config.udp_bind.ip().is_unspecified() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the gateway's UDP address {} must be a specific address (it is its host candidate)",
                    config.udp_bind
                ),
            ));
        }
        let socket = UdpSocket::bind(config.udp_bind)?;
        let udp_addr = socket.local_addr()?;
        // Batched reads and GSO trains, as the drivers do (the socket becomes non-blocking).
        let offload = Offload::new(&socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let blackhole = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(std::sync::Mutex::new((
            LinkStats::default(),
            LinkStats::default(),
        )));

        let reader = {
            let socket = socket.try_clone()?;
            let (tx, offload) = (tx.clone(), offload.clone());
            let stop = stop.clone();
            let blackhole = blackhole.clone();
            thread::Builder::new()
                .name("emu-gw-udp".into())
                .spawn(move || udp_reader(socket, offload, udp_addr, tx, stop, blackhole))?
        };
        let main = {
            let tx = tx.clone();
            let stop = stop.clone();
            let stats = stats.clone();
            let blackhole = blackhole.clone();
            thread::Builder::new()
                .name("emu-gateway".into())
                .spawn(move || {
                    let now = Instant::now();
                    let node = make_node(now, 0);
                    let udp = (socket, TxQueue::new(offload));
                    let mut gw = Loop::new(node, config, udp, udp_addr, tx, stop, replies, now);
                    gw.blackhole = blackhole;
                    gw.run(rx, &make_node);
                    if let Ok(mut s) = stats.lock() {
                        *s = (gw.udp_in.stats(), gw.udp_out.stats());
                    }
                })?
        };
        tracing::info!(%udp_addr, "emulated gateway listening");
        Ok(GatewayHost {
            tx,
            stop,
            udp_addr,
            threads: vec![main, reader],
            stats,
            blackhole,
        })
    }

    /// Restart the gateway now: its node is replaced by a fresh one (every tube, DTLS/SCTP association and
    /// target connection is gone; the UDP address and the identity stay), as a gateway process that
    /// crashed and came back does. Clients must notice on their own.
    pub fn restart(&self) {
        let _ = self.tx.send(Event::Restart);
    }

    /// Drop (`true`) or pass (`false`) every datagram in both directions from now on.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::Release);
    }

    /// The gateway's UDP address (its only ICE host candidate).
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    pub fn inbox(&self) -> ControllerInbox {
        let tx = self.tx.clone();
        ControllerInbox::from_fn(move |reply_to, stream, payload| {
            tx.send(Event::Controller {
                reply_to,
                stream,
                payload,
            })
            .is_ok()
        })
    }

    /// Stop the threads and wait for them. Returns the (inbound, outbound) UDP link statistics.
    pub fn shutdown(&mut self) -> (LinkStats, LinkStats) {
        self.stop.store(true, Ordering::Release);
        let _ = self.tx.send(Event::Stop);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }
}

impl Drop for GatewayHost {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn udp_reader(
    socket: UdpSocket,
    offload: Offload,
    local: SocketAddr,
    tx: Sender<Event>,
    stop: Arc<AtomicBool>,
    blackhole: Arc<AtomicBool>,
) {
    let mut batch = Vec::new();
    while !stop.load(Ordering::Acquire) {
        match offload.receive(&socket, &mut batch) {
            Ok(()) if blackhole.load(Ordering::Acquire) => batch.clear(),
            Ok(()) => {
                let datagrams = batch
                    .drain(..)
                    .map(|r| Datagram {
                        source: r.source,
                        destination: local,
                        contents: r.contents,
                    })
                    .collect();
                if tx.send(Event::Datagrams(datagrams)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = wait_for(&socket, libc::POLLIN, UDP_POLL) {
                    tracing::warn!(error = %e, "gateway UDP socket failed");
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // ICMP port unreachable from a gone client shows up as ConnectionRefused on Linux: keep going.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => {
                tracing::warn!(error = %e, "gateway UDP socket failed");
                return;
            }
        }
    }
}

/// Wait up to `timeout` for `events` (`POLLIN`, `POLLOUT`) on the non-blocking `socket`.
fn wait_for(socket: &UdpSocket, events: libc::c_short, timeout: Duration) -> io::Result<()> {
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut fd, 1, ms) } {
        -1 => match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            e => Err(e),
        },
        _ => Ok(()),
    }
}

struct Loop<N> {
    node: N,
    config: HostConfig,
    socket: UdpSocket,
    /// Outgoing datagrams, sent as GSO trains at the end of each tick.
    tx: TxQueue,
    local: SocketAddr,
    events: Sender<Event>,
    stop: Arc<AtomicBool>,
    replies: ReplySink,
    ctl_in: ImpairedLink<(u64, bool, String)>,
    ctl_out: ImpairedLink<(u64, String)>,
    udp_in: ImpairedLink<Datagram>,
    udp_out: ImpairedLink<Datagram>,
    sinks: HashMap<ConnNo, TargetSink>,
    pending: HashMap<ConnNo, VecDeque<Pending>>,
    /// Connections the node closed while their target was still being opened.
    closed_early: Vec<ConnNo>,
    /// Every datagram is dropped while set (shared with the UDP reader and [`GatewayHost`]).
    blackhole: Arc<AtomicBool>,
    /// When the first client datagram arrived (the origin of `restart_after` / `blackhole_after`).
    first_datagram: Option<Instant>,
    /// Restarts so far (each new node gets the next generation).
    generation: u32,
}

impl<N: GatewayNode> Loop<N> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        node: N,
        config: HostConfig,
        (socket, tx): (UdpSocket, TxQueue),
        local: SocketAddr,
        events: Sender<Event>,
        stop: Arc<AtomicBool>,
        replies: ReplySink,
        now: Instant,
    ) -> Self {
        let half = UdpImpairment {
            latency: config.router_rtt / 2,
            ..Default::default()
        };
        let seed = config.impairment_seed;
        let mut lp = Loop {
            ctl_in: ImpairedLink::new(half, seed),
            ctl_out: ImpairedLink::new(half, seed.wrapping_add(1)),
            udp_in: ImpairedLink::new(config.udp_inbound, seed.wrapping_add(2)),
            udp_out: ImpairedLink::new(config.udp_outbound, seed.wrapping_add(3)),
            node,
            config,
            socket,
            tx,
            local,
            events,
            stop,
            replies,
            sinks: HashMap::new(),
            pending: HashMap::new(),
            closed_early: Vec::new(),
            blackhole: Arc::new(AtomicBool::new(false)),
            first_datagram: None,
            generation: 0,
        };
        lp.announce(now);
        lp
    }

    /// Give the node its one host candidate.
    fn announce(&mut self, now: Instant) {
        let local = self.local;
        self.input(
            Input::LocalCandidate {
                addr: local,
                kind: CandidateKind::Host,
            },
            now,
        );
        self.input(Input::GatheringComplete, now);
    }

    /// The instants `restart_after` / `blackhole_after` fire at (once the first datagram came).
    fn scheduled(&self) -> [Option<Instant>; 2] {
        let at = |d: Option<Duration>| Some(self.first_datagram? + d?);
        [
            at(self.config.restart_after).filter(|_| self.generation == 0),
            at(self.config.blackhole_after).filter(|_| !self.blackhole.load(Ordering::Acquire)),
        ]
    }

    /// Replace the node with a fresh one (see [`GatewayHost::restart`]).
    fn restart(&mut self, make_node: &dyn Fn(Instant, u32) -> N, now: Instant) {
        self.generation = self.generation.saturating_add(1);
        tracing::info!(
            generation = self.generation,
            "restarting the emulated gateway"
        );
        for (_, sink) in self.sinks.drain() {
            sink.credit().release(usize::MAX);
            sink.close();
        }
        self.pending.clear();
        self.closed_early.clear();
        self.ctl_in = ImpairedLink::new(
            UdpImpairment {
                latency: self.config.router_rtt / 2,
                ..Default::default()
            },
            self.config.impairment_seed,
        );
        self.node = make_node(now, self.generation);
        self.announce(now);
    }

    fn deadline(&self) -> Option<Instant> {
        [
            self.node.poll_timeout(),
            self.ctl_in.next_due(),
            self.ctl_out.next_due(),
            self.udp_in.next_due(),
            self.udp_out.next_due(),
        ]
        .into_iter()
        .chain(self.scheduled())
        .flatten()
        .min()
    }

    fn run(&mut self, rx: Receiver<Event>, make_node: &dyn Fn(Instant, u32) -> N) {
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let wait = self
                .deadline()
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(MAX_IDLE)
                .min(MAX_IDLE);
            match rx.recv_timeout(wait) {
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(ev) => {
                    self.on_event(ev, Instant::now(), make_node);
                    // Take whatever else is queued before looking at timers again.
                    while let Ok(ev) = rx.try_recv() {
                        if matches!(ev, Event::Stop) {
                            return self.finish();
                        }
                        self.on_event(ev, Instant::now(), make_node);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            let [restart_at, blackhole_at] = self.scheduled();
            if blackhole_at.is_some_and(|t| t <= now) {
                tracing::info!("the emulated gateway's UDP path goes dark (blackhole_after)");
                self.blackhole.store(true, Ordering::Release);
            }
            if restart_at.is_some_and(|t| t <= now) {
                self.restart(make_node, now);
            }
            self.tick(Instant::now());
        }
        self.finish();
    }

    fn finish(&mut self) {
        let now = Instant::now();
        self.input(Input::Command(Command::Close), now);
        self.tick(now);
        for (_, sink) in self.sinks.drain() {
            sink.close();
        }
    }

    fn on_event(&mut self, ev: Event, now: Instant, make_node: &dyn Fn(Instant, u32) -> N) {
        match ev {
            Event::Controller {
                reply_to,
                stream,
                payload,
            } => self.ctl_in.push((reply_to, stream, payload), now),
            Event::Datagrams(batch) => {
                self.first_datagram.get_or_insert(now);
                for d in batch {
                    self.udp_in.push(d, now);
                }
            }
            Event::Target(t) => self.on_target(t, now),
            Event::Restart => self.restart(make_node, now),
            Event::Stop => {}
        }
    }

    /// Release everything due, fire the node's timer, and feed pending target data.
    fn tick(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some((reply_to, stream, payload)) = self.ctl_in.pop_due(now) {
                progressed = true;
                self.input(
                    Input::ControllerMessage {
                        reply_to,
                        stream,
                        payload,
                    },
                    now,
                );
            }
            while let Some(d) = self.udp_in.pop_due(now) {
                progressed = true;
                self.input(Input::Datagram(d), now);
            }
            while let Some(d) = self.udp_out.pop_due(now) {
                progressed = true;
                if self.blackhole.load(Ordering::Acquire) {
                    continue;
                }
                self.tx.push(d);
            }
            self.flush();
            while let Some((reply_to, payload)) = self.ctl_out.pop_due(now) {
                progressed = true;
                (self.replies)(reply_to, payload);
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                progressed = true;
                self.input(Input::Timeout, now);
            }
            progressed |= self.feed_pending(now);
            if !progressed {
                break;
            }
        }
    }

    /// Send what is queued, waiting for the socket when it is full (as a blocking `send_to` did).
    fn flush(&mut self) {
        self.tx.flush(&self.socket);
        while self.tx.is_waiting() && !self.stop.load(Ordering::Acquire) {
            if let Err(e) = wait_for(&self.socket, libc::POLLOUT, UDP_POLL) {
                tracing::debug!(error = %e, "gateway UDP socket not writable");
                return;
            }
            self.tx.flush(&self.socket);
        }
    }

    fn input(&mut self, input: Input, now: Instant) {
        self.node.handle_input(input, now);
        while let Some(out) = self.node.poll_output() {
            self.on_output(out, now);
        }
    }

    fn on_output(&mut self, out: Output, now: Instant) {
        match out {
            Output::Transmit(mut d) => {
                // The node may name an unspecified source; the socket is what it is.
                d.source = self.local;
                self.udp_out.push(d, now);
            }
            Output::ControllerReply { reply_to, payload } => {
                self.ctl_out.push((reply_to, payload), now)
            }
            Output::ConnectTarget { conn } => {
                target::open(
                    &self.config.target,
                    conn,
                    self.events.clone(),
                    self.stop.clone(),
                );
            }
            Output::ConnectionData { conn, data } => match self.sinks.get(&conn) {
                Some(sink) => {
                    if !sink.write(data) {
                        tracing::debug!(conn, "target gone while writing");
                    }
                }
                None => tracing::debug!(conn, "data for a connection without a target"),
            },
            Output::ConnectionEof { conn } => {
                if let Some(sink) = self.sinks.get(&conn) {
                    sink.shutdown_write();
                }
            }
            Output::TargetResize { conn, cols, rows } => {
                if let Some(sink) = self.sinks.get(&conn) {
                    sink.resize(cols, rows);
                }
            }
            Output::ConnectionClosed { conn, reason } => {
                tracing::debug!(conn, %reason, "gateway connection closed");
                match self.sinks.remove(&conn) {
                    Some(sink) => {
                        // Unblock its reader (nothing it read will be delivered now), then close.
                        sink.credit().release(usize::MAX);
                        sink.close();
                    }
                    None => self.closed_early.push(conn),
                }
                self.pending.remove(&conn);
            }
            Output::Finished(result) => tracing::debug!(?result, "gateway node finished"),
            // The emulated gateway's relays run over UDP only (TURN over TCP is the client's need).
            Output::StreamOpen { stream, .. } => {
                self.input(
                    Input::Stream {
                        stream,
                        event: pam_lite_core::StreamEvent::Closed {
                            reason: "the emulated gateway opens no TCP streams".into(),
                        },
                    },
                    now,
                );
            }
            Output::StreamWrite { .. } | Output::StreamClose { .. } => {}
            Output::Checkpoint(_)
            | Output::Connected
            | Output::TubeReady
            | Output::ConnectionOpened { .. }
            | Output::TerminalOutput(_)
            | Output::Http(_)
            | Output::WsConnect(_)
            | Output::WsClose => {}
            // This loop paces target reads with `Gateway::can_send` and its credit counter instead.
            Output::Backpressure { .. } => {}
        }
    }

    fn on_target(&mut self, ev: TargetEvent, now: Instant) {
        match ev {
            TargetEvent::Connected { conn, sink } => {
                if let Some(pos) = self.closed_early.iter().position(|c| *c == conn) {
                    self.closed_early.swap_remove(pos);
                    if let Some(s) = sink {
                        s.close();
                    }
                    return;
                }
                let ok = sink.is_some();
                if let Some(s) = sink {
                    self.sinks.insert(conn, s);
                }
                self.input(Input::Command(Command::TargetConnected { conn, ok }), now);
            }
            TargetEvent::Data { conn, data } => self.queue(conn, Pending::Data(data)),
            TargetEvent::Eof { conn } => self.queue(conn, Pending::Eof),
            TargetEvent::Closed { conn } => self.queue(conn, Pending::Closed),
            TargetEvent::Delivered { conn, bytes } => {
                if self.sinks.contains_key(&conn) {
                    self.input(Input::Command(Command::Delivered { conn, bytes }), now);
                }
            }
        }
    }

    fn queue(&mut self, conn: ConnNo, p: Pending) {
        if !self.sinks.contains_key(&conn) {
            // Closed by the node already: whatever the target still says is moot. (A target's output
            // never precedes its `Connected`: `target::open` sends that first.)
            tracing::debug!(conn, "target output after the connection closed dropped");
            return;
        }
        self.pending.entry(conn).or_default().push_back(p);
    }

    /// Hand queued target output to the node as far as its flow control allows. `true` if any moved.
    fn feed_pending(&mut self, now: Instant) -> bool {
        let conns: Vec<ConnNo> = self.pending.keys().copied().collect();
        let mut moved = false;
        for conn in conns {
            while let Some(is_data) = self
                .pending
                .get(&conn)
                .and_then(|q| q.front())
                .map(|front| matches!(front, Pending::Data(_)))
            {
                if is_data && !self.node.can_send(conn) {
                    break;
                }
                let Some(item) = self.pending.get_mut(&conn).and_then(|q| q.pop_front()) else {
                    break;
                };
                moved = true;
                match item {
                    Pending::Data(data) => {
                        if let Some(s) = self.sinks.get(&conn) {
                            s.credit().release(data.len());
                        }
                        self.input(Input::Command(Command::Send { conn, data }), now);
                    }
                    Pending::Eof => self.input(Input::Command(Command::SendEof { conn }), now),
                    Pending::Closed => {
                        if let Some(s) = self.sinks.remove(&conn) {
                            s.credit().release(usize::MAX);
                        }
                        let reason = CloseReason::Normal;
                        self.input(
                            Input::Command(Command::CloseConnection { conn, reason }),
                            now,
                        );
                    }
                }
            }
            if self.pending.get(&conn).is_some_and(VecDeque::is_empty) {
                self.pending.remove(&conn);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Mutex;

    /// A stand-in gateway: echoes controller messages, opens connection 1 on `"open"`, forwards `"send:…"`
    /// payloads to the target, reports target bytes as replies, and echoes datagrams back to the sender.
    struct Fake {
        out: VecDeque<Output>,
    }

    impl Node for Fake {
        fn handle_input(&mut self, input: Input, _now: Instant) {
            match input {
                Input::ControllerMessage {
                    reply_to, payload, ..
                } => {
                    if payload == "open" {
                        self.out.push_back(Output::ConnectTarget { conn: 1 });
                    } else if let Some(rest) = payload.strip_prefix("send:") {
                        self.out.push_back(Output::ConnectionData {
                            conn: 1,
                            data: rest.as_bytes().to_vec(),
                        });
                    }
                    self.out.push_back(Output::ControllerReply {
                        reply_to,
                        payload: format!("re:{payload}"),
                    });
                }
                Input::Command(Command::TargetConnected { conn, ok }) => {
                    self.out.push_back(Output::ControllerReply {
                        reply_to: 0,
                        payload: format!("target {conn} {ok}"),
                    })
                }
                Input::Command(Command::Send { data, .. }) => {
                    self.out.push_back(Output::ControllerReply {
                        reply_to: 0,
                        payload: format!("data:{}", String::from_utf8_lossy(&data)),
                    })
                }
                Input::Datagram(d) => self.out.push_back(Output::Transmit(Datagram {
                    source: d.destination,
                    destination: d.source,
                    contents: d.contents,
                })),
                _ => {}
            }
        }
        fn poll_output(&mut self) -> Option<Output> {
            self.out.pop_front()
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
    }
    impl GatewayNode for Fake {}

    fn start(config: HostConfig) -> (GatewayHost, mpsc::Receiver<(u64, String)>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let host = GatewayHost::start(
            |_, _| Fake {
                out: VecDeque::new(),
            },
            config,
            Box::new(move |r, p| {
                let _ = tx.lock().map(|t| t.send((r, p)));
            }),
        )
        .expect("start");
        (host, rx)
    }

    #[test]
    fn controller_round_trip_waits_the_gateway_rtt() {
        let (host, rx) = start(HostConfig {
            router_rtt: Duration::from_millis(100),
            ..Default::default()
        });
        let t0 = Instant::now();
        assert!(host.inbox().deliver(7, false, "hi".into()));
        let (r, p) = rx.recv_timeout(Duration::from_secs(5)).expect("reply");
        assert_eq!((r, p.as_str()), (7, "re:hi"));
        assert!(
            t0.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn udp_goes_through_the_socket_with_latency() {
        let cfg = HostConfig {
            udp_outbound: UdpImpairment {
                latency: Duration::from_millis(60),
                ..Default::default()
            },
            ..Default::default()
        };
        let (host, _rx) = start(cfg);
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let t0 = Instant::now();
        client.send_to(b"ping", host.udp_addr()).expect("send");
        let mut buf = [0u8; 16];
        let (n, from) = client.recv_from(&mut buf).expect("echo");
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, host.udp_addr());
        assert!(t0.elapsed() >= Duration::from_millis(60));
    }

    #[test]
    fn udp_binds_where_configured_and_refuses_an_unspecified_address() {
        // 127.0.0.2 is loopback too on Linux, but not the default: the socket must be where it was told.
        let (host, _rx) = start(HostConfig {
            udp_bind: "127.0.0.2:0".parse().expect("addr"),
            ..Default::default()
        });
        assert_eq!(host.udp_addr().ip().to_string(), "127.0.0.2");
        assert_ne!(host.udp_addr().port(), 0);
        let err = GatewayHost::start(
            |_, _| Fake {
                out: VecDeque::new(),
            },
            HostConfig {
                udp_bind: "0.0.0.0:0".parse().expect("addr"),
                ..Default::default()
            },
            Box::new(|_, _| {}),
        )
        .expect_err("unspecified");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn total_loss_drops_every_datagram() {
        let cfg = HostConfig {
            udp_inbound: UdpImpairment {
                loss: 1.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let (mut host, _rx) = start(cfg);
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        for _ in 0..5 {
            client.send_to(b"x", host.udp_addr()).expect("send");
        }
        let mut buf = [0u8; 16];
        assert!(client.recv_from(&mut buf).is_err());
        let (inbound, _) = host.shutdown();
        assert_eq!(inbound.dropped, 5);
    }

    /// Send one datagram and wait a little for its echo.
    fn echoed(client: &UdpSocket, to: SocketAddr) -> bool {
        client.send_to(b"x", to).expect("send");
        let mut buf = [0u8; 16];
        client.recv_from(&mut buf).is_ok()
    }

    #[test]
    fn a_blackhole_drops_everything_until_lifted() {
        let (host, _rx) = start(HostConfig::default());
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        assert!(echoed(&client, host.udp_addr()));
        host.set_blackhole(true);
        assert!(!echoed(&client, host.udp_addr()));
        host.set_blackhole(false);
        assert!(echoed(&client, host.udp_addr()));
    }

    #[test]
    fn blackhole_after_counts_from_the_first_datagram() {
        let (host, _rx) = start(HostConfig {
            blackhole_after: Some(Duration::from_millis(400)),
            ..Default::default()
        });
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_millis(150)))
            .expect("timeout");
        // Nothing is scheduled before a client speaks: the path stays up however long that takes.
        thread::sleep(Duration::from_millis(500));
        assert!(echoed(&client, host.udp_addr()));
        thread::sleep(Duration::from_millis(600));
        assert!(!echoed(&client, host.udp_addr()));
    }

    #[test]
    fn a_restart_builds_a_fresh_node_with_the_next_generation() {
        let (gen_tx, gen_rx) = mpsc::channel();
        let gen_tx = Mutex::new(gen_tx);
        let host = GatewayHost::start(
            move |_, generation| {
                let _ = gen_tx.lock().map(|t| t.send(generation));
                Fake {
                    out: VecDeque::new(),
                }
            },
            HostConfig {
                restart_after: Some(Duration::from_millis(200)),
                ..Default::default()
            },
            Box::new(|_, _| {}),
        )
        .expect("start");
        let next = || gen_rx.recv_timeout(Duration::from_secs(5)).ok();
        assert_eq!(next(), Some(0));
        host.restart();
        assert_eq!(next(), Some(1));
        // restart_after fires once, and only once a client has spoken (and only on the first node).
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        assert!(echoed(&client, host.udp_addr()));
        assert_eq!(gen_rx.recv_timeout(Duration::from_millis(600)).ok(), None);
    }

    #[test]
    fn tunnel_target_bytes_flow_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf.to_ascii_uppercase()).expect("write");
        });
        let (host, rx) = start(HostConfig {
            target: TargetConfig::Tunnel { forward_to: addr },
            ..Default::default()
        });
        host.inbox().deliver(1, false, "open".into());
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !got.iter().any(|p: &String| p == "data:HELLO") {
            assert!(Instant::now() < deadline, "{got:?}");
            if let Ok((_, p)) = rx.recv_timeout(Duration::from_millis(100)) {
                if p == "target 1 true" {
                    host.inbox().deliver(2, false, "send:hello".into());
                }
                got.push(p);
            }
        }
        server.join().expect("server");
    }
}
