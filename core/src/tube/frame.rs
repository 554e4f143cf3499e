//! The tube frame: the unit every data-channel message carries.
//!
//! ```text
//! off   size  field
//! 0     4     conn_no    u32 BE   0 = control frame, >0 = data of that tunneled connection
//! 4     8     timestamp  u64 BE   sender's Unix epoch ms (Keeper ignores it on receipt; 0 is accepted)
//! 12    4     length     u32 BE   payload length N
//! 16    N     payload
//! 16+N  1     0x3B ';'   terminator
//! ```
//!
//! Keeper sends exactly one frame per data-channel message but accepts frames coalesced in one message and
//! frames split across messages (it keeps a byte buffer per channel). [`FrameDecoder`] does the same, so the
//! decoder must be fed every message of a channel in order.

use std::fmt;

/// Bytes before the payload: conn_no, timestamp, length.
pub const HEADER_LEN: usize = 16;
/// Header plus terminator: what a frame costs on top of its payload.
pub const FRAME_OVERHEAD: usize = HEADER_LEN + 1;
/// The byte after every payload.
pub const TERMINATOR: u8 = b';';
/// The largest data payload Keeper itself puts in one frame (8209 bytes on the wire).
pub const KEEPER_MAX_DATA_PAYLOAD: usize = 8192;
/// The largest data payload pam-lite puts in one frame. Well inside SCTP's 65535-byte max-message-size.
pub const MAX_DATA_PAYLOAD: usize = 16 * 1024;
/// Default bound on an incoming frame's payload; a larger declared length is a fatal decode error.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// One frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub conn_no: u32,
    pub timestamp_ms: u64,
    pub payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    /// Payloads are user data (and may be large): show only their length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("conn_no", &self.conn_no)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Appends one encoded frame to `out` without first copying `payload` into a [`Frame`].
///
/// A payload longer than `u32::MAX` bytes cannot be framed; callers chunk far below that
/// ([`MAX_DATA_PAYLOAD`]), and such a payload is truncated to `u32::MAX` bytes rather than mis-framed.
pub fn encode_frame_into(conn_no: u32, timestamp_ms: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let payload = payload.get(..len as usize).unwrap_or(payload);
    out.reserve(FRAME_OVERHEAD + payload.len());
    out.extend_from_slice(&conn_no.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out.push(TERMINATOR);
}

impl Frame {
    pub fn new(conn_no: u32, timestamp_ms: u64, payload: Vec<u8>) -> Frame {
        Frame {
            conn_no,
            timestamp_ms,
            payload,
        }
    }

    /// `true` for conn_no 0 (the payload is a control message).
    pub fn is_control(&self) -> bool {
        self.conn_no == 0
    }

    /// Length of the encoded frame.
    pub fn encoded_len(&self) -> usize {
        FRAME_OVERHEAD + self.payload.len()
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_frame_into(self.conn_no, self.timestamp_ms, &self.payload, out);
    }

    /// The encoded frame as a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }
}

/// What went wrong while decoding the byte stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The byte after the payload was not `;`. The frame (header, payload and that byte) was dropped and
    /// decoding continues after it, exactly like Keeper (`try_parse_frame: Corrupt stream, terminator
    /// mismatch`). Recoverable.
    #[error("corrupt frame for conn {conn_no}: expected ';' after {len}-byte payload, found 0x{found:02x}; frame dropped")]
    BadTerminator { conn_no: u32, len: usize, found: u8 },
    /// The declared payload length exceeds the decoder's bound. The stream cannot be resynchronised
    /// (nothing marks the next frame start), so the decoder stops. Fatal.
    #[error(
        "frame for conn {conn_no} declares a {len}-byte payload, more than the {max}-byte limit"
    )]
    PayloadTooLarge { conn_no: u32, len: u64, max: usize },
}

impl FrameError {
    /// `false` when decoding went on after this error, `true` when the decoder has stopped for good.
    pub fn is_fatal(&self) -> bool {
        matches!(self, FrameError::PayloadTooLarge { .. })
    }
}

/// Streaming frame decoder: push data-channel messages in, pull frames out.
///
/// Memory stays bounded by `max_payload + FRAME_OVERHEAD` plus the bytes of the message being pushed: the
/// payload length is checked as soon as the header is complete, before any payload is buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unparsed bytes in `buf`.
    pos: usize,
    max_payload: usize,
    failed: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

/// Compact the buffer once this many consumed bytes sit at its front.
const COMPACT_AT: usize = 64 * 1024;

impl FrameDecoder {
    /// A decoder with the default payload bound ([`DEFAULT_MAX_PAYLOAD`]).
    pub fn new() -> FrameDecoder {
        FrameDecoder::with_max_payload(DEFAULT_MAX_PAYLOAD)
    }

