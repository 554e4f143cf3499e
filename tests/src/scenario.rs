//! Fixtures: a client, an emulated router and a gateway that agree on keys, uids and the record seed, all
//! derived from one `u64` seed so a failing case replays exactly.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use pam_lite_core::client::{Client, ClientConfig, Session, TerminalSettings};
use pam_lite_core::gateway::{Gateway, GatewayConfig, TargetKind};
use pam_lite_core::offer::{LaunchOffer, TargetHost};
use pam_lite_core::profile::Profile;
use pam_lite_core::router::envelope::ServerSecretKey;
use pam_lite_core::router::server::{Faults, RouterConfig, RouterServer};
use pam_lite_core::rtc::DtlsIdentity;
use pam_lite_core::{CandidateKind, Input};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::sim::turn::{TURN_ADDR, TURN_PASSWORD, TURN_USER};
use crate::sim::{NetConfig, Sim};
use pam_lite_core::relay::{IcePolicy, RelayPlan, TurnCredentials, TurnEndpoint, TurnTransport};

/// What kind of session the simulated launch opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `pam tunnel start`-like: the test opens connections; the gateway's target echoes.
    Tunnel,
    /// `pam launch`: a Guacamole terminal on connection 1.
    Terminal,
}

/// Both nodes gather from the simulation's TURN/STUN server ([`crate::sim::turn`]), as a launcher and a
/// gateway both use Keeper's krelay: the server is their STUN server and, with credentials, their TURN
/// server (over UDP, falling back to TCP when UDP is silent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySetup {
    /// The client's ICE policy (`--relay-only` is [`IcePolicy::RelayOnly`]).
    pub client_policy: IcePolicy,
    /// Whether the client's TURN credentials are the server's (the gateway's always are).
    pub client_credentials_ok: bool,
    /// The client asks the router (`relay_access_creds`) instead of having them in its ticket.
    pub credentials_from_router: bool,
}

impl RelaySetup {
    pub fn plan(policy: IcePolicy, password: &str) -> RelayPlan {
        RelayPlan {
            stun: vec![TURN_ADDR],
            turn: vec![TurnEndpoint {
                addr: TURN_ADDR,
                name: "krelay.sim.invalid".into(),
                transport: TurnTransport::Udp,
            }],
            credentials: Some(TurnCredentials {
                username: TURN_USER.into(),
                password: password.into(),
            }),
            policy,
            ..RelayPlan::default()
        }
    }
}

impl RelaySetup {
    /// The client's plan: the server, its policy, and its credentials (or none: ask the router).
    pub fn client_plan(&self) -> RelayPlan {
        let mut plan = Self::plan(self.client_policy, self.client_password());
        if self.credentials_from_router {
            plan.credentials = None;
        }
        plan
    }

    /// What the client holds (in its ticket, or from the router's `relay_access_creds`).
    fn client_password(&self) -> &'static str {
        if self.client_credentials_ok {
            TURN_PASSWORD
        } else {
            "wrong-password"
        }
    }
}

impl Default for RelaySetup {
    fn default() -> Self {
        RelaySetup {
            client_policy: IcePolicy::All,
            client_credentials_ok: true,
            credentials_from_router: false,
        }
    }
}

/// Everything that varies between simulated launches.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub profile: Profile,
    pub trickle: bool,
    pub mode: Mode,
    pub net: NetConfig,
    pub faults: Faults,
    pub answer_delay: Duration,
    /// Extra client host candidates on other (unreachable) interfaces, like a multi-homed host: they
    /// make serial vs batched candidate delivery visible.
    pub extra_candidates: u16,
    /// STUN/TURN on both nodes (`None`: host candidates only).
    pub relay: Option<RelaySetup>,
}

impl Scenario {
    /// The reference scenario of the snapshots: trickle, tunnel mode, router RTT 85 ms, peer RTT 40 ms,
    /// gateway answer delay 500 ms, no faults.
    pub fn new(profile: Profile) -> Self {
        Scenario {
            seed: 1,
            profile,
            trickle: true,
            mode: Mode::Tunnel,
            net: NetConfig::default(),
            faults: Faults::default(),
            answer_delay: Duration::from_millis(500),
            extra_candidates: 2,
            relay: None,
        }
    }

