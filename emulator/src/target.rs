//! What the emulated gateway connects tunneled connections to: a TCP address (tunnel mode) or a local
//! command under a pseudo-terminal (terminal mode).
//!
//! Each open target is a pair of threads: a reader that turns target output into [`TargetEvent`]s for the
//! gateway loop, and a writer that owns the write side, so a slow target never blocks the gateway's loop
//! for long (its queue is bounded; when it is full the loop waits, which is the backpressure a real
//! gateway's socket would apply). The reader pauses while too many of its bytes wait in the loop
//! ([`Credit`]), so a fast target cannot grow the loop's memory either.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use pam_lite_core::ConnNo;
use portable_pty::{native_pty_system, ChildKiller, CommandBuilder, PtySize};

/// Where tunneled connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetConfig {
    /// Tunnel mode: every tunneled connection is a TCP connection to this address.
    Tunnel { forward_to: SocketAddr },
    /// Terminal mode: connection 1 is a terminal session running `command` (argv) under a PTY.
    /// An empty `command` runs `$SHELL`, or `/bin/sh` when `$SHELL` is unset.
    Terminal { command: Vec<String> },
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig::Terminal {
            command: Vec::new(),
        }
    }
}

impl TargetConfig {
    /// The argv actually run in terminal mode.
    pub fn terminal_argv(command: &[String]) -> Vec<String> {
        if command.is_empty() {
            let shell = std::env::var("SHELL").ok().filter(|s| !s.trim().is_empty());
            vec![shell.unwrap_or_else(|| "/bin/sh".to_string())]
        } else {
            command.to_vec()
        }
    }
}

/// How long connecting to a tunnel target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A reader stops reading while this many of its bytes wait in the gateway loop.
pub const MAX_UNDELIVERED: usize = 1 << 20;
/// Chunk size of target reads.
const READ_CHUNK: usize = 16 * 1024;
/// Initial PTY size (the client resizes through Guacamole `size`, which the gateway core handles).
const PTY_SIZE: PtySize = PtySize {
    rows: 24,
    cols: 80,
    pixel_width: 0,
    pixel_height: 0,
};

/// What a target tells the gateway loop.
#[derive(Debug)]
pub enum TargetEvent {
    /// The target is (or could not be) connected; `sink` is where to write to it.
    Connected {
        conn: ConnNo,
        sink: Option<TargetSink>,
    },
    Data {
        conn: ConnNo,
        data: Vec<u8>,
    },
    /// The target finished writing (TCP half-close).
    Eof {
        conn: ConnNo,
    },
    /// The target is gone (socket closed, or the command exited).
    Closed {
        conn: ConnNo,
    },
    /// The writer put `bytes` more of the tunnel's data on the target's socket: receive-side credit for
    /// the gateway node (`Command::Delivered`), so a target that does not read costs bounded memory.
    Delivered {
        conn: ConnNo,
        bytes: usize,
    },
}

/// Bytes written to a target before the writer reports them even though more is queued (it always
/// reports when its queue runs empty): the driver kit's `CREDIT_BATCH`, for the same reason.
const DELIVERED_BATCH: usize = 256 * 1024;

/// Bytes read from a target but not yet handed to the gateway node; the reader waits above the limit.
#[derive(Debug, Default, Clone)]
pub struct Credit(Arc<AtomicUsize>);

impl Credit {
    fn take(&self, n: usize) {
        self.0.fetch_add(n, Ordering::AcqRel);
    }

    /// The loop handed `n` bytes to the node.
    pub fn release(&self, n: usize) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
    }

    fn wait_below(&self, limit: usize, stop: &AtomicBool) {
        while self.0.load(Ordering::Acquire) > limit && !stop.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(2));
        }
    }
}

enum SinkMsg {
    Data(Vec<u8>),
    ShutdownWrite,
    /// A terminal target's new size (cols, rows); TCP targets ignore it.
    Resize(u16, u16),
    Close,
}

/// The write side of an open target.
#[derive(Debug)]
pub struct TargetSink {
    /// Unbounded on purpose: the gateway loop must never block on a target that only reads while it
    /// can write (a single-threaded echo server) — that loop is also what drains the tube and resumes
    /// the target's reader, so blocking here deadlocked at ~10-16 MiB (found by the Keeper interop suite).
    tx: Sender<SinkMsg>,
    credit: Credit,
}

impl std::fmt::Debug for SinkMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkMsg::Data(d) => write!(f, "Data({} bytes)", d.len()),
            SinkMsg::ShutdownWrite => f.write_str("ShutdownWrite"),
            SinkMsg::Resize(c, r) => write!(f, "Resize({c}x{r})"),
            SinkMsg::Close => f.write_str("Close"),
        }
    }
}

