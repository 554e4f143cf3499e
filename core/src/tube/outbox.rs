//! Local bytes waiting for room in the tube, and the pause/resume signal that keeps them bounded.
//!
//! [`Connections`] refuses new data above its high-water mark ([`TubeError::Backpressure`]) so the
//! data-channel queue stays small. A driver cannot react to that refusal for bytes it already handed over,
//! so nothing may be dropped there: the outbox keeps them, in order, and tells the driver to pause reading
//! the local sockets ([`crate::Output::Backpressure`]) until the tube drains below its low-water mark. The
//! only way the outbox grows is a driver that ignores the pause; past [`MAX_OUTBOX`] the offending
//! connection is closed with an error instead of growing memory.

use std::collections::VecDeque;

use super::{CloseReason, Connections, TubeError};
use crate::ConnNo;

/// Hard cap on bytes held for a driver that keeps sending while paused. It must stay well above what a
/// compliant driver can have in flight when the pause reaches it: its whole input queue (the smol driver:
/// 128 inputs × 16 KiB reads = 2 MiB, 16 MiB while it held 1024; the blocking driver's readiness forwarder
/// caps its reads in flight at 4 MiB) plus one read per connection. A 16 MiB cap once closed
/// connections under a 16-connection burst (found by the benchmark).
pub const MAX_OUTBOX: usize = 64 * 1024 * 1024;

/// One held item. EOF and close wait behind the data of their connection: a half-close that overtook
/// held bytes would make the far side drop them.
#[derive(Debug)]
enum Held {
    Data(Vec<u8>),
    Eof,
    Close(CloseReason),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Data(d) => d.len(),
            Held::Eof | Held::Close(_) => 0,
        }
    }
}

