//! The data plane: from the offer being through to the data channel carrying the tube.
//!
//! * **Main thread free.** Commander's main thread flushes the candidates after the offer, then polls
//!   the connection state; from that moment the connect bound (`connect_timeout`) runs. An event-driven
//!   profile (`fast`) watches from the moment the offer is through.
//! * **Poll ticks.** Commander only notices `connected` on its next poll tick (`poll_interval`) at or
//!   after the moment ICE + DTLS came up; event-driven profiles see it at once.
//! * **Open delay and OpenConnection.** After `connected`, Commander sleeps `open_connection_delay`, then
//!   sends OpenConnection if the data channel is open, retrying on a doubling backoff
//!   (`open_connection_attempts`); an event-driven profile opens the moment the channel reports open,
//!   bounded by `connect_timeout` (SCTP may need retransmissions on a lossy path).
//! * The peer's own I/O: datagrams in, transmits out, its timeouts and events.

use std::time::{Duration, Instant};

use crate::error::{NoPath, NoPathReason};
use crate::relay::GatherEvent;
use crate::rtc::PeerEvent;
use crate::timing::{
    names, PHASE_CLI_SESSION as CLI_SESSION, PHASE_WEBRTC_TUNNEL as WEBRTC_TUNNEL,
};
use crate::tube::conns::{Connections, Role as TubeRole};
use crate::{CandidateKind, Datagram, LaunchError, Output};

use super::{Client, Step, Timer};

/// The data plane's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum DataPlaneTimer {
    /// The bound on ICE + DTLS from the moment the main thread is free.
    Connect,
    /// Commander's next poll tick after `connected`.
    PollTick,
    /// `open_connection_delay` after the data plane was seen connected.
    OpenDelay,
    /// The next step of Commander's OpenConnection backoff.
    OpenRetry,
    /// Event-driven profiles: the bound on waiting for the data channel after `connected`.
    ChannelOpen,
}

impl From<DataPlaneTimer> for Timer {
    fn from(t: DataPlaneTimer) -> Timer {
        Timer::DataPlane(t)
    }
}

/// The data plane's state.
pub(super) struct DataPlane {
    /// When Commander's main thread would start polling the connection state.
    poll_origin: Option<Instant>,
    /// When ICE + DTLS came up.
    connected_at: Option<Instant>,
    /// Whether the profile's observer has seen `connected` (poll tick or event).
    pub(super) seen: bool,
    open_step: Step,
    open_attempt: u32,
    channel_open: bool,
}

impl DataPlane {
    pub(super) fn new() -> Self {
        DataPlane {
            poll_origin: None,
            connected_at: None,
            seen: false,
            open_step: Step::NotStarted,
            open_attempt: 0,
            channel_open: false,
        }
    }
}

impl Client {
    /// Commander's main thread finished the offer and its batch flush and starts polling the
    /// connection state: from here the connect timeout runs and poll ticks count.
    pub(super) fn main_thread_free(&mut self) {
        if self.data_plane.poll_origin.is_some() {
            return;
        }
        self.data_plane.poll_origin = Some(self.now);
        let p = self.profile().clone();
        let summary = if self.cfg.trickle_ice {
            names::WEBRTC_TUNNEL_OPEN_OK_STREAMING
        } else {
            names::WEBRTC_TUNNEL_OPEN_OK_NON_STREAMING
        };
        self.checkpoint(WEBRTC_TUNNEL, summary);
        self.checkpoint(CLI_SESSION, names::CLI_SESSION_TRY_ENTER);
        self.arm(DataPlaneTimer::Connect, p.connect_timeout);
    }

