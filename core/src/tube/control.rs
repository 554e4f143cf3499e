//! Control messages: the payload of a frame on connection 0.
//!
//! Layout (keeper-pam-webrtc-rs 2.2.9, measured byte-exact): `type u16 BE | body`.
//!
//! | code | message            | body                                                     |
//! |------|--------------------|----------------------------------------------------------|
//! | 1    | Ping               | `[conn_no u32 [extra…]]`                                 |
//! | 2    | Pong               | the Ping body echoed whole, or `00000000` if it was < 4 B |
//! | 101  | OpenConnection     | `conn_no u32 [ConnectAs blob]`                           |
//! | 102  | CloseConnection    | `conn_no u32 \| reason u8 [\| msg_len u16 \| msg]`        |
//! | 103  | ConnectionOpened   | `conn_no u32`                                            |
//! | 104  | SendEOF            | `conn_no u32`                                            |
//!
//! Every other code decodes to [`ControlMessage::Unknown`]; Keeper ignores those (it logs an error and keeps
//! the channel up), and so does [`super::Connections`].

use std::fmt;

use super::frame::Frame;

/// Control message type codes (the u16 that starts a control payload).
pub mod code {
    pub const PING: u16 = 1;
    pub const PONG: u16 = 2;
    pub const OPEN_CONNECTION: u16 = 101;
    pub const CLOSE_CONNECTION: u16 = 102;
    pub const CONNECTION_OPENED: u16 = 103;
    pub const SEND_EOF: u16 = 104;
    /// Defined in the 2.1.1 source, never seen on the wire (decoded as `Unknown`).
    pub const METRICS_REQUEST: u16 = 301;
    pub const METRICS_RESPONSE: u16 = 302;
    pub const METRICS_CONFIG: u16 = 303;
}

/// Why a tunneled connection (or, on connection 0, the whole channel) was closed.
///
/// The codes are Keeper's `CloseConnectionReason` (`PyCloseConnectionReason` plus the three Rust-only ones).
/// Code 3 does not exist in Keeper's enum; it and every other unlisted code decode to [`CloseReason::Other`],
/// so a close is never lost because of an unfamiliar reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    Normal,
    Error,
    Timeout,
    ServerRefuse,
    Client,
    Unknown,
    InvalidInstruction,
    GuacdRefuse,
    ConnectionLost,
    ConnectionFailed,
    TunnelClosed,
    AdminClosed,
    ErrorRecording,
    GuacdError,
    AiClosed,
    AddressResolutionFailed,
    DecryptionFailed,
    ConfigurationError,
    ProtocolError,
    UpstreamClosed,
    ProxyError,
    HandlerError,
    SecurityThreat,
    /// A code this implementation does not know. Build it only for codes `from_code` would not map to a
    /// named variant; `Other(0)` and `Normal` encode the same but do not compare equal.
    Other(u8),
}

impl CloseReason {
    /// Every named reason, in code order (handy for tests and for listing).
    pub const ALL: [CloseReason; 23] = [
        CloseReason::Normal,
        CloseReason::Error,
        CloseReason::Timeout,
        CloseReason::ServerRefuse,
        CloseReason::Client,
        CloseReason::Unknown,
        CloseReason::InvalidInstruction,
        CloseReason::GuacdRefuse,
        CloseReason::ConnectionLost,
        CloseReason::ConnectionFailed,
        CloseReason::TunnelClosed,
        CloseReason::AdminClosed,
        CloseReason::ErrorRecording,
        CloseReason::GuacdError,
        CloseReason::AiClosed,
        CloseReason::AddressResolutionFailed,
        CloseReason::DecryptionFailed,
        CloseReason::ConfigurationError,
        CloseReason::ProtocolError,
        CloseReason::UpstreamClosed,
        CloseReason::ProxyError,
        CloseReason::HandlerError,
        CloseReason::SecurityThreat,
    ];

    /// The wire code (the `reason u8` of CloseConnection).
    pub fn code(self) -> u8 {
        match self {
            CloseReason::Normal => 0,
            CloseReason::Error => 1,
            CloseReason::Timeout => 2,
            CloseReason::ServerRefuse => 4,
            CloseReason::Client => 5,
            CloseReason::Unknown => 6,
            CloseReason::InvalidInstruction => 7,
            CloseReason::GuacdRefuse => 8,
            CloseReason::ConnectionLost => 9,
            CloseReason::ConnectionFailed => 10,
            CloseReason::TunnelClosed => 11,
            CloseReason::AdminClosed => 12,
            CloseReason::ErrorRecording => 13,
            CloseReason::GuacdError => 14,
            CloseReason::AiClosed => 15,
            CloseReason::AddressResolutionFailed => 16,
            CloseReason::DecryptionFailed => 17,
            CloseReason::ConfigurationError => 18,
            CloseReason::ProtocolError => 19,
            CloseReason::UpstreamClosed => 20,
            CloseReason::ProxyError => 21,
            CloseReason::HandlerError => 22,
            CloseReason::SecurityThreat => 23,
            CloseReason::Other(c) => c,
        }
    }

