//! pam-lite launches inside the benchmark process: a core [`Client`] on one of the two drivers, with a
//! local TCP listener piped through the tube exactly as `pam-lite tunnel` does it (a pump thread is the
//! single consumer of the driver's outputs; connections are accepted only after `TubeReady`).
//!
//! The [`ClientConfig`] comes from `DemoTicket::tunnel_client_config` (conversation type `tunnel`, no
//! target host in the offer, no credential inputs, as `cli/src/launch.rs` builds it for a tunnel); the
//! CLI process rows of the benchmark run the real binary on the same ticket instead.

use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use pam_lite_core::client::{Client, ClientConfig};
use pam_lite_core::profile::Profile;
use pam_lite_core::timing::Checkpoint;
use pam_lite_core::{Command, Input, LaunchError, Output};
use pam_lite_driver_kit::runtime::{self as driver, Forward as _, InputSink as _, NodeHandle as _};
use pam_lite_driver_kit::DriverConfig;
use pam_lite_emulator::DemoTicket;
use rand_core::{OsRng, RngCore};
use serde::Serialize;

/// Which driver runs the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Smol,
    Blocking,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Smol => "smol",
            Runtime::Blocking => "blocking",
        }
    }
}

/// How long closing a tunnel may take before the benchmark stops waiting for its driver.
pub const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// The launch configuration for `ticket` (the emulator's own ticket → `ClientConfig` path, shared with
/// the emulator's tests), trickle ICE, with `profile` as is (the process environment is deliberately not
/// applied: every row runs the schedule its name says).
pub fn client_config(ticket: &DemoTicket, profile: Profile) -> Result<ClientConfig, String> {
    ticket.tunnel_client_config(profile, true, unix_ms())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// 32 bytes from the OS for the core's RNG.
pub fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    OsRng.fill_bytes(&mut s);
    s
}

/// What the pump thread reports.
enum Event {
    Checkpoint(Checkpoint),
    Ready(Instant),
    Finished(Result<(), LaunchError>),
    Stopped,
}

type InputFn = Arc<dyn Fn(Input) -> bool + Send + Sync>;

/// A launch in progress or an open tunnel: connect to [`Tunnel::listen`] to use it.
pub struct Tunnel {
    pub listen: SocketAddr,
    pub started: Instant,
    events: Receiver<Event>,
    inputs: InputFn,
    pump: Option<JoinHandle<()>>,
    ready_at: Option<Instant>,
    finished: Option<Result<(), LaunchError>>,
    stopped: bool,
    checkpoints: Vec<Checkpoint>,
}

/// The pump thread, the same for every runtime (the driver kit's [`driver::Runtime`]): the single consumer
/// of the node's outputs.
fn pump<R: driver::Runtime>(
    handle: R::Handle,
    listener: TcpListener,
    events: Sender<Event>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("bench-pump".into())
        .spawn(move || {
            let mut listener = Some(listener);
            let mut forwarder: Option<R::Forwarder> = None;
            while let Some(out) = handle.recv() {
                let out = match &forwarder {
                    Some(f) => match f.dispatch(out) {
                        Some(rest) => rest,
                        None => continue,
                    },
                    None => out,
                };
                let event = match out {
                    Output::TubeReady => {
                        let at = Instant::now();
                        if let Some(l) = listener.take() {
                            match R::serve_tunnel(l, &handle) {
                                Ok(f) => forwarder = Some(f),
                                Err(e) => tracing::error!(error = %e, "serve_tunnel failed"),
                            }
                        }
                        Event::Ready(at)
                    }
                    Output::Checkpoint(cp) => Event::Checkpoint(cp),
                    Output::Finished(r) => Event::Finished(r),
                    _ => continue,
                };
                if events.send(event).is_err() {
                    break;
                }
            }
            drop(forwarder);
            if let Err(e) = handle.join() {
                tracing::debug!(error = %e, "driver ended with an error");
            }
            let _ = events.send(Event::Stopped);
        })
}

/// Spawn `client` on runtime `R` and its pump thread.
fn start<R: driver::Runtime>(
    client: Client,
    listener: TcpListener,
    events: Sender<Event>,
) -> Result<(InputFn, JoinHandle<()>), String> {
    let handle = R::spawn(client, DriverConfig::default())
        .map_err(|e| format!("{} driver: {e}", R::NAME))?;
    let sender = handle.sender();
    let pump = pump::<R>(handle, listener, events).map_err(|e| format!("pump thread: {e}"))?;
    Ok((Arc::new(move |i| sender.send(i)), pump))
}

