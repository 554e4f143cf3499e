//! [`TerminalClient`]: the client side of a pam launch terminal session, i.e. what Commander's
//! `GuacamoleHandler` (`python_handler.py`, keepercommander 18.1.8) does with the Guacamole instructions
//! that travel as data of tube connection 1.
//!
//! From the gateway:
//! * `args` (only if the gateway forwards guacd's handshake; usually it completes it upstream) → `size`,
//!   `audio`, `video`, `image`, `connect` with the values of the requested parameters from `guacd_params`;
//! * every `sync,<ts>` is echoed as `sync,<ts>`; the first `sync` (or a `ready`) makes the session ready:
//!   [`ClientEvent::Ready`], then a runtime `size` with the current terminal size;
//! * `pipe,<idx>,<mime>,STDOUT` (or, while none is bound, any `text/*` pipe not named STDIN) becomes the
//!   terminal output stream: `ack,<idx>,OK,0`; each of its `blob`s is base64-decoded into
//!   [`ClientEvent::Output`] and acked; `end` unbinds it;
//! * `clipboard,<idx>,<mime>` and its blobs are acked (the content is not used);
//! * `disconnect` or `error` end the session ([`ClientEvent::Ended`]).
//!
//! To the gateway:
//! * [`InputMode::Keys`] (Commander's default): keystrokes → `key,<keysym>,1` + `key,<keysym>,0`
//!   ([`super::keysym`]); a second Ctrl-C within 400 ms ends the session locally, like Commander;
//! * [`InputMode::Stdin`] (`--stdin`): bytes go through the STDIN pipe: `pipe,0,text/plain,STDIN` once, then
//!   `blob,0,<b64>` per chunk (≤ 4096 bytes each, so every instruction stays under guacd's 8192-byte
//!   limit) and `end,0` at [`TerminalClient::end_input`]. Commander re-opens the pipe for every read
//!   (pipe + blob + end each time); [`TerminalConfig::stdin_pipe_per_chunk`] does that. The bytes are sent
//!   unchanged (Commander rewrites `\r` to `\n` and arrow sequences to keys in this mode; for piped
//!   scripts the raw bytes are what the user wants);
//! * [`TerminalClient::resize`] → `size,<w>,<h>,96` in guacd pixel mode ([`terminal_pixels`]);
//! * [`TerminalClient::disconnect`] → `disconnect`.
//!
//! Input given before the session is ready is queued (bounded) and sent right after it becomes ready
//! (Commander starts its input reader only then). Every method may be called with any chunking of the
//! gateway's byte stream; instructions produced by one call go out as one [`ClientEvent::ToGateway`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::instruction::{encode_into, GuacError, Instruction, InstructionParser};
use super::keysym::KeyEncoder;
use crate::tube::CloseReason;

/// guacd's default terminal metrics at 96 DPI (Commander's `guacd` pixel mode, its default).
pub const CHAR_WIDTH: u32 = 10;
pub const CHAR_HEIGHT: u32 = 20;
/// `int(2 mm × 96 dpi / 25.4)`.
pub const TERM_MARGIN: u32 = 7;
pub const SCROLLBAR_WIDTH: u32 = 16;
pub const DPI: u32 = 96;
/// Largest raw chunk per `blob` (base64 5464 chars): guacd rejects instructions over 8192 bytes.
pub const MAX_BLOB: usize = 4096;
/// The stream index of the STDIN pipe (Commander and kcm-cli use 0).
pub const STDIN_STREAM: &str = "0";

/// Terminal cells → the pixel size sent in `size` (Commander's `guacd_default_approximate_pixels`):
/// `w = cols·10 + 2·7 + 16`, `h = rows·20 + 2·7`.
pub fn terminal_pixels(cols: u16, rows: u16) -> (u32, u32) {
    (
        u32::from(cols) * CHAR_WIDTH + 2 * TERM_MARGIN + SCROLLBAR_WIDTH,
        u32::from(rows) * CHAR_HEIGHT + 2 * TERM_MARGIN,
    )
}

/// The inverse of [`terminal_pixels`] (what the emulator's gateway derives the PTY size from); at least 1×1.
pub fn terminal_cells(width: u32, height: u32) -> (u16, u16) {
    let cols = width.saturating_sub(2 * TERM_MARGIN + SCROLLBAR_WIDTH) / CHAR_WIDTH;
    let rows = height.saturating_sub(2 * TERM_MARGIN) / CHAR_HEIGHT;
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX).max(1);
    (clamp(cols), clamp(rows))
}

