//! The one dispatcher every runtime drives: it owns the node and everything about running it that does
//! not depend on how a runtime waits — the host-candidate prologue, feeding inputs, performing outputs
//! (through the runtime's [`Io`]), the transmit source check, flow control, delivering to the application,
//! abandoning a node whose application went away, the post-`Finished` flush, and the node's timer.
//!
//! A runtime's wait loop only does this, over and over:
//!
//! ```text
//! match dispatcher.turn(&mut io) {              // drain, fire due timers, flush the transmits
//!     Next::Stop => break,
//!     Next::Wait(until) => wait for a source or `until` (plus the runtime's own deadlines),
//! }
//! then hand what arrived to dispatcher.feed(input, &mut io) / dispatcher.read_datagrams(..)
//! ```

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pam_lite_core::{
    CandidateKind, Command, Datagram, HttpRequest, Input, Node, Output, StreamEvent, StreamId,
    WsConnect,
};

use crate::config::DriverConfig;
use crate::flow::FlowControl;
use crate::udp::{Addressing, Received};

/// After the application went away without the node finishing, give up after this long.
pub const ABANDON_GRACE: Duration = Duration::from_secs(2);
/// Datagrams read per readiness before the other sources get a turn (a GRO train may overshoot it).
pub const UDP_BATCH: usize = 64;

/// The I/O a runtime performs for the [`Dispatcher`]. Every method must return quickly: start the work,
/// and hand its result back later through [`Dispatcher::feed`].
///
/// Methods that can fail at once return the input that reports it (`Some(Input::HttpError{..})`, …); the
/// dispatcher feeds it after the current output drain, never re-entrantly.
///
/// **Adding an I/O kind** (as issue #9's TURN over TCP/TLS was: "open a stream to a TURN server, write to
/// it, close it"): add one `Output` variant in the core, one method here *with a default body* that answers
/// with the failure input (so runtimes that do not support it yet keep compiling and behave correctly),
/// one arm in [`Dispatcher`]'s `perform`, and one `Input` kind the runtime feeds back (stream opened / data /
/// closed). The wait loops and every caller of the dispatcher stay as they are; each runtime that wants
/// the feature overrides the method and adds the new sources to what it waits on. Put the state machine
/// in the kit (like [`crate::stream::Streams`]) so each runtime only waits.
pub trait Io {
    /// Send `datagram` from the node's UDP socket (its source was checked: it is this socket), at the
    /// latest on the next [`Io::flush_transmits`]. Must not block: queue, and drop when the queue is full
    /// (UDP may lose it anyway); [`crate::udp::TxQueue`] does both.
    fn transmit(&mut self, datagram: Datagram);
    /// Send what [`Io::transmit`] queued, as far as the socket takes it now. The dispatcher calls it at
    /// the end of every [`Dispatcher::turn`], just before the runtime waits: the datagrams of one wake
    /// leave together (GSO trains, see [`crate::udp::Offload`]).
    fn flush_transmits(&mut self);
    /// Start `request`; answer with `Input::HttpResponse` / `Input::HttpError` for `request.id`. Honour
    /// `request.fresh_connection` (a new TCP+TLS connection, never pooled) and `request.timeout`.
    fn http(&mut self, request: HttpRequest) -> Option<Input>;
    /// Open the router WebSocket, dropping any previous one (its events are no longer wanted). Answer with
    /// `WsOpened`, every text frame as `WsMessage`, and one final `WsClosed` (also when `connect.timeout`
    /// passes before the socket opened).
    fn ws_connect(&mut self, connect: WsConnect) -> Option<Input>;
    /// Close the WebSocket (a close frame, briefly awaited); report nothing more from it.
    fn ws_close(&mut self);
    /// Hand `out` to the application; `false` when the application is gone.
    fn deliver(&mut self, out: Output) -> bool;
    /// Open a TCP (and TLS, when `tls_name` is set) stream to a TURN server; answer with
    /// `Input::Stream` events for `stream`: `Connected`, `Data`…, one final `Closed`. Both runtimes hand
    /// this and the next two to their [`crate::stream::Streams`]. The default: this runtime has no streams
    /// (TURN over TCP/TLS is then reported unreachable, UDP relays still work).
    fn stream_open(
        &mut self,
        stream: StreamId,
        to: SocketAddr,
        tls_name: Option<String>,
    ) -> Option<Input> {
        let _ = (to, tls_name);
        Some(Input::Stream {
            stream,
            event: StreamEvent::Closed {
                reason: "this runtime cannot open TCP streams".into(),
            },
        })
    }
    /// Write to an open stream (in order; bounded buffering, see `Output::StreamWrite`).
    fn stream_write(&mut self, stream: StreamId, data: Vec<u8>) {
        let _ = (stream, data);
    }
    /// Close a stream; nothing more is reported from it.
    fn stream_close(&mut self, stream: StreamId) {
        let _ = stream;
    }
}

