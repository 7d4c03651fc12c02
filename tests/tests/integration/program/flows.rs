//! Flows through the program: a flow outlives its allow entry, FIN or RST
//! starts the close grace, and always-allowed networks by longest prefix.

use knock_common::{
    decide::{XDP_DROP, XDP_PASS},
    maps::Counter,
};
use knock_tests::{
    frames::{Frame, Proto},
    privileged,
};

use super::*;

#[test]
fn flows_and_always_allowed_networks_through_the_program() {
    if !privileged("flows_and_always_allowed_networks_through_the_program") {
        return;
    }
    let mut h = Harness::new();
    h.maps.set_settings(config(60_000_000_000, 50_000_000)).unwrap();
    // The client's own sequence numbers: its SYN is 1, so its next is 2,
    // and 3 after its FIN.
    let segment = |src: &str, sport: u16, flags: u8, seq: u32| {
        Frame {
            tcp_flags: flags,
            tcp_seq: seq,
            ..Frame::new(ip(src), ip(SERVER_V4), Proto::Tcp, PROTECTED_TCP)
        }
        .build_with_sport(sport)
    };
    let frame = |src: &str, sport: u16, flags: u8| segment(src, sport, flags, 2);
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN_ACK: u8 = 0x11;
    h.expect("allowed SYN", &segment(ALLOWED_V4, 41000, SYN, 1), XDP_PASS, Counter::PassedAllowed);
    // The allow entry goes; the connection does not.
    assert!(h.maps.revoke(&ip(ALLOWED_V4).into()).unwrap());
    h.expect("ACK on the flow", &frame(ALLOWED_V4, 41000, ACK), XDP_PASS, Counter::PassedFlow);
    h.expect("new connection", &frame(ALLOWED_V4, 41001, SYN), XDP_DROP, Counter::DroppedProtected);
    h.expect("client FIN", &frame(ALLOWED_V4, 41000, FIN_ACK), XDP_PASS, Counter::PassedFlow);
    let last_ack = segment(ALLOWED_V4, 41000, ACK, 3);
    h.expect("last ACK", &last_ack, XDP_PASS, Counter::PassedFlow);
    std::thread::sleep(std::time::Duration::from_millis(60));
    h.expect("after the close grace", &last_ack, XDP_DROP, Counter::DroppedProtected);

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
