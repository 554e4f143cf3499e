//! Receive-side flow control: how much tunnel data each connection's local side still has to take,
//! and when the tube must stop reading because of it.
//!
//! Every [`crate::Output::ConnectionData`] hands bytes to the driver, which writes them to the local
//! socket and reports what it wrote with [`crate::Command::Delivered`] (credit). What was handed and not
//! yet credited is the connection's *backlog*. Once one connection's backlog reaches [`RECEIVE_BUDGET`]
//! the node stops taking messages out of the data channel (str0m's `Channel::set_read_paused`, see
//! `vendor/str0m-fixed`): they stay in SCTP's receive buffer, the receive window it advertises closes,
//! and the far side's sender slows down — memory stays bounded end to end and nothing is dropped.
//!
//! **Head-of-line blocking is real.** Every connection of a tube shares one ordered data channel, so the
//! messages of the other connections wait behind the stalled one's (there is no reading past them
//! without buffering the stalled connection's data without bound). That is acceptable while the slow
//! local side makes progress (it is how TCP behaves too), not forever: a connection that holds the tube
//! paused and takes *nothing* for [`STALL_LIMIT`] is closed with [`super::CloseReason::Timeout`], and
//! the tube reads on.
//!
//! **A launch's terminal is exempt from the stall limit** ([`Delivery::exempt_from_stall_limit`]): its
//! output (`Output::TerminalOutput`, credited as it reaches stdout) obeys the same budget, but the tube
//! of a launch carries nothing else, so a stdout that is not read for a long time (a pager waiting for
//! a key, a paused terminal) freezes no one else and ending the user's session for it would be wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::io::ConnNo;

/// Backlog per connection at which the tube stops reading. Large enough that the credit round trip
/// (driver write → `Command::Delivered` → node, well under a millisecond locally) never throttles a
/// fast local reader: at the tunnel's ~50 MB/s, 2 MiB is ~40 ms of data. Small enough that the
/// worst case per connection — this budget, plus what SCTP had already made readable when the pause
/// began (its 1 MiB receive buffer) — is a few MiB, not the ~20 MiB *per second* a non-reading peer
/// used to cost.
pub const RECEIVE_BUDGET: usize = 2 * 1024 * 1024;

/// How long a connection may hold the whole tube paused without its local side taking a single byte
/// before it is closed (`CloseReason::Timeout`). Every other connection of the tube is frozen meanwhile,
/// so this is how long one stuck local client can freeze the others. Long enough for a human pause (a
/// terminal's Ctrl-S, a `less` prompt, a laptop lid closed briefly, a stopped process resumed) and
/// for a slow disk that still writes now and then (any progress restarts the clock); short enough that
/// a client that is truly gone does not freeze the rest of the session indefinitely.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Backlog {
    bytes: usize,
    /// Over budget since, or since its last progress while over budget (the stall clock).
    stalled_since: Option<Instant>,
}

/// The backlog of each connection's local side (see the module docs).
#[derive(Debug, Clone)]
pub struct Delivery {
    budget: usize,
    stall_limit: Duration,
    conns: BTreeMap<ConnNo, Backlog>,
    /// Connections the stall limit does not apply to (they still pause the tube at the budget).
    exempt: BTreeSet<ConnNo>,
}

impl Default for Delivery {
    fn default() -> Self {
        Self::new()
    }
}

impl Delivery {
    pub fn new() -> Self {
        Self::with_limits(RECEIVE_BUDGET, STALL_LIMIT)
    }

    pub fn with_limits(budget: usize, stall_limit: Duration) -> Self {
        Delivery {
            budget: budget.max(1),
            stall_limit,
            conns: BTreeMap::new(),
            exempt: BTreeSet::new(),
        }
    }

    /// `conn` pauses the tube at the budget like any other, but is never closed for stalling (a
    /// launch's terminal: see the module docs). Until [`Delivery::forget`].
    pub fn exempt_from_stall_limit(&mut self, conn: ConnNo) {
        self.exempt.insert(conn);
        if let Some(b) = self.conns.get_mut(&conn) {
            b.stalled_since = None;
        }
    }

    /// `n` bytes of `conn` were handed to the driver (`Output::ConnectionData`).
    pub fn handed(&mut self, conn: ConnNo, n: usize, now: Instant) {
        if n == 0 {
            return;
        }
        let b = self.conns.entry(conn).or_insert(Backlog {
            bytes: 0,
            stalled_since: None,
        });
        b.bytes = b.bytes.saturating_add(n);
        if b.bytes >= self.budget && b.stalled_since.is_none() && !self.exempt.contains(&conn) {
            b.stalled_since = Some(now);
        }
    }

    /// The driver wrote `n` bytes of `conn` to its local side (`Command::Delivered`). More than was
    /// handed is clamped (a confused driver cannot buy unbounded credit).
    pub fn delivered(&mut self, conn: ConnNo, n: usize, now: Instant) {
        let Some(b) = self.conns.get_mut(&conn) else {
            return;
        };
        b.bytes = b.bytes.saturating_sub(n);
        b.stalled_since = (b.bytes >= self.budget && !self.exempt.contains(&conn)).then_some(now);
        if b.bytes == 0 {
            self.conns.remove(&conn);
        }
    }