/// How user input reaches the remote terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    /// Keystrokes as X11 key events (pam launch's default).
    Keys,
    /// Raw bytes through the STDIN pipe (`pam launch --stdin`).
    Stdin,
}

/// Session settings (Commander's `connection_settings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalConfig {
    /// Terminal size in cells (used for the handshake and the first runtime `size`).
    pub cols: u16,
    pub rows: u16,
    /// guacd parameters of the record (hostname, port, username, …), used to answer `args`.
    /// Values may be secrets: never logged.
    pub guacd_params: BTreeMap<String, String>,
    pub input_mode: InputMode,
    /// Stdin mode: open and end the STDIN pipe around every chunk, like Commander.
    pub stdin_pipe_per_chunk: bool,
    pub audio_mimetypes: Vec<String>,
    pub video_mimetypes: Vec<String>,
    pub image_mimetypes: Vec<String>,
    /// `pam launch -n`: CRLF → LF in terminal output (also across blob boundaries).
    pub normalize_crlf: bool,
    /// A `\n` this soon after `\r` is the same Enter (Commander: 50 ms, `PAM_LAUNCH_CRLF_MERGE_DELAY_MS`).
    pub crlf_merge: Duration,
    /// How long a lone ESC waits for the rest of an escape sequence.
    pub escape_timeout: Duration,
    /// Keys mode: a second Ctrl-C within this window ends the session locally (`None`: never).
    pub double_ctrl_c_exit: Option<Duration>,
    /// Bytes of encoded input queued before the session is ready; more input is dropped.
    pub max_queued_input: usize,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        TerminalConfig {
            cols: 80,
            rows: 24,
            guacd_params: BTreeMap::new(),
            input_mode: InputMode::Keys,
            stdin_pipe_per_chunk: false,
            audio_mimetypes: Vec::new(),
            video_mimetypes: Vec::new(),
            image_mimetypes: vec!["image/png".into(), "image/jpeg".into(), "image/webp".into()],
            normalize_crlf: false,
            crlf_merge: Duration::from_millis(50),
            escape_timeout: Duration::from_millis(50),
            double_ctrl_c_exit: Some(Duration::from_millis(400)),
            max_queued_input: 64 * 1024,
        }
    }
}

/// Why the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The gateway/guacd sent `disconnect`.
    ServerDisconnect,
    /// The gateway/guacd sent `error,<message>,<code>`.
    ServerError { message: String, code: String },
    /// The user pressed Ctrl-C twice quickly.
    UserExit,
    /// [`TerminalClient::disconnect`] was called.
    LocalDisconnect,
    /// The tube connection carrying the session closed ([`TerminalClient::connection_closed`]).
    ConnectionClosed(CloseReason),
    /// The gateway's instruction stream is malformed.
    Protocol(GuacError),
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::ServerDisconnect => f.write_str("the remote side disconnected"),
            EndReason::ServerError { message, code } => write!(f, "remote error {code}: {message}"),
            EndReason::UserExit => f.write_str("exited by the user (Ctrl-C twice)"),
            EndReason::LocalDisconnect => f.write_str("disconnected"),
            EndReason::ConnectionClosed(reason) => write!(f, "connection closed: {reason}"),
            EndReason::Protocol(err) => write!(f, "Guacamole protocol error: {err}"),
        }
    }
}

/// What the session asks its driver to do.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Bytes to send to the gateway (data of the tube connection).
    ToGateway(Vec<u8>),
    /// Terminal output for the user's screen.
    Output(Vec<u8>),
    /// The session is ready (first `sync` or `ready`); Commander's `data_flowing`.
    Ready,
    /// The session is over; nothing but possibly a final `ToGateway` (disconnect) precedes it.
    Ended(EndReason),
}

impl fmt::Debug for ClientEvent {
    /// Terminal traffic may contain secrets (typed passwords): show lengths only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientEvent::ToGateway(b) => write!(f, "ToGateway({} bytes)", b.len()),
            ClientEvent::Output(b) => write!(f, "Output({} bytes)", b.len()),
            ClientEvent::Ready => f.write_str("Ready"),
            ClientEvent::Ended(r) => write!(f, "Ended({r:?})"),
        }
    }
}

