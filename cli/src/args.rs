//! The command line (clap derive). The help texts are the user documentation, so they say what a flag
//! does *and* when you would want it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes, shown at the end of `pam-lite --help` (and in cli/EXIT_CODES.md).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   success
  1   local error (ticket file unreadable, terminal, socket bind, I/O)
  2   usage error (bad command line)
  3   invalid configuration (invalid launch ticket, bad environment variable)
  4   router unreachable
  5   router refused the request
  6   gateway offline
  7   gateway error
  8   timed out
  9   router WebSocket failed
  10  protocol error
  11  WebRTC session disconnected
  12  tunneled connection failed (tunnel --stdio / ssh: the gateway could not reach the target)

Environment (Commander's names):
  KROUTER_URL           replaces the ticket's router URL
  PAM_CONNECT_TIMING=1  same as --timing
  VERIFY_SSL=false      do not verify the router's TLS certificate
  WEBSOCKET_BACKEND_DELAY, PAM_PRE_OFFER_SEC, PAM_PRE_OFFER_LEGACY, PAM_OFFER_RETRY_EXTRA_SEC,
  PAM_GATEWAY_OFFER_MAX_ATTEMPTS, PAM_OPEN_CONNECTION_DELAY, PAM_WEBRTC_POLL_MS,
  PAM_WEBRTC_CONNECT_TIMEOUT_SEC, GATEWAY_TIMEOUT, ...
                        adjust the timing profile (see --profile)
  PAM_LITE_PATH_LOSS_LIMIT_SEC=60
                        a session whose path to the gateway is lost (6 s of silence) keeps trying
                        (ICE restarts) this long, then ends with exit code 11
  RUST_LOG              log filter (overrides -v)";

#[derive(Debug, Parser)]
#[command(
    name = "pam-lite",
    version,
    about = "A fast, small client for Keeper PAM `pam launch` / `pam tunnel start`",
    long_about = "A fast, small client for Keeper PAM: opens the same WebRTC tunnel to a Keeper Gateway that \
                  Commander's `pam launch` and `pam tunnel start` open, from a launch ticket (a JSON file with \
                  the session token, router key, gateway and record; see cli/TICKET.md), with no Keeper login.\n\n\
                  Try it without any Keeper account: `pam-lite launch --demo` runs an emulated router and \
                  gateway in-process, with your own shell behind them.",
    after_help = EXIT_CODES_HELP,
    after_long_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open an interactive terminal session (what `pam launch` does).
    #[command(after_help = EXIT_CODES_HELP)]
    Launch(LaunchArgs),
    /// Forward a local TCP port through the gateway (what `pam tunnel start` does). Runs until the tunnel
    /// closes or you press Ctrl-C.
    #[command(after_help = EXIT_CODES_HELP)]
    Tunnel(TunnelArgs),
    /// Run the emulated router and gateway (on 127.0.0.1 unless --listen / --gateway-udp say otherwise) and
    /// write a launch ticket for them.
    Emulator(Box<EmulatorArgs>),
    /// Work with launch tickets.
    #[command(subcommand)]
    Ticket(TicketCommand),
    /// Run the system's `ssh` through the tunnel: `ssh -o ProxyCommand='pam-lite tunnel --ticket T
    /// --stdio' [SSH ARGS]` (as `tsh ssh` / `boundary connect ssh` do).
    #[command(after_help = SSH_HELP)]
    Ssh(SshArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    ///
    /// E.g. `pam-lite completions bash > ~/.local/share/bash-completion/completions/pam-lite`, or for zsh
    /// `pam-lite completions zsh > ~/.zfunc/_pam-lite`, for fish `pam-lite completions fish >
    /// ~/.config/fish/completions/pam-lite.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (roff): `pam-lite.1` on stdout, or with --dir one page per command
    /// (`pam-lite.1`, `pam-lite-launch.1`, ...) into DIR.
    Man {
        /// Write every page into this directory instead of `pam-lite.1` to stdout.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// After `pam-lite ssh --help`.
pub const SSH_HELP: &str = "\
Everything after the pam-lite flags goes to ssh unchanged; put `--` before them when they start with a
dash. Without any ssh argument the destination is the ticket's target (with its guacd `username` when
there is one). The ssh program is `ssh` from PATH, or $PAM_LITE_SSH.

Examples:
  pam-lite ssh --ticket t.json admin@db-1
  pam-lite ssh --ticket t.json -- -L 5432:localhost:5432 admin@db-1
  scp -o ProxyCommand='pam-lite tunnel --ticket t.json --stdio' file admin@db-1:/tmp/

Exit codes: ssh's own (255 for connection errors), or pam-lite's when ssh cannot be started.";

/// Which I/O driver runs the protocol core. Both behave the same on the wire (one conformance suite).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// The async driver (smol): UDP, timers, HTTP (hyper) and the router WebSocket are one task on smol's
    /// executor; a helper thread only resolves host names.
    Smol,
    /// The event-loop driver: one thread waits in mio for UDP, the WebSocket and timers; HTTP (ureq)
    /// runs on at most 4 worker threads; each local connection uses a reader and a writer thread.
    Blocking,
}

/// Where the launch's parameters come from.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct Source {
    /// Start the emulated router + gateway in this process and use its ticket (no Keeper account needed).
    #[arg(long)]
    pub demo: bool,
    /// The launch ticket (JSON, see cli/TICKET.md). It holds secrets: keep it like a password.
    #[arg(long, value_name = "FILE")]
    pub ticket: Option<PathBuf>,
}

