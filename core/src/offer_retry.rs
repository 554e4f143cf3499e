//! The gateway-offer retry with adaptive backend catch-up (Commander PR #1982,
//! `_send_gateway_offer_with_retry`, spec §2.8).
//!
//! Why it exists: the router must have registered the client's WebSocket before it can stream the
//! gateway's answer back. Commander used to always sleep 2 s for that; PR #1982 sleeps only 0.30 s and,
//! if the offer then fails in a way that looks like "router not ready", waits the difference (plus a
//! margin) before trying again, so the fast path stays fast and the unlucky launch still gets the old
//! safety window. [`OfferRetry`] is that loop as a tiny state machine: the client tells it each attempt's
//! outcome and it answers *retry at this instant* or *give up with this error*.
//!
//! Faithful to Commander: the same transient test ([`AttemptFailure::is_transient`]), the same fixed
//! wait before every retry (not exponential), the same error texts. Fixed (spec §10.2): when the gateway
//! is still not online after the last attempt Commander carried on as if the offer had been sent and
//! failed 24 s later with a WebRTC timeout; here it is [`LaunchError::GatewayOffline`] at once.

use std::time::{Duration, Instant};

use crate::profile::Profile;
use crate::LaunchError;

/// Lowercase substrings that make an exception text "transient" in Commander
/// (`_offer_transient_patterns`; note `connection`, which the PR text does not mention).
pub const TRANSIENT_PATTERNS: &[&str] = &[
    "timeout",
    "rrc_timeout",
    "bad_state",
    "connection",
    "502",
    "503",
    "504",
    "controller_down",
];

/// The prefix Commander puts on every offer failure it reports (`"Failed to send offer via HTTP: {e}"`).
pub const FAILURE_PREFIX: &str = "Failed to send offer via HTTP: ";

/// Longest response text kept in a message; router error bodies are short, anything longer is noise.
const MAX_TEXT: usize = 1024;

/// Why one offer attempt (`get_controllers` pre-check + `send_controller_message`) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The request failed below HTTP: connect refused, reset, TLS error, pam-lite's own HTTP timeout
    /// (Commander: any `requests.exceptions.RequestException`). The text is the driver's error.
    Network(String),
    /// The router answered with an HTTP error status (≥ 300 for `send_controller_message`, ≥ 400 for
    /// `get_controllers`). `text` is the response body as text.
    Http { status: u16, text: String },
    /// The router's `RouterResponse.responseCode` was not `RRC_OK`. `code_name` is the enum name
    /// (`RRC_BAD_STATE`, …), `message` its `errorMessage`.
    Router { code_name: String, message: String },
    /// The gateway is not in `get_controllers`' list of online gateways (Commander: the call returns
    /// `None`). Retryable: a gateway that is reconnecting shows up again within seconds.
    GatewayNotOnline { gateway_uid: String },
    /// Non-streaming mode: the gateway itself answered `is_ok: false` with this error text. Commander
    /// raises this after the retry loop, so it is never retried: the gateway decided, asking again
    /// does not change its mind.
    Gateway(String),
    /// The router's reply could not be understood (bad protobuf, undecryptable payload). pam-lite's own
    /// case: Commander would raise a Python parse error here. Never retried: the same router will send
    /// the same bytes again.
    Protocol(String),
}

impl AttemptFailure {
    /// The exception text Commander would show for this failure (without [`FAILURE_PREFIX`]):
    ///
    /// * `Network`: the error text as is (`str(RequestException)`);
    /// * `Http`: `"<status>: error: <reason>, message: <text>"` (send_controller_message's format, with
    ///   the standard reason phrase; `get_controllers` failures use the same text here);
    /// * `Router`: `"<message> response code: <RRC_NAME>"`;
    /// * `GatewayNotOnline`: `"This Gateway currently is not online."` (Commander prints it);
    /// * `Gateway`: `"Gateway error: <error>"` (Commander appends the Python repr of the payload).
    pub fn commander_message(&self) -> String {
        match self {
            AttemptFailure::Network(e) => cut(e),
            AttemptFailure::Http { status, text } => format!(
                "{status}: error: {}, message: {}",
                reason_phrase(*status),
                cut(text)
            ),
            AttemptFailure::Router { code_name, message } => {
                format!("{} response code: {}", cut(message), cut(code_name))
            }
            AttemptFailure::GatewayNotOnline { .. } => {
                "This Gateway currently is not online.".to_owned()
            }
            AttemptFailure::Gateway(e) => format!("Gateway error: {}", cut(e)),
            AttemptFailure::Protocol(e) => cut(e),
        }
    }

