//! Local ICE candidate buffering: every candidate reaches the gateway exactly once, in order.
//!
//! The client learns local candidates at any time (before the offer, while a POST is in flight, after
//! the answer) and may send them only once the offer is out and the router WebSocket is ready
//! (otherwise the gateway has no conversation to add them to). Commander's version of this
//! (`TunnelSignalHandler`, spec §2.6) loses candidates in two races (§10.3): candidates appended while
//! the batch POST runs are wiped by the `.clear()` that follows it, and candidates buffered after the
//! answer was applied are never sent. [`IceBatcher`] is the same buffer as a small state machine with
//! one POST in flight at a time, so no interleaving can lose or repeat a candidate:
//!
//! * [`push`](IceBatcher::push) buffers; duplicates and candidates already inside the offer SDP
//!   ([`mark_in_offer`](IceBatcher::mark_in_offer)) are ignored.
//! * [`open`](IceBatcher::open) once the offer is sent and the WS is ready.
//! * [`next_batch`](IceBatcher::next_batch) hands out the next POST's candidates (all pending ones in
//!   batch mode, PR #1984; one in serial mode, Commander before #1984), then
//!   [`batch_done`](IceBatcher::batch_done) or [`batch_failed`](IceBatcher::batch_failed).
//! * A failed POST goes back to the front and is retried; after [`MAX_SEND_ATTEMPTS`] failed POSTs a
//!   candidate is given up and reported through [`take_lost`](IceBatcher::take_lost), never silently.
//! * [`end_of_candidates`](IceBatcher::end_of_candidates) queues Rust's end marker `""`, sent once,
//!   after every candidate pushed before it.

use std::collections::{HashSet, VecDeque};

/// The end-of-candidates marker Keeper's Rust library sends inside a candidate array.
pub const END_OF_CANDIDATES: &str = "";

/// Failed POSTs after which a candidate is given up. Commander never retries a candidate POST; a couple
/// of retries cover a router hiccup without delaying the launch much.
pub const MAX_SEND_ATTEMPTS: u32 = 3;

/// Most distinct candidates accepted per launch. A host has a handful of interfaces; this only bounds
/// memory if a driver misbehaves. Candidates beyond it are reported as lost.
pub const MAX_CANDIDATES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `None` is the end-of-candidates marker.
    candidate: Option<String>,
    failures: u32,
}

impl Entry {
    fn wire(&self) -> String {
        self.candidate
            .clone()
            .unwrap_or_else(|| END_OF_CANDIDATES.to_owned())
    }
}

/// Local candidates waiting to be POSTed to the gateway. See the module docs.
#[derive(Debug, Clone)]
pub struct IceBatcher {
    batch: bool,
    open: bool,
    max_attempts: u32,
    /// Waiting to be sent, in order. The end marker, when queued, is always last.
    pending: VecDeque<Entry>,
    /// The POST being sent right now, if any.
    in_flight: Option<Vec<Entry>>,
    /// Every candidate ever accepted or placed in the offer: later pushes of the same text are ignored.
    seen: HashSet<String>,
    end_requested: bool,
    end_sent: bool,
    lost: Vec<String>,
    pushed: usize,
    in_offer: usize,
    delivered: usize,
    posts: usize,
    failed_posts: usize,
    lost_total: usize,
}

impl IceBatcher {
    /// `batch`: one POST carries every pending candidate (Commander since #1984); `false`: one POST
    /// per candidate (Commander before). Sending starts closed.
    pub fn new(batch: bool) -> Self {
        IceBatcher {
            batch,
            open: false,
            max_attempts: MAX_SEND_ATTEMPTS,
            pending: VecDeque::new(),
            in_flight: None,
            seen: HashSet::new(),
            end_requested: false,
            end_sent: false,
            lost: Vec::new(),
            pushed: 0,
            in_offer: 0,
            delivered: 0,
            posts: 0,
            failed_posts: 0,
            lost_total: 0,
        }
    }

