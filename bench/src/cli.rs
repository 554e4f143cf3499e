//! The `pam-lite` binary as a process: time to ready from process start, memory while holding a tunnel,
//! and process start → first router request.
//!
//! The CLI reads the emulator's ticket from a file exactly as a user's `pam-lite tunnel --ticket` would, so
//! these rows go through the CLI's own ticket → `ClientConfig` path (the in-process rows build the same
//! configuration themselves).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::launch::Runtime;
use crate::procs::{Memory, Proc};

/// Environment variables that would change a launch's schedule or target (Commander's knobs, logging);
/// removed from every child so each row runs exactly what its name says.
const SCRUBBED_ENV: &[&str] = &[
    "KROUTER_URL",
    "PAM_CONNECT_TIMING",
    "VERIFY_SSL",
    "RUST_LOG",
    "SMOL_THREADS",
];

/// Where the `pam-lite` binary is: `explicit`, else next to this executable (`target/<profile>/`);
/// with `build`, a release binary is built first when missing (`cargo build --release -p pam-lite`).
pub fn locate(explicit: Option<&Path>, build: bool) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--pam-lite {}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe
        .parent()
        .ok_or("the benchmark executable has no directory")?;
    let candidate = dir.join("pam-lite");
    if candidate.is_file() && !build {
        return Ok(candidate);
    }
    if !build {
        return Err(format!(
            "no pam-lite binary at {} (run `cargo build --release -p pam-lite`, or pass --pam-lite PATH)",
            candidate.display()
        ));
    }
    // Build with the benchmark's own profile, into the benchmark's own directory.
    let release = dir.file_name().is_some_and(|n| n == "release");
    eprintln!(
        "pam-lite-bench: building the pam-lite binary (cargo build{} -p pam-lite)",
        if release { " --release" } else { "" }
    );
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(["build", "-q", "-p", "pam-lite", "--bin", "pam-lite"]);
    if release {
        cargo.arg("--release");
    }
    let status = cargo
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p pam-lite failed ({status})"));
    }
    let built = candidate;
    if built.is_file() {
        Ok(built)
    } else {
        Err(format!("cargo built no {}", built.display()))
    }
}

/// The workspace this benchmark was built from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A free port on 127.0.0.1 (bound and released; the child binds it a moment later).
pub fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

/// `pam-lite tunnel --ticket TICKET --listen LISTEN --profile PROFILE --runtime RUNTIME`, environment
/// scrubbed; `extra_env` on top.
pub fn tunnel_command(
    bin: &Path,
    ticket: &Path,
    listen: SocketAddr,
    profile: &str,
    runtime: Runtime,
    extra_env: &[(&str, String)],
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("tunnel")
        .arg("--ticket")
        .arg(ticket)
        .arg("--listen")
        .arg(listen.to_string())
        .args(["--profile", profile, "--runtime", runtime.name()]);
    for k in SCRUBBED_ENV
        .iter()
        .chain(pam_lite_core::profile::env::ALL.iter())
    {
        cmd.env_remove(k);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

/// Connect to `addr`, retrying while nothing listens yet, until `deadline`.
pub fn connect_retry(addr: SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Process start → first byte echoed through a tunnel of the `pam-lite` process.
pub fn measure_launch(
    bin: &Path,
    ticket: &Path,
    profile: &str,
    runtime: Runtime,
    limit: Duration,
) -> Result<Duration, String> {
    let listen = free_port().map_err(|e| format!("free port: {e}"))?;
    let mut p = Proc::spawn(tunnel_command(bin, ticket, listen, profile, runtime, &[]))?;
    let deadline = p.spawned_at + limit;
    let echoed = (|| -> io::Result<Instant> {
        let mut s = connect_retry(listen, deadline)?;
        s.set_nodelay(true)?;
        s.write_all(b"!")?;
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        Ok(Instant::now())
    })();
    let result = match echoed {
        Ok(at) => Ok(at.saturating_duration_since(p.spawned_at)),
        Err(e) => Err(format!(
            "no echo within {limit:?}: {e}; stderr: {}",
            p.stderr_tail()
        )),
    };
    p.finish(Instant::now());
    result
}

/// A listener that stands in for the router and records when the first request bytes arrive. It never
/// answers: the client is killed once its first request has been seen.
pub struct RouterProbe {
    pub url: String,
    addr: SocketAddr,
    first: mpsc::Receiver<Instant>,
    stop: Arc<AtomicBool>,
}

impl RouterProbe {
    pub fn start() -> io::Result<RouterProbe> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let (tx, first) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::Builder::new()
            .name("bench-router-probe".into())
            .spawn(move || {
                // Every connection gets a reader; the first byte of any of them is the first request.
                for stream in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let tx = tx.clone();
                    let _ = thread::Builder::new().stack_size(64 * 1024).spawn(move || {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                        let mut b = [0u8; 1];
                        if matches!(stream.read(&mut b), Ok(1)) {
                            let _ = tx.send(Instant::now());
                        }
                        let mut rest = [0u8; 4096];
                        while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
                    });
                }
            })?;
        Ok(RouterProbe {
            url: format!("http://{addr}"),
            addr,
            first,
            stop,
        })
    }

    /// When the first request byte arrived, waiting until `deadline`.
    pub fn first_request(&self, deadline: Instant) -> Option<Instant> {
        self.first
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    }
}

impl Drop for RouterProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Process start → first router request, and the process's memory at that moment.
#[derive(Debug, Clone, Copy)]
pub struct StartSample {
    pub to_first_request: Duration,
    pub memory: Option<Memory>,
}

/// Start `cmd` (which must send its first router request to `probe.url`) and time its first request.
pub fn measure_start(
    cmd: Command,
    probe: &RouterProbe,
    limit: Duration,
) -> Result<StartSample, String> {
    let mut p = Proc::spawn(cmd)?;
    let deadline = p.spawned_at + limit;
    let result = match probe.first_request(deadline) {
        Some(at) => Ok(StartSample {
            to_first_request: at.saturating_duration_since(p.spawned_at),
            memory: p.memory(),
        }),
        None => Err(format!(
            "no router request within {limit:?}; stderr: {}",
            p.stderr_tail()
        )),
    };
    p.finish(Instant::now());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_times_the_first_request() {
        let probe = RouterProbe::start().unwrap();
        let addr: SocketAddr = probe.url.trim_start_matches("http://").parse().unwrap();
        // The "client" here is this test: connect, wait, then send.
        let before = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        thread::sleep(Duration::from_millis(50));
        s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let at = probe
            .first_request(Instant::now() + Duration::from_secs(5))
            .unwrap();
        assert!(at.duration_since(before) >= Duration::from_millis(50));
    }

    #[test]
    fn scrubbed_environment_and_arguments() {
        let cmd = tunnel_command(
            Path::new("/bin/pam-lite"),
            Path::new("/tmp/t.json"),
            "127.0.0.1:7000".parse().unwrap(),
            "fast",
            Runtime::Blocking,
            &[("KROUTER_URL", "http://127.0.0.1:1".into())],
        );
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "tunnel",
                "--ticket",
                "/tmp/t.json",
                "--listen",
                "127.0.0.1:7000",
                "--profile",
                "fast",
                "--runtime",
                "blocking"
            ]
        );
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.iter().any(|(k, v)| *k == "KROUTER_URL" && v.is_some()));
        assert!(envs
            .iter()
            .any(|(k, v)| *k == "WEBSOCKET_BACKEND_DELAY" && v.is_none()));
    }
}
