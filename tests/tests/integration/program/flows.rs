//! Flows through the program: a flow outlives its allow entry, a FIN or RST
//! at the client's next sequence number starts the close grace (timed on
//! the flow clock the program reads), and always-allowed networks match by
//! longest prefix.

use std::{thread, time::Duration};

use knock_common::{
    Proto,
    decide::{XDP_DROP, XDP_PASS},
    maps::Counter,
    proto::tcp_flags::{ACK, FIN, RST, SYN},
};
use knock_tests::{frames::Frame, privileged};
use knock_userspace::clock;

use super::*;

/// The close grace these tests set: long enough that the segment after
/// the FIN or RST is judged within it even on a busy machine (checked, not
/// assumed), short enough to wait out.
const GRACE_NS: u64 = 1_000_000_000;

/// A segment from `src:sport` to the protected TCP port.
fn segment(src: &str, sport: u16, flags: u8, seq: u32) -> Vec<u8> {
    Frame {
        tcp_flags: flags,
        tcp_seq: seq,
        ..Frame::new(ip(src), ip(SERVER_V4), Proto::Tcp, PROTECTED_TCP)
    }
    .build_with_sport(sport)
}

/// Sends `close` on a flow, then `next` within the close grace
/// (it passes) and again after it (it drops). The grace starts when the
/// program judges `close`, between the two clock readings around it.
fn closing(h: &mut Harness, what: &str, close: &[u8], next: &[u8]) {
    let before = clock::flow_ns();
    h.expect(what, close, XDP_PASS, Counter::PassedFlow);
    let after = clock::flow_ns();
    h.expect(&format!("{what}, then a segment"), next, XDP_PASS, Counter::PassedFlow);
    let judged = clock::flow_ns();
    assert!(
        judged < before + GRACE_NS,
        "{what}: the next segment was judged {} ms after it, past the grace: the machine stalled",
        (judged - before) / 1_000_000
    );
    // The grace ends at most GRACE_NS after `after`, on the program's clock.
    while clock::flow_ns() <= after + GRACE_NS {
        thread::sleep(Duration::from_millis(10));
    }
    h.expect(&format!("{what}, after the close grace"), next, XDP_DROP, Counter::DroppedProtected);
}

#[test]
fn a_flow_outlives_its_allow_entry_and_a_fin_or_rst_ends_it() {
    if !privileged("a_flow_outlives_its_allow_entry_and_a_fin_or_rst_ends_it") {
        return;
    }
    let mut h = Harness::new();
    h.maps.set_settings(config(60_000_000_000, GRACE_NS)).unwrap();
    // The client's own sequence numbers: its SYN is 1, so its next is 2,
    // and 3 after its FIN.
    for sport in [41000, 41002] {
        h.expect(
            "allowed SYN",
            &segment(ALLOWED_V4, sport, SYN, 1),
            XDP_PASS,
            Counter::PassedAllowed,
        );
    }
    // The allow entry goes; the connections do not.
    assert!(h.maps.revoke(&ip(ALLOWED_V4).into()).unwrap());
    h.expect("ACK on the flow", &segment(ALLOWED_V4, 41000, ACK, 2), XDP_PASS, Counter::PassedFlow);
    h.expect(
        "new connection",
        &segment(ALLOWED_V4, 41001, SYN, 2),
        XDP_DROP,
        Counter::DroppedProtected,
    );

    // A FIN+ACK at the client's next number; its last ACK follows.
    let (fin, last_ack) =
        (segment(ALLOWED_V4, 41000, FIN | ACK, 2), segment(ALLOWED_V4, 41000, ACK, 3));
    closing(&mut h, "client FIN", &fin, &last_ack);

    // A RST at any other number passes (the kernel judges it) but closes
    // nothing: past a whole grace the flow still passes...
    let ack = segment(ALLOWED_V4, 41002, ACK, 2);
    h.expect(
        "RST off the client's numbers",
        &segment(ALLOWED_V4, 41002, RST, 999),
        XDP_PASS,
        Counter::PassedFlow,
    );
    let waited = clock::flow_ns() + GRACE_NS;
    while clock::flow_ns() <= waited {
        thread::sleep(Duration::from_millis(10));
    }
    h.expect("after a RST that did not count", &ack, XDP_PASS, Counter::PassedFlow);
    // ...while one at the client's next number ends it after the grace.
    closing(&mut h, "client RST", &segment(ALLOWED_V4, 41002, RST, 2), &ack);
}

