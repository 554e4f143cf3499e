//! Timing profiles: every delay, bound and scheduling choice of a launch, as plain values.
//!
//! Commander's tunnel-open speed is almost entirely its *schedule*: fixed sleeps, serial round trips and
//! fresh TLS connections (spec §8). pam-lite reproduces that schedule exactly when asked to (so the
//! emulator can replay Commander's numbers and show where the time goes), and otherwise runs its own
//! [`Profile::fast`] schedule. A [`Profile`] holds only values: the core never reads the environment;
//! a driver or the CLI calls [`Profile::apply_env`] with its own lookup function.
//!
//! Named profiles ([`Profile::names`]):
//!
//! | name               | what it models                                                           |
//! |--------------------|--------------------------------------------------------------------------|
//! | `fast`             | pam-lite's own schedule, as fast as the protocol allows                  |
//! | `commander-1984`   | today's Commander (18.1.8): PR #1982 sleeps + PR #1984 batched flush     |
//! | `commander-1982`   | Commander right after PR #1982 (short sleeps, retry, serial candidates)  |
//! | `commander-legacy` | Commander before PR #1982 (2 s + 1 s sleeps, serial everything)          |

use std::time::Duration;

/// The environment variable names [`Profile::apply_env`] understands (Commander's, plus one of ours).
pub mod env {
    /// Seconds (float). Sleep after the WebSocket is ready, before the offer.
    pub const WEBSOCKET_BACKEND_DELAY: &str = "WEBSOCKET_BACKEND_DELAY";
    /// Seconds (float). Reference window for the retry catch-up (`max(0, legacy − delay)`).
    pub const WEBSOCKET_BACKEND_DELAY_LEGACY: &str = "WEBSOCKET_BACKEND_DELAY_LEGACY";
    /// Seconds (float). Sleep just before the offer POST.
    pub const PAM_PRE_OFFER_SEC: &str = "PAM_PRE_OFFER_SEC";
    /// Truthy (`1`, `true`, `yes`, `on`) → pre-offer sleep = `max(1.0, PAM_PRE_OFFER_SEC or 1.0)`.
    pub const PAM_PRE_OFFER_LEGACY: &str = "PAM_PRE_OFFER_LEGACY";
    /// Seconds (float). Base delay before an offer retry.
    pub const PAM_OFFER_RETRY_EXTRA_SEC: &str = "PAM_OFFER_RETRY_EXTRA_SEC";
    /// Integer. Offer attempts (values below 1 mean 1).
    pub const PAM_GATEWAY_OFFER_MAX_ATTEMPTS: &str = "PAM_GATEWAY_OFFER_MAX_ATTEMPTS";
    /// Integer milliseconds. Router-side offer timeout for ephemeral (JIT) credentials.
    pub const PAM_GATEWAY_OFFER_TIMEOUT_EPHEMERAL_MS: &str =
        "PAM_GATEWAY_OFFER_TIMEOUT_EPHEMERAL_MS";
    /// Integer milliseconds. Router-side timeout for candidate / restart actions.
    pub const GATEWAY_TIMEOUT: &str = "GATEWAY_TIMEOUT";
    /// Seconds (float). Sleep between `connected` and OpenConnection.
    pub const PAM_OPEN_CONNECTION_DELAY: &str = "PAM_OPEN_CONNECTION_DELAY";
    /// Milliseconds (float, minimum 1). Connection-state poll tick; setting it turns polling on.
    pub const PAM_WEBRTC_POLL_MS: &str = "PAM_WEBRTC_POLL_MS";
    /// Seconds (float). Maximum wait for the peer connection to reach `connected`.
    pub const PAM_WEBRTC_CONNECT_TIMEOUT_SEC: &str = "PAM_WEBRTC_CONNECT_TIMEOUT_SEC";
    /// Seconds (float). pam-lite's own: bound on one router HTTP request (Commander has none).
    pub const PAM_LITE_HTTP_TIMEOUT_SEC: &str = "PAM_LITE_HTTP_TIMEOUT_SEC";
    /// Seconds (float). pam-lite's own: how long a lost path may take to come back before the session
    /// ends (`crate::path`).
    pub const PAM_LITE_PATH_LOSS_LIMIT_SEC: &str = "PAM_LITE_PATH_LOSS_LIMIT_SEC";

    /// Every name above, for help texts.
    pub const ALL: &[&str] = &[
        WEBSOCKET_BACKEND_DELAY,
        WEBSOCKET_BACKEND_DELAY_LEGACY,
        PAM_PRE_OFFER_SEC,
        PAM_PRE_OFFER_LEGACY,
        PAM_OFFER_RETRY_EXTRA_SEC,
        PAM_GATEWAY_OFFER_MAX_ATTEMPTS,
        PAM_GATEWAY_OFFER_TIMEOUT_EPHEMERAL_MS,
        GATEWAY_TIMEOUT,
        PAM_OPEN_CONNECTION_DELAY,
        PAM_WEBRTC_POLL_MS,
        PAM_WEBRTC_CONNECT_TIMEOUT_SEC,
        PAM_LITE_HTTP_TIMEOUT_SEC,
        PAM_LITE_PATH_LOSS_LIMIT_SEC,
    ];
}

