//! Entry points for the fuzz targets (and the proptests below): each must return without panicking
//! for any input.

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
        fn parsers_never_panic_on_jsonish_text(s in "[\\[\\]{}\":,a-z_A-Z0-9=+/ \\\\-]{0,200}") {
            fuzzing::fuzz_ws_frame(s.as_bytes());
            fuzzing::fuzz_gateway_action(s.as_bytes());
            fuzzing::fuzz_tunnel_decrypt(s.as_bytes());
        }
    }
}
