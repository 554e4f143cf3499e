//! The demo ticket: everything a client needs to launch against a running emulator, in the launch-ticket
//! format the CLI reads (`cli/TICKET.md`, version 1).
//!
//! It holds the emulator's session token and traffic seed. They only open this emulator, but they are
//! still treated like secrets: `Debug` redacts them and nothing logs them.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

/// What a client needs to talk to one running emulator.
#[derive(Clone, PartialEq, Eq)]
pub struct DemoTicket {
    /// `http://127.0.0.1:PORT` or `https://localhost:PORT` (with TLS, the name the certificate carries).
    pub router_url: String,
    pub server_key_id: u32,
    /// The emulator's P-256 server public key: URL-safe base64 (no padding) of the 65-byte point.
    pub server_public_key_b64url: String,
    /// The session token the router accepts, URL-safe base64 (no padding). Secret.
    pub session_token_b64url: String,
    pub gateway_uid: String,
    pub record_uid: String,
    /// The record's `trafficEncryptionSeed`, standard base64. Secret.
    pub traffic_seed_b64: String,
    /// The protocol the record claims (`ssh` for terminal mode).
    pub protocol: String,
    /// With TLS: the PEM of the CA that signed the router's certificate.
    pub ca_pem: Option<String>,
    /// The STUN/TURN host the client gathers from (`relay_host`).
    pub relay_host: Option<String>,
}

impl std::fmt::Debug for DemoTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoTicket")
            .field("router_url", &self.router_url)
            .field("server_key_id", &self.server_key_id)
            .field("server_public_key_b64url", &self.server_public_key_b64url)
            .field("session_token_b64url", &"<redacted>")
            .field("gateway_uid", &self.gateway_uid)
            .field("record_uid", &self.record_uid)
            .field("traffic_seed_b64", &"<redacted>")
            .field("protocol", &self.protocol)
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("<{} bytes>", p.len())),
            )
            .finish()
    }
}

impl DemoTicket {
    /// A client configuration for a **tunnel** launch against this emulator (`conversationType` tunnel, no
    /// terminal), with `profile` and `trickle_ice` as given: what tests and benchmarks use to drive the real
    /// client without going through the CLI's ticket parser. `unix_ms_at_start` only stamps tube frames.
    pub fn tunnel_client_config(
        &self,
        profile: pam_lite_core::profile::Profile,
        trickle_ice: bool,
        unix_ms_at_start: u64,
    ) -> Result<pam_lite_core::client::ClientConfig, String> {
        let server_key = pam_lite_core::router::envelope::ServerPublicKey::from_sec1(
            self.server_key_id,
            &self.server_public_key(),
        )
        .map_err(|e| format!("the emulator's server key: {e}"))?;
        Ok(pam_lite_core::client::ClientConfig {
            router_url: self.router_url.clone(),
            session_token: self.session_token(),
            server_key,
            gateway_uid: self.gateway_uid.clone(),
            record_uid: self.record_uid.clone(),
            traffic_seed: self.traffic_seed(),
            offer: pam_lite_core::offer::LaunchOffer::tunnel(None),
            session: pam_lite_core::client::Session::Tunnel,
            trickle_ice,
            profile,
            relay: Default::default(),
            unix_ms_at_start,
            dtls: pam_lite_driver_kit::dtls::identity(),
        })
    }

    /// The session token bytes.
    pub fn session_token(&self) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(&self.session_token_b64url)
            .unwrap_or_default()
    }

    /// The traffic seed bytes.
    pub fn traffic_seed(&self) -> Vec<u8> {
        STANDARD.decode(&self.traffic_seed_b64).unwrap_or_default()
    }

    /// The 65-byte server public key point.
    pub fn server_public_key(&self) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(&self.server_public_key_b64url)
            .unwrap_or_default()
    }

    /// The ticket as launch-ticket JSON (version 1, `cli/TICKET.md`). Contains secrets.
    pub fn to_json(&self) -> Value {
        let mut t = json!({
            "version": 1,
            "router_url": self.router_url,
            "verify_tls": true,
            "auth": {
                "session_token_b64url": self.session_token_b64url,
                "server_key_id": self.server_key_id,
                "server_public_key_b64url": self.server_public_key_b64url,
                "expires_hint_unix": 0,
            },
            "gateway_uid": self.gateway_uid,
            "record_uid": self.record_uid,
            "traffic_encryption_seed_b64": self.traffic_seed_b64,
            "protocol": self.protocol,
        });
        if let (Some(pem), Some(obj)) = (&self.ca_pem, t.as_object_mut()) {
            obj.insert("tls_ca_pem".into(), Value::String(pem.clone()));
        }
        if let (Some(host), Some(obj)) = (&self.relay_host, t.as_object_mut()) {
            obj.insert("relay_host".into(), Value::String(host.clone()));
        }
        t
    }

    /// [`DemoTicket::to_json`] pretty-printed.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(&self.to_json()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> DemoTicket {
        DemoTicket {
            router_url: "http://127.0.0.1:1".into(),
            server_key_id: 7,
            server_public_key_b64url: URL_SAFE_NO_PAD.encode([4u8; 65]),
            session_token_b64url: URL_SAFE_NO_PAD.encode(b"session-secret"),
            gateway_uid: "gw".into(),
            record_uid: "rec".into(),
            traffic_seed_b64: STANDARD.encode([9u8; 32]),
            protocol: "ssh".into(),
            ca_pem: None,
            relay_host: None,
        }
    }

    #[test]
    fn json_has_the_ticket_v1_shape() {
        let mut t = ticket();
        let j = t.to_json();
        assert_eq!(j["version"], 1);
        assert_eq!(j["auth"]["server_key_id"], 7);
        assert_eq!(
            j["auth"]["session_token_b64url"],
            t.session_token_b64url.as_str()
        );
        assert_eq!(
            j["traffic_encryption_seed_b64"],
            t.traffic_seed_b64.as_str()
        );
        assert!(j.get("tls_ca_pem").is_none());
        t.ca_pem = Some("PEM".into());
        assert_eq!(t.to_json()["tls_ca_pem"], "PEM");
        assert_eq!(t.session_token(), b"session-secret");
        assert_eq!(t.traffic_seed(), vec![9u8; 32]);
        assert_eq!(t.server_public_key().len(), 65);
    }

    #[test]
    fn debug_redacts_secrets() {
        let text = format!("{:?}", ticket());
        assert!(!text.contains(&ticket().session_token_b64url));
        assert!(!text.contains(&ticket().traffic_seed_b64));
        assert!(text.contains("redacted"));
    }
}
