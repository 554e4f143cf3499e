//! Flow control for local sockets, applied by the driver itself.
//!
//! The node says when a connection's local side must pause (`Output::Backpressure { paused: true }`: the
//! tube is full) and when it may resume. The driver records that here *as it performs the output*, not
//! through the application's output queue: an application thread blocked writing tunnel bytes to a slow
//! local peer must not hold up the "resume" behind it (that was a deadlock with single-threaded echo
//! servers, found by the Keeper interop suite). Readers — threads or async tasks — wait here before each
//! read.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use pam_lite_core::ConnNo;

/// The set of paused connections, with wake-ups for blocking and async waiters.
#[derive(Debug, Default)]
pub struct FlowControl {
    paused: Mutex<HashSet<ConnNo>>,
    resumed: Condvar,
    resumed_async: event_listener::Event,
    /// A forwarder (or the application) credits what it writes to local sockets or stdout
    /// (`Command::Delivered`); until one claims that, the dispatcher credits `ConnectionData` and
    /// `TerminalOutput` as it hands them to the application.
    delivery_claimed: AtomicBool,
}

impl FlowControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record the node's `Backpressure` output for `conn`.
    pub fn set(&self, conn: ConnNo, paused: bool) {
        let mut set = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
        if paused {
            set.insert(conn);
        } else if set.remove(&conn) {
            self.resumed.notify_all();
            self.resumed_async.notify(usize::MAX);
        }
    }

    /// A forwarder (or the application) takes over receive-side credit: from now on the dispatcher no
    /// longer credits `Output::ConnectionData` / `Output::TerminalOutput` when it hands them over; the
    /// claimant credits what it writes.
    pub fn claim_delivery(&self) {
        self.delivery_claimed.store(true, Ordering::Relaxed);
    }

    /// Whether a forwarder credits deliveries (see [`FlowControl::claim_delivery`]).
    pub fn delivery_claimed(&self) -> bool {
        self.delivery_claimed.load(Ordering::Relaxed)
    }

    /// `conn` is gone: never leave a waiter behind.
    pub fn forget(&self, conn: ConnNo) {
        self.set(conn, false);
    }

    pub fn is_paused(&self, conn: ConnNo) -> bool {
        self.paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&conn)
    }

    /// Block while `conn` is paused. `alive` is polled every 100 ms; `false` ends the wait (returns
    /// `false`), e.g. when the connection was closed meanwhile.
    pub fn wait(&self, conn: ConnNo, alive: impl Fn() -> bool) -> bool {
        let mut set = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
        while set.contains(&conn) {
            if !alive() {
                return false;
            }
            set = self
                .resumed
                .wait_timeout(set, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// A listener to await a resume (async readers: create it, re-check [`FlowControl::is_paused`], then
    /// await it, so no notification is missed).
    pub fn listen(&self) -> event_listener::EventListener {
        self.resumed_async.listen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_paused_reader_waits_until_resumed() {
        let flow = Arc::new(FlowControl::new());
        flow.set(1, true);
        let f = flow.clone();
        let waiter = std::thread::spawn(move || {
            let start = Instant::now();
            assert!(f.wait(1, || true));
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(150));
        flow.set(1, false);
        let waited = waiter.join().unwrap_or_else(|_| panic!("waiter"));
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(!flow.is_paused(1));
    }

    #[test]
    fn a_dead_connection_ends_the_wait() {
        let flow = FlowControl::new();
        flow.set(2, true);
        assert!(!flow.wait(2, || false));
    }
}
