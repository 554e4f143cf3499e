//! Child processes the benchmark starts (the `pam-lite` binary, Python peers, itself inside the private
//! network namespace): killed on drop, stderr kept (the tail) for failure messages, memory read from
//! `/proc/<pid>/status`.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How much of a child's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;

/// Memory of a process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    /// Resident set size now.
    pub rss_kib: u64,
    /// Peak resident set size (high-water mark).
    pub hwm_kib: u64,
}

/// Parse the `VmRSS` and `VmHWM` lines of a `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// The memory of process `pid` (`self` for this one).
pub fn memory(pid: &str) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&text)
}

/// User + system CPU time of process `pid` (all its threads) from `/proc/<pid>/stat`. The kernel reports
/// it in USER_HZ ticks, which Linux fixes at 100 per second for this interface.
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&text)
}

/// Parse utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line.
pub fn parse_cpu(stat: &str) -> Option<Duration> {
    // The command name (field 2) may contain spaces; everything after its closing parenthesis is fixed.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// A child process, killed (by its own pid) and reaped on drop.
pub struct Proc {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<Receiver<String>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Closed by the stderr reader at the end of the child's stderr (so [`Proc::finish`] can wait for the
    /// last of it: the child may exit before the reader took its final bytes).
    stderr_done: Option<Receiver<()>>,
    pub spawned_at: Instant,
}

impl Proc {
    /// Start `cmd` with stdin and stdout piped (stdout arrives as lines, see [`Proc::line`]) and stderr
    /// collected.
    pub fn spawn(mut cmd: Command) -> Result<Proc, String> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let program = format!("{:?}", cmd.get_program());
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(|out| {
            let (tx, rx) = mpsc::channel();
            let _ = thread::Builder::new()
                .name("bench-child-stdout".into())
                .spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { return };
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                });
            rx
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut stderr_done = None;
        if let Some(mut err) = child.stderr.take() {
            let tail = stderr.clone();
            let (done, done_rx) = mpsc::channel::<()>();
            stderr_done = Some(done_rx);
            let _ = thread::Builder::new()
                .name("bench-child-stderr".into())
                .spawn(move || {
                    let _done = done; // dropped at the end of stderr: wakes `finish`
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = err.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        if let Ok(mut t) = tail.lock() {
                            t.extend_from_slice(buf.get(..n).unwrap_or_default());
                            let excess = t.len().saturating_sub(STDERR_TAIL);
                            t.drain(..excess);
                        }
                    }
                });
        }
        Ok(Proc {
            child,
            stdin,
            stdout,
            stderr,
            stderr_done,
            spawned_at,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn memory(&self) -> Option<Memory> {
        memory(&self.pid().to_string())
    }

    /// The next stdout line, waiting until `deadline`; `None` on timeout or end of output.
    pub fn line(&mut self, deadline: Instant) -> Option<String> {
        let rx = self.stdout.as_ref()?;
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    }

    /// Take the stdout line receiver (to merge several children's output into one loop).
    pub fn take_stdout(&mut self) -> Option<Receiver<String>> {
        self.stdout.take()
    }

    /// Write one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<(), String> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("write to child: {e}"))
    }

    /// Close the child's stdin (EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The last few KiB of stderr, for an error message.
    pub fn stderr_tail(&self) -> String {
        self.stderr
            .lock()
            .map(|t| String::from_utf8_lossy(&t).trim().to_string())
            .unwrap_or_default()
    }

    /// Wait for the child to exit until `deadline`; kill it if it has not. Returns its exit code.
    pub fn finish(&mut self, deadline: Instant) -> Option<i32> {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    // The rest of its stderr (bounded: a grandchild may still hold the pipe open).
                    if let Some(done) = self.stderr_done.take() {
                        let wait = deadline
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_secs(1));
                        let _ = done.recv_timeout(wait);
                    }
                    return status.code();
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    return self.child.wait().ok().and_then(|s| s.code());
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A private directory for files that hold secrets (tickets); removed on drop.
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    pub fn new(label: &str) -> Result<PrivateDir, String> {
        let dir = std::env::temp_dir().join(format!(
            "pam-lite-bench-{label}-{}-{}",
            std::process::id(),
            crate::launch::seed()[0]
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(PrivateDir(dir))
    }

    #[cfg(test)]
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Write `contents` to `name` inside, readable by the owner only.
    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf, String> {
        use std::io::Write;
        let path = self.0.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options
            .open(&path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed() {
        let text =
            "Name:\tpam-lite\nVmPeak:\t  9000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss_kib: 4096,
                hwm_kib: 5120
            })
        );
        assert_eq!(parse_status("VmRSS: lots"), None);
        assert!(memory("self").is_some_and(|m| m.hwm_kib >= m.rss_kib && m.rss_kib > 0));
    }

    #[test]
    fn cpu_fields_are_parsed() {
        let stat = "4242 (pam lite) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 3 0 0";
        assert_eq!(parse_cpu(stat), Some(Duration::from_millis(3250)));
        assert_eq!(parse_cpu("garbage"), None);
        assert!(cpu_time("self").is_some());
    }

    #[test]
    fn a_child_is_read_and_reaped() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello; echo oops >&2; read x; echo got $x"]);
        let mut p = Proc::spawn(cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(p.line(deadline).as_deref(), Some("hello"));
        p.send_line("42").unwrap();
        assert_eq!(p.line(deadline).as_deref(), Some("got 42"));
        assert_eq!(p.finish(deadline), Some(0));
        assert!(p.stderr_tail().contains("oops"));
    }

    #[test]
    fn private_files_are_private_and_removed() {
        let dir = PrivateDir::new("test").unwrap();
        let path = dir.write("t.json", "{}").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let root = dir.path().to_path_buf();
        drop(dir);
        assert!(!root.exists());
    }
}
