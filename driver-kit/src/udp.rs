//! The node's single UDP socket: binding it with large kernel buffers, the host candidates it is announced
//! as, and which address a datagram really arrived on / may be sent from.
//!
//! Sends and receives go through [`Offload`] (GSO trains and GRO/`recvmmsg` batches where the kernel has
//! them, one datagram per syscall where it does not): per datagram, syscalls were what bound throughput
//! once SCTP stopped binding (bench/PROFILE.md).
//!
//! A datagram received on an unspecified (`0.0.0.0`) socket carries its destination address (IP_PKTINFO);
//! where the kernel does not say, [`Addressing::destination_for`] picks the announced candidate that fits
//! the sender: a loopback candidate for a loopback sender, otherwise the first candidate of the sender's
//! family.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;

use pam_lite_core::Datagram;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::DriverConfig;
use crate::host_candidates;

/// Where the node's socket is bound and which addresses it is announced as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    pub local: SocketAddr,
    /// Host candidates, in announcement order (never empty).
    pub candidates: Vec<SocketAddr>,
}

impl Addressing {
    /// Work out the candidates of a socket bound to `local`, from the configured `candidate_ips`.
    pub fn new(local: SocketAddr, candidate_ips: &[IpAddr]) -> io::Result<Self> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if local.ip().is_unspecified() {
            if candidate_ips.is_empty() {
                return Err(invalid(format!(
                    "UDP socket bound to {local} needs explicit candidate IPs"
                )));
            }
            let mut candidates = Vec::with_capacity(candidate_ips.len());
            for ip in candidate_ips {
                if ip.is_unspecified() || ip.is_ipv4() != local.is_ipv4() {
                    return Err(invalid(format!(
                        "candidate IP {ip} cannot be announced for a socket bound to {local}"
                    )));
                }
                let addr = SocketAddr::new(*ip, local.port());
                if !candidates.contains(&addr) {
                    candidates.push(addr);
                }
            }
            Ok(Self { local, candidates })
        } else {
            if let Some(ip) = candidate_ips.iter().find(|ip| **ip != local.ip()) {
                return Err(invalid(format!(
                    "candidate IP {ip} differs from the bound address {local}"
                )));
            }
            Ok(Self {
                local,
                candidates: vec![local],
            })
        }
    }

    /// The local address a datagram from `source` arrived on.
    pub fn destination_for(&self, source: SocketAddr) -> SocketAddr {
        if !self.local.ip().is_unspecified() {
            return self.local;
        }
        let same_family = |c: &&SocketAddr| c.is_ipv4() == source.is_ipv4();
        self.candidates
            .iter()
            .filter(same_family)
            .find(|c| c.ip().is_loopback() == source.ip().is_loopback())
            .or_else(|| self.candidates.iter().find(same_family))
            .or_else(|| self.candidates.first())
            .copied()
            .unwrap_or(self.local)
    }

    /// The local address a datagram from `source` arrived on, given the address it was sent to when the
    /// kernel said ([`Received::local_ip`]): that one if it is a candidate of this socket, otherwise
    /// [`Addressing::destination_for`]'s guess.
    pub fn destination(&self, source: SocketAddr, local_ip: Option<IpAddr>) -> SocketAddr {
        local_ip
            .map(|ip| SocketAddr::new(ip, self.local.port()))
            .filter(|addr| self.local.ip().is_unspecified() && self.candidates.contains(addr))
            .unwrap_or_else(|| self.destination_for(source))
    }

    /// Whether the core's `source` of a transmit is this socket (the only one a driver has).
    pub fn owns(&self, source: SocketAddr) -> bool {
        source == self.local || self.candidates.contains(&source)
    }
}

