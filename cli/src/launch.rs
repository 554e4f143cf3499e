//! `pam-lite launch` and `pam-lite tunnel`: ticket + environment → [`ClientConfig`] → a driver → the
//! session loop.
//!
//! The terminal loop follows Commander's `_start_cli_session`: keystrokes are held back until the session
//! is ready for a prompt (the first Guacamole `sync`), resizes are debounced, a double Ctrl-C closes the
//! session locally, and the remote side ending the session ends the process.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pam_lite_blocking::TlsConfig;
use pam_lite_core::client::{Client, ClientConfig, Session, TerminalSettings, TERMINAL_CONN};
use pam_lite_core::timing::names;
use pam_lite_core::{Command, Input, LaunchError, Output};
use rand_core::{OsRng, RngCore};

use crate::args::{CommonArgs, LaunchArgs, TunnelArgs};
use crate::exit::CliError;
use crate::runner::{self, DriverConfig, Event, InputFn};
use crate::settings::{self, EnvSettings};
use crate::signals::Shutdown;
use crate::spinner::Spinner;
use crate::terminal::{self, CtrlCDetector, InputGate, LocalEvent, RawModeGuard};
use crate::ticket::Ticket;
use crate::timing_report::TimingReport;

/// `--stdin`: after stdin ended, close once the session printed nothing for this long.
pub const STDIN_SETTLE: Duration = Duration::from_millis(1500);
/// After asking the session to close, exit anyway if it has not finished within this bound.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// The session loop wakes at least this often (settle and close deadlines).
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// What kind of session a [`ClientConfig`] is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Terminal { cols: u16, rows: u16, stdin: bool },
    Tunnel,
}

/// Ticket + environment + flags → the core's launch configuration.
pub fn client_config(
    ticket: &Ticket,
    env: &EnvSettings,
    kind: SessionKind,
    common: &CommonArgs,
) -> ClientConfig {
    let trickle_ice = !common.no_trickle_ice;
    let (session, offer) = match kind {
        SessionKind::Terminal { cols, rows, stdin } => (
            Session::Terminal(TerminalSettings {
                cols,
                rows,
                stdin_mode: stdin,
                guacd_params: ticket.guacd_params.to_strings(),
            }),
            ticket.launch_offer(Some((cols, rows))),
        ),
        SessionKind::Tunnel => (Session::Tunnel, ticket.launch_offer(None)),
    };
    ClientConfig {
        router_url: ticket.router_url.clone(),
        session_token: ticket.session_token.expose().clone(),
        server_key: ticket.server_key.clone(),
        gateway_uid: ticket.gateway_uid.clone(),
        record_uid: ticket.record_uid.clone(),
        traffic_seed: ticket.traffic_seed.expose().clone(),
        offer,
        session,
        trickle_ice,
        profile: env.profile.clone(),
        relay: crate::relay::relay_plan(ticket, env, common),
        unix_ms_at_start: unix_ms(),
        dtls: pam_lite_driver_kit::dtls::identity(),
    }
}

