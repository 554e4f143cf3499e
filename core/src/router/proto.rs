//! The few protobuf messages the Keeper router speaks with `pam launch`, written by hand with
//! `#[derive(prost::Message)]` so no `protoc` is needed at build time.
//!
//! Field numbers, types and enum values were checked against the descriptors compiled into
//! Keeper Commander 18.1.8 (`keepercommander/proto/router_pb2.py`, package `Router`, and
//! `keepercommander/proto/pam_pb2.py`, package `PAM`). Proto3 semantics: every scalar has a default,
//! unknown fields are skipped, so a newer router adding fields does not break decoding.

use std::fmt;

/// `Router.RouterResponseCode`: the outcome of every router call, carried in [`RouterResponse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RouterResponseCode {
    RrcOk = 0,
    RrcGeneralError = 1,
    RrcNotAllowed = 2,
    RrcBadRequest = 3,
    /// The router waited `RouterControllerMessage.timeout` for the gateway in vain.
    RrcTimeout = 4,
    /// The router is not ready for this message yet (e.g. the WebSocket is not registered).
    RrcBadState = 5,
    /// The addressed gateway is not connected to the router.
    RrcControllerDown = 6,
    RrcWrongInstance = 7,
    RrcNotAllowedEnforcementNotEnabled = 8,
    RrcNotAllowedPamConfigFeaturesNotEnabled = 9,
}

impl RouterResponseCode {
    /// Every code, in wire order.
    pub const ALL: [RouterResponseCode; 10] = [
        RouterResponseCode::RrcOk,
        RouterResponseCode::RrcGeneralError,
        RouterResponseCode::RrcNotAllowed,
        RouterResponseCode::RrcBadRequest,
        RouterResponseCode::RrcTimeout,
        RouterResponseCode::RrcBadState,
        RouterResponseCode::RrcControllerDown,
        RouterResponseCode::RrcWrongInstance,
        RouterResponseCode::RrcNotAllowedEnforcementNotEnabled,
        RouterResponseCode::RrcNotAllowedPamConfigFeaturesNotEnabled,
    ];

    /// The protobuf enum value name, exactly as Python's `RouterResponseCode.Name(code)` prints it.
    /// Commander puts this name into its exception strings, and its retry logic matches substrings of them.
    pub fn name(self) -> &'static str {
        match self {
            RouterResponseCode::RrcOk => "RRC_OK",
            RouterResponseCode::RrcGeneralError => "RRC_GENERAL_ERROR",
            RouterResponseCode::RrcNotAllowed => "RRC_NOT_ALLOWED",
            RouterResponseCode::RrcBadRequest => "RRC_BAD_REQUEST",
            RouterResponseCode::RrcTimeout => "RRC_TIMEOUT",
            RouterResponseCode::RrcBadState => "RRC_BAD_STATE",
            RouterResponseCode::RrcControllerDown => "RRC_CONTROLLER_DOWN",
            RouterResponseCode::RrcWrongInstance => "RRC_WRONG_INSTANCE",
            RouterResponseCode::RrcNotAllowedEnforcementNotEnabled => {
                "RRC_NOT_ALLOWED_ENFORCEMENT_NOT_ENABLED"
            }
            RouterResponseCode::RrcNotAllowedPamConfigFeaturesNotEnabled => {
                "RRC_NOT_ALLOWED_PAM_CONFIG_FEATURES_NOT_ENABLED"
            }
        }
    }

    /// The inverse of [`RouterResponseCode::name`] (for configuration files and CLI flags).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for RouterResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `PAM.ControllerMessageType`: what kind of work a [`RouterControllerMessage`] asks of the gateway.
/// Every `pam launch` message (offer, candidates, ICE restart) is [`ControllerMessageType::CmtConnect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ControllerMessageType {
    CmtGeneral = 0,
    CmtRotate = 1,
    CmtDiscovery = 2,
    CmtConnect = 3,
    CmtAnalyzeRecording = 4,
    CmtWorkflowAccessElevation = 5,
    CmtUss = 6,
    CmtInfo = 7,
    CmtAutomation = 8,
}

