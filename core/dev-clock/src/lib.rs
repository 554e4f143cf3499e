//! The core never reads a clock; its unit tests still need *some* `Instant` to start virtual time from, and
//! `std` offers no other way to make one. This dev-only crate is that single clock read, kept outside
//! `core/src` so the purity rule stays absolute there.

use std::time::Instant;

/// An arbitrary origin for virtual time in tests. Only differences from it matter.
pub fn origin() -> Instant {
    Instant::now()
}
