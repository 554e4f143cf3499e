//! The node's single UDP socket: binding it with large kernel buffers, the host candidates it is announced
//! as, and which address a datagram really arrived on / may be sent from.
//!
//! std cannot tell the destination address of a datagram received on an unspecified (`0.0.0.0`) socket
//! (that needs IP_PKTINFO), so [`Addressing::destination_for`] picks the announced candidate that fits the
//! sender: a loopback candidate for a loopback sender, otherwise the first candidate of the sender's family.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use pam_lite_core::Datagram;

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

/// Non-blocking sends with a short queue for the moments the kernel's send buffer is full, so a runtime
/// never blocks its loop on `send_to`: it waits for writability and calls [`TxQueue::flush`].
#[derive(Debug, Default)]
pub struct TxQueue {
    queue: VecDeque<Datagram>,
}

impl TxQueue {
    /// Send `datagram` with `send` (a non-blocking `send_to`), or queue it behind earlier ones.
    pub fn send(
        &mut self,
        datagram: Datagram,
        send: impl Fn(&[u8], SocketAddr) -> io::Result<usize>,
    ) {
        if self.queue.is_empty() {
            match send(&datagram.contents, datagram.destination) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(error = %e, destination = %datagram.destination, "udp send failed: dropped");
                    return;
                }
                Ok(_) => return,
            }
        }
        if self.queue.len() < TX_QUEUE {
            self.queue.push_back(datagram);
        } else {
            tracing::debug!("udp send queue full: datagram dropped");
        }
    }

    /// Send what was queued until the socket is full again.
    pub fn flush(&mut self, send: impl Fn(&[u8], SocketAddr) -> io::Result<usize>) {
        while let Some(datagram) = self.queue.front() {
            match send(&datagram.contents, datagram.destination) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, destination = %datagram.destination, "udp send failed: dropped");
                }
                Ok(_) => {}
            }
            self.queue.pop_front();
        }
    }

    /// Whether datagrams wait for writability.
    pub fn is_waiting(&self) -> bool {
        !self.queue.is_empty()
    }
}

thread_local! {
    /// The datagram receive buffer of this thread (see [`with_recv_buffer`]).
    static RECV_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Run `f` with a [`MAX_DATAGRAM`](crate::dispatch::MAX_DATAGRAM)-byte receive buffer shared by every
/// node this thread runs: a runtime that runs many nodes on one thread (smol's executor) keeps one 64 KiB
/// buffer per thread instead of one per node (issue 11). The buffer is only lent for the call (reads are
/// synchronous); a nested call gets a buffer of its own.
pub fn with_recv_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut buf = RECV_BUFFER.try_with(Cell::take).unwrap_or_default();
    buf.resize(crate::dispatch::MAX_DATAGRAM, 0);
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

    #[test]
    fn one_receive_buffer_per_thread() {
        let first = with_recv_buffer(|b| (b.as_ptr() as usize, b.len()));
        let again = with_recv_buffer(|b| (b.as_ptr() as usize, b.len()));
        assert_eq!(first, again, "the thread's buffer is reused");
        assert_eq!(first.1, crate::dispatch::MAX_DATAGRAM);
        // A nested call (never made by the drivers) still gets a full buffer, not the lent one.
        let (outer, inner) = with_recv_buffer(|outer| {
            let inner = with_recv_buffer(|inner| (inner.as_ptr() as usize, inner.len()));
            (outer.as_ptr() as usize, inner)
        });
        assert_eq!(outer, first.0);
        assert_ne!(inner.0, outer);
        assert_eq!(inner.1, crate::dispatch::MAX_DATAGRAM);
        // Another thread has its own.
        let other = std::thread::spawn(|| with_recv_buffer(|b| b.as_ptr() as usize))
            .join()
            .unwrap();
        assert_ne!(other, first.0);
    }
}
