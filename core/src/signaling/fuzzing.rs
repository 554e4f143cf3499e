//! Entry points for the fuzz targets (and the proptests below): each must return without panicking
//! for any input.

use super::*;
use rand_core::SeedableRng as _;

fn fuzz_key() -> TunnelKey {
    TunnelKey::derive(&[7u8; 32], &[9u8; 16])
}

/// The WebSocket frame parser and the whole client-side interpretation of every item. Input starting
/// with a NUL byte is a recipe for a structured message instead of the text itself ([`structured`]):
/// objects, arrays and wrong types, payloads as JSON strings or objects, this conversation's id in both
/// spellings or another one's, and data sealed with the right tunnel key (so the answer, candidate and
/// offer paths behind decryption are reached) or with another.
pub fn fuzz_ws_frame(data: &[u8]) {
    let owned;
    let text = match data.split_first() {
        Some((0, recipe)) => {
            owned = structured(recipe).to_string();
            owned.as_str()
        }
        _ => match std::str::from_utf8(data) {
            Ok(t) => t,
            Err(_) => return,
        },
    };
    let key = fuzz_key();
    let ours = ConversationId([5; 16]);
    if let Ok(items) = parse_ws_frame(text) {
        for item in items {
            let _ = ConversationId::parse(&item.conversation_id);
            let _ = ours.matches(&item.conversation_id);
            match classify_gateway_data(&key, &item.payload) {
                GatewayData::Answer(sdp) | GatewayData::Offer(sdp) => {
                    let _ = crate::rtc::keeper_version(&sdp);
                }
                GatewayData::Candidates(list) => assert!(list.len() <= text.len()),
                GatewayData::Error(e) | GatewayData::Ignored(e) => {
                    let _ = e.len();
                }
                GatewayData::Ack => {}
            }
        }
    }
    let value = serde_json::from_str::<Value>(text).ok();
    let _ = non_streaming_answer(&key, value.as_ref());
}

/// A byte cursor that never fails: past the end it yields zeros.
struct Recipe<'a>(&'a [u8]);

impl Recipe<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn text(&mut self) -> String {
        let n = usize::from(self.u8() % 64).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        String::from_utf8_lossy(a).into_owned()
    }
}

/// The keys a router frame and a gateway reply use (and a few near misses).
const KEYS: &[&str] = &[
    "conversationId",
    "type",
    "payload",
    "is_ok",
    "isOk",
    "data",
    "errors",
    "progress_status",
    "error",
    "answer",
    "candidates",
    "sdp",
    "offer",
    "ice_restart",
    "message",
    "conversationid",
];

/// A JSON value built from `recipe`, shaped like what the router pushes (see [`fuzz_ws_frame`]).
fn structured(recipe: &[u8]) -> Value {
    let mut r = Recipe(recipe);
    let key = fuzz_key();
    let other = TunnelKey::derive(&[8u8; 32], &[9u8; 16]);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(r.u8()));
    value(&mut r, 0, &key, &other, &mut rng)
}

fn value(
    r: &mut Recipe,
    depth: u8,
    key: &TunnelKey,
    other: &TunnelKey,
    rng: &mut rand_chacha::ChaCha20Rng,
) -> Value {
    let nested = depth < 5;
    match r.u8() % 16 {
        0 => Value::Null,
        1 => Value::Bool(r.u8().is_multiple_of(2)),
        2 => Value::from(i64::from(r.u8()) - 128),
        3 => serde_json::Number::from_f64(f64::from(r.u8()) / 3.0)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        4 => Value::String(r.text()),
        5 => Value::String(ConversationId([5; 16]).std()),
        6 => Value::String(ConversationId([5; 16]).url()),
        7 => Value::String(ConversationId([6; 16]).std()),
        8 => Value::String(STANDARD.encode(r.text())),
        // Sealed with the right key (or, sometimes, another), as the gateway's `data` is.
        9 | 10 if nested => {
            let inner = value(r, depth + 1, key, other, rng).to_string();
            let k = if r.u8().is_multiple_of(4) { other } else { key };
            Value::String(k.encrypt(inner.as_bytes(), rng))
        }
        // A JSON document inside a string, as `payload` is.
        11 if nested => Value::String(value(r, depth + 1, key, other, rng).to_string()),
        12 if nested => Value::Array(
            (0..r.u8() % 5)
                .map(|_| value(r, depth + 1, key, other, rng))
                .collect(),
        ),
        13..=15 if nested => {
            let mut m = Map::new();
            for _ in 0..r.u8() % 6 {
                let k = KEYS[usize::from(r.u8()) % KEYS.len()];
                let v = value(r, depth + 1, key, other, rng);
                m.insert(k.to_string(), v);
            }
            Value::Object(m)
        }
        _ => Value::String("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n".into()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::signaling::test_support::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            fuzzing::fuzz_ws_frame(&data);
            fuzzing::fuzz_gateway_action(&data);
            fuzzing::fuzz_tunnel_decrypt(&data);
        }

        #[test]
        fn ws_frame_never_panics_on_structured_messages(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut recipe = vec![0u8];
            recipe.extend(data);
            fuzzing::fuzz_ws_frame(&recipe);
        }

        #[test]
        fn parsers_never_panic_on_jsonish_text(s in "[\\[\\]{}\":,a-z_A-Z0-9=+/ \\\\-]{0,200}") {
            fuzzing::fuzz_ws_frame(s.as_bytes());
            fuzzing::fuzz_gateway_action(s.as_bytes());
            fuzzing::fuzz_tunnel_decrypt(s.as_bytes());
        }
    }
}
