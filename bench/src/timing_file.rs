//! The waterfall of one launch in the CLI's `--timing-json` form (`Waterfall::to_json` in
//! `core/src/timing.rs`, written by `cli/src/timing_report.rs`):
//! `{"entries":[{"phase","name","ms","summary"}…],"total_ms"}`.
//!
//! Why the bench keeps its own copy of the shape: the report stores every system's median waterfall in
//! exactly this form (so one drawing routine serves the report and `draw-timing`), and a file handed to
//! `draw-timing` is outside input: it is read with a size bound, validated (finite, non-negative,
//! bounded offsets; bounded names) and its text is made safe before it reaches an SVG or a terminal.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A timing file larger than this is refused (a real one is a few KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// More entries than this are refused (a launch has a few dozen).
pub const MAX_ENTRIES: usize = 1000;
/// Longest phase or checkpoint name kept (longer ones are refused).
pub const MAX_NAME_CHARS: usize = 120;
/// Largest offset accepted: one day, far beyond any launch limit.
pub const MAX_MS: f64 = 86_400_000.0;

/// One checkpoint: `ms` after the launch start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimingEntry {
    pub phase: String,
    pub name: String,
    pub ms: f64,
    /// Commander's summary lines (`ready_for_prompt`, …) rather than checkpoints.
    #[serde(default)]
    pub summary: bool,
}

/// A launch's waterfall. Fields the CLI may add later are ignored, so newer files still draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimingFile {
    pub entries: Vec<TimingEntry>,
    pub total_ms: f64,
}

/// Why a timing file cannot be drawn.
#[derive(Debug)]
pub enum TimingFileError {
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    TooLarge {
        path: PathBuf,
    },
    NotJson {
        path: PathBuf,
        error: serde_json::Error,
    },
    Invalid {
        path: PathBuf,
        why: String,
    },
}