/// Longest duration any knob may take (one day). A bound keeps `now + delay` far from `Instant`
/// overflow (which would panic) and catches unit mistakes such as milliseconds given as seconds twice.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Largest accepted `PAM_GATEWAY_OFFER_MAX_ATTEMPTS`: more attempts than this is a typo, not a policy.
pub const MAX_OFFER_ATTEMPTS: u32 = 100;

/// Why a profile could not be built or adjusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown timing profile {name:?} (known: fast, commander-1984, commander-1982, commander-legacy)")]
    UnknownProfile { name: String },
    /// An environment variable holds something that is not a usable value. Commander silently falls back
    /// to the default here; pam-lite refuses, because a typo'd knob would otherwise go unnoticed.
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    InvalidEnv {
        var: &'static str,
        /// The offending value, cut to 64 characters.
        value: String,
        reason: &'static str,
    },
}

/// Every delay, bound and scheduling choice of a launch. All fields are public plain values: tests and
/// the emulator build variants with struct-update syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The named profile this started from (kept after [`Profile::apply_env`]).
    pub name: &'static str,

    // ---------------------------------------------------------------- Commander's knobs
    /// `WEBSOCKET_BACKEND_DELAY`: sleep after the WS is ready, before the offer, so the router has
    /// registered the socket for streaming replies. Commander: 2.0 s before #1982, 0.30 s since.
    pub websocket_backend_delay: Duration,
    /// `WEBSOCKET_BACKEND_DELAY_LEGACY` (2.0 s): only used for the retry catch-up, see
    /// [`Profile::offer_catchup_delay`].
    pub websocket_backend_delay_legacy: Duration,
    /// `PAM_PRE_OFFER_SEC` / `PAM_PRE_OFFER_LEGACY`: sleep just before the offer POST (a hard-coded 1 s
    /// before #1982, 0 s since).
    pub pre_offer_delay: Duration,
    /// `PAM_OFFER_RETRY_EXTRA_SEC` (1.25 s): base of the wait before an offer retry.
    pub offer_retry_extra: Duration,
    /// `PAM_GATEWAY_OFFER_MAX_ATTEMPTS` (2, minimum 1): offer attempts. Before #1982 there was no retry.
    pub offer_max_attempts: u32,
    /// `RouterControllerMessage.timeout` of the offer: how long the router waits for the gateway
    /// (30000 ms, hard-coded in Commander).
    pub offer_timeout: Duration,
    /// `PAM_GATEWAY_OFFER_TIMEOUT_EPHEMERAL_MS` (120000 ms): the same for ephemeral (JIT) credentials,
    /// where the gateway first creates an account (30–90 s).
    pub offer_timeout_ephemeral: Duration,
    /// `GATEWAY_TIMEOUT` (30000 ms): router-side timeout of candidate and ICE-restart actions.
    pub gateway_timeout: Duration,
    /// `PAM_OPEN_CONNECTION_DELAY`: sleep between `connected` and OpenConnection (0.2 s before #1982,
    /// 0.05 s since). Commander needs it because `connected` can precede the data channel being open.
    pub open_connection_delay: Duration,
    /// `PAM_WEBRTC_POLL_MS`: Commander polls the connection state with this tick (100 ms before #1982,
    /// 25 ms since), which adds about half a tick of latency. `None`: react to the event itself.
    pub poll_interval: Option<Duration>,
    /// `PAM_WEBRTC_CONNECT_TIMEOUT_SEC`: maximum wait for `connected` after the offer (24 s in 18.1.8;
    /// a hard-coded 15 s at the time of #1982 / #1984).
    pub connect_timeout: Duration,
    /// Maximum wait for the WebSocket handshake before the offer (15 s, Commander's `max_wait`); on
    /// expiry the launch fails with "WebSocket connection timeout".
    pub ws_ready_timeout: Duration,
    /// OpenConnection attempts while the data channel is not open yet (5).
    pub open_connection_attempts: u32,
    /// Base of the OpenConnection retry backoff: retry `k` (0-based) waits `backoff · 2^k`
    /// (0.1, 0.2, 0.4, 0.8 s). See [`Profile::open_connection_backoff_for`].
    pub open_connection_backoff: Duration,

    // ---------------------------------------------------------------- pam-lite's own bound
    /// `PAM_LITE_HTTP_TIMEOUT_SEC` (10 s): bound on one router HTTP request. Commander sets none
    /// (spec §10.14: a hung router blocks a launch forever); pam-lite bounds every wait. 10 s is the only
    /// HTTP timeout Commander does set (bind_to_controller). For requests the router deliberately holds
    /// open, use [`Profile::held_request_timeout`].
    pub http_timeout: Duration,
    /// `PAM_LITE_PATH_LOSS_LIMIT_SEC` (60 s): a session whose path to the peer is lost (nothing heard for
    /// [`crate::path::QUIET_AFTER`], or ICE disconnected) and does not come back within this, ICE restarts
    /// included, ends with exit code 11. 60 s: Keeper's tube closes a session whose restart went
    /// unanswered for 60 s (measured, 2.2.9), and the tube's stall limit is 60 s too.
    pub path_loss_limit: Duration,

    // ---------------------------------------------------------------- the shape of the schedule
    /// POST `relay_access_creds` before anything else, serially, as Commander does (for TURN). The fast
    /// profile does not wait for it: it asks only when a relay plan needs credentials the ticket lacks, in
    /// parallel with its first requests, and only TURN waits for the answer.
    pub fetch_relay_creds: bool,
    /// Open the WebSocket in parallel with creating the peer connection (PR #1982+) instead of after.
    pub websocket_early: bool,
    /// Sleep [`websocket_backend_delay`](Self::websocket_backend_delay) (and
    /// [`pre_offer_delay`](Self::pre_offer_delay)) between WS-ready and the offer, with Commander's
    /// checkpoints. `false`: send the offer as soon as the WS is ready.
    pub backend_delay_before_offer: bool,
    /// Non-trickle mode also waits for the WS and the backend delay before the offer (before #1984;
    /// PR #1984 skips it: the answer comes back in the HTTP response).
    pub non_trickle_waits_for_ws: bool,
    /// POST `get_controllers` before every `send_controller_message` (Commander's
    /// `router_send_action_to_gateway`), i.e. every gateway action costs two requests.
    pub precheck_each_action: bool,
    /// Open a new TCP+TLS connection for relay creds, bind and every `get_controllers` (Commander uses
    /// plain `requests.request` there). `false`: one keep-alive connection for every router call.
    pub fresh_connections: bool,
    /// Send buffered ICE candidates as one batch POST (PR #1984). `false`: one POST per candidate,
    /// one after the other.
    pub batch_candidates: bool,
    /// Put the host candidates known at offer time inside the offer SDP, so they need no POST at all.
    pub candidates_in_offer: bool,
    /// Check once that the gateway is online, in parallel with setup, instead of before every action.
    pub online_check_once: bool,
    /// Open the router WebSocket's TCP+TLS connection at launch start, in parallel with
    /// `bind_to_controller`, and send the upgrade on it as soon as bind's cookie is known
    /// ([`crate::WsPhase`]). Commander opens it only after bind. A pre-connection that fails or goes
    /// stale is replaced by a fresh connect; it never fails the launch.
    pub ws_preconnect: bool,
}

