//! [`TerminalServer`]: the gateway side of a terminal session for the emulator, i.e. what guacd plus
//! Keeper's gateway show a pam launch client when the terminal is backed by a raw byte stream (a PTY the
//! driver owns).
//!
//! To the client:
//! * [`TerminalServer::start`]: `ready,<id>` (optional), `pipe,<idx>,text/plain,STDOUT`, `sync,<ts>`. With
//!   [`ServerConfig::handshake_args`] it first sends `args,…` and waits for the client's `connect`, the way
//!   a gateway that forwards guacd's handshake behaves;
//! * [`TerminalServer::output`]: PTY output → `blob,<idx>,<b64>` (≤ 4096 bytes each, guacd's instruction
//!   limit); [`TerminalServer::sync`] sends `sync,<ts>` (call it after output and periodically; the
//!   timestamp is the caller's);
//! * [`TerminalServer::close`]: optional `error,<msg>,<code>`, then `disconnect`.
//!
//! From the client:
//! * `key,<keysym>,<pressed>` → the bytes a terminal types ([`super::keysym::KeysymDecoder`]);
//! * `pipe,<idx>,…,STDIN` + `blob`s → the bytes, each blob acked `ack,<idx>,OK,0` (pipe too); `end` closes it;
//! * `size,<w>,<h>[,<dpi>]` → [`ServerEvent::Resize`] with the cell size from guacd's pixel metrics;
//! * `sync,<ts>` → remembered ([`TerminalServer::last_client_sync`]); `disconnect` → [`ServerEvent::Ended`];
//! * `clipboard`/`argv` streams are acked and ignored.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::client::{terminal_cells, MAX_BLOB};
use super::instruction::{encode_into, GuacError, Instruction, InstructionParser};
use super::keysym::KeysymDecoder;

/// guacd's status code for "upstream error" (`GUAC_PROTOCOL_STATUS_UPSTREAM_ERROR`).
pub const STATUS_UPSTREAM_ERROR: u32 = 0x0207;

/// How the emulated gateway presents the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Stream index of the STDOUT pipe (any; 1 is common).
    pub stdout_stream: u32,
    /// Send `ready,<connection_id>` before the pipe (guacd does; Keeper's gateway may not forward it).
    pub connection_id: Option<String>,
    /// `Some(args)`: start with `args,<args…>` (first element the version, e.g. `VERSION_1_5_0`) and open
    /// the session only after the client's `connect`. `None`: the handshake happened upstream.
    pub handshake_args: Option<Vec<String>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            stdout_stream: 1,
            connection_id: Some("$pam-lite-emulator".into()),
            handshake_args: None,
        }
    }
}

/// Why the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEndReason {
    /// The client sent `disconnect`.
    ClientDisconnect,
    /// [`TerminalServer::close`] was called.
    Closed,
    /// The client's instruction stream is malformed.
    Protocol(GuacError),
}

/// What the server asks its driver to do.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// Bytes to send to the client (data of the tube connection).
    ToClient(Vec<u8>),
    /// Bytes the user typed, for the PTY.
    Input(Vec<u8>),
    /// The client's terminal size: resize the PTY to `cols`×`rows`.
    Resize {
        cols: u16,
        rows: u16,
        width: u32,
        height: u32,
        dpi: Option<u32>,
    },
    /// Handshake mode: the client answered `args` with `connect,<values…>` (secrets possible).
    Connected {
        values: Vec<String>,
    },
    Ended(ServerEndReason),
}

impl fmt::Debug for ServerEvent {
    /// Traffic may contain secrets (typed passwords, connect values): lengths only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerEvent::ToClient(b) => write!(f, "ToClient({} bytes)", b.len()),
            ServerEvent::Input(b) => write!(f, "Input({} bytes)", b.len()),
            ServerEvent::Resize {
                cols,
                rows,
                width,
                height,
                dpi,
            } => {
                write!(
                    f,
                    "Resize {{ {cols}x{rows}, {width}x{height} px, dpi {dpi:?} }}"
                )
            }
            ServerEvent::Connected { values } => write!(f, "Connected({} values)", values.len()),
            ServerEvent::Ended(r) => write!(f, "Ended({r:?})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotStarted,
    /// `args` sent, waiting for `connect`.
    Handshake,
    Open,
    Ended,
}

/// The gateway side of the terminal session. See the module docs.
#[derive(Debug)]
pub struct TerminalServer {
    config: ServerConfig,
    parser: InstructionParser,
    keys: KeysymDecoder,
    events: VecDeque<ServerEvent>,
    tx: Vec<u8>,
    phase: Phase,
    start_ts: u64,
    stdin_stream: Option<String>,
    /// Other client → server streams (clipboard, argv) whose blobs are acked and dropped.
    other_streams: BTreeSet<String>,
    last_client_sync: Option<u64>,
    last_sync_sent: Option<u64>,
}

impl TerminalServer {
    pub fn new(config: ServerConfig) -> TerminalServer {
        TerminalServer {
            config,
            parser: InstructionParser::new(),
            keys: KeysymDecoder::new(),
            events: VecDeque::new(),
            tx: Vec::new(),
            phase: Phase::NotStarted,
            start_ts: 0,
            stdin_stream: None,
            other_streams: BTreeSet::new(),
            last_client_sync: None,
            last_sync_sent: None,
        }
    }