    /// Commander's retry test: network errors and "gateway not online" are always worth another try;
    /// an HTTP or router error is when its lowercased text contains one of [`TRANSIENT_PATTERNS`];
    /// gateway `is_ok: false` answers and unreadable replies never are.
    pub fn is_transient(&self) -> bool {
        match self {
            AttemptFailure::Network(_) | AttemptFailure::GatewayNotOnline { .. } => true,
            AttemptFailure::Gateway(_) | AttemptFailure::Protocol(_) => false,
            AttemptFailure::Http { .. } | AttemptFailure::Router { .. } => {
                let text = self.commander_message().to_lowercase();
                TRANSIENT_PATTERNS.iter().any(|p| text.contains(p))
            }
        }
    }

    /// The launch error this failure ends the launch with, after `attempts` attempts.
    pub fn into_launch_error(self, attempts: u32) -> LaunchError {
        // 401 / 403 mean the session, not the network: say so first, without the (often HTML) body.
        if let AttemptFailure::Http { status, .. } = &self {
            if let Some(meaning) = auth_meaning(*status) {
                return LaunchError::Router(format!(
                    "{meaning} ({FAILURE_PREFIX}HTTP {status} {})",
                    reason_phrase(*status)
                ));
            }
        }
        let message = format!("{FAILURE_PREFIX}{}", self.commander_message());
        match self {
            AttemptFailure::Network(_) => LaunchError::RouterUnreachable(message),
            AttemptFailure::Http { .. } | AttemptFailure::Router { .. } => {
                LaunchError::Router(message)
            }
            AttemptFailure::GatewayNotOnline { gateway_uid } => LaunchError::GatewayOffline {
                gateway_uid,
                attempts,
            },
            AttemptFailure::Gateway(_) => LaunchError::Gateway(message),
            AttemptFailure::Protocol(_) => {
                LaunchError::Protocol(crate::ProtocolError::OfferAttempt(message))
            }
        }
    }
}

/// What an authentication status means for the user (the ticket carries a Keeper session token, so a
/// 401 is almost always an expired session and a 403 a session that may not use this gateway/record).
fn auth_meaning(status: u16) -> Option<&'static str> {
    match status {
        401 => Some(
            "session expired: the router no longer accepts this ticket's session token; \
             export a fresh ticket",
        ),
        403 => Some("access denied: the router refused this session for this gateway or record"),
        _ => None,
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start attempt number `attempt` (1-based) at `at`. Between now and then the client emits
    /// `gateway_offer_backend_catchup_delay_start` / `_done` if [`OfferRetry::logs_catchup`].
    RetryAt { attempt: u32, at: Instant },
    /// Stop: the launch fails with this error.
    GiveUp(LaunchError),
}

/// The offer attempt loop. Usage:
///
/// ```text
/// let n = retry.begin_attempt();          // checkpoint gateway_offer_http_attempt_{n}, send
/// on success:  checkpoint gateway_offer_http_done
/// on failure:  match retry.on_failure(&failure, now) {
///                  RetryAt { at, .. } => wait until `at`, then begin_attempt() again,
///                  GiveUp(err)        => checkpoint gateway_offer_http_done, fail with err }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferRetry {
    max_attempts: u32,
    catchup: Duration,
    attempt: u32,
}

impl OfferRetry {
    /// `max_attempts` (at least 1; 0 is read as 1) and the fixed wait before every retry.
    pub fn new(max_attempts: u32, catchup: Duration) -> Self {
        OfferRetry {
            max_attempts: max_attempts.max(1),
            catchup,
            attempt: 0,
        }
    }

    /// The profile's attempts and [`Profile::offer_catchup_delay`].
    pub fn from_profile(profile: &Profile) -> Self {
        OfferRetry::new(profile.offer_max_attempts, profile.offer_catchup_delay())
    }

    /// Count the start of an attempt and return its 1-based number. Never exceeds `max_attempts`:
    /// calling it again after a [`Decision::GiveUp`] is a caller bug and returns the last number.
    pub fn begin_attempt(&mut self) -> u32 {
        self.attempt = (self.attempt + 1).min(self.max_attempts);
        self.attempt
    }

    /// The number of the current attempt (0 before the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The wait before every retry.
    pub fn catchup(&self) -> Duration {
        self.catchup
    }

