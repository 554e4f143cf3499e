//! Everything an emulator can be asked to be: where it listens, what its gateway connects to, and how bad
//! its network and router are. The default is a perfect world: no delay, no failure, no loss.

use std::net::SocketAddr;
use std::time::Duration;

use pam_lite_core::router::proto::RouterResponseCode;

use crate::front::HttpFault;
use crate::impair::UdpImpairment;
use crate::target::TargetConfig;

/// Largest oversized message or body the emulator will fabricate (it holds it in memory itself).
pub const MAX_INJECTED: usize = 256 << 20;
/// Most flood messages or duplicates per push.
pub const MAX_FLOOD: u32 = 1_000_000;

/// The emulator's configuration. Build it with struct update syntax from [`EmulatorConfig::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatorConfig {
    /// Where the router listens (HTTP + WebSocket on one port). Port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where the gateway's UDP socket binds (its only ICE host candidate, so a specific address). Port 0
    /// picks a free one. Default `127.0.0.1:0`.
    pub gateway_udp: SocketAddr,
    /// Serve HTTPS/WSS with a certificate from a CA generated at start ([`crate::DemoTicket::ca_pem`]).
    pub tls: bool,
    /// Fix every random choice of the emulator (server key, session token, uids, traffic seed, RNGs) for
    /// reproducible tests. `None`: fresh randomness at every start.
    pub seed: Option<[u8; 32]>,
    /// The record's protocol in the ticket (`ssh` for terminal mode, anything the client accepts).
    pub protocol: String,
    /// What the gateway connects tunneled connections to.
    pub target: TargetConfig,

    // ---- client ↔ router path
    /// Client ↔ router round trip: every HTTP request and response, and every WebSocket message, waits half.
    pub router_rtt: Duration,
    /// The TCP + TLS handshakes of every new connection, charged when it is accepted (a request sent on
    /// it sooner waits; a connection opened early and used later has paid it by then).
    pub fresh_connection_cost: Duration,
    /// How long the router takes to authenticate a WebSocket upgrade.
    pub ws_auth_delay: Duration,
    /// A streaming offer sent less than this after its WebSocket opened gets `RRC_BAD_STATE`.
    pub registration_lag: Duration,
    /// The next `send_controller_message` calls answer these HTTP statuses (502/503/504: a load balancer
    /// in front of a cold router), one per call, in order.
    pub fail_http: Vec<u16>,
    /// The next `send_controller_message` calls (after `fail_http`) answer these router codes
    /// (`RRC_TIMEOUT`, `RRC_CONTROLLER_DOWN`, `RRC_BAD_STATE`...), one per call, in order.
    pub fail_rrc: Vec<RouterResponseCode>,
    /// Any endpoint: scripted HTTP failures by path prefix, before the router sees the request.
    pub http_faults: Vec<HttpFault>,
    /// The gateway is missing from `get_controllers` and messages to it get `RRC_CONTROLLER_DOWN`.
    pub gateway_offline: bool,
    /// Drop every router WebSocket this long after it opened (abruptly, no close frame).
    pub ws_drop_after: Option<Duration>,
    /// Every WebSocket push names another conversation than the one it answers (a router that
    /// misroutes): a client must ignore it.
    pub ws_wrong_conversation: bool,
    /// Every WebSocket push is delivered this many extra times (duplicate answers and candidates).
    pub ws_duplicate: u32,
    /// Push this many unrelated messages (other conversations) on every WebSocket as soon as it opens.
    pub ws_flood: u32,
    /// Push one text message of this many bytes on every WebSocket as soon as it opens.
    pub ws_oversize: Option<usize>,
    /// Every successful router HTTP response (`get_controllers`, `send_controller_message`, ...) carries
    /// this many bytes of padding instead of its body.
    pub http_oversize: Option<usize>,

    // ---- router ↔ gateway and the gateway itself
    /// Router ↔ gateway round trip: each controller message and reply waits half.
    pub gateway_rtt: Duration,
    /// How long the gateway works before answering an offer (DAG lookups, guacd start...).
    pub answer_delay: Duration,
    /// The gateway version in the answer's `a=keeper-webrtc:` line.
    pub gateway_version: String,
    /// Send Keeper 2.2.9's three warm-up Pings when the data channel opens.
    pub warmup_pings: bool,
    /// The gateway's answer announces a DTLS fingerprint that is not its certificate's.
    pub answer_bad_fingerprint: bool,
    /// The gateway restarts (every session lost, same address and identity) this long after the first
    /// datagram from a client. [`crate::Emulator::restart_gateway`] does it on demand.
    pub gateway_restart_after: Option<Duration>,

    // ---- relays (STUN/TURN)
    /// The ticket's `relay_host` (`host` or `host:port`): where the client gathers from.
    pub relay_host: Option<String>,
    /// What the router's `relay_access_creds` answers (a real TURN server's credentials).
    pub relay_credentials: Option<pam_lite_core::relay::TurnCredentials>,
    /// The emulated gateway's own STUN/TURN servers and policy (credentials inside).
    pub gateway_relay: pam_lite_core::relay::RelayPlan,
    /// Serve the gateway with an external process instead of this crate's gateway machine: its program
    /// and arguments, speaking `tests/interop/keeper_peer.py --role gateway`'s JSON lines (Keeper's own
    /// tube, for interop; see [`crate::external`]).
    pub external_gateway: Option<Vec<String>>,

    // ---- client ↔ gateway UDP path (user-space impairment)
    /// Datagrams arriving at the gateway.
    pub udp_to_gateway: UdpImpairment,
    /// Datagrams the gateway sends.
    pub udp_from_gateway: UdpImpairment,
    /// The UDP path goes dark (every datagram dropped, both ways) this long after the first datagram from
    /// a client. [`crate::Emulator::set_udp_blackhole`] does it on demand.
    pub udp_blackhole_after: Option<Duration>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            gateway_udp: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            seed: None,
            protocol: "ssh".into(),
            target: TargetConfig::default(),
            router_rtt: Duration::ZERO,
            fresh_connection_cost: Duration::ZERO,
            ws_auth_delay: Duration::ZERO,
            registration_lag: Duration::ZERO,
            fail_http: Vec::new(),
            fail_rrc: Vec::new(),
            http_faults: Vec::new(),
            gateway_offline: false,
            ws_drop_after: None,
            ws_wrong_conversation: false,
            ws_duplicate: 0,
            ws_flood: 0,
            ws_oversize: None,
            http_oversize: None,
            gateway_rtt: Duration::ZERO,
            answer_delay: Duration::ZERO,
            gateway_version: "2.2.9".into(),
            warmup_pings: true,
            relay_host: None,
            relay_credentials: None,
            gateway_relay: pam_lite_core::relay::RelayPlan::default(),
            external_gateway: None,
            answer_bad_fingerprint: false,
            gateway_restart_after: None,
            udp_to_gateway: UdpImpairment::default(),
            udp_from_gateway: UdpImpairment::default(),
            udp_blackhole_after: None,
        }
    }
}

