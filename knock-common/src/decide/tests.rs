extern crate std;

use std::vec::Vec;

use super::*;
use crate::{
    allow::AllowOrigin,
    event::EventKind,
    maps::port_flags,
    model::{Model, Packet, SEC},
    proto::tcp_flags,
};

const CLIENT: SourceKey = SourceKey::v4([10, 0, 0, 2]);

fn decide(m: &Model, parsed: Parsed<Packet>, clock: impl Fn() -> u64) -> Decision {
    super::decide(m, parsed, clock)
}

fn packet(proto: Proto, dport: u16, flags: u8) -> Parsed<Packet> {
    packet_from(40000, proto, dport, flags)
}

/// A packet with sequence number 0 and no data.
fn packet_from(sport: u16, proto: Proto, dport: u16, flags: u8) -> Parsed<Packet> {
    let tcp = if proto == Proto::Tcp { Segment::new(flags, 0, 0, 0) } else { Segment::default() };
    Parsed::Transport(Packet { src: CLIENT, proto, sport, dport, tcp, ..Packet::default() })
}

fn syn(dport: u16) -> Parsed<Packet> {
    packet(Proto::Tcp, dport, tcp_flags::SYN)
}

/// A TCP segment of the connection a SYN with ISN 0 opened: seq 1.
fn ack(dport: u16) -> Parsed<Packet> {
    let tcp = Segment::new(tcp_flags::ACK, 1, 1, 0);
    Parsed::Transport(Packet {
        src: CLIENT,
        proto: Proto::Tcp,
        sport: 40000,
        dport,
        tcp,
        ..Packet::default()
    })
}

fn model() -> Model {
    let mut m = Model::new();
    m.ports.insert(22, port_flags::PROTECTED_TCP);
    m
}

fn allow_until(m: &Model, deadline_ns: u64) {
    m.allow
        .borrow_mut()
        .insert(CLIENT, AllowEntry { deadline_ns, origin: AllowOrigin::Manual as u32, client: 0 });
}

#[test]
fn unrelated_ports_pass_without_reading_the_clock() {
    for flags in [tcp_flags::SYN, tcp_flags::ACK] {
        let d = decide(&model(), packet(Proto::Tcp, 80, flags), || panic!("clock read"));
        assert_eq!(d, Decision::new(XDP_PASS, Counter::Passed));
    }
    let d = decide(&model(), packet(Proto::Udp, 53, 0), || panic!("clock read"));
    assert_eq!(d, Decision::new(XDP_PASS, Counter::Passed));
}

#[test]
fn a_stranger_is_dropped_without_reading_the_clock() {
    let d = decide(&model(), syn(22), || panic!("clock read"));
    assert_eq!(d, Decision::new(XDP_DROP, Counter::DroppedProtected));
    let d = decide(&model(), packet(Proto::Tcp, 22, tcp_flags::ACK), || panic!("clock read"));
    assert_eq!(d, Decision::new(XDP_DROP, Counter::DroppedProtected));
}

#[test]
fn protection_is_per_protocol() {
    assert_eq!(decide(&model(), packet(Proto::Udp, 22, 0), || 0).action, XDP_PASS);
    assert_eq!(decide(&model(), syn(22), || 0).action, XDP_DROP);
}

#[test]
fn stranger_is_dropped_and_allowed_source_passes_until_its_deadline() {
    let m = model();
    assert_eq!(decide(&m, syn(22), || 5), Decision::new(XDP_DROP, Counter::DroppedProtected));
    allow_until(&m, 10);
    assert_eq!(decide(&m, syn(22), || 5), Decision::new(XDP_PASS, Counter::PassedAllowed));
    // A new connection once the deadline has passed.
    assert_eq!(
        decide(&m, packet_from(40001, Proto::Tcp, 22, tcp_flags::SYN), || 10),
        Decision::new(XDP_DROP, Counter::DroppedProtected)
    );
}

