//! `pam-lite tunnel --stdio`: one tunneled connection carried on stdin/stdout, for
//! `ssh -o ProxyCommand='pam-lite tunnel --ticket t.json --stdio' user@host` (what `cloudflared access tcp`
//! and `tailscale nc` do for their users).
//!
//! Why not a loopback listener and the usual forwarder: any local user could connect to that port
//! before we do and get the tunnel. Here the connection's bytes go straight between the node and this
//! process's stdin/stdout: a reader thread feeds `Command::Send` (waiting on the driver's flow control
//! while the tube is full, like the forwarder's readers), and the session loop writes
//! `Output::ConnectionData` to stdout, crediting each write (`Command::Delivered`: receive-side flow
//! control). The process exits when the connection ends, with exit code 12
//! when it never opened (the gateway could not reach the target).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_core::client::Client;
use pam_lite_core::tube::CloseReason;
use pam_lite_core::{Command, ConnNo, Input, LaunchError, Output};

use crate::args::TunnelArgs;
use crate::exit::CliError;
use crate::launch::{self, SessionKind, CLOSE_GRACE, TICK};
use crate::runner::{self, Event, FlowControl, InputFn};
use crate::signals::Shutdown;
use crate::ticket::Ticket;
use crate::timing_report::TimingReport;

/// The one tunneled connection.
const CONN: ConnNo = 1;
/// Bytes read from stdin per `Command::Send` (the forwarders' read size).
const READ_CHUNK: usize = 16 * 1024;
/// From tube ready until the gateway has connected the target (its own connect bound is 10 s).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The tunnel is being set up.
    Connecting,
    /// `OpenConnection` sent at this time; waiting for the gateway's answer.
    Opening(Instant),
    Open,
    /// Finished (or being closed) with this outcome.
    Done,
}

/// `pam-lite tunnel --stdio`.
pub fn tunnel_stdio(args: &TunnelArgs, ticket: Ticket) -> Result<(), CliError> {
    let shutdown = Shutdown::install()?;
    let (env, ticket) = launch::prepare(&args.common, ticket)?;
    let cfg = launch::client_config(&ticket, &env, SessionKind::Tunnel, &args.common);
    tracing::info!(?cfg, runtime = ?args.common.runtime, "opening the tunnel for stdio");
    let start = Instant::now();
    let mut timing = TimingReport::new(start, env.timing, args.common.timing_json.clone())?;
    let client = Client::new(cfg, launch::seed(), start)?;
    let (tx, rx) = mpsc::channel();
    let started = runner::start_with_flow(
        args.common.runtime,
        client,
        launch::driver_config(&ticket, &env, args.common.udp_bind(args.source.demo)),
        None,
        tx,
    )?;
    let inputs = started.inputs;
    // Receive-side flow control: this loop credits what reached stdout (`Command::Delivered`), so a
    // reader that stops (ssh blocked on its terminal) pauses the tube instead of growing memory.
    started.flow.claim_delivery();
    let alive = Arc::new(AtomicBool::new(true));
    let mut stdout = std::io::stdout().lock();
    let mut state = State::Connecting;
    // What ended the connection: Ok (a normal end) or the error to exit with.
    let mut outcome: Option<Result<(), CliError>> = None;
    let mut closing_since: Option<Instant> = None;

    let close = |closing_since: &mut Option<Instant>| {
        if closing_since.is_none() {
            *closing_since = Some(Instant::now());
            let _ = inputs(Input::Command(Command::Close));
        }
    };

    loop {
        if shutdown.requested() && outcome.is_none() {
            tracing::info!(signal = shutdown.signal_name(), "closing the connection");
            outcome = Some(Ok(()));
            state = State::Done;
            close(&mut closing_since);
        }
        if let State::Opening(since) = state {
            if since.elapsed() >= OPEN_TIMEOUT {
                outcome = Some(Err(CliError::Connection(format!(
                    "the tunneled connection did not open within {} s",
                    OPEN_TIMEOUT.as_secs()
                ))));
                state = State::Done;
                close(&mut closing_since);
            }
        }
        if let Some(since) = closing_since {
            if since.elapsed() >= CLOSE_GRACE {
                tracing::debug!("the tunnel did not close in time; exiting");
                break;
            }
        }
        let event = match rx.recv_timeout(TICK) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let out = match event {
            Event::NodeStopped => break,
            Event::Local(_) => continue,
            Event::Node(out) => out,
        };
        match out {
            Output::Checkpoint(cp) => timing.push(cp),
            Output::TubeReady if state == State::Connecting => {
                timing.report(false)?;
                tracing::info!("tunnel ready; opening the connection");
                if !inputs(Input::Command(Command::OpenConnection { conn: CONN })) {
                    break;
                }
                state = State::Opening(Instant::now());
                spawn_stdin_reader(inputs.clone(), started.flow.clone(), alive.clone())?;
            }
            Output::ConnectionOpened { conn: CONN } if matches!(state, State::Opening(_)) => {
                state = State::Open;
            }
            Output::ConnectionData { conn: CONN, data } => {
                let written = stdout.write_all(&data).and_then(|()| stdout.flush());
                if written.is_ok() {
                    let bytes = data.len();
                    let _ = inputs(Input::Command(Command::Delivered { conn: CONN, bytes }));
                } else {
                    // Our reader (ssh) is gone: the connection is over from our side.
                    tracing::debug!("stdout closed; closing the connection");
                    outcome.get_or_insert(Ok(()));
                    state = State::Done;
                    close(&mut closing_since);
                }
            }
            Output::ConnectionEof { conn: CONN } => {
                let _ = stdout.flush();
            }
            Output::ConnectionClosed { conn: CONN, reason } => {
                alive.store(false, Ordering::Relaxed);
                let was = state;
                state = State::Done;
                outcome.get_or_insert_with(|| match was {
                    State::Opening(_) | State::Connecting => Err(CliError::Connection(format!(
                        "the gateway could not open the connection to {} ({})",
                        target_text(&ticket),
                        reason_text(&reason)
                    ))),
                    _ if is_error(&reason) => Err(CliError::Connection(format!(
                        "the tunneled connection ended with an error ({})",
                        reason_text(&reason)
                    ))),
                    _ => Ok(()),
                });
                close(&mut closing_since);
            }
            Output::Finished(r) => {
                alive.store(false, Ordering::Relaxed);
                match r {
                    Err(e) => {
                        outcome.get_or_insert(Err(e.into()));
                    }
                    Ok(()) => {
                        outcome.get_or_insert(Ok(()));
                    }
                }
                break;
            }
            _ => {}
        }
    }
    alive.store(false, Ordering::Relaxed);
    let _ = stdout.flush();
    let _ = timing.report(false);
    match outcome {
        Some(r) => r,
        None => Err(CliError::Launch(LaunchError::Disconnected(
            "the driver stopped without a result".into(),
        ))),
    }
}

