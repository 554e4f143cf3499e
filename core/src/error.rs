//! Why a launch ended badly. Every variant says what happened in words a user can act on; where the cause
//! has a type of its own (a bad router URL, an SDP the peer refused, an undecodable controller response), the
//! error carries that type rather than its text, so callers can match on it. The CLI maps each variant to
//! its documented process exit code (`cli/src/exit.rs`); the core knows nothing about processes.
//! Text that came from outside (router, gateway, WebRTC stack) is shown through [`crate::text::sanitize`]:
//! one line, no control characters, capped.

use std::time::Duration;

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
