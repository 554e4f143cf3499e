//! The boundary between the core's time (`std::time::Instant`, always handed in by the driver) and the
//! STUN/TURN crates' time (`sans_io_time::Instant`, nanoseconds from an arbitrary zero).
//!
//! The zero is the first moment the relay layer was told about, so both directions are exact and no
//! clock is ever read here.

use std::time::{Duration, Instant};

use turn_client_proto::stun::Instant as ProtoInstant;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    zero: Instant,
}

impl Clock {
    pub(crate) fn new(zero: Instant) -> Self {
        Self { zero }
    }

    /// `now` in the protocol crates' time; moments before the zero (never handed in by a well-behaved
    /// driver) clamp to it.
    pub(crate) fn proto(&self, now: Instant) -> ProtoInstant {
        let nanos = now.saturating_duration_since(self.zero).as_nanos();
        ProtoInstant::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    /// A protocol moment back in the core's time.
    pub(crate) fn core(&self, t: ProtoInstant) -> Instant {
        let nanos = u64::try_from(t.as_nanos()).unwrap_or(0);
        self.zero + Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly() {
        let zero = pam_lite_dev_clock::origin();
        let clock = Clock::new(zero);
        let later = zero + Duration::from_millis(1234) + Duration::from_nanos(5);
        assert_eq!(clock.core(clock.proto(later)), later);
        assert_eq!(clock.proto(zero), ProtoInstant::ZERO);
    }
}
