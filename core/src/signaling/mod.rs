//! Signaling between the launcher and the gateway, relayed by the router (Commander
//! `pam_dto.py`, `tunnel_helpers.py`, `terminal_connection.py`). One file per concern:
//!
//! | module | what it owns |
//! |---|---|
//! | `conversation` | [`ConversationId`]: the 16 random bytes naming one tunnel, in its two textual forms; lenient base64 |
//! | `key` | [`TunnelKey`]: key derivation (HKDF-SHA256(seed, salt = nonce)) and the AES-256-GCM payload crypto of every action's `data` and every gateway reply |
//! | [`python_json`] | byte-exact Python `json.dumps`, for what Commander serializes with it |
//! | `action` | [`GatewayAction`]: the JSON the router delivers to the gateway (its `inputs` come from [`crate::offer`]) |
//! | `sdp` | [`ensure_max_message_size`]: Commander's one SDP edit |
//! | `ws_routing` | [`parse_ws_frame`] and [`classify_gateway_data`]: router WebSocket messages → what they mean |
//! | `answer` | [`non_streaming_answer`]: the answer inside the offer's HTTP response (`--no-trickle-ice`) |
//! | `gateway_side` | the gateway role's parsers and reply builders |
//! | [`fuzzing`] | fuzz entry points for all of the above |
//!
//! Everything is re-exported here, so callers keep writing `signaling::TunnelKey`.

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

mod action;
mod answer;
mod conversation;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod gateway_side;
mod key;
pub mod python_json;
mod sdp;
mod ws_routing;

pub use action::*;
pub use answer::*;
pub use conversation::*;
pub use gateway_side::*;
pub use key::*;
pub use sdp::*;
pub use ws_routing::*;

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

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    pub(crate) fn rng() -> ChaCha20Rng {
        ChaCha20Rng::from_seed([3; 32])
    }

    pub(crate) fn kat_key() -> TunnelKey {
        let seed: Vec<u8> = (0..32).collect();
        let nonce: Vec<u8> = (16..32).collect();
        TunnelKey::derive(&seed, &nonce)
    }

    pub(crate) fn encrypted(key: &TunnelKey, s: &str) -> String {
        key.encrypt(s.as_bytes(), &mut rng())
    }

    pub(crate) fn payload(json: &str) -> GatewayPayload {
        GatewayPayload::parse(json)
    }
}
