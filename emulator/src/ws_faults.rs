//! What a misbehaving router puts on the client's WebSocket (the fault knobs of [`crate::EmulatorConfig`]):
//! pushes rewritten to name another conversation, floods of unrelated messages, one oversized message.
//! Pure text functions, so the front only decides *when* to send them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

/// The conversation every fabricated or misrouted message names: 16 bytes no client ever draws as a
/// conversation id (the client's are random; a collision is 2^-128).
pub fn other_conversation() -> String {
    STANDARD.encode([0xEE; 16])
}

/// `text` (a router push: one JSON object or an array of them) with every `conversationId` replaced by
/// [`other_conversation`]. Text that is not such JSON is returned unchanged.
pub fn misroute(text: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(text) else {
        return text.to_string();
    };
    let other = Value::String(other_conversation());
    let rewrite = |o: &mut Value| {
        if let Some(id) = o.get_mut("conversationId") {
            *id = other.clone();
        }
    };
    match &mut v {
        Value::Array(items) => items.iter_mut().for_each(rewrite),
        o => rewrite(o),
    }
    v.to_string()
}

/// Flood message number `n`: a well-formed push for another conversation.
pub fn flood_message(n: u32) -> String {
    serde_json::json!({
        "conversationId": other_conversation(),
        "type": "DataChannel",
        "payload": serde_json::json!({"is_ok": true, "data": format!("flood {n}")}).to_string(),
    })
    .to_string()
}

/// One push of exactly `len` bytes (at least the size of its JSON skeleton) for another conversation.
pub fn oversize_message(len: usize) -> String {
    let head = format!(
        "{{\"conversationId\":\"{}\",\"type\":\"DataChannel\",\"payload\":\"",
        other_conversation()
    );
    let tail = "\"}";
    let pad = len.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(head.len() + pad + tail.len());
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use pam_lite_core::signaling::parse_ws_frame;

    #[test]
    fn misrouted_pushes_name_the_other_conversation_and_keep_their_payload() {
        let push = pam_lite_core::signaling::ws_push_frame(&[1; 16], "t", "{\"is_ok\":true}");
        let items = parse_ws_frame(&misroute(&push)).expect("parses");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].conversation_id, other_conversation());
        let before = parse_ws_frame(&push).expect("parses");
        assert_ne!(before[0].conversation_id, other_conversation());
        let arr = format!("[{push},{push}]");
        let items = parse_ws_frame(&misroute(&arr)).expect("parses");
        assert!(items
            .iter()
            .all(|i| i.conversation_id == other_conversation()));
        assert_eq!(misroute("not json"), "not json");
    }

    #[test]
    fn fabricated_messages_are_well_formed_pushes() {
        let items = parse_ws_frame(&flood_message(7)).expect("parses");
        assert_eq!(items[0].conversation_id, other_conversation());
        for len in [0, 100, 1 << 20] {
            let m = oversize_message(len);
            assert!(
                m.len() >= len && (len < 100 || m.len() == len),
                "{len}: {}",
                m.len()
            );
            assert!(serde_json::from_str::<Value>(&m).is_ok());
        }
    }
}
