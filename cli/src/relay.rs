//! From a ticket's `relay_host` / `turn` (or `KRELAY_URL`) and the relay flags to the core's
//! [`RelayPlan`]: the only place the CLI resolves the relay's name (the core never does DNS).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::Duration;

use pam_lite_core::relay::{IcePolicy, RelayPlan, TurnEndpoint, TurnTransport};
use pam_lite_core::text::sanitize_max;

use crate::args::{CommonArgs, RelayTransport};
use crate::settings::EnvSettings;
use crate::ticket::Ticket;

/// Keeper's krelay (and coturn's default) STUN/TURN port.
pub const RELAY_PORT: u16 = 3478;
/// `turns:` (TURN over TLS).
pub const RELAY_TLS_PORT: u16 = 5349;
/// The bound on resolving the relay's name. A resolver that hangs must not hold a launch that can go
/// direct; past this the launch goes on without relays (and says so).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The plan for this launch. Resolution failures are logged and leave the plan without servers (the
/// launch may still connect directly; with `--relay-only` it then fails with exit 13).
pub fn relay_plan(ticket: &Ticket, env: &EnvSettings, common: &CommonArgs) -> RelayPlan {
    let policy = if common.relay_only {
        IcePolicy::RelayOnly
    } else if common.no_relay {
        IcePolicy::NoRelay
    } else {
        IcePolicy::All
    };
    let mut plan = RelayPlan {
        policy,
        credentials: ticket.turn.clone(),
        ..RelayPlan::default()
    };
    let Some(host) = env.relay_host.as_deref().or(ticket.relay_host.as_deref()) else {
        if policy == IcePolicy::RelayOnly {
            tracing::warn!(
                "--relay-only, but the ticket has no relay_host and KRELAY_URL is not set"
            );
        }
        return plan;
    };
    let tls = common.relay_transport == RelayTransport::Tls;
    let default_port = if tls { RELAY_TLS_PORT } else { RELAY_PORT };
    let (name, port) = split_host_port(host, default_port);
    let addrs = match resolve(&name, port) {
        Ok(a) => a,
        Err(why) => {
            tracing::warn!(
                host = %sanitize_max(&name, 100),
                "cannot resolve the relay host ({why}): no STUN/TURN for this launch"
            );
            return plan;
        }
    };
    let transport = match common.relay_transport {
        RelayTransport::Auto => TurnTransport::Udp,
        RelayTransport::Tcp => TurnTransport::Tcp,
        RelayTransport::Tls => TurnTransport::Tls,
    };
    for addr in addrs {
        if !tls && !plan.stun.contains(&addr) {
            plan.stun.push(addr);
        }
        plan.turn.push(TurnEndpoint {
            addr,
            name: name.clone(),
            transport,
        });
    }
    tracing::debug!(relay = %sanitize_max(&name, 100), ?plan.stun, policy = ?plan.policy, "relay plan");
    plan
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
pub(crate) fn split_host_port(host: &str, default_port: u16) -> (String, u16) {
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return (addr.ip().to_string(), addr.port());
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return (host.to_string(), default_port);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse::<u16>() {
            Ok(p) if p != 0 => (name.to_string(), p),
            _ => (host.to_string(), default_port),
        },
        _ => (host.to_string(), default_port),
    }
}

/// Resolve on a helper thread, bounded by [`RESOLVE_TIMEOUT`]; the first IPv4 and first IPv6 address.
pub(crate) fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = mpsc::channel();
    let query = (name.to_string(), port);
    std::thread::Builder::new()
        .name("relay-dns".into())
        .spawn(move || {
            let _ = tx.send(query.to_socket_addrs().map(Iterator::collect::<Vec<_>>));
        })
        .map_err(|e| e.to_string())?;
    let all = match rx.recv_timeout(RESOLVE_TIMEOUT) {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {RESOLVE_TIMEOUT:?}")),
    };
    let v4 = all.iter().find(|a| a.is_ipv4()).copied();
    let v6 = all.iter().find(|a| a.is_ipv6()).copied();
    let picked: Vec<SocketAddr> = v4.into_iter().chain(v6).collect();
    if picked.is_empty() {
        return Err("no address".into());
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_forms() {
        assert_eq!(
            split_host_port("krelay.keepersecurity.com", 3478),
            ("krelay.keepersecurity.com".into(), 3478)
        );
        assert_eq!(
            split_host_port("198.18.0.11:3479", 3478),
            ("198.18.0.11".into(), 3479)
        );
        assert_eq!(
            split_host_port("relay.test:5349", 3478),
            ("relay.test".into(), 5349)
        );
        assert_eq!(split_host_port("fd00::1", 3478), ("fd00::1".into(), 3478));
        assert_eq!(split_host_port("[fd00::1]:9", 3478), ("fd00::1".into(), 9));
        assert_eq!(
            split_host_port("relay.test:0", 3478),
            ("relay.test:0".into(), 3478)
        );
    }

    #[test]
    fn addresses_resolve_without_dns_and_bad_names_fail_with_a_reason() {
        assert_eq!(
            resolve("127.0.0.1", 3478).unwrap(),
            vec!["127.0.0.1:3478".parse().unwrap()]
        );
        assert!(resolve("no-such-host.invalid", 3478).is_err());
    }
}
