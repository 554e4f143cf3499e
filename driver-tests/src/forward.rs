//! The forwarder suite: every runtime's `serve_tunnel` / `dial_targets` must pipe local TCP connections
//! the same way (numbering, half-close, resets, refused targets), through its [`Runtime`] implementation.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use pam_lite_core::{Command, Input, Output};
use pam_lite_driver_kit::runtime::{Forward, InputSink, NodeHandle, Runtime};
use pam_lite_driver_kit::DriverConfig;

use crate::{puppet, tcp_echo_server, TunnelEcho};

const WAIT: Duration = Duration::from_secs(5);

/// Run the single `recv` consumer: dispatch, and pass the rest to `rest`.
fn route<R: Runtime>(handle: R::Handle, forwarder: R::Forwarder, rest: mpsc::Sender<Output>) {
    thread::spawn(move || {
        while let Some(out) = handle.recv() {
            if let Some(other) = forwarder.dispatch(out) {
                let _ = rest.send(other);
            }
        }
    });
}

pub fn client_side_pipes_both_ways_with_half_close_and_numbers_connections<R: Runtime>() {
    let node = TunnelEcho::default();
    let opened = node.opened.clone();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let forwarder = R::serve_tunnel(listener, &handle).unwrap();
    let (rest_tx, _rest) = mpsc::channel();
    route::<R>(handle, forwarder, rest_tx);

    for round in 0..3u8 {
        let mut client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i as u8) ^ round).collect();
        let mut writer = client.try_clone().unwrap();
        let expected = payload.clone();
        let sender = thread::spawn(move || {
            writer.write_all(&payload).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut echoed = Vec::new();
        client.read_to_end(&mut echoed).unwrap(); // EOF arrives through the tunnel
        sender.join().unwrap();
        assert_eq!(echoed, expected);
    }
    assert_eq!(*opened.lock().unwrap(), vec![1, 2, 3]);
}

pub fn client_reset_becomes_close_connection<R: Runtime>() {
    let node = TunnelEcho::default();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let forwarder = R::serve_tunnel(listener, &handle).unwrap();
    let (rest_tx, rest) = mpsc::channel();
    route::<R>(handle, forwarder, rest_tx);
    {
        let client = TcpStream::connect(addr).unwrap();
        // SO_LINGER 0: close sends a RST, which the reader sees as an error.
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        (&client).write_all(b"x").unwrap();
        thread::sleep(Duration::from_millis(50));
    }
    let end = Instant::now() + WAIT;
    let mut saw = None;
    while Instant::now() < end {
        if let Ok(Output::TerminalOutput(t)) = rest.recv_timeout(Duration::from_millis(50)) {
            saw = Some(String::from_utf8(t).unwrap());
            break;
        }
    }
    assert_eq!(saw.as_deref(), Some("closed 1"));
}