/// What a runtime's wait loop must do after a [`Dispatcher::turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait for a source, at most until the instant (`None`: no timer is due).
    Wait(Option<Instant>),
    /// The node finished and the flush is over, or the application went away long enough ago: stop.
    Stop,
}

/// A node plus the runtime-neutral state of running it (see the module docs).
pub struct Dispatcher<N> {
    node: N,
    addressing: Addressing,
    flow: Arc<FlowControl>,
    finish_flush: Duration,
    /// Inputs produced while draining (fed after the drain, never re-entrantly).
    pending: VecDeque<Input>,
    /// The datagrams of the current receive batch (kept for its allocation).
    received: Vec<Received>,
    finish_deadline: Option<Instant>,
    abandoned: bool,
    warned_source: bool,
}

impl<N: Node> Dispatcher<N> {
    /// `addressing` is the node's bound UDP socket; `flow` is shared with the runtime's forwarder.
    pub fn new(
        node: N,
        addressing: Addressing,
        flow: Arc<FlowControl>,
        config: &DriverConfig,
    ) -> Self {
        Self {
            node,
            addressing,
            flow,
            finish_flush: config.finish_flush,
            pending: VecDeque::new(),
            received: Vec::new(),
            finish_deadline: None,
            abandoned: false,
            warned_source: false,
        }
    }

    pub fn addressing(&self) -> &Addressing {
        &self.addressing
    }

    /// The prologue: announce the socket's host candidates, then `GatheringComplete`.
    pub fn start(&mut self, io: &mut impl Io) {
        for addr in self.addressing.candidates.clone() {
            self.feed(
                Input::LocalCandidate {
                    addr,
                    kind: CandidateKind::Host,
                },
                io,
            );
        }
        self.feed(Input::GatheringComplete, io);
    }

    /// Hand `input` to the node and perform everything it outputs.
    pub fn feed(&mut self, input: Input, io: &mut impl Io) {
        self.node.handle_input(input, Instant::now());
        while let Some(out) = self.node.poll_output() {
            self.perform(out, io);
        }
    }

