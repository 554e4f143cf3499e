//! The injected network every launch benchmark runs on, and the round-trip floor it implies.
//!
//! The numbers mirror the simulation's reference network (`tests/src/sim.rs`, `NetConfig::default`) so
//! the real-socket results can be read next to the simulated table in the README: router RTT 85 ms, a
//! fresh HTTPS connection ≈ 3.5 router RTTs, router WebSocket authentication 500 ms, router ↔ gateway 40
//! ms, gateway answer delay 500 ms, peer RTT 40 ms (20 ms each way on the gateway's UDP path).

use std::net::SocketAddr;
use std::time::Duration;

use pam_lite_emulator::{EmulatorConfig, TargetConfig, UdpImpairment};
use serde::Serialize;

/// The knobs of the injected network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Network {
    /// Client ↔ router round trip (R).
    pub router_rtt_ms: u64,
    /// Extra cost of the first request on a new TCP (+TLS) connection to the router.
    pub fresh_connection_ms: u64,
    /// Router WebSocket authentication after the upgrade.
    pub ws_auth_ms: u64,
    /// Router ↔ gateway round trip (G).
    pub gateway_rtt_ms: u64,
    /// Gateway work before it answers an offer (A).
    pub answer_delay_ms: u64,
    /// Client ↔ gateway UDP round trip (P), split evenly over the two directions.
    pub peer_rtt_ms: u64,
    /// Streaming offers sent sooner than this after the WebSocket opened get `RRC_BAD_STATE` (cold router).
    pub registration_lag_ms: u64,
}

impl Network {
    /// The happy path of items 1, 4 and 5.
    pub const REFERENCE: Network = Network {
        router_rtt_ms: 85,
        fresh_connection_ms: 298, // 3.5 × 85 ms, the simulation's fresh_connection_rtts
        ws_auth_ms: 500,
        gateway_rtt_ms: 40,
        answer_delay_ms: 500,
        peer_rtt_ms: 40,
        registration_lag_ms: 0,
    };

    /// Item 2: the reference network with a router that refuses offers for 1 s after registration
    /// (the simulation's cold-router scenario: exactly one retry for every profile).
    pub const COLD_ROUTER: Network = Network {
        registration_lag_ms: 1000,
        ..Network::REFERENCE
    };

    /// Throughput and footprint runs: loopback, no injected delay at all.
    pub const LOOPBACK: Network = Network {
        router_rtt_ms: 0,
        fresh_connection_ms: 0,
        ws_auth_ms: 0,
        gateway_rtt_ms: 0,
        answer_delay_ms: 0,
        peer_rtt_ms: 0,
        registration_lag_ms: 0,
    };

    /// The emulator configuration for this network, forwarding tunneled connections to `target`.
    pub fn emulator_config(&self, target: SocketAddr) -> EmulatorConfig {
        let ms = Duration::from_millis;
        let one_way = UdpImpairment {
            latency: ms(self.peer_rtt_ms) / 2,
            ..UdpImpairment::default()
        };
        EmulatorConfig {
            target: TargetConfig::Tunnel { forward_to: target },
            router_rtt: ms(self.router_rtt_ms),
            fresh_connection_cost: ms(self.fresh_connection_ms),
            ws_auth_delay: ms(self.ws_auth_ms),
            registration_lag: ms(self.registration_lag_ms),
            gateway_rtt: ms(self.gateway_rtt_ms),
            answer_delay: ms(self.answer_delay_ms),
            ..EmulatorConfig::default()
        }
        .with_udp(one_way)
    }

    /// The round-trip floor of spec §8 as the issue states it: one router round trip for the offer, then
    /// ICE 1 + DTLS 2 + SCTP 2 + OpenConnection 1 peer round trips.
    pub fn floor_ms(&self) -> u64 {
        self.router_rtt_ms + 6 * self.peer_rtt_ms
    }

    /// The same floor plus what the offer cannot avoid on its way through the router to the gateway and
    /// back: the router ↔ gateway round trip and the gateway's answer delay.
    pub fn floor_with_gateway_ms(&self) -> u64 {
        self.floor_ms() + self.gateway_rtt_ms + self.answer_delay_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_floor_is_the_spec_sum() {
        let n = Network::REFERENCE;
        assert_eq!(n.floor_ms(), 85 + 6 * 40);
        assert_eq!(n.floor_with_gateway_ms(), 325 + 40 + 500);
        assert_eq!(Network::COLD_ROUTER.floor_ms(), n.floor_ms());
    }

    #[test]
    fn emulator_config_carries_every_knob() {
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let c = Network::COLD_ROUTER.emulator_config(target);
        assert!(c.validate().is_ok());
        assert_eq!(c.router_rtt, Duration::from_millis(85));
        assert_eq!(c.registration_lag, Duration::from_millis(1000));
        assert_eq!(c.udp_to_gateway.latency, Duration::from_millis(20));
        assert_eq!(c.udp_from_gateway.latency, Duration::from_millis(20));
        assert_eq!(c.target, TargetConfig::Tunnel { forward_to: target });
        let l = Network::LOOPBACK.emulator_config(target);
        assert!(l.udp_to_gateway.is_none() && l.router_rtt.is_zero());
    }
}
