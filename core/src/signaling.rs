//! Signaling between the launcher and the gateway, relayed by the router (Commander
//! `pam_dto.py`, `tunnel_helpers.py`, `terminal_connection.py`).
//!
//! * [`ConversationId`]: the 16 random bytes naming one tunnel, in its two textual forms.
//! * [`TunnelKey`]: HKDF-SHA256(seed, salt = nonce) → AES-256-GCM, for the `data` field of every action
//!   and every gateway reply (`tunnel_encrypt` / `tunnel_decrypt`).
//! * [`GatewayAction`]: the JSON the router delivers to the gateway, serialized exactly like Python's
//!   `json.dumps(obj.__dict__, sort_keys=True, indent=4)` (see [`python_json`]).
//! * The WebSocket side: [`parse_ws_frame`] and [`classify_gateway_data`] follow Commander's
//!   `route_message_to_rust` (§3.3 of the protocol notes), with two deliberate fixes: a
//!   `{"type":"offer","sdp":…}` ICE-restart offer is an offer, not an answer (Commander bug §10.13), and
//!   both conversation-id forms are accepted ([`ConversationId::matches`], bug §10.4).
//! * The gateway role's builders and parsers for the reverse direction.

use std::fmt::Write as _;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::alphabet;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD,
};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use serde_json::{Map, Value};
use sha2::Sha256;

/// HKDF `info` of the tunnel key (the "128" is historical: the key is 256 bits).
pub const TUNNEL_KEY_INFO: &[u8] = b"KEEPER_TUNNEL_ENCRYPT_AES_GCM_128";
/// AES-GCM IV length of `tunnel_encrypt`.
pub const TUNNEL_IV_LEN: usize = 12;
/// Length of the per-launch HKDF salt (`MAIN_NONCE_LENGTH`).
pub const MAIN_NONCE_LEN: usize = 16;
/// The `action` of every tunnel signaling message.
pub const WEBRTC_SESSION_ACTION: &str = "webrtc-session";
/// The SDP attribute Commander adds to every offer (`_ensure_max_message_size_attribute`).
pub const MAX_MESSAGE_SIZE_LINE: &str = "a=max-message-size:1073741823";
/// The `type` field of the WebSocket frames the emulated router pushes (Commander only logs it).
pub const WS_FRAME_TYPE: &str = "controller_response";
/// Upper bound for any signaling text we parse or decrypt (an offer with candidates is a few KiB).
pub const MAX_SIGNAL_LEN: usize = 1 << 20;

/// Why a signaling message could not be built, parsed or decrypted. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalingError {
    #[error("{0} is not valid base64")]
    BadBase64(&'static str),
    #[error("encrypted data is too short ({0} bytes, need more than {TUNNEL_IV_LEN})")]
    TooShort(usize),
    #[error("{what} is too long ({len} bytes, limit {MAX_SIGNAL_LEN})")]
    TooLong { what: &'static str, len: usize },
    /// AES-GCM authentication failed: a different tunnel key (seed or nonce) or tampered data.
    #[error("could not decrypt the signaling data (wrong tunnel key or corrupted data)")]
    Decrypt,
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid gateway action: {0}")]
    Action(String),
    #[error("invalid offer data: {0}")]
    Offer(String),
    #[error("invalid WebSocket message: {0}")]
    Frame(String),
}

// ---------------------------------------------------------------------------------------------- base64

/// Standard alphabet, padding optional, non-zero trailing bits accepted: what Python's lenient
/// `b64decode` / `urlsafe_b64decode` accept for well-formed input.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decode standard or URL-safe base64, padded or not (Commander's `base64_to_bytes` /
/// `url_safe_str_to_bytes` accept both alphabets).
pub fn decode_b64_any(s: &str) -> Option<Vec<u8>> {
    if s.len() > 2 * MAX_SIGNAL_LEN {
        return None;
    }
    let normalized: String = s
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    LENIENT.decode(normalized).ok()
}

// ---------------------------------------------------------------------------------------------- ConversationId

/// The 16 random bytes of one conversation (`GatewayAction.generate_conversation_id`).
///
/// Commander uses two spellings: [`ConversationId::url`] (`conv_url`, the offer's `conversationId` and
/// every `messageId`) and [`ConversationId::std`] (`conv_std`, the data-channel label, the ICE-candidate
/// actions and the WebSocket `conversationId`). Both decode to the same bytes, which is what the router
/// puts in `RouterControllerMessage.messageUid`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId(pub [u8; 16]);

impl ConversationId {
    pub fn random(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        ConversationId(b)
    }

    /// URL-safe base64 without padding (22 characters).
    pub fn url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Standard base64 with padding (24 characters, ends with `==`).
    pub fn std(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Either spelling (standard or URL-safe alphabet, padded or not); `None` unless it is 16 bytes.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() > 32 {
            return None;
        }
        let bytes = decode_b64_any(s)?;
        bytes.as_slice().try_into().ok().map(ConversationId)
    }

    /// Does `s` name this conversation, in either spelling?
    pub fn matches(&self, s: &str) -> bool {
        Self::parse(s).is_some_and(|c| c == *self)
    }
}

impl std::fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConversationId({})", self.url())
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

// ---------------------------------------------------------------------------------------------- TunnelKey

/// The per-launch signaling key. `Debug` is redacted.
#[derive(Clone)]
pub struct TunnelKey {
    cipher: Aes256Gcm,
}

impl TunnelKey {
    /// HKDF-SHA256(ikm = `seed` (the record's `trafficEncryptionSeed`), salt = `nonce` (16 random bytes,
    /// sent as `base64Nonce`), info = [`TUNNEL_KEY_INFO`], 32 bytes) → AES-256-GCM.
    pub fn derive(seed: &[u8], nonce: &[u8]) -> Self {
        let mut okm = [0u8; 32];
        // HKDF-SHA256 can expand up to 255 × 32 bytes; 32 can never fail.
        Hkdf::<Sha256>::new(Some(nonce), seed)
            .expand(TUNNEL_KEY_INFO, &mut okm)
            .expect("32 bytes is within HKDF-SHA256's output limit");
        TunnelKey {
            cipher: Aes256Gcm::new(&okm.into()),
        }
    }

    /// `tunnel_encrypt`: std base64 of `iv(12) ‖ ciphertext ‖ tag(16)`.
    pub fn encrypt(&self, plaintext: &[u8], rng: &mut (impl RngCore + CryptoRng)) -> String {
        let mut iv = [0u8; TUNNEL_IV_LEN];
        rng.fill_bytes(&mut iv);
        let mut out = iv.to_vec();
        // Only fails beyond 64 GiB of plaintext.
        out.extend(
            self.cipher
                .encrypt(&Nonce::from(iv), plaintext)
                .unwrap_or_default(),
        );
        STANDARD.encode(out)
    }

    /// `tunnel_decrypt`: std or URL-safe base64, longer than the IV, authenticated.
    pub fn decrypt(&self, data: &str) -> Result<Vec<u8>, SignalingError> {
        if data.len() > 2 * MAX_SIGNAL_LEN {
            return Err(SignalingError::TooLong {
                what: "encrypted data",
                len: data.len(),
            });
        }
        let raw = decode_b64_any(data).ok_or(SignalingError::BadBase64("encrypted data"))?;
        if raw.len() <= TUNNEL_IV_LEN {
            return Err(SignalingError::TooShort(raw.len()));
        }
        let (iv, ct) = raw.split_at(TUNNEL_IV_LEN);
        let iv: [u8; TUNNEL_IV_LEN] = iv
            .try_into()
            .map_err(|_| SignalingError::TooShort(raw.len()))?;
        self.cipher
            .decrypt(&Nonce::from(iv), ct)
            .map_err(|_| SignalingError::Decrypt)
    }
}

impl std::fmt::Debug for TunnelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelKey(<redacted>)")
    }
}