/// Bind the node's UDP socket per `config`, with SO_RCVBUF/SO_SNDBUF raised to `config.socket_buffer`.
/// Bound to all interfaces without explicit `candidate_ips`, it announces the machine's interface addresses
/// ([`host_candidates`]).
/// The socket is returned blocking, as std makes it; a runtime that waits for readiness switches it.
pub fn bind(config: &DriverConfig) -> io::Result<(UdpSocket, Addressing)> {
    let socket = Socket::new(
        Domain::for_address(config.udp_bind),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if let Err(e) = socket.set_recv_buffer_size(config.socket_buffer) {
        tracing::warn!(error = %e, "could not raise SO_RCVBUF");
    }
    if let Err(e) = socket.set_send_buffer_size(config.socket_buffer) {
        tracing::warn!(error = %e, "could not raise SO_SNDBUF");
    }
    let granted = (socket.recv_buffer_size()?, socket.send_buffer_size()?);
    if granted.0 < config.socket_buffer || granted.1 < config.socket_buffer {
        tracing::debug!(
            requested = config.socket_buffer,
            rcvbuf = granted.0,
            sndbuf = granted.1,
            "kernel granted smaller UDP buffers (see net.core.rmem_max / wmem_max)"
        );
    }
    socket.bind(&config.udp_bind.into())?;
    let socket: UdpSocket = socket.into();
    let local = socket.local_addr()?;
    let addressing = if local.ip().is_unspecified() && config.candidate_ips.is_empty() {
        Addressing::new(local, &host_candidates::interface_ips(local))?
    } else {
        Addressing::new(local, &config.candidate_ips)?
    };
    let candidates: Vec<String> = addressing
        .candidates
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::info!(%local, candidates = %candidates.join(" "), "UDP socket bound; host candidates");
    Ok((socket, addressing))
}

/// Transmits kept while the socket's send buffer is full; more are dropped (UDP may lose them anyway).
pub const TX_QUEUE: usize = 1024;
/// Messages read per `recvmmsg`. Each can be a GRO train of up to 64 datagrams, so one call can carry
/// a whole congestion window on loopback.
pub const RECV_SLOTS: usize = 8;
/// The largest UDP payload (IPv4's is 65,507) and the largest GRO train the kernel builds: a receive slot
/// this big is never truncated.
pub const SLOT: usize = 65_536;

/// What the kernel can batch on one socket (probed once by `quinn-udp`): GSO on send (one `sendmsg`
/// carries a train of equal-sized datagrams to one destination, split by the kernel or the NIC), and
/// GRO plus `recvmmsg` on receive. Where the kernel lacks GSO it answers one datagram per `sendmsg`, and
/// a failed GSO send switches it off for the socket: the fallback is the same code with trains of one.
///
/// The probe also asks for each datagram's destination address (IP_PKTINFO), which a socket bound to all
/// interfaces cannot otherwise tell (see [`Addressing::destination`]).
#[derive(Debug, Clone)]
pub struct Offload(Arc<UdpSocketState>);

/// A datagram as read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub source: SocketAddr,
    /// The address it was sent to, when the kernel says (IP_PKTINFO).
    pub local_ip: Option<IpAddr>,
    pub contents: Vec<u8>,
}

impl Offload {
    /// Probe `socket`; this also makes it non-blocking.
    pub fn new(socket: &impl AsFd) -> io::Result<Self> {
        let state = UdpSocketState::new(socket.into())?;
        tracing::debug!(
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            "UDP offloads"
        );
        Ok(Self(Arc::new(state)))
    }

    /// Datagrams one `sendmsg` may carry now (1: no GSO on this socket, or it failed once).
    pub fn max_segments(&self) -> usize {
        self.0.max_gso_segments()
    }

    /// Read what one `recvmmsg` returns (up to [`RECV_SLOTS`] messages, each split into the datagrams of
    /// its GRO train) onto `into`, using this thread's receive buffer. `WouldBlock` when nothing waits.
    pub fn receive(&self, socket: &impl AsFd, into: &mut Vec<Received>) -> io::Result<()> {
        with_recv_buffer(|buf| {
            let mut chunks = buf.chunks_mut(SLOT);
            let mut slots: [IoSliceMut<'_>; RECV_SLOTS] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            let mut meta = [RecvMeta::default(); RECV_SLOTS];
            let messages = self.0.recv(socket.into(), &mut slots, &mut meta)?;
            for (slot, meta) in slots.iter().zip(meta.iter()).take(messages) {
                let bytes = slot.get(..meta.len).unwrap_or_default();
                // A GRO train: datagrams at `stride` offsets, the last maybe shorter (no GRO: one).
                let stride = if meta.stride == 0 {
                    bytes.len().max(1)
                } else {
                    meta.stride
                };
                for datagram in bytes.chunks(stride) {
                    into.push(Received {
                        source: meta.addr,
                        local_ip: meta.dst_ip,
                        contents: datagram.to_vec(),
                    });
                }
            }
            Ok(())
        })
    }

    fn send(
        &self,
        socket: &impl AsFd,
        to: SocketAddr,
        train: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: train,
            segment_size: Some(segment),
            src_ip: None,
        };
        self.0.try_send(socket.into(), &transmit)
    }
}

