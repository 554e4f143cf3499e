//! Keystrokes ↔ X11 keysyms, the way Commander's `pam launch` key-event mode does it
//! (`guac_cli/input.py`, `guac_cli/decoder.py:X11Keysym`, keepercommander 18.1.8), and back.
//!
//! * [`KeyEncoder`] (client): raw terminal bytes → keysyms. Printable characters map to their code point
//!   (U+0000–U+00FF directly, above that `0x0100_0000 | cp`); Enter → Return 0xff0d, Backspace (DEL 0x7f and
//!   BS 0x08) → 0xff08, Tab → 0xff09, Esc → 0xff1b; ANSI escape sequences → arrows/Home/End/Insert/Delete/
//!   PageUp/PageDown/F1–F12 (`ESC [1;5A`-style modifier forms map to the plain arrow); every other control
//!   character (Ctrl-A … Ctrl-Z …) is sent as its own code as keysym (Ctrl-C = 3), which guacd types as
//!   that byte. NUL is dropped. `\r\n` (even split over two reads within the merge window) is one Return.
//! * [`KeysymDecoder`] (gateway/emulator): keysym presses → the bytes a terminal would send to its PTY,
//!   tracking Ctrl/Alt so chords from a graphical client work too. Encoding then decoding gives back the
//!   input bytes for every canonical sequence (`\r`, DEL, `ESC [A`, …).
//!
//! Differences from Commander, on purpose: input is decoded as UTF-8 across reads (Commander decodes each
//! byte on its own, so non-ASCII input became U+FFFD); `ESC` followed by a byte that starts no sequence
//! (Alt-x) is sent as Escape then that key instead of being dropped.

use std::time::{Duration, Instant};

pub const BACKSPACE: u32 = 0xFF08;
pub const TAB: u32 = 0xFF09;
pub const RETURN: u32 = 0xFF0D;
pub const ESCAPE: u32 = 0xFF1B;
pub const DELETE: u32 = 0xFFFF;
pub const INSERT: u32 = 0xFF63;
pub const HOME: u32 = 0xFF50;
pub const LEFT: u32 = 0xFF51;
pub const UP: u32 = 0xFF52;
pub const RIGHT: u32 = 0xFF53;
pub const DOWN: u32 = 0xFF54;
pub const PAGE_UP: u32 = 0xFF55;
pub const PAGE_DOWN: u32 = 0xFF56;
pub const END: u32 = 0xFF57;
pub const KP_ENTER: u32 = 0xFF8D;
pub const F1: u32 = 0xFFBE;
pub const F2: u32 = 0xFFBF;
pub const F3: u32 = 0xFFC0;
pub const F4: u32 = 0xFFC1;
pub const F5: u32 = 0xFFC2;
pub const F6: u32 = 0xFFC3;
pub const F7: u32 = 0xFFC4;
pub const F8: u32 = 0xFFC5;
pub const F9: u32 = 0xFFC6;
pub const F10: u32 = 0xFFC7;
pub const F11: u32 = 0xFFC8;
pub const F12: u32 = 0xFFC9;
pub const SHIFT_L: u32 = 0xFFE1;
pub const SHIFT_R: u32 = 0xFFE2;
pub const CONTROL_L: u32 = 0xFFE3;
pub const CONTROL_R: u32 = 0xFFE4;
pub const CAPS_LOCK: u32 = 0xFFE5;
pub const META_L: u32 = 0xFFE7;
pub const META_R: u32 = 0xFFE8;
pub const ALT_L: u32 = 0xFFE9;
pub const ALT_R: u32 = 0xFFEA;

/// Guacamole / X11 Unicode keysym offset for code points above U+00FF.
pub const UNICODE_OFFSET: u32 = 0x0100_0000;

/// Escape sequences (after the ESC byte) and their keysyms: Commander's `_escape_to_keysym` table.
/// The first entry for a keysym is what [`KeysymDecoder`] sends back.
const ESCAPES: &[(&[u8], u32)] = &[
    (b"[A", UP),
    (b"[B", DOWN),
    (b"[C", RIGHT),
    (b"[D", LEFT),
    (b"[H", HOME),
    (b"[F", END),
    (b"[2~", INSERT),
    (b"[3~", DELETE),
    (b"[5~", PAGE_UP),
    (b"[6~", PAGE_DOWN),
    (b"OP", F1),
    (b"OQ", F2),
    (b"OR", F3),
    (b"OS", F4),
    (b"[15~", F5),
    (b"[17~", F6),
    (b"[18~", F7),
    (b"[19~", F8),
    (b"[20~", F9),
    (b"[21~", F10),
    (b"[23~", F11),
    (b"[24~", F12),
    (b"[1~", HOME),
    (b"[4~", END),
];

