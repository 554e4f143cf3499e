//! The offer a launch sends, typed: the one place that knows what goes into the encrypted offer `data`
//! and into the `inputs` of the `start` and `icecandidate` actions.
//!
//! The CLI fills a [`LaunchOffer`] from the launch ticket (target host, guacd parameters, credential
//! choice, 2FA value); the client turns it into bytes only when it sends the offer. Before this module the
//! same keys were spelled in three places (the CLI's ticket code, inline `json!` in the client and unused
//! builders in the signaling module), and the client carried them as JSON maps.
//!
//! **Wire bytes.** The offer `data` plaintext is `serde_json`'s compact form of a key-sorted object
//! (what pam-lite has always sent: the gateway decrypts it and reads it with Python's `json.loads`, so
//! Commander's own key order and spacing do not matter). The action `inputs` end up inside
//! [`GatewayAction::to_json`](crate::signaling::GatewayAction::to_json), which sorts keys like Python's
//! `json.dumps(sort_keys=True)`. The tests below pin both against the builders they replaced.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// How the gateway finds the credential for the session (`inputs.credentialType`).
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialType {
    /// DAG-linked pamUser: `credentialType:"linked"` (+ `userRecordUid` when the ticket names it).
    Linked { user_record_uid: Option<String> },
    /// ConnectAs / prompt: `credentialType:"userSupplied"` + `allowSupplyUser:true`.
    UserSupplied,
    /// JIT account: `credentialType:"ephemeral"`. The router then waits longer for the gateway's answer.
    Ephemeral,
}

impl CredentialType {
    /// The `credentialType` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialType::Linked { .. } => "linked",
            CredentialType::UserSupplied => "userSupplied",
            CredentialType::Ephemeral => "ephemeral",
        }
    }
}