/// Names accepted by [`Profile::by_name`], fastest first.
const NAMES: &[&str] = &[
    "fast",
    "commander-1984",
    "commander-1982",
    "commander-legacy",
];

impl Profile {
    /// Today's Commander (18.1.8): PR #1982's sleeps and offer retry plus PR #1984's batched candidate
    /// flush and non-trickle shortcut. The defaults of every Commander env var.
    pub fn commander_1984() -> Profile {
        Profile {
            name: "commander-1984",
            websocket_backend_delay: Duration::from_millis(300),
            websocket_backend_delay_legacy: Duration::from_secs(2),
            pre_offer_delay: Duration::ZERO,
            offer_retry_extra: Duration::from_millis(1250),
            offer_max_attempts: 2,
            offer_timeout: Duration::from_millis(30_000),
            offer_timeout_ephemeral: Duration::from_millis(120_000),
            gateway_timeout: Duration::from_millis(30_000),
            open_connection_delay: Duration::from_millis(50),
            poll_interval: Some(Duration::from_millis(25)),
            connect_timeout: Duration::from_secs(24),
            ws_ready_timeout: Duration::from_secs(15),
            open_connection_attempts: 5,
            open_connection_backoff: Duration::from_millis(100),
            http_timeout: Duration::from_secs(10),
            path_loss_limit: Duration::from_secs(60),
            fetch_relay_creds: true,
            websocket_early: true,
            backend_delay_before_offer: true,
            non_trickle_waits_for_ws: false,
            precheck_each_action: true,
            fresh_connections: true,
            batch_candidates: true,
            candidates_in_offer: false,
            online_check_once: false,
            ws_preconnect: false,
        }
    }

    /// Commander right after PR #1982 (commit e9bfce18): short sleeps, early WS, offer retry with the
    /// 2.95 s catch-up, but still one POST per candidate and the WS wait in non-trickle mode. The connect
    /// timeout was a hard-coded 15 s and there was no separate ephemeral offer timeout.
    pub fn commander_1982() -> Profile {
        Profile {
            name: "commander-1982",
            batch_candidates: false,
            non_trickle_waits_for_ws: true,
            connect_timeout: Duration::from_secs(15),
            offer_timeout_ephemeral: Duration::from_millis(30_000),
            ..Profile::commander_1984()
        }
    }

    /// Commander before PR #1982 (commit e856deba): 2.0 s backend delay, a hard-coded 1 s pre-offer
    /// sleep, WS started after `create_tube`, one POST per candidate, 0.2 s open delay, 100 ms poll, a
    /// single offer attempt (no retry existed).
    pub fn commander_legacy() -> Profile {
        Profile {
            name: "commander-legacy",
            websocket_backend_delay: Duration::from_secs(2),
            pre_offer_delay: Duration::from_secs(1),
            offer_max_attempts: 1,
            open_connection_delay: Duration::from_millis(200),
            poll_interval: Some(Duration::from_millis(100)),
            websocket_early: false,
            ..Profile::commander_1982()
        }
    }

