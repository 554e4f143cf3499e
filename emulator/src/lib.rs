//! # pam-lite-emulator
//!
//! A local Keeper router + gateway on real sockets on 127.0.0.1, so `pam-lite launch --demo` works with no
//! Keeper account, and so the drivers can be tested end to end against real HTTP, WebSocket and UDP.
//!
//! ```text
//!  client ──HTTP/WS (127.0.0.1:port, optional TLS)──► front ──► hub ──► RouterServer (sans-IO, core)
//!                                                                 │ ▲
//!                                              controller messages│ │replies
//!                                                                 ▼ │
//!  client ◄══════════ UDP (ICE/DTLS/SCTP, impaired) ═══════► gateway machine ──► Gateway (sans-IO, core)
//!                                                                 │
//!                                                          TCP target / PTY
//! ```
//!
//! The protocol lives in the core (`pam_lite_core::router::server::RouterServer`,
//! `pam_lite_core::gateway::Gateway`); this crate adds the sockets, the threads, the network's timing and
//! failures ([`EmulatorConfig`]), and a [`DemoTicket`] that tells a client how to reach it.
//!
//! ```no_run
//! let emu = pam_lite_emulator::Emulator::start(Default::default())?;
//! println!("{}", emu.ticket().to_json_string());
//! # Ok::<(), pam_lite_emulator::EmulatorError>(())
//! ```

pub mod config;
pub mod external;
pub mod front;
pub mod gateway_host;
pub mod hub;
pub mod impair;
mod router;
pub mod target;
pub mod ticket;
pub mod tls;
pub mod ws_faults;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use pam_lite_core::gateway::{Gateway, GatewayConfig, TargetKind};
use pam_lite_core::router::envelope::ServerSecretKey;
use pam_lite_core::router::server::{Faults, RouterConfig, RouterServer};
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, RngCore, SeedableRng};

pub use config::EmulatorConfig;
pub use front::HttpFault;
pub use impair::UdpImpairment;
pub use target::TargetConfig;
pub use ticket::DemoTicket;

/// The key id the emulator publishes its server key under (Keeper's default EC key id).
pub const SERVER_KEY_ID: u32 = 7;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("invalid emulator configuration: {0}")]
    Config(String),
    #[error("could not set up TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("could not start the emulated router on {addr}: {source}")]
    Router {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not start the emulated gateway: {0}")]
    Gateway(std::io::Error),
}

/// The secrets and names of one emulator instance, all drawn from one seed.
struct Identity {
    secret: ServerSecretKey,
    session_token: Vec<u8>,
    gateway_uid: String,
    record_uid: String,
    traffic_seed: Vec<u8>,
    router_rng_seed: [u8; 32],
    gateway_rng_seed: [u8; 32],
    impairment_seed: u64,
}

impl Identity {
    fn draw(seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut bytes = |n: usize| {
            let mut b = vec![0u8; n];
            rng.fill_bytes(&mut b);
            b
        };
        let session_token = bytes(32);
        let gateway_uid = URL_SAFE_NO_PAD.encode(bytes(16));
        let record_uid = URL_SAFE_NO_PAD.encode(bytes(16));
        let traffic_seed = bytes(32);
        let mut router_rng_seed = [0u8; 32];
        router_rng_seed.copy_from_slice(&bytes(32));
        let mut gateway_rng_seed = [0u8; 32];
        gateway_rng_seed.copy_from_slice(&bytes(32));
        let mut imp = [0u8; 8];
        imp.copy_from_slice(&bytes(8));
        let secret = ServerSecretKey::random(&mut rng);
        Identity {
            secret,
            session_token,
            gateway_uid,
            record_uid,
            traffic_seed,
            router_rng_seed,
            gateway_rng_seed,
            impairment_seed: u64::from_le_bytes(imp),
        }
    }
}

