//! The WebRTC peer: one str0m [`Rtc`] with the single data channel a Keeper tube uses.
//!
//! Keeper's tube (keeper-pam-webrtc-rs) opens exactly one ordered, reliable data channel, created in-band by
//! the offerer, labelled with the conversation id, and sends every message as binary. This wrapper hides
//! str0m's general API behind those facts and turns its outputs into three queues (datagrams, events, the
//! next timeout) that [`crate::client::Client`] and [`crate::gateway::Gateway`] drain.
//!
//! str0m obeys the same rules as this crate: time is passed in, and it never touches a socket.

use core::net::SocketAddr;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::config::DtlsCert;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Rtc};

use crate::{CandidateKind, Datagram};

/// The SDP attribute by which a Keeper peer announces its tube version. Commander reads it from the answer
/// (`a=keeper-webrtc:(\S+)`) to gate ConnectAs; the emulated gateway adds it to its answers.
pub const KEEPER_VERSION_ATTRIBUTE: &str = "a=keeper-webrtc:";

/// SCTP send-buffer budget. str0m's default (128 KiB) is deliberate: sctp-proto's CPU cost grows with the
/// bytes in flight, so a larger buffer makes throughput *worse* (see ARCHITECTURE.md).
const SCTP_MAX_BUFFERED: usize = 128 * 1024;
/// Ask str0m to tell us when the channel has drained below this, so queued frames can move on.
const BUFFERED_LOW: usize = 64 * 1024;

/// The [`PeerEvent::Closed`] reason when ICE gave up (no candidate pair answers any more). Before the
/// peer ever connected this means "no path", which the client reports as such.
pub const ICE_DISCONNECTED: &str = "ICE disconnected";

/// The DTLS certificate and private key a peer presents; its fingerprint goes into the SDP.
///
/// An input, not something a peer makes: a new one costs an ECDSA P-256 key, a signature, OS entropy and
/// a wall-clock read (`notBefore`), none of which the core may do, and a process that opens many tubes
/// would pay that per tube (issue 11). The application makes one per process
/// (`pam_lite_driver_kit::dtls::identity`) and every peer presents it, as browsers present one per
/// origin. Nothing is weakened: each handshake is still bound to its own signalled offer by the
/// fingerprint in that SDP, and each tube negotiates its own keys (ECDHE). Cloning shares it.
///
/// It may be filled in after the launch started ([`DtlsIdentity::pending`], [`DtlsIdentity::fill`]): the
/// first certificate of a process pays aws-lc's one-time entropy seeding (~35 ms), which would otherwise
/// sit before the launch's first router request. A peer is created hundreds of milliseconds later (after
/// bind); if the identity is still empty then, str0m makes the peer its own certificate (the behaviour
/// before identities were shared) — the core never waits for it.
#[derive(Clone)]
pub struct DtlsIdentity(Arc<OnceLock<DtlsCert>>);

impl DtlsIdentity {
    /// An identity from a DER certificate and its PKCS#8 DER private key (what
    /// `str0m::crypto::from_feature_flags().dtls_provider.generate_certificate()` makes). Not checked
    /// here: a key that does not fit fails the peer's handshake.
    pub fn from_der(certificate: Vec<u8>, private_key: Vec<u8>) -> Self {
        let id = Self::pending();
        id.fill(certificate, private_key);
        id
    }

    /// An identity still being made elsewhere; [`DtlsIdentity::fill`] completes it for every clone.
    pub fn pending() -> Self {
        DtlsIdentity(Arc::new(OnceLock::new()))
    }

    /// Complete a pending identity. `false` (and nothing changes) if it already had a certificate.
    pub fn fill(&self, certificate: Vec<u8>, private_key: Vec<u8>) -> bool {
        self.0
            .set(DtlsCert {
                certificate,
                private_key,
            })
            .is_ok()
    }

    /// Whether the certificate is there (peers created now present it).
    pub fn is_ready(&self) -> bool {
        self.0.get().is_some()
    }