// ---------------------------------------------------------------------------------------------- Python JSON

/// Byte-exact re-implementations of Python's `json.dumps` (default `ensure_ascii=True`), because the
/// gateway action and the encrypted payloads are produced by Commander with it.
pub mod python_json {
    use super::*;

    /// Python's `json.dumps(value, sort_keys=sort_keys, indent=indent)`.
    pub fn dumps(value: &Value, indent: Option<usize>, sort_keys: bool) -> String {
        let mut out = String::new();
        write_value(&mut out, value, indent, sort_keys, 0);
        out
    }

    /// `json.dumps` of a dict with the given (insertion) key order, whose values are already JSON
    /// text (from [`dumps`] or a nested `object_raw`). Compact Python separators (`", "`, `": "`).
    pub fn object_raw(entries: &[(&str, String)]) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in entries.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_str(&mut out, k);
            out.push_str(": ");
            out.push_str(v);
        }
        out.push('}');
        out
    }

    /// Compact `json.dumps(value)` (no sorting: map order).
    pub fn compact(value: &Value) -> String {
        dumps(value, None, false)
    }

    fn newline(out: &mut String, indent: usize, level: usize) {
        out.push('\n');
        for _ in 0..indent * level {
            out.push(' ');
        }
    }

    fn write_value(out: &mut String, v: &Value, indent: Option<usize>, sort: bool, level: usize) {
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(true) => out.push_str("true"),
            Value::Bool(false) => out.push_str("false"),
            Value::Number(n) => write_number(out, n),
            Value::String(s) => write_str(out, s),
            Value::Array(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        if indent.is_none() {
                            out.push(' ');
                        }
                    }
                    if let Some(ind) = indent {
                        newline(out, ind, level + 1);
                    }
                    write_value(out, item, indent, sort, level + 1);
                }
                if let Some(ind) = indent {
                    newline(out, ind, level);
                }
                out.push(']');
            }
            Value::Object(map) => {
                if map.is_empty() {
                    out.push_str("{}");
                    return;
                }
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                if sort {
                    // Python compares str by code point; UTF-8 byte order is the same order.
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        if indent.is_none() {
                            out.push(' ');
                        }
                    }
                    if let Some(ind) = indent {
                        newline(out, ind, level + 1);
                    }
                    write_str(out, k);
                    out.push_str(": ");
                    write_value(out, item, indent, sort, level + 1);
                }
                if let Some(ind) = indent {
                    newline(out, ind, level);
                }
                out.push('}');
            }
        }
    }

    /// `json.dumps` of a str with `ensure_ascii=True`.
    pub fn write_str(out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                ' '..='~' => out.push(c),
                _ => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
            }
        }
        out.push('"');
    }

    fn write_number(out: &mut String, n: &serde_json::Number) {
        if let Some(i) = n.as_i64() {
            let _ = write!(out, "{i}");
        } else if let Some(u) = n.as_u64() {
            let _ = write!(out, "{u}");
        } else if let Some(f) = n.as_f64() {
            out.push_str(&float_repr(f));
        }
    }

    /// Python's `repr(float)`: shortest round-trip digits, fixed notation for decimal exponents in
    /// `-4..16`, otherwise `d.ddde±XX`.
    pub fn float_repr(f: f64) -> String {
        if f.is_nan() {
            return "NaN".into();
        }
        if f.is_infinite() {
            return if f > 0.0 {
                "Infinity".into()
            } else {
                "-Infinity".into()
            };
        }
        let sci = format!("{:e}", f.abs()); // e.g. "1.5e-7", "1e20", "0e0"
        let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
        let sign = if f.is_sign_negative() { "-" } else { "" };
        if (-4..16).contains(&exp) {
            let (int_part, frac_part) = if exp >= 0 {
                let e = exp as usize;
                if digits.len() > e + 1 {
                    (digits[..e + 1].to_string(), digits[e + 1..].to_string())
                } else {
                    (
                        format!("{digits}{}", "0".repeat(e + 1 - digits.len())),
                        String::new(),
                    )
                }
            } else {
                (
                    "0".to_string(),
                    format!("{}{digits}", "0".repeat((-exp - 1) as usize)),
                )
            };
            let frac = if frac_part.is_empty() {
                "0".to_string()
            } else {
                frac_part
            };
            format!("{sign}{int_part}.{frac}")
        } else {
            let (first, rest) = digits.split_at(digits.len().min(1));
            let dot = if rest.is_empty() {
                String::new()
            } else {
                format!(".{rest}")
            };
            let esign = if exp < 0 { '-' } else { '+' };
            format!("{sign}{first}{dot}e{esign}{:02}", exp.unsigned_abs())
        }
    }
}

/// Python truthiness of a JSON value (`if payload.get('is_ok')`).
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

fn parse_json_bounded(text: &str, what: &'static str) -> Result<Value, SignalingError> {
    if text.len() > MAX_SIGNAL_LEN {
        return Err(SignalingError::TooLong {
            what,
            len: text.len(),
        });
    }
    serde_json::from_str(text).map_err(|e| SignalingError::Json(e.to_string()))
}

// ---------------------------------------------------------------------------------------------- GatewayAction

/// Commander's `GatewayActionWebRTCSession`: what the router delivers to the gateway (as the
/// `RouterControllerMessage.payload`). `action` is always `webrtc-session`, `is_scheduled` false and
/// `gateway_destination` null.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayAction {
    pub conversation_id: String,
    pub inputs: Map<String, Value>,
    /// `None` serializes as `null` (pam tunnel start's offer).
    pub message_id: Option<String>,
}

impl GatewayAction {
    /// Exactly `json.dumps(action.__dict__, sort_keys=True, indent=4)`.
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("action".into(), Value::String(WEBRTC_SESSION_ACTION.into()));
        m.insert("is_scheduled".into(), Value::Bool(false));
        m.insert("gateway_destination".into(), Value::Null);
        m.insert("inputs".into(), Value::Object(self.inputs.clone()));
        m.insert(
            "conversationId".into(),
            Value::String(self.conversation_id.clone()),
        );
        m.insert(
            "messageId".into(),
            self.message_id
                .clone()
                .map(Value::String)
                .unwrap_or(Value::Null),
        );
        python_json::dumps(&Value::Object(m), Some(4), true)
    }

    /// The gateway side: parse a delivered action. Only `webrtc-session` actions are accepted.
    pub fn parse(json: &str) -> Result<Self, SignalingError> {
        let v = parse_json_bounded(json, "gateway action")?;
        let Value::Object(mut obj) = v else {
            return Err(SignalingError::Action("not a JSON object".into()));
        };
        match obj.get("action") {
            Some(Value::String(a)) if a == WEBRTC_SESSION_ACTION => {}
            Some(Value::String(a)) => {
                return Err(SignalingError::Action(format!("unsupported action {a:?}")))
            }
            _ => return Err(SignalingError::Action("missing \"action\"".into())),
        }
        let conversation_id = match obj.remove("conversationId") {
            Some(Value::String(s)) => s,
            _ => return Err(SignalingError::Action("missing \"conversationId\"".into())),
        };
        let inputs = match obj.remove("inputs") {
            Some(Value::Object(m)) => m,
            _ => return Err(SignalingError::Action("missing \"inputs\" object".into())),
        };
        let message_id = match obj.remove("messageId") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Ok(GatewayAction {
            conversation_id,
            inputs,
            message_id,
        })
    }

    fn input_str(&self, key: &str) -> Option<&str> {
        self.inputs.get(key).and_then(Value::as_str)
    }

    /// `inputs.kind`: `start`, `icecandidate`, `ice_restart_offer`, `ice_restart_answer`.
    pub fn kind(&self) -> Option<&str> {
        self.input_str("kind")
    }

    /// `inputs.data`: the tunnel-encrypted payload.
    pub fn data(&self) -> Option<&str> {
        self.input_str("data")
    }

    /// `inputs.base64Nonce`, decoded (the HKDF salt).
    pub fn nonce(&self) -> Option<Vec<u8>> {
        self.input_str("base64Nonce").and_then(decode_b64_any)
    }

    pub fn record_uid(&self) -> Option<&str> {
        self.input_str("recordUid")
    }

    pub fn conversation_type(&self) -> Option<&str> {
        self.input_str("conversationType")
    }

    pub fn trickle_ice(&self) -> Option<bool> {
        self.inputs.get("trickleICE").and_then(Value::as_bool)
    }
}

