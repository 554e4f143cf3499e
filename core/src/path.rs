//! Path recovery: notice soon that the path to the peer died, say so, restart ICE on a spaced schedule, and
//! give up with a clear reason after a bound.
//!
//! A session outlives a Wi-Fi blip, a NAT that rebinds, or a TURN allocation lost, only if nobody closes it
//! meanwhile. str0m never gives up on ICE (it keeps checking and comes back to `Connected` by itself when
//! packets flow again), DTLS has no idle timeout and SCTP retransmits without limit, so the session *can*
//! survive; what this module adds is the judgement:
//!
//! * **Detection.** What counts is the *data* path: DTLS records from the peer, not STUN (ICE checks can
//!   still be answered on one pair, through a relay, while the data goes to a dead one — the NAT lab showed
//!   a session stalled for a minute and a half that way). An idle session is never silent for long: after
//!   [`PathConfig::probe_after`] of silence the client sends a tube Ping (a Keeper peer answers within a
//!   millisecond) and repeats it, so nothing heard for [`PathConfig::quiet_after`] means the path is gone —
//!   RFC 7675's consent idea at the tube's level, with a bound of seconds instead of str0m's ~20 s until it
//!   reports `Disconnected` (which counts too, whichever comes first).
//! * **Restart.** While lost, an ICE restart (new ufrag/pwd, the candidates re-announced, so a NAT's new
//!   mapping or a new network is found) is due [`PathConfig::restart_backoff`] apart: first after 2 s —
//!   Keeper's `ICE_DISCONNECTED_WAIT_SECS` — then 5, 10, 20 s (Keeper's backoff), never more often: no
//!   restart storm. Only the role that restarts (the client) asks for them; the gateway role answers.
//! * **Recovery.** The first datagram after the loss, once ICE has a working pair, ends the outage (a
//!   restart is not required: a path that comes back by itself is taken as is).
//! * **Giving up.** Lost for [`PathConfig::give_up_after`] (the profile's `path_loss_limit`): the caller ends
//!   the session with this module's reason. Bytes written meanwhile wait in the tube's bounded queues.
//!
//! Pure: the caller feeds the times at which things happened and asks for the next deadline.

use std::time::{Duration, Instant};

/// The bounds of [`PathWatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathConfig {
    /// Nothing heard for this long while the path is up: ask the peer for a sign of life (the client sends a
    /// tube Ping, which a Keeper peer answers with a Pong within a millisecond), and again as long as
    /// nothing comes. `None`: this side does not probe.
    pub probe_after: Option<Duration>,
    /// No datagram from the peer for this long while the session is up: the path is lost.
    pub quiet_after: Duration,
    /// Delay before each ICE restart while lost, from the loss (first) or the previous restart (then);
    /// the last entry repeats. Empty: this side never restarts (it answers the peer's restarts).
    pub restart_backoff: Vec<Duration>,
    /// Lost for this long: give up.
    pub give_up_after: Duration,
}

impl PathConfig {
    /// The client's bounds (`give_up_after` from the profile).
    pub fn restarting(give_up_after: Duration) -> Self {
        PathConfig {
            probe_after: Some(PROBE_AFTER),
            quiet_after: QUIET_AFTER,
            restart_backoff: RESTART_BACKOFF.to_vec(),
            give_up_after,
        }
    }

    /// The gateway's bounds: it watches and gives up, the client probes and restarts.
    pub fn answering(give_up_after: Duration) -> Self {
        PathConfig {
            probe_after: None,
            restart_backoff: Vec::new(),
            ..Self::restarting(give_up_after)
        }
    }
}

/// A quiet data path is probed after this (a tube Ping): an idle session is never silent for long, so
/// silence means something.
pub const PROBE_AFTER: Duration = Duration::from_secs(2);
/// Three unanswered probes: one lost datagram is not an outage.
pub const QUIET_AFTER: Duration = Duration::from_secs(6);
/// Keeper's tube: 2 s after `Disconnected`, then its backoff helper's 5 → 10 → 20 s.
pub const RESTART_BACKOFF: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
];

