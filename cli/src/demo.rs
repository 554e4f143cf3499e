//! The embedded emulator: `--demo` for `launch`/`tunnel` and the standalone `pam-lite emulator`.
//!
//! `--demo` goes through exactly the same path as a real launch: the emulator's ticket is rendered to
//! launch-ticket JSON and parsed by [`Ticket::parse`], so the demo also exercises ticket handling.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::thread;
use std::time::Duration;

use pam_lite_core::router::proto::RouterResponseCode;
use pam_lite_emulator::{Emulator, EmulatorConfig, EmulatorError, TargetConfig, UdpImpairment};

use crate::args::EmulatorArgs;
use crate::exit::CliError;
use crate::ticket::Ticket;
use pam_lite_core::relay::{IcePolicy, RelayPlan, TurnCredentials, TurnEndpoint, TurnTransport};

/// A running in-process emulator and the ticket for it. Keep it alive for the whole launch.
pub struct Demo {
    /// Kept only to keep the emulator running (dropping it stops it).
    _emulator: Emulator,
    pub ticket: Ticket,
}

fn emulator_error(e: EmulatorError) -> CliError {
    match e {
        EmulatorError::Config(m) => CliError::Config(format!("emulator: {m}")),
        other => CliError::Local(other.to_string()),
    }
}

/// Start an emulator with `config` and parse its ticket.
pub fn start(config: EmulatorConfig) -> Result<Demo, CliError> {
    let emulator = Emulator::start(config).map_err(emulator_error)?;
    let json = emulator.ticket().to_json_string();
    let ticket = Ticket::parse(json.as_bytes())
        .map_err(|e| CliError::Local(format!("the emulator wrote an unusable ticket: {e}")))?;
    tracing::info!(router = %ticket.router_url, "demo emulator started");
    Ok(Demo {
        _emulator: emulator,
        ticket,
    })
}

/// `launch --demo`: terminal mode, the user's shell behind the emulated gateway.
pub fn terminal() -> Result<Demo, CliError> {
    let shell = TargetConfig::terminal_argv(&[]);
    eprintln!(
        "pam-lite: demo: emulated router + gateway on 127.0.0.1, running {} behind them",
        shell.join(" ")
    );
    start(EmulatorConfig {
        target: TargetConfig::Terminal {
            command: Vec::new(),
        },
        ..EmulatorConfig::default()
    })
}

/// `tunnel --demo [--target HOST:PORT]`: tunnel mode to `target`, or to a local echo server.
pub fn tunnel(target: Option<&str>) -> Result<Demo, CliError> {
    let forward_to = match target {
        Some(t) => resolve(t, "--target")?,
        None => {
            let addr = spawn_echo_server()
                .map_err(|e| CliError::local("cannot start the demo echo server", e))?;
            eprintln!(
                "pam-lite: demo: no --target given; tunneled connections go to an echo server on {addr}"
            );
            addr
        }
    };
    eprintln!(
        "pam-lite: demo: emulated router + gateway on 127.0.0.1, gateway target {forward_to}"
    );
    start(EmulatorConfig {
        target: TargetConfig::Tunnel { forward_to },
        ..EmulatorConfig::default()
    })
}

/// Resolve `HOST:PORT` (a usage error names `flag` when it does not resolve).
fn resolve(text: &str, flag: &str) -> Result<SocketAddr, CliError> {
    text.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CliError::Usage(format!("{flag} {text:?}: expected a reachable HOST:PORT")))
}

/// A TCP echo server on 127.0.0.1 (one thread per connection; half-close is passed on). Lives as long as
/// the process.
pub fn spawn_echo_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let addr = listener.local_addr()?;
    thread::Builder::new()
        .name("pam-lite-echo".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = thread::Builder::new()
                    .name("pam-lite-echo-conn".into())
                    .spawn(move || echo(stream));
            }
        })?;
    Ok(addr)
}

fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                let _ = stream.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if stream.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// `pam-lite emulator`: the command-line knobs as an [`EmulatorConfig`].
pub fn config_from_args(a: &EmulatorArgs) -> Result<EmulatorConfig, CliError> {
    let ms = Duration::from_millis;
    let target = match &a.target {
        Some(t) => TargetConfig::Tunnel {
            forward_to: resolve(t, "--target")?,
        },
        None => TargetConfig::Terminal {
            command: Vec::new(),
        },
    };
    let mut fail_rrc = Vec::new();
    for name in &a.fail_rrc {
        let code = RouterResponseCode::from_name(name.trim()).ok_or_else(|| {
            CliError::Usage(format!(
                "--fail-rrc {name:?}: unknown router code (e.g. RRC_TIMEOUT, RRC_BAD_STATE, \
                 RRC_CONTROLLER_DOWN)"
            ))
        })?;
        fail_rrc.push(code);
    }
    let udp = UdpImpairment {
        latency: ms(a.udp_latency_ms),
        jitter: ms(a.udp_jitter_ms),
        loss: a.udp_loss,
        duplicate: a.udp_dup,
    };
    let (relay_credentials, gateway_relay) = emulator_relays(a)?;
    Ok(EmulatorConfig {
        relay_host: a.relay_host.clone(),
        relay_credentials,
        gateway_relay,
        external_gateway: (!a.external_gateway.is_empty()).then(|| a.external_gateway.clone()),
        listen: a.listen,
        gateway_udp: a.gateway_udp,
        tls: a.tls,
        target,
        router_rtt: ms(a.router_rtt_ms),
        fresh_connection_cost: ms(a.fresh_conn_ms),
        registration_lag: ms(a.registration_lag_ms),
        fail_http: a.fail_http.clone(),
        fail_rrc,
        gateway_offline: a.gateway_offline,
        ws_drop_after: a.ws_drop_ms.map(ms),
        ws_wrong_conversation: a.ws_wrong_conversation,
        ws_duplicate: a.ws_duplicate,
        ws_flood: a.ws_flood,
        ws_oversize: a.ws_oversize,
        http_oversize: a.http_oversize,
        answer_bad_fingerprint: a.answer_bad_fingerprint,
        gateway_restart_after: a.gateway_restart_ms.map(ms),
        udp_blackhole_after: a.udp_blackhole_ms.map(ms),
        gateway_rtt: ms(a.gateway_rtt_ms),
        answer_delay: ms(a.answer_delay_ms),
        ..EmulatorConfig::default()
    }
    .with_udp(udp))
}