#[test]
fn an_ipv4_entry_does_not_admit_the_mapped_ipv6_source() {
    let m = model();
    allow_until(&m, u64::MAX);
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12..].copy_from_slice(&[10, 0, 0, 2]);
    let tcp = Segment::new(tcp_flags::SYN, 0, 0, 0);
    let pkt = Parsed::Transport(Packet {
        src: SourceKey::v6(mapped),
        proto: Proto::Tcp,
        sport: 40000,
        dport: 22,
        tcp,
        ..Packet::default()
    });
    assert_eq!(decide(&m, pkt, || 0).action, XDP_DROP);
}

#[test]
fn malformed_drops_and_unrelated_passes() {
    assert_eq!(decide(&model(), Parsed::Malformed, || 0).counter, Counter::DroppedMalformed);
    assert_eq!(decide(&model(), Parsed::Unrelated, || 0).action, XDP_PASS);
}

#[test]
fn knocks_pass_like_their_neighbours_and_open_the_door() {
    let mut m = model();
    m.knock_space(Proto::Tcp, 999, 2001);
    m.install(0, 7, 1, &[1000, 2000]);
    for port in [999, 1000, 2000, 2001] {
        assert_eq!(decide(&m, syn(port), || SEC).action, XDP_PASS, "port {port}");
    }
    // 999 reset nothing (no knock yet), 1000 and 2000 knocked, 2001 ended
    // the completed state: the door opened.
    assert!(m.saw(EventKind::Opened));
    assert_eq!(
        decide(&m, packet_from(40001, Proto::Tcp, 22, tcp_flags::SYN), || 2 * SEC).counter,
        Counter::PassedAllowed
    );
    // Past the open window new connections are dropped again.
    assert_eq!(
        decide(&m, packet_from(40002, Proto::Tcp, 22, tcp_flags::SYN), || 32 * SEC).counter,
        Counter::DroppedProtected
    );
}

#[test]
fn only_bare_syns_and_datagrams_knock() {
    let mut m = model();
    m.install(0, 7, 1, &[1000]);
    for flags in [
        tcp_flags::SYN | tcp_flags::ACK,
        tcp_flags::SYN | tcp_flags::RST,
        tcp_flags::SYN | tcp_flags::FIN,
        tcp_flags::ACK,
    ] {
        let d = decide(&m, packet(Proto::Tcp, 1000, flags), || SEC);
        assert_eq!(d, Decision::new(XDP_PASS, Counter::Passed), "flags {flags:#x}");
    }
    assert!(m.allow.borrow().is_empty());
    assert_eq!(decide(&m, syn(1000), || SEC), Decision::new(XDP_PASS, Counter::Knock));
    assert!(m.allowed_entry(CLIENT).is_some());
}

#[test]
fn only_attempts_in_the_knock_space_reset_a_knock() {
    let mut m = model();
    m.knock_space(Proto::Tcp, 1000, 3000);
    m.install(0, 7, 1, &[1000, 2000]);
    // A web request, a DNS query and the ACK of an open connection in
    // between: none of them is in the knock space.
    decide(&m, syn(1000), || SEC);
    decide(&m, syn(443), || SEC);
    decide(&m, packet(Proto::Udp, 53, 0), || SEC);
    decide(&m, packet(Proto::Udp, 1500, 0), || SEC);
    decide(&m, packet(Proto::Tcp, 1500, tcp_flags::ACK), || SEC);
    decide(&m, syn(2000), || SEC);
    assert!(m.allowed_entry(CLIENT).is_some());
    // A SYN to another port of the knock space does reset.
    m.allow.borrow_mut().clear();
    m.used.borrow_mut().clear();
    decide(&m, syn(1000), || 2 * SEC);
    decide(&m, syn(1500), || 2 * SEC);
    decide(&m, syn(2000), || 2 * SEC);
    assert!(m.allowed_entry(CLIENT).is_none());
    assert!(m.saw(EventKind::Reset));
}

#[test]
fn a_flow_outlives_the_window_while_it_is_active() {
    let m = model();
    allow_until(&m, 10 * SEC);
    assert_eq!(decide(&m, syn(22), || SEC).counter, Counter::PassedAllowed);
    // Past the window, the same connection goes on while it is active...
    for t in [20, 40, 60, 80] {
        assert_eq!(decide(&m, ack(22), || t * SEC).counter, Counter::PassedFlow, "at {t}s");
    }
    // ...but a new connection (another source port) is refused.
    assert_eq!(
        decide(&m, packet_from(40001, Proto::Tcp, 22, tcp_flags::SYN), || 81 * SEC).counter,
        Counter::DroppedProtected
    );
}