    /// Build the three nodes and the network, starting at `start`.
    pub fn build(&self, start: Instant) -> Sim {
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        let mut bytes = |n: usize| {
            let mut b = vec![0u8; n];
            rng.fill_bytes(&mut b);
            b
        };
        let gateway_uid = B64URL.encode(bytes(16));
        let record_uid = B64URL.encode(bytes(16));
        let traffic_seed = bytes(32);
        let session_token = bytes(32);
        let mut seeds = [[0u8; 32]; 4];
        for s in &mut seeds {
            s.copy_from_slice(&bytes(32));
        }
        let secret = ServerSecretKey::random(&mut ChaCha20Rng::from_seed(seeds[0]));
        let server_key = secret
            .public_key(7)
            .unwrap_or_else(|e| panic!("fixture server key: {e}"));

        let router = RouterServer::new(
            RouterConfig {
                secret,
                gateways: vec![gateway_uid.clone()],
                faults: self.faults.clone(),
                relay_credentials: self.relay.as_ref().map(|r| TurnCredentials {
                    username: TURN_USER.into(),
                    password: r.client_password().into(),
                }),
            },
            ChaCha20Rng::from_seed(seeds[1]),
        );
        let gateway = Gateway::new(
            GatewayConfig {
                default_seed: Some(traffic_seed.clone()),
                target: match self.mode {
                    Mode::Tunnel => TargetKind::Tunnel,
                    Mode::Terminal => TargetKind::Terminal,
                },
                answer_delay: self.answer_delay,
                unix_ms_at_start: 1_795_000_000_000,
                relay: match &self.relay {
                    Some(_) => RelaySetup::plan(IcePolicy::All, TURN_PASSWORD),
                    None => RelayPlan::default(),
                },
                ..GatewayConfig::new(DtlsIdentity::fixed_for_tests())
            },
            seeds[2],
            start,
        );
        let (conversation_type, session) = match self.mode {
            Mode::Tunnel => ("tunnel".to_string(), Session::Tunnel),
            Mode::Terminal => (
                "ssh".to_string(),
                Session::Terminal(TerminalSettings {
                    cols: 80,
                    rows: 24,
                    stdin_mode: true,
                    guacd_params: Default::default(),
                }),
            ),
        };
        let offer = LaunchOffer {
            conversation_type,
            ..LaunchOffer::tunnel(Some(TargetHost {
                host_name: "10.9.9.9".into(),
                port: 22,
            }))
        };
        let client = Client::new(
            ClientConfig {
                router_url: "https://connect.sim.invalid".into(),
                session_token,
                server_key,
                gateway_uid,
                record_uid,
                traffic_seed,
                offer,
                session,
                trickle_ice: self.trickle,
                profile: self.profile.clone(),
                relay: match &self.relay {
                    Some(r) => r.client_plan(),
                    None => RelayPlan::default(),
                },
                unix_ms_at_start: 1_795_000_000_000,
                dtls: DtlsIdentity::fixed_for_tests(),
            },
            seeds[3],
            start,
        )
        .unwrap_or_else(|e| panic!("fixture client: {e}"));
        let mut sim = Sim::new(start, self.net.clone(), self.seed, client, gateway, router);
        // Tunnel: the target is an echo server. Terminal: the "PTY" echoes input like a tty in cooked mode.
        sim.echo_target = true;
        for i in 0..self.extra_candidates {
            let addr = std::net::SocketAddr::from(([192, 0, 2, 1 + (i % 200) as u8], 40000 + i));
            sim.client_input(Input::LocalCandidate {
                addr,
                kind: CandidateKind::Host,
            });
        }
        // Like a driver: the host candidates are reported, then the relay layer gathers the rest.
        sim.client_input(Input::GatheringComplete);
        sim
    }
}
