//! Real OpenSSH through pam-lite: sshd on 127.0.0.1 is the emulated gateway's target (generated host and
//! user keys, its own config), `pam-lite emulator` writes the ticket, and the system's ssh/scp connect with
//! `ProxyCommand='pam-lite tunnel --ticket t.json --stdio'`:
//!   * `ssh ... true` succeeds and a remote command's output comes back;
//!   * `scp` of 32 MiB arrives byte-exact (SHA-256), on both runtimes;
//!   * `pam-lite ssh --ticket t.json ...` runs ssh with that ProxyCommand filled in;
//!   * a target where nothing listens: ssh fails and pam-lite's message and exit code 12 are on stderr.
//!
//! Needs Debian's openssh-client and openssh-server (scripts/test.sh installs them). Without them the
//! tests print SKIPPED and why; with PAM_LITE_REQUIRE_SSH=1 (set by CI) a missing program is a failure.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const SSHD: &str = "/usr/sbin/sshd";
const STEP: Duration = Duration::from_secs(120);

/// `None` (after printing SKIPPED) when a program is missing and CI did not require it.
fn programs(test: &str) -> Option<()> {
    let missing: Vec<&str> = [SSHD, "ssh", "scp", "ssh-keygen"]
        .into_iter()
        .filter(|p| {
            Command::new(p)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
                && !Path::new(p).exists()
        })
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    let why = format!(
        "{} not installed (apt-get install openssh-client openssh-server)",
        missing.join(", ")
    );
    if std::env::var("PAM_LITE_REQUIRE_SSH").as_deref() == Ok("1") {
        panic!("{test}: {why}, and PAM_LITE_REQUIRE_SSH=1");
    }
    println!("SKIPPED {test}: {why}");
    None
}

