//! Server-reflexive address discovery: one STUN Binding request (RFC 8489) to one STUN server, sent from
//! the node's UDP socket, retransmitted on stun-proto's RFC schedule, answered by XOR-MAPPED-ADDRESS.
//!
//! The transaction id comes from the core's seeded RNG (passed in), not from stun-types' own generator,
//! so a seeded simulation replays the same bytes.

use core::net::SocketAddr;
use std::time::Instant;

use turn_client_proto::stun::agent::{StunAgent, StunAgentPollRet};
use turn_client_proto::stun::types::attribute::{ErrorCode, XorMappedAddress};
use turn_client_proto::stun::types::message::{
    Message, MessageClass, MessageType, MessageWrite, MessageWriteVec, TransactionId, BINDING,
};
use turn_client_proto::stun::types::TransportType;

use super::clock::Clock;

/// What one binding transaction ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BindingResult {
    /// The server saw us at this address (equal to the local address when there is no NAT).
    Mapped(SocketAddr),
    /// The server answered with an error (code).
    Refused(u16),
    /// Every retransmission went unanswered.
    TimedOut,
}

/// One STUN Binding transaction.
#[derive(Debug)]
pub(crate) struct Binding {
    server: SocketAddr,
    agent: StunAgent,
    transaction: TransactionId,
    result: Option<BindingResult>,
    outbox: Vec<Vec<u8>>,
    wake: Option<Instant>,
}

impl Binding {
    /// Start the transaction: the first datagram is queued at once (see [`Binding::poll_datagram`]).
    pub(crate) fn start(
        local: SocketAddr,
        server: SocketAddr,
        transaction: u128,
        clock: &Clock,
        now: Instant,
    ) -> Self {
        let mut agent = StunAgent::builder(TransportType::Udp, local)
            .remote_addr(server)
            .build();
        let transaction = TransactionId::from(transaction);
        let request = Message::builder(
            MessageType::from_class_method(MessageClass::Request, BINDING),
            transaction,
            MessageWriteVec::new(),
        )
        .finish();
        let mut outbox = Vec::new();
        let mut result = None;
        match agent.send_request(request, server, clock.proto(now)) {
            Ok(t) => outbox.push(t.data.as_ref().to_vec()),
            Err(_) => result = Some(BindingResult::TimedOut),
        }
        let mut this = Self {
            server,
            agent,
            transaction,
            result,
            outbox,
            wake: None,
        };
        this.handle_timeout(clock, now);
        this
    }

    pub(crate) fn server(&self) -> SocketAddr {
        self.server
    }

    pub(crate) fn result(&self) -> Option<&BindingResult> {
        self.result.as_ref()
    }

    /// Offer a datagram from `from`; `true` when it was this transaction's response (consumed).
    pub(crate) fn handle(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        clock: &Clock,
        now: Instant,
    ) -> bool {
        if from != self.server || self.result.is_some() {
            return false;
        }
        let Ok(msg) = Message::from_bytes(data) else {
            return false;
        };
        if msg.transaction_id() != self.transaction || !msg.has_method(BINDING) {
            return false;
        }
        if !self
            .agent
            .handle_stun_message_with_time(&msg, from, clock.proto(now))
        {
            return false;
        }
        self.result = Some(if msg.has_class(MessageClass::Success) {
            match msg.attribute::<XorMappedAddress>() {
                Ok(xor) => BindingResult::Mapped(xor.addr(self.transaction)),
                // A success without the one attribute that matters is as good as a refusal.
                Err(_) => BindingResult::Refused(0),
            }
        } else {
            BindingResult::Refused(msg.attribute::<ErrorCode>().map(|e| e.code()).unwrap_or(0))
        });
        true
    }

    /// Advance retransmissions; returns when to call again (`None` once finished).
    pub(crate) fn handle_timeout(&mut self, clock: &Clock, now: Instant) -> Option<Instant> {
        self.wake = self.advance(clock, now);
        self.wake
    }

    /// The next moment [`Binding::handle_timeout`] is due.
    pub(crate) fn wake(&self) -> Option<Instant> {
        self.wake.filter(|_| self.result.is_none())
    }

    fn advance(&mut self, clock: &Clock, now: Instant) -> Option<Instant> {
        if self.result.is_some() {
            return None;
        }
        let proto_now = clock.proto(now);
        while let Some(t) = self.agent.poll_transmit(proto_now) {
            self.outbox.push(t.data.as_ref().to_vec());
        }
        match self.agent.poll(proto_now) {
            StunAgentPollRet::WaitUntil(t) => Some(clock.core(t)),
            StunAgentPollRet::TransactionTimedOut(_)
            | StunAgentPollRet::TransactionCancelled(_) => {
                self.result = Some(BindingResult::TimedOut);
                None
            }
        }
    }

    /// The next datagram to send to [`Binding::server`] from the node's socket.
    pub(crate) fn poll_datagram(&mut self) -> Option<Vec<u8>> {
        (!self.outbox.is_empty()).then(|| self.outbox.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use turn_client_proto::stun::types::message::MessageWriteExt;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A STUN server's answer built with the same crate (the server side is not ours to test).
    fn answer(request: &[u8], mapped: SocketAddr) -> Vec<u8> {
        let req = Message::from_bytes(request).unwrap();
        let mut resp = Message::builder_success(&req, MessageWriteVec::new());
        resp.add_attribute(&XorMappedAddress::new(mapped, req.transaction_id()))
            .unwrap();
        resp.finish()
    }

    #[test]
    fn learns_the_mapped_address() {
        let t0 = pam_lite_dev_clock::origin();
        let clock = Clock::new(t0);
        let (local, server, mapped) = (
            addr("10.0.0.2:5000"),
            addr("198.51.100.1:3478"),
            addr("203.0.113.9:61000"),
        );
        let mut b = Binding::start(local, server, 42, &clock, t0);
        let req = b.poll_datagram().expect("request sent at once");
        assert!(b.poll_datagram().is_none());
        // Noise and other servers' datagrams are not ours.
        assert!(!b.handle(server, b"not stun", &clock, t0));
        assert!(!b.handle(addr("198.51.100.2:3478"), &answer(&req, mapped), &clock, t0));
        assert!(b.handle(
            server,
            &answer(&req, mapped),
            &clock,
            t0 + Duration::from_millis(30)
        ));
        assert_eq!(b.result(), Some(&BindingResult::Mapped(mapped)));
        assert_eq!(b.handle_timeout(&clock, t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn retransmits_then_times_out_within_its_bound() {
        let t0 = pam_lite_dev_clock::origin();
        let clock = Clock::new(t0);
        let mut b = Binding::start(
            addr("10.0.0.2:5000"),
            addr("198.51.100.1:3478"),
            7,
            &clock,
            t0,
        );
        let mut sent = usize::from(b.poll_datagram().is_some());
        let mut now = t0;
        while let Some(next) = b.handle_timeout(&clock, now) {
            assert!(next >= now, "time goes forward");
            now = next.max(now + Duration::from_millis(1));
            while b.poll_datagram().is_some() {
                sent += 1;
            }
            assert!(now - t0 < Duration::from_secs(60), "bounded");
        }
        assert_eq!(b.result(), Some(&BindingResult::TimedOut));
        assert!(sent > 1, "retransmitted ({sent} sends)");
    }
}
