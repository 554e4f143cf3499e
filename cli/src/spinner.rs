//! A one-line spinner on stderr while the launch waits, naming the phase of the latest checkpoint
//! ("websocket_ready", "gateway_offer_http_done", …), so a slow launch shows *where* it is slow.
//!
//! Only when stderr is a terminal: in a pipe or a log file a spinner is noise. Hand-rolled (a thread and
//! `\r`) because it is twenty lines and the launch must not pull a progress-bar crate for it.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

const FRAMES: &[char] = &['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const TICK: Duration = Duration::from_millis(80);

/// A running spinner (or a disabled one). [`Spinner::stop`] clears its line; so does dropping it.
pub struct Spinner {
    phase: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Spinner {
    /// Start spinning with `label`, unless stderr is not a terminal or `enabled` is false.
    pub fn start(label: &str, enabled: bool) -> Spinner {
        let phase = Arc::new(Mutex::new(label.to_string()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = if enabled && std::io::stderr().is_terminal() {
            let (phase, stop) = (phase.clone(), stop.clone());
            thread::Builder::new()
                .name("pam-lite-spinner".into())
                .spawn(move || {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let text = phase.lock().map(|p| p.clone()).unwrap_or_default();
                        let frame = FRAMES.get(i % FRAMES.len()).copied().unwrap_or('*');
                        let mut err = std::io::stderr().lock();
                        // \x1b[2K: clear the line, so a shorter phase name leaves no tail.
                        let _ = write!(err, "\r\x1b[2K{frame} {text}");
                        let _ = err.flush();
                        drop(err);
                        i = i.wrapping_add(1);
                        thread::sleep(TICK);
                    }
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K");
                    let _ = err.flush();
                })
                .ok()
        } else {
            None
        };
        Spinner {
            phase,
            stop,
            thread,
        }
    }

    /// Show `text` from the next frame on.
    pub fn set(&self, text: &str) {
        if let Ok(mut p) = self.phase.lock() {
            p.clear();
            p.push_str(text);
        }
    }

    /// Stop and clear the line; waits for the spinner thread so later output starts on a clean line.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    #[cfg(test)]
    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_spinner_is_inert() {
        let mut s = Spinner::start("connecting", false);
        assert!(!s.is_running());
        s.set("websocket_ready");
        assert_eq!(s.phase.lock().unwrap().as_str(), "websocket_ready");
        s.stop();
        s.stop();
    }
}