/// Bytes accepted from the local side but not yet framed into the tube.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<(ConnNo, Held)>,
    bytes: usize,
    paused: bool,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Send `data` on `conn`, or hold it (in order) while the tube is full. `Err` for a connection that
    /// cannot take data (unknown, closed, EOF sent) or when the hard cap is exceeded; the caller closes it.
    pub fn send(
        &mut self,
        conns: &mut Connections,
        conn: ConnNo,
        data: Vec<u8>,
    ) -> Result<(), TubeError> {
        if self.queue.is_empty() {
            match conns.send(conn, &data) {
                Err(TubeError::Backpressure { .. }) => {}
                other => return other,
            }
        }
        if self.bytes.saturating_add(data.len()) > MAX_OUTBOX {
            self.forget(conn);
            return Err(TubeError::Backpressure {
                pending: conns.pending_bytes() + self.bytes,
            });
        }
        self.bytes += data.len();
        self.queue.push_back((conn, Held::Data(data)));
        Ok(())
    }

    /// Half-close `conn` after everything held for it.
    pub fn send_eof(&mut self, conns: &mut Connections, conn: ConnNo) -> Result<(), TubeError> {
        if self.holds(conn) {
            self.queue.push_back((conn, Held::Eof));
            Ok(())
        } else {
            conns.send_eof(conn)
        }
    }

    /// Close `conn` after everything held for it.
    pub fn close(
        &mut self,
        conns: &mut Connections,
        conn: ConnNo,
        reason: CloseReason,
    ) -> Result<(), TubeError> {
        if self.holds(conn) {
            self.queue.push_back((conn, Held::Close(reason)));
            Ok(())
        } else {
            conns.close(conn, reason)
        }
    }

    fn holds(&self, conn: ConnNo) -> bool {
        self.queue.iter().any(|(c, _)| *c == conn)
    }

    /// Move held bytes into the tube while it has room. Bytes for a connection that closed meanwhile are
    /// dropped (there is nobody left to deliver them to).
    pub fn flush(&mut self, conns: &mut Connections) {
        while let Some((conn, held)) = self.queue.pop_front() {
            let result = match &held {
                Held::Data(data) => conns.send(conn, data),
                Held::Eof => conns.send_eof(conn),
                Held::Close(reason) => conns.close(conn, *reason),
            };
            match result {
                Ok(()) => self.bytes -= held.len(),
                Err(TubeError::Backpressure { .. }) => {
                    self.queue.push_front((conn, held));
                    return;
                }
                Err(e) => {
                    tracing::debug!(conn, error = %e, "held item for a finished connection dropped");
                    self.bytes -= held.len();
                }
            }
        }
    }

    /// Drop everything held for `conn` (it was closed).
    pub fn forget(&mut self, conn: ConnNo) {
        let before = self.bytes;
        self.queue.retain(|(c, _)| *c != conn);
        self.bytes = self.queue.iter().map(|(_, d)| d.len()).sum();
        debug_assert!(self.bytes <= before);
    }

    /// `Some(paused)` when the local sockets must now pause (`true`) or may resume (`false`).
    pub fn pause_change(&mut self, conns: &Connections) -> Option<bool> {
        let paused = !conns.is_writable() || !self.queue.is_empty();
        (paused != self.paused).then(|| {
            self.paused = paused;
            paused
        })
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tube::{Config, Role};

    fn client(high: usize, low: usize) -> Connections {
        let config = Config {
            high_water: high,
            low_water: low,
            ..Config::default()
        };
        let mut c = Connections::with_config(Role::Client, config, pam_lite_dev_clock::origin());
        c.open(1).unwrap_or_else(|e| panic!("{e}"));
        c
    }

    #[test]
    fn nothing_is_dropped_under_backpressure_and_order_is_kept() {
        let mut conns = client(10_000, 2_000);
        let mut out = Outbox::new();
        let mut sent = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![i; 1000];
            sent.extend_from_slice(&chunk);
            out.send(&mut conns, 1, chunk)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(out.pause_change(&conns), Some(true));
        assert!(out.bytes() > 0);
        // Drain the tube like a channel would, flushing the outbox as room appears.
        let mut wire = Vec::new();
        for _ in 0..1000 {
            while let Some(w) = conns.poll_write() {
                wire.extend_from_slice(&w);
            }
            out.flush(&mut conns);
            if out.bytes() == 0 && conns.pending_bytes() == 0 {
                break;
            }
        }
        assert_eq!(out.pause_change(&conns), Some(false));
        // Decode the frames back: every byte, in order.
        let mut dec = crate::tube::FrameDecoder::new();
        dec.push(&wire);
        let mut got = Vec::new();
        while let Some(f) = dec.next() {
            let f = f.unwrap_or_else(|e| panic!("{e}"));
            if f.conn_no == 1 {
                got.extend_from_slice(&f.payload);
            }
        }
        assert_eq!(got, sent);
    }

    #[test]
    fn eof_and_close_wait_behind_held_data() {
        let mut conns = client(10_000, 2_000);
        let mut out = Outbox::new();
        for _ in 0..30 {
            out.send(&mut conns, 1, vec![7; 1000])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(out.bytes() > 0, "the burst must be held");
        out.send_eof(&mut conns, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut wire = Vec::new();
        for _ in 0..1000 {
            while let Some(w) = conns.poll_write() {
                wire.extend_from_slice(&w);
            }
            out.flush(&mut conns);
            if out.bytes() == 0 && conns.pending_bytes() == 0 {
                break;
            }
        }
        let mut dec = crate::tube::FrameDecoder::new();
        dec.push(&wire);
        let mut data = 0usize;
        let mut eof_after = None;
        while let Some(f) = dec.next() {
            let f = f.unwrap_or_else(|e| panic!("{e}"));
            if f.conn_no == 1 {
                data += f.payload.len();
            } else if let Ok(crate::tube::ControlMessage::SendEof { .. }) =
                crate::tube::ControlMessage::decode(&f.payload)
            {
                eof_after = Some(data);
            }
        }
        assert_eq!(eof_after, Some(30_000), "EOF must follow every held byte");
    }

    #[test]
    fn a_driver_ignoring_the_pause_hits_the_cap_and_gets_an_error() {
        let mut conns = client(10_000, 2_000);
        let mut out = Outbox::new();
        let chunk = vec![0u8; 1 << 20];
        let mut failed = false;
        for _ in 0..80 {
            if out.send(&mut conns, 1, chunk.clone()).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "the outbox must refuse to grow past its cap");
        assert!(out.bytes() <= MAX_OUTBOX);
    }
}
