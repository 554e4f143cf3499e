//! The Guacamole instruction codec: `<len>.<elem>,<len>.<elem>,…;`.
//!
//! `len` is the element's length in Unicode **code points** (not bytes, not UTF-16 units): Commander's
//! `guacamole/parser.py` and guacd agree on that. The first element is the opcode.
//!
//! [`InstructionParser`] works on bytes, so it takes any chunk boundaries, including ones inside a
//! multi-byte character (Commander decodes each data frame as UTF-8 on its own and drops the frame when a
//! character is split; this parser does not). Sizes are bounded by [`Limits`]; any error is fatal for the
//! stream, since nothing marks where the next instruction would start.

use std::fmt;

/// One instruction.
#[derive(Clone, PartialEq, Eq)]
pub struct Instruction {
    pub opcode: String,
    pub args: Vec<String>,
}

impl fmt::Debug for Instruction {
    /// Shows the opcode and argument sizes only for `blob` (terminal output, possibly secrets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.opcode == "blob" {
            let lens: Vec<usize> = self.args.iter().map(String::len).collect();
            write!(f, "Instruction(blob, arg lengths {lens:?})")
        } else {
            write!(f, "Instruction({}, {:?})", self.opcode, self.args)
        }
    }
}

/// Appends one encoded element (`len.value`) to `out`.
fn encode_element(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(value.chars().count().to_string().as_bytes());
    out.push(b'.');
    out.extend_from_slice(value.as_bytes());
}

/// Appends the instruction `opcode,args…;` to `out` without building an [`Instruction`].
pub fn encode_into<S: AsRef<str>>(out: &mut Vec<u8>, opcode: &str, args: &[S]) {
    encode_element(out, opcode);
    for arg in args {
        out.push(b',');
        encode_element(out, arg.as_ref());
    }
    out.push(b';');
}

/// The instruction `opcode,args…;` as a new buffer.
pub fn encode<S: AsRef<str>>(opcode: &str, args: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, opcode, args);
    out
}

impl Instruction {
    pub fn new<S: Into<String>>(opcode: &str, args: impl IntoIterator<Item = S>) -> Instruction {
        Instruction {
            opcode: opcode.to_string(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// Argument `i` (after the opcode), if present.
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(String::as_str)
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_into(out, &self.opcode, &self.args);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Bounds on what the parser accepts. guacd itself caps an instruction at 8192 bytes and 128 elements;
/// the defaults are far above that so a gateway that sends larger blobs still works, but low enough that a
/// hostile peer cannot make us buffer without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest instruction, in bytes on the wire.
    pub max_instruction_bytes: usize,
    /// Most elements (opcode included) per instruction.
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_instruction_bytes: 1024 * 1024,
            max_elements: 1024,
        }
    }
}

/// Why the instruction stream is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuacError {
    #[error("element length contains {found:?}, not a digit")]
    BadLength { found: char },
    #[error("element length is empty")]
    EmptyLength,
    #[error("element of {len} code points exceeds the instruction limit of {max} bytes")]
    ElementTooLong { len: u64, max: usize },
    #[error("instruction longer than {max} bytes")]
    InstructionTooLong { max: usize },
    #[error("instruction has more than {max} elements")]
    TooManyElements { max: usize },
    #[error("element followed by {found:?} instead of ',' or ';'")]
    BadTerminator { found: char },
    #[error("element is not valid UTF-8")]
    InvalidUtf8,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading the decimal length.
    Length { value: u64, digits: u32 },
    /// Reading the value: `remaining` code points still to start; the value began at `start`.
    Value { remaining: u64, start: usize },
}

/// Streaming instruction parser: push bytes, pull instructions.
#[derive(Debug)]
pub struct InstructionParser {
    limits: Limits,
    buf: Vec<u8>,
    /// Next byte to look at.
    pos: usize,
    /// Where the current instruction started.
    inst_start: usize,
    state: State,
    elements: Vec<String>,
    failed: bool,
}

impl Default for InstructionParser {
    fn default() -> Self {
        InstructionParser::new()
    }
}

const COMPACT_AT: usize = 64 * 1024;

fn is_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
}