/// The emulator's relay knobs: what the router's relay_access_creds answers, and the gateway's plan.
fn emulator_relays(a: &EmulatorArgs) -> Result<(Option<TurnCredentials>, RelayPlan), CliError> {
    use crate::args::GatewayRelay;
    let credentials = match (&a.relay_user, &a.relay_password) {
        (Some(u), Some(p)) => Some(TurnCredentials {
            username: u.clone(),
            password: p.clone(),
        }),
        _ => None,
    };
    let Some(host) = &a.relay_host else {
        return Ok((credentials, RelayPlan::default()));
    };
    let (name, port) = crate::relay::split_host_port(host, crate::relay::RELAY_PORT);
    let addrs = crate::relay::resolve(&name, port)
        .map_err(|e| CliError::Usage(format!("--relay-host {host:?}: {e}")))?;
    let policy = match a.gateway_relay {
        GatewayRelay::None => return Ok((credentials, RelayPlan::default())),
        GatewayRelay::All => IcePolicy::All,
        GatewayRelay::RelayOnly => IcePolicy::RelayOnly,
        GatewayRelay::NoRelay => IcePolicy::NoRelay,
    };
    let plan = RelayPlan {
        stun: addrs.clone(),
        turn: addrs
            .iter()
            .map(|&addr| TurnEndpoint {
                addr,
                name: name.clone(),
                transport: TurnTransport::Udp,
            })
            .collect(),
        credentials: credentials.clone(),
        policy,
        ..RelayPlan::default()
    };
    Ok((credentials, plan))
}

/// Write `contents` to `path` readable by the owner only (a ticket is a secret).
pub fn write_private(path: &Path, contents: &str) -> Result<(), CliError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| CliError::local(format!("cannot write ticket {}", path.display()), e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .map_err(|e| CliError::local(format!("cannot write ticket {}", path.display()), e))
}

/// `pam-lite emulator`: run until killed.
pub fn run_emulator(a: &EmulatorArgs) -> Result<(), CliError> {
    let config = config_from_args(a)?;
    let target = config.target.clone();
    let emulator = Emulator::start(config).map_err(emulator_error)?;
    let json = emulator.ticket().to_json_string();
    match &a.ticket_out {
        Some(path) => {
            write_private(path, &json)?;
            eprintln!("pam-lite emulator: ticket written to {}", path.display());
        }
        None => println!("{json}"),
    }
    let mode = match target {
        TargetConfig::Tunnel { forward_to } => format!("tunnel mode, target {forward_to}"),
        TargetConfig::Terminal { command } => format!(
            "terminal mode, running {}",
            TargetConfig::terminal_argv(&command).join(" ")
        ),
    };
    eprintln!(
        "pam-lite emulator: router {} (gateway UDP {}), {mode}. Ctrl-C stops it.",
        emulator.ticket().router_url,
        emulator.gateway_udp_addr()
    );
    let _ = std::io::stdout().flush();
    loop {
        thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn emulator_args(extra: &[&str]) -> EmulatorArgs {
        let mut argv = vec!["pam-lite", "emulator"];
        argv.extend_from_slice(extra);
        match crate::args::Cli::parse_from(argv).command {
            crate::args::Command::Emulator(a) => *a,
            _ => panic!("not the emulator command"),
        }
    }

    #[test]
    fn knobs_map_onto_the_config() {
        let a = emulator_args(&[
            "--router-rtt-ms",
            "80",
            "--fail-http",
            "503",
            "--fail-http",
            "502",
            "--fail-rrc",
            "RRC_TIMEOUT",
            "--udp-loss",
            "0.1",
            "--ws-drop-ms",
            "500",
            "--target",
            "127.0.0.1:22",
            "--ws-duplicate",
            "2",
            "--udp-blackhole-ms",
            "700",
            "--answer-bad-fingerprint",
        ]);
        let c = config_from_args(&a).unwrap();
        assert_eq!(c.ws_duplicate, 2);
        assert_eq!(c.udp_blackhole_after, Some(Duration::from_millis(700)));
        assert!(c.answer_bad_fingerprint && !c.ws_wrong_conversation);
        assert_eq!(c.router_rtt, Duration::from_millis(80));
        assert_eq!(c.fail_http, vec![503, 502]);
        assert_eq!(c.fail_rrc, vec![RouterResponseCode::RrcTimeout]);
        assert_eq!(c.udp_to_gateway.loss, 0.1);
        assert_eq!(c.udp_from_gateway.loss, 0.1);
        assert_eq!(c.ws_drop_after, Some(Duration::from_millis(500)));
        assert!(matches!(c.target, TargetConfig::Tunnel { .. }));
    }

    #[test]
    fn bad_rrc_is_a_usage_error() {
        let a = emulator_args(&["--fail-rrc", "RRC_NOPE"]);
        assert_eq!(config_from_args(&a).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn echo_server_echoes_and_half_closes() {
        let addr = spawn_echo_server().unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"ping").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ping");
    }
}
