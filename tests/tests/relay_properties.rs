//! Launches across NATs and a TURN server (issue 9): the simulation puts each node behind a NAT of some
//! kind (or none), runs a real TURN/STUN server (turn-server-proto) that may be up, down, or refuse the
//! client's credentials, and lets the client ask for `--relay-only`. A small reference model says
//! whether any ICE path exists; the property is "a path exists ⇒ the launch connects within its bound
//! and data flows both ways; no path ⇒ it fails with `NoPath` (exit 13), within its bound". Half the
//! cases impair every link (loss, duplication, jitter); there a launch with a path may also run out of
//! time (a clear failure, rare: DTLS and SCTP back off), but never claim there is no path.
//!
//! The reference model (`expected`), per candidate pair kind:
//! * **direct** (host/server-reflexive both sides; not with `--relay-only`): no UDP-blocked side; one
//!   side without NAT always works (the other side's checks open its own NAT, the public side answers the
//!   peer-reflexive source); both behind NAT needs the STUN server (reflexive addresses) and
//!   endpoint-independent mapping on both, or a symmetric side facing an endpoint-independent one whose
//!   filtering is not address-and-port-dependent (the symmetric side's fresh port is then let in);
//! * **client relay ↔ gateway** (the client's allocation, over UDP or the TCP fallback): the server is
//!   up, the client's credentials are right, and the gateway's UDP is not blocked (its checks to the
//!   relay address open its own NAT; the server lets them in by the IP of the gateway's candidates);
//! * **client ↔ gateway relay** (the gateway's allocation): the server is up, the client's UDP is not
//!   blocked and the client is not relay-only (a relay-only client has no candidate to pair with it);
//! * **relay ↔ relay** on the one server: never — coturn refuses a permission for its own relay
//!   addresses (403, seen in the NAT lab), and so does the simulated server.

use std::time::Duration;

use pam_lite_core::profile::Profile;
use pam_lite_core::relay::IcePolicy;
use pam_lite_core::{Command, LaunchError};
use pam_lite_tests::scenario::{RelaySetup, Scenario};
use pam_lite_tests::sim::nat::{Filtering, Mapping, NatConfig};
use pam_lite_tests::sim::Sim;
use proptest::prelude::*;

/// A launch must be over (ready, or failed) within this: the fast profile's connect bound plus the
/// gathering bound and signaling, with room.
const BOUND: Duration = Duration::from_secs(45);

/// The TURN server, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Up,
    Down,
    WrongCredentials,
}

#[derive(Debug, Clone)]
struct Case {
    client: Option<NatConfig>,
    gateway: Option<NatConfig>,
    turn: Turn,
    policy: IcePolicy,
    seed: u64,
    /// The client's TURN credentials come from the router (`relay_access_creds`), not its ticket.
    from_router: bool,
    /// Loss, duplication and jitter on every link (peer and relay), in per mille and milliseconds.
    loss_permille: u32,
    dup_permille: u32,
    jitter_ms: u64,
}

fn blocked(n: Option<NatConfig>) -> bool {
    n.is_some_and(|n| n.udp_blocked)
}

/// The reference model: the kind of path expected to work, or `None`.
fn expected(c: &Case) -> Option<&'static str> {
    let server_up = c.turn != Turn::Down;
    let direct = c.policy == IcePolicy::All
        && !blocked(c.client)
        && !blocked(c.gateway)
        && match (c.client, c.gateway) {
            (None, _) | (_, None) => true,
            (Some(a), Some(b)) => {
                use Mapping::*;
                server_up
                    && match (a.mapping, b.mapping) {
                        (EndpointIndependent, EndpointIndependent) => true,
                        (AddressAndPortDependent, AddressAndPortDependent) => false,
                        (EndpointIndependent, AddressAndPortDependent) => {
                            a.filtering != Filtering::AddressAndPortDependent
                        }
                        (AddressAndPortDependent, EndpointIndependent) => {
                            b.filtering != Filtering::AddressAndPortDependent
                        }
                    }
            }
        };
    let client_relay = server_up && c.turn != Turn::WrongCredentials && !blocked(c.gateway);
    let gateway_relay = server_up && c.policy == IcePolicy::All && !blocked(c.client);
    if direct {
        Some("direct")
    } else if client_relay {
        Some("the client's relay")
    } else if gateway_relay {
        Some("the gateway's relay")
    } else {
        None
    }
}

fn build(c: &Case) -> Sim {
    build_with(c, Profile::fast())
}