    /// A fixed identity for tests, fuzzing and the deterministic simulation, where a fresh key per run
    /// would only add noise. Its private key is in the repository: never present it to a real peer.
    #[cfg(any(test, feature = "emulated-router"))]
    pub fn fixed_for_tests() -> Self {
        Self::from_der(
            include_bytes!("../testdata/dtls/cert.der").to_vec(),
            include_bytes!("../testdata/dtls/key.der").to_vec(),
        )
    }

    /// Whether two handles are the same identity (clones of one, not equal bytes).
    pub fn same_as(&self, other: &DtlsIdentity) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The private key stays out of logs.
impl std::fmt::Debug for DtlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsIdentity")
            .field(
                "certificate_len",
                &self.0.get().map(|c| c.certificate.len()),
            )
            .finish_non_exhaustive()
    }
}

/// Which side of the offer/answer exchange this peer is. The offerer is ICE-controlling, creates the data
/// channel, and (with a str0m answerer) acts as the DTLS client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Offerer,
    Answerer,
}

/// What the peer tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// ICE and DTLS are up (Commander's `connection_state == "connected"`).
    Connected,
    /// The data channel is open; frames may flow.
    ChannelOpen,
    /// One data-channel message.
    Message(Vec<u8>),
    /// The channel's send buffer drained: queued writes can be retried.
    Writable,
    /// The session is over (remote close, ICE failure before the first connect, DTLS failure).
    Closed(String),
    /// ICE lost every working pair after the session was up (str0m's `Disconnected`: the nominated pair
    /// went unanswered for ~20 s). Not the end: str0m keeps checking, DTLS and SCTP keep their state, and
    /// the path may come back by itself or through an ICE restart ([`crate::path`] decides).
    PathLost,
    /// ICE has a working pair again after [`PeerEvent::PathLost`].
    PathRestored,
}

/// Errors from SDP and candidate handling. Inputs here come from the remote peer, so they are never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("invalid SDP: {}", crate::text::sanitize(.0))]
    Sdp(String),
    #[error("invalid ICE candidate {}: {}", crate::text::sanitize_max(.candidate, 120), crate::text::sanitize(.reason))]
    Candidate { candidate: String, reason: String },
    #[error("no offer is pending, so an answer cannot be applied")]
    NoPendingOffer,
    #[error("WebRTC error: {}", crate::text::sanitize(.0))]
    Rtc(String),
}

/// A parser's complaint about peer SDP, as something a user can read: the first line only, with the
/// parser's internal positions (combine prints them as memory addresses, `0x7f…`) removed and the length
/// capped. The full text helps nobody and leaks process layout.
fn sdp_error(e: impl std::fmt::Display) -> PeerError {
    PeerError::Sdp(parser_summary(&e.to_string()))
}

