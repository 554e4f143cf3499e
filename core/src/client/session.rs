//! The session on top of the tube: what the launch is for once the data channel is open.
//!
//! * **Start.** The tube is ready ([`Output::TubeReady`]); `pam launch` opens connection 1 for the
//!   Guacamole terminal the core runs and waits (warning only, as Commander does) up to 10 s for its
//!   first `sync`; `pam tunnel start` lets the user open connections.
//! * **Connections and flow control.** User commands go into the tube through the [`Outbox`], which
//!   pauses the local sides ([`Output::Backpressure`]) when the channel's buffer is full; a write the
//!   channel refused is retried first.
//! * **Closing.** A user close, the terminal session ending or connection 1 closing leave a short flush
//!   window (50 ms) for the last frames, then the launch finishes; the gateway closing the tube ends it at
//!   once.

use std::time::Duration;

use crate::guac::client::{
    ClientEvent as TerminalEvent, InputMode, TerminalClient, TerminalConfig,
};
use crate::timing::{names, PHASE_CLI_SESSION as CLI_SESSION, PHASE_TOTAL as TOTAL};
use crate::tube::conns::{Connections, TubeEvent};
use crate::tube::delivery::STALL_LIMIT;
use crate::tube::{CloseReason, Delivery, Outbox};
use crate::{Command, LaunchError, Output, ProtocolError};

use super::{Client, Session, TerminalSettings, Timer};

/// The tube connection of a launch's Guacamole terminal; [`Output::TerminalOutput`] is credited as
/// this connection's delivery (`Command::Delivered { conn: TERMINAL_CONN, .. }`).
pub const TERMINAL_CONN: crate::ConnNo = 1;

/// Commander's `wait_for_ready(10.0)` for the first Guacamole `sync`.
const GUAC_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last frames get to leave before a closing launch finishes.
const CLOSE_FLUSH: Duration = Duration::from_millis(50);

/// The session's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum SessionTimer {
    /// The bound on the terminal's first `sync`.
    GuacReady,
    /// The flush window before a closing launch finishes.
    CloseFlush,
    /// A connection holding the tube paused reaches the stall limit (`tube::delivery`).
    ReceiveStall,
}

impl From<SessionTimer> for Timer {
    fn from(t: SessionTimer) -> Timer {
        Timer::Session(t)
    }
}

/// The session's state.
pub(super) struct SessionState {
    /// The tube's connections, from the moment the data channel opened.
    pub(super) conns: Option<Connections>,
    outbox: Outbox,
    /// A frame the data channel refused, retried before anything else.
    blocked_write: Option<Vec<u8>>,
    /// OpenConnection went out: the user may open connections.
    tube_ready: bool,
    terminal: Option<TerminalClient>,
    guac_ready: bool,
    /// The launch is closing (by the user, the terminal or connection 1): a close is then normal.
    pub(super) closing: bool,
    /// Receive-side flow control: what each connection's local side has not taken yet.
    delivery: Delivery,
    /// Whether reading the data channel is paused because of `delivery`.
    read_paused: bool,
}

impl SessionState {
    pub(super) fn new() -> Self {
        SessionState {
            conns: None,
            outbox: Outbox::new(),
            blocked_write: None,
            tube_ready: false,
            terminal: None,
            guac_ready: false,
            closing: false,
            delivery: Delivery::new(),
            read_paused: false,
        }
    }

    pub(super) fn can_send(&self) -> bool {
        self.outbox.bytes() == 0 && self.conns.as_ref().is_some_and(|c| c.is_writable())
    }

    pub(super) fn terminal_timeout(&self) -> Option<std::time::Instant> {
        self.terminal.as_ref().and_then(|t| t.poll_timeout())
    }
}

impl Client {
    /// The data channel is open and OpenConnection went out: the tube is ready.
    pub(super) fn start_session(&mut self) {
        self.session.tube_ready = true;
        self.outputs.push_back(Output::TubeReady);
        if let Session::Terminal(t) = self.cfg.session.clone() {
            if let Some(conns) = self.session.conns.as_mut() {
                if let Err(e) = conns.open(1) {
                    return self.finish(Err(ProtocolError::Tube(e).into()));
                }
            }
            self.session.terminal = Some(TerminalClient::new(terminal_config(&t)));
            // Its output obeys the receive budget (credited as it reaches stdout), without the stall
            // limit: nothing else shares a launch's tube (`tube::delivery`).
            self.session.delivery.exempt_from_stall_limit(TERMINAL_CONN);
            self.arm(SessionTimer::GuacReady, GUAC_READY_TIMEOUT);
        }
        self.checkpoint(CLI_SESSION, names::OPEN_CONNECTION_SENT_OK);
        self.pump_tube();
    }