    /// The session's first instructions (see the module docs); `ts` is the first `sync` timestamp.
    pub fn start(&mut self, ts: u64) {
        if self.phase != Phase::NotStarted {
            return;
        }
        self.start_ts = ts;
        match self.config.handshake_args.clone() {
            Some(args) => {
                self.phase = Phase::Handshake;
                self.instr("args", &args);
            }
            None => self.open_session(),
        }
        self.flush_tx();
    }

    /// `true` between the STDOUT pipe being opened and the end.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// The timestamp of the client's latest `sync` echo.
    pub fn last_client_sync(&self) -> Option<u64> {
        self.last_client_sync
    }

    /// `true` when the client has echoed every `sync` sent so far (guacd uses this to pace frames).
    pub fn client_caught_up(&self) -> bool {
        self.last_sync_sent.is_none() || self.last_client_sync >= self.last_sync_sent
    }

    /// PTY output for the user. Ignored unless the session is open.
    pub fn output(&mut self, data: &[u8]) {
        if self.phase != Phase::Open {
            return;
        }
        let idx = self.config.stdout_stream.to_string();
        for chunk in data.chunks(MAX_BLOB) {
            let b64 = B64.encode(chunk);
            self.instr("blob", &[idx.as_str(), b64.as_str()]);
        }
        self.flush_tx();
    }

    /// Sends `sync,<ts>` (a frame boundary; the client echoes it).
    pub fn sync(&mut self, ts: u64) {
        if self.phase != Phase::Open {
            return;
        }
        self.last_sync_sent = Some(ts);
        self.instr("sync", &[ts.to_string()]);
        self.flush_tx();
    }

    /// Ends the session: `error,<message>,519` if a message is given, then `disconnect`.
    pub fn close(&mut self, error: Option<&str>) {
        if self.phase == Phase::Ended {
            return;
        }
        if let Some(message) = error {
            self.instr(
                "error",
                &[message.to_string(), STATUS_UPSTREAM_ERROR.to_string()],
            );
        }
        self.instr("disconnect", &[] as &[&str]);
        self.end(ServerEndReason::Closed);
        self.flush_tx();
    }

    /// Bytes from the client (data of the tube connection), in any chunking.
    pub fn handle_data(&mut self, data: &[u8]) {
        if self.phase == Phase::Ended {
            return;
        }
        self.parser.push(data);
        while let Some(result) = self.parser.next() {
            match result {
                Ok(inst) => self.handle_instruction(&inst),
                Err(err) => {
                    tracing::warn!(target: "pam_lite::guac", "malformed Guacamole stream from the client: {err}");
                    self.instr("disconnect", &[] as &[&str]);
                    self.end(ServerEndReason::Protocol(err));
                }
            }
            if self.phase == Phase::Ended {
                break;
            }
        }
        self.flush_tx();
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.flush_tx();
        self.events.pop_front()
    }

    fn open_session(&mut self) {
        self.phase = Phase::Open;
        if let Some(id) = self.config.connection_id.clone() {
            self.instr("ready", &[id]);
        }
        let idx = self.config.stdout_stream.to_string();
        self.instr("pipe", &[idx.as_str(), "text/plain", "STDOUT"]);
        self.last_sync_sent = Some(self.start_ts);
        self.instr("sync", &[self.start_ts.to_string()]);
    }