/// How the gateway finds the credential for the session (`inputs.credentialType`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialType {
    /// DAG-linked pamUser: `credentialType:"linked"` + `userRecordUid`.
    Linked { user_record_uid: String },
    /// ConnectAs / prompt: `credentialType:"userSupplied"` + `allowSupplyUser:true`.
    UserSupplied,
    /// JIT account: `credentialType:"ephemeral"`.
    Ephemeral,
}

/// The `inputs` of a `kind:"start"` action (the offer), as `pam launch` builds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartInputs {
    pub record_uid: String,
    /// Std base64 of the 16-byte HKDF salt.
    pub base64_nonce: String,
    /// The real protocol (`ssh`, `telnet`, …) for pam launch; `tunnel` for pam tunnel start.
    pub conversation_type: String,
    /// `TunnelKey::encrypt` of [`offer_data_json`].
    pub data: String,
    pub trickle_ice: bool,
    /// `None`: the gateway uses the pamMachine credentials.
    pub credential: Option<CredentialType>,
    pub two_factor_value: Option<String>,
}

impl StartInputs {
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m = base_inputs(
            &self.record_uid,
            "start",
            &self.base64_nonce,
            &self.conversation_type,
            &self.data,
            self.trickle_ice,
        );
        match &self.credential {
            Some(CredentialType::Ephemeral) => {
                m.insert("credentialType".into(), "ephemeral".into());
            }
            Some(CredentialType::Linked { user_record_uid }) => {
                m.insert("credentialType".into(), "linked".into());
                m.insert("userRecordUid".into(), user_record_uid.clone().into());
            }
            Some(CredentialType::UserSupplied) => {
                m.insert("credentialType".into(), "userSupplied".into());
                m.insert("allowSupplyUser".into(), true.into());
            }
            None => {}
        }
        if let Some(t) = self.two_factor_value.as_ref().filter(|t| !t.is_empty()) {
            m.insert("twoFactorValue".into(), t.clone().into());
        }
        m
    }
}

fn base_inputs(
    record_uid: &str,
    kind: &str,
    base64_nonce: &str,
    conversation_type: &str,
    data: &str,
    trickle_ice: bool,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("recordUid".into(), record_uid.into());
    m.insert("kind".into(), kind.into());
    m.insert("base64Nonce".into(), base64_nonce.into());
    m.insert("conversationType".into(), conversation_type.into());
    m.insert("data".into(), data.into());
    m.insert("trickleICE".into(), trickle_ice.into());
    m
}

/// The `inputs` of a `kind:"icecandidate"` action. `pam launch` passes `conversation_type = "tunnel"`
/// (Commander quirk §10.5) and `data` = `TunnelKey::encrypt` of [`candidates_data_json`].
pub fn icecandidate_inputs(
    record_uid: &str,
    base64_nonce: &str,
    conversation_type: &str,
    data: &str,
    trickle_ice: bool,
) -> Map<String, Value> {
    base_inputs(
        record_uid,
        "icecandidate",
        base64_nonce,
        conversation_type,
        data,
        trickle_ice,
    )
}

/// The plaintext of the offer's `data` (`terminal_connection.py`), as `json.dumps(offer_data)`.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferData {
    /// Std base64 of the offer SDP (after [`ensure_max_message_size`]).
    pub offer_b64: String,
    /// `[pixel_width, pixel_height, dpi]`.
    pub size: [u32; 3],
    pub host_name: String,
    pub port: u16,
    /// The terminal handler's guacd parameters (may hold credentials). `disable-copy`/`disable-paste`
    /// entries are dropped and re-added from the clipboard flags, as Commander does.
    pub guacd_params: Map<String, Value>,
    pub disable_copy: bool,
    pub disable_paste: bool,
}

/// `json.dumps(offer_data)` with Commander's key order. `guacd_params` is `enable-pipe`, the handler's
/// parameters (in map order; Python's is insertion order, which only changes the encrypted bytes), then
/// `disable-paste` / `disable-copy` from the clipboard flags.
pub fn offer_data_json(d: &OfferData) -> String {
    use python_json::{compact, object_raw};
    let mut guacd: Vec<(&str, String)> = vec![("enable-pipe", compact(&"true".into()))];
    for (k, v) in &d.guacd_params {
        if !matches!(k.as_str(), "disable-paste" | "disable-copy" | "enable-pipe") {
            guacd.push((k.as_str(), compact(v)));
        }
    }
    if d.disable_paste {
        guacd.push(("disable-paste", compact(&"true".into())));
    }
    if d.disable_copy {
        guacd.push(("disable-copy", compact(&"true".into())));
    }
    let flags = object_raw(&[
        ("disableCopy", compact(&d.disable_copy.into())),
        ("disablePaste", compact(&d.disable_paste.into())),
    ]);
    let strings = |xs: &[&str]| {
        compact(&Value::Array(
            xs.iter().map(|x| Value::String((*x).into())).collect(),
        ))
    };
    object_raw(&[
        ("offer", compact(&d.offer_b64.clone().into())),
        ("audio", strings(&["audio/L8", "audio/L16"])),
        ("video", "[]".into()),
        (
            "size",
            compact(&Value::Array(
                d.size.iter().map(|x| Value::from(*x)).collect(),
            )),
        ),
        ("image", strings(&["image/jpeg", "image/png", "image/webp"])),
        (
            "host",
            object_raw(&[
                ("hostName", compact(&d.host_name.clone().into())),
                ("port", d.port.to_string()),
            ]),
        ),
        ("guacd_params", object_raw(&guacd)),
        ("terminalSettings", flags.clone()),
        ("clipboard", flags),
    ])
}

/// `json.dumps({"candidates": [...]})`. An empty string is the end-of-candidates marker.
pub fn candidates_data_json(candidates: &[String]) -> String {
    let list = Value::Array(
        candidates
            .iter()
            .map(|c| Value::String(c.clone()))
            .collect(),
    );
    python_json::object_raw(&[("candidates", python_json::compact(&list))])
}

/// The gateway's answer plaintext: `{"answer": "<std base64 of the SDP>"}`.
pub fn answer_data_json(sdp: &str) -> String {
    python_json::object_raw(&[(
        "answer",
        python_json::compact(&STANDARD.encode(sdp.as_bytes()).into()),
    )])
}

/// An ICE-restart offer (`{"type": "offer", "sdp": <plain SDP>, "ice_restart": true}`).
pub fn ice_restart_offer_data_json(sdp: &str) -> String {
    restart_json("offer", sdp)
}

