//! The core never reads a clock; its tests still need *some* `Instant` to start virtual time from, and
//! `std` offers no other way to make one. This dev-only crate is that single clock read, kept outside
//! `core/src` so the purity rule stays absolute there.

use std::sync::OnceLock;
use std::time::Instant;

/// An arbitrary origin for virtual time in tests, the same for the whole process: only differences from
/// it matter, and a shared origin keeps runs in one process comparable to the microsecond (str0m converts
/// some instants through a process-wide epoch of its own, so the sub-millisecond phase of the origin can
/// matter).
pub fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}
