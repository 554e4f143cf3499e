//! Why a launch ended badly. Every variant says what happened in words a user can act on, and maps to
//! a stable process exit code (documented in the README) so scripts can branch on it.

use std::time::Duration;

/// The reason a launch (or a gateway-side tube) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// The configuration cannot work (bad key, bad URL, missing seed...). Detected before any I/O.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The router could not be reached or kept failing below HTTP.
    #[error("router unreachable: {0}")]
    RouterUnreachable(String),
    /// The router answered with an error that is not worth retrying (or retries ran out).
    #[error("router refused the request: {0}")]
    Router(String),
    /// The gateway is not in the router's list of online gateways (after every attempt).
    #[error("gateway {gateway_uid} is not online (checked {attempts} time(s))")]
    GatewayOffline { gateway_uid: String, attempts: u32 },
    /// The gateway answered the offer with an error.
    #[error("gateway error: {0}")]
    Gateway(String),
    /// A wait ran past its bound.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        what: &'static str,
        waited: Duration,
    },
    /// The WebSocket to the router failed or closed before the answer arrived.
    #[error("router WebSocket failed: {0}")]
    WebSocket(String),
    /// The peer broke the protocol (undecryptable answer, malformed frame, bad SDP).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The WebRTC session ended (remote close, ICE failure).
    #[error("WebRTC session closed: {0}")]
    Disconnected(String),
}

impl LaunchError {
    /// The process exit code for this error. 0 is success, 1 is a local/usage error handled by the CLI,
    /// 2 is reserved for command-line parsing errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::Config(_) => 3,
            LaunchError::RouterUnreachable(_) => 4,
            LaunchError::Router(_) => 5,
            LaunchError::GatewayOffline { .. } => 6,
            LaunchError::Gateway(_) => 7,
            LaunchError::Timeout { .. } => 8,
            LaunchError::WebSocket(_) => 9,
            LaunchError::Protocol(_) => 10,
            LaunchError::Disconnected(_) => 11,
        }
    }
}