fn build_with(c: &Case, profile: Profile) -> Sim {
    let mut s = Scenario::new(profile);
    s.seed = c.seed;
    s.extra_candidates = 0;
    s.net.client_nat = c.client;
    s.net.gateway_nat = c.gateway;
    s.net.turn_up = c.turn != Turn::Down;
    for link in [&mut s.net.peer_link, &mut s.net.relay_link] {
        link.loss = f64::from(c.loss_permille) / 1000.0;
        link.duplicate = f64::from(c.dup_permille) / 1000.0;
        link.jitter = Duration::from_millis(c.jitter_ms);
    }
    s.relay = Some(RelaySetup {
        client_policy: c.policy,
        client_credentials_ok: c.turn != Turn::WrongCredentials,
        credentials_from_router: c.from_router,
    });
    s.build(pam_lite_dev_clock::origin())
}

/// Run one case and check it against the model; `Err` explains a mismatch.
fn check(c: &Case) -> Result<(), String> {
    let mut sim = build(c);
    let start = sim.start;
    sim.run_until(BOUND, |x| x.record.tube_ready_at.is_some());
    let want = expected(c);
    let show = |sim: &Sim| {
        format!(
            "{c:?}: model says {want:?}; relayed {} datagrams, NATs dropped {}, 403s {}\n\
             peer requests {:?}\ngateway got {:?}\n{}",
            sim.turn.relayed,
            sim.record.nat_dropped,
            sim.turn.refused_self,
            sim.turn.peer_requests,
            sim.gateway.received_candidates(),
            sim.snapshot()
        )
    };
    match want {
        Some(_) => {
            if sim.record.tube_ready_at.is_none() {
                // On a lossy link a launch may run out of time (DTLS and SCTP back off): that is a clear
                // failure, and allowed. Saying "no path" (or blaming the credentials) is not.
                let impaired = c.loss_permille > 0 || c.dup_permille > 0;
                let timed_out = matches!(
                    &sim.record.finished,
                    Some(Err(e)) if !matches!(e, LaunchError::NoPath(_))
                );
                if impaired && timed_out {
                    return Ok(());
                }
                return Err(format!("no tube within {BOUND:?}: {}", show(&sim)));
            }
            // Data flows both ways: the gateway's target echoes what the client sends.
            let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
            let now = sim.now;
            sim.command_at(now, Command::OpenConnection { conn: 1 });
            sim.command_at(
                now,
                Command::Send {
                    conn: 1,
                    data: data.clone(),
                },
            );
            let until = sim.now.saturating_duration_since(start) + Duration::from_secs(20);
            sim.run_until(until, |x| {
                x.record
                    .received
                    .get(&1)
                    .is_some_and(|d| d.len() >= data.len())
            });
            let got = sim.record.received.get(&1).cloned().unwrap_or_default();
            if got != data {
                return Err(format!(
                    "connected, but {} of {} bytes came back: {}",
                    got.len(),
                    data.len(),
                    show(&sim)
                ));
            }
            if c.policy == IcePolicy::RelayOnly && sim.turn.relayed == 0 {
                return Err(format!(
                    "relay-only, yet nothing was relayed: {}",
                    show(&sim)
                ));
            }
            Ok(())
        }
        None => match &sim.record.finished {
            Some(Err(e @ LaunchError::NoPath(_))) => {
                let code = pam_lite_tests::exit_codes::launch_exit_code(e);
                if code != 13 {
                    return Err(format!("NoPath with exit {code}: {}", show(&sim)));
                }
                Ok(())
            }
            _ => Err(format!("expected NoPath within {BOUND:?}: {}", show(&sim))),
        },
    }
}

fn nat() -> impl Strategy<Value = Option<NatConfig>> {
    let mapping = prop_oneof![
        Just(Mapping::EndpointIndependent),
        Just(Mapping::AddressAndPortDependent)
    ];
    let filtering = prop_oneof![
        Just(Filtering::EndpointIndependent),
        Just(Filtering::AddressDependent),
        Just(Filtering::AddressAndPortDependent)
    ];
    prop_oneof![
        2 => Just(None),
        6 => (mapping, filtering).prop_map(|(mapping, filtering)| Some(NatConfig {
            mapping,
            filtering,
            udp_blocked: false
        })),
        1 => Just(Some(NatConfig::UDP_BLOCKED)),
    ]
}