impl fmt::Display for TimingFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimingFileError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            TimingFileError::TooLarge { path } => write!(
                f,
                "{} is larger than {MAX_FILE_BYTES} bytes: not a --timing-json file",
                path.display()
            ),
            TimingFileError::NotJson { path, error } => write!(
                f,
                "{} is not a --timing-json file ({{\"entries\":[{{\"phase\",\"name\",\"ms\",\"summary\"}}…],\"total_ms\"}}): {error}",
                path.display()
            ),
            TimingFileError::Invalid { path, why } => {
                write!(f, "{} is not a usable --timing-json file: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for TimingFileError {}

impl TimingFile {
    /// Read and validate `path` (at most [`MAX_FILE_BYTES`]).
    pub fn read(path: &Path) -> Result<TimingFile, TimingFileError> {
        let read = |error| TimingFileError::Read {
            path: path.to_path_buf(),
            error,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(TimingFileError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        TimingFile::parse(path, &bytes)
    }

    /// Parse and validate the bytes of a timing file (`path` only names it in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<TimingFile, TimingFileError> {
        let t: TimingFile =
            serde_json::from_slice(bytes).map_err(|error| TimingFileError::NotJson {
                path: path.to_path_buf(),
                error,
            })?;
        t.validate().map_err(|why| TimingFileError::Invalid {
            path: path.to_path_buf(),
            why,
        })?;
        Ok(t)
    }

    /// The bounds every drawn waterfall must keep.
    pub fn validate(&self) -> Result<(), String> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(format!(
                "{} entries (at most {MAX_ENTRIES})",
                self.entries.len()
            ));
        }
        let ok_ms = |v: f64| v.is_finite() && (0.0..=MAX_MS).contains(&v);
        if !ok_ms(self.total_ms) {
            return Err(format!(
                "total_ms {} is not between 0 and {MAX_MS}",
                self.total_ms
            ));
        }
        for (i, e) in self.entries.iter().enumerate() {
            if !ok_ms(e.ms) {
                return Err(format!(
                    "entry {i}: ms {} is not between 0 and {MAX_MS}",
                    e.ms
                ));
            }
            for (what, s) in [("phase", &e.phase), ("name", &e.name)] {
                if s.chars().count() > MAX_NAME_CHARS {
                    return Err(format!(
                        "entry {i}: {what} longer than {MAX_NAME_CHARS} characters"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The checkpoints to draw: summaries left out (they repeat a checkpoint's time under another
    /// name), in time order, names made safe for display.
    pub fn checkpoints(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .entries
            .iter()
            .filter(|e| !e.summary)
            .map(|e| (safe_text(&e.name), e.ms))
            .collect();
        v.sort_by(|a, b| a.1.total_cmp(&b.1));
        v
    }
}

/// Outside text for an SVG or a terminal: control characters (invalid in XML 1.0, and terminal escapes)
/// become `?`, at most [`MAX_NAME_CHARS`] characters.
pub fn safe_text(s: &str) -> String {
    s.chars()
        .take(MAX_NAME_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TimingFile, TimingFileError> {
        TimingFile::parse(Path::new("t.json"), s.as_bytes())
    }

    #[test]
    fn reads_the_cli_format() {
        let t = parse(
            r#"{"entries":[
                {"phase":"pam-launch:webrtc-tunnel","name":"enter","ms":0.5,"summary":false},
                {"phase":"pam-launch:webrtc-tunnel","name":"create_tube_ok","ms":12.25,"summary":false},
                {"phase":"pam-launch:total","name":"ready_for_prompt","ms":12.25,"summary":true},
                {"phase":"pam-launch:webrtc-tunnel","name":"relay_creds_ok","ms":7.0,"summary":false}
            ],"total_ms":12.25}"#,
        )
        .expect("valid");
        assert_eq!(
            t.checkpoints(),
            vec![
                ("enter".to_string(), 0.5),
                ("relay_creds_ok".to_string(), 7.0),
                ("create_tube_ok".to_string(), 12.25)
            ]
        );
    }

    /// What the CLI writes (`Waterfall::to_json`) is what `draw-timing` reads.
    #[test]
    fn reads_what_the_cli_writes() {
        use pam_lite_core::timing::{
            names, Checkpoint, Waterfall, PHASE_TOTAL, PHASE_WEBRTC_TUNNEL,
        };
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let mut w = Waterfall::new(t0);
        w.push(Checkpoint::new(
            PHASE_WEBRTC_TUNNEL,
            names::ENTER,
            t0 + Duration::from_millis(2),
        ));
        w.push(Checkpoint::new(
            PHASE_WEBRTC_TUNNEL,
            names::RELAY_CREDS_OK,
            t0 + Duration::from_millis(385),
        ));
        w.push(Checkpoint::new(
            PHASE_TOTAL,
            names::READY_FOR_PROMPT,
            t0 + Duration::from_millis(900),
        ));
        let bytes = serde_json::to_vec_pretty(&w.to_json()).unwrap();
        let t = TimingFile::parse(Path::new("cli.json"), &bytes).expect("the CLI's own format");
        assert_eq!(t.total_ms, 900.0);
        assert_eq!(
            t.checkpoints(),
            vec![
                ("enter".to_string(), 2.0),
                ("relay_creds_ok".to_string(), 385.0)
            ]
        );
        assert!(t
            .entries
            .iter()
            .any(|e| e.summary && e.name == "ready_for_prompt"));
    }

    #[test]
    fn refuses_malformed_files_with_the_path_and_the_reason() {
        for (body, expect) in [
            ("not json", "is not a --timing-json file"),
            (r#"{"entries":[]}"#, "total_ms"),
            (r#"{"entries":[{"name":"x","ms":1}],"total_ms":1}"#, "phase"),
            (
                r#"{"entries":[{"phase":"p","name":"x","ms":-1}],"total_ms":1}"#,
                "entry 0: ms -1",
            ),
            (r#"{"entries":[],"total_ms":1e300}"#, "total_ms"),
        ] {
            let e = parse(body).expect_err(body).to_string();
            assert!(e.starts_with("t.json"), "{e}");
            assert!(e.contains(expect), "{body}: {e}");
        }
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let body =
            format!(r#"{{"entries":[{{"phase":"p","name":"{long}","ms":1}}],"total_ms":1}}"#);
        assert!(parse(&body)
            .unwrap_err()
            .to_string()
            .contains("longer than"));
    }

    #[test]
    fn refuses_oversized_and_missing_files() {
        let dir = std::env::temp_dir().join(format!("pam-lite-bench-tf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.json");
        std::fs::write(&big, vec![b' '; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            TimingFile::read(&big),
            Err(TimingFileError::TooLarge { .. })
        ));
        let missing = dir.join("missing.json");
        let e = TimingFile::read(&missing).unwrap_err().to_string();
        assert!(
            e.contains("cannot read") && e.contains("missing.json"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn control_characters_never_reach_the_output() {
        assert_eq!(safe_text("a\u{1b}[31mb\n"), "a?[31mb?");
    }
}