/// Commander reads at most this many bytes after ESC.
const MAX_ESCAPE: usize = 8;

/// The keysym Guacamole uses for a Unicode scalar (Commander's `keysym_from_unicode_codepoint`).
pub fn keysym_from_char(c: char) -> u32 {
    let cp = u32::from(c);
    if cp <= 0xFF {
        cp
    } else {
        UNICODE_OFFSET | cp
    }
}

/// The keysym for a C0 control byte or DEL (Commander's `_control_char_to_keysym` plus its DEL rule);
/// `None` for NUL, which Commander drops.
pub fn keysym_for_control(byte: u8) -> Option<u32> {
    Some(match byte {
        0 => return None,
        8 | 0x7F => BACKSPACE,
        9 => TAB,
        10 | 13 => RETURN,
        27 => ESCAPE,
        other => u32::from(other),
    })
}

/// The keysym of an escape sequence given without its leading ESC (`b"[A"` → Up).
/// `[1;<mod>A`–`D` (modified arrows) map to the plain arrow, like Commander.
pub fn keysym_for_escape(seq: &[u8]) -> Option<u32> {
    if seq.len() >= 4 && seq.starts_with(b"[1;") {
        return match seq.last() {
            Some(b'A') => Some(UP),
            Some(b'B') => Some(DOWN),
            Some(b'C') => Some(RIGHT),
            Some(b'D') => Some(LEFT),
            _ => None,
        };
    }
    ESCAPES.iter().find(|(s, _)| *s == seq).map(|(_, k)| *k)
}

/// The escape sequence (without ESC) a terminal sends for a special key keysym.
pub fn escape_for_keysym(keysym: u32) -> Option<&'static [u8]> {
    ESCAPES.iter().find(|(_, k)| *k == keysym).map(|(s, _)| *s)
}

/// How far an escape sequence (the bytes after ESC) has got.
enum EscapeScan {
    /// Needs more bytes.
    Incomplete,
    /// The sequence is `len` bytes long.
    Complete(usize),
    /// ESC is not followed by a sequence introducer: ESC is a key on its own.
    NotASequence,
}

fn scan_escape(after: &[u8]) -> EscapeScan {
    match after.first() {
        None => EscapeScan::Incomplete,
        Some(b'O') => match after.get(1) {
            None => EscapeScan::Incomplete,
            Some(_) => EscapeScan::Complete(2),
        },
        Some(b'[') => {
            // CSI: parameter/intermediate bytes 0x20–0x3F, then a final byte 0x40–0x7E.
            for (i, b) in after.iter().enumerate().skip(1) {
                if (0x40..=0x7E).contains(b) {
                    return EscapeScan::Complete(i + 1);
                }
                if !(0x20..=0x3F).contains(b) || i + 1 >= MAX_ESCAPE {
                    return EscapeScan::Complete(i + 1); // malformed or too long: ends here, unmapped
                }
            }
            EscapeScan::Incomplete
        }
        Some(_) => EscapeScan::NotASequence,
    }
}

/// Streaming keystroke → keysym encoder (client side). Feed raw terminal input; collect keysyms.
///
/// An ESC at the end of a read may start a sequence whose rest is still in flight; it is held until
/// [`poll_timeout`](Self::poll_timeout) (50 ms like Commander) and then sent as the Escape key.
#[derive(Debug)]
pub struct KeyEncoder {
    pending: Vec<u8>,
    esc_deadline: Option<Instant>,
    lf_deadline: Option<Instant>,
    crlf_merge: Duration,
    escape_timeout: Duration,
}

impl Default for KeyEncoder {
    fn default() -> Self {
        KeyEncoder::new(Duration::from_millis(50), Duration::from_millis(50))
    }
}