/// `PAM.WebRtcConnectionType`: the protocol of a live connection listed in [`PAMOnlineController`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum WebRtcConnectionType {
    Connection = 0,
    Tunnel = 1,
    Ssh = 2,
    Rdp = 3,
    Http = 4,
    Vnc = 5,
    Telnet = 6,
    Mysql = 7,
    SqlServer = 8,
    Postgresql = 9,
    Kubernetes = 10,
}

/// `Router.RouterResponse`: the body of every router HTTP answer (unless it is JSON).
/// `encrypted_payload` is AES-256-GCM with the request's transmission key (`nonce ‖ ct ‖ tag`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RouterResponse {
    #[prost(enumeration = "RouterResponseCode", tag = "1")]
    pub response_code: i32,
    #[prost(string, tag = "2")]
    pub error_message: String,
    #[prost(bytes = "vec", tag = "3")]
    pub encrypted_payload: Vec<u8>,
}

/// `Router.RouterControllerMessage`: the (encrypted) body of `POST /api/user/send_controller_message`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RouterControllerMessage {
    #[prost(enumeration = "ControllerMessageType", tag = "1")]
    pub message_type: i32,
    /// The 16 raw conversation bytes; the router echoes them (standard base64, padded) as the WebSocket
    /// `conversationId` of streamed replies.
    #[prost(bytes = "vec", tag = "2")]
    pub message_uid: Vec<u8>,
    /// The gateway uid, URL-safe-base64-decoded.
    #[prost(bytes = "vec", tag = "3")]
    pub controller_uid: Vec<u8>,
    /// `true`: replies go to the client's WebSocket (trickle ICE); `false`: the first reply is the HTTP answer.
    #[prost(bool, tag = "4")]
    pub stream_response: bool,
    /// UTF-8 of the `GatewayAction` JSON.
    #[prost(bytes = "vec", tag = "5")]
    pub payload: Vec<u8>,
    /// How long the router waits for the gateway, in milliseconds.
    #[prost(int32, tag = "6")]
    pub timeout: i32,
}

/// `PAM.ControllerResponse`: the decrypted payload of a `send_controller_message` answer.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ControllerResponse {
    /// JSON text (for `pam launch`: `{"payload": "<JSON string of {is_ok, data}>"}`).
    #[prost(string, tag = "1")]
    pub payload: String,
}

/// `PAM.PAMOnlineControllers`: the answer of `POST /api/user/get_controllers`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PAMOnlineControllers {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub deprecated: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "2")]
    pub controllers: Vec<PAMOnlineController>,
}

/// `PAM.PAMOnlineController`: one gateway currently connected to the router.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PAMOnlineController {
    #[prost(bytes = "vec", tag = "1")]
    pub controller_uid: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub connected_on: i64,
    #[prost(string, tag = "3")]
    pub ip_address: String,
    #[prost(string, tag = "4")]
    pub version: String,
    #[prost(message, repeated, tag = "5")]
    pub connections: Vec<PAMWebRtcConnection>,
}

/// `PAM.PAMWebRtcConnection`: one live WebRTC connection of an online gateway.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PAMWebRtcConnection {
    #[prost(bytes = "vec", tag = "1")]
    pub connection_uid: Vec<u8>,
    #[prost(enumeration = "WebRtcConnectionType", tag = "2")]
    pub r#type: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub record_uid: Vec<u8>,
    #[prost(string, tag = "4")]
    pub user_name: String,
    #[prost(int64, tag = "5")]
    pub started_on: i64,
    #[prost(bytes = "vec", tag = "6")]
    pub configuration_uid: Vec<u8>,
}

/// `PAM.RelayAccessCreds`: TURN credentials from `POST /api/user/relay_access_creds`.
/// `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, prost::Message)]
#[prost(skip_debug)]
pub struct RelayAccessCreds {
    #[prost(string, tag = "1")]
    pub username: String,
    #[prost(string, tag = "2")]
    pub password: String,
    #[prost(int64, tag = "3")]
    pub server_time: i64,
}