/// The node's outgoing datagrams: queued as the node produces them, sent by [`TxQueue::flush`] once
/// per dispatcher turn, so a burst (a congestion window of SCTP data, a round of ICE checks) leaves in
/// GSO trains instead of one `sendto` each. A runtime never blocks its loop on a send: when the
/// kernel's buffer is full the rest waits for writability, up to [`TX_QUEUE`] datagrams.
#[derive(Debug)]
pub struct TxQueue {
    offload: Offload,
    queue: VecDeque<Datagram>,
    /// The train being sent (the datagrams' bytes back to back).
    train: Vec<u8>,
}

impl TxQueue {
    pub fn new(offload: Offload) -> Self {
        Self {
            offload,
            queue: VecDeque::new(),
            train: Vec::new(),
        }
    }

    /// Queue `datagram` for the next [`TxQueue::flush`]; dropped when [`TX_QUEUE`] already wait.
    pub fn push(&mut self, datagram: Datagram) {
        if self.queue.len() < TX_QUEUE {
            self.queue.push_back(datagram);
        } else {
            tracing::debug!("udp send queue full: datagram dropped");
        }
    }

    /// Send what is queued until the socket is full: each run of datagrams to one destination with one
    /// size (the last may be shorter) goes out as one train.
    pub fn flush(&mut self, socket: &impl AsFd) {
        while let Some((to, segment, count)) = next_train(&self.queue, self.offload.max_segments())
        {
            self.train.clear();
            for datagram in self.queue.iter().take(count) {
                self.train.extend_from_slice(&datagram.contents);
            }
            match self.offload.send(socket, to, &self.train, segment) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // GSO failed and is now off for this socket: send the same datagrams again, one by one.
                Err(_) if count > 1 && self.offload.max_segments() < count => continue,
                Err(e) => {
                    tracing::debug!(error = %e, destination = %to, datagrams = count, "udp send failed: dropped");
                }
            }
            self.queue.drain(..count);
        }
    }

    /// The socket's offloads, for its receive side ([`Offload::receive`]).
    pub fn offload(&self) -> &Offload {
        &self.offload
    }

    /// Whether datagrams wait to be sent (for writability, after a flush).
    pub fn is_waiting(&self) -> bool {
        !self.queue.is_empty()
    }
}

/// The train at the front of `queue`: its destination, segment size and datagram count. A train is at
/// most `max_segments` datagrams (and under 64 KiB) to one destination, all of the first one's size
/// except a shorter last one: what one GSO `sendmsg` can carry.
fn next_train(
    queue: &VecDeque<Datagram>,
    max_segments: usize,
) -> Option<(SocketAddr, usize, usize)> {
    let first = queue.front()?;
    let (to, segment) = (first.destination, first.contents.len());
    let max = max_segments.min((SLOT - 1) / segment.max(1)).max(1);
    let mut count = 0;
    for datagram in queue.iter().take(max) {
        let len = datagram.contents.len();
        if datagram.destination != to || len > segment {
            break;
        }
        count += 1;
        if len < segment {
            break;
        }
    }
    Some((to, segment, count))
}

