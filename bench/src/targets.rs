//! The TCP ends of every measurement: an echo server (time to first echoed byte) and a counting sink
//! with its pusher (throughput), all on 127.0.0.1 (or the private namespace's loopback).
//!
//! Throughput protocol (one-way, so a tunnel without TCP half-close support is measured the same way):
//! the pusher sends an 8-byte big-endian length `N` and then `N` bytes; the sink answers one byte per
//! [`ACK_UNIT`] received (and one for a final partial unit). The pusher's reader counts those bytes, so a
//! run cut short by its deadline still reports how much provably arrived.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The sink acknowledges every this many bytes.
pub const ACK_UNIT: u64 = 64 * 1024;
/// Largest transfer one pusher may announce (bounds the sink's loop on a corrupted header).
pub const MAX_TRANSFER: u64 = 64 << 30;
/// A server connection with no traffic for this long is dropped (no thread outlives a benchmark by much).
const IDLE_LIMIT: Duration = Duration::from_secs(120);
const CHUNK: usize = 64 * 1024;

/// A TCP server on a background thread; it stops accepting when dropped.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(bind: SocketAddr, name: &str, handler: fn(TcpStream)) -> io::Result<Server> {
    let listener = TcpListener::bind(bind)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let conn_name = format!("{name}-conn");
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(IDLE_LIMIT));
                let _ = stream.set_write_timeout(Some(IDLE_LIMIT));
                let _ = stream.set_nodelay(true);
                let _ = thread::Builder::new()
                    .name(conn_name.clone())
                    .stack_size(64 * 1024)
                    .spawn(move || handler(stream));
            }
        })?;
    Ok(Server { addr, stop })
}

/// An echo server on `bind` (half-close is passed on).
pub fn echo_server(bind: SocketAddr) -> io::Result<Server> {
    serve(bind, "bench-echo", echo)
}

fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = stream.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if stream.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    return;
                }
            }
        }
    }
}

/// A counting sink on `bind` (see the module docs).
pub fn sink_server(bind: SocketAddr) -> io::Result<Server> {
    serve(bind, "bench-sink", sink)
}

fn sink(mut stream: TcpStream) {
    let mut header = [0u8; 8];
    if stream.read_exact(&mut header).is_err() {
        return;
    }
    let total = u64::from_be_bytes(header);
    if total > MAX_TRANSFER {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    let mut acked = 0u64;
    while got < total {
        let want = usize::try_from((total - got).min(CHUNK as u64)).unwrap_or(CHUNK);
        let n = match stream.read(buf.get_mut(..want).unwrap_or_default()) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        got += n as u64;
        let units = got / ACK_UNIT;
        if units > acked {
            let acks = vec![b'.'; usize::try_from(units - acked).unwrap_or(0)];
            if stream.write_all(&acks).is_err() {
                return;
            }
            acked = units;
        }
    }
    if total % ACK_UNIT != 0 {
        let _ = stream.write_all(b"!");
    }
    // Wait for the pusher to close first (keeps the last acks from racing a reset).
    let _ = stream.read(&mut header);
}

/// Acknowledgements a transfer of `bytes` ends with.
pub fn expected_acks(bytes: u64) -> u64 {
    bytes.div_ceil(ACK_UNIT)
}

/// How one pusher's (or a group of pushers') transfer went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    /// Bytes the sink acknowledged (capped at what was sent).
    pub bytes: u64,
    /// From before the connect to the last acknowledgement.
    pub elapsed: Duration,
    /// When the last acknowledgement came.
    pub ended: Instant,
    pub complete: bool,
}