/// Flags shared by `launch` and `tunnel`.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Send all local ICE candidates inside the offer and wait for the answer in the HTTP reply, instead of
    /// trickling them over the router WebSocket (Commander's `-nti`).
    #[arg(long)]
    pub no_trickle_ice: bool,
    /// I/O driver.
    #[arg(long, value_enum, default_value_t = Runtime::Smol)]
    pub runtime: Runtime,
    /// Timing profile: `fast` is pam-lite's own schedule; the `commander-*` profiles reproduce Commander's
    /// sleeps and request pattern (today's, after PR #1982, before it) for comparisons. Commander's
    /// environment variables adjust any profile.
    #[arg(long, default_value = "fast",
          value_parser = clap::builder::PossibleValuesParser::new(pam_lite_core::profile::Profile::names()))]
    pub profile: String,
    /// Print the checkpoint waterfall (Commander's PAM_CONNECT_TIMING lines) to stderr. Same as
    /// PAM_CONNECT_TIMING=1.
    #[arg(long)]
    pub timing: bool,
    /// Write the checkpoint waterfall as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub timing_json: Option<PathBuf>,
    /// Local address of the UDP socket the WebRTC connection uses. Default: `0.0.0.0:0` (all interfaces,
    /// a free port) with a ticket, which announces every up, non-loopback interface address as an ICE host
    /// candidate so a gateway on another host can answer; `127.0.0.1:0` with --demo (its gateway is local).
    /// Give one address (e.g. `192.0.2.10:0`) to announce only that one, or a fixed port for a firewall
    /// rule. The chosen candidates are logged at -v.
    #[arg(long, value_name = "ADDR:PORT")]
    pub udp_bind: Option<SocketAddr>,
    /// Offer only relayed candidates: every byte goes through the TURN server (`relay_host`, or
    /// KRELAY_URL), as Commander's `turn_only`. Fails with exit 13 when no relay can be allocated.
    #[arg(long, conflicts_with = "no_relay")]
    pub relay_only: bool,
    /// Do not allocate a TURN relay (STUN still finds your public address). Without a direct or
    /// server-reflexive path the launch then fails with exit 13.
    #[arg(long)]
    pub no_relay: bool,
    /// How to reach the TURN server: `auto` = UDP on 3478, and TCP to the same port when UDP gets no
    /// answer within a second (networks that block UDP); `tcp` = TCP only; `tls` = `turns:` on 5349.
    #[arg(long, value_enum, default_value_t = RelayTransport::Auto)]
    pub relay_transport: RelayTransport,
    /// More logs on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides. Secrets are never logged.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl CommonArgs {
    /// Where the UDP socket binds: `--udp-bind`, else loopback for the in-process demo (whose gateway is on
    /// 127.0.0.1) and all interfaces for a real ticket (whose gateway is on another host).
    pub fn udp_bind(&self, demo: bool) -> SocketAddr {
        self.udp_bind.unwrap_or(if demo {
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }
}

/// `pam-lite emulator --gateway-relay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GatewayRelay {
    All,
    RelayOnly,
    NoRelay,
    None,
}

/// `--relay-transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayTransport {
    Auto,
    Tcp,
    Tls,
}