    /// The reason for a wire code; unlisted codes become [`CloseReason::Other`].
    pub fn from_code(code: u8) -> CloseReason {
        match code {
            0 => CloseReason::Normal,
            1 => CloseReason::Error,
            2 => CloseReason::Timeout,
            4 => CloseReason::ServerRefuse,
            5 => CloseReason::Client,
            6 => CloseReason::Unknown,
            7 => CloseReason::InvalidInstruction,
            8 => CloseReason::GuacdRefuse,
            9 => CloseReason::ConnectionLost,
            10 => CloseReason::ConnectionFailed,
            11 => CloseReason::TunnelClosed,
            12 => CloseReason::AdminClosed,
            13 => CloseReason::ErrorRecording,
            14 => CloseReason::GuacdError,
            15 => CloseReason::AiClosed,
            16 => CloseReason::AddressResolutionFailed,
            17 => CloseReason::DecryptionFailed,
            18 => CloseReason::ConfigurationError,
            19 => CloseReason::ProtocolError,
            20 => CloseReason::UpstreamClosed,
            21 => CloseReason::ProxyError,
            22 => CloseReason::HandlerError,
            23 => CloseReason::SecurityThreat,
            c => CloseReason::Other(c),
        }
    }

    /// Commander's snake_case name (`python_handler._close_reason_name`), e.g. `connection_lost`;
    /// `None` for [`CloseReason::Other`] (Commander prints `code_<n>`).
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            CloseReason::Normal => "normal",
            CloseReason::Error => "error",
            CloseReason::Timeout => "timeout",
            CloseReason::ServerRefuse => "server_refuse",
            CloseReason::Client => "client",
            CloseReason::Unknown => "unknown",
            CloseReason::InvalidInstruction => "invalid_instruction",
            CloseReason::GuacdRefuse => "guacd_refuse",
            CloseReason::ConnectionLost => "connection_lost",
            CloseReason::ConnectionFailed => "connection_failed",
            CloseReason::TunnelClosed => "tunnel_closed",
            CloseReason::AdminClosed => "admin_closed",
            CloseReason::ErrorRecording => "error_recording",
            CloseReason::GuacdError => "guacd_error",
            CloseReason::AiClosed => "ai_closed",
            CloseReason::AddressResolutionFailed => "address_resolution_failed",
            CloseReason::DecryptionFailed => "decryption_failed",
            CloseReason::ConfigurationError => "configuration_error",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::UpstreamClosed => "upstream_closed",
            CloseReason::ProxyError => "proxy_error",
            CloseReason::HandlerError => "handler_error",
            CloseReason::SecurityThreat => "security_threat",
            CloseReason::Other(_) => return None,
        })
    }

    /// `true` for the reasons that mean "finished as intended" rather than "something broke".
    pub fn is_normal(self) -> bool {
        matches!(
            self,
            CloseReason::Normal | CloseReason::Client | CloseReason::AdminClosed
        )
    }
}

impl fmt::Display for CloseReason {
    /// `connection_lost (9)`: Commander's name plus the wire code, so logs match both worlds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.code()),
            None => write!(f, "code_{} (unknown close reason)", self.code()),
        }
    }
}

/// One control message (the payload of a conn-0 frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Keepalive / RTT probe. Keeper's body is `conn_no u32 [extra…]`; any body is accepted.
    Ping { body: Vec<u8> },
    /// Answer to a Ping (see [`ControlMessage::pong_for`]).
    Pong { body: Vec<u8> },
    /// Client → gateway: connect the target for `conn_no`. `connect_as` is everything after the conn_no
    /// (pam launch's ECIES ConnectAs blob: `len u32 | eph_pub 65 | nonce 12 | ciphertext+tag`), kept opaque.
    OpenConnection {
        conn_no: u32,
        connect_as: Option<Vec<u8>>,
    },
    /// Either side: `conn_no` is closed (`conn_no` 0: the whole channel).
    CloseConnection {
        conn_no: u32,
        reason: CloseReason,
        message: Option<String>,
    },
    /// Gateway → client: the target of `conn_no` is connected.
    ConnectionOpened { conn_no: u32 },
    /// Either side: the local end of `conn_no` finished writing (TCP half-close).
    SendEof { conn_no: u32 },
    /// A type this implementation does not handle (e.g. Metrics*); ignored by [`super::Connections`].
    Unknown { code: u16, body: Vec<u8> },
}