impl KeyEncoder {
    /// `crlf_merge`: a `\n` this soon after a `\r` is part of the same Enter (Commander's
    /// `PAM_LAUNCH_CRLF_MERGE_DELAY_MS`, 50–500 ms). `escape_timeout`: how long a lone ESC waits for the
    /// rest of a sequence.
    pub fn new(crlf_merge: Duration, escape_timeout: Duration) -> KeyEncoder {
        KeyEncoder {
            pending: Vec::new(),
            esc_deadline: None,
            lf_deadline: None,
            crlf_merge,
            escape_timeout,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called at the latest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.esc_deadline
    }

    /// Feeds input bytes read at `now`; appends the keysyms to `out`.
    pub fn feed(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<u32>) {
        self.pending.extend_from_slice(bytes);
        self.process(now, false, out);
    }

    /// Time passed: a held ESC whose deadline is over becomes the Escape key.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<u32>) {
        if self.esc_deadline.is_some_and(|d| now >= d) {
            self.process(now, true, out);
        }
    }

    /// End of input: everything held is sent (ESC as Escape, a partial UTF-8 character as U+FFFD).
    pub fn flush(&mut self, now: Instant, out: &mut Vec<u32>) {
        self.process(now, true, out);
        if !self.pending.is_empty() {
            self.pending.clear();
            out.push(keysym_from_char(char::REPLACEMENT_CHARACTER));
        }
    }

    fn process(&mut self, now: Instant, force: bool, out: &mut Vec<u32>) {
        let mut i = 0;
        let buf = std::mem::take(&mut self.pending);
        self.esc_deadline = None;
        while let Some(&b) = buf.get(i) {
            let rest = buf.get(i..).unwrap_or(&[]);
            if b != b'\n' && b != b'\r' {
                self.lf_deadline = None;
            }
            match b {
                0x1B => {
                    let after = rest.get(1..).unwrap_or(&[]);
                    match scan_escape(after) {
                        EscapeScan::Complete(len) => {
                            if let Some(k) = after.get(..len).and_then(keysym_for_escape) {
                                out.push(k);
                            }
                            i += 1 + len;
                        }
                        EscapeScan::NotASequence => {
                            out.push(ESCAPE);
                            i += 1;
                        }
                        EscapeScan::Incomplete if force => {
                            // Timeout: ESC is a key; whatever followed is typed normally.
                            out.push(ESCAPE);
                            i += 1;
                        }
                        EscapeScan::Incomplete => {
                            self.esc_deadline = Some(now + self.escape_timeout);
                            break;
                        }
                    }
                }
                b'\r' => {
                    out.push(RETURN);
                    self.lf_deadline = Some(now + self.crlf_merge);
                    i += 1;
                }
                b'\n' => {
                    if self.lf_deadline.is_none_or(|d| now > d) {
                        out.push(RETURN);
                    }
                    self.lf_deadline = None;
                    i += 1;
                }
                0x00..=0x1F | 0x7F => {
                    out.extend(keysym_for_control(b));
                    i += 1;
                }
                0x20..=0x7E => {
                    out.push(u32::from(b));
                    i += 1;
                }
                _ => match decode_utf8(rest) {
                    Utf8::Char(c, len) => {
                        out.push(keysym_from_char(c));
                        i += len;
                    }
                    Utf8::Invalid => {
                        out.push(keysym_from_char(char::REPLACEMENT_CHARACTER));
                        i += 1;
                    }
                    Utf8::Incomplete => break,
                },
            }
        }
        self.pending = buf.get(i..).unwrap_or(&[]).to_vec();
    }
}

enum Utf8 {
    Char(char, usize),
    Invalid,
    Incomplete,
}

/// Decodes one UTF-8 character at the start of `bytes` (whose first byte is ≥ 0x80).
fn decode_utf8(bytes: &[u8]) -> Utf8 {
    let Some(&lead) = bytes.first() else {
        return Utf8::Incomplete;
    };
    let len = match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return Utf8::Invalid,
    };
    let Some(candidate) = bytes.get(..len) else {
        // Incomplete only if what is there so far could still be valid.
        return if bytes.iter().skip(1).all(|b| b & 0xC0 == 0x80) {
            Utf8::Incomplete
        } else {
            Utf8::Invalid
        };
    };
    match std::str::from_utf8(candidate)
        .ok()
        .and_then(|s| s.chars().next())
    {
        Some(c) => Utf8::Char(c, len),
        None => Utf8::Invalid,
    }
}

/// Keysym events → PTY bytes (gateway/emulator side), like guacd's terminal: key presses produce bytes,
/// releases only update the modifier state.
#[derive(Debug, Default)]
pub struct KeysymDecoder {
    ctrl: bool,
    alt: bool,
}

impl KeysymDecoder {
    pub fn new() -> KeysymDecoder {
        KeysymDecoder::default()
    }