impl InstructionParser {
    pub fn new() -> InstructionParser {
        InstructionParser::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> InstructionParser {
        InstructionParser {
            limits,
            buf: Vec::new(),
            pos: 0,
            inst_start: 0,
            state: State::Length {
                value: 0,
                digits: 0,
            },
            elements: Vec::new(),
            failed: false,
        }
    }

    /// Appends received bytes. Ignored after an error.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed {
            return;
        }
        if self.inst_start == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.inst_start = 0;
        } else if self.inst_start >= COMPACT_AT {
            let shift = self.inst_start;
            self.buf.drain(..shift);
            self.pos -= shift;
            self.inst_start = 0;
            if let State::Value { start, .. } = &mut self.state {
                *start -= shift;
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// `true` once an error was returned; nothing more is parsed.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    fn fail(&mut self, err: GuacError) -> Option<Result<Instruction, GuacError>> {
        self.failed = true;
        self.buf = Vec::new();
        self.pos = 0;
        self.inst_start = 0;
        self.elements.clear();
        Some(Err(err))
    }

    /// The next complete instruction, an error (then nothing more), or `None` when more bytes are needed.
    #[allow(clippy::should_implement_trait)] // not an Iterator: `None` means "need more bytes".
    pub fn next(&mut self) -> Option<Result<Instruction, GuacError>> {
        if self.failed {
            return None;
        }
        let max_bytes = self.limits.max_instruction_bytes;
        loop {
            if self.pos - self.inst_start > max_bytes {
                return self.fail(GuacError::InstructionTooLong { max: max_bytes });
            }
            match self.state {
                State::Length { value, digits } => {
                    let b = *self.buf.get(self.pos)?;
                    self.pos += 1;
                    match b {
                        b'0'..=b'9' => {
                            let next = value
                                .checked_mul(10)
                                .and_then(|v| v.checked_add(u64::from(b - b'0')));
                            let value = match next {
                                Some(v) if v <= max_bytes as u64 => v,
                                _ => {
                                    let len = next.unwrap_or(u64::MAX);
                                    return self.fail(GuacError::ElementTooLong {
                                        len,
                                        max: max_bytes,
                                    });
                                }
                            };
                            self.state = State::Length {
                                value,
                                digits: digits + 1,
                            };
                        }
                        b'.' if digits == 0 => return self.fail(GuacError::EmptyLength),
                        b'.' => {
                            self.state = State::Value {
                                remaining: value,
                                start: self.pos,
                            }
                        }
                        other => {
                            return self.fail(GuacError::BadLength {
                                found: char::from(other),
                            })
                        }
                    }
                }
                State::Value {
                    mut remaining,
                    start,
                } => {
                    // Advance over `remaining` code points: a code point starts at every byte that is not a
                    // UTF-8 continuation byte; the element ends at the first non-continuation byte after
                    // the last one, which must be the terminator.
                    let limit = self
                        .buf
                        .len()
                        .min(self.inst_start.saturating_add(max_bytes).saturating_add(1));
                    let mut end = None;
                    while self.pos < limit {
                        let b = self.buf[self.pos];
                        if is_continuation(b) {
                            self.pos += 1;
                        } else if remaining == 0 {
                            end = Some((self.pos, b));
                            break;
                        } else {
                            remaining -= 1;
                            self.pos += 1;
                        }
                    }
                    self.state = State::Value { remaining, start };
                    let Some((end, terminator)) = end else {
                        if self.pos - self.inst_start > max_bytes {
                            return self.fail(GuacError::InstructionTooLong { max: max_bytes });
                        }
                        return None;
                    };
                    let value = match std::str::from_utf8(&self.buf[start..end]) {
                        Ok(v) => v.to_string(),
                        Err(_) => return self.fail(GuacError::InvalidUtf8),
                    };
                    if self.elements.len() >= self.limits.max_elements {
                        return self.fail(GuacError::TooManyElements {
                            max: self.limits.max_elements,
                        });
                    }
                    self.elements.push(value);
                    self.pos = end + 1;
                    self.state = State::Length {
                        value: 0,
                        digits: 0,
                    };
                    match terminator {
                        b',' => {}
                        b';' => {
                            let mut elements = std::mem::take(&mut self.elements).into_iter();
                            let opcode = elements.next().unwrap_or_default();
                            self.inst_start = self.pos;
                            return Some(Ok(Instruction {
                                opcode,
                                args: elements.collect(),
                            }));
                        }
                        other => {
                            return self.fail(GuacError::BadTerminator {
                                found: char::from(other),
                            })
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(data: &[u8], chunk: usize) -> Vec<Result<Instruction, GuacError>> {
        let mut p = InstructionParser::new();
        let mut out = Vec::new();
        for part in data.chunks(chunk.max(1)) {
            p.push(part);
            out.extend(std::iter::from_fn(|| p.next()));
        }
        out
    }

    #[test]
    fn encodes_like_commander() {
        assert_eq!(encode("key", &["65", "1"]), b"3.key,2.65,1.1;");
        assert_eq!(encode("sync", &["1234567890"]), b"4.sync,10.1234567890;");
        assert_eq!(encode::<&str>("disconnect", &[]), b"10.disconnect;");
        assert_eq!(encode::<&str>("audio", &[]), b"5.audio;");
        assert_eq!(encode("blob", &["", "x"]), b"4.blob,0.,1.x;");
        // Code points, not bytes: "é" is 2 bytes, "😀" 4 bytes.
        assert_eq!(encode("name", &["é😀"]), "4.name,2.é😀;".as_bytes());
    }

    #[test]
    fn parses_every_split() {
        let wire =
            "4.sync,10.1234567890;4.pipe,1.1,10.text/plain,6.STDOUT;4.name,2.é😀;0.;".as_bytes();
        let expected = vec![
            Instruction::new("sync", ["1234567890"]),
            Instruction::new("pipe", ["1", "text/plain", "STDOUT"]),
            Instruction::new("name", ["é😀"]),
            Instruction::new::<&str>("", []),
        ];
        for chunk in 1..=wire.len() {
            let got: Vec<Instruction> = parse_all(wire, chunk)
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(got, expected, "chunk {chunk}");
        }
    }

    #[test]
    fn errors() {
        let first_err = |s: &[u8]| parse_all(s, s.len()).into_iter().find_map(Result::err);
        assert_eq!(
            first_err(b"x.sync;"),
            Some(GuacError::BadLength { found: 'x' })
        );
        assert_eq!(first_err(b".;"), Some(GuacError::EmptyLength));
        assert_eq!(first_err(b";"), Some(GuacError::BadLength { found: ';' }));
        assert_eq!(
            first_err(b"4.syncX"),
            Some(GuacError::BadTerminator { found: 'X' })
        );
        assert_eq!(first_err(b"1.\xff;"), Some(GuacError::InvalidUtf8));
        assert_eq!(first_err(b"0.\x80;"), Some(GuacError::InvalidUtf8));
        assert_eq!(
            first_err(b"99999999999999999999.x;"),
            Some(GuacError::ElementTooLong {
                len: 9_999_999,
                max: 1024 * 1024
            })
        );
    }

    #[test]
    fn limits_bound_memory() {
        let mut p = InstructionParser::with_limits(Limits {
            max_instruction_bytes: 100,
            max_elements: 3,
        });
        p.push(b"2.ab,2.cd,2.ef,2.gh;");
        assert_eq!(p.next(), Some(Err(GuacError::TooManyElements { max: 3 })));
        assert!(p.has_failed());
        assert_eq!(p.next(), None);
        // A declared length under the limit but data that never ends is cut at the limit.
        let mut p = InstructionParser::with_limits(Limits {
            max_instruction_bytes: 100,
            max_elements: 3,
        });
        p.push(b"4.blob,90.");
        for _ in 0..20 {
            p.push(&[b'a'; 10]);
            if let Some(r) = p.next() {
                assert_eq!(r, Err(GuacError::BadTerminator { found: 'a' }));
                return;
            }
        }
        panic!("no error");
    }

    #[test]
    fn long_instruction_limit() {
        let mut p = InstructionParser::with_limits(Limits {
            max_instruction_bytes: 50,
            max_elements: 100,
        });
        let mut data = Vec::new();
        for _ in 0..30 {
            data.extend_from_slice(b"1.a,");
        }
        p.push(&data);
        assert_eq!(
            p.next(),
            Some(Err(GuacError::InstructionTooLong { max: 50 }))
        );
    }

    #[test]
    fn many_instructions_compact() {
        let one = encode("blob", &["1", &"A".repeat(1000)]);
        let stream: Vec<u8> = std::iter::repeat_n(one, 500).flatten().collect();
        let mut p = InstructionParser::new();
        let mut n = 0;
        for part in stream.chunks(777) {
            p.push(part);
            while let Some(r) = p.next() {
                assert_eq!(r.unwrap().args[1].len(), 1000);
                n += 1;
            }
            assert!(p.buf.len() < COMPACT_AT + 3000);
        }
        assert_eq!(n, 500);
    }

    fn arb_instruction() -> impl Strategy<Value = Instruction> {
        (".{0,8}", proptest::collection::vec(".{0,20}", 0..6))
            .prop_map(|(op, args)| Instruction { opcode: op, args })
    }

    proptest! {
        #[test]
        fn encode_parse_identity(insts in proptest::collection::vec(arb_instruction(), 0..6), chunk in 1usize..50) {
            let wire: Vec<u8> = insts.iter().flat_map(Instruction::encode).collect();
            let got: Vec<Instruction> = parse_all(&wire, chunk).into_iter().map(Result::unwrap).collect();
            prop_assert_eq!(got, insts);
        }

        #[test]
        fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), chunk in 1usize..40,
                               max in 0usize..64, elems in 0usize..5) {
            let mut p = InstructionParser::with_limits(Limits { max_instruction_bytes: max, max_elements: elems });
            for part in data.chunks(chunk) {
                p.push(part);
                while p.next().is_some() {}
            }
        }

        #[test]
        fn parser_never_panics_on_near_valid(data in "([0-9]{1,2}\\.[a-zé😀,;.]{0,6}[,;]?){0,10}", chunk in 1usize..20) {
            let _ = parse_all(data.as_bytes(), chunk);
        }
    }
}
