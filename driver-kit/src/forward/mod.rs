//! The forwarder's routing, shared by every runtime: which tunneled connection an output is about, the
//! numbering of accepted local connections, and the bounds both forwarders keep. The socket work is either
//! [`ready`] (non-blocking sockets on a runtime's own poll loop; runtime-blocking's) or [`tasks`]
//! (detached tasks on any async runtime that implements [`tasks::AsyncNet`]; runtime-smol's).
//!
//! The contract, with no protocol knowledge: bytes in become `Command::Send`, bytes out come from
//! `Output::ConnectionData`, a TCP half-close is `Command::SendEof` / `Output::ConnectionEof`, a reset or
//! close is `Command::CloseConnection` / `Output::ConnectionClosed`, and a gateway answers
//! `Output::ConnectTarget` with `Command::TargetConnected`. What the writer puts on the local socket is
//! credited back with `Command::Delivered` ([`Credit`]): the node stops reading the tube while a local
//! side is a budget behind, so a peer that does not read costs bounded memory (receive-side flow control,
//! `pam_lite_core::tube::delivery`).
//!
//! A writer's queue has no count bound of its own: the node's receive budget bounds its bytes (the node
//! stops handing out data for a connection that is a budget behind), so `dispatch` never waits for a
//! slow local socket. It used to wait (64 chunks), and then one local peer that stopped reading held
//! every output of the node behind it — including the stall close meant to free the others.
//! A close for a stall (`CloseReason::Timeout`: the local side took nothing for the node's stall limit)
//! is [`Route::Abort`]: the socket is shut down at once instead of after the writes it will never take.

pub mod ready;
pub mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pam_lite_core::tube::CloseReason;
use pam_lite_core::{Command, ConnNo, Input, Output};

/// Bytes read from a local socket per `Command::Send`.
pub const READ_CHUNK: usize = 16 * 1024;
/// Bytes written to a local socket before the writer credits them even though its queue is not empty
/// (it always credits when the queue runs empty). Far below the core's `RECEIVE_BUDGET` (2 MiB), so
/// credit never lags enough to pause a local side that keeps up; large enough that a fast transfer costs
/// one extra node input per 256 KiB, not one per chunk.
pub const CREDIT_BATCH: usize = 256 * 1024;
/// How long a gateway waits for its target's TCP handshake.
pub const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The writer's running count of bytes written to its local socket and not yet credited.
#[derive(Debug)]
pub struct Credit {
    conn: ConnNo,
    pending: usize,
}

impl Credit {
    pub fn new(conn: ConnNo) -> Self {
        Self { conn, pending: 0 }
    }

    /// `n` more bytes were written; the credit to send now if a batch is full.
    pub fn wrote(&mut self, n: usize) -> Option<Input> {
        self.pending = self.pending.saturating_add(n);
        (self.pending >= CREDIT_BATCH)
            .then(|| self.take())
            .flatten()
    }

    /// Everything written so far (call when the writer's queue is empty, before waiting).
    pub fn take(&mut self) -> Option<Input> {
        let bytes = std::mem::take(&mut self.pending);
        (bytes > 0).then_some(Input::Command(Command::Delivered {
            conn: self.conn,
            bytes,
        }))
    }
}

/// What the writer of one local connection must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum ToSocket {
    Data(Vec<u8>),
    Eof,
    Close,
}

/// What the forwarder must do with one output.
#[derive(Debug)]
pub enum Route<W> {
    /// Not about a tunneled connection: give it back to the application.
    Back(Output),
    /// Handled (logged, or for a connection that no longer exists).
    Done,
    /// Queue this for the connection's writer (may wait while its queue is full).
    Write(W, ToSocket),
    /// Gateway side: connect a target for this connection.
    Dial(ConnNo),
    /// Closed for a stall (`CloseReason::Timeout`): shut the local socket down now (its writer may be
    /// blocked on it for good), and queue `ToSocket::Close` for the writer.
    Abort(ConnNo, W),
}

/// Whether `out` is a forwarder's (about a tunneled connection) rather than the application's.
pub fn about_a_connection(out: &Output) -> bool {
    matches!(
        out,
        Output::ConnectionOpened { .. }
            | Output::ConnectionData { .. }
            | Output::ConnectionEof { .. }
            | Output::ConnectionClosed { .. }
            | Output::ConnectTarget { .. }
    )
}

/// The live local connections, each with its writer queue `W`.
#[derive(Debug)]
pub struct Routes<W> {
    conns: Mutex<HashMap<ConnNo, W>>,
    next_conn: AtomicU32,
}

