//! Why a launch ended badly. Every variant says what happened in words a user can act on; where the cause
//! has a type of its own (a bad router URL, an SDP the peer refused, an undecodable controller response), the
//! error carries that type rather than its text, so callers can match on it. The CLI maps each variant to
//! its documented process exit code (`cli/src/exit.rs`); the core knows nothing about processes.
//! Text that came from outside (router, gateway, WebRTC stack) is shown through [`crate::text::sanitize`]:
//! one line, no control characters, capped.

use std::time::Duration;

use crate::relay::RelayProblem;
use crate::router::endpoints::{EndpointError, RouterCallError};
use crate::rtc::PeerError;
use crate::text::sanitize;
use crate::tube::conns::TubeError;

/// The reason a launch (or a gateway-side tube) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// The configuration cannot work. Detected before any I/O.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The router could not be reached or kept failing below HTTP (Commander's text).
    #[error("router unreachable: {}", sanitize(.0))]
    RouterUnreachable(String),
    /// The router answered with an error that is not worth retrying, or retries ran out (Commander's
    /// text, which names the router's response code).
    #[error("router refused the request: {}", sanitize(.0))]
    Router(String),
    /// The gateway is not in the router's list of online gateways (after every attempt).
    #[error("gateway {} is not online (checked {attempts} time(s))", sanitize(.gateway_uid))]
    GatewayOffline { gateway_uid: String, attempts: u32 },
    /// The gateway answered the offer with an error (its own text).
    #[error("gateway error: {}", sanitize(.0))]
    Gateway(String),
    /// A wait ran past its bound.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        what: &'static str,
        waited: Duration,
    },
    /// The WebSocket to the router failed or closed before the answer arrived (the driver's reason).
    #[error("router WebSocket failed: {}", sanitize(.0))]
    WebSocket(String),
    /// The peer broke the protocol (undecryptable answer, malformed frame, bad SDP).
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The WebRTC session ended (remote close, ICE failure): the WebRTC stack's reason.
    #[error("WebRTC session closed: {}", sanitize(.0))]
    Disconnected(String),
    /// No network path to the gateway was found: no candidate pair worked, or relay-only found no relay.
    /// Names every STUN/TURN server that gave nothing.
    #[error("{0}")]
    NoPath(NoPath),
}

/// Why no path to the gateway was found, and which relay servers failed on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoPath {
    pub reason: NoPathReason,
    pub problems: Vec<RelayProblem>,
}

/// What ended the search for a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPathReason {
    /// The gateway answered, but no candidate pair connected within the bound.
    NoWorkingPair { waited: Duration },
    /// The ICE agent gave up before connecting (its reason).
    IceFailed(String),
    /// Relay-only was asked for and no TURN allocation exists.
    NoRelay,
}

impl std::fmt::Display for NoPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no network path to the gateway: ")?;
        match &self.reason {
            NoPathReason::NoWorkingPair { waited } => write!(
                f,
                "no ICE candidate pair worked within {waited:?} (a firewall or NAT between you and the \
                 gateway, and no relay that works)"
            )?,
            NoPathReason::IceFailed(why) => write!(f, "ICE failed ({})", sanitize(why))?,
            NoPathReason::NoRelay => f.write_str("relay-only was asked for and no TURN relay could be allocated")?,
        }
        for (i, p) in self.problems.iter().enumerate() {
            f.write_str(if i == 0 { "; " } else { ", " })?;
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A launch configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Commander bug §10.8 is refused: without a seed the gateway could never decrypt the offer.
    #[error("the record has no trafficEncryptionSeed; the gateway could never decrypt the offer")]
    NoTrafficSeed,
    #[error("empty session token")]
    EmptySessionToken,
    #[error("router URL: {0}")]
    RouterUrl(#[from] EndpointError),
}

/// How the other side broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Our own offer could not be created (the WebRTC stack refused it).
    #[error("creating the offer: {0}")]
    Offer(PeerError),
    /// The gateway's SDP answer could not be applied.
    #[error("gateway answer: {0}")]
    Answer(PeerError),
    /// The non-streaming offer response could not be decoded.
    #[error("offer response: {0}")]
    OfferResponse(RouterCallError),
    /// The non-streaming offer response held something other than an SDP answer.
    #[error("expected an SDP answer in the offer response, got {}", sanitize(.0))]
    NotAnAnswer(String),
    /// The offer attempt's reply could not be understood (Commander's text).
    #[error("{}", sanitize(.0))]
    OfferAttempt(String),
    /// The tube refused to open the terminal's connection.
    #[error("opening the terminal connection: {0}")]
    Tube(#[from] TubeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "x\u{1b}[31mred\rpam-lite: ok\nfake line\u{9b}2J\u{202e}";

    fn assert_safe(shown: &str) {
        assert!(
            !shown.contains(['\n', '\r', '\u{1b}', '\u{9b}', '\u{202e}']),
            "{shown:?}"
        );
    }

    /// Every variant that carries outside text (router message, gateway payload, WebSocket reason,
    /// WebRTC reason, offer reply) shows it through the sanitiser: escapes, CR and fake lines stay inert.
    #[test]
    fn outside_text_in_every_error_is_one_safe_line() {
        let errors = [
            LaunchError::RouterUnreachable(HOSTILE.into()),
            LaunchError::Router(HOSTILE.into()),
            LaunchError::GatewayOffline {
                gateway_uid: HOSTILE.into(),
                attempts: 1,
            },
            LaunchError::Gateway(HOSTILE.into()),
            LaunchError::WebSocket(HOSTILE.into()),
            LaunchError::Disconnected(HOSTILE.into()),
            LaunchError::Protocol(ProtocolError::NotAnAnswer(HOSTILE.into())),
            LaunchError::Protocol(ProtocolError::OfferAttempt(HOSTILE.into())),
            LaunchError::Protocol(ProtocolError::Answer(PeerError::Sdp(HOSTILE.into()))),
            LaunchError::Protocol(ProtocolError::Answer(PeerError::Rtc(HOSTILE.into()))),
            LaunchError::Protocol(ProtocolError::Answer(PeerError::Candidate {
                candidate: HOSTILE.into(),
                reason: HOSTILE.into(),
            })),
            LaunchError::Protocol(ProtocolError::OfferResponse(RouterCallError::Router {
                code: crate::router::proto::RouterResponseCode::RrcGeneralError,
                message: HOSTILE.into(),
            })),
            LaunchError::Protocol(ProtocolError::OfferResponse(RouterCallError::Decode(
                HOSTILE.into(),
            ))),
        ];
        for e in errors {
            let shown = e.to_string();
            assert_safe(&shown);
            assert!(shown.contains("pam-lite: ok\\nfake line"), "{shown}");
        }
    }

    #[test]
    fn a_huge_gateway_payload_is_capped() {
        let shown = LaunchError::Gateway("A".repeat(1 << 20)).to_string();
        assert!(shown.len() < 1000, "{}", shown.len());
    }
}