    /// One `key,<keysym>,<pressed>` event; appends the bytes it types to `out`.
    pub fn key(&mut self, keysym: u32, pressed: bool, out: &mut Vec<u8>) {
        match keysym {
            CONTROL_L | CONTROL_R => return self.ctrl = pressed,
            ALT_L | ALT_R | META_L | META_R => return self.alt = pressed,
            SHIFT_L | SHIFT_R | CAPS_LOCK => return,
            _ if !pressed => return,
            _ => {}
        }
        let start = out.len();
        match keysym {
            RETURN | KP_ENTER => out.push(b'\r'),
            BACKSPACE => out.push(0x7F),
            TAB => out.push(b'\t'),
            ESCAPE => out.push(0x1B),
            _ => {
                if let Some(seq) = escape_for_keysym(keysym) {
                    out.push(0x1B);
                    out.extend_from_slice(seq);
                } else if let Some(c) = char_of_keysym(keysym) {
                    match (self.ctrl, u8::try_from(u32::from(c))) {
                        (true, Ok(b @ (b'@'..=b'_' | b'a'..=b'z' | b' '))) => {
                            out.push(b.to_ascii_uppercase() & 0x1F)
                        }
                        (true, Ok(b'?')) => out.push(0x7F),
                        _ => {
                            let mut tmp = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                        }
                    }
                } else {
                    return; // a keysym with no terminal meaning (e.g. a lone modifier we do not track)
                }
            }
        }
        if self.alt {
            out.insert(start, 0x1B);
        }
    }
}