/// A running emulator: router on [`Emulator::router_addr`], gateway on [`Emulator::gateway_udp_addr`].
/// Dropping it stops every thread it started.
pub struct Emulator {
    ticket: DemoTicket,
    front: front::Front,
    gateway: gateway_host::GatewayHost,
    /// An external gateway process serving the router instead of `gateway` (which then sees no traffic).
    _external: Option<external::ExternalGateway>,
    router_addr: SocketAddr,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("router_addr", &self.router_addr)
            .field("gateway_udp_addr", &self.gateway.udp_addr())
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Start the router and the gateway. Returns once both listen.
    pub fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        config.validate().map_err(EmulatorError::Config)?;
        let seed = config.seed.unwrap_or_else(|| {
            let mut s = [0u8; 32];
            OsRng.fill_bytes(&mut s);
            s
        });
        let id = Identity::draw(seed);
        let public = id
            .secret
            .public_key(SERVER_KEY_ID)
            .map_err(|e| EmulatorError::Config(e.to_string()))?;
        let tls = if config.tls {
            Some(tls::TlsMaterial::generate()?)
        } else {
            None
        };

        let router = RouterServer::new(
            RouterConfig {
                secret: id.secret.clone(),
                gateways: vec![id.gateway_uid.clone()],
                faults: Faults {
                    registration_lag: config.registration_lag,
                    http_status_failures: config.fail_http.clone(),
                    rrc_failures: config.fail_rrc.clone(),
                    gateway_offline: config.gateway_offline,
                },
                relay_credentials: config.relay_credentials.clone(),
            },
            ChaCha20Rng::from_seed(id.router_rng_seed),
        );
        let hub = hub::Hub::new(Box::new(router));

        let target_kind = match config.target {
            TargetConfig::Tunnel { .. } => TargetKind::Tunnel,
            TargetConfig::Terminal { .. } => TargetKind::Terminal,
        };
        let gateway_config = GatewayConfig {
            seeds: HashMap::from([(id.record_uid.clone(), id.traffic_seed.clone())]),
            default_seed: Some(id.traffic_seed.clone()),
            target: target_kind,
            answer_delay: config.answer_delay,
            version: config.gateway_version.clone(),
            warmup_pings: config.warmup_pings,
            relay: config.gateway_relay.clone(),
            answer_bad_fingerprint: config.answer_bad_fingerprint,
            unix_ms_at_start: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or_default(),
            ..GatewayConfig::new(pam_lite_driver_kit::dtls::identity())
        };
        let host_config = gateway_host::HostConfig {
            udp_bind: config.gateway_udp,
            target: config.target.clone(),
            router_rtt: config.gateway_rtt,
            udp_inbound: config.udp_to_gateway,
            udp_outbound: config.udp_from_gateway,
            impairment_seed: id.impairment_seed,
            restart_after: config.gateway_restart_after,
            blackhole_after: config.udp_blackhole_after,
        };
        let gateway_seed = id.gateway_rng_seed;
        let replies_hub = hub.clone();
        let external = match &config.external_gateway {
            Some(argv) => {
                let hub = hub.clone();
                Some(
                    external::ExternalGateway::start(
                        argv,
                        gateway_config.seeds.clone(),
                        gateway_config.default_seed.clone(),
                        std::sync::Arc::new(move |reply_to, payload: String| {
                            hub.gateway_reply(reply_to, &payload)
                        }),
                    )
                    .map_err(EmulatorError::Gateway)?,
                )
            }
            None => None,
        };
        let gateway = gateway_host::GatewayHost::start(
            move |now, generation: u32| {
                // A restarted gateway draws new keys and certificates, as a new process would.
                let mut seed = gateway_seed;
                for (b, g) in seed.iter_mut().zip(generation.to_le_bytes()) {
                    *b ^= g;
                }
                Gateway::new(gateway_config.clone(), seed, now)
            },
            host_config,
            Box::new(move |reply_to, payload| replies_hub.gateway_reply(reply_to, &payload)),
        )
        .map_err(EmulatorError::Gateway)?;
        hub.set_gateway(match &external {
            Some(e) => e.inbox(),
            None => gateway.inbox(),
        });

        let front_config = front::FrontConfig {
            rtt: config.router_rtt,
            fresh_connection_cost: config.fresh_connection_cost,
            ws_auth_delay: config.ws_auth_delay,
            ws_drop_after: config.ws_drop_after,
            ws_wrong_conversation: config.ws_wrong_conversation,
            ws_duplicate: config.ws_duplicate,
            ws_flood: config.ws_flood,
            ws_oversize: config.ws_oversize,
            http_oversize: config.http_oversize,
            http_faults: config.http_faults.clone(),
        };
        let server_config = tls.as_ref().map(|t| t.server_config.clone());
        let front = front::Front::start(config.listen, server_config, front_config, hub).map_err(
            |source| EmulatorError::Router {
                addr: config.listen,
                source,
            },
        )?;
        let router_addr = front.local_addr();
        let scheme = if tls.is_some() { "https" } else { "http" };