pub fn gateway_side_dials_target_and_pipes_with_half_close<R: Runtime>() {
    let echo = tcp_echo_server();
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    let forwarder = R::dial_targets(&handle, echo);
    let sender = handle.sender();
    let (rest_tx, _rest) = mpsc::channel();
    route::<R>(handle, forwarder, rest_tx);
    let nudge = |out: Output| {
        ctl.script(out);
        sender.input(Input::Timeout);
    };
    nudge(Output::ConnectTarget { conn: 5 });
    assert_eq!(
        ctl.next_command(WAIT),
        Some(Command::TargetConnected { conn: 5, ok: true })
    );
    nudge(Output::ConnectionData {
        conn: 5,
        data: b"ping".to_vec(),
    });
    // The echo comes back, and the writer credits what it put on the target's socket (receive-side
    // flow control: `Command::Delivered`, once its queue ran empty).
    let mut echoed = Vec::new();
    let mut delivered = 0;
    while echoed.len() < 4 || delivered < 4 {
        match ctl.next_command(WAIT) {
            Some(Command::Send { conn: 5, data }) => echoed.extend(data),
            Some(Command::Delivered { conn: 5, bytes }) => delivered += bytes,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, b"ping");
    assert_eq!(delivered, 4, "credit for exactly what was written");
    // Our EOF half-closes the target; the echo server then closes, which comes back as SendEof.
    nudge(Output::ConnectionEof { conn: 5 });
    assert_eq!(ctl.next_command(WAIT), Some(Command::SendEof { conn: 5 }));
}

pub fn gateway_side_reports_a_refused_target<R: Runtime>() {
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    let forwarder = R::dial_targets(&handle, refused);
    ctl.script(Output::ConnectTarget { conn: 9 });
    handle.input(Input::Timeout);
    // A forwarder on the node's own loop takes the output before it reaches the application; one that
    // does reach it must be taken by `dispatch`.
    let end = Instant::now() + WAIT;
    let answer = loop {
        assert!(Instant::now() < end, "no answer to ConnectTarget");
        if let Some(command) = ctl.next_command(Duration::from_millis(20)) {
            break command;
        }
        if let Ok(Some(out)) = handle.recv_timeout(Duration::from_millis(20)) {
            assert_eq!(forwarder.dispatch(out), None);
        }
    };
    assert_eq!(answer, Command::TargetConnected { conn: 9, ok: false });
    assert_eq!(forwarder.open_connections(), 0);
    assert_eq!(
        forwarder.dispatch(Output::TubeReady),
        Some(Output::TubeReady)
    );
}

/// A local peer that never reads does not hold the forwarder up: `dispatch` takes far more than the old
/// 64-chunk queue without waiting (the node's receive budget is what bounds a writer's queue), and a
/// stall close (`CloseReason::Timeout`) shuts the socket down under the blocked writer, so the peer sees
/// its end without the queued bytes being forced on it first, and the next connection is served.
pub fn a_stall_close_aborts_a_blocked_writer_and_dispatch_never_waits<R: Runtime>() {
    use pam_lite_core::tube::CloseReason;
    const CHUNK: usize = 64 * 1024;
    const QUEUED: usize = 32 << 20;
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = target.local_addr().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let peer = thread::spawn(move || {
        // Accept and hold without reading until told; then read to the end (or give up after WAIT).
        let (mut s, _) = target.accept().unwrap();
        let second = target.accept().map(|(s, _)| s);
        go_rx.recv().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut n = 0usize;
        let mut buf = vec![0u8; CHUNK];
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(k) => n += k,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break false
                }
                Err(_) => break true,
            }
        };
        drop(second);
        (ended, n)
    });
    let (node, ctl) = puppet();
    let handle = R::spawn(node, DriverConfig::default()).unwrap();
    let forwarder = R::dial_targets(&handle, addr);
    let sender = handle.sender();
    let (rest_tx, _rest) = mpsc::channel();
    route::<R>(handle, forwarder, rest_tx);
    let nudge = |out: Output| {
        ctl.script(out);
        sender.input(Input::Timeout);
    };
    let connected = |conn| loop {
        match ctl.next_command(WAIT) {
            Some(Command::TargetConnected { conn: c, ok: true }) if c == conn => return,
            Some(Command::Delivered { .. }) => {}
            other => panic!("waiting for target {conn}: {other:?}"),
        }
    };
    nudge(Output::ConnectTarget { conn: 7 });
    connected(7);
    for _ in 0..QUEUED / CHUNK {
        ctl.script(Output::ConnectionData {
            conn: 7,
            data: vec![7u8; CHUNK],
        });
    }
    sender.input(Input::Timeout);
    nudge(Output::ConnectionClosed {
        conn: 7,
        reason: CloseReason::Timeout,
    });
    // Served although the first peer still has not read a byte: nothing waits for it.
    nudge(Output::ConnectTarget { conn: 8 });
    connected(8);
    go_tx.send(()).unwrap();
    let (ended, n) = peer.join().unwrap();
    assert!(
        ended,
        "the stalled peer's socket was not closed ({n} bytes read)"
    );
    assert!(
        n < QUEUED / 2,
        "the close waited behind the queued writes: the peer got {n} of {QUEUED} bytes"
    );
}