fn parser_summary(full: &str) -> String {
    let first = full.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let words: Vec<String> = first
        .split(' ')
        .map(|w| {
            let t = w.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            let hex = t
                .strip_prefix("0x")
                .or_else(|| t.strip_prefix("0X"))
                .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()));
            if hex {
                "<position>".to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    crate::text::sanitize_max(words.join(" ").trim(), 200)
}

/// An answer must pick a DTLS role (`a=setup:active` or `passive`, RFC 5763 §5). `actpass` is what an
/// *offer* says, so an "answer" with it is most likely our own offer echoed back by a broken or hostile
/// router; str0m would accept it and the launch would only fail ~19 s later when DTLS never starts.
/// Refusing it here makes that a protocol error at once.
fn check_answer_role(sdp: &str) -> Result<(), PeerError> {
    for line in sdp.lines() {
        if let Some(role) = line.trim().strip_prefix("a=setup:") {
            match role.trim() {
                "active" | "passive" => {}
                "actpass" => {
                    return Err(PeerError::Sdp(
                        "the answer offers both DTLS roles (a=setup:actpass), as an offer does: \
                         is it our own offer echoed back?"
                            .into(),
                    ))
                }
                other => {
                    return Err(PeerError::Sdp(format!(
                        "the answer's DTLS role a=setup:{} is not active or passive",
                        crate::text::sanitize_max(other, 40)
                    )))
                }
            }
        }
    }
    Ok(())
}

/// One WebRTC peer carrying one Keeper tube.
pub struct Peer {
    rtc: Rtc,
    role: Role,
    label: String,
    channel: Option<ChannelId>,
    pending_offer: Option<SdpPendingOffer>,
    transmits: VecDeque<Datagram>,
    events: VecDeque<PeerEvent>,
    timeout: Option<Instant>,
    connected: bool,
    open: bool,
    closed: bool,
    /// Between [`PeerEvent::PathLost`] and [`PeerEvent::PathRestored`].
    path_lost: bool,
    /// When the last DTLS record str0m took arrived: the data path's heartbeat, for [`crate::path`]. STUN
    /// does not count: ICE checks can still be answered on one pair (through a relay) while the data goes
    /// to a dead one.
    last_received: Option<Instant>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("role", &self.role)
            .field("label", &self.label)
            .field("connected", &self.connected)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// A new peer presenting `identity` (or a certificate of its own while `identity` is pending). `label` is the data-channel label (the conversation id, as
    /// Keeper does).
    pub fn new(role: Role, label: &str, identity: &DtlsIdentity, now: Instant) -> Self {
        let mut config = Rtc::builder().set_sctp_max_buffered_amount(SCTP_MAX_BUFFERED);
        if let Some(cert) = identity.0.get() {
            config = config.set_dtls_cert(cert.clone());
        }
        let rtc = config.build(now);
        Peer {
            rtc,
            role,
            label: label.to_string(),
            channel: None,
            pending_offer: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            timeout: None,
            connected: false,
            open: false,
            closed: false,
            path_lost: false,
            last_received: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Add a local address as an ICE candidate. Returns its SDP string (`candidate:…`, the form Keeper
    /// trickles) when str0m accepted it, `None` for a duplicate or an unusable address.
    pub fn add_local_candidate(
        &mut self,
        addr: SocketAddr,
        kind: CandidateKind,
        now: Instant,
    ) -> Option<String> {
        let candidate = match kind {
            CandidateKind::Host => Candidate::host(addr, Protocol::Udp).ok()?,
            CandidateKind::ServerReflexive { base } => {
                Candidate::server_reflexive(addr, base, Protocol::Udp).ok()?
            }
            // str0m sends from the relay address; the relay layer wraps those transmits for the TURN
            // server and hands relayed data back with the relay address as destination.
            CandidateKind::Relayed { base } => {
                Candidate::relayed(addr, base, Protocol::Udp).ok()?
            }
        };
        let sdp = self.rtc.add_local_candidate(candidate)?.to_sdp_string();
        self.drain(now);
        Some(sdp)
    }

    /// Offerer: create the data channel and the offer. Local candidates added before this call are inside
    /// the SDP (so they need no trickling).
    pub fn create_offer(&mut self, now: Instant) -> Result<String, PeerError> {
        let mut api = self.rtc.sdp_api();
        let id = api.add_channel_with_config(ChannelConfig {
            label: self.label.clone(),
            ordered: true,
            reliability: Reliability::Reliable,
            negotiated: None,
            protocol: String::new(),
        });
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| PeerError::Rtc("str0m produced no offer".into()))?;
        self.channel = Some(id);
        self.pending_offer = Some(pending);
        self.drain(now);
        Ok(offer.to_sdp_string())
    }

    /// Offerer: apply the remote answer.
    pub fn accept_answer(&mut self, sdp: &str, now: Instant) -> Result<(), PeerError> {
        check_answer_role(sdp)?;
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(sdp_error)?;
        let pending = self.pending_offer.take().ok_or(PeerError::NoPendingOffer)?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(sdp_error)?;
        self.drain(now);
        Ok(())
    }

    /// Offerer, on a session that is up: an ICE restart (RFC 8445 §9: new ufrag/pwd; the local candidates
    /// are kept, re-announced under the new ufrag). str0m keeps using the old ICE session until the answer
    /// is applied with [`Peer::accept_answer`]; DTLS and SCTP are not renegotiated.
    pub fn restart_offer(&mut self, now: Instant) -> Result<String, PeerError> {
        let mut api = self.rtc.sdp_api();
        api.ice_restart(true);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| PeerError::Rtc("str0m produced no ICE-restart offer".into()))?;
        self.pending_offer = Some(pending);
        self.drain(now);
        Ok(offer.to_sdp_string())
    }

    /// Drop a pending offer whose answer will not come (an ICE restart that timed out). str0m keeps
    /// the current ICE session; a later [`Peer::restart_offer`] starts afresh.
    pub fn abandon_offer(&mut self) {
        self.pending_offer = None;
    }

    /// Whether ICE has lost its path since the session was up ([`PeerEvent::PathLost`]).
    pub fn path_lost(&self) -> bool {
        self.path_lost
    }

    /// When the last DTLS record from the remote peer arrived (STUN does not count).
    pub fn last_received(&self) -> Option<Instant> {
        self.last_received
    }

    /// Whether an offer is still waiting for its answer.
    pub fn awaiting_answer(&self) -> bool {
        self.pending_offer.is_some()
    }

    /// Answerer: accept the remote offer and produce the answer SDP, with `extra_attributes` (whole
    /// `a=` lines, e.g. [`KEEPER_VERSION_ATTRIBUTE`]) added at session level.
    pub fn accept_offer(
        &mut self,
        sdp: &str,
        extra_attributes: &[String],
        now: Instant,
    ) -> Result<String, PeerError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(sdp_error)?;
        let answer = self.rtc.sdp_api().accept_offer(offer).map_err(sdp_error)?;
        // A remote (re-)offer wins over one of ours still pending (glare): str0m has invalidated it.
        self.pending_offer = None;
        self.drain(now);
        Ok(insert_session_attributes(
            &answer.to_sdp_string(),
            extra_attributes,
        ))
    }

    /// Add a remote candidate in the `candidate:…` form (with or without `a=`). The empty string is
    /// Keeper's end-of-candidates marker and is ignored.
    pub fn add_remote_candidate(&mut self, candidate: &str, now: Instant) -> Result<(), PeerError> {
        let trimmed = candidate.trim();
        let trimmed = trimmed.strip_prefix("a=").unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Ok(());
        }
        let c = Candidate::from_sdp_string(trimmed).map_err(|e| PeerError::Candidate {
            candidate: trimmed.chars().take(200).collect(),
            reason: parser_summary(&e.to_string()),
        })?;
        self.rtc.add_remote_candidate(c);
        self.drain(now);
        Ok(())
    }

    /// Whether this datagram belongs to this peer (for demultiplexing many peers on one socket).
    pub fn accepts(&self, datagram: &Datagram, now: Instant) -> bool {
        match receive(datagram) {
            Some(r) => self.rtc.accepts(&str0m::Input::Receive(now, r)),
            None => false,
        }
    }

    /// Feed a received datagram. Garbage is dropped (str0m rejects it), never a panic.
    pub fn handle_datagram(&mut self, datagram: &Datagram, now: Instant) {
        if self.closed {
            return;
        }
        if let Some(r) = receive(datagram) {
            // RFC 7983: a first byte of 20..=63 is DTLS (0..=3 would be STUN).
            let dtls = matches!(datagram.contents.first(), Some(20..=63));
            match self.rtc.handle_input(str0m::Input::Receive(now, r)) {
                Ok(()) if dtls => self.last_received = Some(now),
                Ok(()) => {}
                Err(e) => tracing::debug!(error = %e, "str0m rejected a datagram"),
            }
        }
        self.drain(now);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if let Err(e) = self.rtc.handle_input(str0m::Input::Timeout(now)) {
            self.fail(format!("WebRTC timer error: {e}"));
        }
        self.drain(now);
    }

    /// Write one message to the data channel. `Ok(false)`: the send buffer is full, try again after
    /// [`PeerEvent::Writable`].
    pub fn write(&mut self, data: &[u8], now: Instant) -> Result<bool, PeerError> {
        let Some(id) = self.channel.filter(|_| self.open) else {
            return Ok(false);
        };
        let result = match self.rtc.channel(id) {
            Some(mut ch) => ch
                .write(true, data)
                .map_err(|e| PeerError::Rtc(e.to_string())),
            None => Ok(false),
        };
        self.drain(now);
        result
    }

    /// Stop (`true`) or resume taking messages out of the data channel (receive-side flow control,
    /// `tube::delivery`): paused, they stay in SCTP's receive buffer and its advertised window closes,
    /// so the remote sender slows down. Resuming drains what waited (as [`PeerEvent::Message`]s).
    pub fn set_read_paused(&mut self, paused: bool, now: Instant) {
        let Some(id) = self.channel else {
            return;
        };
        let changed = match self.rtc.channel(id) {
            Some(mut ch) if ch.is_read_paused() != paused => {
                ch.set_read_paused(paused);
                true
            }
            _ => false,
        };
        if changed && !paused {
            self.drain(now);
        }
    }

    /// Close the session (sends DTLS close_notify etc. through the transmit queue).
    pub fn close(&mut self, now: Instant) {
        if !self.closed {
            self.rtc.disconnect();
            self.closed = true;
            self.drain(now);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            None
        } else {
            self.timeout
        }
    }

    fn fail(&mut self, reason: String) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(PeerEvent::Closed(reason));
        }
    }

    /// Drain str0m until it asks for a timeout (its single-mutation invariant).
    fn drain(&mut self, now: Instant) {
        let _ = now;
        loop {
            if !self.rtc.is_alive() && !self.closed {
                self.fail("the WebRTC session ended".into());
            }
            let out = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    self.fail(format!("WebRTC error: {e}"));
                    return;
                }
            };
            match out {
                str0m::Output::Timeout(t) => {
                    self.timeout = Some(t);
                    return;
                }
                str0m::Output::Transmit(t) => self.transmits.push_back(Datagram {
                    source: t.source,
                    destination: t.destination,
                    contents: t.contents.to_vec(),
                }),
                str0m::Output::Event(e) => self.on_event(e),
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected if !self.connected => {
                self.connected = true;
                self.events.push_back(PeerEvent::Connected);
            }
            // Before the first connect, no pair ever worked: there is no path. After it, a lost path
            // may come back (str0m never gives up checking), so it is reported, not fatal.
            Event::IceConnectionStateChange(IceConnectionState::Disconnected)
                if self.connected && !self.path_lost =>
            {
                self.path_lost = true;
                self.events.push_back(PeerEvent::PathLost);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) if self.connected => {
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.fail(ICE_DISCONNECTED.into());
            }
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) if self.path_lost => {
                self.path_lost = false;
                self.events.push_back(PeerEvent::PathRestored);
            }
            Event::ChannelOpen(id, _label) => {
                // The answerer learns the channel id only here (the offerer created it in-band).
                self.channel = Some(id);
                self.open = true;
                if let Some(mut ch) = self.rtc.channel(id) {
                    ch.set_buffered_amount_low_threshold(BUFFERED_LOW);
                }
                self.events.push_back(PeerEvent::ChannelOpen);
            }
            Event::ChannelData(d) if Some(d.id) == self.channel => {
                self.events.push_back(PeerEvent::Message(d.data));
            }
            Event::ChannelBufferedAmountLow(_) => self.events.push_back(PeerEvent::Writable),
            Event::ChannelClose(id) if Some(id) == self.channel => {
                self.open = false;
                self.fail("the data channel was closed".into());
            }
            Event::Closed => self.fail("the remote peer closed the session".into()),
            _ => {}
        }
    }
}