/// An ICE-restart answer (`{"type": "answer", "sdp": <plain SDP>, "ice_restart": true}`).
pub fn ice_restart_answer_data_json(sdp: &str) -> String {
    restart_json("answer", sdp)
}

fn restart_json(kind: &str, sdp: &str) -> String {
    use python_json::{compact, object_raw};
    object_raw(&[
        ("type", compact(&kind.into())),
        ("sdp", compact(&sdp.into())),
        ("ice_restart", "true".into()),
    ])
}

/// Commander's `_ensure_max_message_size_attribute`: add `a=max-message-size:1073741823` after the
/// `a=sctp-port:` line (else after `m=application`, else at the end) if the SDP lacks it.
pub fn ensure_max_message_size(sdp: &str) -> String {
    if sdp.is_empty() || sdp.contains(MAX_MESSAGE_SIZE_LINE) {
        return sdp.to_string();
    }
    let newline = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let lower = sdp.to_ascii_lowercase();
    let after_line = |idx: usize| match sdp.get(idx..).and_then(|rest| rest.find(newline)) {
        Some(off) => idx + off + newline.len(),
        None => sdp.len(),
    };
    let at = lower
        .find("a=sctp-port:")
        .map(after_line)
        .or_else(|| lower.find("m=application").map(after_line));
    match at {
        Some(i) if sdp.is_char_boundary(i) => {
            format!("{}{MAX_MESSAGE_SIZE_LINE}{newline}{}", &sdp[..i], &sdp[i..])
        }
        _ => {
            let suffix = if sdp.ends_with(newline) { "" } else { newline };
            format!("{sdp}{suffix}{MAX_MESSAGE_SIZE_LINE}{newline}")
        }
    }
}

// ---------------------------------------------------------------------------------------------- gateway side

/// What the gateway reads from a decrypted offer `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferRequest {
    /// The offer SDP as plain text.
    pub sdp: String,
    pub size: Option<[u32; 3]>,
    pub host: Option<(String, u16)>,
    pub guacd_params: Map<String, Value>,
}

impl OfferRequest {
    pub fn parse(plaintext: &[u8]) -> Result<Self, SignalingError> {
        let text = std::str::from_utf8(plaintext)
            .map_err(|_| SignalingError::Offer("not UTF-8".into()))?;
        let v = parse_json_bounded(text, "offer data")?;
        let Value::Object(obj) = v else {
            return Err(SignalingError::Offer("not a JSON object".into()));
        };
        let offer = obj
            .get("offer")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| SignalingError::Offer("missing \"offer\"".into()))?;
        let sdp = sdp_from_b64_or_plain(offer)
            .ok_or_else(|| SignalingError::Offer("offer is not base64 SDP".into()))?;
        let size = obj.get("size").and_then(Value::as_array).and_then(|a| {
            let n: Vec<u32> = a
                .iter()
                .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect();
            <[u32; 3]>::try_from(n).ok()
        });
        let host = obj.get("host").and_then(Value::as_object).and_then(|h| {
            let name = h.get("hostName")?.as_str()?.to_string();
            let port = match h.get("port")? {
                Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok())?,
                Value::String(s) => s.parse().ok()?,
                _ => return None,
            };
            Some((name, port))
        });
        let guacd_params = obj
            .get("guacd_params")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Ok(OfferRequest {
            sdp,
            size,
            host,
            guacd_params,
        })
    }
}

/// Base64 SDP (as Commander sends it) or, leniently, plain SDP text.
fn sdp_from_b64_or_plain(s: &str) -> Option<String> {
    if s.trim_start().starts_with("v=") {
        return Some(s.to_string());
    }
    let bytes = decode_b64_any(s.trim())?;
    String::from_utf8(bytes).ok()
}

/// The offer SDP (plain text) from a decrypted `kind:"start"` `data`.
pub fn parse_offer_data(plaintext: &[u8]) -> Result<String, SignalingError> {
    OfferRequest::parse(plaintext).map(|o| o.sdp)
}

/// The candidate strings of a decrypted `icecandidate` `data` (`{"candidates": [...]}`). Anything
/// malformed yields an empty list; `""` entries (end of candidates) are kept.
pub fn parse_candidates(plaintext: &[u8]) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(plaintext) else {
        return Vec::new();
    };
    let Ok(Value::Object(obj)) = parse_json_bounded(text, "candidates") else {
        return Vec::new();
    };
    match obj.get("candidates") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// A gateway reply for [`crate::Output::ControllerReply`]: `{"is_ok":true,"data":"<data>"}`.
pub fn gateway_reply_ok(data: &str) -> String {
    let mut s = String::from("{\"is_ok\":true,\"data\":");
    python_json::write_str(&mut s, data);
    s.push('}');
    s
}

/// A failed gateway reply. `data` carries the text for the WebSocket path (Commander reads `data`),
/// `error` for the non-streaming path (Commander reads `error`).
pub fn gateway_reply_error(message: &str) -> String {
    let mut s = String::from("{\"is_ok\":false,\"data\":");
    python_json::write_str(&mut s, message);
    s.push_str(",\"error\":");
    python_json::write_str(&mut s, message);
    s.push('}');
    s
}

/// The WebSocket frame the router pushes for a streamed reply:
/// `{"conversationId": b64std(messageUid), "type": …, "payload": "<reply JSON as a string>"}`.
pub fn ws_push_frame(message_uid: &[u8], frame_type: &str, payload: &str) -> String {
    use python_json::{compact, object_raw};
    object_raw(&[
        (
            "conversationId",
            compact(&STANDARD.encode(message_uid).into()),
        ),
        ("type", compact(&frame_type.into())),
        ("payload", compact(&payload.into())),
    ])
}

/// `ControllerResponse.payload` of a non-streaming answer: `{"payload": "<reply JSON as a string>"}`.
pub fn controller_response_payload(reply: &str) -> String {
    python_json::object_raw(&[("payload", python_json::compact(&reply.into()))])
}

// ---------------------------------------------------------------------------------------------- client side

/// One gateway reply object inside a router WebSocket frame.
#[derive(Debug, Clone, PartialEq)]
pub struct WsItem {
    /// As the router sent it (Commander: standard base64, padded). Use [`ConversationId::matches`].
    pub conversation_id: String,
    /// The frame's `type` (Commander only logs it).
    pub frame_type: Option<String>,
    pub payload: GatewayPayload,
}

/// The decoded `payload` of a gateway reply: `{"is_ok"|"isOk": bool, "data": …, "errors": […],
/// "progress_status": …, "error": …}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GatewayPayload {
    /// Python truthiness of `is_ok` (or, if absent, `isOk`); `None` if neither key is present.
    pub is_ok: Option<bool>,
    pub data: Option<Value>,
    /// Non-string entries are given as their JSON text.
    pub errors: Vec<String>,
    pub progress_status: Option<String>,
    /// The non-streaming path's error text.
    pub error: Option<String>,
    /// Set when the payload itself could not be decoded (then every other field is empty).
    pub invalid: Option<String>,
}

impl GatewayPayload {
    /// Decode a payload from its JSON text. Never fails: a bad payload is marked [`GatewayPayload::invalid`].
    pub fn parse(text: &str) -> Self {
        match parse_json_bounded(text, "payload") {
            Ok(Value::Object(obj)) => Self::from_object(&obj),
            Ok(_) => Self::invalid("payload is not a JSON object"),
            Err(e) => Self::invalid(&e.to_string()),
        }
    }

    fn invalid(reason: &str) -> Self {
        GatewayPayload {
            invalid: Some(reason.to_string()),
            ..Default::default()
        }
    }