#[test]
fn always_allowed_networks_by_longest_prefix_per_family() {
    if !privileged("always_allowed_networks_by_longest_prefix_per_family") {
        return;
    }
    let mut h = Harness::new();
    let frame = |src: &str, sport: u16, flags: u8| segment(src, sport, flags, 2);
    // Always-allowed networks, by longest prefix and per family.
    let nets = ["192.0.2.0/28".parse().unwrap(), "2001:db8::/126".parse().unwrap()].into();
    h.maps.set_allowed_nets(&Default::default(), &nets).unwrap();
    h.expect(
        "in the v4 network",
        &frame(STRANGER_V4, 42000, SYN),
        XDP_PASS,
        Counter::PassedNetwork,
    );
    let outside = Frame::new(ip("192.0.2.200"), ip(SERVER_V4), Proto::Tcp, PROTECTED_TCP).build();
    h.expect("outside the v4 network", &outside, XDP_DROP, Counter::DroppedProtected);
    let v6 = |src: &str| Frame::new(ip(src), ip(SERVER_V6), Proto::Tcp, PROTECTED_TCP).build();
    h.expect("in the v6 network", &v6("2001:db8::2"), XDP_PASS, Counter::PassedNetwork);
    h.expect("outside the v6 network", &v6(STRANGER_V6), XDP_DROP, Counter::DroppedProtected);
    let mapped = "::ffff:192.0.2.1";
    h.expect("v4-mapped v6 source", &v6(mapped), XDP_DROP, Counter::DroppedProtected);
    h.maps.set_allowed_nets(&nets, &Default::default()).unwrap();
    h.expect(
        "after revoking the network",
        &frame(STRANGER_V4, 42001, SYN),
        XDP_DROP,
        Counter::DroppedProtected,
    );
}

#[test]
fn forged_sources_of_an_allowed_network_evict_no_session() {
    if !privileged("forged_sources_of_an_allowed_network_evict_no_session") {
        return;
    }
    let mut h = Harness::new();
    h.maps.set_settings(config(60_000_000_000, GRACE_NS)).unwrap();
    h.expect("allowed SYN", &segment(ALLOWED_V4, 41000, SYN, 1), XDP_PASS, Counter::PassedAllowed);
    // The session now rests on its flow alone.
    assert!(h.maps.revoke(&ip(ALLOWED_V4).into()).unwrap());
    let nets = ["198.18.0.0/15".parse().unwrap()].into();
    h.maps.set_allowed_nets(&Default::default(), &nets).unwrap();
    // More forged 4-tuples from the network than the flow map holds.
    let forged = knock_common::maps::FLOWS_MAX_ENTRIES + 4096;
    for i in 0..forged {
        let src = std::net::Ipv4Addr::from(0xc612_0000 + i / 16).to_string();
        let frame = segment(&src, 1024 + (i % 16) as u16, SYN, i);
        let (action, counter) = testrun::run_frame(&mut h.ebpf, &h.maps, &frame);
        assert_eq!((action, counter), (XDP_PASS, Counter::PassedNetwork), "forged SYN {i}");
    }
    let flows = h.maps.flows().unwrap();
    assert_eq!(flows.len(), 1, "the network opened flows: {} in the map", flows.len());
    h.expect(
        "the session after the flood",
        &segment(ALLOWED_V4, 41000, ACK, 2),
        XDP_PASS,
        Counter::PassedFlow,
    );
}

#[test]
fn a_forged_ip_length_moves_no_flow() {
    if !privileged("a_forged_ip_length_moves_no_flow") {
        return;
    }
    let mut h = Harness::new();
    h.maps.set_settings(config(60_000_000_000, GRACE_NS)).unwrap();
    h.expect("allowed SYN", &segment(ALLOWED_V4, 41000, SYN, 1), XDP_PASS, Counter::PassedAllowed);
    // An ACK at the client's next number claiming 64 KiB of data that the
    // frame does not hold (IPv4 total length at byte 16 of the frame), and
    // a first fragment whose IP packet ends inside the TCP header.
    let mut long = segment(ALLOWED_V4, 41000, ACK, 2);
    long[16..18].copy_from_slice(&u16::MAX.to_be_bytes());
    h.expect("IP length past the frame", &long, XDP_DROP, Counter::DroppedMalformed);
    let mut tiny = segment(ALLOWED_V4, 41000, ACK, 2);
    tiny[16..18].copy_from_slice(&(20u16 + 8).to_be_bytes());
    tiny[20] |= 0x20; // more fragments
    h.expect("tiny first fragment", &tiny, XDP_DROP, Counter::DroppedMalformed);
    let flows = h.maps.flows().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].1.next_seq, 2, "a dropped frame moved the flow");
    h.expect(
        "the client's ACK",
        &segment(ALLOWED_V4, 41000, ACK, 2),
        XDP_PASS,
        Counter::PassedFlow,
    );
    // A length of 0 (a GRO packet past 64 KiB) ends with the frame.
    let mut merged = segment(ALLOWED_V4, 41000, ACK, 2);
    merged[16..18].copy_from_slice(&0u16.to_be_bytes());
    h.expect("IP length 0", &merged, XDP_PASS, Counter::PassedFlow);
}
