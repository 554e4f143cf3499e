//! Named timing checkpoints and the waterfall that renders them.
//!
//! Commander measures `pam launch` with `PamConnectTiming` timers (`connect_timing.py`): each timer has a
//! *label* (`pam-launch:webrtc-tunnel`, …) and logs one line per *checkpoint name* (`relay_creds_ok`, …).
//! pam-lite emits the **same names** (as [`Output::Checkpoint`](crate::Output::Checkpoint)) wherever it
//! does the same step, so a Commander debug log and a pam-lite run can be compared line by line. That is
//! the whole point of this module: a shared vocabulary, plus a [`Waterfall`] that prints it in
//! Commander's exact line format and exports it for tests and reports.
//!
//! Vocabulary: a [`Checkpoint`]'s `phase` is Commander's timer *label*, its `name` is Commander's
//! checkpoint *phase* argument (Commander calls the name "phase"; we keep "phase" for the timer because
//! that is what it is in a waterfall).

use std::time::{Duration, Instant};

/// Commander's timer label for `_open_terminal_webrtc_tunnel` (router calls, offer, candidate flush).
pub const PHASE_WEBRTC_TUNNEL: &str = "pam-launch:webrtc-tunnel";
/// Commander's timer label for `_start_cli_session` (data plane, OpenConnection, Guacamole ready).
pub const PHASE_CLI_SESSION: &str = "pam-launch:cli_session";
/// Commander's whole-launch timer; its only line is the `ready_for_prompt` summary.
pub const PHASE_TOTAL: &str = "pam-launch:total";
/// Commander's pre-phase timer (`PAMLaunchCommand.execute`: vault, DAG, gateway lookup). pam-lite skips
/// that work (it starts from a launch ticket) but keeps the label for completeness.
pub const PHASE_EXECUTE: &str = "pam-launch:execute";
/// Commander's `launch_terminal_connection` timer (settings extraction around the tunnel).
pub const PHASE_TERMINAL_CONNECTION: &str = "pam-launch:terminal_connection";
/// pam-lite's own: the answering side (emulated gateway). Commander has no gateway timer.
pub const PHASE_GATEWAY: &str = "pam-lite:gateway";

/// One named instant of a launch.
///
/// Plain data so it can travel in [`Output::Checkpoint`](crate::Output::Checkpoint); `at` is the `now`
/// the core was given when the step happened (the core never reads a clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The timer label, one of the `PHASE_*` constants.
    pub phase: &'static str,
    /// The checkpoint name, usually one of [`names`].
    pub name: String,
    pub at: Instant,
}

impl Checkpoint {
    pub fn new(phase: &'static str, name: impl Into<String>, at: Instant) -> Self {
        Checkpoint {
            phase,
            name: name.into(),
            at,
        }
    }

    /// `true` for Commander's `summary(...)` lines (see [`names::SUMMARIES`]). A summary reports the
    /// timer's total and, like in Commander, does not reset the step clock.
    pub fn is_summary(&self) -> bool {
        names::is_summary(&self.name)
    }
}

