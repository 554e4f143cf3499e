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
    let driver = Driver {
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
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.feed(Input::Timeout);
                continue;
            }
            let wake = match (self.node.poll_timeout(), self.finish_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
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
            Output::WsClose => self.ws = None,
            Output::Finished(result) => {
                if self.finish_deadline.is_none() {
                    self.finish_deadline = Some(Instant::now() + self.finish_flush);
                }
                self.deliver(Output::Finished(result));
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
        match ws::spawn(connect, self.tls.clone(), self.ws_frame_limit, emit) {
            Ok(worker) => self.ws = Some((generation, worker)),
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
        if matches!(input, Input::WsClosed { .. }) {
            self.ws = None;
        }
        self.feed(input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{mute_server, puppet, ws_server, Echo, HttpStub, StubBehavior};
    use pam_lite_core::{HttpRequest, Method, WsConnect};
    use std::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(5);

    fn request(id: u64, url: String, fresh: bool, timeout: Duration) -> HttpRequest {
        HttpRequest {
            id,
            method: Method::Post,
            url,
            headers: vec![
                ("Authorization".into(), "Bearer top-secret-value".into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: b"{\"q\":1}".to_vec(),
            fresh_connection: fresh,
            timeout,
        }
    }

    #[test]
    fn announces_host_candidate_then_gathering_complete() {
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        assert_eq!(
            ctl.next(WAIT),
            Some(Input::LocalCandidate {
                addr: handle.local_addr(),
                kind: CandidateKind::Host
            })
        );
        assert_eq!(ctl.next(WAIT), Some(Input::GatheringComplete));
    }

    #[test]
    fn echo_node_answers_datagrams_with_real_addresses() {
        let handle = spawn(Echo::default(), DriverConfig::default()).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(WAIT)).unwrap();
        for i in 0..50u8 {
            peer.send_to(&[i; 100], handle.local_addr()).unwrap();
            let mut buf = [0u8; 200];
            let (n, from) = peer.recv_from(&mut buf).unwrap();
            assert_eq!((n, from), (100, handle.local_addr()));
            assert_eq!(buf[0], i);
        }
        handle.input(Input::Command(Command::Close));
        assert_eq!(
            handle.recv_timeout(WAIT),
            Ok(Some(Output::Finished(Ok(()))))
        );
        assert_eq!(handle.recv_timeout(WAIT), Err(Stopped));
        handle.join().unwrap();
    }

    /// 40 MB/s of 1200-byte datagrams for half a second, echoed: the driver must keep up.
    #[test]
    fn echo_keeps_up_with_40_megabytes_per_second() {
        let handle = spawn(Echo::default(), DriverConfig::default()).unwrap();
        let target = handle.local_addr();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = socket2::SockRef::from(&peer);
        let _ = sock.set_recv_buffer_size(8 << 20);
        peer.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let sender = peer.try_clone().unwrap();
        const SIZE: usize = 1200;
        const COUNT: usize = 16_667; // 20 MB
        let started = Instant::now();
        let tx = thread::spawn(move || {
            // Pace at 40 MB/s: one millisecond holds ~33 datagrams.
            for i in 0..COUNT {
                if i % 33 == 0 {
                    let due = started + Duration::from_micros((i as u64 / 33) * 1000);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                }
                let _ = sender.send_to(&[7u8; SIZE], target);
            }
        });
        let mut received = 0usize;
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = peer.recv_from(&mut buf) {
            received += n;
            if received >= COUNT * SIZE {
                break;
            }
        }
        tx.join().unwrap();
        let secs = started.elapsed().as_secs_f64();
        let ratio = received as f64 / (COUNT * SIZE) as f64;
        eprintln!(
            "echoed {:.1} MB in {secs:.2}s ({:.1} MB/s), {:.1}% delivered",
            received as f64 / 1e6,
            received as f64 / 1e6 / secs,
            ratio * 100.0
        );
        assert!(ratio > 0.95, "only {:.1}% echoed", ratio * 100.0);
    }

    #[test]
    fn timer_fires_when_due() {
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        ctl.next(WAIT).unwrap();
        ctl.next(WAIT).unwrap();
        let due = Instant::now() + Duration::from_millis(80);
        ctl.wake_at(Some(due));
        handle.input(Input::Command(Command::TerminalResize { cols: 1, rows: 1 }));
        ctl.next(WAIT).unwrap();
        let (input, at) = ctl.seen.recv_timeout(WAIT).unwrap();
        assert_eq!(input, Input::Timeout);
        assert!(at >= due, "timer fired {:?} early", due - at);
        assert!(at < due + Duration::from_millis(500), "timer late");
    }

    #[test]
    fn http_pooled_requests_share_one_connection_and_return_everything() {
        let stub = HttpStub::start(StubBehavior::Respond {
            status: 201,
            body: b"{\"ok\":true}".to_vec(),
        });
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        for id in 1..=3 {
            ctl.script(Output::Http(request(id, stub.url("/api/x"), false, WAIT)));
            handle.input(Input::Timeout);
            let got = ctl.wait_for(WAIT, |i| {
                matches!(i, Input::HttpResponse { .. } | Input::HttpError { .. })
            });
            let Some(Input::HttpResponse {
                id: got_id,
                response,
            }) = got
            else {
                panic!("no response: {got:?}");
            };
            assert_eq!(got_id, id);
            assert_eq!(response.status, 201);
            assert_eq!(response.content_type.as_deref(), Some("application/json"));
            assert_eq!(
                response.set_cookies,
                vec!["a=1; Path=/".to_string(), "b=2".into()]
            );
            assert_eq!(response.body, b"{\"ok\":true}");
        }
        let seen = stub.requests.recv_timeout(WAIT).unwrap();
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("POST", "/api/x")
        );
        assert_eq!(seen.body, b"{\"q\":1}");
        assert!(seen
            .headers
            .contains(&("authorization".into(), "Bearer top-secret-value".into())));
        assert_eq!(
            stub.connections.load(Ordering::SeqCst),
            1,
            "keep-alive not reused"
        );
    }

    #[test]
    fn http_fresh_requests_open_new_connections() {
        let stub = HttpStub::start(StubBehavior::Respond {
            status: 200,
            body: Vec::new(),
        });
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        for id in 1..=3 {
            ctl.script(Output::Http(request(id, stub.url("/f"), true, WAIT)));
            handle.input(Input::Timeout);
            let got = ctl.wait_for(WAIT, |i| {
                matches!(i, Input::HttpResponse { .. } | Input::HttpError { .. })
            });
            assert!(matches!(got, Some(Input::HttpResponse { .. })), "{got:?}");
        }
        assert_eq!(stub.connections.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn http_timeout_and_refusal_are_errors_without_secrets() {
        let silent = HttpStub::start(StubBehavior::Silent);
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        let started = Instant::now();
        ctl.script(Output::Http(request(
            7,
            silent.url("/slow"),
            false,
            Duration::from_millis(300),
        )));
        ctl.script(Output::Http(request(
            8,
            format!("http://{closed}/x"),
            true,
            WAIT,
        )));
        handle.input(Input::Timeout);
        let mut errors = Vec::new();
        while errors.len() < 2 {
            match ctl.wait_for(WAIT, |i| {
                matches!(i, Input::HttpResponse { .. } | Input::HttpError { .. })
            }) {
                Some(Input::HttpError { id, error }) => errors.push((id, error, started.elapsed())),
                other => panic!("expected an error, got {other:?}"),
            }
        }
        errors.sort_by_key(|e| e.0);
        assert!(errors[0].1.contains("timed out"), "{}", errors[0].1);
        assert!(errors[0].2 >= Duration::from_millis(300) && errors[0].2 < Duration::from_secs(3));
        for (_, text, _) in &errors {
            assert!(!text.contains("top-secret"), "{text}");
        }
    }

    #[test]
    fn http_body_is_bounded() {
        let stub = HttpStub::start(StubBehavior::Respond {
            status: 200,
            body: vec![b'x'; 5000],
        });
        let (node, ctl) = puppet();
        let config = DriverConfig {
            http_body_limit: 1000,
            ..DriverConfig::default()
        };
        let handle = spawn(node, config).unwrap();
        ctl.script(Output::Http(request(1, stub.url("/big"), false, WAIT)));
        handle.input(Input::Timeout);
        let got = ctl.wait_for(WAIT, |i| {
            matches!(i, Input::HttpResponse { .. } | Input::HttpError { .. })
        });
        assert!(
            matches!(&got, Some(Input::HttpError { id: 1, error }) if error.contains("larger than")),
            "{got:?}"
        );
    }

    #[test]
    fn websocket_delivers_text_frames_then_close() {
        let addr = ws_server(|mut ws, headers| {
            assert!(headers.contains(&("authorization".into(), "Bearer ws-secret".into())));
            ws.send(tungstenite::Message::text("hello")).unwrap();
            ws.send(tungstenite::Message::binary(vec![1, 2, 3]))
                .unwrap();
            ws.send(tungstenite::Message::text("world")).unwrap();
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        });
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        ctl.script(Output::WsConnect(WsConnect {
            url: format!("ws://{addr}/ws"),
            headers: vec![("Authorization".into(), "Bearer ws-secret".into())],
            timeout: WAIT,
        }));
        handle.input(Input::Timeout);
        let ws_input = |i: &Input| {
            matches!(
                i,
                Input::WsOpened | Input::WsMessage(_) | Input::WsClosed { .. }
            )
        };
        assert_eq!(ctl.wait_for(WAIT, ws_input), Some(Input::WsOpened));
        assert_eq!(
            ctl.wait_for(WAIT, ws_input),
            Some(Input::WsMessage("hello".into()))
        );
        assert_eq!(
            ctl.wait_for(WAIT, ws_input),
            Some(Input::WsMessage("world".into()))
        );
        assert!(matches!(
            ctl.wait_for(WAIT, ws_input),
            Some(Input::WsClosed { .. })
        ));
    }

    #[test]
    fn websocket_close_output_sends_a_close_frame_and_reports_nothing() {
        let (closed_tx, closed_rx) = mpsc::channel();
        let addr = ws_server(move |mut ws, _| {
            ws.send(tungstenite::Message::text("hi")).unwrap();
            loop {
                match ws.read() {
                    Ok(tungstenite::Message::Close(_)) => {
                        closed_tx.send(()).unwrap();
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        ctl.script(Output::WsConnect(WsConnect {
            url: format!("ws://{addr}/"),
            headers: Vec::new(),
            timeout: WAIT,
        }));
        handle.input(Input::Timeout);
        assert_eq!(
            ctl.wait_for(WAIT, |i| matches!(i, Input::WsMessage(_))),
            Some(Input::WsMessage("hi".into()))
        );
        ctl.script(Output::WsClose);
        handle.input(Input::Timeout);
        closed_rx.recv_timeout(WAIT).unwrap();
        assert_eq!(
            ctl.wait_for(Duration::from_millis(300), |i| matches!(
                i,
                Input::WsClosed { .. }
            )),
            None
        );
    }

    #[test]
    fn websocket_oversized_frame_and_handshake_timeout_close() {
        let addr = ws_server(|mut ws, _| {
            let _ = ws.send(tungstenite::Message::text("y".repeat(4096)));
            while ws.read().is_ok() {}
        });
        let mute = mute_server();
        let (node, ctl) = puppet();
        let config = DriverConfig {
            ws_frame_limit: 1024,
            ..DriverConfig::default()
        };
        let handle = spawn(node, config).unwrap();
        ctl.script(Output::WsConnect(WsConnect {
            url: format!("ws://{addr}/"),
            headers: Vec::new(),
            timeout: WAIT,
        }));
        handle.input(Input::Timeout);
        assert_eq!(
            ctl.wait_for(WAIT, |i| matches!(i, Input::WsOpened)),
            Some(Input::WsOpened)
        );
        let closed = ctl.wait_for(WAIT, |i| {
            matches!(i, Input::WsClosed { .. } | Input::WsMessage(_))
        });
        assert!(matches!(closed, Some(Input::WsClosed { .. })), "{closed:?}");

        let started = Instant::now();
        ctl.script(Output::WsConnect(WsConnect {
            url: format!("ws://{mute}/"),
            headers: Vec::new(),
            timeout: Duration::from_millis(300),
        }));
        handle.input(Input::Timeout);
        let closed = ctl.wait_for(WAIT, |i| {
            matches!(i, Input::WsClosed { .. } | Input::WsOpened)
        });
        assert!(
            matches!(&closed, Some(Input::WsClosed { reason }) if reason.contains("timed out")),
            "{closed:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn app_outputs_are_forwarded_and_finish_flushes_transmits() {
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(WAIT)).unwrap();
        ctl.script(Output::TubeReady);
        ctl.script(Output::ConnectionData {
            conn: 3,
            data: b"abc".to_vec(),
        });
        ctl.script(Output::Finished(Ok(())));
        handle.input(Input::Timeout);
        assert_eq!(handle.recv_timeout(WAIT), Ok(Some(Output::TubeReady)));
        assert_eq!(
            handle.recv_timeout(WAIT),
            Ok(Some(Output::ConnectionData {
                conn: 3,
                data: b"abc".to_vec()
            }))
        );
        assert_eq!(
            handle.recv_timeout(WAIT),
            Ok(Some(Output::Finished(Ok(()))))
        );
        // A graceful-close datagram produced after Finished still goes out during the flush.
        ctl.script(Output::Transmit(Datagram {
            source: handle.local_addr(),
            destination: peer.local_addr().unwrap(),
            contents: b"bye".to_vec(),
        }));
        handle.input(Input::Timeout);
        let mut buf = [0u8; 16];
        let (n, _) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"bye");
        let started = Instant::now();
        assert_eq!(handle.recv_timeout(WAIT), Err(Stopped));
        assert!(started.elapsed() < Duration::from_secs(1));
        handle.join().unwrap();
    }

    #[test]
    fn transmit_from_a_foreign_source_is_dropped() {
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        ctl.script(Output::Transmit(Datagram {
            source: "127.0.0.1:9".parse().unwrap(),
            destination: peer.local_addr().unwrap(),
            contents: b"no".to_vec(),
        }));
        handle.input(Input::Timeout);
        let mut buf = [0u8; 16];
        assert!(peer.recv_from(&mut buf).is_err());
    }

    #[test]
    fn dropping_the_handle_closes_the_node() {
        let (node, ctl) = puppet();
        let handle = spawn(node, DriverConfig::default()).unwrap();
        drop(handle);
        let got = ctl.wait_for(WAIT, |i| matches!(i, Input::Command(Command::Close)));
        assert_eq!(got, Some(Input::Command(Command::Close)));
    }
}