    /// Step 8 of the reconciler.
    pub(super) fn advance_data_plane(&mut self) {
        let p = self.profile().clone();
        if self.due(DataPlaneTimer::Connect) && !self.data_plane.seen {
            // An answer that was applied but never led to `connected`: no candidate pair worked.
            if self.offer.answer_applied && self.data_plane.connected_at.is_none() {
                return self.finish(Err(LaunchError::NoPath(NoPath {
                    reason: NoPathReason::NoWorkingPair {
                        waited: p.connect_timeout,
                    },
                    problems: self.relay.problems().to_vec(),
                })));
            }
            return self.finish(Err(LaunchError::Timeout {
                what: "the WebRTC connection (ICE + DTLS)",
                waited: p.connect_timeout,
            }));
        }
        // Observe `connected` the way the profile does: at once (events), or on the first poll tick of
        // Commander's main thread at or after the moment ICE + DTLS came up.
        if !self.data_plane.seen {
            if let (Some(origin), Some(connected)) =
                (self.data_plane.poll_origin, self.data_plane.connected_at)
            {
                let seen_at = match p.poll_interval {
                    None => connected.max(origin),
                    Some(tick) => poll_tick_after(origin, connected, tick),
                };
                if self.now >= seen_at {
                    self.data_plane.seen = true;
                    self.disarm(DataPlaneTimer::Connect);
                    self.disarm(DataPlaneTimer::PollTick);
                    self.checkpoint(CLI_SESSION, names::WEBRTC_DATA_PLANE_CONNECTED);
                    self.arm(DataPlaneTimer::OpenDelay, p.open_connection_delay);
                    self.data_plane.open_step = Step::Running;
                } else {
                    self.arm_at(DataPlaneTimer::PollTick, seen_at);
                }
            }
        }
        if self.data_plane.open_step == Step::Running && self.due(DataPlaneTimer::OpenDelay) {
            self.checkpoint(CLI_SESSION, names::OPEN_CONNECTION_DELAY_DONE);
            self.try_open();
        }
        if self.data_plane.open_step == Step::Running && self.due(DataPlaneTimer::OpenRetry) {
            self.try_open();
        }
        if self.data_plane.open_step == Step::Running
            && self.due(DataPlaneTimer::ChannelOpen)
            && !self.data_plane.channel_open
        {
            self.finish(Err(LaunchError::Timeout {
                what: "the data channel to open",
                waited: p.connect_timeout,
            }));
        }
    }

    /// OpenConnection with Commander's retry: only when the data channel is not open yet.
    fn try_open(&mut self) {
        if self.data_plane.channel_open {
            self.data_plane.open_step = Step::Done;
            self.start_session();
            return;
        }
        let p = self.profile().clone();
        if p.poll_interval.is_none() {
            // Event-driven: `ChannelOpen` calls us again; no retry ladder, just a bound (SCTP may need
            // retransmissions on a lossy path, which Commander's 1.5 s ladder does not allow for).
            if !self.is_armed(DataPlaneTimer::ChannelOpen) {
                self.arm(DataPlaneTimer::ChannelOpen, p.connect_timeout);
            }
            return;
        }
        if self.data_plane.open_attempt + 1 >= p.open_connection_attempts {
            return self.finish(Err(LaunchError::Timeout {
                what: "the data channel to open",
                waited: p.open_connection_backoff * ((1 << p.open_connection_attempts) - 1),
            }));
        }
        let wait = p.open_connection_backoff * (1u32 << self.data_plane.open_attempt.min(16));
        self.data_plane.open_attempt += 1;
        self.arm(DataPlaneTimer::OpenRetry, wait);
    }

    /// A datagram from the network.
    pub(super) fn on_datagram(&mut self, d: &Datagram) {
        let now = self.now;
        // A STUN/TURN server's datagram is the relay layer's (relayed peer data comes out of it).
        if !self.relay.incoming(d, now) {
            if let Some(p) = self.peer.as_mut() {
                p.handle_datagram(d, now);
            }
        }
        self.pump_peer();
    }

    /// Drain the relay layer: relayed data into the peer, gathered candidates, failures, its I/O.
    fn pump_relay(&mut self) {
        let now = self.now;
        while let Some(d) = self.relay.poll_inbound() {
            if let Some(p) = self.peer.as_mut() {
                p.handle_datagram(&d, now);
            }
        }
        while let Some(event) = self.relay.poll_event() {
            match event {
                GatherEvent::Candidate { addr, kind } => {
                    let name = match kind {
                        CandidateKind::Relayed { .. } => names::RELAY_CANDIDATE,
                        _ => names::RELAY_SRFLX_CANDIDATE,
                    };
                    tracing::info!(%addr, ?kind, "gathered a candidate");
                    self.checkpoint(WEBRTC_TUNNEL, name);
                    self.on_local_candidate(addr, kind);
                }
                GatherEvent::Failed(_) => {
                    self.checkpoint(WEBRTC_TUNNEL, names::RELAY_SERVER_FAILED)
                }
                GatherEvent::Gathered => {
                    self.checkpoint(WEBRTC_TUNNEL, names::RELAY_GATHERING_DONE);
                    self.sync_gathering();
                }
            }
        }
        if self.relay.relay_only_failed() && !self.finished {
            return self.finish(Err(LaunchError::NoPath(NoPath {
                reason: NoPathReason::NoRelay,
                problems: self.relay.problems().to_vec(),
            })));
        }
        while let Some(o) = self.relay.poll_output() {
            self.outputs.push_back(o);
        }
    }