    fn handle_instruction(&mut self, inst: &Instruction) {
        let arg = |i: usize| inst.arg(i).unwrap_or("");
        match inst.opcode.as_str() {
            "key" if inst.args.len() >= 2 => {
                let (Ok(keysym), pressed) = (arg(0).trim().parse::<u32>(), arg(1).trim() == "1")
                else {
                    return;
                };
                let mut bytes = Vec::new();
                self.keys.key(keysym, pressed, &mut bytes);
                self.input(bytes);
            }
            "pipe" if inst.args.len() >= 3 => {
                let idx = arg(0).to_string();
                if arg(2).trim().eq_ignore_ascii_case("stdin") {
                    self.stdin_stream = Some(idx.clone());
                } else {
                    self.other_streams.insert(idx.clone());
                }
                self.instr("ack", &[idx.as_str(), "OK", "0"]);
            }
            "clipboard" | "argv" if !inst.args.is_empty() => {
                let idx = arg(0).to_string();
                self.other_streams.insert(idx.clone());
                self.instr("ack", &[idx.as_str(), "OK", "0"]);
            }
            "blob" if inst.args.len() >= 2 => {
                let idx = arg(0);
                if self.stdin_stream.as_deref() == Some(idx) {
                    match B64.decode(arg(1).trim()) {
                        Ok(bytes) => {
                            self.input(bytes);
                            self.instr("ack", &[idx, "OK", "0"]);
                        }
                        Err(err) => {
                            tracing::warn!(target: "pam_lite::guac", "undecodable STDIN blob: {err}");
                            // GUAC_PROTOCOL_STATUS_CLIENT_BAD_REQUEST
                            self.instr("ack", &[idx, "Bad blob", "768"]);
                        }
                    }
                } else if self.other_streams.contains(idx) {
                    self.instr("ack", &[idx, "OK", "0"]);
                }
            }
            "end" if !inst.args.is_empty() => {
                let idx = arg(0);
                if self.stdin_stream.as_deref() == Some(idx) {
                    self.stdin_stream = None;
                } else {
                    self.other_streams.remove(idx);
                }
            }
            "size" if inst.args.len() >= 2 => {
                let (Ok(width), Ok(height)) =
                    (arg(0).trim().parse::<u32>(), arg(1).trim().parse::<u32>())
                else {
                    return;
                };
                let dpi = inst.arg(2).and_then(|d| d.trim().parse().ok());
                let (cols, rows) = terminal_cells(width, height);
                self.push_event(ServerEvent::Resize {
                    cols,
                    rows,
                    width,
                    height,
                    dpi,
                });
            }
            "connect" if self.phase == Phase::Handshake => {
                self.push_event(ServerEvent::Connected {
                    values: inst.args.clone(),
                });
                self.open_session();
            }
            "sync" => self.last_client_sync = inst.arg(0).and_then(|t| t.trim().parse().ok()),
            "disconnect" => self.end(ServerEndReason::ClientDisconnect),
            _ => {} // ack, audio, video, image, mouse, nop, …
        }
    }

    fn input(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.push_event(ServerEvent::Input(bytes));
        }
    }

    fn instr<S: AsRef<str>>(&mut self, opcode: &str, args: &[S]) {
        encode_into(&mut self.tx, opcode, args);
    }

    fn end(&mut self, reason: ServerEndReason) {
        self.phase = Phase::Ended;
        self.push_event(ServerEvent::Ended(reason));
    }

    fn push_event(&mut self, event: ServerEvent) {
        self.flush_tx();
        self.events.push_back(event);
    }