    /// Read with `recv` (one batch of datagrams per call onto the vector, typically
    /// [`crate::udp::Offload::receive`]) and feed them, until about [`UDP_BATCH`] were fed. Returns `true`
    /// when the socket is drained (it said `WouldBlock`), `false` when datagrams may remain (the loop must
    /// come back without waiting: edge-triggered readiness will not say it again).
    pub fn read_datagrams(
        &mut self,
        io: &mut impl Io,
        mut recv: impl FnMut(&mut Vec<Received>) -> io::Result<()>,
    ) -> bool {
        let mut batch = std::mem::take(&mut self.received);
        let mut fed = 0;
        let drained = loop {
            if fed >= UDP_BATCH {
                break false;
            }
            match recv(&mut batch) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // e.g. ECONNREFUSED from an ICMP error: not fatal for an unconnected socket.
                    tracing::debug!(error = %e, "udp receive error");
                    fed += 1;
                }
            }
            for received in batch.drain(..) {
                fed += 1;
                let datagram = Datagram {
                    source: received.source,
                    destination: self
                        .addressing
                        .destination(received.source, received.local_ip),
                    contents: received.contents,
                };
                self.feed(Input::Datagram(datagram), io);
            }
        };
        self.received = batch;
        drained
    }

    /// Feed what the driver produced itself, fire the node's timer if due, and say what to wait for.
    pub fn turn(&mut self, io: &mut impl Io) -> Next {
        let next = loop {
            while let Some(input) = self.pending.pop_front() {
                self.feed(input, io);
            }
            let now = Instant::now();
            if self.finish_deadline.is_some_and(|end| now >= end) {
                break Next::Stop;
            }
            match self.node.poll_timeout() {
                Some(t) if t <= now => self.feed(Input::Timeout, io),
                timer => {
                    let wake = match (timer, self.finish_deadline) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    break Next::Wait(wake);
                }
            }
        };
        io.flush_transmits();
        next
    }

    /// The application is gone: close the node, and stop soon even if it never finishes.
    pub fn abandon(&mut self) {
        if self.abandoned {
            return;
        }
        self.abandoned = true;
        tracing::debug!("application handle dropped: closing the node");
        self.pending.push_back(Input::Command(Command::Close));
        self.stop_by(Instant::now() + ABANDON_GRACE);
    }

    fn stop_by(&mut self, limit: Instant) {
        self.finish_deadline = Some(self.finish_deadline.map_or(limit, |d| d.min(limit)));
    }

    fn perform(&mut self, out: Output, io: &mut impl Io) {
        let answer = match out {
            Output::Transmit(datagram) => {
                self.transmit(datagram, io);
                None
            }
            Output::Http(request) => io.http(request),
            Output::WsConnect(connect) => io.ws_connect(connect),
            Output::WsClose => {
                io.ws_close();
                None
            }
            Output::StreamOpen {
                stream,
                to,
                tls_name,
            } => io.stream_open(stream, to, tls_name),
            Output::StreamWrite { stream, data } => {
                io.stream_write(stream, data);
                None
            }
            Output::StreamClose { stream } => {
                io.stream_close(stream);
                None
            }
            Output::Finished(result) => {
                self.stop_by(Instant::now() + self.finish_flush);
                self.deliver(Output::Finished(result), io);
                None
            }
            // Applied here, not by the application: see `crate::flow`.
            Output::Backpressure { conn, paused } => {
                self.flow.set(conn, paused);
                None
            }
            // Receive-side credit for applications that consume tunnel data themselves (no
            // forwarder): handed over is delivered, as far as the node's budget is concerned.
            Output::ConnectionData { conn, data } if !self.flow.delivery_claimed() => {
                let bytes = data.len();
                self.deliver(Output::ConnectionData { conn, data }, io);
                Some(Input::Command(Command::Delivered { conn, bytes }))
            }
            // The same for a launch's terminal output (an application writing it to stdout itself
            // claims delivery and credits what stdout took).
            Output::TerminalOutput(data) if !self.flow.delivery_claimed() => {
                let bytes = data.len();
                self.deliver(Output::TerminalOutput(data), io);
                Some(Input::Command(Command::Delivered {
                    conn: pam_lite_core::client::TERMINAL_CONN,
                    bytes,
                }))
            }
            Output::ConnectionClosed { conn, reason } => {
                self.flow.forget(conn);
                self.deliver(Output::ConnectionClosed { conn, reason }, io);
                None
            }
            other => {
                self.deliver(other, io);
                None
            }
        };
        self.pending.extend(answer);
    }

    fn deliver(&mut self, out: Output, io: &mut impl Io) {
        if !io.deliver(out) {
            self.abandon();
        }
    }

    fn transmit(&mut self, datagram: Datagram, io: &mut impl Io) {
        if self.addressing.owns(datagram.source) {
            io.transmit(datagram);
        } else if !self.warned_source {
            self.warned_source = true;
            tracing::warn!(source = %datagram.source, local = %self.addressing.local,
                "transmit from an address this driver does not own: dropped");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pam_lite_core::tube::CloseReason;

    /// A node that records its inputs and emits what the test queued, after the next input.
    #[derive(Default)]
    struct Scripted {
        seen: Vec<Input>,
        script: VecDeque<Output>,
        out: VecDeque<Output>,
    }

    impl Node for Scripted {
        fn handle_input(&mut self, input: Input, _now: Instant) {
            self.seen.push(input);
            self.out.extend(self.script.drain(..));
        }
        fn poll_output(&mut self) -> Option<Output> {
            self.out.pop_front()
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
    }

    /// The I/O a unit test observes (a mock: the real ones are tested by the shared suites).
    #[derive(Default)]
    struct Recorder {
        queued: Vec<Datagram>,
        sent: Vec<Datagram>,
        delivered: Vec<Output>,
        app_gone: bool,
    }

    impl Io for Recorder {
        fn transmit(&mut self, datagram: Datagram) {
            self.queued.push(datagram);
        }
        fn flush_transmits(&mut self) {
            self.sent.append(&mut self.queued);
        }
        fn http(&mut self, request: HttpRequest) -> Option<Input> {
            Some(Input::HttpError {
                id: request.id,
                error: "no HTTP here".into(),
            })
        }
        fn ws_connect(&mut self, _connect: WsConnect) -> Option<Input> {
            None
        }
        fn ws_close(&mut self) {}
        fn deliver(&mut self, out: Output) -> bool {
            self.delivered.push(out);
            !self.app_gone
        }
    }

    fn dispatcher(flush: Duration) -> (Dispatcher<Scripted>, Arc<FlowControl>) {
        let addressing = Addressing::new("127.0.0.1:4000".parse().unwrap(), &[]).unwrap();
        let flow = Arc::new(FlowControl::new());
        let config = DriverConfig {
            finish_flush: flush,
            ..DriverConfig::default()
        };
        let d = Dispatcher::new(Scripted::default(), addressing, flow.clone(), &config);
        (d, flow)
    }

    fn datagram(source: &str) -> Datagram {
        Datagram {
            source: source.parse().unwrap(),
            destination: "127.0.0.1:9".parse().unwrap(),
            contents: b"x".to_vec(),
        }
    }

    #[test]
    fn prologue_then_outputs_performed_with_source_check_and_flow_control() {
        let (mut d, flow) = dispatcher(Duration::ZERO);
        let mut io = Recorder::default();
        d.start(&mut io);
        assert_eq!(
            d.node.seen,
            vec![
                Input::LocalCandidate {
                    addr: "127.0.0.1:4000".parse().unwrap(),
                    kind: CandidateKind::Host
                },
                Input::GatheringComplete
            ]
        );
        d.node.script.extend([
            Output::Transmit(datagram("127.0.0.1:4000")),
            Output::Transmit(datagram("127.0.0.1:4001")),
            Output::Backpressure {
                conn: 3,
                paused: true,
            },
            Output::TubeReady,
        ]);
        d.feed(Input::Timeout, &mut io);
        assert!(io.sent.is_empty(), "transmits wait for the end of the turn");
        assert_eq!(d.turn(&mut io), Next::Wait(None));
        assert_eq!(
            io.sent,
            vec![datagram("127.0.0.1:4000")],
            "flushed by the turn; foreign source dropped"
        );
        assert!(flow.is_paused(3));
        assert_eq!(
            io.delivered,
            vec![Output::TubeReady],
            "backpressure is not the app's"
        );
        d.node.script.push_back(Output::ConnectionClosed {
            conn: 3,
            reason: CloseReason::Normal,
        });
        d.feed(Input::Timeout, &mut io);
        assert!(
            !flow.is_paused(3),
            "a closed connection never leaves a reader paused"
        );
    }

    #[test]
    fn an_immediate_io_failure_is_fed_after_the_drain() {
        let (mut d, _) = dispatcher(Duration::ZERO);
        let mut io = Recorder::default();
        d.node.script.push_back(Output::Http(HttpRequest {
            id: 7,
            method: pam_lite_core::Method::Get,
            url: "http://h/".into(),
            headers: Vec::new(),
            body: Vec::new(),
            fresh_connection: true,
            timeout: Duration::from_secs(1),
        }));
        d.feed(Input::Timeout, &mut io);
        assert_eq!(d.node.seen.len(), 1, "not fed re-entrantly");
        assert_eq!(d.turn(&mut io), Next::Wait(None));
        assert!(matches!(
            d.node.seen.last(),
            Some(Input::HttpError { id: 7, .. })
        ));
    }

    #[test]
    fn a_runtime_without_streams_answers_a_stream_open_with_closed() {
        let (mut d, _) = dispatcher(Duration::ZERO);
        let mut io = Recorder::default();
        d.node.script.extend([
            Output::StreamOpen {
                stream: StreamId(4),
                to: "127.0.0.1:3478".parse().unwrap(),
                tls_name: None,
            },
            Output::StreamWrite {
                stream: StreamId(4),
                data: b"x".to_vec(),
            },
            Output::StreamClose {
                stream: StreamId(4),
            },
        ]);
        d.feed(Input::Timeout, &mut io);
        assert_eq!(d.turn(&mut io), Next::Wait(None));
        assert_eq!(
            d.node.seen.last(),
            Some(&Input::Stream {
                stream: StreamId(4),
                event: StreamEvent::Closed {
                    reason: "this runtime cannot open TCP streams".into()
                }
            })
        );
        assert!(io.delivered.is_empty(), "stream outputs are not the app's");
    }

    #[test]
    fn finished_is_delivered_then_the_flush_ends_the_loop() {
        let (mut d, _) = dispatcher(Duration::ZERO);
        let mut io = Recorder::default();
        d.node.script.push_back(Output::Finished(Ok(())));
        d.feed(Input::Timeout, &mut io);
        assert_eq!(io.delivered, vec![Output::Finished(Ok(()))]);
        assert_eq!(d.turn(&mut io), Next::Stop);
    }

    #[test]
    fn a_gone_application_closes_the_node_within_the_grace() {
        let (mut d, _) = dispatcher(Duration::ZERO);
        let mut io = Recorder {
            app_gone: true,
            ..Recorder::default()
        };
        d.node.script.push_back(Output::TubeReady);
        d.feed(Input::Timeout, &mut io);
        let before = Instant::now();
        let Next::Wait(Some(limit)) = d.turn(&mut io) else {
            panic!("expected a bounded wait");
        };
        assert_eq!(d.node.seen.last(), Some(&Input::Command(Command::Close)));
        assert!(limit >= before + ABANDON_GRACE - Duration::from_millis(50));
        assert!(limit <= Instant::now() + ABANDON_GRACE);
    }
}
