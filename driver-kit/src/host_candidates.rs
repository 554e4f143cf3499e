//! Which of the machine's addresses a socket bound to all interfaces (`0.0.0.0:0` / `[::]:0`) announces as
//! its ICE host candidates.
//!
//! A gateway on another host can only answer to an address it can route to: a loopback candidate is
//! useless there, so a node bound to all interfaces announces every address of an interface that is up,
//! except loopback (and IPv6 link-local, which needs a scope id the SDP candidate line cannot carry
//! usefully). Only addresses of the socket's own family are taken: a `0.0.0.0` socket cannot send from an
//! IPv6 address, and [`crate::udp::Addressing`] refuses a candidate of the other family. When the machine
//! has no such address at all (a namespace with only `lo`, a laptop offline) the loopback address is
//! announced instead, so local launches keep working.
//!
//! The choice ([`select`]) is a pure function over an address list, so it is tested with injected lists;
//! [`interface_ips`] feeds it the real list from `getifaddrs` (crate `if-addrs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One address of one interface, as the selection needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub ip: IpAddr,
    /// The interface is operationally up (IFF_RUNNING on Unix).
    pub up: bool,
}

/// The IPs to announce for a socket bound to `bound` (unspecified), in announcement order: IPv4 before
/// IPv6, otherwise in the order the system listed them, without duplicates; the family's loopback address
/// when nothing else fits (never empty).
pub fn select(bound: SocketAddr, found: &[InterfaceAddr]) -> Vec<IpAddr> {
    let mut chosen: Vec<IpAddr> = Vec::new();
    let usable = found.iter().filter(|a| {
        a.up && !a.ip.is_loopback()
            && !a.ip.is_unspecified()
            && !a.ip.is_multicast()
            && a.ip.is_ipv4() == bound.is_ipv4()
            && !is_ipv6_link_local(a.ip)
    });
    // IPv4 first: the family filter makes this a no-op today, but keeps the order stated above if a
    // dual-stack socket ever announces both.
    for a in usable
        .clone()
        .filter(|a| a.ip.is_ipv4())
        .chain(usable.filter(|a| a.ip.is_ipv6()))
    {
        if !chosen.contains(&a.ip) {
            chosen.push(a.ip);
        }
    }
    if chosen.is_empty() {
        chosen.push(if bound.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        });
    }
    chosen
}

/// fe80::/10 (std's `is_unicast_link_local` is not stable everywhere we build).
fn is_ipv6_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The machine's interface addresses (`getifaddrs`), reduced by [`select`] for a socket bound to `bound`.
/// If the system cannot list its interfaces, that is logged and the loopback address is announced.
pub fn interface_ips(bound: SocketAddr) -> Vec<IpAddr> {
    let found = match if_addrs::get_if_addrs() {
        Ok(list) => list
            .iter()
            .map(|i| InterfaceAddr {
                ip: i.ip(),
                up: i.is_oper_up(),
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not list network interfaces: announcing loopback only");
            Vec::new()
        }
    };
    let chosen = select(bound, &found);
    if chosen.iter().all(IpAddr::is_loopback) {
        tracing::warn!(
            "no network interface other than loopback is up: only local gateways can be reached"
        );
    }
    chosen
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn up(s: &str) -> InterfaceAddr {
        InterfaceAddr {
            ip: s.parse().unwrap(),
            up: true,
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    const V4_ANY: &str = "0.0.0.0:0";
    const V6_ANY: &str = "[::]:0";

    #[test]
    fn loopback_down_and_other_family_are_left_out() {
        let found = [
            up("127.0.0.1"),
            up("10.0.0.5"),
            InterfaceAddr {
                ip: "192.168.1.9".parse().unwrap(),
                up: false,
            },
            up("2001:db8::5"),
            up("198.51.100.7"),
        ];
        assert_eq!(
            select(V4_ANY.parse().unwrap(), &found),
            ips(&["10.0.0.5", "198.51.100.7"])
        );
    }

    #[test]
    fn ipv6_socket_skips_link_local_and_ipv4() {
        let found = [
            up("::1"),
            up("fe80::1"),
            up("febf::2"),
            up("10.0.0.5"),
            up("2001:db8::5"),
        ];
        assert_eq!(
            select(V6_ANY.parse().unwrap(), &found),
            ips(&["2001:db8::5"])
        );
    }

    #[test]
    fn duplicates_are_announced_once_in_system_order() {
        let found = [up("10.0.0.5"), up("172.16.0.1"), up("10.0.0.5")];
        assert_eq!(
            select(V4_ANY.parse().unwrap(), &found),
            ips(&["10.0.0.5", "172.16.0.1"])
        );
    }

    #[test]
    fn nothing_but_loopback_falls_back_to_loopback() {
        assert_eq!(
            select(V4_ANY.parse().unwrap(), &[up("127.0.0.1")]),
            ips(&["127.0.0.1"])
        );
        assert_eq!(select(V4_ANY.parse().unwrap(), &[]), ips(&["127.0.0.1"]));
        assert_eq!(
            select(V6_ANY.parse().unwrap(), &[up("fe80::1")]),
            ips(&["::1"])
        );
    }

    #[test]
    fn the_real_list_is_never_empty_and_fits_the_family() {
        let v4 = interface_ips(V4_ANY.parse().unwrap());
        assert!(!v4.is_empty());
        assert!(v4.iter().all(IpAddr::is_ipv4));
    }
}