    /// The peer's transmits, the one way out for them: a transmit from one of our relay addresses is
    /// wrapped for its TURN server by the relay layer (a Send indication or ChannelData, on the node's
    /// socket or the allocation's stream); any other goes out as it is. Then the relay layer's own I/O.
    pub(super) fn drain_transmits(&mut self) {
        let now = self.now;
        if let Some(peer) = self.peer.as_mut() {
            while let Some(d) = peer.poll_transmit() {
                if let Some(d) = self.relay.outgoing(d, now) {
                    self.outputs.push_back(Output::Transmit(d));
                }
            }
        }
        while let Some(o) = self.relay.poll_output() {
            self.outputs.push_back(o);
        }
    }

    /// On `Input::Timeout`: the peer's own timers.
    pub(super) fn on_peer_timeout(&mut self) {
        let now = self.now;
        if let Some(p) = self.peer.as_mut() {
            if p.poll_timeout().is_some_and(|t| t <= now) {
                p.handle_timeout(now);
            }
        }
        self.pump_peer();
    }

    /// Drain the peer: transmits out, events into the data plane and the tube.
    pub(super) fn pump_peer(&mut self) {
        let now = self.now;
        self.pump_relay();
        self.drain_transmits();
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        while let Some(e) = peer.poll_event() {
            events.push(e);
        }
        let heard = peer.last_received() == Some(now);
        for e in events {
            match e {
                PeerEvent::Connected => {
                    self.data_plane.connected_at = Some(now);
                    self.outputs.push_back(Output::Connected);
                    self.path_up();
                }
                PeerEvent::PathLost => self.path_ice(true),
                PeerEvent::PathRestored => self.path_ice(false),
                PeerEvent::ChannelOpen => {
                    self.data_plane.channel_open = true;
                    let mut conns = Connections::new(TubeRole::Client, now);
                    conns.set_unix_ms_base(self.unix_ms(), now);
                    self.session.conns = Some(conns);
                    self.checkpoint(CLI_SESSION, names::DATA_CHANNEL_OPEN);
                    // An event-driven profile opens the moment the channel is up; Commander's
                    // schedule only notices at its next backoff tick, which its timer keeps.
                    let event_driven = self.cfg.profile.poll_interval.is_none();
                    if event_driven
                        && self.data_plane.open_step == Step::Running
                        && !self.is_armed(DataPlaneTimer::OpenDelay)
                    {
                        self.disarm(DataPlaneTimer::OpenRetry);
                        self.disarm(DataPlaneTimer::ChannelOpen);
                        self.try_open();
                    }
                }
                PeerEvent::Message(m) => {
                    if let Some(conns) = self.session.conns.as_mut() {
                        conns.handle_message(&m, now);
                    }
                }
                PeerEvent::Writable => {}
                PeerEvent::Closed(reason) => {
                    if !self.finished
                        && !self.session.closing
                        && self.data_plane.connected_at.is_none()
                        && reason == crate::rtc::ICE_DISCONNECTED
                    {
                        // ICE gave up before it ever connected: no path, not a lost session.
                        let problems = self.relay.problems().to_vec();
                        self.finish(Err(LaunchError::NoPath(NoPath {
                            reason: NoPathReason::IceFailed(reason),
                            problems,
                        })));
                    } else if !self.finished && !self.session.closing {
                        self.finish(Err(LaunchError::Disconnected(reason)));
                    } else if self.session.closing {
                        self.finish(Ok(()));
                    }
                }
            }
        }
        if heard && !self.finished {
            self.path_heard();
        }
        self.pump_tube();
    }
}