/// Every checkpoint name Commander 18.1.8 logs on the `pam launch` path (spec §1.6), plus the few that
/// pam-lite adds for steps Commander does not have. Using these constants (not string literals) keeps
/// the two logs comparable and makes a typo a compile error.
pub mod names {
    // --- pam-launch:webrtc-tunnel -------------------------------------------------------------
    /// The tunnel timer starts.
    pub const ENTER: &str = "enter";
    /// `router_get_relay_access_creds` returned (TURN credentials; pam-lite's fast profile skips it).
    pub const RELAY_CREDS_OK: &str = "relay_creds_ok";
    /// The WebSocket listener thread was started before `create_tube` (PR #1982 and later).
    pub const WEBSOCKET_LISTENER_STARTED_EARLY: &str = "websocket_listener_started_early";
    /// Pre-#1982 name: the WS listener started *after* `create_tube_ok`.
    pub const WEBSOCKET_LISTENER_STARTED: &str = "websocket_listener_started";
    /// The local peer connection and its offer exist (Commander: `tube_registry.create_tube`).
    pub const CREATE_TUBE_OK: &str = "create_tube_ok";
    /// Trickle: the WS is ready and the `WEBSOCKET_BACKEND_DELAY` sleep is over.
    pub const WEBSOCKET_READY_BACKEND_DELAY_DONE: &str = "websocket_ready_backend_delay_done";
    /// Same, when no readiness event existed (Commander fallback path).
    pub const WEBSOCKET_NO_EVENT_BACKEND_DELAY_DONE: &str = "websocket_no_event_backend_delay_done";
    /// Non-trickle (PR #1984): the WS wait and backend delay are skipped.
    pub const NON_TRICKLE_SKIP_BACKEND_DELAY: &str = "non_trickle_skip_backend_delay";
    /// Before / after the `pre_offer_delay_sec()` sleep (1.0 s before #1982, 0 s since).
    pub const PRE_OFFER_SLEEP_START: &str = "pre_offer_sleep_start";
    pub const PRE_OFFER_SLEEP_DONE: &str = "pre_offer_sleep_done";
    /// Before / after the catch-up sleep that precedes an offer retry (logged only when it is > 0).
    pub const GATEWAY_OFFER_BACKEND_CATCHUP_DELAY_START: &str =
        "gateway_offer_backend_catchup_delay_start";
    pub const GATEWAY_OFFER_BACKEND_CATCHUP_DELAY_DONE: &str =
        "gateway_offer_backend_catchup_delay_done";
    /// pam-lite's own: a server-reflexive candidate was learned from a STUN/TURN server.
    pub const RELAY_SRFLX_CANDIDATE: &str = "relay_srflx_candidate";
    /// pam-lite's own: a TURN allocation gave a relayed candidate.
    pub const RELAY_CANDIDATE: &str = "relay_candidate";
    /// pam-lite's own: a STUN/TURN server gave nothing (the log and the error say which and why).
    pub const RELAY_SERVER_FAILED: &str = "relay_server_failed";
    /// pam-lite's own: gathering from the relay servers is over (answered, failed, or its bound passed).
    pub const RELAY_GATHERING_DONE: &str = "relay_gathering_done";
    /// The offer attempt loop is over (success or final failure).
    pub const GATEWAY_OFFER_HTTP_DONE: &str = "gateway_offer_http_done";

    /// `gateway_offer_http_attempt_{n}`: attempt `n` (1-based) of the offer POST starts.
    pub fn gateway_offer_http_attempt(n: u32) -> String {
        format!("gateway_offer_http_attempt_{n}")
    }

    // --- pam-launch:terminal_connection ---------------------------------------------------------
    pub const PROTOCOL_DETECTED: &str = "protocol_detected";
    pub const SETTINGS_EXTRACTED: &str = "settings_extracted";
    pub const CONTEXT_BUILT: &str = "context_built";
    pub const WEBRTC_TUNNEL_OPENED: &str = "webrtc_tunnel_opened";

    // --- pam-launch:execute (pre-phase; pam-lite does not do this work) -------------------------
    pub const EXECUTE_START: &str = "execute_start";
    pub const RECORD_LOADED: &str = "record_loaded";
    pub const PROTOCOL_DETECTED_TOP: &str = "protocol_detected_top";
    pub const LAUNCH_CACHE_HIT: &str = "launch_cache_hit";
    pub const DAG_BUILT: &str = "dag_built";
    pub const DAG_LINKED_UID_RESOLVED: &str = "dag_linked_uid_resolved";
    pub const FIND_GATEWAY_OK: &str = "find_gateway_ok";
    pub const GATEWAY_ONLINE_VERIFIED: &str = "gateway_online_verified";
    pub const PRE_TERMINAL_CONNECTION: &str = "pre_terminal_connection";