    pub fn from_object(obj: &Map<String, Value>) -> Self {
        let ok_value = obj.get("is_ok").or_else(|| obj.get("isOk"));
        let errors = match obj.get("errors") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|e| {
                    e.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| e.to_string())
                })
                .collect(),
            Some(Value::Null) | None => Vec::new(),
            Some(other) => vec![other.to_string()],
        };
        GatewayPayload {
            is_ok: ok_value.map(|v| truthy(Some(v))),
            data: obj.get("data").cloned(),
            errors,
            progress_status: obj
                .get("progress_status")
                .and_then(Value::as_str)
                .map(str::to_string),
            error: obj.get("error").and_then(Value::as_str).map(str::to_string),
            invalid: None,
        }
    }
}

/// Parse one router WebSocket text frame: one object or an array of objects. Items that are not
/// objects or have no string `conversationId` are skipped (Commander drops them too).
pub fn parse_ws_frame(text: &str) -> Result<Vec<WsItem>, SignalingError> {
    let v = parse_json_bounded(text, "WebSocket message")
        .map_err(|e| SignalingError::Frame(e.to_string()))?;
    let objects: Vec<Value> = match v {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return Err(SignalingError::Frame(
                "neither an object nor an array".into(),
            ))
        }
    };
    Ok(objects
        .into_iter()
        .filter_map(|item| {
            let Value::Object(obj) = item else {
                return None;
            };
            let conversation_id = obj.get("conversationId")?.as_str()?.to_string();
            let frame_type = obj.get("type").and_then(Value::as_str).map(str::to_string);
            let payload = match obj.get("payload") {
                Some(Value::String(s)) if !s.is_empty() => GatewayPayload::parse(s),
                // Tolerate a router that sends the payload as an object instead of a JSON string.
                Some(Value::Object(o)) => GatewayPayload::from_object(o),
                _ => GatewayPayload::invalid("no payload"),
            };
            Some(WsItem {
                conversation_id,
                frame_type,
                payload,
            })
        })
        .collect())
}

/// What a gateway reply means for the launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayData {
    /// The SDP answer, as plain text (decoded from `answer`'s base64, or `sdp`, or raw SDP).
    Answer(String),
    /// A gateway-initiated ICE-restart offer, as plain SDP text.
    Offer(String),
    /// Remote ICE candidates in order (`""` = end of candidates; skip it).
    Candidates(Vec<String>),
    /// An acknowledgement or progress message: nothing to do.
    Ack,
    /// The gateway reported a failure (`is_ok: false`); the text is the gateway's.
    Error(String),
    /// Commander would log this and drop it (undecryptable data, unknown fields, `errors` list...).
    Ignored(String),
}