    fn flush_tx(&mut self) {
        if !self.tx.is_empty() {
            self.events
                .push_back(ServerEvent::ToClient(std::mem::take(&mut self.tx)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guac::client::{ClientEvent, EndReason, InputMode, TerminalClient, TerminalConfig};
    use crate::guac::instruction::encode;
    use proptest::prelude::*;
    use std::time::Duration;

    fn events(s: &mut TerminalServer) -> Vec<ServerEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn to_client(evs: &[ServerEvent]) -> String {
        let b: Vec<u8> = evs
            .iter()
            .filter_map(|e| match e {
                ServerEvent::ToClient(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        String::from_utf8(b).unwrap()
    }

    fn input(evs: &[ServerEvent]) -> Vec<u8> {
        evs.iter()
            .filter_map(|e| match e {
                ServerEvent::Input(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// A client and a server wired together in memory, with a chunk size for every hop.
    struct Pair {
        client: TerminalClient,
        server: TerminalServer,
        chunk: usize,
        /// What reached the user's screen, what reached the PTY, and other events.
        screen: Vec<u8>,
        pty: Vec<u8>,
        client_events: Vec<ClientEvent>,
        server_events: Vec<ServerEvent>,
    }

    impl Pair {
        fn new(client: TerminalConfig, server: ServerConfig, chunk: usize) -> Pair {
            Pair {
                client: TerminalClient::new(client),
                server: TerminalServer::new(server),
                chunk,
                screen: Vec::new(),
                pty: Vec::new(),
                client_events: Vec::new(),
                server_events: Vec::new(),
            }
        }

        /// Moves bytes both ways until nothing is left.
        fn run(&mut self) {
            loop {
                let mut moved = false;
                while let Some(e) = self.server.poll_event() {
                    moved = true;
                    match e {
                        ServerEvent::ToClient(b) => {
                            for part in b.chunks(self.chunk) {
                                self.client.handle_data(part);
                            }
                        }
                        ServerEvent::Input(b) => self.pty.extend(b),
                        other => self.server_events.push(other),
                    }
                }
                while let Some(e) = self.client.poll_event() {
                    moved = true;
                    match e {
                        ClientEvent::ToGateway(b) => {
                            for part in b.chunks(self.chunk) {
                                self.server.handle_data(part);
                            }
                        }
                        ClientEvent::Output(b) => self.screen.extend(b),
                        other => self.client_events.push(other),
                    }
                }
                if !moved {
                    return;
                }
            }
        }
    }

    #[test]
    fn start_sequence() {
        let mut s = TerminalServer::new(ServerConfig::default());
        s.start(1_700_000_000_000);
        assert_eq!(
            to_client(&events(&mut s)),
            "5.ready,18.$pam-lite-emulator;4.pipe,1.1,10.text/plain,6.STDOUT;4.sync,13.1700000000000;"
        );
        s.output(b"hi");
        s.sync(5);
        assert_eq!(to_client(&events(&mut s)), "4.blob,1.1,4.aGk=;4.sync,1.5;");
        assert!(!s.client_caught_up());
        s.handle_data(b"4.sync,1.5;");
        assert!(s.client_caught_up());
        assert_eq!(s.last_client_sync(), Some(5));
    }

    #[test]
    fn typing_reaches_the_pty_and_output_reaches_the_screen() {
        for chunk in [1, 2, 7, 64, 100_000] {
            let t = pam_lite_dev_clock::origin();
            let mut p = Pair::new(TerminalConfig::default(), ServerConfig::default(), chunk);
            p.server.start(1);
            p.run();
            assert_eq!(p.client_events, vec![ClientEvent::Ready]);
            assert!(p.client.has_stdout_pipe());
            p.client.input(b"echo hi\r", t);
            p.run();
            assert_eq!(p.pty, b"echo hi\r", "chunk {chunk}");
            p.server.output(b"echo hi\r\nhi\r\n$ ");
            p.server.sync(2);
            p.run();
            assert_eq!(p.screen, b"echo hi\r\nhi\r\n$ ");
            assert!(p.server.client_caught_up());
            // Initial runtime size → a resize event with the client's 80×24.
            assert!(matches!(
                p.server_events[0],
                ServerEvent::Resize {
                    cols: 80,
                    rows: 24,
                    dpi: Some(96),
                    ..
                }
            ));
        }
    }

    #[test]
    fn special_keys_round_trip() {
        let t = pam_lite_dev_clock::origin();
        let mut p = Pair::new(TerminalConfig::default(), ServerConfig::default(), 5);
        p.server.start(1);
        p.run();
        let typed: &[u8] = b"\x1b[A\x1b[D\x7f\t\x03ls -l\x1bOP\x1b[3~\x04";
        p.client.input(typed, t);
        p.run();
        assert_eq!(p.pty, typed);
    }

    #[test]
    fn large_output_is_chunked_and_complete() {
        let mut p = Pair::new(TerminalConfig::default(), ServerConfig::default(), 1000);
        p.server.start(1);
        let big: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        p.server.output(&big);
        p.run();
        assert_eq!(p.screen, big);
    }

    #[test]
    fn stdin_mode_round_trip() {
        let t = pam_lite_dev_clock::origin();
        let config = TerminalConfig {
            input_mode: InputMode::Stdin,
            ..TerminalConfig::default()
        };
        let mut p = Pair::new(config, ServerConfig::default(), 3);
        p.server.start(1);
        p.run();
        let script: Vec<u8> = b"set -e\nfor i in 1 2 3; do echo $i; done\n".repeat(300);
        for part in script.chunks(1000) {
            p.client.input(part, t);
        }
        p.client.end_input(t);
        p.run();
        assert_eq!(p.pty, script);
        assert!(!p.client.stdin_failed());
        assert!(p.server.stdin_stream.is_none());
    }

    #[test]
    fn handshake_mode() {
        let mut params = std::collections::BTreeMap::new();
        params.insert("hostname".to_string(), "db".to_string());
        let client = TerminalConfig {
            guacd_params: params,
            cols: 100,
            rows: 40,
            ..TerminalConfig::default()
        };
        let server = ServerConfig {
            handshake_args: Some(vec![
                "VERSION_1_5_0".into(),
                "hostname".into(),
                "port".into(),
            ]),
            connection_id: None,
            ..ServerConfig::default()
        };
        let mut p = Pair::new(client, server, 4);
        p.server.start(9);
        p.run();
        assert_eq!(
            p.server_events[0],
            ServerEvent::Resize {
                cols: 100,
                rows: 40,
                width: 1030,
                height: 814,
                dpi: Some(96)
            }
        );
        assert_eq!(
            p.server_events[1],
            ServerEvent::Connected {
                values: vec!["VERSION_1_5_0".into(), "db".into(), "".into()]
            }
        );
        assert_eq!(p.client_events, vec![ClientEvent::Ready]);
        assert!(p.server.is_open());
    }

    #[test]
    fn disconnects_both_ways() {
        let mut p = Pair::new(TerminalConfig::default(), ServerConfig::default(), 8);
        p.server.start(1);
        p.run();
        p.client.disconnect();
        p.run();
        assert_eq!(
            p.server_events.last(),
            Some(&ServerEvent::Ended(ServerEndReason::ClientDisconnect))
        );

        let mut p = Pair::new(TerminalConfig::default(), ServerConfig::default(), 8);
        p.server.start(1);
        p.run();
        p.server.close(Some("target went away"));
        p.run();
        assert_eq!(
            p.client_events.last(),
            Some(&ClientEvent::Ended(EndReason::ServerError {
                message: "target went away".into(),
                code: "519".into()
            }))
        );
        assert!(p.server.is_ended());
    }

    #[test]
    fn double_ctrl_c_ends_both() {
        let t = pam_lite_dev_clock::origin();
        let mut p = Pair::new(TerminalConfig::default(), ServerConfig::default(), 8);
        p.server.start(1);
        p.run();
        p.client.input(b"\x03", t);
        p.client.input(b"\x03", t + Duration::from_millis(100));
        p.run();
        assert_eq!(p.pty, b"\x03");
        assert_eq!(
            p.client_events.last(),
            Some(&ClientEvent::Ended(EndReason::UserExit))
        );
        assert_eq!(
            p.server_events.last(),
            Some(&ServerEvent::Ended(ServerEndReason::ClientDisconnect))
        );
    }

    #[test]
    fn clipboard_and_bad_blob() {
        let mut s = TerminalServer::new(ServerConfig::default());
        s.start(1);
        events(&mut s);
        s.handle_data(&encode("clipboard", &["200", "text/plain"]));
        s.handle_data(&encode("blob", &["200", "eA=="]));
        s.handle_data(&encode("end", &["200"]));
        s.handle_data(&encode("pipe", &["0", "text/plain", "STDIN"]));
        s.handle_data(&encode("blob", &["0", "!!"]));
        let ev = events(&mut s);
        assert_eq!(
            to_client(&ev),
            "3.ack,3.200,2.OK,1.0;3.ack,3.200,2.OK,1.0;3.ack,1.0,2.OK,1.0;3.ack,1.0,8.Bad blob,3.768;"
        );
        assert!(input(&ev).is_empty());
    }

    proptest! {
        #[test]
        fn server_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400), chunk in 1usize..50) {
            let mut s = TerminalServer::new(ServerConfig::default());
            s.start(0);
            for part in data.chunks(chunk) {
                s.handle_data(part);
                s.output(part);
                while s.poll_event().is_some() {}
            }
        }

        #[test]
        fn stdin_bytes_round_trip(data in proptest::collection::vec(any::<u8>(), 1..3000), chunk in 1usize..500) {
            let t = pam_lite_dev_clock::origin();
            let config = TerminalConfig { input_mode: InputMode::Stdin, ..TerminalConfig::default() };
            let mut p = Pair::new(config, ServerConfig::default(), chunk);
            p.server.start(1);
            p.run();
            p.client.input(&data, t);
            p.run();
            prop_assert_eq!(p.pty, data);
        }
    }
}
