//! How big a run is: the full benchmark (under 15 minutes on 2 cores), `--quick` (a couple of minutes)
//! and `--tiny` (seconds; what the test suite runs to check the harness still works).

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Full,
    Quick,
    Tiny,
}

/// Sizes and bounds of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub mode: Mode,
    /// Launches per system, happy path (item 1).
    pub launches: usize,
    /// Launches per system, cold router (item 2).
    pub cold_launches: usize,
    /// Launches in flight at once in items 1 and 2 (they mostly wait on injected delays).
    pub concurrency: usize,
    /// Bound on one launch.
    pub launch_limit: Duration,
    /// Bound on all launches of one item (launches not started by then are skipped and counted).
    pub item_limit: Duration,
    /// Bytes through one tunneled connection (item 3); the parallel run moves the same total.
    pub throughput_bytes: u64,
    pub parallel_conns: usize,
    /// Bound on one transfer.
    pub transfer_limit: Duration,
    /// Bytes pushed through `pam-lite tunnel` while its memory is watched (item 4).
    pub footprint_bytes: u64,
    /// Process starts timed per system (item 4).
    pub start_samples: usize,
    /// Concurrent launches in one smol process (item 5).
    pub scale_ns: Vec<usize>,
    pub scale_limit: Duration,
}

const MIB: u64 = 1 << 20;

impl Plan {
    pub fn new(mode: Mode) -> Plan {
        let s = Duration::from_secs;
        match mode {
            Mode::Full => Plan {
                mode,
                launches: 20,
                cold_launches: 20,
                concurrency: 6,
                launch_limit: s(30),
                item_limit: s(240),
                throughput_bytes: 256 * MIB,
                parallel_conns: 16,
                transfer_limit: s(90),
                footprint_bytes: 64 * MIB,
                start_samples: 5,
                scale_ns: vec![10, 100, 1000],
                scale_limit: s(120),
            },
            Mode::Quick => Plan {
                mode,
                launches: 4,
                cold_launches: 2,
                concurrency: 6,
                launch_limit: s(30),
                item_limit: s(90),
                throughput_bytes: 32 * MIB,
                parallel_conns: 16,
                transfer_limit: s(45),
                footprint_bytes: 16 * MIB,
                start_samples: 2,
                scale_ns: vec![10, 50],
                scale_limit: s(60),
            },
            Mode::Tiny => Plan {
                mode,
                launches: 1,
                cold_launches: 1,
                concurrency: 4,
                launch_limit: s(30),
                item_limit: s(60),
                throughput_bytes: MIB,
                parallel_conns: 2,
                transfer_limit: s(20),
                footprint_bytes: MIB,
                start_samples: 1,
                scale_ns: vec![2],
                scale_limit: s(40),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_run_meets_the_issue() {
        let p = Plan::new(Mode::Full);
        assert!(p.launches >= 20 && p.cold_launches >= 20);
        assert_eq!(p.throughput_bytes, 256 * MIB);
        assert_eq!(p.parallel_conns, 16);
        assert_eq!(p.scale_ns, [10, 100, 1000]);
    }

    #[test]
    fn tiny_is_tiny() {
        let p = Plan::new(Mode::Tiny);
        assert_eq!(
            (p.launches, p.throughput_bytes, p.scale_ns.as_slice()),
            (1, MIB, &[2][..])
        );
    }
}