    /// pam-lite's own schedule: only what the protocol needs, as early as it can happen.
    ///
    /// * One keep-alive connection for every router call (`fresh_connections: false`): each fresh
    ///   connection costs a TCP + TLS handshake (≈ 4.5 RTT vs 1.4 RTT, spec §8.3).
    /// * No serial `relay_access_creds`: TURN credentials come from the ticket, or from the same call made
    ///   in parallel (only when a relay plan needs them), so a launch that can go direct never waits.
    /// * No `get_controllers` before every action; one online check runs in parallel with setup, so an
    ///   offline gateway is still reported clearly ([`crate::LaunchError::GatewayOffline`]).
    /// * No fixed sleeps: the offer goes out the moment the WS is open; OpenConnection goes out when the
    ///   data channel reports open (an event pam-lite sees and Commander does not, hence its 50 ms sleep).
    /// * Event-driven (`poll_interval: None`): no poll quantisation.
    /// * Host candidates go inside the offer SDP; later candidates are batched.
    /// * A cold router (socket not registered yet, the race `WEBSOCKET_BACKEND_DELAY` guards against)
    ///   is handled by retrying instead of always sleeping: up to 4 attempts, each retry after
    ///   0.25 s + max(0, 0.30 − 0) = 0.55 s. 0.30 s is the window Commander's QA found sufficient
    ///   (PR #1982); the 0.25 s margin covers RTT jitter. Worst case 3 × 0.55 = 1.65 s of waiting, still
    ///   less than Commander's single 2.95 s catch-up, and covering a registration lag of ≈ 1.65 s plus
    ///   four round trips; past that the router is unhealthy and a clear error beats waiting longer.
    /// * Failure bounds (timeouts sent to the router, connect / WS / HTTP bounds) stay Commander's: they
    ///   cost nothing on the happy path.
    pub fn fast() -> Profile {
        Profile {
            name: "fast",
            websocket_backend_delay: Duration::ZERO,
            websocket_backend_delay_legacy: Duration::from_millis(300),
            pre_offer_delay: Duration::ZERO,
            offer_retry_extra: Duration::from_millis(250),
            offer_max_attempts: 4,
            open_connection_delay: Duration::ZERO,
            poll_interval: None,
            fetch_relay_creds: false,
            websocket_early: true,
            backend_delay_before_offer: false,
            non_trickle_waits_for_ws: false,
            precheck_each_action: false,
            fresh_connections: false,
            batch_candidates: true,
            candidates_in_offer: true,
            online_check_once: true,
            ws_preconnect: true,
            ..Profile::commander_1984()
        }
    }

    /// The profile called `name` (see [`Profile::names`]).
    pub fn by_name(name: &str) -> Result<Profile, ProfileError> {
        match name {
            "fast" => Ok(Profile::fast()),
            "commander-1984" => Ok(Profile::commander_1984()),
            "commander-1982" => Ok(Profile::commander_1982()),
            "commander-legacy" => Ok(Profile::commander_legacy()),
            other => Err(ProfileError::UnknownProfile {
                name: truncate(other),
            }),
        }
    }