/// The first poll tick (`origin + n × tick`) at or after `connected`.
fn poll_tick_after(origin: Instant, connected: Instant, tick: Duration) -> Instant {
    if connected <= origin {
        return origin;
    }
    let elapsed = connected - origin;
    let n = elapsed.as_nanos().div_ceil(tick.as_nanos().max(1));
    origin + Duration::from_nanos((n * tick.as_nanos()) as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::harness::{Harness, HarnessConfig};
    use super::poll_tick_after;
    use crate::profile::Profile;
    use crate::LaunchError;

    #[test]
    fn poll_ticks_round_up_to_the_next_tick() {
        let o = pam_lite_dev_clock::origin();
        let ms = Duration::from_millis;
        assert_eq!(poll_tick_after(o, o, ms(25)), o);
        assert_eq!(poll_tick_after(o + ms(10), o, ms(25)), o + ms(10));
        assert_eq!(poll_tick_after(o, o + ms(1), ms(25)), o + ms(25));
        assert_eq!(poll_tick_after(o, o + ms(25), ms(25)), o + ms(25));
        assert_eq!(poll_tick_after(o, o + ms(26), ms(25)), o + ms(50));
    }

    #[test]
    fn commander_sees_connected_on_a_poll_tick_then_sleeps_the_open_delay() {
        let profile = Profile::commander_1984();
        let tick = profile.poll_interval.unwrap();
        let open_delay = profile.open_connection_delay;
        let mut h = Harness::new(HarnessConfig {
            profile,
            ..HarnessConfig::default()
        });
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        let origin = h.checkpoint_at("cli_session_try_enter").unwrap();
        let seen = h.checkpoint_at("webrtc_data_plane_connected").unwrap();
        let connected = h.connected.unwrap();
        assert!(seen >= connected);
        assert!(
            seen - connected < tick,
            "seen on the first tick after connected"
        );
        assert_eq!((seen - origin).as_nanos() % tick.as_nanos(), 0, "on a tick");
        assert_eq!(
            h.checkpoint_at("open_connection_delay_done").unwrap() - seen,
            open_delay
        );
    }

    #[test]
    fn fast_sees_connected_at_once_and_opens_when_the_channel_does() {
        let mut h = Harness::new(HarnessConfig::default());
        h.run_until_ready();
        assert!(h.tube_ready.is_some(), "{:?}", h.finished);
        let connected = h.connected.unwrap();
        assert_eq!(
            h.checkpoint_at("webrtc_data_plane_connected"),
            Some(connected)
        );
        let channel = h.checkpoint_at("data_channel_open").unwrap();
        assert_eq!(h.checkpoint_at("open_connection_sent_ok"), Some(channel));
        assert_eq!(h.tube_ready, Some(channel));
    }

    #[test]
    fn a_gateway_that_never_answers_in_time_hits_the_connect_bound() {
        let profile = Profile::fast();
        let bound = profile.connect_timeout;
        let mut h = Harness::new(HarnessConfig {
            profile,
            answer_delay: bound * 2,
            ..HarnessConfig::default()
        });
        h.run_until_finished();
        assert!(
            matches!(h.finished, Some(Err(LaunchError::Timeout { waited, .. })) if waited == bound),
            "{:?}",
            h.finished
        );
        let origin = h.checkpoint_at("cli_session_try_enter").unwrap();
        assert_eq!(h.finished_at, Some(origin + bound));
        assert!(h.connected.is_none());
    }

    #[test]
    fn losing_every_datagram_ends_the_launch_before_the_connect_bound() {
        // str0m's ICE agent gives up on its own (a consent/connectivity failure) before the bound; it
        // never connected, so that is "no path", not a lost session.
        let profile = Profile::fast();
        let bound = profile.connect_timeout;
        let mut h = Harness::new(HarnessConfig {
            profile,
            drop_datagrams: true,
            ..HarnessConfig::default()
        });
        h.run_until_finished();
        assert!(
            matches!(
                &h.finished,
                Some(Err(LaunchError::NoPath(crate::NoPath {
                    reason: crate::NoPathReason::IceFailed(_),
                    ..
                })))
            ),
            "{:?}",
            h.finished
        );
        let shown = h.finished.clone().unwrap().unwrap_err().to_string();
        assert!(
            shown.starts_with("no network path to the gateway: ICE failed"),
            "{shown}"
        );
        let origin = h.checkpoint_at("cli_session_try_enter").unwrap();
        assert!(h.finished_at.unwrap() < origin + bound);
    }
}