    /// A decoder that rejects payloads longer than `max_payload` bytes.
    pub fn with_max_payload(max_payload: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            pos: 0,
            max_payload,
            failed: false,
        }
    }

    /// Appends received bytes (one data-channel message, or any part of the stream). Ignored after a fatal
    /// error.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed {
            return;
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos >= COMPACT_AT {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet decoded (a partial frame).
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// `true` once a fatal error was returned; the decoder yields nothing more.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// The next complete frame, a decode error, or `None` when more bytes are needed.
    /// Call until `None` after every [`push`](Self::push).
    #[allow(clippy::should_implement_trait)] // not an Iterator: `None` means "need more bytes", not "done".
    pub fn next(&mut self) -> Option<Result<Frame, FrameError>> {
        if self.failed {
            return None;
        }
        let rest = self.buf.get(self.pos..)?;
        let header: &[u8; HEADER_LEN] = rest.get(..HEADER_LEN)?.try_into().ok()?;
        let conn_no = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&header[4..12]);
        let timestamp_ms = u64::from_be_bytes(ts);
        let len32 = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
        let len = match usize::try_from(len32) {
            Ok(len) if len <= self.max_payload => len,
            _ => {
                self.failed = true;
                self.buf = Vec::new();
                self.pos = 0;
                return Some(Err(FrameError::PayloadTooLarge {
                    conn_no,
                    len: u64::from(len32),
                    max: self.max_payload,
                }));
            }
        };
        let end = HEADER_LEN.checked_add(len)?;
        let found = *rest.get(end)?;
        let payload = rest.get(HEADER_LEN..end)?;
        let result = if found == TERMINATOR {
            Ok(Frame {
                conn_no,
                timestamp_ms,
                payload: payload.to_vec(),
            })
        } else {
            Err(FrameError::BadTerminator {
                conn_no,
                len,
                found,
            })
        };
        self.pos += end + 1;
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    impl FrameDecoder {
        fn new_decoded(wire: &[u8]) -> Frame {
            let mut dec = FrameDecoder::new();
            dec.push(wire);
            dec.next().unwrap().unwrap()
        }
    }

    fn decode_all(dec: &mut FrameDecoder) -> Vec<Result<Frame, FrameError>> {
        std::iter::from_fn(|| dec.next()).collect()
    }

    /// (hex dump, conn_no, timestamp, payload hex) from keeper-tube-wire.md §5.3.
    const DUMPS: &[(&str, u32, u64, &str)] = &[
        ("00000000 000001a20b523a61 00000006 0065 00000001 3b", 0, 0x1a20b523a61, "0065 00000001"),
        ("00000000 000001a20b523a62 00000006 0067 00000001 3b", 0, 0x1a20b523a62, "0067 00000001"),
        ("00000000 000001a20b4ec09a 00000006 0067 00000001 3b", 0, 0x1a20b4ec09a, "0067 00000001"),
        (
            "00000001 000001a20b523a63 0000001c 68656c6c6f2d7468726f7567682d61696f7274632d67617465776179 3b",
            1,
            0x1a20b523a63,
            "68656c6c6f2d7468726f7567682d61696f7274632d67617465776179",
        ),
        ("00000000 000001a20b523fcf 00000006 0001 00000000 3b", 0, 0x1a20b523fcf, "0001 00000000"),
        ("00000000 000001a20b523fd0 00000006 0002 00000000 3b", 0, 0x1a20b523fd0, "0002 00000000"),
        ("00000000 000001a20b523fd0 00000002 0001 3b", 0, 0x1a20b523fd0, "0001"),
        (
            "00000000 000001a20b523fd2 0000000e 0001 00000001 0102030405060708 3b",
            0,
            0x1a20b523fd2,
            "0001 00000001 0102030405060708",
        ),
        ("00000000 000001a20b523fd3 00000006 0068 00000001 3b", 0, 0x1a20b523fd3, "0068 00000001"),
        ("00000000 000001a20b52454f 00000007 0066 00000002 00 3b", 0, 0x1a20b52454f, "0066 00000002 00"),
        ("00000000 000001a20b524749 00000007 0066 00000000 0c 3b", 0, 0x1a20b524749, "0066 00000000 0c"),
        ("00000000 000001a20b5247ac 00000007 0066 00000001 0c 3b", 0, 0x1a20b5247ac, "0066 00000001 0c"),
    ];

    #[test]
    fn keeper_hex_dumps_decode_and_reencode() {
        for (dump, conn_no, ts, payload) in DUMPS {
            let wire = hex(dump);
            let mut dec = FrameDecoder::new();
            dec.push(&wire);
            let frames = decode_all(&mut dec);
            assert_eq!(frames.len(), 1, "{dump}");
            let f = frames[0].clone().unwrap();
            assert_eq!((f.conn_no, f.timestamp_ms), (*conn_no, *ts));
            assert_eq!(f.payload, hex(payload));
            assert_eq!(f.encode(), wire, "re-encode {dump}");
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn timestamp_is_unix_ms() {
        // 000001a20b523a61 = 1795486268001 ms = 2026-11-24 02:11:08 UTC (the spec's decimal, 1795486271073,
        // is a typo; the hex and the date agree).
        let f = FrameDecoder::new_decoded(&hex(DUMPS[0].0));
        assert_eq!(f.timestamp_ms, 1_795_486_268_001);
    }

    #[test]
    fn warmup_ping_and_full_data_frame_sizes() {
        let mut payload = vec![0x00, 0x01];
        payload.extend_from_slice(&[0; 1404]);
        let warmup = Frame::new(0, 0x1a20b4ebfcf, payload);
        let wire = warmup.encode();
        assert_eq!(wire.len(), 1423);
        assert_eq!(&wire[..16], &hex("00000000 000001a20b4ebfcf 0000057e")[..]);
        let data = Frame::new(1, 0x1a20b523b33, vec![0xd9; KEEPER_MAX_DATA_PAYLOAD]);
        let wire = data.encode();
        assert_eq!(wire.len(), 8209);
        assert_eq!(&wire[..16], &hex("00000001 000001a20b523b33 00002000")[..]);
        assert_eq!(wire.last(), Some(&b';'));
    }

    #[test]
    fn coalesced_and_split_frames() {
        let a = hex(DUMPS[0].0);
        let b = hex(DUMPS[3].0);
        let c = hex(DUMPS[7].0);
        let stream: Vec<u8> = [a.clone(), b.clone(), c.clone()].concat();
        // Every split point of every chunk size gives the same three frames.
        for chunk in 1..=stream.len() {
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for part in stream.chunks(chunk) {
                dec.push(part);
                got.extend(decode_all(&mut dec));
            }
            let got: Vec<Vec<u8>> = got.into_iter().map(|f| f.unwrap().encode()).collect();
            assert_eq!(got, vec![a.clone(), b.clone(), c.clone()], "chunk {chunk}");
        }
        // Keeper's own split test: 7 bytes, then the rest.
        let mut dec = FrameDecoder::new();
        dec.push(&b[..7]);
        assert!(dec.next().is_none());
        assert_eq!(dec.buffered(), 7);
        dec.push(&b[7..]);
        assert_eq!(
            dec.next().unwrap().unwrap().payload,
            b"hello-through-aiortc-gateway"
        );
    }

    #[test]
    fn bad_terminator_drops_one_frame_and_resyncs() {
        // Keeper's edge case: a Ping whose terminator is 'X' (expected_pos 30 = 16 + 14).
        let mut bad = hex(DUMPS[7].0);
        assert_eq!(bad.len(), 31);
        bad[30] = b'X';
        let good = hex(DUMPS[4].0);
        let mut dec = FrameDecoder::new();
        dec.push(&[bad, good.clone()].concat());
        let out = decode_all(&mut dec);
        assert_eq!(out.len(), 2);
        let err = out[0].clone().unwrap_err();
        assert_eq!(
            err,
            FrameError::BadTerminator {
                conn_no: 0,
                len: 14,
                found: b'X'
            }
        );
        assert!(!err.is_fatal());
        assert_eq!(out[1].clone().unwrap().encode(), good);
        assert!(!dec.has_failed());
    }

    #[test]
    fn oversized_payload_is_fatal_without_allocation() {
        let mut dec = FrameDecoder::with_max_payload(1024);
        dec.push(&hex("00000001 0000000000000000 ffffffff"));
        let err = dec.next().unwrap().unwrap_err();
        assert_eq!(
            err,
            FrameError::PayloadTooLarge {
                conn_no: 1,
                len: 0xffff_ffff,
                max: 1024
            }
        );
        assert!(err.is_fatal());
        assert!(dec.has_failed());
        assert!(dec.next().is_none());
        dec.push(&hex(DUMPS[0].0));
        assert!(dec.next().is_none());
        assert_eq!(dec.buffered(), 0);
        // Exactly at the limit is fine.
        let mut dec = FrameDecoder::with_max_payload(1024);
        dec.push(&Frame::new(3, 0, vec![7; 1024]).encode());
        assert_eq!(dec.next().unwrap().unwrap().payload.len(), 1024);
    }

    #[test]
    fn compaction_keeps_partial_frames() {
        let frame = Frame::new(1, 5, vec![1; 1000]).encode();
        let mut dec = FrameDecoder::new();
        let mut n = 0;
        // Offset the stream by half a frame each push so a partial frame is always buffered.
        let stream: Vec<u8> = std::iter::repeat_n(frame.clone(), 300).flatten().collect();
        for part in stream.chunks(1500) {
            dec.push(part);
            while let Some(f) = dec.next() {
                assert_eq!(f.unwrap().encode(), frame);
                n += 1;
            }
            assert!(dec.buf.len() <= COMPACT_AT + 3000);
        }
        assert_eq!(n, 300);
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(c, t, p)| Frame::new(c, t, p))
    }

    proptest! {
        #[test]
        fn encode_decode_identity(frames in proptest::collection::vec(arb_frame(), 0..8),
                                  chunk in 1usize..200) {
            let stream: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for part in stream.chunks(chunk) {
                dec.push(part);
                got.extend(decode_all(&mut dec).into_iter().map(Result::unwrap));
            }
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512),
                                chunk in 1usize..64, max in 0usize..256) {
            let mut dec = FrameDecoder::with_max_payload(max);
            for part in data.chunks(chunk) {
                dec.push(part);
                while let Some(r) = dec.next() {
                    if let Ok(f) = r { prop_assert!(f.payload.len() <= max); }
                }
            }
        }
    }
}
