//! User-space impairment of the gateway's UDP path (latency, jitter-driven reordering, loss, duplication).
//!
//! Kernel `netem` is not available here (and would need root and a network namespace), so the emulator
//! runs every datagram the gateway sends or receives through an [`ImpairedLink`]: a delay queue that decides
//! each datagram's fate from a seeded RNG when it enters and releases it when its time has come. It is a
//! plain data structure with time passed in, so it is unit-tested without sockets or sleeping.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// One direction of the gateway's UDP path. The default is a perfect link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpImpairment {
    /// Fixed one-way delay added to every datagram.
    pub latency: Duration,
    /// Extra uniform random delay in `[0, jitter)`; a jitter larger than the packet spacing reorders.
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a datagram is dropped.
    pub loss: f64,
    /// Probability in `[0, 1]` that a datagram is delivered twice (each copy gets its own delay).
    pub duplicate: f64,
}

impl Default for UdpImpairment {
    fn default() -> Self {
        UdpImpairment {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

impl UdpImpairment {
    /// Whether this link changes anything (a perfect link skips the queue entirely).
    pub fn is_none(&self) -> bool {
        self.latency.is_zero() && self.jitter.is_zero() && self.loss <= 0.0 && self.duplicate <= 0.0
    }

    /// Check the probabilities (a config file or command line may hold anything).
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [("loss", self.loss), ("duplicate", self.duplicate)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "UDP {name} probability must be within 0..=1, got {p}"
                ));
            }
        }
        Ok(())
    }
}

/// At most this many datagrams wait in one link; beyond that the link tail-drops like a full router queue.
pub const MAX_QUEUED: usize = 8192;

/// Counters of what a link did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub accepted: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub overflowed: u64,
    pub delivered: u64,
}

/// A delay queue that impairs the items pushed through it (generic so tests can push plain numbers).
pub struct ImpairedLink<T> {
    cfg: UdpImpairment,
    rng: ChaCha20Rng,
    /// (release time, sequence number) → slot; the sequence keeps equal release times in FIFO order.
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    seq: u64,
    stats: LinkStats,
}

impl<T: Clone> ImpairedLink<T> {
    pub fn new(cfg: UdpImpairment, seed: u64) -> Self {
        ImpairedLink {
            cfg,
            rng: ChaCha20Rng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
            stats: LinkStats::default(),
        }
    }

    /// A uniform number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn enqueue(&mut self, item: T, at: Instant) {
        if self.queue.len() >= MAX_QUEUED {
            self.stats.overflowed += 1;
            return;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                if let Some(place) = self.slots.get_mut(s) {
                    *place = Some(item);
                }
                s
            }
            None => {
                self.slots.push(Some(item));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    /// An item enters the link at `now`: it is dropped, or queued once or twice with its delay.
    pub fn push(&mut self, item: T, now: Instant) {
        self.stats.accepted += 1;
        let copies = if self.cfg.duplicate > 0.0 && self.unit() < self.cfg.duplicate {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for copy in 0..copies {
            if self.cfg.loss > 0.0 && self.unit() < self.cfg.loss {
                self.stats.dropped += 1;
                continue;
            }
            let jitter = if self.cfg.jitter.is_zero() {
                Duration::ZERO
            } else {
                self.cfg.jitter.mul_f64(self.unit())
            };
            let at = now + self.cfg.latency + jitter;
            if copy + 1 == copies {
                self.enqueue(item, at);
                break;
            }
            self.enqueue(item.clone(), at);
        }
    }

    /// The next item whose release time is `<= now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        let Reverse((at, _, _)) = self.queue.peek()?;
        if *at > now {
            return None;
        }
        let Reverse((_, _, slot)) = self.queue.pop()?;
        let item = self.slots.get_mut(slot).and_then(Option::take);
        self.free.push(slot);
        if item.is_some() {
            self.stats.delivered += 1;
        }
        item
    }

    /// When the next queued item is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain<T: Clone>(link: &mut ImpairedLink<T>, now: Instant) -> Vec<T> {
        std::iter::from_fn(|| link.pop_due(now)).collect()
    }