/// Push `bytes` through `addr` to a sink, within `deadline`. Errors only when nothing could be sent.
pub fn push(addr: SocketAddr, bytes: u64, deadline: Instant) -> io::Result<Transfer> {
    let start = Instant::now();
    let budget = deadline.saturating_duration_since(start);
    let mut stream = TcpStream::connect_timeout(&addr, budget.max(Duration::from_millis(1)))?;
    stream.set_nodelay(true)?;
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack = Arc::new(std::sync::Mutex::new(start));
    let want = expected_acks(bytes);
    let mut reader_stream = stream.try_clone()?;
    reader_stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let (acked_r, last_r) = (acked.clone(), last_ack.clone());
    let reader = thread::Builder::new()
        .name("bench-push-acks".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            while acked_r.load(Ordering::Acquire) < want && Instant::now() < deadline {
                match reader_stream.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        acked_r.fetch_add(n as u64, Ordering::AcqRel);
                        if let Ok(mut t) = last_r.lock() {
                            *t = Instant::now();
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => return,
                }
            }
        })?;
    // The writer: a watchdog shuts the socket at the deadline so a stalled write returns.
    let done = Arc::new(AtomicBool::new(false));
    let (done_w, watch_stream) = (done.clone(), stream.try_clone()?);
    let watchdog = thread::Builder::new()
        .name("bench-push-watchdog".into())
        .spawn(move || {
            while !done_w.load(Ordering::Acquire) {
                if Instant::now() >= deadline {
                    let _ = watch_stream.shutdown(Shutdown::Both);
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        })?;
    let payload = pattern(CHUNK);
    let mut sent = 0u64;
    let write_result = (|| -> io::Result<()> {
        stream.write_all(&bytes.to_be_bytes())?;
        while sent < bytes {
            let n = usize::try_from((bytes - sent).min(CHUNK as u64)).unwrap_or(CHUNK);
            stream.write_all(payload.get(..n).unwrap_or_default())?;
            sent += n as u64;
        }
        Ok(())
    })();
    let _ = reader.join();
    done.store(true, Ordering::Release);
    let _ = watchdog.join();
    let _ = stream.shutdown(Shutdown::Both);
    let acks = acked.load(Ordering::Acquire);
    let complete = acks >= want && write_result.is_ok();
    // The rate counts what provably arrived: bytes acknowledged by the time of the last acknowledgement.
    let ended = last_ack.lock().map(|t| *t).unwrap_or(start);
    if sent == 0 {
        write_result?;
    }
    Ok(Transfer {
        bytes: (acks.saturating_mul(ACK_UNIT)).min(bytes),
        elapsed: ended.saturating_duration_since(start),
        ended,
        complete,
    })
}

/// `conns` pushers at once, `total / conns` bytes each: the aggregate transfer.
pub fn push_parallel(
    addr: SocketAddr,
    total: u64,
    conns: usize,
    deadline: Instant,
) -> io::Result<Transfer> {
    let conns = conns.max(1);
    let each = total / conns as u64;
    let start = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            thread::Builder::new()
                .name(format!("bench-push-{i}"))
                .spawn(move || push(addr, each, deadline))
        })
        .collect::<io::Result<_>>()?;
    let mut bytes = 0;
    let mut complete = true;
    let mut ended = start;
    let mut first_error = None;
    for w in workers {
        match w.join() {
            Ok(Ok(t)) => {
                bytes += t.bytes;
                complete &= t.complete;
                ended = ended.max(t.ended);
            }
            Ok(Err(e)) => {
                complete = false;
                first_error.get_or_insert(e);
            }
            Err(_) => complete = false,
        }
    }
    if bytes == 0 {
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    Ok(Transfer {
        bytes,
        elapsed: ended.saturating_duration_since(start),
        ended,
        complete,
    })
}

/// Connect to `addr`, send one byte, and wait for it to come back; the time the echo arrived.
pub fn first_echo(addr: SocketAddr, deadline: Instant) -> io::Result<(TcpStream, Instant)> {
    let budget = deadline.saturating_duration_since(Instant::now());
    let mut s = TcpStream::connect_timeout(&addr, budget.max(Duration::from_millis(1)))?;
    s.set_nodelay(true)?;
    s.write_all(b"!")?;
    let budget = deadline.saturating_duration_since(Instant::now());
    s.set_read_timeout(Some(budget.max(Duration::from_millis(1))))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b != *b"!" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the echo returned another byte",
        ));
    }
    Ok((s, Instant::now()))
}

/// Non-repeating-looking bytes (the tube does not compress, but a pattern keeps it honest anyway).
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn push_through_plain_tcp_completes() {
        let sink = sink_server(local()).unwrap();
        let bytes = 3 * ACK_UNIT + 5;
        let t = push(sink.addr(), bytes, Instant::now() + Duration::from_secs(20)).unwrap();
        assert!(t.complete, "{t:?}");
        assert_eq!(t.bytes, bytes);
        assert_eq!(expected_acks(bytes), 4);
    }

    #[test]
    fn parallel_push_adds_up() {
        let sink = sink_server(local()).unwrap();
        let t = push_parallel(
            sink.addr(),
            8 * ACK_UNIT,
            4,
            Instant::now() + Duration::from_secs(20),
        )
        .unwrap();
        assert!(t.complete, "{t:?}");
        assert_eq!(t.bytes, 8 * ACK_UNIT);
        assert!(t.elapsed > Duration::ZERO);
    }

    #[test]
    fn a_silent_peer_ends_at_the_deadline() {
        // Accepts and never reads or acknowledges.
        let l = TcpListener::bind(local()).unwrap();
        let addr = l.local_addr().unwrap();
        let _keep = thread::spawn(move || {
            let s = l.accept();
            thread::sleep(Duration::from_secs(3));
            drop(s);
        });
        let start = Instant::now();
        let t = push(addr, 64 << 20, start + Duration::from_millis(500)).unwrap();
        assert!(!t.complete);
        assert_eq!(t.bytes, 0);
        assert!(start.elapsed() < Duration::from_secs(3), "bounded");
    }

    #[test]
    fn echo_round_trip() {
        let echo = echo_server(local()).unwrap();
        let (_s, at) = first_echo(echo.addr(), Instant::now() + Duration::from_secs(5)).unwrap();
        assert!(at.elapsed() < Duration::from_secs(5));
    }
}