/// A known control message type whose body is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control payload of {len} byte(s) is too short for a type code")]
    NoType { len: usize },
    #[error("{what} body of {len} byte(s) is too short (need {need})")]
    TooShort {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("CloseConnection message length {declared} exceeds the {available} byte(s) left")]
    MessageLength { declared: usize, available: usize },
}

/// The longest CloseConnection message that fits its u16 length field.
pub const MAX_CLOSE_MESSAGE: usize = u16::MAX as usize;

fn read_u32(b: &[u8]) -> Option<u32> {
    let arr: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(arr))
}

fn conn_no_of(what: &'static str, body: &[u8]) -> Result<u32, ControlError> {
    read_u32(body).ok_or(ControlError::TooShort {
        what,
        len: body.len(),
        need: 4,
    })
}

/// Cuts `s` to at most `max` bytes on a char boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

impl ControlMessage {
    /// The wire type code.
    pub fn code(&self) -> u16 {
        match self {
            ControlMessage::Ping { .. } => code::PING,
            ControlMessage::Pong { .. } => code::PONG,
            ControlMessage::OpenConnection { .. } => code::OPEN_CONNECTION,
            ControlMessage::CloseConnection { .. } => code::CLOSE_CONNECTION,
            ControlMessage::ConnectionOpened { .. } => code::CONNECTION_OPENED,
            ControlMessage::SendEof { .. } => code::SEND_EOF,
            ControlMessage::Unknown { code, .. } => *code,
        }
    }

    /// The Pong Keeper sends for a Ping with `ping_body`: the body echoed whole; a body shorter than
    /// 4 bytes is answered with `00000000` (measured against 2.2.9, incl. the 1406-byte warm-up Pings).
    pub fn pong_for(ping_body: &[u8]) -> ControlMessage {
        let body = if ping_body.len() < 4 {
            vec![0; 4]
        } else {
            ping_body.to_vec()
        };
        ControlMessage::Pong { body }
    }