/// What the owner must do or say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEvent {
    /// Nothing heard for [`PathConfig::probe_after`]: send the peer something it answers.
    Probe,
    /// The path is lost: nothing came for `quiet` (or ICE said so).
    Lost { quiet: Duration },
    /// Start ICE restart number `attempt` (1-based).
    Restart { attempt: u32 },
    /// The path works again after `outage` (counted from the last datagram before the loss).
    Restored { outage: Duration, restarts: u32 },
    /// Lost for longer than the bound: end the session with [`PathWatch::give_up_reason`].
    GiveUp { outage: Duration, restarts: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The session is not up yet (ICE's connect bound applies, not this one).
    Idle,
    Up,
    Lost {
        /// The last datagram before the loss (or the moment ICE reported it, if later).
        since: Instant,
        next_restart: Option<Instant>,
    },
    /// Gave up; nothing more happens.
    Over,
}

/// Watches one session's path. See the module docs.
#[derive(Debug, Clone)]
pub struct PathWatch {
    cfg: PathConfig,
    state: State,
    last_received: Option<Instant>,
    /// When the last probe went out (the next is due one `probe_after` later, while nothing comes).
    last_probe: Option<Instant>,
    restarts: u32,
}

impl PathWatch {
    pub fn new(cfg: PathConfig) -> Self {
        PathWatch {
            cfg,
            state: State::Idle,
            last_received: None,
            last_probe: None,
            restarts: 0,
        }
    }

    /// When the next probe is due (path up, probing configured).
    fn next_probe(&self) -> Option<Instant> {
        let after = self.cfg.probe_after?;
        let last = self.last_received?;
        let from = self.last_probe.map_or(last, |p| p.max(last));
        Some(from + after)
    }

    /// The session is up (ICE + DTLS connected): from now on silence counts.
    pub fn start(&mut self, now: Instant) {
        if self.state == State::Idle {
            self.state = State::Up;
            self.last_received = Some(self.last_received.map_or(now, |t| t.max(now)));
        }
    }

    /// Whether the path is currently lost.
    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost { .. })
    }

    /// ICE restarts asked for so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// A datagram from the peer arrived at `now`; `ice_ok` says whether ICE has a working pair. Returns
    /// [`PathEvent::Restored`] when this ends an outage.
    pub fn received(&mut self, now: Instant, ice_ok: bool) -> Option<PathEvent> {
        self.last_received = Some(self.last_received.map_or(now, |t| t.max(now)));
        match self.state {
            State::Lost { since, .. } if ice_ok => {
                self.state = State::Up;
                Some(PathEvent::Restored {
                    outage: now.saturating_duration_since(since),
                    restarts: self.restarts,
                })
            }
            _ => None,
        }
    }

    /// ICE reported the path lost (str0m's `Disconnected` after the session was up).
    pub fn ice_lost(&mut self, now: Instant) -> Option<PathEvent> {
        if self.state != State::Up {
            return None;
        }
        let since = self.last_received.unwrap_or(now).min(now);
        Some(self.lose(since, now))
    }

    /// A restart offer went out at `now` (the caller's answer to [`PathEvent::Restart`]); the next one is
    /// due one backoff step later if the path is still lost then.
    pub fn restart_sent(&mut self, now: Instant) {
        if let State::Lost { since, .. } = self.state {
            self.state = State::Lost {
                since,
                next_restart: self.backoff(self.restarts).map(|d| now + d),
            };
        }
    }

    /// The latest moment [`PathWatch::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Idle | State::Over => None,
            State::Up => {
                let lost = self.last_received.map(|t| t + self.cfg.quiet_after);
                [lost, self.next_probe()].into_iter().flatten().min()
            }
            State::Lost {
                since,
                next_restart,
            } => {
                let give_up = since + self.cfg.give_up_after;
                Some(next_restart.map_or(give_up, |r| r.min(give_up)))
            }
        }
    }

    /// Time passed: at most one event per call (call again while it returns one).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<PathEvent> {
        match self.state {
            State::Idle | State::Over => None,
            State::Up => {
                let last = self.last_received?;
                if now >= last + self.cfg.quiet_after {
                    return Some(self.lose(last, now));
                }
                if self.next_probe().is_some_and(|at| now >= at) {
                    self.last_probe = Some(now);
                    return Some(PathEvent::Probe);
                }
                None
            }
            State::Lost {
                since,
                next_restart,
            } => {
                let outage = now.saturating_duration_since(since);
                if outage >= self.cfg.give_up_after {
                    self.state = State::Over;
                    return Some(PathEvent::GiveUp {
                        outage,
                        restarts: self.restarts,
                    });
                }
                match next_restart {
                    Some(at) if now >= at => {
                        self.restarts += 1;
                        // Not due again until `restart_sent` schedules the next one.
                        self.state = State::Lost {
                            since,
                            next_restart: None,
                        };
                        Some(PathEvent::Restart {
                            attempt: self.restarts,
                        })
                    }
                    _ => None,
                }
            }
        }
    }

    /// The session's end reason after [`PathEvent::GiveUp`].
    pub fn give_up_reason(outage: Duration, restarts: u32) -> String {
        format!(
            "the path to the peer was lost and did not come back within {} s ({restarts} ICE restart(s) tried)",
            outage.as_secs()
        )
    }

    fn lose(&mut self, since: Instant, now: Instant) -> PathEvent {
        self.state = State::Lost {
            since,
            next_restart: self.backoff(0).map(|d| now + d),
        };
        PathEvent::Lost {
            quiet: now.saturating_duration_since(since),
        }
    }

    /// The wait before restart number `done + 1`.
    fn backoff(&self, done: u32) -> Option<Duration> {
        let steps = &self.cfg.restart_backoff;
        let i = (done as usize).min(steps.len().checked_sub(1)?);
        steps.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn watch(t0: Instant) -> PathWatch {
        let mut w = PathWatch::new(PathConfig::restarting(s(60)));
        w.start(t0);
        w
    }

    /// Run the watch's timers up to `until`, collecting (when, event) without the probes; a restart is sent
    /// at once. Probes go unanswered.
    fn run(w: &mut PathWatch, until: Instant) -> Vec<(Instant, PathEvent)> {
        run_all(w, until)
            .into_iter()
            .filter(|(_, e)| *e != PathEvent::Probe)
            .collect()
    }

    fn run_all(w: &mut PathWatch, until: Instant) -> Vec<(Instant, PathEvent)> {
        let mut out = Vec::new();
        while let Some(t) = w.poll_timeout().filter(|t| *t <= until) {
            while let Some(e) = w.handle_timeout(t) {
                if matches!(e, PathEvent::Restart { .. }) {
                    w.restart_sent(t);
                }
                out.push((t, e));
            }
        }
        out
    }

    #[test]
    fn a_quiet_path_is_probed_every_two_seconds_until_it_is_lost() {
        let t0 = pam_lite_dev_clock::origin();
        let mut w = watch(t0);
        let events = run_all(&mut w, t0 + s(7));
        assert_eq!(
            events,
            vec![
                (t0 + s(2), PathEvent::Probe),
                (t0 + s(4), PathEvent::Probe),
                (t0 + s(6), PathEvent::Lost { quiet: s(6) }),
            ]
        );
        // An answer resets the clock: the next probe is 2 s after it.
        let mut w = watch(t0);
        assert_eq!(
            run_all(&mut w, t0 + s(2)),
            vec![(t0 + s(2), PathEvent::Probe)]
        );
        w.received(t0 + s(2) + Duration::from_millis(1), true);
        assert_eq!(w.poll_timeout(), Some(t0 + s(4) + Duration::from_millis(1)));
        // The answering side never probes.
        let mut g = PathWatch::new(PathConfig::answering(s(60)));
        g.start(t0);
        assert!(!run_all(&mut g, t0 + s(5)).contains(&(t0 + s(2), PathEvent::Probe)));
    }

    #[test]
    fn a_quiet_path_is_lost_after_the_bound_and_restarts_are_spaced_then_it_gives_up() {
        let t0 = pam_lite_dev_clock::origin();
        let mut w = watch(t0);
        w.received(t0 + s(1), true);
        let events = run(&mut w, t0 + s(120));
        let at = |i: usize| events[i].0 - t0;
        assert_eq!(events[0].1, PathEvent::Lost { quiet: s(6) });
        assert_eq!(at(0), s(7));
        // Restarts 2, 5, 10, 20, 20 s apart, until 60 s after the last datagram.
        let restarts: Vec<Duration> = events
            .iter()
            .filter(|(_, e)| matches!(e, PathEvent::Restart { .. }))
            .map(|(t, _)| *t - t0)
            .collect();
        assert_eq!(restarts, vec![s(9), s(14), s(24), s(44)]);
        assert_eq!(
            events.last().map(|e| e.1.clone()),
            Some(PathEvent::GiveUp {
                outage: s(60),
                restarts: 4
            })
        );
        assert_eq!(events.last().map(|e| e.0 - t0), Some(s(61)));
        assert_eq!(w.poll_timeout(), None, "over: nothing more");
    }

    #[test]
    fn traffic_keeps_the_path_up_and_a_return_restores_it() {
        let t0 = pam_lite_dev_clock::origin();
        let mut w = watch(t0);
        for k in 1..=10 {
            assert_eq!(w.received(t0 + s(3 * k), true), None);
            assert_eq!(run(&mut w, t0 + s(3 * k)), vec![]);
        }
        // Dark from 30 s; lost at 36 s; back at 41 s (before any restart finished).
        let events = run(&mut w, t0 + s(41));
        assert_eq!(events.len(), 2, "{events:?}"); // Lost, Restart at 38 s
        assert_eq!(
            w.received(t0 + s(41), true),
            Some(PathEvent::Restored {
                outage: s(11),
                restarts: 1
            })
        );
        assert!(!w.is_lost());
    }

    #[test]
    fn ice_loss_counts_at_once_and_inbound_stun_alone_does_not_restore() {
        let t0 = pam_lite_dev_clock::origin();
        let mut w = watch(t0);
        w.received(t0 + s(2), true);
        assert_eq!(w.ice_lost(t0 + s(4)), Some(PathEvent::Lost { quiet: s(2) }));
        assert_eq!(w.ice_lost(t0 + s(5)), None, "once");
        // A binding request from the peer while ICE has no working pair yet: still lost.
        assert_eq!(w.received(t0 + s(5), false), None);
        assert!(w.is_lost());
        assert!(matches!(
            w.received(t0 + s(6), true),
            Some(PathEvent::Restored { .. })
        ));
    }

    #[test]
    fn the_answering_side_never_restarts_but_gives_up() {
        let t0 = pam_lite_dev_clock::origin();
        let mut w = PathWatch::new(PathConfig::answering(s(30)));
        w.start(t0);
        let events = run(&mut w, t0 + s(100));
        assert_eq!(
            events.iter().map(|e| e.1.clone()).collect::<Vec<_>>(),
            vec![
                PathEvent::Lost { quiet: s(6) },
                PathEvent::GiveUp {
                    outage: s(30),
                    restarts: 0
                }
            ]
        );
    }

    #[test]
    fn nothing_counts_before_the_session_is_up() {
        let t0 = pam_lite_dev_clock::origin();
        let mut w = PathWatch::new(PathConfig::restarting(s(60)));
        assert_eq!(w.poll_timeout(), None);
        assert_eq!(w.handle_timeout(t0 + s(100)), None);
        assert_eq!(w.ice_lost(t0 + s(100)), None);
    }

    proptest! {
        /// Whatever the traffic pattern: restarts only while lost, never closer than the first backoff
        /// step, at most one per backoff schedule, and the session is given up exactly when an outage
        /// reaches the bound (never while datagrams keep coming).
        #[test]
        fn restarts_are_bounded_and_spaced(gaps in prop::collection::vec(prop_oneof![0u64..8_000, 0u64..80_000], 1..40)) {
            let t0 = pam_lite_dev_clock::origin();
            let cfg = PathConfig::restarting(s(60));
            let mut w = PathWatch::new(cfg.clone());
            w.start(t0);
            let mut now = t0;
            let mut restarts: Vec<Instant> = Vec::new();
            let mut last_rx = t0;
            let mut gave_up = false;
            for gap in gaps {
                let next = now + Duration::from_millis(gap);
                let mut in_this_outage = 0;
                for (t, e) in run(&mut w, next) {
                    match e {
                        PathEvent::Restart { .. } => {
                            prop_assert!(t - last_rx >= cfg.quiet_after, "restart while the path was up");
                            in_this_outage += 1;
                            restarts.push(t);
                        }
                        PathEvent::GiveUp { outage, .. } => {
                            prop_assert!(outage >= cfg.give_up_after);
                            prop_assert_eq!(t - last_rx, cfg.give_up_after);
                            gave_up = true;
                        }
                        _ => {}
                    }
                }
                // 6 s quiet, then 2 + 5 + 10 + 20 s: a fifth restart would come after the 60 s bound.
                prop_assert!(in_this_outage <= 4, "{in_this_outage} restarts in one outage");
                if gave_up {
                    prop_assert!(gap >= 60_000);
                    break;
                }
                prop_assert!(gap < 60_000 || gave_up);
                now = next;
                w.received(now, true);
                last_rx = now;
            }
            for pair in restarts.windows(2) {
                prop_assert!(pair[1] - pair[0] >= cfg.restart_backoff[0]);
            }
        }
    }
}
