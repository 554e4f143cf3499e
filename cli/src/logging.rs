//! Logs to stderr via `tracing-subscriber`: `-v` levels, `RUST_LOG` overrides. The core and the drivers
//! never log secrets (headers and payloads are logged by size only); nothing here adds any.
//!
//! In raw mode a bare `\n` only moves the cursor down, so the writer turns line ends into `\r\n` while
//! raw mode is on; otherwise log lines would staircase across the user's session.

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::terminal;

/// The default filter for a verbosity count (`-v` repeated). Without `-v` the client's own "launch
/// failed" warning is hidden: the CLI prints the same error as its last line anyway.
pub fn default_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn,pam_lite_core::client=error",
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        if terminal::raw_mode_on() {
            err.write_all(&crlf(buf))?;
        } else {
            err.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
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
    fn verbosity_levels() {
        assert!(default_filter(0).starts_with("warn"));
        assert_eq!(default_filter(1), "info");
        assert_eq!(default_filter(9), "trace");
    }
}