    // --- pam-launch:cli_session -----------------------------------------------------------------
    pub const CLI_SESSION_TRY_ENTER: &str = "cli_session_try_enter";
    pub const PYTHON_HANDLER_START_DONE: &str = "python_handler_start_done";
    /// The peer connection reached `connected` (ICE + DTLS done).
    pub const WEBRTC_DATA_PLANE_CONNECTED: &str = "webrtc_data_plane_connected";
    /// The `PAM_OPEN_CONNECTION_DELAY` sleep is over.
    pub const OPEN_CONNECTION_DELAY_DONE: &str = "open_connection_delay_done";
    /// The `OpenConnection` control frame was sent.
    pub const OPEN_CONNECTION_SENT_OK: &str = "open_connection_sent_ok";
    /// The first Guacamole `sync` arrived (or the 10 s wait ran out).
    pub const GUACAMOLE_WAIT_FOR_READY_OK: &str = "guacamole_wait_for_ready_ok";
    pub const GUACAMOLE_WAIT_FOR_READY_TIMEOUT: &str = "guacamole_wait_for_ready_timeout";

    // --- summaries (Commander's `summary(...)`: one TOTAL line per timer) -----------------------
    pub const EXECUTE_PRE_INTERACTIVE: &str = "execute_pre_interactive";
    pub const TERMINAL_CONNECTION_OK: &str = "terminal_connection_ok";
    pub const WEBRTC_TUNNEL_OPEN_OK_STREAMING: &str = "webrtc_tunnel_open_ok_streaming";
    pub const WEBRTC_TUNNEL_OPEN_OK_NON_STREAMING: &str = "webrtc_tunnel_open_ok_non_streaming";
    pub const CLI_SESSION_PRE_INTERACTIVE: &str = "cli_session_pre_interactive";
    /// `pam-launch:total`: the user can type.
    pub const READY_FOR_PROMPT: &str = "ready_for_prompt";

    /// The names that are summaries rather than checkpoints.
    pub const SUMMARIES: &[&str] = &[
        EXECUTE_PRE_INTERACTIVE,
        TERMINAL_CONNECTION_OK,
        WEBRTC_TUNNEL_OPEN_OK_STREAMING,
        WEBRTC_TUNNEL_OPEN_OK_NON_STREAMING,
        CLI_SESSION_PRE_INTERACTIVE,
        READY_FOR_PROMPT,
    ];

    /// `true` if `name` is one of [`SUMMARIES`].
    pub fn is_summary(name: &str) -> bool {
        SUMMARIES.contains(&name)
    }

    // --- pam-lite's own (steps Commander does not have or does not time) ------------------------
    /// Fast profile: the single `get_controllers` online check (run in parallel with setup) passed.
    pub const ONLINE_CHECK_OK: &str = "online_check_ok";
    /// Fast profile: the router WebSocket's TCP+TLS connection was asked for at launch start, in
    /// parallel with `bind_to_controller` (the upgrade goes on it once bind's cookie is known).
    pub const WEBSOCKET_PRECONNECT_STARTED: &str = "websocket_preconnect_started";
    /// The router WebSocket handshake finished (Commander folds this into the backend-delay line).
    pub const WEBSOCKET_READY: &str = "websocket_ready";
    /// One ICE-candidate POST was acknowledged (Commander's flush has no checkpoint).
    pub const ICE_CANDIDATES_SENT: &str = "ice_candidates_sent";
    /// The gateway's SDP answer was applied.
    pub const SDP_ANSWER_APPLIED: &str = "sdp_answer_applied";
    /// The WebRTC data channel is open (Commander cannot observe this; it sleeps instead).
    pub const DATA_CHANNEL_OPEN: &str = "data_channel_open";
    /// Mid-session: the path to the peer went quiet or ICE lost it (`crate::path`).
    pub const PATH_LOST: &str = "path_lost";
    /// Mid-session: an ICE-restart offer went to the gateway.
    pub const ICE_RESTART_OFFER_SENT: &str = "ice_restart_offer_sent";
    /// Mid-session: the gateway's answer to our ICE restart was applied.
    pub const ICE_RESTART_ANSWER_APPLIED: &str = "ice_restart_answer_applied";
    /// Mid-session: the gateway restarted ICE and we answered.
    pub const ICE_RESTART_ANSWERED: &str = "ice_restart_answered";
    /// Mid-session: the path works again after a loss.
    pub const PATH_RESTORED: &str = "path_restored";
}