impl<W> Default for Routes<W> {
    fn default() -> Self {
        Self {
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU32::new(1),
        }
    }
}

impl<W: Clone> Routes<W> {
    fn conns(&self) -> MutexGuard<'_, HashMap<ConnNo, W>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Route one output of the node (see [`Route`]).
    pub fn route(&self, out: Output) -> Route<W> {
        let write = |conn: ConnNo, what: ToSocket| match self.writer(conn) {
            Some(writer) => Route::Write(writer, what),
            None => {
                tracing::debug!(conn, "output for an unknown connection dropped");
                Route::Done
            }
        };
        match out {
            Output::ConnectionOpened { conn } => {
                tracing::debug!(conn, "connection opened");
                Route::Done
            }
            Output::ConnectionData { conn, data } => write(conn, ToSocket::Data(data)),
            Output::ConnectionEof { conn } => write(conn, ToSocket::Eof),
            Output::ConnectionClosed { conn, reason } => {
                tracing::debug!(conn, ?reason, "connection closed by the tunnel");
                match self.remove(conn) {
                    Some(writer) if reason == CloseReason::Timeout => Route::Abort(conn, writer),
                    Some(writer) => Route::Write(writer, ToSocket::Close),
                    None => Route::Done,
                }
            }
            Output::ConnectTarget { conn } => Route::Dial(conn),
            other => Route::Back(other),
        }
    }

    /// Client side: number a newly accepted local connection (1, 2, 3…) and register its writer. The
    /// caller then sends the returned `Command::OpenConnection`.
    pub fn accepted(&self, writer: W) -> (ConnNo, Input) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.insert(conn, writer);
        (conn, Input::Command(Command::OpenConnection { conn }))
    }

    /// Register `conn`'s writer (gateway side: before the target is connected, so early data is kept).
    pub fn insert(&self, conn: ConnNo, writer: W) {
        self.conns().insert(conn, writer);
    }

    pub fn remove(&self, conn: ConnNo) -> Option<W> {
        self.conns().remove(&conn)
    }

    pub fn writer(&self, conn: ConnNo) -> Option<W> {
        self.conns().get(&conn).cloned()
    }

    /// Connections currently piped.
    pub fn len(&self) -> usize {
        self.conns().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget every connection (the forwarder is dropped), returning their writers to close.
    pub fn drain(&self) -> Vec<W> {
        self.conns().drain().map(|(_, w)| w).collect()
    }

    /// The local side of `conn` failed: forget it and return its writer and the input that tells the
    /// node (`None` if it was already gone: nothing to report twice).
    pub fn lost(&self, conn: ConnNo) -> Option<(W, Input)> {
        let writer = self.remove(conn)?;
        let input = Input::Command(Command::CloseConnection {
            conn,
            reason: CloseReason::ConnectionLost,
        });
        Some((writer, input))
    }
}

/// The answer to a `ConnectTarget`.
pub fn target_connected(conn: ConnNo, ok: bool) -> Input {
    Input::Command(Command::TargetConnected { conn, ok })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_connection_outputs_and_gives_back_the_rest() {
        let routes: Routes<u8> = Routes::default();
        let (conn, open) = routes.accepted(7);
        assert_eq!(conn, 1);
        assert_eq!(open, Input::Command(Command::OpenConnection { conn: 1 }));
        assert!(matches!(
            routes.route(Output::ConnectionData { conn: 1, data: b"x".to_vec() }),
            Route::Write(7, ToSocket::Data(d)) if d == b"x"
        ));
        assert!(matches!(
            routes.route(Output::ConnectionEof { conn: 2 }),
            Route::Done
        ));
        assert!(matches!(
            routes.route(Output::ConnectTarget { conn: 4 }),
            Route::Dial(4)
        ));
        assert!(matches!(
            routes.route(Output::TubeReady),
            Route::Back(Output::TubeReady)
        ));
        assert!(matches!(
            routes.route(Output::ConnectionClosed {
                conn: 1,
                reason: CloseReason::Normal
            }),
            Route::Write(7, ToSocket::Close)
        ));
        let (conn, _) = routes.accepted(8);
        assert!(matches!(
            routes.route(Output::ConnectionClosed {
                conn,
                reason: CloseReason::Timeout
            }),
            Route::Abort(2, 8)
        ));
        assert!(routes.is_empty());
        assert_eq!(routes.accepted(8).0, 3);
        assert!(routes.lost(3).is_some());
        assert!(
            routes.lost(3).is_none(),
            "a lost connection is reported once"
        );
    }
}