/// Commander's plain-text acknowledgement test on a reply's `data` (`route_message_to_rust`).
fn looks_like_plain_ack(data: &str) -> bool {
    let lower = data.to_lowercase();
    [
        "ice candidate",
        "buffered",
        "connected",
        "disconnected",
        "error",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

/// Interpret a gateway reply from the WebSocket, following §3.3: `is_ok && data` → [`classify_data`];
/// a non-empty `errors` list → logged only ([`GatewayData::Ignored`]); `is_ok: false` → [`GatewayData::Error`];
/// anything else is an acknowledgement.
pub fn classify_gateway_data(key: &TunnelKey, payload: &GatewayPayload) -> GatewayData {
    if let Some(reason) = &payload.invalid {
        return GatewayData::Ignored(reason.clone());
    }
    if payload.is_ok == Some(true) && truthy(payload.data.as_ref()) {
        return match &payload.data {
            Some(Value::String(s)) => classify_data(key, s),
            _ => GatewayData::Ignored("reply data is not a string".into()),
        };
    }
    if !payload.errors.is_empty() && payload.errors != [""] {
        return GatewayData::Ignored(format!("gateway reported errors: {:?}", payload.errors));
    }
    if payload.is_ok == Some(false) {
        let text = match &payload.data {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => "unknown error".into(),
            Some(other) => other.to_string(),
        };
        return GatewayData::Error(text);
    }
    GatewayData::Ack
}

/// Interpret a reply's `data` string. Deliberate deviation from Commander: decryption is tried before
/// the plain-text acknowledgement test, so a ciphertext that happens to contain e.g. `error` in its
/// base64 (about 1 answer in 10⁴) is not mistaken for an ack.
pub fn classify_data(key: &TunnelKey, data: &str) -> GatewayData {
    match key.decrypt(data) {
        Ok(plain) => classify_plaintext(&plain),
        Err(_) if looks_like_plain_ack(data) => GatewayData::Ack,
        Err(e) => GatewayData::Ignored(format!("gateway data: {e}")),
    }
}

/// Interpret decrypted reply data (after Commander's `'` → `"` replacement).
pub fn classify_plaintext(plain: &[u8]) -> GatewayData {
    let Ok(text) = std::str::from_utf8(plain) else {
        return GatewayData::Ignored("decrypted data is not UTF-8".into());
    };
    let text = text.replace('\'', "\"");
    match parse_json_bounded(&text, "decrypted data") {
        Ok(Value::String(s)) => {
            let acks = [
                "connected",
                "disconnected",
                "error",
                "success",
                "ok",
                "acknowledged",
            ];
            if acks.contains(&s.to_lowercase().as_str()) {
                GatewayData::Ack
            } else {
                GatewayData::Ignored(format!("unexpected string reply {s:?}"))
            }
        }
        Ok(Value::Object(obj)) => classify_object(&obj),
        _ => {
            let trimmed = text.trim();
            if trimmed.starts_with("v=") && trimmed.contains("m=") {
                GatewayData::Answer(trimmed.to_string())
            } else {
                GatewayData::Ignored("decrypted data is neither JSON nor SDP".into())
            }
        }
    }
}

fn classify_object(obj: &Map<String, Value>) -> GatewayData {
    let text_field = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    // Fix for Commander bug §10.13: check `type == "offer"` before `answer`/`sdp`.
    let is_offer = obj.get("type").and_then(Value::as_str) == Some("offer");
    if is_offer {
        return match text_field("sdp").or_else(|| text_field("offer")) {
            Some(sdp) => GatewayData::Offer(sdp.to_string()),
            None => GatewayData::Ignored("offer without SDP".into()),
        };
    }
    if let Some(answer) = text_field("answer") {
        return match decode_b64_any(answer).and_then(|b| String::from_utf8(b).ok()) {
            Some(sdp) => GatewayData::Answer(sdp),
            None => GatewayData::Ignored("answer is not base64 SDP".into()),
        };
    }
    if let Some(sdp) = text_field("sdp") {
        return GatewayData::Answer(sdp.to_string());
    }
    if obj.contains_key("offer") {
        return match text_field("offer") {
            Some(sdp) => GatewayData::Offer(sdp.to_string()),
            None => GatewayData::Ignored("offer without SDP".into()),
        };
    }
    if let Some(list) = obj.get("candidates") {
        let list = list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        return GatewayData::Candidates(list);
    }
    GatewayData::Ignored("no known field in the gateway data".into())
}

/// The non-streaming (`--no-trickle-ice`) answer, §2.7: `response` is the parsed
/// `ControllerResponse.payload` (`{"payload": "<JSON string of {is_ok, data}>"}`).
/// `Err` carries the gateway's error text (Commander: `Gateway error: <error>`, not retried).
/// Unlike Commander, `isOk: true` without `is_ok` is honoured for the data as well.
pub fn non_streaming_answer(
    key: &TunnelKey,
    response: Option<&Value>,
) -> Result<GatewayData, String> {
    let Some(response) = response.filter(|r| truthy(Some(r))) else {
        return Ok(GatewayData::Ignored("empty controller response".into()));
    };
    let payload: Map<String, Value> = match response.get("payload") {
        Some(Value::String(s)) => match parse_json_bounded(s, "payload") {
            Ok(Value::Object(o)) => o,
            _ => Map::new(),
        },
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    let ok = truthy(payload.get("is_ok")) || truthy(payload.get("isOk"));
    if !ok {
        let msg = payload
            .get("error")
            .map(|e| {
                e.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string())
            })
            .unwrap_or_else(|| "Unknown error from gateway".into());
        return Err(msg);
    }
    match payload.get("data") {
        Some(Value::String(s)) if !s.is_empty() => Ok(classify_data(key, s)),
        _ => Ok(GatewayData::Ignored("gateway reply without data".into())),
    }
}

// ---------------------------------------------------------------------------------------------- fuzzing

/// Entry points for the fuzz targets (and the proptests below): each must return without panicking
/// for any input.
pub mod fuzzing {
    use super::*;

    fn fuzz_key() -> TunnelKey {
        TunnelKey::derive(&[7u8; 32], &[9u8; 16])
    }

    /// The WebSocket frame parser and the whole client-side interpretation of every item.
    pub fn fuzz_ws_frame(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let key = fuzz_key();
        if let Ok(items) = parse_ws_frame(text) {
            for item in items {
                let _ = ConversationId::parse(&item.conversation_id);
                let _ = classify_gateway_data(&key, &item.payload);
            }
        }
        let value = serde_json::from_str::<Value>(text).ok();
        let _ = non_streaming_answer(&key, value.as_ref());
    }

    /// The gateway-side action parser and the data parsers it leads to.
    pub fn fuzz_gateway_action(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(action) = GatewayAction::parse(text) {
            let _ = action.to_json();
            let _ = (
                action.kind(),
                action.data(),
                action.nonce(),
                action.trickle_ice(),
            );
        }
        let _ = OfferRequest::parse(data);
        let _ = parse_candidates(data);
        let _ = classify_plaintext(data);
        let _ = ensure_max_message_size(text);
    }

    /// `tunnel_decrypt` on arbitrary text, and a real ciphertext with arbitrary bytes flipped in.
    pub fn fuzz_tunnel_decrypt(data: &[u8]) {
        let key = fuzz_key();
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = key.decrypt(text);
            let _ = classify_data(&key, text);
            let _ = decode_b64_any(text);
        }
        let _ = key.decrypt(&STANDARD.encode(data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::from_seed([3; 32])
    }

    fn kat_key() -> TunnelKey {
        let seed: Vec<u8> = (0..32).collect();
        let nonce: Vec<u8> = (16..32).collect();
        TunnelKey::derive(&seed, &nonce)
    }

    #[test]
    fn conversation_id_forms() {
        let c = ConversationId(
            (0u8..16)
                .map(|i| i * 17)
                .collect::<Vec<_>>()
                .try_into()
                .unwrap(),
        );
        assert_eq!(c.url().len(), 22);
        assert_eq!(c.std().len(), 24);
        assert!(c.std().ends_with("=="));
        assert_eq!(ConversationId::parse(&c.url()), Some(c));
        assert_eq!(ConversationId::parse(&c.std()), Some(c));
        assert_eq!(
            ConversationId::parse(c.std().trim_end_matches('=')),
            Some(c)
        );
        assert!(c.matches(&c.std()) && c.matches(&c.url()));
        assert_eq!(ConversationId::parse("abc"), None);
        assert_eq!(ConversationId::parse(""), None);
        assert_eq!(ConversationId::parse(&"A".repeat(40)), None);
        // A form with '+' and '/' (std) and its URL-safe twin.
        let c = ConversationId([0xfb; 16]);
        assert!(c.std().contains('+') || c.std().contains('/'));
        assert!(c.url().contains('-') || c.url().contains('_'));
        assert_eq!(
            ConversationId::parse(&c.url()),
            ConversationId::parse(&c.std())
        );
        // messageId = conversationId with '=' stripped and the URL-safe alphabet.
        assert_eq!(
            c.std()
                .trim_end_matches('=')
                .replace('+', "-")
                .replace('/', "_"),
            c.url()
        );
    }

    #[test]
    fn tunnel_key_round_trip_and_failures() {
        let mut r = rng();
        let key = kat_key();
        let ct = key.encrypt(b"hello", &mut r);
        assert_eq!(key.decrypt(&ct).unwrap(), b"hello");
        // URL-safe spelling decrypts too.
        let url = ct
            .replace('+', "-")
            .replace('/', "_")
            .trim_end_matches('=')
            .to_string();
        assert_eq!(key.decrypt(&url).unwrap(), b"hello");
        let other = TunnelKey::derive(&[1; 32], &[2; 16]);
        assert_eq!(other.decrypt(&ct), Err(SignalingError::Decrypt));
        assert_eq!(key.decrypt("AAAA"), Err(SignalingError::TooShort(3)));
        assert_eq!(
            key.decrypt(&STANDARD.encode([0u8; 12])),
            Err(SignalingError::TooShort(12))
        );
        assert_eq!(
            key.decrypt("!!"),
            Err(SignalingError::BadBase64("encrypted data"))
        );
        assert_eq!(format!("{key:?}"), "TunnelKey(<redacted>)");
    }

    /// Generated with Commander's HKDF derivation and `tunnel_encrypt` (IV fixed to 09×12):
    /// seed = bytes(range(32)), nonce = bytes(range(16, 32)).
    #[test]
    fn tunnel_decrypt_known_answer_from_commander() {
        let ct = "CQkJCQkJCQkJCQkJr7Ub+gGig1/plzG9ibagXzE89K4HntB5H+bPuHUfO2ey9katQVneVUMsZ4R2mjBuhjXNSLVpvF6iZRB1sQUbuYe81eysfyrQ5G9/VfapuH5Bj1q2LTzgklKyD9hflHelo1LLIH6KIp7GsQ==";
        let plain = kat_key().decrypt(ct).unwrap();
        assert_eq!(
            plain,
            br#"{"answer": "dj0wDQptPWFwcGxpY2F0aW9uIDkgVURQL0RUTFMvU0NUUCB3ZWJydGMtZGF0YWNoYW5uZWwNCg=="}"#
        );
        assert_eq!(
            classify_plaintext(&plain),
            GatewayData::Answer(
                "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n".into()
            )
        );
    }

    /// `GatewayAction.toJSON()` output of Commander's `pam_dto.GatewayAction` for the same inputs.
    #[test]
    fn gateway_action_json_matches_python() {
        let inputs = serde_json::json!({
            "recordUid": "rec", "kind": "start", "base64Nonce": "EBESExQVFhcYGRobHB0eHw==",
            "conversationType": "ssh", "data": "ab/+c=", "trickleICE": true,
            "twoFactorValue": "\u{e9}\u{e9}\u{1F600}\u{7f}\"\\\n\t/<>",
            "n": 12, "f": 1.5, "big": 1e20, "small": 1e-7, "empty": {}, "list": [],
            "nested": {"b": [1, "x"], "a": null}
        });
        let Value::Object(inputs) = inputs else {
            unreachable!()
        };
        let a = GatewayAction {
            conversation_id: "AAECAwQFBgcICQoLDA0ODw".into(),
            inputs,
            message_id: Some("AAECAwQFBgcICQoLDA0ODw".into()),
        };
        let expected = r#"{
    "action": "webrtc-session",
    "conversationId": "AAECAwQFBgcICQoLDA0ODw",
    "gateway_destination": null,
    "inputs": {
        "base64Nonce": "EBESExQVFhcYGRobHB0eHw==",
        "big": 1e+20,
        "conversationType": "ssh",
        "data": "ab/+c=",
        "empty": {},
        "f": 1.5,
        "kind": "start",
        "list": [],
        "n": 12,
        "nested": {
            "a": null,
            "b": [
                1,
                "x"
            ]
        },
        "recordUid": "rec",
        "small": 1e-07,
        "trickleICE": true,
        "twoFactorValue": "\u00e9\u00e9\ud83d\ude00\u007f\"\\\n\t/<>"
    },
    "is_scheduled": false,
    "messageId": "AAECAwQFBgcICQoLDA0ODw"
}"#;
        assert_eq!(a.to_json(), expected);
        let back = GatewayAction::parse(expected).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.kind(), Some("start"));
        assert_eq!(back.nonce(), Some((16u8..32).collect()));
        assert_eq!(back.trickle_ice(), Some(true));
        // messageId null (pam tunnel start).
        let t = GatewayAction {
            message_id: None,
            ..a
        };
        assert!(t.to_json().ends_with("\"messageId\": null\n}"));
        assert_eq!(GatewayAction::parse(&t.to_json()).unwrap().message_id, None);
    }

    #[test]
    fn gateway_action_parse_errors() {
        assert!(GatewayAction::parse("[]").is_err());
        assert!(
            GatewayAction::parse(r#"{"action":"rotate","conversationId":"x","inputs":{}}"#)
                .is_err()
        );
        assert!(GatewayAction::parse(r#"{"action":"webrtc-session","inputs":{}}"#).is_err());
        assert!(GatewayAction::parse(
            r#"{"action":"webrtc-session","conversationId":"x","inputs":null}"#
        )
        .is_err());
    }

    #[test]
    fn python_float_repr() {
        use python_json::float_repr;
        for (f, s) in [
            (1.5, "1.5"),
            (1e20, "1e+20"),
            (1e-7, "1e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123.456, "123.456"),
            (-2.0, "-2.0"),
            (0.0, "0.0"),
            (1.2345e-300, "1.2345e-300"),
        ] {
            assert_eq!(float_repr(f), s, "{f}");
        }
    }

    #[test]
    fn data_builders_match_python() {
        let mut guacd = Map::new();
        guacd.insert("hostname".into(), "10.0.0.5".into());
        guacd.insert("password".into(), "p\u{e4}ss".into());
        guacd.insert("disable-copy".into(), "true".into());
        let d = OfferData {
            offer_b64: "dj0w".into(),
            size: [816, 494, 96],
            host_name: "10.0.0.5".into(),
            port: 22,
            guacd_params: guacd,
            disable_copy: false,
            disable_paste: true,
        };
        // Python's json.dumps(offer_data) for the same values (handler params hostname, password).
        assert_eq!(
            offer_data_json(&d),
            r#"{"offer": "dj0w", "audio": ["audio/L8", "audio/L16"], "video": [], "size": [816, 494, 96], "image": ["image/jpeg", "image/png", "image/webp"], "host": {"hostName": "10.0.0.5", "port": 22}, "guacd_params": {"enable-pipe": "true", "hostname": "10.0.0.5", "password": "p\u00e4ss", "disable-paste": "true"}, "terminalSettings": {"disableCopy": false, "disablePaste": true}, "clipboard": {"disableCopy": false, "disablePaste": true}}"#
        );
        let parsed = OfferRequest::parse(offer_data_json(&d).as_bytes()).unwrap();
        assert_eq!(parsed.sdp, "v=0");
        assert_eq!(parsed.size, Some([816, 494, 96]));
        assert_eq!(parsed.host, Some(("10.0.0.5".into(), 22)));
        assert_eq!(
            parsed.guacd_params.get("password"),
            Some(&Value::from("p\u{e4}ss"))
        );
        let cands = vec![
            "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host".to_string(),
            String::new(),
        ];
        assert_eq!(
            candidates_data_json(&cands),
            r#"{"candidates": ["candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host", ""]}"#
        );
        assert_eq!(
            parse_candidates(candidates_data_json(&cands).as_bytes()),
            cands
        );
        assert_eq!(parse_candidates(b"nope"), Vec::<String>::new());
    }

    #[test]
    fn start_and_candidate_inputs() {
        let s = StartInputs {
            record_uid: "r".into(),
            base64_nonce: "n".into(),
            conversation_type: "ssh".into(),
            data: "d".into(),
            trickle_ice: true,
            credential: Some(CredentialType::Linked {
                user_record_uid: "u".into(),
            }),
            two_factor_value: Some("123456".into()),
        };
        let m = s.to_map();
        assert_eq!(m.get("kind"), Some(&Value::from("start")));
        assert_eq!(m.get("credentialType"), Some(&Value::from("linked")));
        assert_eq!(m.get("userRecordUid"), Some(&Value::from("u")));
        assert_eq!(m.get("twoFactorValue"), Some(&Value::from("123456")));
        assert_eq!(m.get("trickleICE"), Some(&Value::Bool(true)));
        let m = StartInputs {
            credential: Some(CredentialType::UserSupplied),
            two_factor_value: None,
            ..s.clone()
        }
        .to_map();
        assert_eq!(m.get("allowSupplyUser"), Some(&Value::Bool(true)));
        assert!(!m.contains_key("twoFactorValue"));
        let m = StartInputs {
            credential: Some(CredentialType::Ephemeral),
            ..s
        }
        .to_map();
        assert!(!m.contains_key("userRecordUid"));
        let c = icecandidate_inputs("r", "n", "tunnel", "d", true);
        assert_eq!(c.get("kind"), Some(&Value::from("icecandidate")));
        assert_eq!(c.get("conversationType"), Some(&Value::from("tunnel")));
        assert_eq!(c.len(), 6);
    }

    #[test]
    fn max_message_size_injection() {
        let sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:5000\r\na=x\r\n";
        assert_eq!(
            ensure_max_message_size(sdp),
            "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:5000\r\na=max-message-size:1073741823\r\na=x\r\n"
        );
        let again = ensure_max_message_size(&ensure_max_message_size(sdp));
        assert_eq!(again.matches("max-message-size").count(), 1);
        assert_eq!(
            ensure_max_message_size("v=0\nm=application 9\n"),
            "v=0\nm=application 9\na=max-message-size:1073741823\n"
        );
        assert_eq!(
            ensure_max_message_size("v=0"),
            "v=0\na=max-message-size:1073741823\n"
        );
        assert_eq!(ensure_max_message_size(""), "");
    }

    fn encrypted(key: &TunnelKey, s: &str) -> String {
        key.encrypt(s.as_bytes(), &mut rng())
    }

    #[test]
    fn ws_frames_object_and_array() {
        let key = kat_key();
        let answer = encrypted(&key, &answer_data_json("v=0\r\nm=application 9\r\n"));
        let reply = gateway_reply_ok(&answer);
        let conv = ConversationId([5; 16]);
        let frame = ws_push_frame(conv.bytes(), WS_FRAME_TYPE, &reply);
        let items = parse_ws_frame(&frame).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].conversation_id, conv.std());
        assert_eq!(items[0].frame_type.as_deref(), Some(WS_FRAME_TYPE));
        assert_eq!(
            classify_gateway_data(&key, &items[0].payload),
            GatewayData::Answer("v=0\r\nm=application 9\r\n".into())
        );
        let cands = gateway_reply_ok(&encrypted(
            &key,
            &candidates_data_json(&["c1".into(), "".into()]),
        ));
        let array = format!(
            "[{frame}, {}, 7, {{\"type\":\"x\"}}]",
            ws_push_frame(conv.bytes(), "t", &cands)
        );
        let items = parse_ws_frame(&array).unwrap();
        assert_eq!(
            items.len(),
            2,
            "non-objects and items without conversationId are skipped"
        );
        assert_eq!(
            classify_gateway_data(&key, &items[1].payload),
            GatewayData::Candidates(vec!["c1".into(), "".into()])
        );
        assert!(parse_ws_frame("42").is_err());
        assert!(parse_ws_frame("{").is_err());
        let bad_payload =
            parse_ws_frame(r#"{"conversationId":"x","payload":"{not json"}"#).unwrap();
        assert!(matches!(
            classify_gateway_data(&key, &bad_payload[0].payload),
            GatewayData::Ignored(_)
        ));
    }

    fn payload(json: &str) -> GatewayPayload {
        GatewayPayload::parse(json)
    }

    #[test]
    fn classification_follows_commander() {
        let key = kat_key();
        let enc = |s: &str| encrypted(&key, s);
        // Plain-text acks.
        for ack in [
            "ICE candidate received",
            "buffered",
            "Connected",
            "some error text",
        ] {
            assert_eq!(
                classify_gateway_data(&key, &payload(&gateway_reply_ok(ack))),
                GatewayData::Ack
            );
        }
        // JSON-string acks inside the ciphertext, with Commander's ' -> " replacement.
        assert_eq!(classify_data(&key, &enc("'connected'")), GatewayData::Ack);
        assert_eq!(classify_data(&key, &enc("\"OK\"")), GatewayData::Ack);
        // {"sdp": plain} answer, raw SDP answer.
        assert_eq!(
            classify_data(&key, &enc(r#"{"sdp": "v=0 m=x"}"#)),
            GatewayData::Answer("v=0 m=x".into())
        );
        assert_eq!(
            classify_data(&key, &enc("  v=0\r\nm=application\r\n")),
            GatewayData::Answer("v=0\r\nm=application".into())
        );
        // Bug §10.13 fixed: a restart offer with an sdp key is an offer.
        assert_eq!(
            classify_data(&key, &enc(&ice_restart_offer_data_json("v=0 restart"))),
            GatewayData::Offer("v=0 restart".into())
        );
        assert_eq!(
            classify_data(&key, &enc(r#"{"offer": "v=0 o"}"#)),
            GatewayData::Offer("v=0 o".into())
        );
        assert!(matches!(
            classify_data(&key, &enc(r#"{"foo": 1}"#)),
            GatewayData::Ignored(_)
        ));
        assert!(matches!(
            classify_data(&key, "bm90IGEgY2lwaGVydGV4dCBhdCBhbGw="),
            GatewayData::Ignored(_)
        ));
        // is_ok false -> error with the data text; errors list only logged; empty data -> ack.
        assert_eq!(
            classify_gateway_data(
                &key,
                &payload(&gateway_reply_error(
                    "gateway_webrtcaction_keeperssh_proxy_timeout"
                ))
            ),
            GatewayData::Error("gateway_webrtcaction_keeperssh_proxy_timeout".into())
        );
        assert!(matches!(
            classify_gateway_data(
                &key,
                &payload(r#"{"is_ok": true, "data": "", "errors": ["boom"]}"#)
            ),
            GatewayData::Ignored(_)
        ));
        assert_eq!(
            classify_gateway_data(&key, &payload(r#"{"is_ok": true, "data": ""}"#)),
            GatewayData::Ack
        );
        assert_eq!(
            classify_gateway_data(&key, &payload(r#"{"progress_status": "x"}"#)),
            GatewayData::Ack
        );
        assert_eq!(
            classify_gateway_data(&key, &payload(r#"{"is_ok": null}"#)),
            GatewayData::Error("unknown error".into())
        );
        // isOk spelling.
        let p = payload(&format!(
            r#"{{"isOk": true, "data": "{}"}}"#,
            enc(r#"{"candidates": ["a"]}"#)
        ));
        assert_eq!(
            classify_gateway_data(&key, &p),
            GatewayData::Candidates(vec!["a".into()])
        );
    }

    #[test]
    fn non_streaming_double_json() {
        let key = kat_key();
        let data = encrypted(&key, &answer_data_json("v=0\r\n"));
        let reply = gateway_reply_ok(&data);
        let response: Value = serde_json::from_str(&controller_response_payload(&reply)).unwrap();
        assert_eq!(
            non_streaming_answer(&key, Some(&response)),
            Ok(GatewayData::Answer("v=0\r\n".into()))
        );
        let err: Value =
            serde_json::from_str(&controller_response_payload(&gateway_reply_error("nope")))
                .unwrap();
        assert_eq!(non_streaming_answer(&key, Some(&err)), Err("nope".into()));
        let no_error: Value = serde_json::json!({"payload": "{\"is_ok\": false}"});
        assert_eq!(
            non_streaming_answer(&key, Some(&no_error)),
            Err("Unknown error from gateway".into())
        );
        assert!(matches!(
            non_streaming_answer(&key, None),
            Ok(GatewayData::Ignored(_))
        ));
        assert!(matches!(
            non_streaming_answer(&key, Some(&serde_json::json!({}))),
            Ok(GatewayData::Ignored(_))
        ));
        assert_eq!(
            non_streaming_answer(&key, Some(&serde_json::json!({"payload": "garbage"}))),
            Err("Unknown error from gateway".into())
        );
    }

    #[test]
    fn reply_builders() {
        assert_eq!(gateway_reply_ok("a\"b"), r#"{"is_ok":true,"data":"a\"b"}"#);
        assert_eq!(
            gateway_reply_error("x"),
            r#"{"is_ok":false,"data":"x","error":"x"}"#
        );
        assert_eq!(
            ws_push_frame(&[0xfb; 16], "t", "{}"),
            r#"{"conversationId": "+/v7+/v7+/v7+/v7+/v7+w==", "type": "t", "payload": "{}"}"#
        );
        assert_eq!(
            controller_response_payload("{\"a\":1}"),
            r#"{"payload": "{\"a\":1}"}"#
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            fuzzing::fuzz_ws_frame(&data);
            fuzzing::fuzz_gateway_action(&data);
            fuzzing::fuzz_tunnel_decrypt(&data);
        }

        #[test]
        fn parsers_never_panic_on_jsonish_text(s in "[\\[\\]{}\":,a-z_A-Z0-9=+/ \\\\-]{0,200}") {
            fuzzing::fuzz_ws_frame(s.as_bytes());
            fuzzing::fuzz_gateway_action(s.as_bytes());
            fuzzing::fuzz_tunnel_decrypt(s.as_bytes());
        }

        #[test]
        fn tunnel_round_trip(plain in proptest::collection::vec(any::<u8>(), 0..300), seed in any::<[u8; 32]>()) {
            let key = TunnelKey::derive(&seed, &[1; 16]);
            let mut r = ChaCha20Rng::from_seed(seed);
            prop_assert_eq!(key.decrypt(&key.encrypt(&plain, &mut r)).unwrap(), plain);
        }

        #[test]
        fn python_json_is_valid_json(s in "\\PC{0,40}") {
            let mut out = String::new();
            python_json::write_str(&mut out, &s);
            prop_assert!(out.is_ascii());
            prop_assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
        }

        #[test]
        fn float_repr_round_trips(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let s = python_json::float_repr(f);
            prop_assert_eq!(s.parse::<f64>().unwrap(), f);
        }
    }
}