    /// The reconciler's last step: the session's timers.
    pub(super) fn advance_session(&mut self) {
        if self.due(SessionTimer::GuacReady) && !self.session.guac_ready {
            // Commander only warns here; so do we (the session may still come up).
            self.checkpoint(CLI_SESSION, names::GUACAMOLE_WAIT_FOR_READY_TIMEOUT);
        }
        if self.due(SessionTimer::CloseFlush) {
            self.finish(Ok(()));
        }
        if self.due(SessionTimer::ReceiveStall) {
            self.apply_receive_budget();
        }
    }

    /// Receive-side flow control (`tube::delivery`): close the connections whose local side took
    /// nothing for the stall limit while holding the tube, then pause or resume reading the channel.
    fn apply_receive_budget(&mut self) {
        let now = self.now;
        let mut closed = false;
        for conn in self.session.delivery.stalled(now) {
            self.session.delivery.forget(conn);
            if let Some(c) = self.session.conns.as_mut() {
                // Under `tube`, not `client`: the CLI shows the core's tube warnings by default.
                tracing::warn!(
                    target: "pam_lite_core::tube::delivery",
                    "connection {conn}: its local side took nothing for {}s while holding the tube \
                     (receive budget full): closing it (reason Timeout) so the other connections move",
                    STALL_LIMIT.as_secs()
                );
                let _ = self.session.outbox.close(c, conn, CloseReason::Timeout);
                self.outputs.push_back(Output::ConnectionClosed {
                    conn,
                    reason: CloseReason::Timeout,
                });
                closed = true;
            }
        }
        match self.session.delivery.poll_timeout() {
            Some(at) => self.arm_at(SessionTimer::ReceiveStall, at),
            None => self.disarm(SessionTimer::ReceiveStall),
        }
        let blocked = self.session.delivery.is_blocked() && !self.finished;
        if blocked != self.session.read_paused {
            if let Some(peer) = self.peer.as_mut() {
                self.session.read_paused = blocked;
                peer.set_read_paused(blocked, now);
                if !blocked {
                    // What waited in SCTP's buffer comes out now.
                    return self.pump_peer();
                }
            }
        }
        if closed {
            self.pump_tube();
        }
    }

    /// On `Input::Timeout`: the terminal's own timers.
    pub(super) fn on_terminal_timeout(&mut self) {
        let now = self.now;
        if let Some(t) = self.session.terminal.as_mut() {
            if t.poll_timeout().is_some_and(|x| x <= now) {
                t.handle_timeout(now);
            }
        }
        self.pump_terminal();
    }

    fn begin_close_flush(&mut self) {
        self.session.closing = true;
        self.arm(SessionTimer::CloseFlush, CLOSE_FLUSH);
    }