/// The transport address of a candidate line (`candidate:…`, with or without `a=`), for the relay layer's
/// permissions. `None` for the end-of-candidates marker or anything str0m cannot parse.
pub fn candidate_address(candidate: &str) -> Option<SocketAddr> {
    let trimmed = candidate.trim();
    let trimmed = trimmed.strip_prefix("a=").unwrap_or(trimmed);
    if trimmed.is_empty() {
        return None;
    }
    Candidate::from_sdp_string(trimmed).ok().map(|c| c.addr())
}

/// The addresses of the candidates inside an SDP (an answer or offer that carries them), bounded.
pub fn sdp_candidate_addresses(sdp: &str) -> Vec<SocketAddr> {
    sdp.lines()
        .filter(|l| l.trim_start().starts_with("a=candidate:"))
        .take(64)
        .filter_map(candidate_address)
        .collect()
}

fn receive(d: &Datagram) -> Option<Receive<'_>> {
    Some(Receive {
        proto: Protocol::Udp,
        source: d.source,
        destination: d.destination,
        contents: d.contents.as_slice().try_into().ok()?,
    })
}

/// Insert whole `a=` lines right after the session-level `t=` line (before the first `m=`), keeping the
/// SDP's CRLF line endings.
fn insert_session_attributes(sdp: &str, lines: &[String]) -> String {
    if lines.is_empty() {
        return sdp.to_string();
    }
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut inserted = false;
    for line in sdp.split_inclusive('\n') {
        if !inserted && line.starts_with("m=") {
            for extra in lines {
                out.push_str(extra.trim_end());
                out.push_str("\r\n");
            }
            inserted = true;
        }
        out.push_str(line);
    }
    out
}