impl TargetSink {
    /// Queue bytes for the target (never blocks). `false`: the target is gone.
    pub fn write(&self, data: Vec<u8>) -> bool {
        self.tx.send(SinkMsg::Data(data)).is_ok()
    }

    pub fn shutdown_write(&self) {
        let _ = self.tx.send(SinkMsg::ShutdownWrite);
    }

    /// Resize a terminal target (no effect on a TCP target).
    pub fn resize(&self, cols: u16, rows: u16) {
        let _ = self.tx.send(SinkMsg::Resize(cols, rows));
    }

    /// Close the target (kills a terminal command). Also happens when the sink is dropped.
    pub fn close(&self) {
        let _ = self.tx.send(SinkMsg::Close);
    }

    /// The reader's credit counter, released by the loop as it delivers bytes.
    pub fn credit(&self) -> &Credit {
        &self.credit
    }
}

/// Open the target of `conn` in the background; the outcome arrives as [`TargetEvent::Connected`], then
/// its output as more events, each converted into the caller's event type `E`.
///
/// The thread that connects is the one that then reads, so `Connected` is always on the channel before
/// the first `Data`: the gateway loop drops output of connections it has no sink for, and a target that
/// talks first (a server pushing on accept) once lost its first 128 KiB to a reader thread that ran ahead
/// of `Connected` under load.
pub fn open<E>(config: &TargetConfig, conn: ConnNo, events: Sender<E>, stop: Arc<AtomicBool>)
where
    E: From<TargetEvent> + Send + 'static,
{
    let config = config.clone();
    let spawned = thread::Builder::new()
        .name(format!("emu-target-{conn}"))
        .spawn(move || {
            let result = match &config {
                TargetConfig::Tunnel { forward_to } => open_tcp(*forward_to, conn, &events, &stop),
                TargetConfig::Terminal { command } => open_pty(command, conn, &events, &stop),
            };
            match result {
                Ok((sink, read)) => {
                    let sink = Some(sink);
                    if events
                        .send(TargetEvent::Connected { conn, sink }.into())
                        .is_ok()
                    {
                        read();
                    }
                }
                Err(e) => {
                    tracing::warn!(conn, error = %e, "gateway could not open its target");
                    let _ = events.send(TargetEvent::Connected { conn, sink: None }.into());
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(conn, error = %e, "could not start a target thread");
    }
}

/// An open target's read side, run by [`open`]'s thread once `Connected` is sent.
type ReadSide = Box<dyn FnOnce() + Send>;

fn open_tcp<E: From<TargetEvent> + Send + 'static>(
    addr: SocketAddr,
    conn: ConnNo,
    events: &Sender<E>,
    stop: &Arc<AtomicBool>,
) -> io::Result<(TargetSink, ReadSide)> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    let _ = stream.set_nodelay(true);
    tracing::debug!(conn, %addr, "tunnel target connected");
    let reader = stream.try_clone()?;
    let credit = Credit::default();
    let (tx, rx) = mpsc::channel::<SinkMsg>();
    let read: ReadSide = {
        let events = events.clone();
        let credit = credit.clone();
        let stop = stop.clone();
        Box::new(move || read_loop(reader, conn, &events, &credit, &stop, true))
    };
    let events = events.clone();
    thread::Builder::new()
        .name(format!("emu-tcp-write-{conn}"))
        .spawn(move || {
            let mut stream = stream;
            let mut written = 0usize;
            loop {
                let msg = match rx.try_recv() {
                    Ok(msg) => msg,
                    Err(mpsc::TryRecvError::Empty) => {
                        // Queue drained: report everything written before waiting for more.
                        if written > 0 {
                            let bytes = std::mem::take(&mut written);
                            let _ = events.send(TargetEvent::Delivered { conn, bytes }.into());
                        }
                        match rx.recv() {
                            Ok(msg) => msg,
                            Err(_) => break,
                        }
                    }
                    Err(mpsc::TryRecvError::Disconnected) => break,
                };
                match msg {
                    SinkMsg::Data(d) => {
                        if stream.write_all(&d).is_err() {
                            break;
                        }
                        written += d.len();
                        if written >= DELIVERED_BATCH {
                            let bytes = std::mem::take(&mut written);
                            let _ = events.send(TargetEvent::Delivered { conn, bytes }.into());
                        }
                    }
                    SinkMsg::ShutdownWrite => {
                        let _ = stream.shutdown(Shutdown::Write);
                    }
                    SinkMsg::Resize(..) => {}
                    SinkMsg::Close => break,
                }
            }
            // Sink dropped or closed: the reader sees the shutdown and ends too.
            let _ = stream.shutdown(Shutdown::Both);
        })?;
    Ok((TargetSink { tx, credit }, read))
}

/// Read a target until EOF; `half_close` says whether EOF is a half-close (TCP) or the end (PTY).
fn read_loop<E: From<TargetEvent>>(
    mut reader: impl Read,
    conn: ConnNo,
    events: &Sender<E>,
    credit: &Credit,
    stop: &AtomicBool,
    half_close: bool,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        credit.wait_below(MAX_UNDELIVERED, stop);
        if stop.load(Ordering::Acquire) {
            return;
        }
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let data = buf.get(..n).unwrap_or_default().to_vec();
                credit.take(n);
                if events
                    .send(TargetEvent::Data { conn, data }.into())
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A PTY master reports EIO once the command has exited: that is its EOF.
            Err(_) => break,
        }
    }
    if half_close {
        let _ = events.send(TargetEvent::Eof { conn }.into());
    } else {
        let _ = events.send(TargetEvent::Closed { conn }.into());
    }
}