    /// Every profile name, fastest first.
    pub fn names() -> &'static [&'static str] {
        NAMES
    }

    /// The wait before every offer retry: `offer_retry_extra + max(0, legacy − websocket_backend_delay)`.
    ///
    /// Why: the fast schedule sleeps less before the first offer than the legacy one did; if that was too
    /// little (cold router), the retry makes up the difference so the unlucky launch still gets the full
    /// legacy window. Commander's defaults give 1.25 + (2.0 − 0.30) = 2.95 s (the seed's number).
    pub fn offer_catchup_delay(&self) -> Duration {
        self.offer_retry_extra
            + self
                .websocket_backend_delay_legacy
                .saturating_sub(self.websocket_backend_delay)
    }

    /// The router-side timeout of the offer (`RouterControllerMessage.timeout`).
    pub fn offer_router_timeout(&self, ephemeral: bool) -> Duration {
        if ephemeral {
            self.offer_timeout_ephemeral
        } else {
            self.offer_timeout
        }
    }

    /// Client-side bound for a request the router holds open for up to `router_hold` (a non-streaming
    /// `send_controller_message` waits for the gateway): the hold plus [`Profile::http_timeout`], so
    /// pam-lite never gives up before the router does.
    pub fn held_request_timeout(&self, router_hold: Duration) -> Duration {
        router_hold.saturating_add(self.http_timeout)
    }

    /// The wait before OpenConnection retry `retry` (0-based): `open_connection_backoff · 2^retry`.
    pub fn open_connection_backoff_for(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX);
        self.open_connection_backoff
            .saturating_mul(factor)
            .min(MAX_DURATION)
    }

    /// Apply Commander's environment variables (see [`env`]) on top of this profile, with Commander's
    /// rules: empty or unset → keep the profile's value; `PAM_PRE_OFFER_LEGACY` truthy → pre-offer =
    /// `max(1.0 s, PAM_PRE_OFFER_SEC or 1.0 s)`; poll tick at least 1 ms; attempts at least 1.
    /// Unlike Commander, a value that does not parse (or is negative, not finite, or above
    /// [`MAX_DURATION`]) is an error naming the variable, and the profile is left unchanged.
    ///
    /// `lookup` is the caller's environment (`|k| std::env::var(k).ok()` in a binary, a map in tests).
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ProfileError> {
        let get = |var: &'static str| -> Option<(&'static str, String)> {
            lookup(var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| (var, v))
        };
        let mut next = self.clone();

        if let Some((var, v)) = get(env::WEBSOCKET_BACKEND_DELAY) {
            next.websocket_backend_delay = parse_secs(var, &v)?;
        }
        if let Some((var, v)) = get(env::WEBSOCKET_BACKEND_DELAY_LEGACY) {
            next.websocket_backend_delay_legacy = parse_secs(var, &v)?;
        }
        let pre_offer = match get(env::PAM_PRE_OFFER_SEC) {
            Some((var, v)) => Some(parse_secs(var, &v)?),
            None => None,
        };
        let legacy_pre_offer = get(env::PAM_PRE_OFFER_LEGACY).is_some_and(|(_, v)| truthy(&v));
        if legacy_pre_offer {
            next.pre_offer_delay = pre_offer
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_secs(1));
        } else if let Some(d) = pre_offer {
            next.pre_offer_delay = d;
        }
        if let Some((var, v)) = get(env::PAM_OFFER_RETRY_EXTRA_SEC) {
            next.offer_retry_extra = parse_secs(var, &v)?;
        }
        if let Some((var, v)) = get(env::PAM_GATEWAY_OFFER_MAX_ATTEMPTS) {
            next.offer_max_attempts = parse_attempts(var, &v)?;
        }
        if let Some((var, v)) = get(env::PAM_GATEWAY_OFFER_TIMEOUT_EPHEMERAL_MS) {
            next.offer_timeout_ephemeral = parse_whole_ms(var, &v)?;
        }
        if let Some((var, v)) = get(env::GATEWAY_TIMEOUT) {
            next.gateway_timeout = parse_whole_ms(var, &v)?;
        }
        if let Some((var, v)) = get(env::PAM_OPEN_CONNECTION_DELAY) {
            next.open_connection_delay = parse_secs(var, &v)?;
        }
        if let Some((var, v)) = get(env::PAM_WEBRTC_POLL_MS) {
            let tick = parse_duration(var, &v, 0.001)?;
            next.poll_interval = Some(tick.max(Duration::from_millis(1)));
        }
        if let Some((var, v)) = get(env::PAM_WEBRTC_CONNECT_TIMEOUT_SEC) {
            next.connect_timeout = parse_secs(var, &v)?;
        }
        if let Some((var, v)) = get(env::PAM_LITE_HTTP_TIMEOUT_SEC) {
            let t = parse_secs(var, &v)?;
            if t.is_zero() {
                return Err(invalid(var, &v, "must be greater than 0"));
            }
            next.http_timeout = t;
        }
        if let Some((var, v)) = get(env::PAM_LITE_PATH_LOSS_LIMIT_SEC) {
            let t = parse_secs(var, &v)?;
            if t < crate::path::QUIET_AFTER {
                return Err(invalid(
                    var,
                    &v,
                    "must be at least 6 seconds (the quiet time that detects a loss)",
                ));
            }
            next.path_loss_limit = t;
        }

        *self = next;
        Ok(())
    }
}

impl Default for Profile {
    /// The fast profile.
    fn default() -> Self {
        Profile::fast()
    }
}

/// Commander's `_env_truthy`.
fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn truncate(v: &str) -> String {
    v.chars().take(64).collect()
}

fn invalid(var: &'static str, value: &str, reason: &'static str) -> ProfileError {
    ProfileError::InvalidEnv {
        var,
        value: truncate(value),
        reason,
    }
}

fn parse_secs(var: &'static str, v: &str) -> Result<Duration, ProfileError> {
    parse_duration(var, v, 1.0)
}