prop_compose! {
    fn case()(client in nat(), gateway in nat(),
              turn in prop_oneof![4 => Just(Turn::Up), 1 => Just(Turn::Down), 1 => Just(Turn::WrongCredentials)],
              relay_only in proptest::bool::weighted(0.25), seed in any::<u64>(), from_router in any::<bool>(),
              impaired in proptest::bool::weighted(0.5), loss_permille in 0u32..50,
              dup_permille in 0u32..50, jitter_ms in 0u64..20) -> Case {
        let policy = if relay_only { IcePolicy::RelayOnly } else { IcePolicy::All };
        let (loss_permille, dup_permille, jitter_ms) =
            if impaired { (loss_permille, dup_permille, jitter_ms) } else { (0, 0, 0) };
        Case { client, gateway, turn, policy, seed, from_router, loss_permille, dup_permille, jitter_ms }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// When any path exists the launch connects within its bound and data flows; when none does, it
    /// fails with `NoPath` (exit 13) within its bound.
    #[test]
    fn connects_when_a_path_exists_and_fails_clearly_when_none_does(c in case()) {
        if let Err(why) = check(&c) {
            prop_assert!(false, "{}", why);
        }
    }
}

fn case_of(
    client: Option<NatConfig>,
    gateway: Option<NatConfig>,
    turn: Turn,
    policy: IcePolicy,
) -> Case {
    Case {
        client,
        gateway,
        turn,
        policy,
        seed: 7,
        from_router: false,
        loss_permille: 0,
        dup_permille: 0,
        jitter_ms: 0,
    }
}

fn assert_case(c: Case) {
    if let Err(why) = check(&c) {
        panic!("{why}");
    }
}

// The NAT lab's scenarios, by name (tests/netlab/run.sh), so each one's outcome is visible on its own.

#[test]
fn both_nats_endpoint_independent_connect_server_reflexive() {
    let c = case_of(
        Some(NatConfig::EASY),
        Some(NatConfig::EASY),
        Turn::Up,
        IcePolicy::All,
    );
    assert_eq!(expected(&c), Some("direct"));
    assert_case(c);
}

#[test]
fn relay_only_goes_through_the_turn_server_although_a_direct_path_exists() {
    let c = case_of(None, None, Turn::Up, IcePolicy::RelayOnly);
    assert_eq!(expected(&c), Some("the client's relay"));
    assert_case(c);
}

#[test]
fn turn_down_with_a_direct_path_still_connects() {
    assert_case(case_of(
        Some(NatConfig::SYMMETRIC),
        None,
        Turn::Down,
        IcePolicy::All,
    ));
}

#[test]
fn wrong_credentials_relay_only_behind_symmetric_nat_is_no_path() {
    let c = case_of(
        Some(NatConfig::SYMMETRIC),
        Some(NatConfig::SYMMETRIC),
        Turn::WrongCredentials,
        IcePolicy::RelayOnly,
    );
    assert_eq!(expected(&c), None);
    assert_case(c);
}

#[test]
fn both_behind_symmetric_nat_without_relay_is_no_path() {
    let c = case_of(
        Some(NatConfig::SYMMETRIC),
        Some(NatConfig::SYMMETRIC),
        Turn::Down,
        IcePolicy::All,
    );
    assert_eq!(expected(&c), None);
    assert_case(c);
}

#[test]
fn both_nats_symmetric_connect_through_the_relay() {
    let c = case_of(
        Some(NatConfig::SYMMETRIC),
        Some(NatConfig::SYMMETRIC),
        Turn::Up,
        IcePolicy::All,
    );
    assert_eq!(expected(&c), Some("the client's relay"));
    assert_case(c);
}

/// The NAT lab's set-up exactly: the router hands out the TURN credentials (`relay_access_creds`).
#[test]
fn both_nats_symmetric_with_credentials_from_the_router_connect_through_the_relay() {
    for profile in [Profile::fast(), Profile::commander_1984()] {
        let mut c = case_of(
            Some(NatConfig::SYMMETRIC),
            Some(NatConfig::SYMMETRIC),
            Turn::Up,
            IcePolicy::All,
        );
        c.from_router = true;
        let mut sim = build_with(&c, profile);
        sim.run_until(BOUND, |x| x.record.tube_ready_at.is_some());
        assert!(sim.ready_ms().is_some(), "{}", sim.snapshot());
        assert!(sim.turn.relayed > 0);
    }
}

#[test]
fn udp_blocked_at_the_client_connects_through_turn_over_tcp() {
    let c = case_of(
        Some(NatConfig::UDP_BLOCKED),
        Some(NatConfig::SYMMETRIC),
        Turn::Up,
        IcePolicy::All,
    );
    assert_eq!(expected(&c), Some("the client's relay"));
    assert_case(c);
}