fn pty_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("pseudo-terminal: {e}"))
}

fn open_pty<E: From<TargetEvent> + Send + 'static>(
    command: &[String],
    conn: ConnNo,
    events: &Sender<E>,
    stop: &Arc<AtomicBool>,
) -> io::Result<(TargetSink, ReadSide)> {
    let argv = TargetConfig::terminal_argv(command);
    let Some((program, args)) = argv.split_first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty terminal command",
        ));
    };
    let pair = native_pty_system().openpty(PTY_SIZE).map_err(pty_error)?;
    let mut cmd = CommandBuilder::new(program);
    cmd.args(args);
    cmd.env("TERM", "xterm-256color");
    if let Ok(home) = std::env::var("HOME") {
        cmd.cwd(home);
    }
    let mut child = pair.slave.spawn_command(cmd).map_err(pty_error)?;
    // The parent must not keep the slave open, or the master never reports EOF when the command exits.
    drop(pair.slave);
    tracing::info!(conn, program = %program, "terminal target started under a PTY");
    let reader = pair.master.try_clone_reader().map_err(pty_error)?;
    let mut writer = pair.master.take_writer().map_err(pty_error)?;
    let mut killer: Box<dyn ChildKiller + Send + Sync> = child.clone_killer();
    let credit = Credit::default();
    let (tx, rx) = mpsc::channel::<SinkMsg>();
    let read: ReadSide = {
        let events = events.clone();
        let credit = credit.clone();
        let stop = stop.clone();
        Box::new(move || {
            read_loop(reader, conn, &events, &credit, &stop, false);
            match child.wait() {
                Ok(status) => {
                    tracing::info!(conn, code = status.exit_code(), "terminal command exited")
                }
                Err(e) => {
                    tracing::debug!(conn, error = %e, "could not reap the terminal command")
                }
            }
        })
    };
    let events = events.clone();
    thread::Builder::new()
        .name(format!("emu-pty-write-{conn}"))
        .spawn(move || {
            // The master must live as long as the session: dropping it hangs up the terminal.
            let master = pair.master;
            for msg in rx {
                match msg {
                    SinkMsg::Data(d) => {
                        if writer.write_all(&d).and_then(|_| writer.flush()).is_err() {
                            break;
                        }
                        // Receive-side credit, as for TCP targets (typed input is small: per write).
                        let bytes = d.len();
                        let _ = events.send(TargetEvent::Delivered { conn, bytes }.into());
                    }
                    // A terminal has no half-close; the session ends when the command exits or is closed.
                    SinkMsg::ShutdownWrite => {}
                    SinkMsg::Resize(cols, rows) => {
                        let size = portable_pty::PtySize {
                            rows,
                            cols,
                            pixel_width: 0,
                            pixel_height: 0,
                        };
                        if let Err(e) = master.resize(size) {
                            tracing::debug!(conn, error = %e, "PTY resize failed");
                        }
                    }
                    SinkMsg::Close => break,
                }
            }
            let _ = killer.kill();
            drop(writer);
            drop(master);
        })?;
    Ok((TargetSink { tx, credit }, read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Instant;

    fn next(rx: &mpsc::Receiver<TargetEvent>) -> TargetEvent {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("target event")
    }

    #[test]
    fn tcp_target_forwards_both_ways_and_half_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read");
            s.write_all(&got).expect("write");
            // Dropping closes: the gateway sees EOF.
        });
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        open(&TargetConfig::Tunnel { forward_to: addr }, 5, tx, stop);
        let TargetEvent::Connected {
            conn: 5,
            sink: Some(sink),
        } = next(&rx)
        else {
            panic!("not connected")
        };
        assert!(sink.write(b"hello ".to_vec()));
        assert!(sink.write(b"world".to_vec()));
        sink.shutdown_write();
        let mut echoed = Vec::new();
        loop {
            match next(&rx) {
                TargetEvent::Data { conn: 5, data } => {
                    sink.credit().release(data.len());
                    echoed.extend(data)
                }
                TargetEvent::Eof { conn: 5 } => break,
                // What the target wrote reaches the gateway as delivery reports, in any interleaving.
                TargetEvent::Delivered { conn: 5, .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(echoed, b"hello world");
        server.join().expect("server");
    }

    /// A server that pushes on accept (the slow-reader test's target) must not lose its first bytes: every
    /// `Data` comes after `Connected`, and all of it arrives. Repeated, because the old order was a race.
    #[test]
    fn a_target_that_talks_first_loses_nothing() {
        const PUSH: usize = 256 * 1024;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = thread::spawn(move || {
            for _ in 0..20 {
                let (mut s, _) = listener.accept().expect("accept");
                s.write_all(&vec![7u8; PUSH]).expect("push");
            }
        });
        for conn in 1..=20 {
            let (tx, rx) = mpsc::channel();
            open(
                &TargetConfig::Tunnel { forward_to: addr },
                conn,
                tx,
                Arc::new(AtomicBool::new(false)),
            );
            let TargetEvent::Connected {
                sink: Some(sink), ..
            } = next(&rx)
            else {
                panic!("connection {conn}: the first event is not Connected")
            };
            let mut got = 0;
            loop {
                match next(&rx) {
                    TargetEvent::Data { data, .. } => {
                        sink.credit().release(data.len());
                        got += data.len();
                    }
                    TargetEvent::Eof { .. } => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(got, PUSH, "connection {conn}");
        }
        server.join().expect("server");
    }

    #[test]
    fn refused_tcp_target_reports_no_sink() {
        // Bind then drop: nothing listens on this port any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("addr");
        let (tx, rx) = mpsc::channel();
        open(
            &TargetConfig::Tunnel { forward_to: addr },
            2,
            tx,
            Arc::new(AtomicBool::new(false)),
        );
        assert!(matches!(
            next(&rx),
            TargetEvent::Connected {
                conn: 2,
                sink: None
            }
        ));
    }

    #[test]
    fn terminal_target_runs_a_command_under_a_pty() {
        let (tx, rx) = mpsc::channel();
        let cmd = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "read x; echo got:$x".to_string(),
        ];
        open(
            &TargetConfig::Terminal { command: cmd },
            1,
            tx,
            Arc::new(AtomicBool::new(false)),
        );
        let TargetEvent::Connected {
            conn: 1,
            sink: Some(sink),
        } = next(&rx)
        else {
            panic!("no pty")
        };
        assert!(sink.write(b"abc\r".to_vec()));
        let mut out = Vec::new();
        let mut delivered = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < deadline,
                "no output: {:?}",
                String::from_utf8_lossy(&out)
            );
            match next(&rx) {
                TargetEvent::Data { data, .. } => out.extend(data),
                TargetEvent::Delivered { conn: 1, bytes } => delivered += bytes,
                TargetEvent::Closed { conn: 1 } => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("got:abc"), "{text:?}");
        // The credit may come after the command's exit (two threads).
        while delivered < 4 {
            match next(&rx) {
                TargetEvent::Delivered { conn: 1, bytes } => delivered += bytes,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delivered, 4, "the PTY's writer credits what it wrote");
    }

    #[test]
    fn closing_a_terminal_kills_the_command() {
        let (tx, rx) = mpsc::channel();
        let cmd = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "sleep 60".to_string(),
        ];
        open(
            &TargetConfig::Terminal { command: cmd },
            1,
            tx,
            Arc::new(AtomicBool::new(false)),
        );
        let TargetEvent::Connected {
            sink: Some(sink), ..
        } = next(&rx)
        else {
            panic!("no pty")
        };
        let t0 = Instant::now();
        sink.close();
        loop {
            if let TargetEvent::Closed { .. } = next(&rx) {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn default_terminal_command_is_a_shell() {
        let argv = TargetConfig::terminal_argv(&[]);
        assert_eq!(argv.len(), 1);
        assert!(!argv[0].is_empty());
        assert_eq!(
            TargetConfig::terminal_argv(&["top".into()]),
            vec!["top".to_string()]
        );
    }
}