    /// Move frames between the tube and the data channel, and tube events to outputs.
    pub(super) fn pump_tube(&mut self) {
        let now = self.now;
        loop {
            // Retry a write the channel refused.
            if let Some(w) = self.session.blocked_write.take() {
                match self.peer.as_mut().map(|p| p.write(&w, now)) {
                    Some(Ok(true)) => {}
                    Some(Ok(false)) => {
                        self.session.blocked_write = Some(w);
                        break;
                    }
                    Some(Err(e)) => {
                        return self.finish(Err(LaunchError::Disconnected(e.to_string())));
                    }
                    None => break,
                }
            }
            let Some(conns) = self.session.conns.as_mut() else {
                break;
            };
            conns.advance(now);
            self.session.outbox.flush(conns);
            let Some(ev) = conns.poll_event() else { break };
            match ev {
                TubeEvent::Write(bytes) => self.session.blocked_write = Some(bytes),
                // The terminal's events are drained without pumping the tube again: this loop goes
                // on (a nested pump per message overflowed the stack once a paused tube resumed with
                // a megabyte of terminal output waiting).
                TubeEvent::Opened(conn) => {
                    self.outputs.push_back(Output::ConnectionOpened { conn });
                    if conn == TERMINAL_CONN && self.session.terminal.is_some() {
                        self.drain_terminal();
                    }
                }
                TubeEvent::Data { conn, data } => {
                    if conn == TERMINAL_CONN && self.session.terminal.is_some() {
                        if let Some(t) = self.session.terminal.as_mut() {
                            t.handle_data(&data);
                        }
                        self.drain_terminal();
                    } else {
                        self.session.delivery.handed(conn, data.len(), now);
                        self.outputs
                            .push_back(Output::ConnectionData { conn, data });
                    }
                }
                TubeEvent::Eof(conn) => self.outputs.push_back(Output::ConnectionEof { conn }),
                TubeEvent::Closed { conn, reason, .. } => {
                    self.session.delivery.forget(conn);
                    self.outputs
                        .push_back(Output::ConnectionClosed { conn, reason });
                    if let (1, Some(t)) = (conn, self.session.terminal.as_mut()) {
                        t.connection_closed(reason);
                    }
                    if conn == 1 && self.session.terminal.is_some() && !self.finished {
                        self.begin_close_flush();
                    }
                }
                TubeEvent::ChannelClosed { reason, .. } => {
                    if !self.finished {
                        self.session.closing = true;
                        self.finish(
                            if reason == CloseReason::Normal || reason == CloseReason::AdminClosed {
                                Ok(())
                            } else {
                                Err(LaunchError::Disconnected(format!(
                                    "gateway closed the tube: {reason}"
                                )))
                            },
                        );
                    }
                    return;
                }
                TubeEvent::ConnectTarget { conn, .. } => {
                    tracing::warn!(
                        conn,
                        "the gateway asked the client to open a connection; refused"
                    );
                }
                TubeEvent::Pong { .. } => {}
                TubeEvent::ProtocolWarning(w) => {
                    tracing::warn!(warning = %w, "tube protocol warning")
                }
            }
        }
        self.drain_transmits();
        if let Some(conns) = self.session.conns.as_ref() {
            if let Some(paused) = self.session.outbox.pause_change(conns) {
                for conn in conns.connections() {
                    self.outputs
                        .push_back(Output::Backpressure { conn, paused });
                }
            }
        }
        self.apply_receive_budget();
    }

    /// Drain the terminal, then move what it produced through the tube.
    fn pump_terminal(&mut self) {
        self.drain_terminal();
        self.pump_tube();
    }

    /// Drain the terminal: its bytes for the gateway into connection 1, its screen to the user.
    fn drain_terminal(&mut self) {
        let Some(t) = self.session.terminal.as_mut() else {
            return;
        };
        let mut to_gateway = Vec::new();
        let mut events = Vec::new();
        while let Some(e) = t.poll_event() {
            events.push(e);
        }
        for e in events {
            match e {
                TerminalEvent::ToGateway(bytes) => to_gateway.push(bytes),
                TerminalEvent::Output(bytes) => {
                    // Receive-side flow control, as for `ConnectionData`: the driver credits what
                    // reached stdout (`Command::Delivered { conn: TERMINAL_CONN }`).
                    self.session
                        .delivery
                        .handed(TERMINAL_CONN, bytes.len(), self.now);
                    self.outputs.push_back(Output::TerminalOutput(bytes))
                }
                TerminalEvent::Ready => {
                    if !self.session.guac_ready {
                        self.session.guac_ready = true;
                        self.disarm(SessionTimer::GuacReady);
                        self.checkpoint(CLI_SESSION, names::GUACAMOLE_WAIT_FOR_READY_OK);
                        self.checkpoint(TOTAL, names::READY_FOR_PROMPT);
                    }
                }
                TerminalEvent::Ended(reason) => {
                    tracing::info!(%reason, "terminal session ended");
                    self.begin_close_flush();
                }
            }
        }
        for bytes in to_gateway {
            if let Some(conns) = self.session.conns.as_mut() {
                if let Err(e) = self.session.outbox.send(conns, TERMINAL_CONN, bytes) {
                    tracing::warn!(error = %e, "terminal input after the session closed");
                }
            }
        }
    }