impl fmt::Debug for RelayAccessCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayAccessCreds")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("server_time", &self.server_time)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Bytes produced by the real Python protobuf runtime with Commander 18.1.8's `pam_pb2` /
    /// `router_pb2` (see the generator snippet in each test).
    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn names_match_the_python_enum() {
        assert_eq!(RouterResponseCode::RrcBadState.name(), "RRC_BAD_STATE");
        assert_eq!(
            RouterResponseCode::RrcControllerDown.to_string(),
            "RRC_CONTROLLER_DOWN"
        );
        for (i, c) in RouterResponseCode::ALL.iter().enumerate() {
            assert_eq!(*c as i32, i as i32);
            assert_eq!(RouterResponseCode::try_from(i as i32), Ok(*c));
            assert_eq!(RouterResponseCode::from_name(c.name()), Some(*c));
        }
        assert!(RouterResponseCode::try_from(10).is_err());
        assert_eq!(ControllerMessageType::CmtConnect as i32, 3);
    }

    #[test]
    fn router_controller_message_matches_python_bytes() {
        // rq = router_pb2.RouterControllerMessage(); rq.messageUid = bytes(range(16));
        // rq.controllerUid = b'\x01\x02'; rq.messageType = 3; rq.streamResponse = True;
        // rq.payload = b'{}'; rq.timeout = 30000; rq.SerializeToString().hex()
        let m = RouterControllerMessage {
            message_type: ControllerMessageType::CmtConnect as i32,
            message_uid: (0u8..16).collect(),
            controller_uid: vec![1, 2],
            stream_response: true,
            payload: b"{}".to_vec(),
            timeout: 30000,
        };
        let expected = hex("08031210000102030405060708090a0b0c0d0e0f1a02010220012a027b7d30b0ea01");
        assert_eq!(m.encode_to_vec(), expected);
        assert_eq!(
            RouterControllerMessage::decode(expected.as_slice()).unwrap(),
            m
        );
    }

    #[test]
    fn online_controllers_and_creds_match_python_bytes() {
        // c = pam_pb2.PAMOnlineControllers(); g = c.controllers.add(); g.controllerUid = b'\xaa';
        // g.connectedOn = 5; g.ipAddress = '1.2.3.4'; g.version = 'v';
        // x = g.connections.add(); x.type = 2; x.userName = 'u'
        let c = PAMOnlineControllers {
            deprecated: vec![],
            controllers: vec![PAMOnlineController {
                controller_uid: vec![0xaa],
                connected_on: 5,
                ip_address: "1.2.3.4".into(),
                version: "v".into(),
                connections: vec![PAMWebRtcConnection {
                    r#type: WebRtcConnectionType::Ssh as i32,
                    user_name: "u".into(),
                    ..Default::default()
                }],
            }],
        };
        let expected = hex("12180a01aa10051a07312e322e332e342201762a051002220175");
        assert_eq!(c.encode_to_vec(), expected);
        assert_eq!(
            PAMOnlineControllers::decode(expected.as_slice()).unwrap(),
            c
        );

        // r = pam_pb2.RelayAccessCreds(username='a', password='b', serverTime=7)
        let r = RelayAccessCreds {
            username: "a".into(),
            password: "b".into(),
            server_time: 7,
        };
        assert_eq!(r.encode_to_vec(), hex("0a01611201621807"));
        assert!(!format!("{r:?}").contains("\"b\""));
        assert!(format!("{r:?}").contains("<redacted>"));
    }

    #[test]
    fn router_response_decodes_unknown_fields_and_codes() {
        // field 1 = 5 (RRC_BAD_STATE), field 2 = "x", unknown field 9 = varint 1
        let bytes = hex("08051201784801");
        let r = RouterResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(r.response_code(), RouterResponseCode::RrcBadState);
        assert_eq!(r.error_message, "x");
        assert!(RouterResponse::decode(&[0x12u8, 0x05, b'a'][..]).is_err());
    }
}