#[derive(Debug, Clone, Args)]
pub struct LaunchArgs {
    #[command(flatten)]
    pub source: Source,
    /// Script mode: no raw terminal; pipe stdin to the session and exit when stdin has ended and the
    /// output has settled (or the remote side closed). E.g. `printf 'uname -a\nexit\n' | pam-lite launch
    /// --ticket t.json --stdin`.
    #[arg(long)]
    pub stdin: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TunnelArgs {
    #[command(flatten)]
    pub source: Source,
    /// With --demo: where the emulated gateway connects. Without it a local echo server is started as
    /// the target.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "ticket")]
    pub target: Option<String>,
    /// Local address to accept connections on; each accepted connection is one tunneled connection. Port 0
    /// picks a free port. Once the tunnel is ready, `{"listening": "ADDR:PORT"}` is printed as one JSON
    /// line on stdout (for scripts).
    #[arg(long, value_name = "ADDR:PORT", required_unless_present = "stdio")]
    pub listen: Option<SocketAddr>,
    /// Carry exactly one tunneled connection on stdin/stdout and exit when it ends, for
    /// `ssh -o ProxyCommand='pam-lite tunnel --ticket t.json --stdio' user@host`. If the gateway cannot
    /// reach the target the exit code is 12.
    #[arg(long, conflicts_with_all = ["listen", "ready_file"])]
    pub stdio: bool,
    /// Once the tunnel is ready, write `{"listening": "ADDR:PORT"}` to FILE (atomically: a script can
    /// wait for the file to appear instead of polling the port).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SshArgs {
    /// The launch ticket (JSON, see cli/TICKET.md), e.g. from `pam-lite-export --tunnel`.
    #[arg(long, value_name = "FILE")]
    pub ticket: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Arguments for ssh (options and `[user@]host [command]`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "SSH ARGS"
    )]
    pub ssh_args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    /// Address of the emulated router (HTTP + WebSocket). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Address of the emulated gateway's UDP socket (its only ICE host candidate). Port 0 picks a free
    /// port. Give a routable address to serve clients on other hosts (e.g. in the NAT lab).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR:PORT")]
    pub gateway_udp: SocketAddr,
    /// Write the launch ticket here (default: print it on stdout).
    #[arg(long, value_name = "FILE")]
    pub ticket_out: Option<PathBuf>,
    /// Serve HTTPS/WSS with a self-signed certificate (the ticket carries it as `tls_ca_pem`).
    #[arg(long)]
    pub tls: bool,
    /// Simulated client-router round trip added to every router request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub router_rtt_ms: u64,
    /// Extra cost of a request on a fresh (non keep-alive) connection, in milliseconds (TCP+TLS setup).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub fresh_conn_ms: u64,
    /// How long the gateway takes to answer an offer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub answer_delay_ms: u64,
    /// How long after its upgrade the router can route to a WebSocket (a cold router), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub registration_lag_ms: u64,
    /// Simulated router-gateway round trip for controller messages, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub gateway_rtt_ms: u64,
    /// Fail the next offer (send_controller_message) with this HTTP status, as a load balancer in front
    /// of a cold router does; repeat to fail several in a row.
    #[arg(long, value_name = "STATUS")]
    pub fail_http: Vec<u16>,
    /// Fail the next offer with this router result code (e.g. RRC_TIMEOUT, RRC_BAD_STATE,
    /// RRC_CONTROLLER_DOWN); repeat for several. Applied after the --fail-http statuses.
    #[arg(long, value_name = "CODE")]
    pub fail_rrc: Vec<String>,
    /// Report the gateway as offline in get_controllers.
    #[arg(long)]
    pub gateway_offline: bool,
    /// Drop the client's WebSocket this many milliseconds after it opened.
    #[arg(long, value_name = "MS")]
    pub ws_drop_ms: Option<u64>,
    /// Router fault: every WebSocket push names another conversation (a misrouted answer).
    #[arg(long)]
    pub ws_wrong_conversation: bool,
    /// Router fault: deliver every WebSocket push N extra times (duplicate answers).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub ws_duplicate: u32,
    /// Router fault: push N messages for another conversation as soon as a WebSocket opens.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub ws_flood: u32,
    /// Router fault: push one WebSocket message of this many bytes as soon as a WebSocket opens.
    #[arg(long, value_name = "BYTES")]
    pub ws_oversize: Option<usize>,
    /// Router fault: every successful HTTP response carries this many bytes of padding as its body.
    #[arg(long, value_name = "BYTES")]
    pub http_oversize: Option<usize>,
    /// Gateway fault: the answer announces a DTLS fingerprint that is not the gateway's certificate's.
    #[arg(long)]
    pub answer_bad_fingerprint: bool,
    /// Gateway fault: restart the gateway (every session lost, same address) this many milliseconds
    /// after the first datagram from a client.
    #[arg(long, value_name = "MS")]
    pub gateway_restart_ms: Option<u64>,
    /// Network fault: the client-gateway UDP path drops everything, both ways, from this many
    /// milliseconds after the first datagram from a client.
    #[arg(long, value_name = "MS")]
    pub udp_blackhole_ms: Option<u64>,
    /// Probability (0-1) that a UDP datagram between client and gateway is lost.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub udp_loss: f64,
    /// One-way UDP latency in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub udp_latency_ms: u64,
    /// Extra random UDP delay in [0, MS) milliseconds (reorders datagrams).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub udp_jitter_ms: u64,
    /// Probability (0-1) that a UDP datagram is delivered twice.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub udp_dup: f64,
    /// A STUN/TURN server (`host[:port]`, port 3478 by default, e.g. a coturn): written into the ticket as
    /// `relay_host`, and used by the emulated gateway (see --gateway-relay).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub relay_host: Option<String>,
    /// The TURN username the router's relay_access_creds hands out (and the gateway uses).
    #[arg(long, value_name = "USER", requires = "relay_password")]
    pub relay_user: Option<String>,
    /// The TURN password for --relay-user.
    #[arg(long, value_name = "PASS", requires = "relay_user")]
    pub relay_password: Option<String>,
    /// Which candidates the emulated gateway gathers with --relay-host: `all` (host, STUN, TURN with the
    /// --relay-user credentials), `relay-only`, `no-relay` (host + STUN), or `none` (host only).
    #[arg(long, value_enum, default_value_t = GatewayRelay::All)]
    pub gateway_relay: GatewayRelay,
    /// After `--`: serve the gateway with this external process (program and arguments) instead of the
    /// emulated one. It speaks the JSON lines of `tests/interop/keeper_peer.py --role gateway`: Keeper's
    /// own tube as the gateway, for interop (it connects to its own target; --target is not used by it).
    #[arg(value_name = "GATEWAY_CMD", last = true)]
    pub external_gateway: Vec<String>,
    /// Tunnel target for `pam-lite tunnel` connections.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "terminal")]
    pub target: Option<String>,
    /// Terminal mode (the default without --target): each session runs your shell ($SHELL, else /bin/sh)
    /// behind the emulated gateway.
    #[arg(long)]
    pub terminal: bool,
    /// More logs on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum TicketCommand {
    /// Validate a launch ticket and print what it contains (secrets redacted). Exit code 0 if usable,
    /// 1 if unreadable, 3 if invalid.
    Check {
        /// The ticket file.
        file: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn demo_and_ticket_are_exclusive_and_one_is_required() {
        assert!(Cli::try_parse_from(["pam-lite", "launch"]).is_err());
        assert!(Cli::try_parse_from(["pam-lite", "launch", "--demo", "--ticket", "x"]).is_err());
        let cli = Cli::try_parse_from([
            "pam-lite",
            "launch",
            "--demo",
            "--stdin",
            "--runtime",
            "blocking",
        ])
        .unwrap();
        let Command::Launch(a) = cli.command else {
            panic!("not launch")
        };
        assert!(a.source.demo && a.stdin);
        assert_eq!(a.common.runtime, Runtime::Blocking);
        assert_eq!(a.common.profile, "fast");
    }

    #[test]
    fn target_needs_demo() {
        assert!(Cli::try_parse_from([
            "pam-lite",
            "tunnel",
            "--ticket",
            "t",
            "--listen",
            "127.0.0.1:0",
            "--target",
            "h:1"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "pam-lite",
            "tunnel",
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--target",
            "h:1"
        ])
        .is_ok());
    }

    #[test]
    fn udp_bind_defaults_to_loopback_for_the_demo_and_all_interfaces_for_a_ticket() {
        let common = |argv: &[&str]| {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Tunnel(a) = cli.command else {
                panic!("not tunnel")
            };
            (a.common, a.source.demo)
        };
        let (c, demo) = common(&["pam-lite", "tunnel", "--demo", "--stdio"]);
        assert_eq!(c.udp_bind(demo), "127.0.0.1:0".parse().unwrap());
        let (c, demo) = common(&["pam-lite", "tunnel", "--ticket", "t", "--stdio"]);
        assert_eq!(c.udp_bind(demo), "0.0.0.0:0".parse().unwrap());
        let (c, demo) = common(&[
            "pam-lite",
            "tunnel",
            "--ticket",
            "t",
            "--stdio",
            "--udp-bind",
            "192.0.2.1:4000",
        ]);
        assert_eq!(c.udp_bind(demo), "192.0.2.1:4000".parse().unwrap());
        assert!(Cli::try_parse_from([
            "pam-lite",
            "tunnel",
            "--demo",
            "--stdio",
            "--udp-bind",
            "nowhere"
        ])
        .is_err());
    }

    #[test]
    fn unknown_profile_is_a_usage_error() {
        let e =
            Cli::try_parse_from(["pam-lite", "launch", "--demo", "--profile", "slow"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