    /// A user command from the driver.
    pub(super) fn on_command(&mut self, cmd: Command) {
        let now = self.now;
        match cmd {
            Command::Close => {
                self.session.closing = true;
                if let Some(t) = self.session.terminal.as_mut() {
                    t.disconnect();
                }
                self.pump_terminal();
                if let Some(conns) = self.session.conns.as_mut() {
                    conns.close_all(CloseReason::Normal);
                }
                self.pump_tube();
                self.arm(SessionTimer::CloseFlush, CLOSE_FLUSH);
            }
            Command::OpenConnection { conn } => match self.session.conns.as_mut() {
                Some(c) if self.session.tube_ready => {
                    // A connection opened while the tube is paused starts paused: the tube-wide
                    // pause was announced before it existed (found by the 16-connection benchmark).
                    if self.session.outbox.is_paused() {
                        self.outputs
                            .push_back(Output::Backpressure { conn, paused: true });
                    }
                    if let Err(e) = c.open(conn) {
                        self.outputs.push_back(Output::ConnectionClosed {
                            conn,
                            reason: CloseReason::Error,
                        });
                        tracing::warn!(error = %e, conn, "cannot open connection");
                    }
                }
                _ => self.outputs.push_back(Output::ConnectionClosed {
                    conn,
                    reason: CloseReason::ConnectionFailed,
                }),
            },
            Command::Send { conn, data } => {
                if let Some(c) = self.session.conns.as_mut() {
                    if let Err(e) = self.session.outbox.send(c, conn, data) {
                        tracing::warn!(error = %e, conn, "closing a connection that cannot take data");
                        let _ = c.close(conn, CloseReason::Error);
                        self.outputs.push_back(Output::ConnectionClosed {
                            conn,
                            reason: CloseReason::Error,
                        });
                    }
                }
            }
            Command::SendEof { conn } => {
                if let (1, Some(t)) = (conn, self.session.terminal.as_mut()) {
                    // Terminal mode: the script on stdin ended.
                    t.end_input(now);
                    self.pump_terminal();
                } else if let Some(c) = self.session.conns.as_mut() {
                    let _ = self.session.outbox.send_eof(c, conn);
                }
            }
            Command::Delivered { conn, bytes } => {
                self.session.delivery.delivered(conn, bytes, now);
            }
            Command::CloseConnection { conn, reason } => {
                self.session.delivery.forget(conn);
                if let Some(c) = self.session.conns.as_mut() {
                    let _ = self.session.outbox.close(c, conn, reason);
                }
            }
            Command::TargetConnected { .. } => {}
            Command::TerminalInput { data } => {
                if let Some(t) = self.session.terminal.as_mut() {
                    t.input(&data, now);
                }
                self.pump_terminal();
            }
            Command::TerminalResize { cols, rows } => {
                if let Some(t) = self.session.terminal.as_mut() {
                    t.resize(cols, rows);
                }
                self.pump_terminal();
            }
        }
        self.pump_tube();
    }
}