    #[test]
    fn perfect_link_delivers_in_order_at_once() {
        let t0 = Instant::now();
        let mut link = ImpairedLink::new(UdpImpairment::default(), 1);
        assert!(UdpImpairment::default().is_none());
        for i in 0..100 {
            link.push(i, t0);
        }
        assert_eq!(drain(&mut link, t0), (0..100).collect::<Vec<_>>());
        assert_eq!(link.stats().delivered, 100);
        assert_eq!(link.next_due(), None);
    }

    #[test]
    fn latency_holds_items_until_due() {
        let t0 = Instant::now();
        let cfg = UdpImpairment {
            latency: Duration::from_millis(30),
            ..Default::default()
        };
        let mut link = ImpairedLink::new(cfg, 1);
        link.push("a", t0);
        link.push("b", t0 + Duration::from_millis(5));
        assert_eq!(link.pop_due(t0 + Duration::from_millis(29)), None);
        assert_eq!(link.next_due(), Some(t0 + Duration::from_millis(30)));
        assert_eq!(drain(&mut link, t0 + Duration::from_millis(30)), vec!["a"]);
        assert_eq!(drain(&mut link, t0 + Duration::from_millis(35)), vec!["b"]);
    }

    #[test]
    fn loss_rate_is_roughly_the_configured_one() {
        let t0 = Instant::now();
        let cfg = UdpImpairment {
            loss: 0.25,
            ..Default::default()
        };
        let mut link = ImpairedLink::new(cfg, 7);
        for i in 0..4000 {
            link.push(i, t0);
        }
        let got = drain(&mut link, t0).len();
        assert!(
            (2800..3200).contains(&got),
            "delivered {got} of 4000 at 25% loss"
        );
        assert_eq!(link.stats().dropped as usize + got, 4000);
    }

    #[test]
    fn duplication_delivers_some_items_twice() {
        let t0 = Instant::now();
        let cfg = UdpImpairment {
            duplicate: 0.5,
            ..Default::default()
        };
        let mut link = ImpairedLink::new(cfg, 3);
        for i in 0..1000 {
            link.push(i, t0);
        }
        let got = drain(&mut link, t0);
        let dups = link.stats().duplicated as usize;
        assert!((400..600).contains(&dups), "{dups} duplicates");
        assert_eq!(got.len(), 1000 + dups);
    }

    #[test]
    fn jitter_reorders_and_stays_within_bounds() {
        let t0 = Instant::now();
        let cfg = UdpImpairment {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(20),
            ..Default::default()
        };
        let mut link = ImpairedLink::new(cfg, 11);
        for i in 0..200u32 {
            link.push(i, t0 + Duration::from_micros(u64::from(i) * 100));
        }
        assert_eq!(link.pop_due(t0 + Duration::from_micros(9_999)), None);
        let got = drain(&mut link, t0 + Duration::from_millis(51));
        assert_eq!(got.len(), 200);
        assert!(got.windows(2).any(|w| w[0] > w[1]), "jitter should reorder");
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn same_seed_same_fate() {
        let t0 = Instant::now();
        let cfg = UdpImpairment {
            loss: 0.3,
            duplicate: 0.2,
            jitter: Duration::from_millis(5),
            ..Default::default()
        };
        let run = || {
            let mut link = ImpairedLink::new(cfg, 42);
            for i in 0..500 {
                link.push(i, t0);
            }
            drain(&mut link, t0 + Duration::from_secs(1))
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn queue_is_bounded() {
        let t0 = Instant::now();
        let cfg = UdpImpairment {
            latency: Duration::from_secs(1),
            ..Default::default()
        };
        let mut link = ImpairedLink::new(cfg, 1);
        for i in 0..(MAX_QUEUED + 10) {
            link.push(i, t0);
        }
        assert_eq!(link.queued(), MAX_QUEUED);
        assert_eq!(link.stats().overflowed, 10);
    }

    #[test]
    fn invalid_probabilities_are_refused() {
        let bad = UdpImpairment {
            loss: 1.5,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("loss"));
        let bad = UdpImpairment {
            duplicate: -0.1,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        assert!(UdpImpairment::default().validate().is_ok());
    }
}