/// The character a keysym types: Latin-1 keysyms are their code point, Unicode keysyms carry it.
fn char_of_keysym(keysym: u32) -> Option<char> {
    if keysym <= 0xFF {
        char::from_u32(keysym)
    } else if keysym & 0xFF00_0000 == UNICODE_OFFSET {
        char::from_u32(keysym & 0x00FF_FFFF)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(bytes: &[u8]) -> Vec<u32> {
        let mut e = KeyEncoder::default();
        let mut out = Vec::new();
        let t = pam_lite_dev_clock::origin();
        e.feed(bytes, t, &mut out);
        e.flush(t, &mut out);
        out
    }

    fn dec(keysyms: &[u32]) -> Vec<u8> {
        let mut d = KeysymDecoder::new();
        let mut out = Vec::new();
        for k in keysyms {
            d.key(*k, true, &mut out);
            d.key(*k, false, &mut out);
        }
        out
    }

    #[test]
    fn commander_mapping() {
        assert_eq!(
            enc(b"echo hi\r"),
            vec![0x65, 0x63, 0x68, 0x6f, 0x20, 0x68, 0x69, RETURN]
        );
        assert_eq!(
            enc(b"\x7f\x08\t\x1b"),
            vec![BACKSPACE, BACKSPACE, TAB, ESCAPE]
        );
        assert_eq!(enc(b"\x03\x04\x1a\x16"), vec![3, 4, 0x1a, 0x16]);
        assert_eq!(enc(b"\x00a"), vec![0x61]);
        assert_eq!(
            enc(b"\x1b[A\x1b[B\x1b[C\x1b[D"),
            vec![UP, DOWN, RIGHT, LEFT]
        );
        assert_eq!(enc(b"\x1b[1;5A\x1b[1;2D"), vec![UP, LEFT]);
        assert_eq!(
            enc(b"\x1b[H\x1b[1~\x1b[F\x1b[4~"),
            vec![HOME, HOME, END, END]
        );
        assert_eq!(
            enc(b"\x1b[2~\x1b[3~\x1b[5~\x1b[6~"),
            vec![INSERT, DELETE, PAGE_UP, PAGE_DOWN]
        );
        assert_eq!(enc(b"\x1bOP\x1bOS\x1b[15~\x1b[24~"), vec![F1, F4, F5, F12]);
        assert_eq!(enc(b"\x1b[99~x"), vec![0x78]); // unknown sequences are dropped
        assert_eq!(enc("é€😀".as_bytes()), vec![0xE9, 0x0100_20AC, 0x0101_F600]);
        assert_eq!(enc(b"\xff\x80a"), vec![0x0100_FFFD, 0x0100_FFFD, 0x61]);
        assert_eq!(enc(b"\x1bx"), vec![ESCAPE, 0x78]); // Alt-x
        assert_eq!(enc(b"\x1b\x1b[A"), vec![ESCAPE, UP]);
    }

    #[test]
    fn crlf_merge_window() {
        let t = pam_lite_dev_clock::origin();
        let mut e = KeyEncoder::default();
        let mut out = Vec::new();
        e.feed(b"\r\n", t, &mut out);
        assert_eq!(out, vec![RETURN]);
        out.clear();
        e.feed(b"\r", t, &mut out);
        e.feed(b"\n", t + Duration::from_millis(10), &mut out);
        assert_eq!(out, vec![RETURN]);
        out.clear();
        e.feed(b"\r", t, &mut out);
        e.feed(b"\n", t + Duration::from_millis(100), &mut out);
        assert_eq!(out, vec![RETURN, RETURN]);
        out.clear();
        e.feed(b"\n\n", t, &mut out);
        assert_eq!(out, vec![RETURN, RETURN]);
    }

    #[test]
    fn split_escape_and_utf8() {
        let t = pam_lite_dev_clock::origin();
        let mut e = KeyEncoder::default();
        let mut out = Vec::new();
        e.feed(b"\x1b", t, &mut out);
        assert!(out.is_empty());
        assert_eq!(e.poll_timeout(), Some(t + Duration::from_millis(50)));
        e.feed(b"[", t, &mut out);
        e.feed(b"A", t, &mut out);
        assert_eq!(out, vec![UP]);
        assert_eq!(e.poll_timeout(), None);
        out.clear();
        e.feed(b"\x1b", t, &mut out);
        e.handle_timeout(t + Duration::from_millis(49), &mut out);
        assert!(out.is_empty());
        e.handle_timeout(t + Duration::from_millis(50), &mut out);
        assert_eq!(out, vec![ESCAPE]);
        out.clear();
        let euro = "€".as_bytes();
        e.feed(&euro[..1], t, &mut out);
        e.feed(&euro[1..], t, &mut out);
        assert_eq!(out, vec![0x0100_20AC]);
    }

    #[test]
    fn decoder_inverts_encoder() {
        for input in [
            &b"echo hi\r"[..],
            b"\x7f\t\x1b[A\x1b[B\x1b[C\x1b[D\x1b[H\x1b[F\x1b[2~\x1b[3~\x1b[5~\x1b[6~",
            b"\x1bOP\x1bOQ\x1bOR\x1bOS\x1b[15~\x1b[17~\x1b[18~\x1b[19~\x1b[20~\x1b[21~\x1b[23~\x1b[24~",
            b"\x03\x04\x01\x1a",
            "grüße €😀".as_bytes(),
        ] {
            assert_eq!(dec(&enc(input)), input, "{input:?}");
        }
    }

    #[test]
    fn decoder_modifiers() {
        let mut d = KeysymDecoder::new();
        let mut out = Vec::new();
        d.key(CONTROL_L, true, &mut out);
        d.key(u32::from(b'c'), true, &mut out);
        d.key(u32::from(b'c'), false, &mut out);
        d.key(u32::from(b'['), true, &mut out);
        d.key(CONTROL_L, false, &mut out);
        d.key(ALT_L, true, &mut out);
        d.key(u32::from(b'x'), true, &mut out);
        d.key(ALT_L, false, &mut out);
        d.key(KP_ENTER, true, &mut out);
        d.key(0xFE03, true, &mut out); // ISO_Level3_Shift: nothing
        assert_eq!(out, b"\x03\x1b\x1bx\r");
    }

    proptest! {
        #[test]
        fn printable_text_round_trips(s in "[ -~é€😀]{0,40}") {
            prop_assert_eq!(dec(&enc(s.as_bytes())), s.as_bytes());
        }

        #[test]
        fn encoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100), chunk in 1usize..10) {
            let t = pam_lite_dev_clock::origin();
            let mut e = KeyEncoder::default();
            let mut out = Vec::new();
            for part in data.chunks(chunk) { e.feed(part, t, &mut out); }
            e.handle_timeout(t + Duration::from_secs(1), &mut out);
            e.flush(t, &mut out);
            let mut d = KeysymDecoder::new();
            let mut bytes = Vec::new();
            for k in out { d.key(k, true, &mut bytes); }
        }

        #[test]
        fn decoder_never_panics(keys in proptest::collection::vec((any::<u32>(), any::<bool>()), 0..50)) {
            let mut d = KeysymDecoder::new();
            let mut out = Vec::new();
            for (k, p) in keys { d.key(k, p, &mut out); }
        }
    }
}
