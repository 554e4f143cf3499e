//! `pam-lite`: the command-line client. See `pam-lite --help`, cli/TICKET.md and cli/EXIT_CODES.md.
//!
//! `main` only parses, sets up logging and maps the outcome to an exit code; every subcommand returns a
//! [`CliError`] so that the exit code is decided in exactly one place, after every guard (raw mode,
//! spinner) has been dropped and the terminal is restored.

mod args;
#[cfg(feature = "demo")]
mod demo;
#[cfg(not(feature = "demo"))]
#[path = "demo_off.rs"]
mod demo;
mod docs;
mod launch;
mod logging;
mod relay;
mod runner;
mod signals;
mod spinner;
mod ssh;
mod stdio;
mod terminal;
mod timing_report;

// The ticket, environment and exit-code modules live in the library (cli/src/lib.rs) so the fuzz targets
// reach the same parsers; `crate::ticket` etc. keep working through this import.
use pam_lite::{exit, secret, settings, ticket};

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, TicketCommand};
use crate::exit::CliError;
use crate::ticket::Ticket;

fn main() -> ExitCode {
    // Before any ticket is read: no core dump of this process may hold its secrets.
    secret::disable_core_dumps();
    terminal::install_panic_hook();
    let cli = Cli::parse();
    let verbose = match &cli.command {
        Command::Launch(a) => a.common.verbose,
        Command::Tunnel(a) => a.common.verbose,
        Command::Emulator(a) => a.verbose,
        Command::Ssh(a) => a.common.verbose,
        Command::Ticket(_) | Command::Completions { .. } | Command::Man { .. } => 0,
    };
    logging::init(verbose);
    let result = run(cli);
    // Every guard is gone by now: the terminal is back to normal before anything is printed.
    terminal::restore();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one place a failure is printed: one line, control characters escaped, capped, however
            // much outside text the error carries (the core's errors sanitise their parts already).
            eprintln!(
                "pam-lite: {}",
                pam_lite_core::text::sanitize_max(&e.to_string(), 2000)
            );
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Ticket(TicketCommand::Check { file }) => ticket_check(&file),
        Command::Launch(args) => {
            launch::check_stdin(&args)?;
            // `demo` keeps the in-process emulator alive until the launch is over.
            let (ticket, demo) = match &args.source.ticket {
                Some(path) => (Ticket::load(path)?, None),
                None => {
                    let d = demo::terminal()?;
                    (d.ticket.clone(), Some(d))
                }
            };
            let result = launch::launch(&args, ticket);
            leave_running(demo);
            result
        }
        Command::Tunnel(args) if args.stdio => {
            let (ticket, demo) = match &args.source.ticket {
                Some(path) => (Ticket::load(path)?, None),
                None => {
                    let d = demo::tunnel(args.target.as_deref())?;
                    (d.ticket.clone(), Some(d))
                }
            };
            let result = stdio::tunnel_stdio(&args, ticket);
            leave_running(demo);
            result
        }
        Command::Tunnel(args) => {
            let Some(addr) = args.listen else {
                return Err(CliError::Usage("--listen or --stdio is required".into()));
            };
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| CliError::local(format!("cannot listen on {addr}"), e))?;
            let (ticket, demo) = match &args.source.ticket {
                Some(path) => (Ticket::load(path)?, None),
                None => {
                    let d = demo::tunnel(args.target.as_deref())?;
                    (d.ticket.clone(), Some(d))
                }
            };
            let result = launch::tunnel(&args, ticket, listener);
            leave_running(demo);
            result
        }
        Command::Emulator(args) => demo::run_emulator(&args),
        Command::Ssh(args) => ssh::run(&args),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { dir } => docs::man(dir.as_deref()),
    }
}

/// The process exits right after a launch; a clean emulator shutdown would only delay the exit (or hang
/// it, if a session thread is stuck), and the OS reclaims everything anyway (its shell gets SIGHUP).
fn leave_running(demo: Option<demo::Demo>) {
    std::mem::forget(demo);
}

/// `pam-lite ticket check FILE`.
fn ticket_check(file: &std::path::Path) -> Result<(), CliError> {
    let ticket = Ticket::load(file)?;
    println!("launch ticket {}: OK", file.display());
    print!("{}", ticket.describe());
    for w in ticket.warnings(unix_now_secs()) {
        println!("warning: {}", pam_lite_core::text::sanitize_max(&w, 1000));
    }
    Ok(())
}

fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