        let ticket = DemoTicket {
            router_url: format!("{scheme}://{router_addr}"),
            server_key_id: SERVER_KEY_ID,
            server_public_key_b64url: URL_SAFE_NO_PAD.encode(public.to_sec1()),
            session_token_b64url: URL_SAFE_NO_PAD.encode(&id.session_token),
            gateway_uid: id.gateway_uid.clone(),
            record_uid: id.record_uid.clone(),
            traffic_seed_b64: STANDARD.encode(&id.traffic_seed),
            protocol: config.protocol.clone(),
            ca_pem: tls.map(|t| t.ca_pem),
            relay_host: config.relay_host.clone(),
        };
        tracing::info!(
            router = %ticket.router_url,
            gateway_udp = %gateway.udp_addr(),
            gateway_uid = %ticket.gateway_uid,
            target = ?config.target,
            "emulator started"
        );
        Ok(Emulator {
            ticket,
            front,
            gateway,
            _external: external,
            router_addr,
        })
    }

    /// Everything a client needs to launch against this emulator.
    pub fn ticket(&self) -> DemoTicket {
        self.ticket.clone()
    }

    /// The router's HTTP/WebSocket address.
    pub fn router_addr(&self) -> SocketAddr {
        self.router_addr
    }

    /// The gateway's UDP address (its ICE host candidate).
    pub fn gateway_udp_addr(&self) -> SocketAddr {
        self.gateway.udp_addr()
    }

    /// Restart the emulated gateway now (every session lost; see [`gateway_host::GatewayHost::restart`]).
    pub fn restart_gateway(&self) {
        self.gateway.restart();
    }

    /// Make the client ↔ gateway UDP path drop every datagram (`true`) or carry them again (`false`).
    pub fn set_udp_blackhole(&self, on: bool) {
        self.gateway.set_blackhole(on);
    }

    /// Stop the router and the gateway and wait for their threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.front.shutdown();
        let (inbound, outbound) = self.gateway.shutdown();
        tracing::info!(?inbound, ?outbound, "emulator stopped");
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_can_move_to_another_thread() {
        fn is_send<T: Send>() {}
        is_send::<Emulator>();
        is_send::<DemoTicket>();
    }

    #[test]
    fn a_seed_fixes_the_identity_and_no_seed_does_not() {
        let a = Emulator::start(EmulatorConfig {
            seed: Some([1; 32]),
            ..Default::default()
        })
        .expect("a");
        let b = Emulator::start(EmulatorConfig {
            seed: Some([1; 32]),
            ..Default::default()
        })
        .expect("b");
        let c = Emulator::start(EmulatorConfig::default()).expect("c");
        let (ta, tb, tc) = (a.ticket(), b.ticket(), c.ticket());
        assert_eq!(ta.server_public_key_b64url, tb.server_public_key_b64url);
        assert_eq!(
            (&ta.gateway_uid, &ta.record_uid),
            (&tb.gateway_uid, &tb.record_uid)
        );
        assert_eq!(ta.traffic_seed(), tb.traffic_seed());
        assert_ne!(ta.router_url, tb.router_url, "two emulators, two ports");
        assert_ne!(ta.server_public_key_b64url, tc.server_public_key_b64url);
        assert_eq!(ta.server_key_id, SERVER_KEY_ID);
        assert_eq!(ta.server_public_key().len(), 65);
        assert_eq!(ta.gateway_uid.len(), 22);
        assert!(ta.router_url.starts_with("http://127.0.0.1:"));
        assert!(ta.ca_pem.is_none());
        a.shutdown();
    }

    #[test]
    fn invalid_config_is_refused_before_binding() {
        let bad = EmulatorConfig {
            fail_http: vec![7],
            ..Default::default()
        };
        assert!(matches!(
            Emulator::start(bad),
            Err(EmulatorError::Config(_))
        ));
    }
}
