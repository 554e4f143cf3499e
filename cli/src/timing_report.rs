//! `--timing` / `PAM_CONNECT_TIMING=1` and `--timing-json FILE`: collect the launch's checkpoints into a
//! [`Waterfall`] and report it once (when the tunnel is ready, or when the launch ends).
//!
//! The JSON file is created before the launch starts, so an unwritable path fails fast with exit code 1
//! instead of after a successful launch.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use pam_lite_core::timing::{Checkpoint, Waterfall};

use crate::exit::CliError;

pub struct TimingReport {
    waterfall: Waterfall,
    print: bool,
    json: Option<(PathBuf, std::fs::File)>,
    reported: bool,
}

impl TimingReport {
    /// `start`: the launch's time zero (the instant given to `Client::new`).
    pub fn new(start: Instant, print: bool, json: Option<PathBuf>) -> Result<Self, CliError> {
        let json = match json {
            Some(path) => {
                let file = std::fs::File::create(&path).map_err(|e| {
                    CliError::local(format!("cannot create timing file {}", path.display()), e)
                })?;
                Some((path, file))
            }
            None => None,
        };
        Ok(TimingReport {
            waterfall: Waterfall::new(start),
            print,
            json,
            reported: false,
        })
    }

    pub fn push(&mut self, checkpoint: Checkpoint) {
        self.waterfall.push(checkpoint);
    }

    /// Print and write the waterfall (once; later calls do nothing). `crlf`: the terminal is in raw mode.
    pub fn report(&mut self, crlf: bool) -> Result<(), CliError> {
        if self.reported {
            return Ok(());
        }
        self.reported = true;
        if self.print && !self.waterfall.entries.is_empty() {
            let text = self.waterfall.render();
            let text = if crlf {
                String::from_utf8_lossy(&crate::logging::crlf(text.as_bytes())).into_owned()
            } else {
                text
            };
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
        if let Some((path, mut file)) = self.json.take() {
            let body = serde_json::to_vec_pretty(&self.waterfall.to_json())
                .map_err(|e| CliError::local("cannot encode the timing JSON", e))?;
            file.write_all(&body)
                .and_then(|()| file.write_all(b"\n"))
                .map_err(|e| {
                    CliError::local(format!("cannot write timing file {}", path.display()), e)
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pam_lite_core::timing::{names, PHASE_WEBRTC_TUNNEL};

    #[test]
    fn writes_json_once() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("pam-lite-timing-test-{}.json", std::process::id()));
        let t0 = Instant::now();
        let mut r = TimingReport::new(t0, false, Some(path.clone())).unwrap();
        r.push(Checkpoint::new(PHASE_WEBRTC_TUNNEL, names::ENTER, t0));
        r.report(false).unwrap();
        r.report(false).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["entries"][0]["name"], "enter");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn unwritable_path_is_a_local_error() {
        let e = TimingReport::new(
            Instant::now(),
            true,
            Some(PathBuf::from("/nonexistent-dir/x/t.json")),
        )
        .err()
        .unwrap();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("/nonexistent-dir/x/t.json"));
    }
}