/// The client side of the terminal session. See the module docs.
#[derive(Debug)]
pub struct TerminalClient {
    config: TerminalConfig,
    parser: InstructionParser,
    keys: KeyEncoder,
    events: VecDeque<ClientEvent>,
    /// Instructions produced by the current call, sent as one `ToGateway`.
    tx: Vec<u8>,
    /// Input instructions produced before the session was ready.
    queued: Vec<u8>,
    ready: bool,
    ended: bool,
    handshake_sent: bool,
    stdout_stream: Option<u64>,
    clipboard_stream: Option<u64>,
    stdin_open: bool,
    stdin_failed: bool,
    pending_stdin_ack: bool,
    last_ctrl_c: Option<Instant>,
    /// Output ended with `\r` while normalizing CRLF.
    cr_carry: bool,
    syncs: u64,
}

fn stream_index(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

impl TerminalClient {
    pub fn new(config: TerminalConfig) -> TerminalClient {
        TerminalClient {
            keys: KeyEncoder::new(config.crlf_merge, config.escape_timeout),
            config,
            parser: InstructionParser::new(),
            events: VecDeque::new(),
            tx: Vec::new(),
            queued: Vec::new(),
            ready: false,
            ended: false,
            handshake_sent: false,
            stdout_stream: None,
            clipboard_stream: None,
            stdin_open: false,
            stdin_failed: false,
            pending_stdin_ack: false,
            last_ctrl_c: None,
            cr_carry: false,
            syncs: 0,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// `true` while a terminal output pipe is bound (Commander's `check_stdout_pipe_support`).
    pub fn has_stdout_pipe(&self) -> bool {
        self.stdout_stream.is_some()
    }

    /// `true` once the gateway refused the STDIN pipe (non-zero `ack`); stdin input is dropped then.
    pub fn stdin_failed(&self) -> bool {
        self.stdin_failed
    }

    /// How many `sync`s arrived (Commander's `sync_count`).
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.flush_tx();
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called at the latest (a held ESC key).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        self.keys.poll_timeout()
    }

    /// Time passed (`now`).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended || self.config.input_mode != InputMode::Keys {
            return;
        }
        let mut keysyms = Vec::new();
        self.keys.handle_timeout(now, &mut keysyms);
        self.send_keys(&keysyms, now);
        self.flush_tx();
    }

    /// Bytes that arrived from the gateway (data of the tube connection), in any chunking.
    pub fn handle_data(&mut self, data: &[u8]) {
        if self.ended {
            return;
        }
        self.parser.push(data);
        while let Some(result) = self.parser.next() {
            match result {
                Ok(inst) => self.handle_instruction(&inst),
                Err(err) => {
                    tracing::warn!(target: "pam_lite::guac", "malformed Guacamole stream: {err}");
                    self.instr("disconnect", &[] as &[&str]);
                    self.end(EndReason::Protocol(err));
                }
            }
            if self.ended {
                break;
            }
        }
        self.flush_tx();
    }

    /// User input read at `now`: keystrokes (Keys mode) or raw bytes (Stdin mode).
    pub fn input(&mut self, data: &[u8], now: Instant) {
        if self.ended || data.is_empty() {
            return;
        }
        if !self.ready && self.queued.len() >= self.config.max_queued_input {
            tracing::warn!(target: "pam_lite::guac", "input before the session is ready dropped ({} bytes)", data.len());
            return;
        }
        match self.config.input_mode {
            InputMode::Keys => {
                let mut keysyms = Vec::new();
                self.keys.feed(data, now, &mut keysyms);
                self.send_keys(&keysyms, now);
            }
            InputMode::Stdin => self.send_stdin(data),
        }
        self.flush_tx();
    }

    /// The user's input ended (stdin EOF): Stdin mode sends `end,0`; Keys mode sends a held ESC.
    pub fn end_input(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        match self.config.input_mode {
            InputMode::Keys => {
                let mut keysyms = Vec::new();
                self.keys.flush(now, &mut keysyms);
                self.send_keys(&keysyms, now);
            }
            InputMode::Stdin => {
                if self.stdin_open {
                    self.stdin_open = false;
                    self.input_instr("end", &[STDIN_STREAM]);
                }
            }
        }
        self.flush_tx();
    }

    /// The user's terminal is now `cols`×`rows`; sent at once when ready, otherwise at readiness.
    pub fn resize(&mut self, cols: u16, rows: u16) {
        self.config.cols = cols;
        self.config.rows = rows;
        if self.ready && !self.ended {
            self.send_size();
            self.flush_tx();
        }
    }

    /// Ends the session from this side: sends `disconnect` (Commander's `stop()`).
    pub fn disconnect(&mut self) {
        if self.ended {
            return;
        }
        self.instr("disconnect", &[] as &[&str]);
        self.end(EndReason::LocalDisconnect);
        self.flush_tx();
    }

    /// The tube connection carrying the session closed: ends it without sending anything.
    pub fn connection_closed(&mut self, reason: CloseReason) {
        if !self.ended {
            self.end(EndReason::ConnectionClosed(reason));
        }
    }

    // ----- gateway → client -----

    fn handle_instruction(&mut self, inst: &Instruction) {
        let arg = |i: usize| inst.arg(i).unwrap_or("");
        match inst.opcode.as_str() {
            "args" if !self.handshake_sent => {
                self.handshake_sent = true;
                self.send_handshake(&inst.args);
            }
            "sync" => {
                let ts = inst.arg(0).unwrap_or("0").to_string();
                self.syncs += 1;
                self.instr("sync", &[ts.as_str()]);
                self.become_ready();
            }
            "ready" => self.become_ready(),
            "pipe" if inst.args.len() >= 3 => {
                let (idx, mime, name) = (arg(0), arg(1), arg(2));
                let named_stdout = name.trim().eq_ignore_ascii_case("stdout");
                let text_fallback = self.stdout_stream.is_none()
                    && !name.trim().eq_ignore_ascii_case("stdin")
                    && mime.trim().to_ascii_lowercase().starts_with("text/");
                if let (true, Some(n)) = (named_stdout || text_fallback, stream_index(idx)) {
                    self.stdout_stream = Some(n);
                    self.cr_carry = false;
                    self.instr("ack", &[idx, "OK", "0"]);
                }
            }
            "blob" if inst.args.len() >= 2 => {
                let (idx, data) = (arg(0), arg(1));
                let n = stream_index(idx);
                if n.is_some() && n == self.stdout_stream {
                    match B64.decode(data.trim()) {
                        Ok(bytes) => {
                            self.output(bytes);
                            self.instr("ack", &[idx, "OK", "0"]);
                        }
                        Err(err) => {
                            tracing::warn!(target: "pam_lite::guac", "undecodable output blob: {err}")
                        }
                    }
                } else if n.is_some() && n == self.clipboard_stream {
                    self.instr("ack", &[idx, "OK", "0"]);
                }
            }
            "end" if !inst.args.is_empty() => {
                let n = stream_index(arg(0));
                if n.is_some() && n == self.stdout_stream {
                    self.stdout_stream = None;
                    if std::mem::take(&mut self.cr_carry) {
                        self.push_event(ClientEvent::Output(b"\r".to_vec()));
                    }
                } else if n.is_some() && n == self.clipboard_stream {
                    self.clipboard_stream = None;
                }
            }
            "clipboard" if inst.args.len() >= 2 => {
                if let Some(n) = stream_index(arg(0)) {
                    self.clipboard_stream = Some(n);
                    self.instr("ack", &[arg(0), "OK", "0"]);
                }
            }
            "ack"
                if inst.args.len() >= 3
                    && self.pending_stdin_ack
                    && stream_index(arg(0)) == stream_index(STDIN_STREAM) =>
            {
                self.pending_stdin_ack = false;
                if arg(2).trim() != "0" {
                    self.stdin_failed = true;
                    tracing::warn!(target: "pam_lite::guac", "STDIN pipe refused (code {}): {}", arg(2), arg(1));
                }
            }
            "disconnect" => self.end(EndReason::ServerDisconnect),
            "error" => {
                let reason = EndReason::ServerError {
                    message: arg(0).to_string(),
                    code: arg(1).to_string(),
                };
                self.instr("disconnect", &[] as &[&str]);
                self.end(reason);
            }
            _ => {} // display operations, nop, …: nothing to do for a text terminal
        }
    }

    fn send_handshake(&mut self, args: &[String]) {
        let mut connect: Vec<String> = Vec::with_capacity(args.len());
        if let Some((version, params)) = args.split_first() {
            connect.push(if version.is_empty() {
                "VERSION_1_5_0".to_string()
            } else {
                version.clone()
            });
            for name in params {
                connect.push(self.param_value(name));
            }
        }
        let (w, h) = terminal_pixels(self.config.cols, self.config.rows);
        self.instr("size", &[w.to_string(), h.to_string(), DPI.to_string()]);
        let audio = self.config.audio_mimetypes.clone();
        let video = self.config.video_mimetypes.clone();
        let image = self.config.image_mimetypes.clone();
        self.instr("audio", &audio);
        self.instr("video", &video);
        self.instr("image", &image);
        self.instr("connect", &connect);
    }

    /// Commander's lookup: the name as given, then normalised, `-`→`_`, `_`→`-`, each also lowercased.
    fn param_value(&self, name: &str) -> String {
        let params = &self.config.guacd_params;
        let normalized: String = name
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_lowercase();
        let candidates = [
            name.to_string(),
            normalized,
            name.replace('-', "_"),
            name.replace('_', "-"),
        ];
        for key in &candidates {
            if let Some(v) = params.get(key).or_else(|| params.get(&key.to_lowercase())) {
                return v.clone();
            }
        }
        String::new()
    }

    fn become_ready(&mut self) {
        if self.ready {
            return;
        }
        self.ready = true;
        self.push_event(ClientEvent::Ready);
        self.send_size();
        let queued = std::mem::take(&mut self.queued);
        self.tx.extend_from_slice(&queued);
    }

    fn output(&mut self, bytes: Vec<u8>) {
        let bytes = if self.config.normalize_crlf {
            self.crlf_to_lf(&bytes)
        } else {
            bytes
        };
        if !bytes.is_empty() {
            self.push_event(ClientEvent::Output(bytes));
        }
    }

    /// CRLF → LF, carrying a trailing `\r` into the next blob (Commander's `_streaming_crlf_to_lf`).
    fn crlf_to_lf(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 1);
        let mut iter = bytes.iter().copied().peekable();
        if std::mem::take(&mut self.cr_carry) {
            if iter.peek() == Some(&b'\n') {
                out.push(b'\n');
                iter.next();
            } else {
                out.push(b'\r');
            }
        }
        while let Some(b) = iter.next() {
            match (b, iter.peek()) {
                (b'\r', Some(b'\n')) => {
                    out.push(b'\n');
                    iter.next();
                }
                (b'\r', None) => self.cr_carry = true,
                _ => out.push(b),
            }
        }
        out
    }

    // ----- client → gateway -----

    fn send_keys(&mut self, keysyms: &[u32], now: Instant) {
        for &k in keysyms {
            if self.ended {
                return;
            }
            if k == 3 {
                if let Some(window) = self.config.double_ctrl_c_exit {
                    if self
                        .last_ctrl_c
                        .is_some_and(|t| now.saturating_duration_since(t) <= window)
                    {
                        self.last_ctrl_c = None;
                        self.instr("disconnect", &[] as &[&str]);
                        self.end(EndReason::UserExit);
                        return;
                    }
                    self.last_ctrl_c = Some(now);
                }
            }
            let k = k.to_string();
            self.input_instr("key", &[k.as_str(), "1"]);
            self.input_instr("key", &[k.as_str(), "0"]);
        }
    }

    fn send_stdin(&mut self, data: &[u8]) {
        if self.stdin_failed {
            return;
        }
        if !self.stdin_open {
            self.stdin_open = true;
            self.pending_stdin_ack = true;
            self.input_instr("pipe", &[STDIN_STREAM, "text/plain", "STDIN"]);
        }
        for chunk in data.chunks(MAX_BLOB) {
            let b64 = B64.encode(chunk);
            self.input_instr("blob", &[STDIN_STREAM, b64.as_str()]);
        }
        if self.config.stdin_pipe_per_chunk {
            self.stdin_open = false;
            self.input_instr("end", &[STDIN_STREAM]);
        }
    }

    fn send_size(&mut self) {
        let (w, h) = terminal_pixels(self.config.cols, self.config.rows);
        self.instr("size", &[w.to_string(), h.to_string(), DPI.to_string()]);
    }

    /// An input instruction: sent now when ready, queued otherwise.
    fn input_instr<S: AsRef<str>>(&mut self, opcode: &str, args: &[S]) {
        if self.ready {
            encode_into(&mut self.tx, opcode, args);
        } else {
            encode_into(&mut self.queued, opcode, args);
        }
    }

    fn instr<S: AsRef<str>>(&mut self, opcode: &str, args: &[S]) {
        encode_into(&mut self.tx, opcode, args);
    }

    fn end(&mut self, reason: EndReason) {
        self.ended = true;
        self.queued.clear();
        self.push_event(ClientEvent::Ended(reason));
    }

    fn push_event(&mut self, event: ClientEvent) {
        self.flush_tx();
        self.events.push_back(event);
    }

    fn flush_tx(&mut self) {
        if !self.tx.is_empty() {
            self.events
                .push_back(ClientEvent::ToGateway(std::mem::take(&mut self.tx)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guac::instruction::encode;
    use proptest::prelude::*;

    fn events(c: &mut TerminalClient) -> Vec<ClientEvent> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    /// Everything sent to the gateway, concatenated, as text.
    fn sent(evs: &[ClientEvent]) -> String {
        let b: Vec<u8> = evs
            .iter()
            .filter_map(|e| match e {
                ClientEvent::ToGateway(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        String::from_utf8(b).unwrap()
    }

    fn output(evs: &[ClientEvent]) -> Vec<u8> {
        evs.iter()
            .filter_map(|e| match e {
                ClientEvent::Output(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn ready_client(config: TerminalConfig) -> TerminalClient {
        let mut c = TerminalClient::new(config);
        c.handle_data(b"4.sync,3.100;");
        events(&mut c);
        c
    }

    #[test]
    fn pixel_sizes() {
        assert_eq!(terminal_pixels(80, 24), (830, 494));
        assert_eq!(terminal_cells(830, 494), (80, 24));
        assert_eq!(terminal_cells(0, 0), (1, 1));
        for (c, r) in [(1, 1), (132, 50), (300, 100)] {
            let (w, h) = terminal_pixels(c, r);
            assert_eq!(terminal_cells(w, h), (c, r));
        }
    }

    #[test]
    fn first_sync_makes_ready_and_is_echoed() {
        let mut c = TerminalClient::new(TerminalConfig::default());
        c.handle_data(b"4.sync,13.1700000000000;");
        let ev = events(&mut c);
        assert_eq!(
            ev[0],
            ClientEvent::ToGateway(b"4.sync,13.1700000000000;".to_vec())
        );
        assert_eq!(ev[1], ClientEvent::Ready);
        assert_eq!(sent(&ev[2..]), "4.size,3.830,3.494,2.96;");
        assert!(c.is_ready());
        c.handle_data(b"4.sync,2.42,1.1;");
        assert_eq!(sent(&events(&mut c)), "4.sync,2.42;");
        assert_eq!(c.sync_count(), 2);
    }

    #[test]
    fn ready_instruction_also_makes_ready() {
        let mut c = TerminalClient::new(TerminalConfig::default());
        c.handle_data(b"5.ready,5.$abcd;");
        let ev = events(&mut c);
        assert_eq!(ev[0], ClientEvent::Ready);
        c.handle_data(b"4.sync,1.1;");
        assert!(!events(&mut c).contains(&ClientEvent::Ready));
    }

    #[test]
    fn args_handshake() {
        let mut params = BTreeMap::new();
        params.insert("hostname".to_string(), "10.0.0.5".to_string());
        params.insert("port".to_string(), "22".to_string());
        params.insert("font_size".to_string(), "12".to_string());
        params.insert("colorscheme".to_string(), "gray-black".to_string());
        let mut c = TerminalClient::new(TerminalConfig {
            guacd_params: params,
            ..TerminalConfig::default()
        });
        c.handle_data(&encode(
            "args",
            &[
                "VERSION_1_5_0",
                "hostname",
                "port",
                "font-size",
                "color-scheme",
                "password",
            ],
        ));
        assert_eq!(
            sent(&events(&mut c)),
            "4.size,3.830,3.494,2.96;5.audio;5.video;5.image,9.image/png,10.image/jpeg,10.image/webp;\
             7.connect,13.VERSION_1_5_0,8.10.0.0.5,2.22,2.12,10.gray-black,0.;"
        );
        c.handle_data(&encode("args", &["VERSION_1_5_0"]));
        assert_eq!(sent(&events(&mut c)), "");
    }

    #[test]
    fn stdout_pipe_blob_end() {
        let mut c = ready_client(TerminalConfig::default());
        let wire = [
            encode("pipe", &["7", "text/plain", "STDOUT"]),
            encode("blob", &["7", &B64.encode("hello\r\n")]),
            encode("blob", &["8", &B64.encode("other stream")]),
            encode("end", &["7"]),
            encode("blob", &["7", &B64.encode("after end")]),
        ]
        .concat();
        // Every chunk size gives the same result.
        for chunk in [1, 3, 17, wire.len()] {
            let mut c2 = ready_client(TerminalConfig::default());
            for part in wire.chunks(chunk) {
                c2.handle_data(part);
            }
            let ev = events(&mut c2);
            assert_eq!(output(&ev), b"hello\r\n");
            assert_eq!(sent(&ev), "3.ack,1.7,2.OK,1.0;3.ack,1.7,2.OK,1.0;");
        }
        c.handle_data(&wire);
        assert!(!c.has_stdout_pipe());
    }

    #[test]
    fn text_pipe_fallback_and_stdin_name_excluded() {
        let mut c = ready_client(TerminalConfig::default());
        c.handle_data(&encode("pipe", &["3", "text/plain", "STDIN"]));
        assert!(!c.has_stdout_pipe());
        c.handle_data(&encode("pipe", &["4", "text/plain", "terminal"]));
        assert!(c.has_stdout_pipe());
        assert_eq!(sent(&events(&mut c)), "3.ack,1.4,2.OK,1.0;");
    }

    #[test]
    fn crlf_normalization_across_blobs() {
        let mut c = ready_client(TerminalConfig {
            normalize_crlf: true,
            ..TerminalConfig::default()
        });
        c.handle_data(&encode("pipe", &["1", "text/plain", "STDOUT"]));
        for part in ["a\r", "\nb\r\n\r", "c\r"] {
            c.handle_data(&encode("blob", &["1", &B64.encode(part)]));
        }
        c.handle_data(&encode("end", &["1"]));
        assert_eq!(output(&events(&mut c)), b"a\nb\n\rc\r");
    }

    #[test]
    fn clipboard_is_acked() {
        let mut c = ready_client(TerminalConfig::default());
        c.handle_data(&encode("clipboard", &["5", "text/plain"]));
        c.handle_data(&encode("blob", &["5", &B64.encode("secret")]));
        c.handle_data(&encode("end", &["5"]));
        let ev = events(&mut c);
        assert_eq!(sent(&ev), "3.ack,1.5,2.OK,1.0;3.ack,1.5,2.OK,1.0;");
        assert!(output(&ev).is_empty());
    }

    #[test]
    fn key_input() {
        let t = pam_lite_dev_clock::origin();
        let mut c = ready_client(TerminalConfig::default());
        c.input(b"l\r", t);
        let ev = events(&mut c);
        assert_eq!(ev.len(), 1, "one message per call");
        assert_eq!(
            sent(&ev),
            "3.key,3.108,1.1;3.key,3.108,1.0;3.key,5.65293,1.1;3.key,5.65293,1.0;"
        );
    }

    #[test]
    fn double_ctrl_c_exits() {
        let t = pam_lite_dev_clock::origin();
        let mut c = ready_client(TerminalConfig::default());
        c.input(b"\x03", t);
        assert_eq!(sent(&events(&mut c)), "3.key,1.3,1.1;3.key,1.3,1.0;");
        c.input(b"\x03", t + Duration::from_millis(500));
        assert_eq!(sent(&events(&mut c)), "3.key,1.3,1.1;3.key,1.3,1.0;");
        c.input(b"\x03", t + Duration::from_millis(800));
        let ev = events(&mut c);
        assert_eq!(sent(&ev), "10.disconnect;");
        assert_eq!(ev.last(), Some(&ClientEvent::Ended(EndReason::UserExit)));
        c.input(b"x", t);
        assert!(events(&mut c).is_empty());
    }

    #[test]
    fn lone_escape_after_timeout() {
        let t = pam_lite_dev_clock::origin();
        let mut c = ready_client(TerminalConfig::default());
        c.input(b"\x1b", t);
        assert!(events(&mut c).is_empty());
        let deadline = c.poll_timeout().unwrap();
        c.handle_timeout(deadline);
        assert_eq!(
            sent(&events(&mut c)),
            "3.key,5.65307,1.1;3.key,5.65307,1.0;"
        );
    }

    #[test]
    fn stdin_mode_pipe_once() {
        let t = pam_lite_dev_clock::origin();
        let mut c = ready_client(TerminalConfig {
            input_mode: InputMode::Stdin,
            ..TerminalConfig::default()
        });
        c.input(b"ls\n", t);
        c.input(b"pwd\n", t);
        c.end_input(t);
        assert_eq!(
            sent(&events(&mut c)),
            format!(
                "4.pipe,1.0,10.text/plain,5.STDIN;4.blob,1.0,4.{};4.blob,1.0,8.{};3.end,1.0;",
                B64.encode("ls\n"),
                B64.encode("pwd\n")
            )
        );
        // A refused STDIN pipe stops stdin input.
        c.handle_data(&encode("ack", &["0", "Unsupported", "256"]));
        assert!(c.stdin_failed());
        c.input(b"x", t);
        assert_eq!(sent(&events(&mut c)), "");
    }

    #[test]
    fn stdin_mode_per_chunk_and_blob_limit() {
        let t = pam_lite_dev_clock::origin();
        let config = TerminalConfig {
            input_mode: InputMode::Stdin,
            stdin_pipe_per_chunk: true,
            ..TerminalConfig::default()
        };
        let mut c = ready_client(config);
        c.input(&vec![b'a'; 5000], t);
        let s = sent(&events(&mut c));
        let mut p = InstructionParser::new();
        p.push(s.as_bytes());
        let insts: Vec<Instruction> = std::iter::from_fn(|| p.next())
            .map(Result::unwrap)
            .collect();
        let ops: Vec<&str> = insts.iter().map(|i| i.opcode.as_str()).collect();
        assert_eq!(ops, ["pipe", "blob", "blob", "end"]);
        assert_eq!(B64.decode(&insts[1].args[1]).unwrap().len(), 4096);
        assert!(insts.iter().all(|i| i.encode().len() < 8192));
    }

    #[test]
    fn input_before_ready_is_queued() {
        let t = pam_lite_dev_clock::origin();
        let mut c = TerminalClient::new(TerminalConfig::default());
        c.input(b"a", t);
        c.resize(100, 30);
        assert!(events(&mut c).is_empty());
        c.handle_data(b"4.sync,1.5;");
        let ev = events(&mut c);
        assert_eq!(ev[1], ClientEvent::Ready);
        assert_eq!(
            sent(&ev),
            "4.sync,1.5;4.size,4.1030,3.614,2.96;3.key,2.97,1.1;3.key,2.97,1.0;"
        );
    }

    #[test]
    fn ends() {
        let mut c = ready_client(TerminalConfig::default());
        c.handle_data(b"10.disconnect;4.sync,1.1;");
        assert_eq!(
            events(&mut c),
            vec![ClientEvent::Ended(EndReason::ServerDisconnect)]
        );

        let mut c = ready_client(TerminalConfig::default());
        c.handle_data(&encode("error", &["Aborted. See logs.", "519"]));
        let ev = events(&mut c);
        assert_eq!(sent(&ev), "10.disconnect;");
        assert_eq!(
            ev.last(),
            Some(&ClientEvent::Ended(EndReason::ServerError {
                message: "Aborted. See logs.".into(),
                code: "519".into()
            }))
        );

        let mut c = ready_client(TerminalConfig::default());
        c.handle_data(b"4.sync,x1;");
        let ev = events(&mut c);
        assert!(matches!(
            ev.last(),
            Some(ClientEvent::Ended(EndReason::Protocol(
                GuacError::BadLength { .. }
            )))
        ));

        let mut c = ready_client(TerminalConfig::default());
        c.disconnect();
        let ev = events(&mut c);
        assert_eq!(sent(&ev), "10.disconnect;");
        assert_eq!(
            ev.last(),
            Some(&ClientEvent::Ended(EndReason::LocalDisconnect))
        );
        c.disconnect();
        c.connection_closed(CloseReason::Normal);
        assert!(events(&mut c).is_empty());

        let mut c = ready_client(TerminalConfig::default());
        c.connection_closed(CloseReason::AdminClosed);
        assert_eq!(
            events(&mut c),
            vec![ClientEvent::Ended(EndReason::ConnectionClosed(
                CloseReason::AdminClosed
            ))]
        );
    }

    proptest! {
        #[test]
        fn client_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400), chunk in 1usize..50) {
            let t = pam_lite_dev_clock::origin();
            let mut c = TerminalClient::new(TerminalConfig::default());
            for part in data.chunks(chunk) {
                c.handle_data(part);
                c.input(part, t);
                while c.poll_event().is_some() {}
            }
        }

        #[test]
        fn output_survives_any_chunking(text in proptest::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..300) {
            let wire = [
                encode("sync", &["1"]),
                encode("pipe", &["1", "text/plain", "STDOUT"]),
                encode("blob", &["1", &B64.encode(&text)]),
            ].concat();
            let mut c = TerminalClient::new(TerminalConfig::default());
            let mut out = Vec::new();
            for part in wire.chunks(chunk) {
                c.handle_data(part);
                out.extend(output(&events(&mut c)));
            }
            prop_assert_eq!(out, text);
        }
    }
}
