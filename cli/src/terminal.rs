//! The user's terminal: raw mode that is always undone, keystrokes as bytes, resize polling with
//! Commander's debounce, and the local double Ctrl-C exit.
//!
//! Keystrokes are read as raw bytes from stdin (not as crossterm key events): the core turns bytes into
//! Guacamole key events itself, and bytes are what `--stdin` pipes too, so both modes share one reader.
//! The size is polled rather than taken from SIGWINCH so that nothing else competes for stdin.

use std::io::{IsTerminal, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_core::client::TERMINAL_CONN;

use crate::runner::FlowControl;

/// Two Ctrl-C within this window end the session locally (Commander's `session_input.py`).
pub const DOUBLE_CTRL_C: Duration = Duration::from_millis(400);
/// Resize polling tick and debounce (Commander: poll every 0.3 s, 0.25 s debounce).
pub const RESIZE_POLL: Duration = Duration::from_millis(300);
pub const RESIZE_DEBOUNCE: Duration = Duration::from_millis(250);
/// Fallback size when stdout is not a terminal (`--stdin` into a pipe).
pub const DEFAULT_SIZE: (u16, u16) = (80, 24);
/// One read from stdin at most.
const READ_CHUNK: usize = 16 * 1024;

/// Whether raw mode is on, for the panic hook (which cannot reach the guard).
static RAW_MODE_ON: AtomicBool = AtomicBool::new(false);

/// What the local side of a terminal session produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalEvent {
    /// Bytes typed or piped in.
    Input(Vec<u8>),
    /// Stdin ended (`--stdin` script finished, or the terminal closed).
    InputEnd,
    /// Reading stdin failed.
    InputError(String),
    /// The terminal has a new size (already debounced).
    Resize { cols: u16, rows: u16 },
}

/// Current terminal size (columns, rows), or [`DEFAULT_SIZE`] when there is no terminal.
pub fn size() -> (u16, u16) {
    match crossterm::terminal::size() {
        Ok((c, r)) if c > 0 && r > 0 => (c, r),
        _ => DEFAULT_SIZE,
    }
}

/// Raw mode for as long as this guard lives. Dropping it (any return, `?`, or unwinding) restores the
/// terminal; the panic hook installed by [`install_panic_hook`] restores it before the message prints.
pub struct RawModeGuard {
    _private: (),
}