    /// Give up a candidate after `attempts` failed POSTs instead of [`MAX_SEND_ATTEMPTS`] (minimum 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Buffer a local candidate (`candidate:…`, no `a=` prefix). Returns `false` if it was ignored:
    /// already pushed, already in the offer SDP, empty (use [`IceBatcher::end_of_candidates`]), or over
    /// [`MAX_CANDIDATES`] (then it is reported as lost).
    pub fn push(&mut self, candidate: impl Into<String>) -> bool {
        let candidate = candidate.into();
        if candidate.is_empty() || self.seen.contains(&candidate) {
            return false;
        }
        if self.seen.len() >= MAX_CANDIDATES {
            self.lose(candidate);
            return false;
        }
        self.seen.insert(candidate.clone());
        self.pushed += 1;
        let entry = Entry {
            candidate: Some(candidate),
            failures: 0,
        };
        // Keep the end marker last.
        match self.pending.back() {
            Some(Entry {
                candidate: None, ..
            }) => {
                let at = self.pending.len() - 1;
                self.pending.insert(at, entry);
            }
            _ => self.pending.push_back(entry),
        }
        true
    }

    /// This candidate went inside the offer SDP: never POST it. Removes it from the queue if it was
    /// pushed before the offer was built.
    pub fn mark_in_offer(&mut self, candidate: &str) {
        if candidate.is_empty() {
            return;
        }
        let before = self.pending.len();
        self.pending
            .retain(|e| e.candidate.as_deref() != Some(candidate));
        if self.pending.len() < before {
            self.pushed -= before - self.pending.len();
        } else if self.seen.contains(candidate) {
            // Already sent or in flight: nothing to take back.
            return;
        }
        self.seen.insert(candidate.to_owned());
        self.in_offer += 1;
    }

    /// The offer is sent and the WebSocket is ready: sending may start. Idempotent.
    pub fn open(&mut self) {
        self.open = true;
    }

    /// Local gathering is complete: send the end marker `""` once, after everything pushed so far.
    /// Idempotent.
    pub fn end_of_candidates(&mut self) {
        if self.end_requested {
            return;
        }
        self.end_requested = true;
        self.pending.push_back(Entry {
            candidate: None,
            failures: 0,
        });
    }

    /// The candidates of the next POST, or `None` while closed, while a POST is in flight, or when
    /// nothing is pending. Batch mode takes everything pending (a single live candidate is `[c]`);
    /// serial mode takes one. Answer with [`IceBatcher::batch_done`] or [`IceBatcher::batch_failed`].
    pub fn next_batch(&mut self) -> Option<Vec<String>> {
        if !self.open || self.in_flight.is_some() || self.pending.is_empty() {
            return None;
        }
        let take = if self.batch { self.pending.len() } else { 1 };
        let entries: Vec<Entry> = self.pending.drain(..take).collect();
        let wire = entries.iter().map(Entry::wire).collect();
        self.in_flight = Some(entries);
        Some(wire)
    }

    /// The POST from the last [`IceBatcher::next_batch`] was accepted. No-op if none is in flight.
    pub fn batch_done(&mut self) {
        let Some(entries) = self.in_flight.take() else {
            return;
        };
        self.posts += 1;
        for e in entries {
            match e.candidate {
                Some(_) => self.delivered += 1,
                None => self.end_sent = true,
            }
        }
    }

    /// The POST from the last [`IceBatcher::next_batch`] failed: its candidates go back to the front,
    /// in order, to be sent again. Returns `true` if all of them will be retried, `false` if some
    /// reached [`MAX_SEND_ATTEMPTS`] and were given up (collect them with [`IceBatcher::take_lost`]).
    pub fn batch_failed(&mut self) -> bool {
        let Some(entries) = self.in_flight.take() else {
            return true;
        };
        self.failed_posts += 1;
        let mut all_kept = true;
        let mut end = None;
        let mut retry = Vec::new();
        for mut e in entries {
            e.failures += 1;
            if e.failures >= self.max_attempts {
                all_kept = false;
                self.lose(e.wire());
            } else if e.candidate.is_none() {
                end = Some(e);
            } else {
                retry.push(e);
            }
        }
        for e in retry.into_iter().rev() {
            self.pending.push_front(e);
        }
        if let Some(e) = end {
            self.pending.push_back(e);
        }
        all_kept
    }