impl std::fmt::Debug for CredentialType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The target the gateway connects to (`data.host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHost {
    pub host_name: String,
    pub port: u16,
}

/// guacd's display geometry (`data.size` and the `width` / `height` / `dpi` guacd parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelSize {
    pub width: u32,
    pub height: u32,
    pub dpi: u32,
}

impl PixelSize {
    /// guacd's pixel size for a character terminal, Commander's `guacd_default_approximate_pixels`
    /// (`KEEPER_GUAC_PIXEL_MODE=guacd`): 10×20 px cells, 7 px padding each side, a 16 px scrollbar, 96 dpi.
    pub fn for_terminal(cols: u16, rows: u16) -> Self {
        PixelSize {
            width: u32::from(cols) * 10 + 2 * 7 + 16,
            height: u32::from(rows) * 20 + 2 * 7,
            dpi: 96,
        }
    }
}

/// The terminal part of the offer (`pam launch` only).
#[derive(Clone, PartialEq, Eq)]
pub struct TerminalOffer {
    pub size: PixelSize,
    /// The guacd parameters exactly as sent (see [`TerminalOffer::new`]). May hold credentials, so
    /// `Debug` shows only the names.
    pub guacd_params: BTreeMap<String, String>,
    pub disable_copy: bool,
    pub disable_paste: bool,
}

impl TerminalOffer {
    /// What `pam launch` sends for a `cols`×`rows` terminal: `enable-pipe`, the handler's parameters
    /// (without `disable-copy` / `disable-paste`: the clipboard flags decide those, as in Commander), `protocol` / `hostname` / `port` unless the
    /// handler set them, then the pixel geometry.
    pub fn new(
        protocol: &str,
        target: Option<&TargetHost>,
        handler_params: &BTreeMap<String, String>,
        cols: u16,
        rows: u16,
        disable_copy: bool,
        disable_paste: bool,
    ) -> Self {
        let size = PixelSize::for_terminal(cols, rows);
        let mut params = BTreeMap::new();
        params.insert("enable-pipe".to_string(), "true".to_string());
        for (k, v) in handler_params {
            // The clipboard policy comes from the flags only (added below, as Commander does); other
            // `disable-*` options (`disable-csv-export`, ...) are the record's and go through.
            if k != "disable-copy" && k != "disable-paste" {
                params.insert(k.clone(), v.clone());
            }
        }
        params
            .entry("protocol".to_string())
            .or_insert_with(|| protocol.to_string());
        if let Some(t) = target {
            params
                .entry("hostname".to_string())
                .or_insert_with(|| t.host_name.clone());
            params
                .entry("port".to_string())
                .or_insert_with(|| t.port.to_string());
        }
        params.insert("width".into(), size.width.to_string());
        params.insert("height".into(), size.height.to_string());
        params.insert("dpi".into(), size.dpi.to_string());
        if disable_paste {
            params.insert("disable-paste".into(), "true".into());
        }
        if disable_copy {
            params.insert("disable-copy".into(), "true".into());
        }
        TerminalOffer {
            size,
            guacd_params: params,
            disable_copy,
            disable_paste,
        }
    }
}

impl std::fmt::Debug for TerminalOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalOffer")
            .field("size", &self.size)
            .field(
                "guacd_params",
                &self.guacd_params.keys().collect::<Vec<_>>(),
            )
            .field("disable_copy", &self.disable_copy)
            .field("disable_paste", &self.disable_paste)
            .finish()
    }
}

/// The plaintext of the offer's `data` besides the SDP itself (spec §2.5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfferData {
    /// `host`: the target, when the ticket names one.
    pub host: Option<TargetHost>,
    /// `audio`, `video`, `size`, `image`, `guacd_params`, `terminalSettings`, `clipboard` (terminal only).
    pub terminal: Option<TerminalOffer>,
}

impl OfferData {
    /// The offer `data` plaintext with `offer_b64` (std base64 of the SDP) as its `offer` key: compact
    /// JSON, keys sorted (see the module docs for why this is the wire form).
    pub fn to_json(&self, offer_b64: &str) -> Vec<u8> {
        let mut data = Map::new();
        if let Some(t) = &self.terminal {
            let strings =
                |xs: &[&str]| Value::Array(xs.iter().map(|x| Value::from(*x)).collect::<Vec<_>>());
            let clipboard = Value::Object(Map::from_iter([
                ("disableCopy".to_string(), Value::Bool(t.disable_copy)),
                ("disablePaste".to_string(), Value::Bool(t.disable_paste)),
            ]));
            data.insert("audio".into(), strings(&["audio/L8", "audio/L16"]));
            data.insert("video".into(), Value::Array(Vec::new()));
            data.insert(
                "size".into(),
                Value::Array(vec![
                    t.size.width.into(),
                    t.size.height.into(),
                    t.size.dpi.into(),
                ]),
            );
            data.insert(
                "image".into(),
                strings(&["image/jpeg", "image/png", "image/webp"]),
            );
            let params = t
                .guacd_params
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            data.insert("guacd_params".into(), Value::Object(params));
            data.insert("terminalSettings".into(), clipboard.clone());
            data.insert("clipboard".into(), clipboard);
        }
        if let Some(h) = &self.host {
            data.insert(
                "host".into(),
                Value::Object(Map::from_iter([
                    ("hostName".to_string(), Value::String(h.host_name.clone())),
                    ("port".to_string(), Value::from(h.port)),
                ])),
            );
        }
        data.insert("offer".into(), Value::String(offer_b64.to_string()));
        Value::Object(data).to_string().into_bytes()
    }
}

/// Everything about the offer the launcher's caller decides (the CLI fills it from the ticket).
#[derive(Clone, PartialEq, Eq)]
pub struct LaunchOffer {
    /// `conversationType`: the protocol (`ssh`, `telnet`, …) for `pam launch`, `tunnel` for
    /// `pam tunnel start`.
    pub conversation_type: String,
    pub data: OfferData,
    /// `None`: the gateway uses the pamMachine credentials.
    pub credential: Option<CredentialType>,
    /// `twoFactorValue`. Secret.
    pub two_factor_value: Option<String>,
}

impl LaunchOffer {
    /// A `pam tunnel start` offer: conversation type `tunnel`, the target host only.
    pub fn tunnel(host: Option<TargetHost>) -> Self {
        LaunchOffer {
            conversation_type: "tunnel".into(),
            data: OfferData {
                host,
                terminal: None,
            },
            credential: None,
            two_factor_value: None,
        }
    }

    /// Whether the credential is just-in-time (the router then waits longer for the gateway's answer).
    pub fn ephemeral(&self) -> bool {
        self.credential == Some(CredentialType::Ephemeral)
    }
}

/// The guacd parameters (passwords, private keys, passphrases) are wiped when the offer is dropped.
impl Drop for TerminalOffer {
    fn drop(&mut self) {
        for v in self.guacd_params.values_mut() {
            zeroize::Zeroize::zeroize(v);
        }
    }
}

impl std::fmt::Debug for LaunchOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchOffer")
            .field("conversation_type", &self.conversation_type)
            .field("data", &self.data)
            .field("credential", &self.credential)
            .field(
                "two_factor_value",
                &self.two_factor_value.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The `inputs` of a `kind:"start"` action (the offer).
#[derive(Clone, PartialEq, Eq)]
pub struct StartInputs {
    pub record_uid: String,
    /// Std base64 of the 16-byte HKDF salt.
    pub base64_nonce: String,
    pub conversation_type: String,
    /// `TunnelKey::encrypt` of [`OfferData::to_json`].
    pub data: String,
    pub trickle_ice: bool,
    pub credential: Option<CredentialType>,
    /// Secret.
    pub two_factor_value: Option<String>,
}

impl StartInputs {
    /// The `inputs` object (its key order is irrelevant: the action is serialized with sorted keys).
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m = base_inputs(
            &self.record_uid,
            "start",
            &self.base64_nonce,
            &self.conversation_type,
            &self.data,
            self.trickle_ice,
        );
        if let Some(kind) = &self.credential {
            m.insert("credentialType".into(), kind.as_str().into());
            match kind {
                CredentialType::Linked {
                    user_record_uid: Some(uid),
                } => {
                    m.insert("userRecordUid".into(), uid.clone().into());
                }
                CredentialType::UserSupplied => {
                    m.insert("allowSupplyUser".into(), true.into());
                }
                CredentialType::Linked {
                    user_record_uid: None,
                }
                | CredentialType::Ephemeral => {}
            }
        }
        if let Some(t) = &self.two_factor_value {
            m.insert("twoFactorValue".into(), t.clone().into());
        }
        m
    }
}

impl std::fmt::Debug for StartInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartInputs")
            .field("record_uid", &self.record_uid)
            .field("conversation_type", &self.conversation_type)
            .field("trickle_ice", &self.trickle_ice)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// The `inputs` of a `kind:"icecandidate"` action. `pam launch` passes `conversation_type = "tunnel"`
/// whatever the protocol (Commander quirk §10.5, kept: the gateway only accepts what Commander sends)
/// and `data` = `TunnelKey::encrypt` of `{"candidates": [...]}`.
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

/// The inputs of an ICE-restart action: `ice_restart_offer` (we restart) or `ice_restart_answer` (we answer
/// the gateway's restart); `data` is the sealed `{"type":…,"sdp":…,"ice_restart":true}` (Commander's
/// `_send_restart_offer`, tunnel_helpers.py 2404-2473).
pub fn ice_restart_inputs(
    record_uid: &str,
    kind: RestartKind,
    base64_nonce: &str,
    conversation_type: &str,
    data: &str,
) -> Map<String, Value> {
    let kind = match kind {
        RestartKind::Offer => "ice_restart_offer",
        RestartKind::Answer => "ice_restart_answer",
    };
    base_inputs(
        record_uid,
        kind,
        base64_nonce,
        conversation_type,
        data,
        true,
    )
}

/// Which side of an ICE restart an action carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartKind {
    Offer,
    Answer,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The builder this module replaced (cli/src/ticket.rs `terminal_offer_data` + the client's
    /// `offer` insertion), kept verbatim as the reference for the wire bytes.
    #[allow(clippy::too_many_arguments)]
    fn previous_terminal_offer_json(
        protocol: &str,
        target: Option<(&str, u16)>,
        ticket_params: &Map<String, Value>,
        cols: u16,
        rows: u16,
        disable_copy: bool,
        disable_paste: bool,
        offer_b64: &str,
    ) -> Vec<u8> {
        let (w, h, dpi) = (
            u32::from(cols) * 10 + 2 * 7 + 16,
            u32::from(rows) * 20 + 2 * 7,
            96,
        );
        let mut params = Map::new();
        params.insert("enable-pipe".into(), Value::String("true".into()));
        for (k, v) in ticket_params {
            if k != "disable-copy" && k != "disable-paste" {
                params.insert(k.clone(), v.clone());
            }
        }
        params
            .entry("protocol")
            .or_insert_with(|| Value::String(protocol.into()));
        if let Some((host, port)) = target {
            params
                .entry("hostname")
                .or_insert_with(|| Value::String(host.into()));
            params
                .entry("port")
                .or_insert_with(|| Value::String(port.to_string()));
        }
        params.insert("width".into(), Value::String(w.to_string()));
        params.insert("height".into(), Value::String(h.to_string()));
        params.insert("dpi".into(), Value::String(dpi.to_string()));
        if disable_paste {
            params.insert("disable-paste".into(), Value::String("true".into()));
        }
        if disable_copy {
            params.insert("disable-copy".into(), Value::String("true".into()));
        }
        let clipboard = json!({"disableCopy": disable_copy, "disablePaste": disable_paste});
        let mut data = Map::new();
        data.insert("audio".into(), json!(["audio/L8", "audio/L16"]));
        data.insert("video".into(), json!([]));
        data.insert("size".into(), json!([w, h, dpi]));
        data.insert(
            "image".into(),
            json!(["image/jpeg", "image/png", "image/webp"]),
        );
        if let Some((host, port)) = target {
            data.insert("host".into(), json!({"hostName": host, "port": port}));
        }
        data.insert("guacd_params".into(), Value::Object(params));
        data.insert("terminalSettings".into(), clipboard.clone());
        data.insert("clipboard".into(), clipboard);
        data.insert("offer".into(), Value::String(offer_b64.into()));
        serde_json::to_vec(&Value::Object(data)).unwrap()
    }

    #[test]
    fn terminal_offer_bytes_match_the_previous_builder() {
        let mut ticket = Map::new();
        for (k, v) in [
            ("username", "alice"),
            ("password", "p\u{e4}ss \"quoted\""),
            ("disable-copy", "true"),
            ("font-size", "12"),
            ("port", "2222"),
            ("enable-pipe", "false"),
        ] {
            ticket.insert(k.into(), v.into());
        }
        let typed: BTreeMap<String, String> = ticket
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        for (target, copy, paste) in [(Some(("10.0.0.5", 22)), false, true), (None, true, false)] {
            let host = target.map(|(h, p)| TargetHost {
                host_name: h.into(),
                port: p,
            });
            let offer = OfferData {
                host: host.clone(),
                terminal: Some(TerminalOffer::new(
                    "ssh",
                    host.as_ref(),
                    &typed,
                    80,
                    24,
                    copy,
                    paste,
                )),
            };
            assert_eq!(
                String::from_utf8(offer.to_json("dj0w")).unwrap(),
                String::from_utf8(previous_terminal_offer_json(
                    "ssh", target, &ticket, 80, 24, copy, paste, "dj0w"
                ))
                .unwrap()
            );
        }
    }

    #[test]
    fn tunnel_offer_bytes_match_the_previous_builder() {
        let host = TargetHost {
            host_name: "10.9.9.9".into(),
            port: 22,
        };
        let mut old = Map::new();
        old.insert("host".into(), json!({"hostName": "10.9.9.9", "port": 22}));
        old.insert("offer".into(), json!("b2ZmZXI="));
        assert_eq!(
            LaunchOffer::tunnel(Some(host)).data.to_json("b2ZmZXI="),
            serde_json::to_vec(&Value::Object(old)).unwrap()
        );
        assert_eq!(
            LaunchOffer::tunnel(None).data.to_json("eA=="),
            br#"{"offer":"eA=="}"#.to_vec()
        );
    }

    #[test]
    fn terminal_offer_keys() {
        let mut params = BTreeMap::new();
        params.insert("password".to_string(), "TopSecretPw".to_string());
        params.insert("disable-copy".to_string(), "true".to_string());
        let t = TerminalOffer::new(
            "ssh",
            Some(&TargetHost {
                host_name: "10.0.0.5".into(),
                port: 22,
            }),
            &params,
            80,
            24,
            false,
            true,
        );
        assert_eq!(
            t.size,
            PixelSize {
                width: 830,
                height: 494,
                dpi: 96
            }
        );
        assert_eq!(t.guacd_params["enable-pipe"], "true");
        assert_eq!(t.guacd_params["hostname"], "10.0.0.5");
        assert_eq!(t.guacd_params["port"], "22");
        assert_eq!(t.guacd_params["protocol"], "ssh");
        assert_eq!(t.guacd_params["width"], "830");
        assert!(
            !t.guacd_params.contains_key("disable-copy"),
            "the record says yes, the policy no"
        );
        assert_eq!(
            t.guacd_params["disable-paste"], "true",
            "from the clipboard policy"
        );
        assert!(!format!("{t:?}").contains("TopSecretPw"));
    }

    #[test]
    fn start_inputs_match_the_previous_builder() {
        let base = StartInputs {
            record_uid: "r".into(),
            base64_nonce: "n".into(),
            conversation_type: "ssh".into(),
            data: "d".into(),
            trickle_ice: true,
            credential: Some(CredentialType::Linked {
                user_record_uid: Some("u".into()),
            }),
            two_factor_value: Some("123456".into()),
        };
        let m = base.to_map();
        assert_eq!(
            Value::Object(m),
            json!({"recordUid": "r", "kind": "start", "base64Nonce": "n", "conversationType": "ssh",
                   "data": "d", "trickleICE": true, "credentialType": "linked", "userRecordUid": "u",
                   "twoFactorValue": "123456"})
        );
        let m = StartInputs {
            credential: Some(CredentialType::UserSupplied),
            two_factor_value: None,
            ..base.clone()
        }
        .to_map();
        assert_eq!(m.get("allowSupplyUser"), Some(&Value::Bool(true)));
        assert_eq!(m.get("credentialType"), Some(&Value::from("userSupplied")));
        assert!(!m.contains_key("twoFactorValue"));
        for credential in [
            CredentialType::Ephemeral,
            CredentialType::Linked {
                user_record_uid: None,
            },
        ] {
            let m = StartInputs {
                credential: Some(credential),
                ..base.clone()
            }
            .to_map();
            assert!(!m.contains_key("userRecordUid"));
        }
        let m = StartInputs {
            credential: None,
            two_factor_value: None,
            ..base.clone()
        }
        .to_map();
        assert_eq!(m.len(), 6);
        assert!(!format!("{base:?}").contains("123456"));
        let c = icecandidate_inputs("r", "n", "tunnel", "d", true);
        assert_eq!(c.get("kind"), Some(&Value::from("icecandidate")));
        assert_eq!(c.get("conversationType"), Some(&Value::from("tunnel")));
        assert_eq!(c.len(), 6);
    }
}