/// The driver settings for this ticket: extra CA (`tls_ca_pem`), `verify_tls` / `VERIFY_SSL`, and the UDP
/// socket's address (`udp_bind`, see [`CommonArgs::udp_bind`]; unspecified = announce the interfaces).
pub fn driver_config(ticket: &Ticket, env: &EnvSettings, udp_bind: SocketAddr) -> DriverConfig {
    let insecure = !ticket.verify_tls || env.skip_tls_verify;
    if insecure {
        tracing::warn!(
            "router TLS certificates are NOT verified (verify_tls=false or VERIFY_SSL=false)"
        );
    }
    DriverConfig {
        tls: TlsConfig {
            extra_ca_pem: ticket.tls_ca_pem.as_ref().map(|p| p.as_bytes().to_vec()),
            insecure,
        },
        udp_bind,
        ..DriverConfig::default()
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// 32 bytes from the OS for the core's RNG (the core never draws randomness itself).
pub(crate) fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    OsRng.fill_bytes(&mut s);
    s
}

/// The environment, the ticket (with `KROUTER_URL` applied) and its warnings printed.
pub(crate) fn prepare(
    common: &CommonArgs,
    mut ticket: Ticket,
) -> Result<(EnvSettings, Ticket), CliError> {
    let env = settings::from_env(&common.profile, common.timing, |k| std::env::var_os(k))?;
    if let Some(url) = &env.router_url {
        ticket.override_router_url(url, settings::KROUTER_URL)?;
        tracing::info!(router_url = %ticket.router_url, "router URL from KROUTER_URL");
    }
    for w in ticket.warnings(unix_ms() / 1000) {
        eprintln!(
            "pam-lite: warning: {}",
            pam_lite_core::text::sanitize_max(&w, 1000)
        );
    }
    Ok((env, ticket))
}

// ------------------------------------------------------------------------------------------------ launch

/// An interactive session needs a terminal on stdin; say so before anything starts.
pub fn check_stdin(args: &LaunchArgs) -> Result<(), CliError> {
    if !args.stdin && !std::io::stdin().is_terminal() {
        return Err(CliError::Local(
            "stdin is not a terminal: use --stdin to pipe a script into the session".into(),
        ));
    }
    Ok(())
}

/// `pam-lite launch` with an already loaded ticket.
pub fn launch(args: &LaunchArgs, ticket: Ticket) -> Result<(), CliError> {
    let interactive = !args.stdin;
    check_stdin(args)?;
    let (env, ticket) = prepare(&args.common, ticket)?;
    ticket.check_terminal_protocol()?;
    let (cols, rows) = terminal::size();
    let cfg = client_config(
        &ticket,
        &env,
        SessionKind::Terminal {
            cols,
            rows,
            stdin: args.stdin,
        },
        &args.common,
    );
    tracing::info!(?cfg, runtime = ?args.common.runtime, "launching");
    let start = Instant::now();
    let mut timing = TimingReport::new(start, env.timing, args.common.timing_json.clone())?;
    let client = Client::new(cfg, seed(), start)?;

    let (tx, rx) = mpsc::channel();
    let started = runner::start_with_flow(
        args.common.runtime,
        client,
        driver_config(&ticket, &env, args.common.udp_bind(args.source.demo)),
        None,
        tx.clone(),
    )?;
    // Receive-side flow control: the loop below credits the terminal output stdout took
    // (`Command::Delivered`), so output nobody reads stays in the tube, not in this process.
    started.flow.claim_delivery();
    let inputs = started.inputs;
    let stop = Arc::new(AtomicBool::new(false));
    let input = InputGate::new(started.flow, stop.clone());
    if !interactive {
        // Script mode: read (and hold back, up to INPUT_HOLD_CAP) the script right away.
        terminal::spawn_stdin_reader(local_sender(&tx), input.clone())
            .map_err(|e| CliError::local("cannot read stdin", e))?;
    }

    let mut spinner = Spinner::start("connecting", true);
    let mut session = TerminalLoop {
        inputs,
        interactive,
        ready: false,
        ready_at: None,
        pending: Vec::new(),
        ctrl_c: CtrlCDetector::default(),
        stdin_ended_at: None,
        input_end_sent: false,
        last_output: Instant::now(),
        output_mid_line: false,
        close_sent_at: None,
        result: None,
        raw: None,
        input,
        stop,
    };
    let outcome = session.run(&rx, &tx, &mut spinner, &mut timing, (cols, rows));
    session.stop.store(true, Ordering::Relaxed);
    spinner.stop();
    // Leave raw mode before the waterfall and any error message are printed.
    drop(session.raw.take());
    if session.output_mid_line && std::io::stdout().is_terminal() {
        // The remote prompt has no newline after it; do not glue the shell's prompt to it.
        println!();
    }
    let report = timing.report(false);
    outcome?;
    report
}

fn local_sender(tx: &mpsc::Sender<Event>) -> mpsc::Sender<LocalEvent> {
    // The terminal threads speak LocalEvent; wrap them into the loop's Event channel.
    let (ltx, lrx) = mpsc::channel::<LocalEvent>();
    let tx = tx.clone();
    std::thread::spawn(move || {
        for ev in lrx {
            if tx.send(Event::Local(ev)).is_err() {
                return;
            }
        }
    });
    ltx
}

struct TerminalLoop {
    inputs: InputFn,
    interactive: bool,
    /// The session is ready for a prompt: input flows.
    ready: bool,
    ready_at: Option<Instant>,
    /// Input typed or piped before `ready`.
    pending: Vec<u8>,
    ctrl_c: CtrlCDetector,
    stdin_ended_at: Option<Instant>,
    /// `Command::SendEof` for the terminal connection was sent.
    input_end_sent: bool,
    last_output: Instant,
    /// The last output byte was not a newline.
    output_mid_line: bool,
    close_sent_at: Option<Instant>,
    result: Option<Result<(), LaunchError>>,
    raw: Option<RawModeGuard>,
    /// Bounds what the stdin reader takes (see [`InputGate`]).
    input: InputGate,
    /// Set when the loop is over: the resize watcher and a waiting stdin reader end.
    stop: Arc<AtomicBool>,
}

impl TerminalLoop {
    fn send(&self, cmd: Command) {
        let _ = (self.inputs)(Input::Command(cmd));
    }

    fn close(&mut self) {
        if self.close_sent_at.is_none() {
            tracing::info!("closing the session");
            self.close_sent_at = Some(Instant::now());
            self.send(Command::Close);
        }
    }

    /// The session can take input: enter raw mode (interactive), start the readers, flush what waited.
    fn become_ready(
        &mut self,
        tx: &mpsc::Sender<Event>,
        spinner: &mut Spinner,
        size: (u16, u16),
    ) -> Result<(), CliError> {
        if self.ready {
            return Ok(());
        }
        self.ready = true;
        self.ready_at = Some(Instant::now());
        spinner.stop();
        if self.interactive {
            self.raw = Some(
                RawModeGuard::enable()
                    .map_err(|e| CliError::local("cannot put the terminal in raw mode", e))?,
            );
            terminal::spawn_stdin_reader(local_sender(tx), self.input.clone())
                .map_err(|e| CliError::local("cannot read stdin", e))?;
            terminal::spawn_resize_watcher(size, local_sender(tx), self.stop.clone())
                .map_err(|e| CliError::local("cannot watch the terminal size", e))?;
        }
        if !self.pending.is_empty() {
            let data = std::mem::take(&mut self.pending);
            self.input.handed_over(data.len());
            self.send(Command::TerminalInput { data });
        }
        if self.stdin_ended_at.is_some() {
            self.end_input();
        }
        Ok(())
    }

    /// Stdin ended: tell the session (in `--stdin` mode the core closes the Guacamole STDIN stream, so
    /// the remote side sees end of input as with a real pipe).
    fn end_input(&mut self) {
        if !self.input_end_sent {
            self.input_end_sent = true;
            self.send(Command::SendEof { conn: 1 });
        }
    }

    fn run(
        &mut self,
        rx: &mpsc::Receiver<Event>,
        tx: &mpsc::Sender<Event>,
        spinner: &mut Spinner,
        timing: &mut TimingReport,
        size: (u16, u16),
    ) -> Result<(), CliError> {
        let mut stdout = std::io::stdout();
        loop {
            let event = match rx.recv_timeout(TICK) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            match event {
                None => {}
                Some(Event::NodeStopped) => break,
                Some(Event::Node(out)) => match out {
                    Output::Checkpoint(cp) => {
                        spinner.set(&cp.name);
                        let ready = cp.name == names::READY_FOR_PROMPT
                            || cp.name == names::GUACAMOLE_WAIT_FOR_READY_TIMEOUT;
                        timing.push(cp);
                        if ready {
                            self.become_ready(tx, spinner, size)?;
                        }
                    }
                    Output::TerminalOutput(bytes) => {
                        // Output before the ready checkpoint (a banner) still means the session is live.
                        self.become_ready(tx, spinner, size)?;
                        if let Some(last) = bytes.last() {
                            self.output_mid_line = *last != b'\n';
                        }
                        // Blocks while stdout is not read (a paused pipe): the node stops reading the
                        // tube once its budget of output is out and not credited, so nothing piles up.
                        stdout
                            .write_all(&bytes)
                            .and_then(|()| stdout.flush())
                            .map_err(|e| CliError::local("cannot write to stdout", e))?;
                        self.send(Command::Delivered {
                            conn: TERMINAL_CONN,
                            bytes: bytes.len(),
                        });
                        // When stdout took it: a write that blocked for a while is not a quiet session.
                        self.last_output = Instant::now();
                    }
                    Output::Finished(result) => {
                        tracing::debug!(ok = result.is_ok(), "launch finished");
                        self.result = Some(result);
                    }
                    other => tracing::trace!(?other, "ignored output"),
                },
                Some(Event::Local(ev)) => match ev {
                    LocalEvent::Input(data) => {
                        if self.interactive && self.ctrl_c.feed(&data, Instant::now()) {
                            self.close();
                            continue;
                        }
                        if self.ready {
                            self.input.handed_over(data.len());
                            self.send(Command::TerminalInput { data });
                        } else {
                            self.pending.extend_from_slice(&data);
                        }
                    }
                    LocalEvent::InputEnd => {
                        tracing::debug!("stdin ended");
                        self.stdin_ended_at = Some(Instant::now());
                        if self.ready {
                            self.end_input();
                        }
                        if self.interactive {
                            // The terminal went away: nothing more can be typed.
                            self.close();
                        }
                    }
                    LocalEvent::InputError(e) => {
                        tracing::warn!(error = %e, "reading stdin failed");
                        self.stdin_ended_at = Some(Instant::now());
                        self.close();
                    }
                    LocalEvent::Resize { cols, rows } => {
                        tracing::debug!(cols, rows, "terminal resized");
                        self.send(Command::TerminalResize { cols, rows });
                    }
                },
            }
            if self.result.is_some() {
                // Finished is the last output that matters; the driver flushes and stops shortly.
                break;
            }
            let now = Instant::now();
            if let (Some(ended), Some(ready_at)) = (self.stdin_ended_at, self.ready_at) {
                // Quiet since the script was handed over (at readiness at the earliest) and since the
                // last output.
                let quiet_since = ended.max(ready_at).max(self.last_output);
                if now.saturating_duration_since(quiet_since) >= STDIN_SETTLE {
                    self.close();
                }
            }
            if let Some(sent) = self.close_sent_at {
                if now.saturating_duration_since(sent) >= CLOSE_GRACE {
                    tracing::warn!("the session did not close in time; exiting");
                    break;
                }
            }
        }
        match self.result.take() {
            Some(Err(e)) => Err(e.into()),
            Some(Ok(())) => Ok(()),
            // Closed locally and the driver stopped (or the grace ran out) without a verdict.
            None if self.close_sent_at.is_some() => Ok(()),
            None => Err(CliError::Launch(LaunchError::Disconnected(
                "the driver stopped without a result".into(),
            ))),
        }
    }
}

// ------------------------------------------------------------------------------------------------ tunnel

/// `pam-lite tunnel` with an already loaded ticket and a bound listener.
///
/// Scripts learn that the tunnel is up from one JSON line on stdout (`{"listening": "ADDR:PORT"}`) or
/// from `--ready-file`; SIGINT/SIGTERM close every connection with a reason (the core's `Command::Close`:
/// `CloseReason::Normal`, after what is queued has been handed to the tube) and exit 0.
pub fn tunnel(args: &TunnelArgs, ticket: Ticket, listener: TcpListener) -> Result<(), CliError> {
    let shutdown = Shutdown::install()?;
    let (env, ticket) = prepare(&args.common, ticket)?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::local("cannot read the listener address", e))?;
    let cfg = client_config(&ticket, &env, SessionKind::Tunnel, &args.common);
    tracing::info!(?cfg, runtime = ?args.common.runtime, "opening the tunnel");
    let start = Instant::now();
    let mut timing = TimingReport::new(start, env.timing, args.common.timing_json.clone())?;
    let client = Client::new(cfg, seed(), start)?;
    eprintln!("pam-lite: listening on {local} (connections wait until the tunnel is ready)");

    let (tx, rx) = mpsc::channel();
    let inputs = runner::start(
        args.common.runtime,
        client,
        driver_config(&ticket, &env, args.common.udp_bind(args.source.demo)),
        Some(listener),
        tx,
    )?;
    let mut spinner = Spinner::start("connecting", true);
    let mut result = None;
    let mut closing_since: Option<Instant> = None;
    loop {
        if closing_since.is_none() && shutdown.requested() {
            spinner.stop();
            eprintln!(
                "pam-lite: {}: closing the tunnel's connections",
                shutdown.signal_name()
            );
            closing_since = Some(Instant::now());
            let _ = inputs(Input::Command(Command::Close));
        }
        if let Some(since) = closing_since {
            if since.elapsed() >= CLOSE_GRACE {
                tracing::warn!("the tunnel did not close in time; exiting");
                break;
            }
        }
        let event = match rx.recv_timeout(TICK) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match event {
            Event::NodeStopped => break,
            Event::Node(Output::Checkpoint(cp)) => {
                spinner.set(&cp.name);
                timing.push(cp);
            }
            Event::Node(Output::TubeReady) => {
                spinner.stop();
                let target = ticket
                    .target
                    .as_ref()
                    .map(|t| format!(" -> {}:{}", t.host, t.port))
                    .unwrap_or_default();
                eprintln!("pam-lite: tunnel ready: {local} -> gateway{target}");
                announce_ready(local, args.ready_file.as_deref())?;
                timing.report(false)?;
            }
            Event::Node(Output::Finished(r)) => {
                result = Some(r);
                break;
            }
            Event::Node(_) | Event::Local(_) => {}
        }
    }
    spinner.stop();
    timing.report(false)?;
    if closing_since.is_some() {
        // Asked to stop: whatever the node reported while closing, this is the clean end the user wanted.
        eprintln!("pam-lite: tunnel closed");
        return Ok(());
    }
    match result {
        Some(Ok(())) => {
            eprintln!("pam-lite: tunnel closed");
            Ok(())
        }
        Some(Err(e)) => Err(e.into()),
        None => Err(CliError::Launch(LaunchError::Disconnected(
            "the driver stopped without a result".into(),
        ))),
    }
}

/// The readiness line for scripts: `{"listening": "127.0.0.1:PORT"}` on stdout, and in `ready_file`
/// (written to a temporary name and renamed, so a watcher never reads half a line).
pub fn announce_ready(local: SocketAddr, ready_file: Option<&Path>) -> Result<(), CliError> {
    let line = serde_json::json!({ "listening": local.to_string() }).to_string();
    // The file first: whoever reads the stdout line may look for the file right away.
    if let Some(path) = ready_file {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        std::fs::write(&tmp, format!("{line}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| CliError::local(format!("cannot write {}", path.display()), e))?;
    }
    let mut out = std::io::stdout();
    // stdout may be closed by a script that only wanted the file: not an error.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    Ok(())
}