    /// Appends the control payload (`type u16 | body`) to `out`.
    ///
    /// A CloseConnection message longer than [`MAX_CLOSE_MESSAGE`] bytes is cut on a char boundary so its
    /// length fits the u16 field.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.code().to_be_bytes());
        match self {
            ControlMessage::Ping { body } | ControlMessage::Pong { body } => {
                out.extend_from_slice(body)
            }
            ControlMessage::Unknown { body, .. } => out.extend_from_slice(body),
            ControlMessage::OpenConnection {
                conn_no,
                connect_as,
            } => {
                out.extend_from_slice(&conn_no.to_be_bytes());
                if let Some(blob) = connect_as {
                    out.extend_from_slice(blob);
                }
            }
            ControlMessage::CloseConnection {
                conn_no,
                reason,
                message,
            } => {
                out.extend_from_slice(&conn_no.to_be_bytes());
                out.push(reason.code());
                if let Some(msg) = message {
                    let msg = truncate_utf8(msg, MAX_CLOSE_MESSAGE);
                    // Cannot fail: truncated to u16::MAX bytes above.
                    let len = u16::try_from(msg.len()).unwrap_or(u16::MAX);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(msg.as_bytes());
                }
            }
            ControlMessage::ConnectionOpened { conn_no } | ControlMessage::SendEof { conn_no } => {
                out.extend_from_slice(&conn_no.to_be_bytes());
            }
        }
    }

    /// The control payload as a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        self.encode_into(&mut out);
        out
    }

    /// This message as a conn-0 frame stamped `timestamp_ms`.
    pub fn to_frame(&self, timestamp_ms: u64) -> Frame {
        Frame {
            conn_no: 0,
            timestamp_ms,
            payload: self.encode(),
        }
    }

    /// Decodes a control payload.
    ///
    /// Lenient where Keeper's peers may differ harmlessly: an empty OpenConnection remainder means no
    /// ConnectAs; a CloseConnection without a reason byte is read as [`CloseReason::Unknown`]; a single
    /// stray byte after the reason is ignored; a message that is not UTF-8 is decoded lossily.
    /// Strict where the bytes are clearly broken (missing conn_no, message length past the end).
    pub fn decode(payload: &[u8]) -> Result<ControlMessage, ControlError> {
        let (Some(type_bytes), Some(body)) = (payload.get(..2), payload.get(2..)) else {
            return Err(ControlError::NoType { len: payload.len() });
        };
        let code = u16::from_be_bytes([type_bytes[0], type_bytes[1]]);
        let msg = match code {
            code::PING => ControlMessage::Ping {
                body: body.to_vec(),
            },
            code::PONG => ControlMessage::Pong {
                body: body.to_vec(),
            },
            code::OPEN_CONNECTION => {
                let conn_no = conn_no_of("OpenConnection", body)?;
                let rest = body.get(4..).unwrap_or(&[]);
                let connect_as = if rest.is_empty() {
                    None
                } else {
                    Some(rest.to_vec())
                };
                ControlMessage::OpenConnection {
                    conn_no,
                    connect_as,
                }
            }
            code::CLOSE_CONNECTION => {
                let conn_no = conn_no_of("CloseConnection", body)?;
                let reason = body
                    .get(4)
                    .map_or(CloseReason::Unknown, |c| CloseReason::from_code(*c));
                let message = match body.get(5..7) {
                    Some(len) => {
                        let declared = usize::from(u16::from_be_bytes([len[0], len[1]]));
                        let rest = body.get(7..).unwrap_or(&[]);
                        let text = rest.get(..declared).ok_or(ControlError::MessageLength {
                            declared,
                            available: rest.len(),
                        })?;
                        Some(String::from_utf8_lossy(text).into_owned())
                    }
                    None => None,
                };
                ControlMessage::CloseConnection {
                    conn_no,
                    reason,
                    message,
                }
            }
            code::CONNECTION_OPENED => ControlMessage::ConnectionOpened {
                conn_no: conn_no_of("ConnectionOpened", body)?,
            },
            code::SEND_EOF => ControlMessage::SendEof {
                conn_no: conn_no_of("SendEOF", body)?,
            },
            code => ControlMessage::Unknown {
                code,
                body: body.to_vec(),
            },
        };
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn close_reason_codes_round_trip() {
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_code(r.code()), r);
            assert!(r.name().is_some());
        }
        assert_eq!(CloseReason::from_code(3), CloseReason::Other(3));
        assert_eq!(CloseReason::from_code(200), CloseReason::Other(200));
        assert_eq!(CloseReason::Other(200).code(), 200);
        for c in 0..=u8::MAX {
            assert_eq!(CloseReason::from_code(c).code(), c);
        }
    }

    #[test]
    fn close_reason_display() {
        assert_eq!(
            CloseReason::ConnectionLost.to_string(),
            "connection_lost (9)"
        );
        assert_eq!(CloseReason::AdminClosed.to_string(), "admin_closed (12)");
        assert_eq!(
            CloseReason::SecurityThreat.to_string(),
            "security_threat (23)"
        );
        assert_eq!(
            CloseReason::Other(3).to_string(),
            "code_3 (unknown close reason)"
        );
    }

    #[test]
    fn keeper_payloads_decode() {
        // Payloads of the §5.3 hex dumps (after the 16-byte header, before ';').
        assert_eq!(
            ControlMessage::decode(&hex("0065 00000001")).unwrap(),
            ControlMessage::OpenConnection {
                conn_no: 1,
                connect_as: None
            }
        );
        assert_eq!(
            ControlMessage::decode(&hex("0067 00000001")).unwrap(),
            ControlMessage::ConnectionOpened { conn_no: 1 }
        );
        assert_eq!(
            ControlMessage::decode(&hex("0068 00000001")).unwrap(),
            ControlMessage::SendEof { conn_no: 1 }
        );
        assert_eq!(
            ControlMessage::decode(&hex("0001")).unwrap(),
            ControlMessage::Ping { body: vec![] }
        );
        assert_eq!(
            ControlMessage::decode(&hex("0066 00000002 00")).unwrap(),
            ControlMessage::CloseConnection {
                conn_no: 2,
                reason: CloseReason::Normal,
                message: None
            }
        );
        assert_eq!(
            ControlMessage::decode(&hex(
                "0066 00000001 09 0026 4261636b656e6420636f6e6e656374696f6e20636c6f73656420756e65787065637465646c79"
            ))
            .unwrap(),
            ControlMessage::CloseConnection {
                conn_no: 1,
                reason: CloseReason::ConnectionLost,
                message: Some("Backend connection closed unexpectedly".into())
            }
        );
        assert_eq!(
            ControlMessage::decode(&hex("0066 00000000 0c")).unwrap(),
            ControlMessage::CloseConnection {
                conn_no: 0,
                reason: CloseReason::AdminClosed,
                message: None
            }
        );
    }

    #[test]
    fn encode_matches_keeper_payloads() {
        let m = ControlMessage::CloseConnection {
            conn_no: 1,
            reason: CloseReason::ConnectionLost,
            message: Some("Backend connection closed unexpectedly".into()),
        };
        assert_eq!(
            m.encode(),
            hex("0066 00000001 09 0026 4261636b656e6420636f6e6e656374696f6e20636c6f73656420756e65787065637465646c79")
        );
        assert_eq!(
            ControlMessage::SendEof { conn_no: 1 }.encode(),
            hex("0068 00000001")
        );
    }

    #[test]
    fn pong_rule() {
        assert_eq!(
            ControlMessage::pong_for(&[]),
            ControlMessage::Pong { body: vec![0; 4] }
        );
        assert_eq!(
            ControlMessage::pong_for(&[1, 2, 3]),
            ControlMessage::Pong { body: vec![0; 4] }
        );
        let b = hex("00000001 0102030405060708");
        assert_eq!(
            ControlMessage::pong_for(&b),
            ControlMessage::Pong { body: b.clone() }
        );
        let warmup = vec![0u8; 1404];
        assert_eq!(ControlMessage::pong_for(&warmup).encode().len(), 1406);
    }

    #[test]
    fn malformed_bodies() {
        assert_eq!(
            ControlMessage::decode(&[0]),
            Err(ControlError::NoType { len: 1 })
        );
        assert!(matches!(
            ControlMessage::decode(&hex("0065 0000")),
            Err(ControlError::TooShort { need: 4, .. })
        ));
        assert!(matches!(
            ControlMessage::decode(&hex("0067")),
            Err(ControlError::TooShort { .. })
        ));
        assert!(matches!(
            ControlMessage::decode(&hex("0066 00000001 09 0005 4142")),
            Err(ControlError::MessageLength {
                declared: 5,
                available: 2
            })
        ));
        // Lenient: no reason byte.
        assert_eq!(
            ControlMessage::decode(&hex("0066 00000001")).unwrap(),
            ControlMessage::CloseConnection {
                conn_no: 1,
                reason: CloseReason::Unknown,
                message: None
            }
        );
        // Unknown type (Keeper's edge case used 999).
        assert_eq!(
            ControlMessage::decode(&hex("03e7 00000001")).unwrap(),
            ControlMessage::Unknown {
                code: 999,
                body: hex("00000001")
            }
        );
    }

    #[test]
    fn long_close_message_is_cut_on_char_boundary() {
        let msg = "é".repeat(40_000); // 80 000 bytes
        let enc = ControlMessage::CloseConnection {
            conn_no: 1,
            reason: CloseReason::Error,
            message: Some(msg),
        }
        .encode();
        match ControlMessage::decode(&enc).unwrap() {
            ControlMessage::CloseConnection {
                message: Some(m), ..
            } => {
                assert_eq!(m.len(), 65_534);
                assert!(m.chars().all(|c| c == 'é'));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn arb_message() -> impl Strategy<Value = ControlMessage> {
        let body = proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            body.clone().prop_map(|body| ControlMessage::Ping { body }),
            body.clone().prop_map(|body| ControlMessage::Pong { body }),
            (
                any::<u32>(),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 1..64))
            )
                .prop_map(|(conn_no, connect_as)| ControlMessage::OpenConnection {
                    conn_no,
                    connect_as
                }),
            (any::<u32>(), any::<u8>(), proptest::option::of(".{0,40}")).prop_map(
                |(conn_no, r, message)| {
                    ControlMessage::CloseConnection {
                        conn_no,
                        reason: CloseReason::from_code(r),
                        message,
                    }
                }
            ),
            any::<u32>().prop_map(|conn_no| ControlMessage::ConnectionOpened { conn_no }),
            any::<u32>().prop_map(|conn_no| ControlMessage::SendEof { conn_no }),
            (any::<u16>(), body).prop_filter_map("known code", |(code, body)| {
                let known = [1, 2, 101, 102, 103, 104];
                (!known.contains(&code)).then_some(ControlMessage::Unknown { code, body })
            }),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_identity(m in arb_message()) {
            prop_assert_eq!(ControlMessage::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ControlMessage::decode(&data);
        }
    }
}
