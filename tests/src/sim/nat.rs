//! A NAT in front of one simulated host (RFC 4787 vocabulary): how it maps a private source to a public
//! port, which inbound datagrams it lets through, or whether it drops UDP altogether. TCP (a TURN stream)
//! always goes out: the connection's own replies come back.
//!
//! * mapping: **endpoint-independent** (one public port per private socket, whatever the destination: a
//!   STUN server's answer is the address peers can use) or **address-and-port-dependent** ("symmetric":
//!   a fresh public port per destination, so a peer sees a port no STUN server reported — a
//!   peer-reflexive candidate);
//! * filtering: inbound to a public port passes from anyone (**endpoint-independent**), from an IP the
//!   mapping has sent to (**address-dependent**), or from an exact address it has sent to
//!   (**address-and-port-dependent**).
//!
//! Public ports are a pure function of the mapping's key (FNV, then probing on a collision), never of the
//! order in which mappings were created: str0m's send order between flows is not stable across runs.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

/// How a NAT chooses the public port of an outbound datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    EndpointIndependent,
    /// "Symmetric": a fresh port per destination address and port.
    AddressAndPortDependent,
}

/// Which inbound datagrams a NAT lets through to a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

/// One NAT's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatConfig {
    pub mapping: Mapping,
    pub filtering: Filtering,
    /// Drop every UDP datagram both ways (TCP still goes out).
    pub udp_blocked: bool,
}

impl NatConfig {
    /// Endpoint-independent mapping and filtering (a "full cone").
    pub const EASY: NatConfig = NatConfig {
        mapping: Mapping::EndpointIndependent,
        filtering: Filtering::EndpointIndependent,
        udp_blocked: false,
    };
    /// Address-and-port-dependent mapping and filtering (a "symmetric" NAT, as in the NAT lab).
    pub const SYMMETRIC: NatConfig = NatConfig {
        mapping: Mapping::AddressAndPortDependent,
        filtering: Filtering::AddressAndPortDependent,
        udp_blocked: false,
    };
    /// Only TCP gets out.
    pub const UDP_BLOCKED: NatConfig = NatConfig {
        mapping: Mapping::EndpointIndependent,
        filtering: Filtering::AddressAndPortDependent,
        udp_blocked: true,
    };
}

#[derive(Debug)]
struct Binding {
    private: SocketAddr,
    /// Every destination this mapping sent to (what filtering checks inbound against).
    contacted: HashSet<SocketAddr>,
}

/// The state of one NAT.
#[derive(Debug)]
pub struct Nat {
    pub config: NatConfig,
    pub public_ip: IpAddr,
    /// (private source, destination for symmetric mapping) → public port.
    mappings: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    bindings: HashMap<u16, Binding>,
    /// Public ports of TCP connections (no UDP mapping takes them).
    tcp_ports: Vec<u16>,
    /// Datagrams the filter dropped (for diagnostics).
    pub filtered: u64,
    /// How often the NAT lost its state ([`Nat::rebind`]): part of every new mapping's port choice.
    rebinds: u32,
}

impl Nat {
    pub fn new(config: NatConfig, public_ip: IpAddr) -> Self {
        Nat {
            config,
            public_ip,
            mappings: HashMap::new(),
            bindings: HashMap::new(),
            tcp_ports: Vec::new(),
            filtered: 0,
            rebinds: 0,
        }
    }

    /// The public source of a UDP datagram from `private` to `to`; `None` when UDP is blocked.
    pub fn outbound(&mut self, private: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        if self.config.udp_blocked {
            return None;
        }
        let key = match self.config.mapping {
            Mapping::EndpointIndependent => (private, None),
            Mapping::AddressAndPortDependent => (private, Some(to)),
        };
        let port = match self.mappings.get(&key) {
            Some(&p) => p,
            None => {
                let p = self.free_port(&format!("udp {private} {:?} {}", key.1, self.rebinds));
                self.mappings.insert(key, p);
                self.bindings.insert(
                    p,
                    Binding {
                        private,
                        contacted: HashSet::new(),
                    },
                );
                p
            }
        };
        if let Some(b) = self.bindings.get_mut(&port) {
            b.contacted.insert(to);
        }
        Some(SocketAddr::new(self.public_ip, port))
    }

    /// The private destination of a UDP datagram from `from` to our public address `to`, if the filter
    /// lets it through.
    pub fn inbound(&mut self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        if self.config.udp_blocked || to.ip() != self.public_ip {
            return None;
        }
        let pass = self.bindings.get(&to.port()).and_then(|b| {
            let allowed = match self.config.filtering {
                Filtering::EndpointIndependent => true,
                Filtering::AddressDependent => b.contacted.iter().any(|c| c.ip() == from.ip()),
                Filtering::AddressAndPortDependent => b.contacted.contains(&from),
            };
            allowed.then_some(b.private)
        });
        if pass.is_none() {
            self.filtered += 1;
        }
        pass
    }

    /// The NAT loses every UDP mapping (a reboot, a conntrack flush, an idle timeout): the next datagram
    /// out gets a new public port, and nothing reaches the old ones.
    pub fn rebind(&mut self) {
        self.mappings.clear();
        self.bindings.clear();
        self.rebinds += 1;
    }

    /// The public address of a new outbound TCP connection (its replies always come back).
    pub fn tcp_public(&mut self, private: SocketAddr, stream: u32) -> SocketAddr {
        let port = self.free_port(&format!("tcp {private} {stream}"));
        self.tcp_ports.push(port);
        SocketAddr::new(self.public_ip, port)
    }

    fn free_port(&self, key: &str) -> u16 {
        let h = fnv(key);
        let taken = |p: u16| self.bindings.contains_key(&p) || self.tcp_ports.contains(&p);
        (0..40_000u64)
            .map(|i| 20_000 + ((h.wrapping_add(i)) % 40_000) as u16)
            .find(|&p| !taken(p))
            .unwrap_or(20_000)
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapping_and_filtering_behave_as_named() {
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        let private = a("10.0.0.1:5000");
        let (x, y) = (a("198.51.100.1:3478"), a("198.51.100.2:4000"));

        let mut eim = Nat::new(NatConfig::EASY, ip);
        let p1 = eim.outbound(private, x).unwrap();
        assert_eq!(eim.outbound(private, y), Some(p1), "EIM: one port");
        assert_eq!(
            eim.inbound(a("192.0.2.9:1"), p1),
            Some(private),
            "EIF: anyone"
        );

        let mut sym = Nat::new(NatConfig::SYMMETRIC, ip);
        let p1 = sym.outbound(private, x).unwrap();
        let p2 = sym.outbound(private, y).unwrap();
        assert_ne!(p1, p2, "symmetric: a port per destination");
        assert_eq!(sym.inbound(x, p1), Some(private));
        assert_eq!(sym.inbound(y, p1), None, "APDF: only the contacted address");
        assert_eq!(sym.inbound(a("198.51.100.1:9"), p1), None);

        let mut adf = Nat::new(
            NatConfig {
                filtering: Filtering::AddressDependent,
                ..NatConfig::EASY
            },
            ip,
        );
        let p = adf.outbound(private, x).unwrap();
        assert_eq!(adf.inbound(a("198.51.100.1:9"), p), Some(private));
        assert_eq!(adf.inbound(a("198.51.100.7:9"), p), None);

        let mut blocked = Nat::new(NatConfig::UDP_BLOCKED, ip);
        assert_eq!(blocked.outbound(private, x), None);
    }
}
