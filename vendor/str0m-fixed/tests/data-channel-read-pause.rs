//! `Channel::set_read_paused` (pam-lite's patch): a receiver that stops reading leaves the data in
//! SCTP's receive buffer, so the sender is held back by the receive window (bounded memory on both
//! sides), and after resuming every message arrives, in order, without waiting for the sender's
//! backed-off zero-window probe.

use std::net::Ipv4Addr;
use std::time::Duration;

use str0m::{Event, RtcError};

mod common;
use common::{Peer, TestRtc, progress};
use common::{init_crypto_default, init_log};

const MSG: usize = 16 * 1024;

fn message(seq: u64) -> Vec<u8> {
    let mut m = vec![(seq % 251) as u8; MSG];
    m[..8].copy_from_slice(&seq.to_be_bytes());
    m
}

/// Sequence numbers of the channel data `r` received since event index `from`.
fn received(r: &TestRtc, from: usize) -> Vec<u64> {
    r.events[from..]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ChannelData(d) => {
                assert_eq!(d.data.len(), MSG);
                let seq = u64::from_be_bytes(d.data[..8].try_into().unwrap());
                assert_eq!(d.data, message(seq), "message {seq} intact");
                Some(seq)
            }
            _ => None,
        })
        .collect()
}

#[test]
pub fn paused_reader_holds_the_sender_back_and_loses_nothing() -> Result<(), RtcError> {
    init_log();
    init_crypto_default();

    let mut l = TestRtc::new(Peer::Left);
    let mut r = TestRtc::new(Peer::Right);
    l.add_host_candidate((Ipv4Addr::new(1, 1, 1, 1), 1000).into());
    r.add_host_candidate((Ipv4Addr::new(2, 2, 2, 2), 2000).into());

    let mut change = l.sdp_api();
    let cid = change.add_channel("pause".into());
    let (offer, pending) = change.apply().unwrap();
    let answer = r.rtc.sdp_api().accept_offer(offer)?;
    l.rtc.sdp_api().accept_answer(pending, answer)?;

    let rid = loop {
        progress(&mut l, &mut r)?;
        let open = r.events.iter().find_map(|(_, e)| match e {
            Event::ChannelOpen(id, _) => Some(*id),
            _ => None,
        });
        if let (Some(id), true) = (open, l.channel(cid).is_some()) {
            break id;
        }
        assert!(l.duration() < Duration::from_secs(10), "channel never opened");
    };

    r.channel(rid).unwrap().set_read_paused(true);
    assert!(r.channel(rid).unwrap().is_read_paused());
    let from = r.events.len();

    // The sender writes as fast as its channel accepts, for 30 s of virtual time.
    let mut next = 0u64;
    let stall_until = l.duration() + Duration::from_secs(30);
    while l.duration() < stall_until {
        while l.channel(cid).unwrap().write(true, &message(next))? {
            next += 1;
        }
        progress(&mut l, &mut r)?;
    }
    assert!(received(&r, from).is_empty(), "nothing delivered while paused");
    // What the sender could hand over is bounded by the receive window (1 MiB by default) plus
    // its own send buffer: it did not stream on for 30 s.
    let accepted = next as usize * MSG;
    assert!(accepted < 4 * 1024 * 1024, "sender not held back: {accepted} bytes accepted");
    assert!(accepted >= 512 * 1024, "the window was used: {accepted} bytes");

    // Resume: everything that waited arrives first, in order, and the flow restarts within a
    // few round trips (a window update, not a backed-off probe seconds later).
    r.channel(rid).unwrap().set_read_paused(false);
    let resumed_at = l.duration();
    let total = next + 256;
    let mut first_new_at = None;
    while (received(&r, from).len() as u64) < total {
        while next < total && l.channel(cid).unwrap().write(true, &message(next))? {
            next += 1;
        }
        progress(&mut l, &mut r)?;
        if first_new_at.is_none() && received(&r, from).len() * MSG > accepted + MSG {
            first_new_at = Some(l.duration() - resumed_at);
        }
        assert!(
            l.duration() - resumed_at < Duration::from_secs(20),
            "flow did not resume: {} of {total} received, {accepted} bytes accepted before",
            received(&r, from).len()
        );
    }
    assert_eq!(received(&r, from), (0..total).collect::<Vec<_>>());
    let restart = first_new_at.unwrap();
    assert!(restart < Duration::from_millis(500), "new data flowed after {restart:?}");
    Ok(())
}
