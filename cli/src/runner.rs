//! Runs a client node on the chosen driver and turns everything the CLI waits for into one event
//! stream.
//!
//! Why one stream: the session loop must react to node outputs (terminal bytes, checkpoints, the end)
//! *and* to local events (keystrokes, stdin end, resizes) without polling either. A pump thread owns the
//! driver handle, hands tunneled-connection outputs to the runtime's forwarder, and sends the rest into
//! the same channel the stdin and resize threads write to. It is written once, generic over the driver
//! kit's `Runtime`.

use std::net::TcpListener;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread;

use pam_lite_core::client::Client;
use pam_lite_core::{Input, Output};
use pam_lite_driver_kit::runtime::{self as driver, Forward as _, InputSink as _, NodeHandle as _};

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
pub use pam_lite_driver_kit::flow::FlowControl;
/// Driver settings the CLI chooses (shared by both runtimes).
pub use pam_lite_driver_kit::DriverConfig;

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
        Runtime::Blocking => {
            start_on::<pam_lite_blocking::Blocking>(client, config, listener, events)
        }
        Runtime::Smol => start_on::<pam_lite_smol::Smol>(client, config, listener, events),
    }
}

/// The same for every runtime (the driver kit's [`driver::Runtime`]): spawn the node, then a pump thread.
fn start_on<R: driver::Runtime>(
    client: Client,
    config: DriverConfig,
    listener: Option<TcpListener>,
    events: Sender<Event>,
) -> Result<Started, CliError> {
    let handle = R::spawn(client, config)
        .map_err(|e| CliError::local(format!("cannot start the {} driver", R::NAME), e))?;
    let sender = handle.sender();
    let inputs: InputFn = Arc::new(move |input| sender.send(input));
    let flow = handle.flow();
    thread::Builder::new()
        .name("pam-lite-pump".into())
        .spawn(move || pump::<R>(handle, listener, &events))
        .map_err(|e| CliError::local("cannot start a thread", e))?;
    Ok(Started { inputs, flow })
}

/// The pump thread: the single consumer of the node's outputs.
fn pump<R: driver::Runtime>(
    handle: R::Handle,
    mut listener: Option<TcpListener>,
    events: &Sender<Event>,
) {
    let mut forwarder: Option<R::Forwarder> = None;
    while let Some(out) = handle.recv() {
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
                match R::serve_tunnel(l, &handle) {
                    Ok(f) => forwarder = Some(f),
                    Err(e) => tracing::error!(error = %e, "cannot serve the tunnel listener"),
                }
            }
        }
        if events.send(Event::Node(out)).is_err() {
            break;
        }
    }
    drop(forwarder);
    if let Err(e) = handle.join() {
        tracing::warn!(error = %e, "driver ended with an error");
    }
    let _ = events.send(Event::NodeStopped);
}