    /// `conn` is closed: its backlog no longer counts.
    pub fn forget(&mut self, conn: ConnNo) {
        self.conns.remove(&conn);
        self.exempt.remove(&conn);
    }

    /// The backlog of `conn`.
    pub fn backlog(&self, conn: ConnNo) -> usize {
        self.conns.get(&conn).map_or(0, |b| b.bytes)
    }

    /// Whether some connection is at its budget: the tube must not read.
    pub fn is_blocked(&self) -> bool {
        self.conns.values().any(|b| b.bytes >= self.budget)
    }

    /// Connections over budget that took nothing for the stall limit: close them.
    pub fn stalled(&self, now: Instant) -> Vec<ConnNo> {
        self.conns
            .iter()
            .filter(|(_, b)| {
                b.stalled_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.stall_limit)
            })
            .map(|(c, _)| *c)
            .collect()
    }

    /// When the earliest stall limit runs out (the node must wake then).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|b| b.stalled_since)
            .min()
            .map(|t| t + self.stall_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pam_lite_dev_clock::origin;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_tube_blocks_at_the_budget_and_reopens_on_credit() {
        let t0 = origin();
        let mut d = Delivery::with_limits(1000, Duration::from_secs(60));
        d.handed(1, 600, t0);
        d.handed(2, 999, t0);
        assert!(!d.is_blocked(), "under budget");
        assert_eq!(d.poll_timeout(), None, "nothing can stall under budget");
        d.handed(1, 400, t0);
        assert!(d.is_blocked(), "connection 1 reached its budget");
        assert_eq!(d.backlog(1), 1000);
        d.delivered(1, 1, t0 + MS);
        assert!(!d.is_blocked(), "one byte written reopens the tube");
        d.delivered(1, 5000, t0 + MS);
        assert_eq!(d.backlog(1), 0, "credit beyond the backlog is clamped");
        d.handed(1, 1000, t0 + 2 * MS);
        assert_eq!(d.backlog(1), 1000, "no credit was banked");
        assert!(d.is_blocked());
        d.forget(1);
        assert!(!d.is_blocked(), "a closed connection no longer blocks");
        assert_eq!(d.backlog(2), 999);
    }

    #[test]
    fn a_connection_that_takes_nothing_stalls_after_the_limit() {
        let t0 = origin();
        let limit = Duration::from_secs(60);
        let mut d = Delivery::with_limits(1000, limit);
        d.handed(3, 1500, t0);
        assert_eq!(d.poll_timeout(), Some(t0 + limit));
        assert!(
            d.stalled(t0 + limit - MS).is_empty(),
            "not before the limit"
        );
        assert_eq!(d.stalled(t0 + limit), vec![3]);
    }

    #[test]
    fn progress_restarts_the_stall_clock() {
        let t0 = origin();
        let limit = Duration::from_secs(60);
        let mut d = Delivery::with_limits(1000, limit);
        d.handed(3, 5000, t0);
        // A slow local side: 100 bytes every 50 s, still over budget all the time.
        let mut now = t0;
        for _ in 0..10 {
            now += Duration::from_secs(50);
            assert!(d.stalled(now).is_empty(), "slow is not stuck");
            d.delivered(3, 100, now);
            assert!(d.is_blocked());
        }
        assert_eq!(d.poll_timeout(), Some(now + limit));
        assert_eq!(d.stalled(now + limit), vec![3]);
    }

    #[test]
    fn an_exempt_connection_blocks_the_tube_but_never_stalls() {
        let t0 = origin();
        let limit = Duration::from_secs(60);
        let mut d = Delivery::with_limits(1000, limit);
        d.exempt_from_stall_limit(1);
        d.handed(1, 5000, t0);
        assert!(d.is_blocked(), "the budget still applies");
        assert_eq!(d.poll_timeout(), None, "no stall clock runs");
        assert!(d.stalled(t0 + 100 * limit).is_empty());
        d.delivered(1, 10, t0 + limit);
        assert_eq!(d.poll_timeout(), None, "not after progress either");
        d.handed(2, 5000, t0);
        assert_eq!(d.stalled(t0 + limit), vec![2], "others still stall");
        d.forget(1);
        d.handed(1, 5000, t0 + limit);
        assert_eq!(
            d.poll_timeout(),
            Some(t0 + limit),
            "forget ends the exemption (conn 2's clock is the earliest)"
        );
        assert_eq!(d.stalled(t0 + 2 * limit), vec![1, 2]);
    }

    #[test]
    fn only_the_stuck_connection_is_reported() {
        let t0 = origin();
        let limit = Duration::from_secs(60);
        let mut d = Delivery::with_limits(1000, limit);
        d.handed(1, 2000, t0);
        d.handed(2, 2000, t0 + Duration::from_secs(30));
        d.handed(4, 10, t0);
        assert_eq!(d.stalled(t0 + limit), vec![1]);
        assert_eq!(d.stalled(t0 + limit + Duration::from_secs(30)), vec![1, 2]);
    }
}