thread_local! {
    /// The datagram receive buffer of this thread (see [`with_recv_buffer`]).
    static RECV_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Run `f` with this thread's receive buffer ([`RECV_SLOTS`] slots of [`SLOT`] bytes), shared by every
/// node the thread runs: a runtime that runs many nodes on one thread (smol's executor) keeps one buffer
/// per thread instead of one per node (issue 11). It is allocated zeroed, so the kernel maps its pages only
/// as datagrams fill them: an idle node's thread costs address space, not memory. The buffer is only lent
/// for the call (reads are synchronous); a nested call gets a buffer of its own.
pub fn with_recv_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut buf = RECV_BUFFER.try_with(Cell::take).unwrap_or_default();
    if buf.len() != RECV_SLOTS * SLOT {
        buf = vec![0; RECV_SLOTS * SLOT];
    }
    let out = f(&mut buf);
    let _ = RECV_BUFFER.try_with(|cell| cell.set(buf));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn specific_bind_announces_itself() {
        let a = Addressing::new(addr("127.0.0.1:5000"), &[]).unwrap();
        assert_eq!(a.candidates, vec![addr("127.0.0.1:5000")]);
        assert_eq!(
            a.destination_for(addr("127.0.0.1:9")),
            addr("127.0.0.1:5000")
        );
        assert!(a.owns(addr("127.0.0.1:5000")));
        assert!(!a.owns(addr("127.0.0.1:5001")));
    }

    #[test]
    fn unspecified_bind_needs_candidates() {
        assert!(Addressing::new(addr("0.0.0.0:5000"), &[]).is_err());
        let v6: IpAddr = "::1".parse().unwrap();
        assert!(Addressing::new(addr("0.0.0.0:5000"), &[v6]).is_err());
    }

    #[test]
    fn specific_bind_rejects_other_candidate_ips() {
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(Addressing::new(addr("127.0.0.1:5000"), &[other]).is_err());
    }

    #[test]
    fn unspecified_bind_picks_the_fitting_candidate() {
        let ips: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let a = Addressing::new(addr("0.0.0.0:5000"), &ips).unwrap();
        assert_eq!(
            a.candidates,
            vec![addr("192.0.2.7:5000"), addr("127.0.0.1:5000")]
        );
        assert_eq!(
            a.destination_for(addr("127.0.0.1:9")),
            addr("127.0.0.1:5000")
        );
        assert_eq!(
            a.destination_for(addr("198.51.100.1:9")),
            addr("192.0.2.7:5000")
        );
        assert!(a.owns(addr("192.0.2.7:5000")));
        assert!(a.owns(addr("0.0.0.0:5000")));
    }

    #[test]
    fn bind_raises_buffers_and_reports_port() {
        let (socket, a) = bind(&DriverConfig::default()).unwrap();
        assert_eq!(socket.local_addr().unwrap(), a.local);
        assert_ne!(a.local.port(), 0);
        assert_eq!(a.candidates, vec![a.local]);
    }

    fn datagram(to: SocketAddr, len: usize, tag: u8) -> Datagram {
        Datagram {
            source: addr("127.0.0.1:1"),
            destination: to,
            contents: vec![tag; len],
        }
    }

    #[test]
    fn trains_are_runs_of_one_size_to_one_destination() {
        let (a, b) = (addr("127.0.0.1:7"), addr("127.0.0.1:8"));
        let queue: VecDeque<Datagram> = [
            datagram(a, 1200, 0),
            datagram(a, 1200, 1),
            datagram(a, 900, 2), // a shorter last segment still rides along
            datagram(a, 1200, 3),
            datagram(b, 1200, 4), // another destination starts a train
            datagram(b, 1300, 5), // so does a larger datagram
            datagram(b, 1300, 6),
        ]
        .into();
        let mut rest = queue.clone();
        let mut trains = Vec::new();
        while let Some(train) = next_train(&rest, 64) {
            rest.drain(..train.2);
            trains.push(train);
        }
        assert_eq!(
            trains,
            vec![(a, 1200, 3), (a, 1200, 1), (b, 1200, 1), (b, 1300, 2)]
        );
        // Without GSO (or after it failed) every datagram is its own train.
        let mut rest = queue;
        let mut singles = 0;
        while let Some((_, _, count)) = next_train(&rest, 1) {
            assert_eq!(count, 1);
            rest.drain(..1);
            singles += 1;
        }
        assert_eq!(singles, 7);
        // A train stays under 64 KiB whatever the kernel's segment limit.
        let big: VecDeque<Datagram> = (0..100).map(|i| datagram(a, 1200, i)).collect();
        assert_eq!(next_train(&big, 128), Some((a, 1200, 54)));
    }

    /// Real sockets on loopback: a burst queued, flushed in trains, read back in batches, in order and
    /// byte for byte (GRO splits trains back into datagrams; without it each arrives alone).
    #[test]
    fn a_flushed_burst_arrives_whole_and_in_order() {
        let (sender, _) = bind(&DriverConfig::default()).unwrap();
        let (receiver, to) = bind(&DriverConfig::default()).unwrap();
        let (send_offload, recv_offload) = (
            Offload::new(&sender).unwrap(),
            Offload::new(&receiver).unwrap(),
        );
        let mut tx = TxQueue::new(send_offload);
        let mut sent = Vec::new();
        for i in 0..200u16 {
            let len = if i % 50 == 49 { 300 } else { 1150 };
            let mut contents = vec![0u8; len];
            contents[..2].copy_from_slice(&i.to_be_bytes());
            sent.push(contents.clone());
            tx.push(Datagram {
                source: sender.local_addr().unwrap(),
                destination: to.local,
                contents,
            });
        }
        assert!(tx.is_waiting(), "queued until the flush");
        tx.flush(&sender);
        assert!(
            !tx.is_waiting(),
            "a 4 MiB socket buffer takes 200 datagrams"
        );
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < sent.len() && std::time::Instant::now() < deadline {
            match recv_offload.receive(&receiver, &mut got) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let contents: Vec<Vec<u8>> = got.iter().map(|r| r.contents.clone()).collect();
        assert_eq!(contents, sent);
        assert!(got.iter().all(|r| r.source == sender.local_addr().unwrap()));
        assert!(
            got.iter().all(|r| r.local_ip == Some(to.local.ip())),
            "IP_PKTINFO"
        );
    }

    #[test]
    fn destination_prefers_what_the_kernel_said() {
        let ips: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let a = Addressing::new(addr("0.0.0.0:5000"), &ips).unwrap();
        let loopback = Some("127.0.0.1".parse().unwrap());
        let public = Some("192.0.2.7".parse().unwrap());
        let foreign = Some("198.51.100.9".parse().unwrap());
        // A loopback sender reaching the public address: the guess would say loopback.
        assert_eq!(
            a.destination(addr("127.0.0.1:9"), public),
            addr("192.0.2.7:5000")
        );
        assert_eq!(
            a.destination(addr("127.0.0.1:9"), loopback),
            addr("127.0.0.1:5000")
        );
        // Not a candidate (say, a NAT's mapped address was announced instead): the guess.
        assert_eq!(
            a.destination(addr("127.0.0.1:9"), foreign),
            addr("127.0.0.1:5000")
        );
        assert_eq!(
            a.destination(addr("198.51.100.1:9"), None),
            addr("192.0.2.7:5000")
        );
        // A specific bind is what it is.
        let b = Addressing::new(addr("127.0.0.1:5000"), &[]).unwrap();
        assert_eq!(
            b.destination(addr("127.0.0.1:9"), public),
            addr("127.0.0.1:5000")
        );
    }

    #[test]
    fn one_receive_buffer_per_thread() {
        let first = with_recv_buffer(|b| (b.as_ptr() as usize, b.len()));
        let again = with_recv_buffer(|b| (b.as_ptr() as usize, b.len()));
        assert_eq!(first, again, "the thread's buffer is reused");
        assert_eq!(first.1, RECV_SLOTS * SLOT);
        // A nested call (never made by the drivers) still gets a full buffer, not the lent one.
        let (outer, inner) = with_recv_buffer(|outer| {
            let inner = with_recv_buffer(|inner| (inner.as_ptr() as usize, inner.len()));
            (outer.as_ptr() as usize, inner)
        });
        assert_eq!(outer, first.0);
        assert_ne!(inner.0, outer);
        assert_eq!(inner.1, RECV_SLOTS * SLOT);
        // Another thread has its own.
        let other = std::thread::spawn(|| with_recv_buffer(|b| b.as_ptr() as usize))
            .join()
            .unwrap();
        assert_ne!(other, first.0);
    }
}