fn terminal_config(t: &TerminalSettings) -> TerminalConfig {
    TerminalConfig {
        cols: t.cols,
        rows: t.rows,
        guacd_params: t.guacd_params.clone(),
        input_mode: if t.stdin_mode {
            InputMode::Stdin
        } else {
            InputMode::Keys
        },
        ..TerminalConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::harness::{Harness, HarnessConfig};
    use super::super::{Session, TerminalSettings};
    use crate::tube::delivery::{RECEIVE_BUDGET, STALL_LIMIT};
    use crate::tube::CloseReason;
    use crate::Command;

    #[test]
    fn opening_a_connection_before_the_tube_is_ready_fails_it() {
        let mut h = Harness::new(HarnessConfig::default());
        h.command(Command::OpenConnection { conn: 2 });
        assert_eq!(h.closed, vec![(2, CloseReason::ConnectionFailed)]);
        assert!(h.opened.is_empty());
    }

    #[test]
    fn a_tunnel_connection_carries_data_both_ways() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        h.command(Command::OpenConnection { conn: 2 });
        h.run_until(Duration::from_secs(70), |h| h.opened.contains(&2));
        assert_eq!(h.opened, vec![2]);
        h.command(Command::Send {
            conn: 2,
            data: b"ping over the tube".to_vec(),
        });
        h.run_until(Duration::from_secs(80), |h| {
            h.received.get(&2).is_some_and(|d| d.len() >= 18)
        });
        assert_eq!(h.received[&2], b"ping over the tube");
        assert!(h.client.can_send());
    }

    /// 16 KiB chunks of a recognisable pattern, `total` bytes in all.
    fn pattern(total: usize) -> Vec<u8> {
        (0..total).map(|i| (i % 251) as u8).collect()
    }

    /// Open `conn` and push `data` through the echoing gateway, as fast as the tube takes it.
    fn push_echo(h: &mut Harness, conn: u32, data: &[u8]) {
        let mut off = 0;
        let give_up = h.now - h.t0 + Duration::from_secs(30);
        while off < data.len() {
            assert!(
                h.now - h.t0 < give_up,
                "the tube never took {} bytes",
                data.len()
            );
            if h.client.can_send() {
                let end = (off + 16 * 1024).min(data.len());
                h.command(Command::Send {
                    conn,
                    data: data[off..end].to_vec(),
                });
                off = end;
            } else {
                h.run_for(Duration::from_millis(5));
            }
        }
    }

    fn open(h: &mut Harness, conn: u32) {
        h.command(Command::OpenConnection { conn });
        h.run_until(h.now - h.t0 + Duration::from_secs(10), |h| {
            h.opened.contains(&conn)
        });
        assert!(h.opened.contains(&conn));
    }

    #[test]
    fn a_local_side_that_stops_taking_data_pauses_the_tube_and_loses_nothing() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        open(&mut h, 2);
        h.withhold_delivery = true;
        let sent = pattern(8 * 1024 * 1024);
        push_echo(&mut h, 2, &sent);
        h.run_for(Duration::from_secs(10));
        let held = h.received.get(&2).map_or(0, Vec::len);
        // The budget was reached, then the client stopped reading: what it handed out stays within the
        // budget plus what SCTP had already made readable (its 1 MiB receive buffer) and a margin.
        assert!(held >= RECEIVE_BUDGET, "budget not used: {held}");
        assert!(held <= RECEIVE_BUDGET + 1536 * 1024, "not bounded: {held}");
        assert!(
            h.client.session.read_paused,
            "reading the channel is paused"
        );
        assert!(h.closed.is_empty(), "10 s is no stall: {:?}", h.closed);

        // The local side catches up: everything arrives, in order.
        h.withhold_delivery = false;
        h.command(Command::Delivered {
            conn: 2,
            bytes: held,
        });
        let limit = h.now - h.t0 + Duration::from_secs(30);
        h.run_until(limit, |h| {
            h.received.get(&2).map_or(0, Vec::len) >= sent.len()
        });
        assert!(h.received[&2] == sent, "every byte, in order");
        assert!(!h.client.session.read_paused);
        assert!(h.closed.is_empty());
    }

    #[test]
    fn a_stalled_connection_is_closed_after_the_stall_limit_and_the_tube_reads_on() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        open(&mut h, 2);
        open(&mut h, 3);
        h.withhold_delivery = true;
        push_echo(&mut h, 2, &pattern(4 * 1024 * 1024));
        h.run_for(Duration::from_secs(1));
        assert!(h.client.session.read_paused);
        let blocked_at = h.now;
        h.run_until(h.now - h.t0 + STALL_LIMIT + Duration::from_secs(5), |h| {
            !h.closed.is_empty()
        });
        assert_eq!(h.closed, vec![(2, CloseReason::Timeout)]);
        let waited = h.now - blocked_at;
        assert!(
            waited <= STALL_LIMIT && waited >= STALL_LIMIT - Duration::from_secs(2),
            "closed after {waited:?}"
        );
        // Connection 3 was frozen behind it; now the tube reads on and it works.
        assert!(!h.client.session.read_paused);
        h.withhold_delivery = false;
        push_echo(&mut h, 3, b"still alive");
        let limit = h.now - h.t0 + Duration::from_secs(10);
        h.run_until(limit, |h| h.received.get(&3).is_some_and(|d| d.len() >= 11));
        assert_eq!(h.received[&3], b"still alive");
    }

    /// Push `data` into `conn` for up to `limit` of virtual time, as far as the tube takes it; returns
    /// how much it took.
    fn push_for(h: &mut Harness, conn: u32, data: &[u8], limit: Duration) -> usize {
        let mut off = 0;
        let until = h.now + limit;
        while off < data.len() && h.now < until {
            if h.client.can_send() {
                let end = (off + 16 * 1024).min(data.len());
                h.command(Command::Send {
                    conn,
                    data: data[off..end].to_vec(),
                });
                off = end;
            } else {
                h.run_for(Duration::from_millis(5));
            }
        }
        off
    }

    #[test]
    fn a_gateway_target_that_stops_reading_holds_the_client_back_and_loses_nothing() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        open(&mut h, 2);
        h.withhold_gateway_delivery = true;
        let sent = pattern(16 * 1024 * 1024);
        let taken = push_for(&mut h, 2, &sent, Duration::from_secs(10));
        let g = *h
            .target_received
            .keys()
            .next()
            .expect("the target got data");
        let held = h.target_received[&g].len();
        assert!(held >= RECEIVE_BUDGET, "budget not used: {held}");
        assert!(held <= RECEIVE_BUDGET + 1536 * 1024, "not bounded: {held}");
        // The client was held back by its own send-side flow control, not buffered without bound.
        assert!(taken < sent.len(), "the client took all {taken} bytes");
        assert!(!h.client.can_send());

        // The target reads again: everything arrives, in order.
        let mut credited = 0;
        let limit = h.now - h.t0 + Duration::from_secs(60);
        let mut off = taken;
        while h.target_received[&g].len() < sent.len() {
            assert!(
                h.now - h.t0 < limit,
                "stuck at {}",
                h.target_received[&g].len()
            );
            let got = h.target_received[&g].len();
            if got > credited {
                h.gateway_delivered(g, got - credited);
                credited = got;
            }
            if off < sent.len() {
                off += push_for(&mut h, 2, &sent[off..], Duration::from_millis(20));
            } else {
                h.run_for(Duration::from_millis(20));
            }
        }
        assert!(h.target_received[&g] == sent, "every byte, in order");
        assert!(h.closed.is_empty(), "{:?}", h.closed);
    }

    #[test]
    fn a_gateway_target_that_takes_nothing_is_closed_after_the_stall_limit() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        open(&mut h, 2);
        h.withhold_gateway_delivery = true;
        push_for(&mut h, 2, &pattern(8 * 1024 * 1024), Duration::from_secs(2));
        let blocked_at = h.now;
        h.run_until(h.now - h.t0 + STALL_LIMIT + Duration::from_secs(5), |h| {
            !h.closed.is_empty()
        });
        // The gateway closed it with the reason Keeper's client knows; the client's side hears it.
        assert_eq!(h.closed, vec![(2, CloseReason::Timeout)]);
        assert!(h.now - blocked_at <= STALL_LIMIT + Duration::from_secs(1));
    }

    /// A terminal launch (80×24, stdin mode) run until the shell's prompt is ready.
    fn terminal_at_prompt() -> Harness {
        let mut h = Harness::new(HarnessConfig {
            session: Session::Terminal(TerminalSettings {
                cols: 80,
                rows: 24,
                stdin_mode: true,
                guacd_params: Default::default(),
            }),
            ..HarnessConfig::default()
        });
        h.run_until(Duration::from_secs(60), |h| {
            h.checkpoint_at("ready_for_prompt").is_some()
        });
        h
    }

    #[test]
    fn terminal_output_nobody_takes_pauses_the_tube_without_a_stall_close_and_loses_nothing() {
        let mut h = terminal_at_prompt();
        h.run_for(Duration::from_millis(200));
        let before = h.terminal_output.len();
        // stdout stops taking output; the harness's target echoes the script back as output.
        h.withhold_delivery = true;
        let sent = pattern(6 * 1024 * 1024);
        let mut off = 0;
        let until = h.now + Duration::from_secs(30);
        while off < sent.len() && h.now < until {
            if h.client.can_send() {
                let end = (off + 4096).min(sent.len());
                h.command(Command::TerminalInput {
                    data: sent[off..end].to_vec(),
                });
                off = end;
            } else {
                h.run_for(Duration::from_millis(5));
            }
        }
        assert_eq!(off, sent.len(), "the script went out");
        h.run_for(Duration::from_secs(10));
        let held = h.terminal_output.len() - before;
        assert!(held >= RECEIVE_BUDGET, "budget not used: {held}");
        // The output's encoding (base64 blobs) makes SCTP's 1 MiB buffer hold less than 1 MiB of output.
        assert!(held <= RECEIVE_BUDGET + 1536 * 1024, "not bounded: {held}");
        assert!(
            h.client.session.read_paused,
            "reading the channel is paused"
        );

        // Far past the stall limit: a launch's terminal is never closed for not reading.
        h.run_for(STALL_LIMIT * 2);
        assert!(h.closed.is_empty(), "{:?}", h.closed);
        assert!(h.finished.is_none(), "{:?}", h.finished);
        assert_eq!(h.terminal_output.len() - before, held, "still held");

        // stdout reads again: everything arrives, in order.
        h.withhold_delivery = false;
        h.command(Command::Delivered {
            conn: super::TERMINAL_CONN,
            bytes: held,
        });
        let limit = h.now - h.t0 + Duration::from_secs(30);
        h.run_until(limit, |h| h.terminal_output.len() - before >= sent.len());
        assert!(
            h.terminal_output[before..] == sent[..],
            "every byte, in order ({} of {})",
            h.terminal_output.len() - before,
            sent.len()
        );
        assert!(!h.client.session.read_paused);
    }

    #[test]
    fn a_gateway_pty_that_takes_no_input_holds_the_script_back_without_a_stall_close() {
        let mut h = terminal_at_prompt();
        h.withhold_gateway_delivery = true;
        let sent = pattern(8 * 1024 * 1024);
        let mut off = 0;
        let until = h.now + Duration::from_secs(10);
        while off < sent.len() && h.now < until {
            if h.client.can_send() {
                let end = (off + 4096).min(sent.len());
                h.command(Command::TerminalInput {
                    data: sent[off..end].to_vec(),
                });
                off = end;
            } else {
                h.run_for(Duration::from_millis(5));
            }
        }
        let g = *h.target_received.keys().next().expect("the PTY got input");
        let held = h.target_received[&g].len();
        assert!(held >= RECEIVE_BUDGET, "budget not used: {held}");
        assert!(held <= RECEIVE_BUDGET + 1536 * 1024, "not bounded: {held}");
        assert!(off < sent.len(), "the client was held back: took all {off}");
        h.run_for(STALL_LIMIT * 2);
        assert!(
            h.closed.is_empty(),
            "a terminal is never closed for stalling: {:?}",
            h.closed
        );
        assert_eq!(h.target_received[&g].len(), held);

        // The PTY reads again: the whole script arrives, in order.
        let mut credited = 0;
        let limit = h.now + Duration::from_secs(60);
        while h.target_received[&g].len() < sent.len() {
            assert!(h.now < limit, "stuck at {}", h.target_received[&g].len());
            let got = h.target_received[&g].len();
            if got > credited {
                h.gateway_delivered(g, got - credited);
                credited = got;
            }
            if off < sent.len() && h.client.can_send() {
                let end = (off + 4096).min(sent.len());
                h.command(Command::TerminalInput {
                    data: sent[off..end].to_vec(),
                });
                off = end;
            } else {
                h.run_for(Duration::from_millis(5));
            }
        }
        assert!(h.target_received[&g] == sent, "every byte, in order");
    }

    #[test]
    fn close_flushes_then_finishes_ok() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        let asked = h.now - h.t0;
        h.command(Command::Close);
        h.run_until_finished();
        assert_eq!(h.finished, Some(Ok(())));
        assert!(h.finished_at.unwrap() <= asked + super::CLOSE_FLUSH);
    }

    #[test]
    fn a_terminal_launch_opens_connection_1_and_reaches_the_prompt() {
        let h = terminal_at_prompt();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        assert_eq!(h.opened.first(), Some(&1));
        let ready = h
            .checkpoint_at("guacamole_wait_for_ready_ok")
            .expect("guac ready");
        assert!(ready < h.tube_ready.unwrap() + super::GUAC_READY_TIMEOUT);
        assert!(!h
            .checkpoint_names()
            .contains(&"guacamole_wait_for_ready_timeout"));
    }
}