/// All checkpoints of one launch, relative to its start: rendered like Commander's debug log, or
/// exported as JSON / plain tuples for reports and snapshot tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waterfall {
    /// When the launch started (the zero of every offset).
    pub start: Instant,
    /// Checkpoints in the order they were pushed (normally the order they happened).
    pub entries: Vec<Checkpoint>,
}

impl Waterfall {
    pub fn new(start: Instant) -> Self {
        Waterfall {
            start,
            entries: Vec::new(),
        }
    }

    pub fn push(&mut self, checkpoint: Checkpoint) {
        self.entries.push(checkpoint);
    }

    /// Commander's log lines, one per entry:
    ///
    /// ```text
    /// <phase> | <name padded to 44> | +<step> ms (step) | <total> ms (total)
    /// <phase> | <name padded to 44> | TOTAL <total> ms                       (summaries)
    /// ```
    ///
    /// Like Commander, every phase is its own timer: `step` is measured from the previous non-summary
    /// checkpoint of the same phase, `total` from the phase's start. Commander starts a timer right
    /// before its first checkpoint (`enter`, `cli_session_try_enter`), so a phase starts at its first
    /// checkpoint here; a phase that only has a summary (`pam-launch:total`) started with the launch.
    /// Milliseconds have one decimal (`%.1f`). Each line ends with `\n`.
    pub fn render(&self) -> String {
        // (phase, phase start, last checkpoint) for every phase seen so far; a handful at most.
        let mut clocks: Vec<(&'static str, Instant, Instant)> = Vec::new();
        let mut out = String::new();
        for cp in &self.entries {
            let idx = match clocks.iter().position(|(p, _, _)| *p == cp.phase) {
                Some(i) => i,
                None => {
                    let t0 = if cp.is_summary() { self.start } else { cp.at };
                    clocks.push((cp.phase, t0, t0));
                    clocks.len() - 1
                }
            };
            let Some(clock) = clocks.get_mut(idx) else {
                continue;
            };
            let total = ms(cp.at.saturating_duration_since(clock.1));
            if cp.is_summary() {
                out.push_str(&format!(
                    "{} | {:<44} | TOTAL {:.1} ms\n",
                    cp.phase, cp.name, total
                ));
            } else {
                let step = ms(cp.at.saturating_duration_since(clock.2));
                clock.2 = cp.at;
                out.push_str(&format!(
                    "{} | {:<44} | +{:.1} ms (step) | {:.1} ms (total)\n",
                    cp.phase, cp.name, step, total
                ));
            }
        }
        out
    }

    /// `{"entries":[{"phase","name","ms","summary"}…],"total_ms"}` with `ms` the offset from
    /// [`Waterfall::start`] (fractional milliseconds) and `total_ms` the offset of the last entry.
    pub fn to_json(&self) -> serde_json::Value {
        let entries: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|cp| {
                serde_json::json!({
                    "phase": cp.phase,
                    "name": cp.name,
                    "ms": ms(cp.at.saturating_duration_since(self.start)),
                    "summary": cp.is_summary(),
                })
            })
            .collect();
        let total = self
            .entries
            .iter()
            .map(|cp| cp.at.saturating_duration_since(self.start))
            .max()
            .unwrap_or_default();
        serde_json::json!({ "entries": entries, "total_ms": ms(total) })
    }