impl RawModeGuard {
    pub fn enable() -> std::io::Result<RawModeGuard> {
        if !std::io::stdin().is_terminal() {
            return Err(std::io::Error::other(
                "stdin is not a terminal (use --stdin to pipe a script)",
            ));
        }
        crossterm::terminal::enable_raw_mode()?;
        RAW_MODE_ON.store(true, Ordering::SeqCst);
        Ok(RawModeGuard { _private: () })
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Whether the terminal is in raw mode now (log output then needs `\r\n` line ends).
pub fn raw_mode_on() -> bool {
    RAW_MODE_ON.load(Ordering::Relaxed)
}

/// Leave raw mode if it is on (idempotent; safe from a panic hook).
pub fn restore() {
    if RAW_MODE_ON.swap(false, Ordering::SeqCst) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Make panics restore the terminal before printing (a panic in raw mode would otherwise leave the shell
/// unusable, and its message would be staircased).
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

/// Detects the local exit gesture: two Ctrl-C (byte 0x03) within [`DOUBLE_CTRL_C`]. The first one is
/// still sent to the remote side (it interrupts the remote command, as in Commander).
#[derive(Debug, Default)]
pub struct CtrlCDetector {
    last: Option<Instant>,
}

impl CtrlCDetector {
    /// Feed one read; `true` when it completes a double Ctrl-C.
    pub fn feed(&mut self, data: &[u8], now: Instant) -> bool {
        for &b in data {
            if b != 0x03 {
                // Anything typed in between breaks the gesture.
                self.last = None;
                continue;
            }
            match self.last {
                Some(t) if now.saturating_duration_since(t) <= DOUBLE_CTRL_C => return true,
                _ => self.last = Some(now),
            }
        }
        false
    }
}

/// Commander's resize logic: a size must be stable for [`RESIZE_DEBOUNCE`] before it is sent, and only
/// changes are sent.
#[derive(Debug)]
pub struct ResizeDebouncer {
    sent: (u16, u16),
    pending: Option<((u16, u16), Instant)>,
}

impl ResizeDebouncer {
    /// `initial`: the size the session started with (already known to the remote side).
    pub fn new(initial: (u16, u16)) -> Self {
        ResizeDebouncer {
            sent: initial,
            pending: None,
        }
    }

    /// Feed one observation; returns a size to send once it has been stable long enough.
    pub fn observe(&mut self, size: (u16, u16), now: Instant) -> Option<(u16, u16)> {
        match self.pending {
            Some((s, since)) if s == size => {
                if now.saturating_duration_since(since) >= RESIZE_DEBOUNCE {
                    self.pending = None;
                    self.sent = size;
                    return Some(size);
                }
            }
            _ if size == self.sent => self.pending = None,
            _ => self.pending = Some((size, now)),
        }
        None
    }
}

/// Stdin read but not yet handed to the node (a script piped in before the session is ready waits in
/// the process): the stdin reader stops above this, so a large or endless pipe stays in the pipe.
pub const INPUT_HOLD_CAP: usize = 1024 * 1024;

/// What lets the stdin reader take more: the tube has room for the terminal's connection (the driver's
/// flow control, set from the node's `Output::Backpressure`), and less than [`INPUT_HOLD_CAP`] of what
/// it read waits in this process (before the session is ready, all of it does).
#[derive(Clone)]
pub struct InputGate {
    flow: Arc<FlowControl>,
    /// Bytes read from stdin and not yet handed to the node.
    held: Arc<AtomicUsize>,
    /// Set when the session is over: a waiting reader ends.
    stop: Arc<AtomicBool>,
}

impl InputGate {
    pub fn new(flow: Arc<FlowControl>, stop: Arc<AtomicBool>) -> Self {
        Self {
            flow,
            held: Arc::new(AtomicUsize::new(0)),
            stop,
        }
    }

    /// Block while input must wait; `false` once the session is over.
    fn admit(&self) -> bool {
        let alive = || !self.stop.load(Ordering::Relaxed);
        while self.held.load(Ordering::Acquire) >= INPUT_HOLD_CAP {
            if !alive() {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        self.flow.wait(TERMINAL_CONN, alive) && alive()
    }

    /// The reader took `n` bytes.
    fn took(&self, n: usize) {
        self.held.fetch_add(n, Ordering::AcqRel);
    }

    /// `n` bytes read from stdin went to the node.
    pub fn handed_over(&self, n: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// Read stdin on a thread, forwarding [`LocalEvent::Input`] until end of input. Before each read the thread
/// waits at `gate` while no more input may be taken (the tube is full, or too much waits to be handed
/// over): a stdin faster than the session is left in its pipe instead of in this process. The thread is detached: a blocking read cannot be interrupted, and the
/// process exits without waiting for it.
pub fn spawn_stdin_reader(events: Sender<LocalEvent>, gate: InputGate) -> std::io::Result<()> {
    thread::Builder::new()
        .name("pam-lite-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; READ_CHUNK];
            while gate.admit() {
                match stdin.read(&mut buf) {
                    Ok(0) => {
                        let _ = events.send(LocalEvent::InputEnd);
                        return;
                    }
                    Ok(n) => {
                        gate.took(n);
                        let data = buf.get(..n).unwrap_or_default().to_vec();
                        if events.send(LocalEvent::Input(data)).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = events.send(LocalEvent::InputError(e.to_string()));
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

/// Poll the terminal size every [`RESIZE_POLL`] and send debounced changes, until `stop` is set or the
/// receiver is gone.
pub fn spawn_resize_watcher(
    initial: (u16, u16),
    events: Sender<LocalEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    thread::Builder::new()
        .name("pam-lite-resize".into())
        .spawn(move || {
            let mut debounce = ResizeDebouncer::new(initial);
            while !stop.load(Ordering::Relaxed) {
                // Poll a little faster than the debounce so a stable size is sent ~0.25-0.35 s after it
                // settled, like Commander.
                thread::sleep(RESIZE_POLL / 3);
                if let Some((cols, rows)) = debounce.observe(size(), Instant::now()) {
                    if events.send(LocalEvent::Resize { cols, rows }).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// Runs `gate.admit()` on a thread; the receiver gets its answer.
    fn admit_async(gate: &InputGate) -> std::sync::mpsc::Receiver<bool> {
        let (tx, rx) = std::sync::mpsc::channel();
        let gate = gate.clone();
        thread::spawn(move || {
            let _ = tx.send(gate.admit());
        });
        rx
    }

    const WAIT: Duration = Duration::from_millis(200);

    #[test]
    fn the_stdin_gate_holds_at_most_the_cap_until_handed_over() {
        let gate = InputGate::new(Arc::new(FlowControl::new()), Arc::default());
        assert!(gate.admit());
        gate.took(INPUT_HOLD_CAP - 1);
        assert!(gate.admit(), "under the cap");
        gate.took(1);
        let waiting = admit_async(&gate);
        assert!(waiting.recv_timeout(WAIT).is_err(), "at the cap: waits");
        gate.handed_over(INPUT_HOLD_CAP / 2);
        assert_eq!(waiting.recv_timeout(Duration::from_secs(5)), Ok(true));
    }

    #[test]
    fn the_stdin_gate_waits_while_the_terminal_connection_is_paused() {
        let flow = Arc::new(FlowControl::new());
        let gate = InputGate::new(flow.clone(), Arc::default());
        flow.set(TERMINAL_CONN + 1, true);
        assert!(gate.admit(), "another connection's pause does not matter");
        flow.set(TERMINAL_CONN, true);
        let waiting = admit_async(&gate);
        assert!(waiting.recv_timeout(WAIT).is_err(), "paused: waits");
        flow.set(TERMINAL_CONN, false);
        assert_eq!(waiting.recv_timeout(Duration::from_secs(5)), Ok(true));
    }

    #[test]
    fn a_waiting_stdin_reader_ends_with_the_session() {
        let flow = Arc::new(FlowControl::new());
        let stop = Arc::new(AtomicBool::new(false));
        let gate = InputGate::new(flow.clone(), stop.clone());
        flow.set(TERMINAL_CONN, true);
        let paused = admit_async(&gate);
        let full = {
            let g = InputGate::new(Arc::new(FlowControl::new()), stop.clone());
            g.took(INPUT_HOLD_CAP);
            admit_async(&g)
        };
        assert!(paused.recv_timeout(WAIT).is_err());
        stop.store(true, Ordering::Relaxed);
        assert_eq!(paused.recv_timeout(Duration::from_secs(5)), Ok(false));
        assert_eq!(full.recv_timeout(Duration::from_secs(5)), Ok(false));
    }

    #[test]
    fn double_ctrl_c_within_the_window_exits() {
        let t0 = Instant::now();
        let mut d = CtrlCDetector::default();
        assert!(!d.feed(b"\x03", t0));
        assert!(d.feed(b"\x03", ms(t0, 399)));

        let mut d = CtrlCDetector::default();
        assert!(!d.feed(b"\x03", t0));
        assert!(
            !d.feed(b"\x03", ms(t0, 401)),
            "too slow: counts as a new first press"
        );
        assert!(d.feed(b"\x03", ms(t0, 500)));

        let mut d = CtrlCDetector::default();
        assert!(d.feed(b"\x03\x03", t0), "both in one read");

        let mut d = CtrlCDetector::default();
        assert!(!d.feed(b"\x03", t0));
        assert!(!d.feed(b"x", ms(t0, 10)));
        assert!(!d.feed(b"\x03", ms(t0, 20)), "typing in between resets");
    }

    #[test]
    fn resize_is_debounced_and_deduplicated() {
        let t0 = Instant::now();
        let mut r = ResizeDebouncer::new((80, 24));
        assert_eq!(r.observe((80, 24), t0), None, "unchanged");
        assert_eq!(r.observe((100, 30), ms(t0, 0)), None);
        assert_eq!(
            r.observe((100, 30), ms(t0, 200)),
            None,
            "not stable long enough"
        );
        assert_eq!(r.observe((120, 40), ms(t0, 210)), None, "still dragging");
        assert_eq!(r.observe((120, 40), ms(t0, 400)), None);
        assert_eq!(r.observe((120, 40), ms(t0, 460)), Some((120, 40)));
        assert_eq!(r.observe((120, 40), ms(t0, 900)), None, "sent once");
        assert_eq!(r.observe((80, 24), ms(t0, 1000)), None);
        assert_eq!(
            r.observe((120, 40), ms(t0, 1100)),
            None,
            "back to the sent size"
        );
        assert_eq!(r.observe((120, 40), ms(t0, 2000)), None);
    }

    #[test]
    fn restore_is_idempotent_without_raw_mode() {
        restore();
        restore();
        assert!(!RAW_MODE_ON.load(Ordering::SeqCst));
    }
}
