//! Routing what arrives on the router WebSocket (Commander's `route_message_to_rust`, §3.3 of the
//! protocol notes): frames → gateway replies → what each reply means for the launcher. Two deliberate
//! fixes over Commander: a `{"type":"offer","sdp":…}` ICE-restart offer is an offer, not an answer (bug
//! §10.13), and both conversation-id forms are accepted (bug §10.4).

use super::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::signaling::test_support::*;

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
}
