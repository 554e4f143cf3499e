//! The gateway action (Commander's `GatewayActionWebRTCSession`): what the router delivers to the
//! gateway, serialized byte-exactly like Python's `json.dumps(sort_keys=True, indent=4)`, and parsed back
//! on the gateway side. The `inputs` it carries are built in [`crate::offer`].

use super::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::signaling::test_support::*;

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
}
