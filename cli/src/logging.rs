//! Logs to stderr via `tracing-subscriber`: `-v` levels, `RUST_LOG` overrides. The core and the drivers
//! never log secrets (headers and payloads are logged by size only); nothing here adds any.
//!
//! In raw mode a bare `\n` only moves the cursor down, so the writer turns line ends into `\r\n` while
//! raw mode is on; otherwise log lines would staircase across the user's session.

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::terminal;

/// The default filter for a verbosity count (`-v` repeated). Without `-v` only pam-lite's own warnings
/// show (the CLI, the core, the drivers); a library's warning (str0m, rustls, tungstenite…) is about its
/// internals and would end a successful run with noise on stderr, so libraries show errors only. The
/// client's own "launch failed" warning is hidden too: the CLI prints the same error as its last line.
pub fn default_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "error,pam_lite=warn,pam_lite_core=warn,pam_lite_core::client=error,pam_lite_blocking=warn,pam_lite_smol=warn,pam_lite_emulator=warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    }
}

/// Install the global subscriber. `RUST_LOG`, when set and valid, wins over `verbose`.
pub fn init(verbose: u8) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter(verbose)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(StderrRawAware)
        .with_target(verbose >= 2)
        // No colours: the writer escapes every control character (outside text in a field must not
        // reach the terminal raw), which would escape the formatter's own colour codes too.
        .with_ansi(false)
        .try_init();
}

/// stderr, with `\n` → `\r\n` while the terminal is raw.
#[derive(Clone, Copy)]
struct StderrRawAware;

impl<'a> MakeWriter<'a> for StderrRawAware {
    type Writer = RawAwareWriter;

    fn make_writer(&'a self) -> Self::Writer {
        RawAwareWriter
    }
}

struct RawAwareWriter;

impl Write for RawAwareWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        let line = one_line(buf);
        if terminal::raw_mode_on() {
            err.write_all(&crlf(&line))?;
        } else {
            err.write_all(&line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// One formatted event as one safe line: the formatter writes each event in one call, ending in `\n`;
/// everything before that end goes through the sanitiser (a field holding a router's text with an
/// escape sequence or a fake newline is shown escaped), capped generously for trace-level dumps.
pub fn one_line(buf: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(buf);
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let mut out = pam_lite_core::text::sanitize_max(body, 16 * 1024).into_bytes();
    out.push(b'\n');
    out
}

/// `\n` → `\r\n` (a `\r\n` already there stays as it is).
pub fn crlf(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() + 8);
    let mut prev = 0u8;
    for &b in buf {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_converts_bare_newlines_only() {
        assert_eq!(crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
        assert_eq!(crlf(b""), b"");
    }

    #[test]
    fn log_lines_never_carry_control_characters() {
        let out = one_line(b"WARN ignoring: \x1b[2J\rfake\npam-lite: ok\n");
        assert_eq!(out, b"WARN ignoring: \\u{1b}[2J\\rfake\\npam-lite: ok\n");
    }

    /// Issue 13: a successful run ended with a library's warning on stderr without `-v`.
    #[test]
    fn library_warnings_are_hidden_by_default_ours_are_not() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let cap = Capture::default();
        let writer = cap.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(default_filter(0)))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(target: "str0m::ice_", "library noise");
            tracing::warn!(target: "rustls::conn", "library noise");
            tracing::warn!(target: "pam_lite_core::client", "launch failed (printed by the CLI)");
            tracing::warn!(target: "pam_lite_blocking::tls", "TLS verification DISABLED");
            tracing::warn!(target: "pam_lite::launch", "ticket warning");
            tracing::error!(target: "str0m", "library error");
        });
        let text = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("library noise"), "{text}");
        assert!(!text.contains("launch failed"), "{text}");
        assert!(text.contains("TLS verification DISABLED"), "{text}");
        assert!(text.contains("ticket warning"), "{text}");
        assert!(text.contains("library error"), "{text}");
    }

    #[test]
    fn verbosity_levels() {
        assert!(default_filter(0).starts_with("error,pam_lite=warn"));
        assert_eq!(default_filter(1), "info");
        assert_eq!(default_filter(9), "trace");
    }
}