impl Tunnel {
    /// Start a launch of `profile` on `runtime` against the emulator behind `ticket`. The clock of the
    /// launch starts right before the core client is created (where the CLI starts it).
    pub fn open(ticket: &DemoTicket, runtime: Runtime, profile: Profile) -> Result<Tunnel, String> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("listen: {e}"))?;
        let listen = listener.local_addr().map_err(|e| e.to_string())?;
        let cfg = client_config(ticket, profile)?;
        let (tx, events) = mpsc::channel();
        let started = Instant::now();
        let client = Client::new(cfg, seed(), started).map_err(|e| format!("client: {e}"))?;
        let (inputs, pump) = match runtime {
            Runtime::Blocking => start::<pam_lite_blocking::Blocking>(client, listener, tx)?,
            Runtime::Smol => start::<pam_lite_smol::Smol>(client, listener, tx)?,
        };
        Ok(Tunnel {
            listen,
            started,
            events,
            inputs,
            pump: Some(pump),
            ready_at: None,
            finished: None,
            stopped: false,
            checkpoints: Vec::new(),
        })
    }

    fn absorb(&mut self, ev: Event) {
        match ev {
            Event::Checkpoint(cp) => self.checkpoints.push(cp),
            Event::Ready(at) => self.ready_at = Some(at),
            Event::Finished(r) => self.finished = Some(r),
            Event::Stopped => self.stopped = true,
        }
    }

    /// Take every event that arrived, waiting at most `wait` for the first.
    fn pump_events(&mut self, wait: Duration) {
        match self.events.recv_timeout(wait) {
            Ok(ev) => self.absorb(ev),
            Err(RecvTimeoutError::Timeout) => return,
            Err(RecvTimeoutError::Disconnected) => {
                self.stopped = true;
                return;
            }
        }
        while let Ok(ev) = self.events.try_recv() {
            self.absorb(ev);
        }
    }

    /// Wait for `TubeReady` (or the launch's failure) until `deadline`.
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<Instant, String> {
        loop {
            if let Some(at) = self.ready_at {
                return Ok(at);
            }
            if let Some(Err(e)) = &self.finished {
                return Err(format!("launch failed: {e}"));
            }
            if self.finished.is_some() || self.stopped {
                return Err("the launch ended before the tube was ready".into());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err("no TubeReady before the deadline".into());
            }
            self.pump_events(deadline - now);
        }
    }

    /// `TubeReady`, if it came (events that arrived are taken first).
    pub fn ready_at(&mut self) -> Option<Instant> {
        self.pump_events(Duration::ZERO);
        self.ready_at
    }

    /// The checkpoints so far, as offsets from the launch start.
    pub fn waterfall(&mut self) -> Vec<Mark> {
        self.pump_events(Duration::ZERO);
        self.checkpoints
            .iter()
            .map(|c| Mark {
                phase: c.phase.to_string(),
                name: c.name.clone(),
                at: c.at.saturating_duration_since(self.started),
                summary: c.is_summary(),
            })
            .collect()
    }

    /// Why the launch ended, if it did.
    pub fn failure(&mut self) -> Option<String> {
        self.pump_events(Duration::ZERO);
        match &self.finished {
            Some(Err(e)) => Some(e.to_string()),
            _ => None,
        }
    }

    /// Close the tunnel and wait (at most [`CLOSE_WAIT`]) for the driver to stop.
    pub fn close(mut self) {
        let _ = (self.inputs)(Input::Command(Command::Close));
        let deadline = Instant::now() + CLOSE_WAIT;
        while !self.stopped && Instant::now() < deadline {
            self.pump_events(deadline.saturating_duration_since(Instant::now()));
        }
        if self.stopped {
            if let Some(p) = self.pump.take() {
                let _ = p.join();
            }
        } else {
            tracing::warn!("a tunnel did not stop within {CLOSE_WAIT:?}; leaving it behind");
        }
    }
}

/// One measured launch: time to `TubeReady` and to the first byte echoed through the tunnel.
#[derive(Debug, Clone)]
pub struct LaunchSample {
    pub tube_ready: Duration,
    pub first_echo: Duration,
    pub waterfall: Vec<Mark>,
}

/// One checkpoint of one launch, as an offset from its start (a core `Checkpoint`, or a moment the
/// benchmark itself observed, under [`BENCH_PHASE`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub phase: String,
    pub name: String,
    pub at: Duration,
    /// A Commander-style summary line rather than a checkpoint.
    pub summary: bool,
}

/// The phase of the moments the benchmark observes from outside the launch.
pub const BENCH_PHASE: &str = "pam-lite-bench";

impl Mark {
    pub fn bench(name: &str, at: Duration) -> Mark {
        Mark {
            phase: BENCH_PHASE.into(),
            name: name.into(),
            at,
            summary: false,
        }
    }
}

/// Launch, connect to the tunnel listener right away (the connection waits in the backlog until the
/// tube is ready, as a script's would), send one byte, wait for its echo; then close.
pub fn measure(
    ticket: &DemoTicket,
    runtime: Runtime,
    profile: Profile,
    limit: Duration,
) -> Result<LaunchSample, String> {
    let mut tunnel = Tunnel::open(ticket, runtime, profile)?;
    let deadline = tunnel.started + limit;
    let echoed = crate::targets::first_echo(tunnel.listen, deadline);
    let result = match echoed {
        Ok((stream, at)) => {
            drop(stream);
            match tunnel.ready_at() {
                Some(ready) => Ok(LaunchSample {
                    tube_ready: ready.saturating_duration_since(tunnel.started),
                    first_echo: at.saturating_duration_since(tunnel.started),
                    waterfall: tunnel.waterfall(),
                }),
                None => Err("an echo came back without TubeReady".to_string()),
            }
        }
        Err(e) => Err(match tunnel.failure() {
            Some(f) => f,
            None => format!("no echo within {limit:?}: {e}"),
        }),
    };
    tunnel.close();
    result
}