/// Stdin → `Command::Send`, paused while the tube is full; end of stdin → `Command::SendEof` (ssh
/// half-closes when it is done writing).
fn spawn_stdin_reader(
    inputs: InputFn,
    flow: Arc<FlowControl>,
    alive: Arc<AtomicBool>,
) -> Result<(), CliError> {
    thread::Builder::new()
        .name("pam-lite-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                if !flow.wait(CONN, || alive.load(Ordering::Relaxed)) {
                    return;
                }
                match stdin.read(&mut buf) {
                    Ok(0) => {
                        tracing::debug!("stdin ended");
                        let _ = inputs(Input::Command(Command::SendEof { conn: CONN }));
                        return;
                    }
                    Ok(n) => {
                        if !alive.load(Ordering::Relaxed) {
                            return;
                        }
                        let data = buf.get(..n).unwrap_or_default().to_vec();
                        if !inputs(Input::Command(Command::Send { conn: CONN, data })) {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "reading stdin failed");
                        // `Error`, not `ConnectionLost` (which is the target's normal close).
                        let _ = inputs(Input::Command(Command::CloseConnection {
                            conn: CONN,
                            reason: CloseReason::Error,
                        }));
                        return;
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|e| CliError::local("cannot start the stdin reader", e))
}

fn target_text(ticket: &Ticket) -> String {
    ticket
        .target
        .as_ref()
        .map(|t| format!("{}:{}", t.host, t.port))
        .unwrap_or_else(|| "the target".into())
}

/// A close reason that means something went wrong (anything but a normal close by either side).
///
/// `ConnectionLost` from the gateway is the target closing its end: Keeper's gateway reports every
/// backend close that way ("Backend connection closed unexpectedly"), the normal end of a proxied
/// session included (the server's close after `exit`, or after our EOF); stdout has had every byte.
fn is_error(reason: &CloseReason) -> bool {
    !matches!(
        reason,
        CloseReason::Normal
            | CloseReason::Client
            | CloseReason::UpstreamClosed
            | CloseReason::ConnectionLost
    )
}

fn reason_text(reason: &CloseReason) -> String {
    format!("{reason:?}")
}
