//! The gateway role's side of signaling: what it reads from a decrypted offer or candidate `data`, the
//! plaintexts it answers with, its replies, and the frames the emulated router wraps them in.

use super::*;

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

/// The offer SDP of a decrypted `kind:"ice_restart_offer"` `data`: Commander's
/// `{"type":"offer","sdp":<plain SDP>,"ice_restart":true}`, or the `{"offer": <base64 or plain SDP>}`
/// shape its gateway-offer branch reads.
pub fn parse_restart_offer(plaintext: &[u8]) -> Result<String, SignalingError> {
    parse_restart(plaintext, "offer")
}

/// The answer SDP of a decrypted `kind:"ice_restart_answer"` `data`
/// (`{"type":"answer","sdp":<plain SDP>,"ice_restart":true}`, or `{"answer": <base64 or plain SDP>}`).
pub fn parse_restart_answer(plaintext: &[u8]) -> Result<String, SignalingError> {
    parse_restart(plaintext, "answer")
}

fn parse_restart(plaintext: &[u8], want: &str) -> Result<String, SignalingError> {
    let what = format!("restart {want}");
    let text = std::str::from_utf8(plaintext)
        .map_err(|_| SignalingError::Offer(format!("{what} is not UTF-8")))?;
    let Value::Object(obj) = parse_json_bounded(text, "restart data")? else {
        return Err(SignalingError::Offer(format!(
            "{what} is not a JSON object"
        )));
    };
    let field = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let sdp = match (obj.get("type").and_then(Value::as_str), field("sdp")) {
        (Some(t), Some(sdp)) if t == want => Some(sdp.to_string()),
        (None, Some(sdp)) => Some(sdp.to_string()),
        (Some(other), Some(_)) => {
            return Err(SignalingError::Offer(format!(
                "restart data of type {:?}, not an {want}",
                crate::text::sanitize_max(other, 20)
            )))
        }
        (_, None) => field(want).and_then(sdp_from_b64_or_plain),
    };
    sdp.filter(|s| s.trim_start().starts_with("v="))
        .ok_or_else(|| SignalingError::Offer(format!("{what} carries no SDP")))
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

#[cfg(test)]
mod tests {

    #[test]
    fn restart_offers_in_both_shapes_and_refusals() {
        let plain = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n";
        assert_eq!(
            parse_restart_offer(ice_restart_offer_data_json(plain).as_bytes()).unwrap(),
            plain
        );
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, plain);
        let shape2 = format!("{{\"offer\":\"{b64}\"}}");
        assert_eq!(parse_restart_offer(shape2.as_bytes()).unwrap(), plain);
        assert_eq!(
            parse_restart_answer(ice_restart_answer_data_json(plain).as_bytes()).unwrap(),
            plain
        );
        assert!(parse_restart_answer(ice_restart_offer_data_json(plain).as_bytes()).is_err());
        for bad in [
            ice_restart_answer_data_json(plain),
            "{}".to_string(),
            "[1]".to_string(),
            "{\"sdp\":\"not sdp\"}".to_string(),
            "\u{1b}[2J".to_string(),
        ] {
            assert!(parse_restart_offer(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    use super::*;
    #[allow(unused_imports)]
    use crate::signaling::test_support::*;

    #[test]
    fn offer_and_candidate_data_parse_back() {
        let mut guacd = std::collections::BTreeMap::new();
        guacd.insert("password".to_string(), "p\u{e4}ss".to_string());
        let host = crate::offer::TargetHost {
            host_name: "10.0.0.5".into(),
            port: 22,
        };
        let d = crate::offer::OfferData {
            terminal: Some(crate::offer::TerminalOffer::new(
                "ssh",
                Some(&host),
                &guacd,
                80,
                24,
                false,
                true,
            )),
            host: Some(host),
        };
        let parsed = OfferRequest::parse(&d.to_json("dj0w")).unwrap();
        assert_eq!(parsed.sdp, "v=0");
        assert_eq!(parsed.size, Some([830, 494, 96]));
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
}