/// Read the `a=keeper-webrtc:X.Y.Z` version from an SDP, as Commander does.
pub fn keeper_version(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix(KEEPER_VERSION_ATTRIBUTE))
        .map(|v| v.split_whitespace().next().unwrap_or(""))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Two peers on made-up addresses, wired back to back in virtual time.
    fn pump(a: &mut Peer, b: &mut Peer, now: &mut Instant, until: impl Fn(&Peer, &Peer) -> bool) {
        for _ in 0..10_000 {
            if until(a, b) {
                return;
            }
            let mut moved = false;
            while let Some(d) = a.poll_transmit() {
                b.handle_datagram(&d, *now);
                moved = true;
            }
            while let Some(d) = b.poll_transmit() {
                a.handle_datagram(&d, *now);
                moved = true;
            }
            if !moved {
                let next = [a.poll_timeout(), b.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(*now + Duration::from_millis(10));
                *now = next.max(*now + Duration::from_millis(1));
                a.handle_timeout(*now);
                b.handle_timeout(*now);
            }
        }
        panic!("peers did not reach the expected state");
    }

    fn offer_fingerprint(identity: &DtlsIdentity) -> String {
        let now = pam_lite_dev_clock::origin();
        let offer = Peer::new(Role::Offerer, "conv", identity, now)
            .create_offer(now)
            .unwrap();
        offer
            .lines()
            .find_map(|l| l.strip_prefix("a=fingerprint:"))
            .expect("a fingerprint line")
            .trim()
            .to_string()
    }

    #[test]
    fn peers_present_the_identity_once_it_is_filled_and_their_own_until_then() {
        let fixed = DtlsIdentity::fixed_for_tests();
        assert_eq!(offer_fingerprint(&fixed), offer_fingerprint(&fixed.clone()));

        let pending = DtlsIdentity::pending();
        assert!(!pending.is_ready());
        // Not filled yet: each peer makes its own certificate (no waiting, no failure).
        let own = offer_fingerprint(&pending);
        assert_ne!(own, offer_fingerprint(&fixed));
        assert_ne!(own, offer_fingerprint(&pending));

        let filler = pending.clone();
        assert!(filler.fill(
            include_bytes!("../testdata/dtls/cert.der").to_vec(),
            include_bytes!("../testdata/dtls/key.der").to_vec(),
        ));
        assert!(pending.is_ready() && pending.same_as(&filler));
        assert_eq!(offer_fingerprint(&pending), offer_fingerprint(&fixed));
        // Filled once: a second certificate is refused and changes nothing.
        assert!(!filler.fill(vec![1], vec![2]));
        assert_eq!(offer_fingerprint(&pending), offer_fingerprint(&fixed));
    }

    #[test]
    fn offerer_and_answerer_open_the_channel_and_move_data() {
        let mut now = pam_lite_dev_clock::origin();
        let mut a = Peer::new(Role::Offerer, "conv", &DtlsIdentity::fixed_for_tests(), now);
        let mut b = Peer::new(
            Role::Answerer,
            "conv",
            &DtlsIdentity::fixed_for_tests(),
            now,
        );
        let ca = a
            .add_local_candidate("10.0.0.1:1000".parse().unwrap(), CandidateKind::Host, now)
            .unwrap();
        assert!(ca.starts_with("candidate:"));
        b.add_local_candidate("10.0.0.2:2000".parse().unwrap(), CandidateKind::Host, now)
            .unwrap();
        let offer = a.create_offer(now).unwrap();
        assert!(
            offer.contains("a=candidate"),
            "host candidate travels inside the offer"
        );
        let answer = b
            .accept_offer(&offer, &[format!("{KEEPER_VERSION_ATTRIBUTE}2.2.9")], now)
            .unwrap();
        assert_eq!(keeper_version(&answer), Some("2.2.9"));
        a.accept_answer(&answer, now).unwrap();
        pump(&mut a, &mut b, &mut now, |a, b| a.is_open() && b.is_open());
        assert!(a.write(b"hello", now).unwrap());
        let mut got = None;
        pump(&mut a, &mut b, &mut now, |_, b| {
            b.events.iter().any(|e| matches!(e, PeerEvent::Message(_)))
        });
        while let Some(e) = b.poll_event() {
            if let PeerEvent::Message(m) = e {
                got = Some(m);
            }
        }
        assert_eq!(got.as_deref(), Some(&b"hello"[..]));
    }

    #[test]
    fn our_own_offer_echoed_back_is_refused_at_once() {
        let now = pam_lite_dev_clock::origin();
        let mut a = Peer::new(Role::Offerer, "x", &DtlsIdentity::fixed_for_tests(), now);
        let offer = a.create_offer(now).unwrap();
        assert!(offer.contains("a=setup:actpass"));
        let err = a.accept_answer(&offer, now).unwrap_err();
        assert!(err.to_string().contains("actpass"), "{err}");
        // The offer is still pending: a real answer can follow.
        assert!(a.awaiting_answer());
        let mut b = Peer::new(Role::Answerer, "x", &DtlsIdentity::fixed_for_tests(), now);
        let answer = b.accept_offer(&offer, &[], now).unwrap();
        a.accept_answer(&answer, now).unwrap();
    }

    #[test]
    fn parser_errors_are_one_line_without_addresses() {
        let s = parser_summary("Parse error at 0x7ffd1234abcd\nUnexpected `x`\nExpected `=`");
        assert_eq!(s, "Parse error at <position>");
        let now = pam_lite_dev_clock::origin();
        let mut a = Peer::new(Role::Offerer, "x", &DtlsIdentity::fixed_for_tests(), now);
        a.create_offer(now).unwrap();
        let err = a
            .accept_answer("v=0\r\n\u{1b}[2Jgarbage\r\n", now)
            .unwrap_err();
        let shown = err.to_string();
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{shown}"
        );
        assert!(!shown.contains("0x7f"), "{shown}");
    }

    #[test]
    fn bad_remote_input_is_an_error_not_a_panic() {
        let now = pam_lite_dev_clock::origin();
        let mut a = Peer::new(Role::Offerer, "x", &DtlsIdentity::fixed_for_tests(), now);
        assert!(a.accept_answer("v=0 garbage", now).is_err());
        assert!(a.add_remote_candidate("candidate:nonsense", now).is_err());
        assert!(a.add_remote_candidate("", now).is_ok());
        assert!(matches!(
            Peer::new(Role::Answerer, "x", &DtlsIdentity::fixed_for_tests(), now).accept_offer(
                "nope",
                &[],
                now
            ),
            Err(PeerError::Sdp(_))
        ));
        a.handle_datagram(
            &Datagram {
                source: "1.1.1.1:1".parse().unwrap(),
                destination: "2.2.2.2:2".parse().unwrap(),
                contents: vec![0xff; 40],
            },
            now,
        );
    }
}