/// A non-negative, finite decimal number times `unit_secs`, at most [`MAX_DURATION`].
fn parse_duration(var: &'static str, v: &str, unit_secs: f64) -> Result<Duration, ProfileError> {
    let x: f64 = v
        .parse()
        .map_err(|_| invalid(var, v, "not a decimal number"))?;
    if !x.is_finite() {
        return Err(invalid(var, v, "not a finite number"));
    }
    if x < 0.0 {
        return Err(invalid(var, v, "must not be negative"));
    }
    let secs = x * unit_secs;
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(invalid(var, v, "longer than one day"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| invalid(var, v, "not a valid duration"))
}

/// A whole number of milliseconds (Commander reads these with `int()`).
fn parse_whole_ms(var: &'static str, v: &str) -> Result<Duration, ProfileError> {
    let n: u64 = v
        .parse()
        .map_err(|_| invalid(var, v, "not a whole number of milliseconds"))?;
    let d = Duration::from_millis(n);
    if d > MAX_DURATION {
        return Err(invalid(var, v, "longer than one day"));
    }
    Ok(d)
}

/// Commander: `max(1, int(v))`.
fn parse_attempts(var: &'static str, v: &str) -> Result<u32, ProfileError> {
    let n: i64 = v
        .parse()
        .map_err(|_| invalid(var, v, "not a whole number"))?;
    if n > i64::from(MAX_OFFER_ATTEMPTS) {
        return Err(invalid(var, v, "more than 100 attempts"));
    }
    Ok(u32::try_from(n.max(1)).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn with_env(mut p: Profile, vars: &[(&str, &str)]) -> Result<Profile, ProfileError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        p.apply_env(|k| map.get(k).cloned())?;
        Ok(p)
    }

    fn env1(var: &str, value: &str) -> Profile {
        match with_env(Profile::commander_1984(), &[(var, value)]) {
            Ok(p) => p,
            Err(e) => panic!("{var}={value}: {e}"),
        }
    }

    #[test]
    fn commander_1984_has_every_commander_default() {
        let p = Profile::commander_1984();
        assert_eq!(p.name, "commander-1984");
        assert_eq!(p.websocket_backend_delay, ms(300));
        assert_eq!(p.websocket_backend_delay_legacy, ms(2000));
        assert_eq!(p.pre_offer_delay, Duration::ZERO);
        assert_eq!(p.offer_retry_extra, ms(1250));
        assert_eq!(p.offer_max_attempts, 2);
        assert_eq!(p.offer_timeout, ms(30_000));
        assert_eq!(p.offer_timeout_ephemeral, ms(120_000));
        assert_eq!(p.gateway_timeout, ms(30_000));
        assert_eq!(p.open_connection_delay, ms(50));
        assert_eq!(p.poll_interval, Some(ms(25)));
        assert_eq!(p.connect_timeout, ms(24_000));
        assert_eq!(p.ws_ready_timeout, ms(15_000));
        assert_eq!(p.open_connection_attempts, 5);
        assert_eq!(p.open_connection_backoff, ms(100));
        assert_eq!(p.http_timeout, ms(10_000));
        assert!(p.fetch_relay_creds);
        assert!(p.websocket_early);
        assert!(p.backend_delay_before_offer);
        assert!(!p.non_trickle_waits_for_ws);
        assert!(p.precheck_each_action);
        assert!(p.fresh_connections);
        assert!(p.batch_candidates);
        assert!(!p.candidates_in_offer);
        assert!(!p.online_check_once);
        assert!(!p.ws_preconnect);
        // The seed's number: 1.25 s retry + 1.7 s backend-delay delta.
        assert_eq!(p.offer_catchup_delay(), ms(2950));
    }

    #[test]
    fn commander_1982_differs_only_by_serial_candidates_and_old_bounds() {
        let p = Profile::commander_1982();
        assert_eq!(p.name, "commander-1982");
        assert!(!p.batch_candidates);
        assert!(p.non_trickle_waits_for_ws);
        assert_eq!(p.connect_timeout, ms(15_000));
        assert_eq!(p.offer_timeout_ephemeral, ms(30_000));
        assert_eq!(p.offer_max_attempts, 2);
        assert_eq!(p.offer_catchup_delay(), ms(2950));
        let back = Profile {
            name: "commander-1984",
            batch_candidates: true,
            non_trickle_waits_for_ws: false,
            connect_timeout: ms(24_000),
            offer_timeout_ephemeral: ms(120_000),
            ..p
        };
        assert_eq!(back, Profile::commander_1984());
    }

    #[test]
    fn commander_legacy_values() {
        let p = Profile::commander_legacy();
        assert_eq!(p.name, "commander-legacy");
        assert_eq!(p.websocket_backend_delay, ms(2000));
        assert_eq!(p.pre_offer_delay, ms(1000));
        assert_eq!(p.offer_max_attempts, 1);
        assert_eq!(p.open_connection_delay, ms(200));
        assert_eq!(p.poll_interval, Some(ms(100)));
        assert!(!p.websocket_early);
        assert!(!p.batch_candidates);
        assert!(p.non_trickle_waits_for_ws);
        assert!(p.backend_delay_before_offer);
        assert!(p.precheck_each_action);
        assert!(p.fresh_connections);
        assert!(p.fetch_relay_creds);
        assert_eq!(p.connect_timeout, ms(15_000));
        assert_eq!(p.offer_timeout, ms(30_000));
        // legacy − delay = 0: the catch-up is only the extra (unused anyway with one attempt).
        assert_eq!(p.offer_catchup_delay(), ms(1250));
    }

    #[test]
    fn fast_values() {
        let p = Profile::fast();
        assert_eq!(p.name, "fast");
        assert_eq!(p.websocket_backend_delay, Duration::ZERO);
        assert_eq!(p.pre_offer_delay, Duration::ZERO);
        assert_eq!(p.open_connection_delay, Duration::ZERO);
        assert_eq!(p.poll_interval, None);
        assert_eq!(p.offer_max_attempts, 4);
        assert_eq!(p.offer_catchup_delay(), ms(550));
        assert!(!p.fetch_relay_creds);
        assert!(p.websocket_early);
        assert!(!p.backend_delay_before_offer);
        assert!(!p.non_trickle_waits_for_ws);
        assert!(!p.precheck_each_action);
        assert!(!p.fresh_connections);
        assert!(p.batch_candidates);
        assert!(p.candidates_in_offer);
        assert!(p.online_check_once);
        assert!(p.ws_preconnect);
        // Failure bounds stay Commander's.
        assert_eq!(p.offer_timeout, ms(30_000));
        assert_eq!(p.offer_timeout_ephemeral, ms(120_000));
        assert_eq!(p.gateway_timeout, ms(30_000));
        assert_eq!(p.connect_timeout, ms(24_000));
        assert_eq!(p.ws_ready_timeout, ms(15_000));
        assert_eq!(p.http_timeout, ms(10_000));
        // Worst-case retry waiting stays below Commander's single catch-up.
        let waiting = p.offer_catchup_delay() * (p.offer_max_attempts - 1);
        assert!(waiting < Profile::commander_1984().offer_catchup_delay());
        assert_eq!(Profile::default(), p);
    }

    #[test]
    fn by_name_and_names() {
        assert_eq!(
            Profile::names(),
            &[
                "fast",
                "commander-1984",
                "commander-1982",
                "commander-legacy"
            ]
        );
        for name in Profile::names() {
            let p = Profile::by_name(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.name, *name);
        }
        let err = Profile::by_name("turbo").unwrap_err();
        assert_eq!(
            err,
            ProfileError::UnknownProfile {
                name: "turbo".into()
            }
        );
        assert!(err.to_string().contains("commander-legacy"));
    }

    #[test]
    fn helpers() {
        let p = Profile::commander_1984();
        assert_eq!(p.offer_router_timeout(false), ms(30_000));
        assert_eq!(p.offer_router_timeout(true), ms(120_000));
        assert_eq!(p.held_request_timeout(ms(30_000)), ms(40_000));
        let waits: Vec<_> = (0..4).map(|k| p.open_connection_backoff_for(k)).collect();
        assert_eq!(waits, vec![ms(100), ms(200), ms(400), ms(800)]);
        assert_eq!(p.open_connection_backoff_for(u32::MAX), ms(100) * 65_536);
        // catch-up never goes below the extra when the fast delay exceeds the legacy one
        let q = Profile {
            websocket_backend_delay: ms(5000),
            ..p
        };
        assert_eq!(q.offer_catchup_delay(), ms(1250));
    }

    #[test]
    fn empty_environment_changes_nothing() {
        for name in Profile::names() {
            let p = Profile::by_name(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(with_env(p.clone(), &[]), Ok(p.clone()));
            // empty / blank values count as unset, like Commander's _env_float
            let blanks: Vec<(&str, &str)> = env::ALL.iter().map(|v| (*v, "  ")).collect();
            assert_eq!(with_env(p.clone(), &blanks), Ok(p));
        }
    }

    #[test]
    fn each_env_var() {
        assert_eq!(
            env1("WEBSOCKET_BACKEND_DELAY", "2.0").websocket_backend_delay,
            ms(2000)
        );
        assert_eq!(
            env1("WEBSOCKET_BACKEND_DELAY_LEGACY", "3").websocket_backend_delay_legacy,
            ms(3000)
        );
        assert_eq!(env1("PAM_PRE_OFFER_SEC", "0.5").pre_offer_delay, ms(500));
        assert_eq!(
            env1("PAM_OFFER_RETRY_EXTRA_SEC", " 0.75 ").offer_retry_extra,
            ms(750)
        );
        assert_eq!(
            env1("PAM_GATEWAY_OFFER_MAX_ATTEMPTS", "3").offer_max_attempts,
            3
        );
        assert_eq!(
            env1("PAM_GATEWAY_OFFER_TIMEOUT_EPHEMERAL_MS", "90000").offer_timeout_ephemeral,
            ms(90_000)
        );
        assert_eq!(env1("GATEWAY_TIMEOUT", "15000").gateway_timeout, ms(15_000));
        assert_eq!(
            env1("PAM_OPEN_CONNECTION_DELAY", "0.2").open_connection_delay,
            ms(200)
        );
        assert_eq!(
            env1("PAM_WEBRTC_POLL_MS", "100").poll_interval,
            Some(ms(100))
        );
        assert_eq!(
            env1("PAM_WEBRTC_CONNECT_TIMEOUT_SEC", "60").connect_timeout,
            ms(60_000)
        );
        assert_eq!(
            env1("PAM_LITE_HTTP_TIMEOUT_SEC", "2.5").http_timeout,
            ms(2500)
        );
    }

    #[test]
    fn env_catchup_follows_the_knobs() {
        let p = with_env(
            Profile::commander_1984(),
            &[
                ("WEBSOCKET_BACKEND_DELAY", "0.5"),
                ("WEBSOCKET_BACKEND_DELAY_LEGACY", "1.5"),
                ("PAM_OFFER_RETRY_EXTRA_SEC", "0"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.offer_catchup_delay(), ms(1000));
    }

    #[test]
    fn pre_offer_legacy_rules() {
        let base = Profile::commander_1984();
        let run = |vars: &[(&str, &str)]| {
            with_env(base.clone(), vars)
                .unwrap_or_else(|e| panic!("{e}"))
                .pre_offer_delay
        };
        for t in ["1", "true", "YES", " on "] {
            assert_eq!(run(&[("PAM_PRE_OFFER_LEGACY", t)]), ms(1000), "{t}");
        }
        assert_eq!(
            run(&[("PAM_PRE_OFFER_LEGACY", "1"), ("PAM_PRE_OFFER_SEC", "0.2")]),
            ms(1000)
        );
        assert_eq!(
            run(&[("PAM_PRE_OFFER_LEGACY", "1"), ("PAM_PRE_OFFER_SEC", "2.5")]),
            ms(2500)
        );
        // falsy legacy: PAM_PRE_OFFER_SEC (or the profile's value) applies
        assert_eq!(run(&[("PAM_PRE_OFFER_LEGACY", "0")]), Duration::ZERO);
        assert_eq!(run(&[("PAM_PRE_OFFER_LEGACY", "nope")]), Duration::ZERO);
        assert_eq!(
            run(&[
                ("PAM_PRE_OFFER_LEGACY", "off"),
                ("PAM_PRE_OFFER_SEC", "0.2")
            ]),
            ms(200)
        );
    }

    #[test]
    fn poll_has_a_one_millisecond_floor() {
        assert_eq!(env1("PAM_WEBRTC_POLL_MS", "0").poll_interval, Some(ms(1)));
        assert_eq!(env1("PAM_WEBRTC_POLL_MS", "0.2").poll_interval, Some(ms(1)));
        assert_eq!(
            env1("PAM_WEBRTC_POLL_MS", "2.5").poll_interval,
            Some(Duration::from_micros(2500))
        );
        // setting it on the event-driven profile turns polling on
        let p = with_env(Profile::fast(), &[("PAM_WEBRTC_POLL_MS", "25")]);
        assert_eq!(p.map(|p| p.poll_interval), Ok(Some(ms(25))));
    }

    #[test]
    fn attempts_have_a_floor_of_one() {
        assert_eq!(
            env1("PAM_GATEWAY_OFFER_MAX_ATTEMPTS", "0").offer_max_attempts,
            1
        );
        assert_eq!(
            env1("PAM_GATEWAY_OFFER_MAX_ATTEMPTS", "-5").offer_max_attempts,
            1
        );
        assert_eq!(
            env1("PAM_GATEWAY_OFFER_MAX_ATTEMPTS", "100").offer_max_attempts,
            100
        );
    }

    #[test]
    fn invalid_values_name_the_variable_and_change_nothing() {
        let cases: &[(&str, &str)] = &[
            ("WEBSOCKET_BACKEND_DELAY", "fast"),
            ("WEBSOCKET_BACKEND_DELAY_LEGACY", "-1"),
            ("PAM_PRE_OFFER_SEC", "nan"),
            ("PAM_OFFER_RETRY_EXTRA_SEC", "inf"),
            ("PAM_GATEWAY_OFFER_MAX_ATTEMPTS", "2.5"),
            ("PAM_GATEWAY_OFFER_MAX_ATTEMPTS", "101"),
            ("PAM_GATEWAY_OFFER_TIMEOUT_EPHEMERAL_MS", "1.5"),
            ("PAM_GATEWAY_OFFER_TIMEOUT_EPHEMERAL_MS", "999999999999"),
            ("GATEWAY_TIMEOUT", "30s"),
            ("PAM_OPEN_CONNECTION_DELAY", "1e9"),
            ("PAM_WEBRTC_POLL_MS", "-25"),
            ("PAM_WEBRTC_CONNECT_TIMEOUT_SEC", "abc"),
            ("PAM_LITE_HTTP_TIMEOUT_SEC", "0"),
        ];
        for (var, value) in cases {
            let mut p = Profile::commander_1984();
            // a valid variable alongside must not be applied either
            let map: HashMap<&str, &str> = [(*var, *value), ("PAM_WEBRTC_POLL_MS", "7")]
                .into_iter()
                .collect();
            let map = if *var == "PAM_WEBRTC_POLL_MS" {
                [(*var, *value)].into_iter().collect()
            } else {
                map
            };
            let err = p
                .apply_env(|k| map.get(k).map(|v| (*v).to_owned()))
                .unwrap_err();
            match &err {
                ProfileError::InvalidEnv { var: v, .. } => assert_eq!(v, var),
                other => panic!("{other:?}"),
            }
            assert!(err.to_string().contains(var), "{err}");
            assert_eq!(p, Profile::commander_1984(), "{var}={value}");
        }
    }

    #[test]
    fn long_invalid_values_are_cut() {
        let long = "x".repeat(1000);
        let err = with_env(Profile::fast(), &[("GATEWAY_TIMEOUT", &long)]).unwrap_err();
        match err {
            ProfileError::InvalidEnv { value, .. } => assert_eq!(value.len(), 64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn env_keeps_the_profile_name_and_shape() {
        let p = with_env(
            Profile::fast(),
            &[
                ("WEBSOCKET_BACKEND_DELAY", "0.3"),
                ("GATEWAY_TIMEOUT", "1000"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.name, "fast");
        assert!(!p.backend_delay_before_offer);
        assert!(p.candidates_in_offer);
        assert_eq!(p.websocket_backend_delay, ms(300));
        assert_eq!(p.gateway_timeout, ms(1000));
    }
}