    /// Commander only logs the catch-up checkpoints when the wait is not zero.
    pub fn logs_catchup(&self) -> bool {
        !self.catchup.is_zero()
    }

    /// The current attempt failed at `now`: retry after the catch-up if the failure is transient and
    /// attempts remain, otherwise give up with the matching [`LaunchError`].
    pub fn on_failure(&mut self, failure: &AttemptFailure, now: Instant) -> Decision {
        let attempt = self.attempt.max(1);
        if failure.is_transient() && attempt < self.max_attempts {
            Decision::RetryAt {
                attempt: attempt + 1,
                at: now.checked_add(self.catchup).unwrap_or(now),
            }
        } else {
            Decision::GiveUp(failure.clone().into_launch_error(attempt))
        }
    }
}

/// The standard reason phrase `requests` reports as `response.reason` for the statuses a router or
/// its load balancer sends; empty for others (a server may send any phrase, or none).
fn reason_phrase(status: u16) -> &'static str {
    match status {
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

fn cut(s: &str) -> String {
    s.chars().take(MAX_TEXT).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arbitrary origin for test instants: std has no other way to make an `Instant`. Only the tests
    /// read the clock; the code under test gets every instant as an argument.
    fn origin() -> Instant {
        pam_lite_dev_clock::origin()
    }
    use proptest::prelude::*;

    fn router(code: &str, msg: &str) -> AttemptFailure {
        AttemptFailure::Router {
            code_name: code.into(),
            message: msg.into(),
        }
    }

    #[test]
    fn auth_statuses_say_session_expired_or_denied_without_the_body() {
        for (status, words) in [(401, "session expired"), (403, "access denied")] {
            let e = http(status, "<html>noise</html>").into_launch_error(1);
            let LaunchError::Router(m) = &e else {
                panic!("{status}: {e:?}")
            };
            assert!(m.starts_with(words), "{m}");
            assert!(m.contains(&format!("HTTP {status}")), "{m}");
            assert!(!m.contains("noise"), "{m}");
            assert!(!http(status, "").is_transient());
        }
        let LaunchError::Router(m) = http(404, "x").into_launch_error(1) else {
            panic!()
        };
        assert!(!m.contains("session"), "{m}");
    }

    fn http(status: u16, text: &str) -> AttemptFailure {
        AttemptFailure::Http {
            status,
            text: text.into(),
        }
    }

    fn offline() -> AttemptFailure {
        AttemptFailure::GatewayNotOnline {
            gateway_uid: "gw1".into(),
        }
    }

    #[test]
    fn commander_messages() {
        assert_eq!(
            router("RRC_BAD_STATE", "conversation not registered").commander_message(),
            "conversation not registered response code: RRC_BAD_STATE"
        );
        assert_eq!(
            http(503, "upstream down").commander_message(),
            "503: error: Service Unavailable, message: upstream down"
        );
        assert_eq!(
            http(599, "x").commander_message(),
            "599: error: , message: x"
        );
        assert_eq!(
            offline().commander_message(),
            "This Gateway currently is not online."
        );
        assert_eq!(
            AttemptFailure::Gateway("no such record".into()).commander_message(),
            "Gateway error: no such record"
        );
        assert_eq!(
            AttemptFailure::Network("Connection reset by peer".into()).commander_message(),
            "Connection reset by peer"
        );
    }

    #[test]
    fn transient_classification_is_commanders() {
        // always
        assert!(AttemptFailure::Network("anything at all".into()).is_transient());
        assert!(offline().is_transient());
        // by pattern, for each pattern
        assert!(router("RRC_TIMEOUT", "gateway did not answer").is_transient());
        assert!(router("RRC_BAD_STATE", "").is_transient());
        assert!(router("RRC_CONTROLLER_DOWN", "").is_transient());
        assert!(router("RRC_GENERAL_ERROR", "Connection to gateway lost").is_transient());
        assert!(router("RRC_GENERAL_ERROR", "read TIMEOUT").is_transient());
        assert!(http(502, "").is_transient());
        assert!(http(503, "").is_transient());
        assert!(http(504, "").is_transient());
        assert!(http(408, "").is_transient()); // "Request Timeout"
        assert!(http(500, "upstream 503").is_transient());
        // not transient
        assert!(!router("RRC_NOT_ALLOWED", "denied").is_transient());
        assert!(!router("RRC_BAD_REQUEST", "malformed").is_transient());
        assert!(!router("RRC_WRONG_INSTANCE", "").is_transient());
        assert!(!http(500, "internal").is_transient());
        assert!(!http(401, "").is_transient());
        assert!(!http(403, "").is_transient());
        // the gateway's own is_ok:false answer is never retried, whatever it says
        assert!(!AttemptFailure::Gateway("timeout connecting to target".into()).is_transient());
        assert!(
            !AttemptFailure::Protocol("connection payload undecryptable".into()).is_transient()
        );
    }

    #[test]
    fn launch_error_variants_carry_commanders_message() {
        assert_eq!(
            AttemptFailure::Network("refused".into()).into_launch_error(2),
            LaunchError::RouterUnreachable("Failed to send offer via HTTP: refused".into())
        );
        assert_eq!(
            router("RRC_NOT_ALLOWED", "nope").into_launch_error(1),
            LaunchError::Router(
                "Failed to send offer via HTTP: nope response code: RRC_NOT_ALLOWED".into()
            )
        );
        assert_eq!(
            http(404, "x").into_launch_error(1),
            LaunchError::Router(
                "Failed to send offer via HTTP: 404: error: Not Found, message: x".into()
            )
        );
        assert_eq!(
            offline().into_launch_error(3),
            LaunchError::GatewayOffline {
                gateway_uid: "gw1".into(),
                attempts: 3
            }
        );
        assert_eq!(
            AttemptFailure::Gateway("bad".into()).into_launch_error(1),
            LaunchError::Gateway("Failed to send offer via HTTP: Gateway error: bad".into())
        );
        assert_eq!(
            AttemptFailure::Protocol("garbage".into()).into_launch_error(1),
            LaunchError::Protocol(crate::ProtocolError::OfferAttempt(
                "Failed to send offer via HTTP: garbage".into()
            ))
        );
    }

    #[test]
    fn long_texts_are_bounded() {
        let long = "y".repeat(100_000);
        assert!(http(500, &long).commander_message().len() < 2 * MAX_TEXT);
        assert!(router(&long, &long).commander_message().len() < 3 * MAX_TEXT);
    }

    #[test]
    fn commander_defaults_wait_2_95_s_then_give_up() {
        let t0 = origin();
        let mut r = OfferRetry::from_profile(&Profile::commander_1984());
        assert_eq!(r.max_attempts(), 2);
        assert_eq!(r.catchup(), Duration::from_millis(2950));
        assert!(r.logs_catchup());
        assert_eq!(r.begin_attempt(), 1);
        let d = r.on_failure(&router("RRC_BAD_STATE", "not ready"), t0);
        assert_eq!(
            d,
            Decision::RetryAt {
                attempt: 2,
                at: t0 + Duration::from_millis(2950)
            }
        );
        assert_eq!(r.begin_attempt(), 2);
        let d = r.on_failure(&router("RRC_BAD_STATE", "not ready"), t0);
        assert_eq!(
            d,
            Decision::GiveUp(LaunchError::Router(
                "Failed to send offer via HTTP: not ready response code: RRC_BAD_STATE".into()
            ))
        );
    }

    #[test]
    fn gateway_offline_after_last_attempt_is_an_error_not_a_silent_success() {
        let t0 = origin();
        let mut r = OfferRetry::new(2, Duration::from_millis(2950));
        r.begin_attempt();
        assert!(matches!(
            r.on_failure(&offline(), t0),
            Decision::RetryAt { attempt: 2, .. }
        ));
        r.begin_attempt();
        assert_eq!(
            r.on_failure(&offline(), t0),
            Decision::GiveUp(LaunchError::GatewayOffline {
                gateway_uid: "gw1".into(),
                attempts: 2
            })
        );
    }

    #[test]
    fn legacy_single_attempt_never_retries() {
        let mut r = OfferRetry::from_profile(&Profile::commander_legacy());
        r.begin_attempt();
        assert!(matches!(
            r.on_failure(&AttemptFailure::Network("x".into()), origin()),
            Decision::GiveUp(LaunchError::RouterUnreachable(_))
        ));
    }

    #[test]
    fn zero_attempts_means_one_and_begin_saturates() {
        let mut r = OfferRetry::new(0, Duration::ZERO);
        assert_eq!(r.max_attempts(), 1);
        assert!(!r.logs_catchup());
        assert_eq!(r.attempt(), 0);
        assert_eq!(r.begin_attempt(), 1);
        assert_eq!(r.begin_attempt(), 1);
        // on_failure before any begin_attempt counts as the first attempt
        let mut r = OfferRetry::new(3, Duration::ZERO);
        let t0 = origin();
        assert_eq!(
            r.on_failure(&offline(), t0),
            Decision::RetryAt { attempt: 2, at: t0 }
        );
    }

    fn failure_strategy() -> impl Strategy<Value = AttemptFailure> {
        prop_oneof![
            ".{0,20}".prop_map(AttemptFailure::Network),
            (300u16..600, ".{0,20}")
                .prop_map(|(status, text)| AttemptFailure::Http { status, text }),
            (
                prop::sample::select(vec![
                    "RRC_GENERAL_ERROR",
                    "RRC_NOT_ALLOWED",
                    "RRC_BAD_REQUEST",
                    "RRC_TIMEOUT",
                    "RRC_BAD_STATE",
                    "RRC_CONTROLLER_DOWN",
                    "RRC_WRONG_INSTANCE",
                ]),
                ".{0,20}"
            )
                .prop_map(|(code, message)| AttemptFailure::Router {
                    code_name: code.to_owned(),
                    message
                }),
            "[a-z0-9]{1,8}"
                .prop_map(|gateway_uid| AttemptFailure::GatewayNotOnline { gateway_uid }),
            ".{0,20}".prop_map(AttemptFailure::Gateway),
            ".{0,20}".prop_map(AttemptFailure::Protocol),
        ]
    }

    proptest! {
        /// Drive the loop like the client does with arbitrary failures: attempts never exceed the
        /// maximum, each retry waits exactly the catch-up, and a non-transient failure ends the loop
        /// at once.
        #[test]
        fn retry_loop_properties(
            max in 0u32..6,
            catchup_ms in 0u64..10_000,
            failures in prop::collection::vec(failure_strategy(), 1..10),
            step_ms in prop::collection::vec(0u64..5_000, 10),
        ) {
            let catchup = Duration::from_millis(catchup_ms);
            let mut r = OfferRetry::new(max, catchup);
            let limit = max.max(1);
            let mut now = origin();
            let mut outcome = None;
            for (i, f) in failures.iter().enumerate() {
                let n = r.begin_attempt();
                prop_assert_eq!(n as usize, i + 1);
                prop_assert!(n <= limit);
                now += Duration::from_millis(step_ms[i % step_ms.len()]);
                match r.on_failure(f, now) {
                    Decision::RetryAt { attempt, at } => {
                        prop_assert!(f.is_transient());
                        prop_assert_eq!(attempt, n + 1);
                        prop_assert!(attempt <= limit);
                        prop_assert_eq!(at, now + catchup);
                        now = at;
                    }
                    Decision::GiveUp(err) => {
                        prop_assert!(!f.is_transient() || n == limit);
                        if let AttemptFailure::GatewayNotOnline { gateway_uid } = f {
                            prop_assert_eq!(
                                err,
                                LaunchError::GatewayOffline { gateway_uid: gateway_uid.clone(), attempts: n }
                            );
                        } else {
                            prop_assert!(err.to_string().contains(FAILURE_PREFIX));
                        }
                        outcome = Some(n);
                        break;
                    }
                }
            }
            // If the loop ended, it ended exactly at the first non-transient failure or at the limit.
            if let Some(n) = outcome {
                let first_fatal = failures.iter().position(|f| !f.is_transient()).map(|i| i as u32 + 1);
                let expected = first_fatal.map_or(limit, |k| k.min(limit));
                prop_assert_eq!(n, expected);
            } else {
                prop_assert!(failures.iter().all(AttemptFailure::is_transient));
                prop_assert!((failures.len() as u32) < limit);
            }
        }

        #[test]
        fn classification_never_panics_and_gateway_is_never_transient(s in ".{0,200}") {
            prop_assert!(!AttemptFailure::Gateway(s.clone()).is_transient());
            let _ = AttemptFailure::Http { status: 500, text: s.clone() }.is_transient();
            let r = AttemptFailure::Router { code_name: "RRC_GENERAL_ERROR".into(), message: s.clone() };
            let expected = TRANSIENT_PATTERNS.iter().any(|p| s.to_lowercase().contains(p))
                || "rrc_general_error".contains("timeout");
            prop_assert_eq!(r.is_transient(), expected);
        }
    }
}