    /// `(phase, name, whole milliseconds since start)` per entry: stable values for snapshot tests.
    pub fn relative(&self) -> Vec<(&'static str, String, u64)> {
        self.entries
            .iter()
            .map(|cp| {
                let d = cp.at.saturating_duration_since(self.start);
                let whole = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                (cp.phase, cp.name.clone(), whole)
            })
            .collect()
    }

    /// Offset of the first entry named `name` (any phase), if present.
    pub fn offset_of(&self, name: &str) -> Option<Duration> {
        self.entries
            .iter()
            .find(|cp| cp.name == name)
            .map(|cp| cp.at.saturating_duration_since(self.start))
    }
}

/// Fractional milliseconds, computed from nanoseconds so round values stay exact (300 ms → 300.0).
fn ms(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arbitrary origin for test instants: std has no other way to make an `Instant`. Only the tests
    /// read the clock; the code under test gets every instant as an argument.
    fn origin() -> Instant {
        pam_lite_dev_clock::origin()
    }

    fn at(t0: Instant, millis: u64) -> Instant {
        t0 + Duration::from_millis(millis)
    }

    #[test]
    fn attempt_names_follow_commander() {
        assert_eq!(
            names::gateway_offer_http_attempt(1),
            "gateway_offer_http_attempt_1"
        );
        assert_eq!(
            names::gateway_offer_http_attempt(12),
            "gateway_offer_http_attempt_12"
        );
    }

    #[test]
    fn summaries_are_recognised() {
        assert!(names::is_summary(names::READY_FOR_PROMPT));
        assert!(names::is_summary(names::WEBRTC_TUNNEL_OPEN_OK_STREAMING));
        assert!(!names::is_summary(names::CREATE_TUBE_OK));
        let t0 = origin();
        assert!(Checkpoint::new(PHASE_TOTAL, names::READY_FOR_PROMPT, t0).is_summary());
        assert!(!Checkpoint::new(PHASE_WEBRTC_TUNNEL, names::ENTER, t0).is_summary());
    }

    #[test]
    fn render_matches_commander_line_format() {
        let t0 = origin();
        let mut w = Waterfall::new(t0);
        w.push(Checkpoint::new(
            PHASE_WEBRTC_TUNNEL,
            names::ENTER,
            at(t0, 5),
        ));
        w.push(Checkpoint::new(
            PHASE_WEBRTC_TUNNEL,
            names::RELAY_CREDS_OK,
            at(t0, 385),
        ));
        w.push(Checkpoint::new(
            PHASE_WEBRTC_TUNNEL,
            names::gateway_offer_http_attempt(1),
            at(t0, 1_000),
        ));
        w.push(Checkpoint::new(
            PHASE_WEBRTC_TUNNEL,
            names::WEBRTC_TUNNEL_OPEN_OK_STREAMING,
            at(t0, 2_970),
        ));
        w.push(Checkpoint::new(
            PHASE_CLI_SESSION,
            names::CLI_SESSION_TRY_ENTER,
            at(t0, 3_000),
        ));
        w.push(Checkpoint::new(
            PHASE_CLI_SESSION,
            names::WEBRTC_DATA_PLANE_CONNECTED,
            at(t0, 6_355),
        ));
        w.push(Checkpoint::new(
            PHASE_TOTAL,
            names::READY_FOR_PROMPT,
            at(t0, 7_000),
        ));
        let expected = "\
pam-launch:webrtc-tunnel | enter                                        | +0.0 ms (step) | 0.0 ms (total)
pam-launch:webrtc-tunnel | relay_creds_ok                               | +380.0 ms (step) | 380.0 ms (total)
pam-launch:webrtc-tunnel | gateway_offer_http_attempt_1                 | +615.0 ms (step) | 995.0 ms (total)
pam-launch:webrtc-tunnel | webrtc_tunnel_open_ok_streaming              | TOTAL 2965.0 ms
pam-launch:cli_session | cli_session_try_enter                        | +0.0 ms (step) | 0.0 ms (total)
pam-launch:cli_session | webrtc_data_plane_connected                  | +3355.0 ms (step) | 3355.0 ms (total)
pam-launch:total | ready_for_prompt                             | TOTAL 7000.0 ms
";
        assert_eq!(w.render(), expected);
    }

    #[test]
    fn summary_does_not_reset_the_step_clock() {
        let t0 = origin();
        let mut w = Waterfall::new(t0);
        w.push(Checkpoint::new(PHASE_WEBRTC_TUNNEL, names::ENTER, t0));
        w.push(Checkpoint::new(
            PHASE_WEBRTC_TUNNEL,
            names::WEBRTC_TUNNEL_OPEN_OK_STREAMING,
            at(t0, 100),
        ));
        w.push(Checkpoint::new(
            PHASE_WEBRTC_TUNNEL,
            names::GATEWAY_OFFER_HTTP_DONE,
            at(t0, 250),
        ));
        let last = w.render().lines().last().map(str::to_owned);
        assert_eq!(
            last.as_deref(),
            Some("pam-launch:webrtc-tunnel | gateway_offer_http_done                      | +250.0 ms (step) | 250.0 ms (total)")
        );
    }

    #[test]
    fn long_names_are_not_truncated_and_fractions_have_one_decimal() {
        let t0 = origin();
        let mut w = Waterfall::new(t0);
        let long = "x".repeat(50);
        w.push(Checkpoint::new(PHASE_GATEWAY, long.clone(), t0));
        w.push(Checkpoint::new(
            PHASE_GATEWAY,
            "b",
            t0 + Duration::from_micros(12_345),
        ));
        let text = w.render();
        assert!(text.contains(&format!("| {long} |")));
        assert!(text.contains("+12.3 ms (step) | 12.3 ms (total)"));
    }

    #[test]
    fn out_of_order_entries_do_not_panic() {
        let t0 = origin();
        let mut w = Waterfall::new(at(t0, 100));
        w.push(Checkpoint::new(PHASE_WEBRTC_TUNNEL, "a", at(t0, 200)));
        w.push(Checkpoint::new(PHASE_WEBRTC_TUNNEL, "b", t0));
        assert!(w.render().contains("+0.0 ms (step) | 0.0 ms (total)"));
        assert_eq!(w.relative()[1].2, 0);
    }

    #[test]
    fn json_and_relative_offsets_are_from_start() {
        let t0 = origin();
        let mut w = Waterfall::new(t0);
        w.push(Checkpoint::new(
            PHASE_WEBRTC_TUNNEL,
            names::CREATE_TUBE_OK,
            at(t0, 300),
        ));
        w.push(Checkpoint::new(
            PHASE_TOTAL,
            names::READY_FOR_PROMPT,
            t0 + Duration::from_micros(1_500_500),
        ));
        assert_eq!(
            w.to_json(),
            serde_json::json!({
                "entries": [
                    {"phase": "pam-launch:webrtc-tunnel", "name": "create_tube_ok", "ms": 300.0, "summary": false},
                    {"phase": "pam-launch:total", "name": "ready_for_prompt", "ms": 1500.5, "summary": true},
                ],
                "total_ms": 1500.5,
            })
        );
        assert_eq!(
            w.relative(),
            vec![
                (PHASE_WEBRTC_TUNNEL, "create_tube_ok".to_owned(), 300),
                (PHASE_TOTAL, "ready_for_prompt".to_owned(), 1500),
            ]
        );
        assert_eq!(
            w.offset_of(names::CREATE_TUBE_OK),
            Some(Duration::from_millis(300))
        );
        assert_eq!(w.offset_of("nope"), None);
    }

    #[test]
    fn empty_waterfall() {
        let w = Waterfall::new(origin());
        assert_eq!(w.render(), "");
        assert_eq!(w.to_json()["total_ms"], serde_json::json!(0.0));
        assert!(w.relative().is_empty());
    }
}