    /// Candidates given up since the last call (after [`MAX_SEND_ATTEMPTS`] failed POSTs, or over
    /// [`MAX_CANDIDATES`]). `""` stands for a lost end marker. The client reports them (log/warning).
    pub fn take_lost(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lost)
    }

    /// Nothing pending and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_none()
    }

    /// Distinct candidates accepted by [`IceBatcher::push`] (minus those later marked in the offer).
    pub fn pushed(&self) -> usize {
        self.pushed
    }

    /// Candidates that went inside the offer SDP instead.
    pub fn in_offer(&self) -> usize {
        self.in_offer
    }

    /// Candidates delivered by successful POSTs (the end marker not counted).
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    /// Successful POSTs.
    pub fn posts(&self) -> usize {
        self.posts
    }

    /// Failed POSTs.
    pub fn failed_posts(&self) -> usize {
        self.failed_posts
    }

    /// Candidates (and end marker) given up in total.
    pub fn lost(&self) -> usize {
        self.lost_total
    }

    /// The end marker was delivered.
    pub fn end_sent(&self) -> bool {
        self.end_sent
    }

    fn lose(&mut self, wire: String) {
        self.lost_total += 1;
        if self.lost.len() < MAX_CANDIDATES + 1 {
            self.lost.push(wire);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(n: usize) -> String {
        format!("candidate:{n} 1 udp 2122260223 192.0.2.{n} 5000{n} typ host")
    }

    #[test]
    fn nothing_is_sent_before_open() {
        let mut b = IceBatcher::new(true);
        assert!(b.push(c(1)));
        assert_eq!(b.next_batch(), None);
        assert!(!b.is_idle());
        b.open();
        assert_eq!(b.next_batch(), Some(vec![c(1)]));
    }

    #[test]
    fn batch_mode_flushes_everything_then_live_candidates_one_by_one() {
        let mut b = IceBatcher::new(true);
        for i in 1..=7 {
            b.push(c(i));
        }
        b.open();
        let first = b.next_batch();
        assert_eq!(first.map(|v| v.len()), Some(7));
        // one POST at a time
        b.push(c(8));
        assert_eq!(b.next_batch(), None);
        b.batch_done();
        // a live candidate arrived during the POST: it is sent next, not wiped (Commander §10.3)
        assert_eq!(b.next_batch(), Some(vec![c(8)]));
        b.batch_done();
        assert!(b.is_idle());
        assert_eq!((b.delivered(), b.posts(), b.lost()), (8, 2, 0));
    }

    #[test]
    fn serial_mode_sends_one_per_post_in_order() {
        let mut b = IceBatcher::new(false);
        for i in 1..=3 {
            b.push(c(i));
        }
        b.open();
        for i in 1..=3 {
            assert_eq!(b.next_batch(), Some(vec![c(i)]));
            b.batch_done();
        }
        assert_eq!(b.next_batch(), None);
        assert_eq!(b.posts(), 3);
    }

    #[test]
    fn duplicates_and_offer_candidates_are_never_sent() {
        let mut b = IceBatcher::new(true);
        assert!(b.push(c(1)));
        assert!(b.push(c(2)));
        assert!(!b.push(c(1)));
        b.mark_in_offer(&c(1)); // pushed before the offer was built, then put in it
        b.mark_in_offer(&c(3)); // only ever in the offer
        assert!(!b.push(c(3)));
        assert!(!b.push(""));
        b.open();
        assert_eq!(b.next_batch(), Some(vec![c(2)]));
        b.batch_done();
        assert_eq!((b.pushed(), b.in_offer(), b.delivered()), (1, 2, 1));
        // a delivered candidate pushed again is ignored too
        assert!(!b.push(c(2)));
        b.mark_in_offer(&c(2));
        assert_eq!(b.in_offer(), 2);
        assert!(b.is_idle());
    }

    #[test]
    fn end_marker_is_sent_once_after_everything() {
        let mut b = IceBatcher::new(true);
        b.push(c(1));
        b.end_of_candidates();
        b.push(c(2)); // late, but still before the marker
        b.end_of_candidates();
        b.open();
        assert_eq!(b.next_batch(), Some(vec![c(1), c(2), String::new()]));
        b.batch_done();
        assert!(b.end_sent());
        assert_eq!(b.delivered(), 2);
        assert!(b.is_idle());

        let mut s = IceBatcher::new(false);
        s.end_of_candidates();
        s.push(c(1));
        s.open();
        assert_eq!(s.next_batch(), Some(vec![c(1)]));
        s.batch_done();
        assert_eq!(s.next_batch(), Some(vec![String::new()]));
        s.batch_done();
        assert_eq!(s.next_batch(), None);
    }

    #[test]
    fn failed_post_is_retried_in_order_then_given_up_explicitly() {
        let mut b = IceBatcher::new(true);
        b.push(c(1));
        b.push(c(2));
        b.end_of_candidates();
        b.open();
        assert_eq!(b.next_batch(), Some(vec![c(1), c(2), String::new()]));
        b.push(c(3));
        assert!(b.batch_failed());
        // back at the front, new candidate after them, marker still last
        assert_eq!(b.next_batch(), Some(vec![c(1), c(2), c(3), String::new()]));
        assert!(b.batch_failed());
        assert_eq!(b.next_batch(), Some(vec![c(1), c(2), c(3), String::new()]));
        // third failure: c1, c2 and the marker are given up; c3 (2 failures) stays
        assert!(!b.batch_failed());
        assert_eq!(b.take_lost(), vec![c(1), c(2), String::new()]);
        assert!(b.take_lost().is_empty());
        assert_eq!(b.next_batch(), Some(vec![c(3)]));
        b.batch_done();
        assert_eq!((b.delivered(), b.lost(), b.failed_posts()), (1, 3, 3));
        assert!(!b.end_sent());
        assert!(b.is_idle());
    }

    #[test]
    fn done_and_failed_without_a_post_are_harmless() {
        let mut b = IceBatcher::new(true);
        b.batch_done();
        assert!(b.batch_failed());
        assert_eq!((b.posts(), b.failed_posts()), (0, 0));
        assert!(b.is_idle());
    }

    #[test]
    fn too_many_candidates_are_reported_lost() {
        let mut b = IceBatcher::new(true);
        for i in 0..MAX_CANDIDATES {
            assert!(b.push(c(i)));
        }
        assert!(!b.push("candidate:overflow"));
        assert_eq!(b.take_lost(), vec!["candidate:overflow".to_owned()]);
        assert_eq!(b.lost(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        InOffer(usize),
        Open,
        Next,
        Done,
        Fail,
        End,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..12).prop_map(Op::Push),
            1 => (0usize..12).prop_map(Op::InOffer),
            1 => Just(Op::Open),
            3 => Just(Op::Next),
            2 => Just(Op::Done),
            1 => Just(Op::Fail),
            1 => Just(Op::End),
        ]
    }

    /// Runs `ops`, then opens and drains with successful POSTs. Returns the delivered wire strings in
    /// order and the lost ones.
    fn run(batch: bool, max_attempts: u32, ops: &[Op]) -> (IceBatcher, Vec<String>, Vec<String>) {
        let mut b = IceBatcher::new(batch).with_max_attempts(max_attempts);
        let mut delivered = Vec::new();
        let mut lost = Vec::new();
        let mut current: Option<Vec<String>> = None;
        for op in ops {
            match op {
                Op::Push(i) => {
                    b.push(c(*i));
                }
                Op::InOffer(i) => b.mark_in_offer(&c(*i)),
                Op::Open => b.open(),
                Op::Next => {
                    if let Some(batch_now) = b.next_batch() {
                        assert!(current.is_none());
                        current = Some(batch_now);
                    }
                }
                Op::Done => {
                    b.batch_done();
                    if let Some(v) = current.take() {
                        delivered.extend(v);
                    }
                }
                Op::Fail => {
                    b.batch_failed();
                    current = None;
                    lost.extend(b.take_lost());
                }
                Op::End => b.end_of_candidates(),
            }
        }
        b.open();
        for _ in 0..1000 {
            if let Some(v) = current.take() {
                b.batch_done();
                delivered.extend(v);
            }
            match b.next_batch() {
                Some(v) => current = Some(v),
                None => break,
            }
        }
        lost.extend(b.take_lost());
        (b, delivered, lost)
    }

    proptest! {
        /// Whatever the interleaving: every accepted candidate is delivered exactly once or reported
        /// lost exactly once, delivered ones keep push order, in-offer ones are never sent, and the end
        /// marker goes at most once (exactly once if requested and not lost).
        #[test]
        fn exactly_once_in_order(
            batch in any::<bool>(),
            max_attempts in 1u32..4,
            ops in prop::collection::vec(op(), 0..60),
        ) {
            let (b, delivered, lost) = run(batch, max_attempts, &ops);
            prop_assert!(b.is_idle());

            // The reference: first pushes, in order, minus candidates marked in the offer before
            // they were sent.
            let mut expected: Vec<String> = Vec::new();
            let mut in_offer: HashSet<String> = HashSet::new();
            let mut offer_only: HashSet<String> = HashSet::new();
            let mut seen: HashSet<String> = HashSet::new();
            for op in &ops {
                match op {
                    Op::Push(i) => {
                        let first = seen.insert(c(*i));
                        if first { expected.push(c(*i)); }
                    }
                    Op::InOffer(i) => {
                        if seen.insert(c(*i)) { offer_only.insert(c(*i)); }
                        in_offer.insert(c(*i));
                    }
                    _ => {}
                }
            }
            // a candidate that was in the offer before anyone pushed it is never POSTed
            prop_assert!(delivered.iter().all(|d| !offer_only.contains(d)));
            let sent: Vec<String> = delivered.iter().filter(|s| !s.is_empty()).cloned().collect();
            let mut all: Vec<String> = sent.iter().chain(lost.iter().filter(|s| !s.is_empty())).cloned().collect();
            // no duplicates anywhere
            let unique: HashSet<&String> = all.iter().collect();
            prop_assert_eq!(unique.len(), all.len());
            // delivered ⊆ expected, in expected's order
            let positions: Vec<usize> = sent
                .iter()
                .map(|s| expected.iter().position(|e| e == s).unwrap_or(usize::MAX))
                .collect();
            prop_assert!(positions.iter().all(|p| *p != usize::MAX));
            prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "order: {:?}", sent);
            // everything expected is delivered, lost, or went into the offer instead
            all.sort();
            for e in &expected {
                prop_assert!(all.binary_search(e).is_ok() || in_offer.contains(e), "missing {}", e);
            }
            // with no failures nothing is lost
            if !ops.iter().any(|o| matches!(o, Op::Fail)) {
                prop_assert!(lost.is_empty());
            }
            // the end marker
            let ends = delivered.iter().filter(|s| s.is_empty()).count()
                + lost.iter().filter(|s| s.is_empty()).count();
            let requested = ops.iter().any(|o| matches!(o, Op::End));
            prop_assert_eq!(ends, usize::from(requested));
            prop_assert_eq!(b.end_sent(), delivered.iter().any(|s| s.is_empty()));
            prop_assert_eq!(b.delivered(), sent.len());
        }

        /// Batch mode sends everything pending in one POST; serial mode exactly one; nothing while
        /// closed or while a POST is in flight.
        #[test]
        fn batch_shapes(batch in any::<bool>(), n in 1usize..10) {
            let mut b = IceBatcher::new(batch);
            for i in 0..n { b.push(c(i)); }
            prop_assert_eq!(b.next_batch(), None);
            b.open();
            let first = b.next_batch().unwrap_or_default();
            prop_assert_eq!(first.len(), if batch { n } else { 1 });
            prop_assert_eq!(b.next_batch(), None);
        }
    }
}