impl EmulatorConfig {
    /// Apply the same impairment to both directions of the UDP path.
    pub fn with_udp(mut self, impairment: UdpImpairment) -> Self {
        self.udp_to_gateway = impairment;
        self.udp_from_gateway = impairment;
        self
    }

    /// Check what a command line or file may have got wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.udp_to_gateway.validate()?;
        self.udp_from_gateway.validate()?;
        if let Some(status) = self.fail_http.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(format!("fail_http: {status} is not an HTTP status"));
        }
        if let Some(f) = self
            .http_faults
            .iter()
            .find(|f| !(100..=599).contains(&f.status))
        {
            return Err(format!("http_faults: {} is not an HTTP status", f.status));
        }
        if let Some(n) = self.ws_oversize.filter(|n| *n > MAX_INJECTED) {
            return Err(format!(
                "ws_oversize: {n} bytes is more than {MAX_INJECTED}"
            ));
        }
        if let Some(n) = self.http_oversize.filter(|n| *n > MAX_INJECTED) {
            return Err(format!(
                "http_oversize: {n} bytes is more than {MAX_INJECTED}"
            ));
        }
        if self.ws_flood > MAX_FLOOD || self.ws_duplicate > MAX_FLOOD {
            return Err(format!("ws_flood / ws_duplicate: at most {MAX_FLOOD}"));
        }
        if self.fail_rrc.contains(&RouterResponseCode::RrcOk) {
            return Err("fail_rrc: RRC_OK is not a failure".into());
        }
        if self.gateway_version.trim().is_empty()
            || self.gateway_version.contains(char::is_whitespace)
        {
            return Err("gateway_version must be one word (e.g. 2.2.9)".into());
        }
        if self.gateway_udp.ip().is_unspecified() {
            return Err(format!(
                "gateway_udp {}: give a specific address (it is the gateway's host candidate)",
                self.gateway_udp
            ));
        }
        if !self.listen.ip().is_loopback() {
            tracing::warn!(listen = %self.listen, "the emulator listens beyond loopback");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_udp_must_be_a_specific_address() {
        let c = EmulatorConfig {
            gateway_udp: "0.0.0.0:0".parse().unwrap(),
            ..EmulatorConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("gateway_udp"));
        let c = EmulatorConfig {
            gateway_udp: "198.19.2.2:0".parse().unwrap(),
            ..EmulatorConfig::default()
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn default_is_a_perfect_world() {
        let c = EmulatorConfig::default();
        assert!(c.validate().is_ok());
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.listen.port(), 0);
        assert!(c.router_rtt.is_zero() && c.answer_delay.is_zero() && c.registration_lag.is_zero());
        assert!(c.udp_to_gateway.is_none() && c.udp_from_gateway.is_none());
        assert!(c.fail_http.is_empty() && c.fail_rrc.is_empty() && !c.gateway_offline);
    }

    #[test]
    fn bad_values_are_refused() {
        let c = EmulatorConfig {
            fail_http: vec![42],
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("42"));
        let c = EmulatorConfig {
            fail_rrc: vec![RouterResponseCode::RrcOk],
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = EmulatorConfig::default().with_udp(UdpImpairment {
            loss: 2.0,
            ..Default::default()
        });
        assert!(c.validate().is_err());
        let c = EmulatorConfig {
            ws_oversize: Some(MAX_INJECTED + 1),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("ws_oversize"));
        let c = EmulatorConfig {
            ws_flood: MAX_FLOOD + 1,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = EmulatorConfig {
            gateway_version: "2 2".into(),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
