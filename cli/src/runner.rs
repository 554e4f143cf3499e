//! Runs a client node on the chosen driver and turns everything the CLI waits for into one event
//! stream.
//!
//! Why one stream: the session loop must react to node outputs (terminal bytes, checkpoints, the end)
//! *and* to local events (keystrokes, stdin end, resizes) without polling either. A pump thread owns the
//! driver handle, hands tunneled-connection outputs to the runtime's forwarder, and sends the rest into
//! the same channel the stdin and resize threads write to.

use std::net::TcpListener;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread;

use pam_lite_core::client::Client;
use pam_lite_core::{Input, Output};

use crate::args::Runtime;
use crate::exit::CliError;
use crate::terminal::LocalEvent;

/// One thing the session loop must handle.
#[derive(Debug)]
pub enum Event {
    Node(Output),
    /// The driver stopped: no more node outputs.
    NodeStopped,
    Local(LocalEvent),
}

/// Feeds inputs to the running node from any thread; `false` once the driver has stopped.
pub type InputFn = Arc<dyn Fn(Input) -> bool + Send + Sync>;

/// The driver's flow control (both runtimes share the type): a local reader waits here while its
/// connection is paused.
pub use pam_lite_blocking::flow::FlowControl;
/// Driver settings the CLI chooses (shared by both runtimes).
pub use pam_lite_blocking::DriverConfig;

/// A started node: how to feed it, and its flow control for readers the CLI runs itself (`--stdio`).
pub struct Started {
    pub inputs: InputFn,
    pub flow: Arc<FlowControl>,
}

/// Start `client` on `runtime`. Outputs arrive on `events` as [`Event::Node`], then one
/// [`Event::NodeStopped`]. With `listener`, every connection accepted on it after `TubeReady` becomes a
/// tunneled connection (the runtime's `forward::serve_tunnel`).
pub fn start(
    runtime: Runtime,
    client: Client,
    config: DriverConfig,
    listener: Option<TcpListener>,
    events: Sender<Event>,
) -> Result<InputFn, CliError> {
    start_with_flow(runtime, client, config, listener, events).map(|s| s.inputs)
}

/// [`start`], also handing out the driver's flow control.
pub fn start_with_flow(
    runtime: Runtime,
    client: Client,
    config: DriverConfig,
    listener: Option<TcpListener>,
    events: Sender<Event>,
) -> Result<Started, CliError> {
    match runtime {
        Runtime::Blocking => start_blocking(client, config, listener, events),
        Runtime::Smol => start_smol(client, config, listener, events),
    }
}

/// The pump thread, identical for both runtimes (their `Handle` and `forward` APIs have the same shape).
macro_rules! pump {
    ($handle:ident, $forward:path, $listener:ident, $events:ident) => {{
        use $forward as forward;
        thread::Builder::new()
            .name("pam-lite-pump".into())
            .spawn(move || {
                let mut listener = $listener;
                let mut forwarder: Option<forward::Forwarder> = None;
                while let Some(out) = $handle.recv() {
                    let out = match &forwarder {
                        Some(f) => match f.dispatch(out) {
                            Some(rest) => rest,
                            None => continue,
                        },
                        None => out,
                    };
                    if matches!(out, Output::TubeReady) {
                        // Accept only now: connections made earlier wait in the listen backlog.
                        if let Some(l) = listener.take() {
                            match forward::serve_tunnel(l, &$handle) {
                                Ok(f) => forwarder = Some(f),
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot serve the tunnel listener")
                                }
                            }
                        }
                    }
                    if $events.send(Event::Node(out)).is_err() {
                        break;
                    }
                }
                drop(forwarder);
                if let Err(e) = $handle.join() {
                    tracing::warn!(error = %e, "driver ended with an error");
                }
                let _ = $events.send(Event::NodeStopped);
            })
            .map_err(|e| CliError::local("cannot start a thread", e))
    }};
}

fn start_blocking(
    client: Client,
    config: DriverConfig,
    listener: Option<TcpListener>,
    events: Sender<Event>,
) -> Result<Started, CliError> {
    let handle = pam_lite_blocking::spawn(client, config)
        .map_err(|e| CliError::local("cannot start the blocking driver", e))?;
    let sender = handle.sender();
    let inputs: InputFn = Arc::new(move |input| sender.send(input));
    let flow = handle.flow();
    pump!(handle, pam_lite_blocking::forward, listener, events)?;
    Ok(Started { inputs, flow })
}

fn start_smol(
    client: Client,
    config: DriverConfig,
    listener: Option<TcpListener>,
    events: Sender<Event>,
) -> Result<Started, CliError> {
    let handle = pam_lite_smol::spawn(client, config)
        .map_err(|e| CliError::local("cannot start the smol driver", e))?;
    let sender = handle.sender();
    let inputs: InputFn = Arc::new(move |input| sender.send(input));
    let flow = handle.flow();
    pump!(handle, pam_lite_smol::forward, listener, events)?;
    Ok(Started { inputs, flow })
}