#[test]
fn a_flow_remembers_the_client_that_opened_it() {
    let mut m = model();
    m.install(0, 7, 1, &[1000]);
    decide(&m, syn(1000), || SEC);
    decide(&m, syn(22), || SEC);
    let flows = m.flows.borrow();
    assert_eq!(flows.values().map(|f| f.client).collect::<Vec<_>>(), [7]);
}

#[test]
fn an_idle_flow_expires() {
    let m = model();
    allow_until(&m, 10 * SEC);
    decide(&m, syn(22), || SEC);
    let idle = m.settings.idle_timeout_ns / SEC;
    assert_eq!(decide(&m, ack(22), || (idle + 2) * SEC).counter, Counter::DroppedProtected);
}

#[test]
fn an_exact_fin_or_rst_closes_a_flow_after_the_grace() {
    for end in [tcp_flags::FIN | tcp_flags::ACK, tcp_flags::RST] {
        let m = model();
        allow_until(&m, 10 * SEC);
        decide(&m, syn(22), || SEC);
        let fin = Parsed::Transport(Packet {
            src: CLIENT,
            proto: Proto::Tcp,
            sport: 40000,
            dport: 22,
            tcp: Segment::new(end, 1, 1, 0),
            ..Packet::default()
        });
        assert_eq!(decide(&m, fin, || 20 * SEC).counter, Counter::PassedFlow);
        // The closing handshake still passes...
        assert_eq!(decide(&m, ack(22), || 21 * SEC).counter, Counter::PassedFlow);
        // ...then the flow is gone for good, even for a new SYN on it.
        let after = 20 * SEC + m.settings.close_grace_ns;
        assert_eq!(decide(&m, ack(22), || after).counter, Counter::DroppedProtected);
        assert_eq!(decide(&m, syn(22), || after + SEC).counter, Counter::DroppedProtected);
    }
}

#[test]
fn a_spoofed_syn_on_a_live_flow_never_replaces_it() {
    let m = model();
    allow_until(&m, 10 * SEC);
    decide(&m, syn(22), || SEC);
    let before = *m.flows.borrow().values().next().unwrap();
    let spoofed = Parsed::Transport(Packet {
        src: CLIENT,
        proto: Proto::Tcp,
        sport: 40000,
        dport: 22,
        tcp: Segment::new(tcp_flags::SYN, 123_456, 0, 0),
        ..Packet::default()
    });
    // Within the open window it passes as a new attempt, but the flow stays.
    assert_eq!(decide(&m, spoofed.clone(), || 2 * SEC).counter, Counter::PassedAllowed);
    assert_eq!(*m.flows.borrow().values().next().unwrap(), before);
    // After it, it is dropped.
    assert_eq!(decide(&m, spoofed, || 20 * SEC).counter, Counter::DroppedProtected);
}

#[test]
fn udp_flows_work_like_tcp_ones() {
    let mut m = model();
    m.ports.insert(51820, port_flags::PROTECTED_UDP);
    allow_until(&m, 10 * SEC);
    let dgram = packet(Proto::Udp, 51820, 0);
    assert_eq!(decide(&m, dgram.clone(), || SEC).counter, Counter::PassedAllowed);
    assert_eq!(decide(&m, dgram, || 100 * SEC).counter, Counter::PassedFlow);
}

#[test]
fn always_allowed_networks_pass_by_longest_prefix() {
    let mut m = model();
    m.nets.push((SourceKey::v4([10, 0, 0, 0]), 8));
    assert_eq!(decide(&m, syn(22), || SEC).counter, Counter::PassedNetwork);
    // Its addresses can be forged: it opens no flow, so removing it ends
    // its connections at once.
    assert!(m.flows.borrow().is_empty());
    m.nets.clear();
    assert_eq!(decide(&m, syn(22), || SEC).counter, Counter::DroppedProtected);
    m.nets.push((SourceKey::v4([10, 0, 1, 0]), 24));
    assert_eq!(decide(&m, syn(22), || SEC).counter, Counter::DroppedProtected);
}