fn run_bounded(cmd: &mut Command, deadline: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let killer = thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < deadline {
            thread::sleep(Duration::from_millis(100));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let out = child.wait_with_output().expect("wait");
    drop(killer);
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_port(port: u16, deadline: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < deadline, "nothing listens on {port}");
        thread::sleep(Duration::from_millis(50));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// sshd on 127.0.0.1 with its own host key, accepting one generated user key for the current user.
struct Sshd {
    dir: PathBuf,
    port: u16,
    user: String,
    _child: Killed,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = common::temp_path("sshd");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, kind) in [("host_key", "ed25519"), ("user_key", "ed25519")] {
            let out = run_bounded(
                Command::new("ssh-keygen").args([
                    "-q",
                    "-t",
                    kind,
                    "-N",
                    "",
                    "-C",
                    "pam-lite-test",
                    "-f",
                    dir.join(name).to_str().unwrap(),
                ]),
                STEP,
            );
            assert!(out.status.success(), "ssh-keygen: {:?}", out);
        }
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
        let user = String::from_utf8(run_bounded(Command::new("id").arg("-un"), STEP).stdout)
            .unwrap()
            .trim()
            .to_string();
        // sshd refuses to start as root without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\nPidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its log (the readiness probe's "connection closed" lines included) stays in the test dir.
            .stderr(std::fs::File::create(dir.join("sshd.log")).expect("sshd.log"))
            .spawn()
            .expect("start sshd");
        let child = Killed(child);
        wait_port(port, Duration::from_secs(20));
        let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let mut fields = host_pub.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        std::fs::write(
            dir.join("known_hosts"),
            format!("pam-target {kind} {key}\n"),
        )
        .unwrap();
        Sshd {
            dir,
            port,
            user,
            _child: child,
        }
    }

    /// Options for ssh/scp: this key only, this known_hosts only (strict), no user config, no prompts.
    fn opts(&self) -> Vec<String> {
        let d = self.dir.display();
        [
            "-F",
            "/dev/null",
            "-i",
            &format!("{d}/user_key"),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            &format!("UserKnownHostsFile={d}/known_hosts"),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=60",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// `pam-lite emulator` forwarding to `target`, and the ticket it wrote.
fn emulator(target: &str) -> (Killed, PathBuf) {
    let ticket = common::temp_path("ticket.json");
    let child = Command::new(common::BIN)
        .args(["emulator", "--target", target, "--ticket-out"])
        .arg(&ticket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the emulator");
    let child = Killed(child);
    let start = Instant::now();
    while std::fs::metadata(&ticket).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no ticket written"
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(100));
    (child, ticket)
}

fn proxy(ticket: &Path, runtime: &str) -> String {
    format!(
        "ProxyCommand={} tunnel --ticket {} --stdio --runtime {runtime}",
        common::BIN,
        ticket.display()
    )
}

fn ssh_and_scp(runtime: &str) {
    let test = format!("ssh_and_scp_through_the_tunnel_{runtime}");
    if programs(&test).is_none() {
        return;
    }
    let sshd = Sshd::start();
    let (_emu, ticket) = emulator(&format!("127.0.0.1:{}", sshd.port));
    let dest = format!("{}@pam-target", sshd.user);

    let out = run_bounded(
        Command::new("ssh")
            .args(sshd.opts())
            .args(["-o", &proxy(&ticket, runtime), &dest, "true"]),
        STEP,
    );
    assert!(
        out.status.success(),
        "{runtime}: ssh true: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_bounded(
        Command::new("ssh").args(sshd.opts()).args([
            "-o",
            &proxy(&ticket, runtime),
            &dest,
            "echo $((6*7))",
        ]),
        STEP,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{runtime}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 32 MiB of pseudo-random bytes up with scp, byte-exact.
    let src = sshd.dir.join("upload.bin");
    let dst = sshd.dir.join("received.bin");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..32usize << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&src, &data).unwrap();
    let start = Instant::now();
    let out = run_bounded(
        Command::new("scp")
            .args(sshd.opts())
            .args(["-q", "-o", &proxy(&ticket, runtime)])
            .arg(&src)
            .arg(format!("{dest}:{}", dst.display())),
        STEP,
    );
    assert!(
        out.status.success(),
        "{runtime}: scp: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&dst).expect("the copied file");
    assert_eq!(got.len(), data.len(), "{runtime}: scp length");
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(&data),
        "{runtime}: scp SHA-256"
    );
    println!(
        "[ssh {runtime}] scp 32 MiB through pam-lite in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn ssh_and_scp_through_the_tunnel_smol() {
    ssh_and_scp("smol");
}

#[test]
fn ssh_and_scp_through_the_tunnel_blocking() {
    ssh_and_scp("blocking");
}

/// `pam-lite ssh` fills in the ProxyCommand itself; an unreachable target ends ssh with pam-lite's
/// message and exit code 12 on stderr.
#[test]
fn pam_lite_ssh_and_an_unreachable_target() {
    if programs("pam_lite_ssh_and_an_unreachable_target").is_none() {
        return;
    }
    let sshd = Sshd::start();
    let (_emu, ticket) = emulator(&format!("127.0.0.1:{}", sshd.port));
    let dest = format!("{}@pam-target", sshd.user);
    let out = run_bounded(
        Command::new(common::BIN)
            .args(["ssh", "--ticket"])
            .arg(&ticket)
            .arg("--")
            .args(sshd.opts())
            .args([&dest, "echo via-pam-lite-ssh"]),
        STEP,
    );
    assert!(
        out.status.success(),
        "pam-lite ssh: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "via-pam-lite-ssh"
    );

    let (_emu2, dead) = emulator(&format!("127.0.0.1:{}", free_port()));
    let out = run_bounded(
        Command::new("ssh")
            .args(sshd.opts())
            .args(["-o", &proxy(&dead, "smol"), &dest, "true"]),
        STEP,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("pam-lite: the gateway could not open the connection to"),
        "{err}"
    );
    // The same failure without ssh around it: exit code 12.
    let r = common::run(
        &["tunnel", "--stdio", "--ticket", dead.to_str().unwrap()],
        &[],
        b"",
        STEP,
    );
    assert_eq!(r.code, Some(12), "{}", r.stderr);
}
