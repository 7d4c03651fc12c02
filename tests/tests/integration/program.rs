//! The XDP program through BPF_PROG_TEST_RUN: a table of crafted frames ×
//! (unprotected, protected, allowed, allowed-but-expired), asserting the
//! verdict and the counter each one moves.

use std::net::IpAddr;

use aya::Ebpf;
use aya::maps::{MapData, RingBuf};
use knock_common::{
    allow::AllowOrigin,
    decide::{XDP_DROP, XDP_PASS},
    event::{Event, EventKind},
    maps::{ALL_MAPS, Counter, MAP_EVENTS, Settings},
    trie::KnockTable,
};
use knock_tests::{
    frames::{self, Ext, Frame, Proto},
    privileged, testrun,
};
use knock_userspace::{
    clock, loader,
    maps::{self as kernel_maps, KernelMaps},
    ports::ProtoPort,
};

const SERVER_V4: &str = "192.0.2.1";
const ALLOWED_V4: &str = "192.0.2.10";
const EXPIRED_V4: &str = "192.0.2.11";
const STRANGER_V4: &str = "192.0.2.12";
const SERVER_V6: &str = "2001:db8::1";
const ALLOWED_V6: &str = "2001:db8::10";
const EXPIRED_V6: &str = "2001:db8::11";
const STRANGER_V6: &str = "2001:db8::12";

const PROTECTED_TCP: u16 = 22;
const PROTECTED_UDP: u16 = 51820;
const OPEN_PORT: u16 = 80;

fn config(idle_timeout_ns: u64, close_grace_ns: u64) -> Settings {
    Settings {
        open_window_ns: 30_000_000_000,
        knock_timeout_ns: 10_000_000_000,
        idle_timeout_ns,
        close_grace_ns,
        ..Settings::default()
    }
}

struct Harness {
    ebpf: Ebpf,
    maps: KernelMaps,
    table: KnockTable,
    events: RingBuf<MapData>,
}

impl Harness {
    fn new() -> Self {
        let mut ebpf = loader::load().expect("load the XDP program");
        let mut maps = KernelMaps::take(&mut ebpf).expect("maps");
        let events = RingBuf::try_from(ebpf.take_map(MAP_EVENTS).expect("EVENTS")).unwrap();
        let protected =
            [ProtoPort::new(Proto::Tcp, PROTECTED_TCP), ProtoPort::new(Proto::Udp, PROTECTED_UDP)]
                .into();
        maps.set_protected(&Default::default(), &protected).unwrap();
        // No idle time: flows never outlive their packet, so every frame of
        // the tables below is judged on its own (flows have their own test).
        maps.set_settings(config(0, 1)).unwrap();
        let later = clock::boot_ns() + 3_600_000_000_000;
        let earlier = clock::boot_ns().saturating_sub(1);
        for (addr, deadline) in
            [(ALLOWED_V4, later), (ALLOWED_V6, later), (EXPIRED_V4, earlier), (EXPIRED_V6, earlier)]
        {
            maps.allow(addr.parse().unwrap(), deadline).unwrap();
        }
        Self { ebpf, maps, table: KnockTable::new(), events }
    }

    /// Runs one frame; returns the verdict and the counter that moved.
    fn run(&mut self, frame: &[u8]) -> (u32, Counter) {
        testrun::run_frame(&mut self.ebpf, &self.maps, frame)
    }

    /// The events the program wrote since the last call.
    fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(bytemuck::pod_read_unaligned::<Event>(&item));
        }
        out
    }

    fn expect(&mut self, name: &str, frame: &[u8], verdict: u32, counter: Counter) {
        let (got_verdict, got_counter) = self.run(frame);
        assert_eq!(
            (verdict_name(got_verdict), got_counter),
            (verdict_name(verdict), counter),
            "case {name}"
        );
    }
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_PASS => "PASS",
        XDP_DROP => "DROP",
        _ => "OTHER",
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A frame shape: how the transport header is wrapped.
type Shape = (&'static str, fn(Frame) -> Frame);

fn v4_shapes() -> Vec<Shape> {
    vec![
        ("ipv4", |f| f),
        ("ipv4+options(4 words)", |f| Frame { ipv4_option_words: 4, ..f }),
        ("ipv4+options(max 10 words)", |f| Frame { ipv4_option_words: 10, ..f }),
        ("vlan/ipv4", |f| Frame { vlans: vec![100], ..f }),
        ("qinq/ipv4", |f| Frame { vlans: vec![10, 20], ..f }),
        ("qinq/ipv4+options", |f| Frame { vlans: vec![10, 20], ipv4_option_words: 3, ..f }),
    ]
}

fn v6_shapes() -> Vec<Shape> {
    vec![
        ("ipv6", |f| f),
        ("ipv6+hop", |f| Frame { ipv6_ext: vec![Ext::HopByHop], ..f }),
        ("ipv6+hop+routing+dst", |f| Frame {
            ipv6_ext: vec![Ext::HopByHop, Ext::Routing, Ext::DestOptions],
            ..f
        }),
        ("ipv6+first-fragment", |f| Frame { ipv6_ext: vec![Ext::Fragment { offset: 0 }], ..f }),
        ("ipv6+8 ext headers (the limit)", |f| Frame { ipv6_ext: vec![Ext::DestOptions; 8], ..f }),
        ("vlan/ipv6", |f| Frame { vlans: vec![7], ..f }),
        ("qinq/ipv6+hop", |f| Frame { vlans: vec![1, 2], ipv6_ext: vec![Ext::HopByHop], ..f }),
    ]
}

#[test]
fn object_exposes_the_expected_maps() {
    if !privileged("object_exposes_the_expected_maps") {
        return;
    }
    let ebpf = loader::load().unwrap();
    // `.rodata` holds constants (SHA-256's round constants): loaded with the
    // object each time, never pinned.
    let mut names: Vec<&str> =
        ebpf.maps().map(|(name, _)| name).filter(|name| *name != ".rodata").collect();
    names.sort();
    let mut expected = ALL_MAPS.to_vec();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn verdicts_for_every_shape_port_and_source() {
    if !privileged("verdicts_for_every_shape_port_and_source") {
        return;
    }
    let mut h = Harness::new();
    let families = [
        (v4_shapes(), SERVER_V4, ALLOWED_V4, EXPIRED_V4, STRANGER_V4),
        (v6_shapes(), SERVER_V6, ALLOWED_V6, EXPIRED_V6, STRANGER_V6),
    ];
    let mut cases = 0;
    for (shapes, server, allowed, expired, stranger) in families {
        for (shape, wrap) in shapes {
            for (l4, protected) in [(Proto::Tcp, PROTECTED_TCP), (Proto::Udp, PROTECTED_UDP)] {
                for (source_name, source) in
                    [("allowed", allowed), ("expired", expired), ("stranger", stranger)]
                {
                    let frame = |port| wrap(Frame::new(ip(source), ip(server), l4, port)).build();
                    let name = format!("{shape} {l4:?} from {source_name}");
                    h.expect(
                        &format!("{name} to an unprotected port"),
                        &frame(OPEN_PORT),
                        XDP_PASS,
                        Counter::Passed,
                    );
                    let (verdict, counter) = if source_name == "allowed" {
                        (XDP_PASS, Counter::PassedAllowed)
                    } else {
                        (XDP_DROP, Counter::DroppedProtected)
                    };
                    h.expect(
                        &format!("{name} to a protected port"),
                        &frame(protected),
                        verdict,
                        counter,
                    );
                    cases += 2;
                }
            }
        }
    }
    // Protection is per protocol: 22/udp and 51820/tcp are open.
    let other = |l4, port| Frame::new(ip(STRANGER_V4), ip(SERVER_V4), l4, port).build();
    h.expect(
        "udp to the tcp-protected port",
        &other(Proto::Udp, PROTECTED_TCP),
        XDP_PASS,
        Counter::Passed,
    );
    h.expect(
        "tcp to the udp-protected port",
        &other(Proto::Tcp, PROTECTED_UDP),
        XDP_PASS,
        Counter::Passed,
    );
    assert!(cases > 150, "the table shrank to {cases} cases");
}

#[test]
fn unrelated_traffic_passes() {
    if !privileged("unrelated_traffic_passes") {
        return;
    }
    let mut h = Harness::new();
    let v4 = |s: &str| ip(s).to_string().parse::<std::net::Ipv4Addr>().unwrap().octets();
    let v6 = |s: &str| ip(s).to_string().parse::<std::net::Ipv6Addr>().unwrap().octets();
    h.expect("arp", &frames::arp(), XDP_PASS, Counter::Passed);
    h.expect("icmp", &frames::icmp_echo(v4(STRANGER_V4), v4(SERVER_V4)), XDP_PASS, Counter::Passed);
    h.expect(
        "icmpv6",
        &frames::icmpv6_echo(v6(STRANGER_V6), v6(SERVER_V6)),
        XDP_PASS,
        Counter::Passed,
    );
    let mut lldp = frames::ethernet(&[], 0x88cc);
    lldp.extend_from_slice(&[0; 40]);
    h.expect("lldp", &lldp, XDP_PASS, Counter::Passed);
}

#[test]
fn later_fragments_pass_and_first_fragments_are_judged() {
    if !privileged("later_fragments_pass_and_first_fragments_are_judged") {
        return;
    }
    let mut h = Harness::new();
    // A later fragment has no ports; its datagram cannot be reassembled
    // without the first fragment, which is judged by its ports.
    let later_v4 = Frame {
        ipv4_frag_offset: 185,
        ..Frame::new(ip(STRANGER_V4), ip(SERVER_V4), Proto::Tcp, PROTECTED_TCP)
    };
    h.expect("ipv4 later fragment", &later_v4.build(), XDP_PASS, Counter::Passed);
    let first_v4 = Frame { ipv4_frag_offset: 0x2000, ..later_v4.clone() }; // MF set, offset 0
    h.expect("ipv4 first fragment", &first_v4.build(), XDP_DROP, Counter::DroppedProtected);
    let later_v6 = Frame {
        ipv6_ext: vec![Ext::Fragment { offset: 185 }],
        ..Frame::new(ip(STRANGER_V6), ip(SERVER_V6), Proto::Udp, PROTECTED_UDP)
    };
    h.expect("ipv6 later fragment", &later_v6.build(), XDP_PASS, Counter::Passed);
}

#[test]
fn truncated_frames_that_could_reach_a_protected_port_drop() {
    if !privileged("truncated_frames_that_could_reach_a_protected_port_drop") {
        return;
    }
    let mut h = Harness::new();
    let shapes: Vec<(String, Frame)> = [
        ("ipv4 tcp", Frame::new(ip(STRANGER_V4), ip(SERVER_V4), Proto::Tcp, PROTECTED_TCP)),
        (
            "ipv4+options udp",
            Frame {
                ipv4_option_words: 5,
                ..Frame::new(ip(STRANGER_V4), ip(SERVER_V4), Proto::Udp, PROTECTED_UDP)
            },
        ),
        (
            "qinq ipv4 tcp",
            Frame {
                vlans: vec![1, 2],
                ..Frame::new(ip(STRANGER_V4), ip(SERVER_V4), Proto::Tcp, OPEN_PORT)
            },
        ),
        ("ipv6 tcp", Frame::new(ip(STRANGER_V6), ip(SERVER_V6), Proto::Tcp, PROTECTED_TCP)),
        (
            "ipv6+hop+frag udp",
            Frame {
                ipv6_ext: vec![Ext::HopByHop, Ext::Fragment { offset: 0 }],
                ..Frame::new(ip(STRANGER_V6), ip(SERVER_V6), Proto::Udp, PROTECTED_UDP)
            },
        ),
    ]
    .into_iter()
    .map(|(n, f)| (n.to_owned(), f))
    .collect();
    let mut cases = 0;
    for (name, frame) in shapes {
        let bytes = frame.build();
        let headers_end = bytes.len() - frame.payload_len();
        // BPF_PROG_TEST_RUN needs at least an Ethernet header; every cut
        // after it lands inside a VLAN tag, an IP header, an extension
        // header or the transport header: nothing there is safe to pass.
        for len in 14..headers_end {
            h.expect(
                &format!("{name} cut to {len} bytes"),
                &bytes[..len],
                XDP_DROP,
                Counter::DroppedMalformed,
            );
            cases += 1;
        }
        // The whole frame is judged normally (the qinq one is to an open port).
        let (verdict, _) = h.run(&bytes);
        assert_eq!(
            verdict,
            if name.starts_with("qinq") { XDP_PASS } else { XDP_DROP },
            "{name} whole"
        );
    }
    assert!(cases > 200);
}

#[test]
fn headers_that_cannot_be_followed_drop() {
    if !privileged("headers_that_cannot_be_followed_drop") {
        return;
    }
    let mut h = Harness::new();
    let base = Frame::new(ip(STRANGER_V4), ip(SERVER_V4), Proto::Tcp, OPEN_PORT).build();
    // IHL below 5 and IHL pointing past the end, even to an open port.
    for ihl in [0u8, 4] {
        let mut f = base.clone();
        f[14] = 0x40 | ihl;
        h.expect(&format!("ihl {ihl}"), &f, XDP_DROP, Counter::DroppedMalformed);
    }
    let mut past_end = base.clone();
    past_end[14] = 0x4f; // 60-byte header in a frame whose IP part is 40 bytes
    h.expect("ihl past the end", &past_end, XDP_DROP, Counter::DroppedMalformed);
    let mut wrong_version = base.clone();
    wrong_version[14] = 0x65;
    h.expect("ipv4 ethertype, version 6", &wrong_version, XDP_DROP, Counter::DroppedMalformed);

    // Three VLAN tags: deeper than we follow.
    let three = Frame {
        vlans: vec![1, 2, 3],
        ..Frame::new(ip(STRANGER_V4), ip(SERVER_V4), Proto::Tcp, OPEN_PORT)
    };
    h.expect("three vlan tags", &three.build(), XDP_DROP, Counter::DroppedMalformed);

    // One extension header past the walk limit, even to an open port.
    let nine = Frame {
        ipv6_ext: vec![Ext::DestOptions; 9],
        ..Frame::new(ip(STRANGER_V6), ip(SERVER_V6), Proto::Tcp, OPEN_PORT)
    };
    h.expect("ipv6 with 9 extension headers", &nine.build(), XDP_DROP, Counter::DroppedMalformed);
    let eight = Frame { ipv6_ext: vec![Ext::DestOptions; 8], ..nine };
    h.expect("ipv6 with 8 extension headers", &eight.build(), XDP_PASS, Counter::Passed);
}

#[test]
fn every_tcp_flag_combination_tiny_fragments_and_large_frames() {
    if !privileged("every_tcp_flag_combination_tiny_fragments_and_large_frames") {
        return;
    }
    let mut h = Harness::new();
    // Whatever the flags (SYN+ACK, SYN+RST, SYN+FIN, Xmas, none...), a
    // stranger's segment to a protected port drops and an allowed one passes.
    for flags in 0..=u8::MAX {
        for (family, server, allowed, stranger) in [
            ("ipv4", SERVER_V4, ALLOWED_V4, STRANGER_V4),
            ("ipv6", SERVER_V6, ALLOWED_V6, STRANGER_V6),
        ] {
            let frame = |src| {
                Frame {
                    tcp_flags: flags,
                    ..Frame::new(ip(src), ip(server), Proto::Tcp, PROTECTED_TCP)
                }
                .build()
            };
            let name = format!("{family} flags {flags:#04x}");
            h.expect(&name, &frame(stranger), XDP_DROP, Counter::DroppedProtected);
            h.expect(&name, &frame(allowed), XDP_PASS, Counter::PassedAllowed);
        }
    }

    // First fragments (MF set, offset 0) too short to hold the ports, with
    // lengths that agree with the frame: the ports cannot be read, so even
    // one to an open port drops.
    for (l4, port) in [(Proto::Tcp, OPEN_PORT), (Proto::Udp, PROTECTED_UDP)] {
        let whole = Frame {
            ipv4_frag_offset: 0x2000,
            ..Frame::new(ip(STRANGER_V4), ip(SERVER_V4), l4, port)
        }
        .build();
        for transport in 0..4 {
            let mut tiny = whole[..14 + 20 + transport].to_vec();
            tiny[16..18].copy_from_slice(&((20 + transport) as u16).to_be_bytes());
            h.expect(
                &format!("{l4:?} first fragment with {transport} transport bytes"),
                &tiny,
                XDP_DROP,
                Counter::DroppedMalformed,
            );
        }
    }

    // Large frames: an MTU-sized datagram and a jumbo one are judged by
    // their headers like small ones.
    for size in [1514, 3000] {
        for (port, verdict, counter) in [
            (PROTECTED_UDP, XDP_DROP, Counter::DroppedProtected),
            (OPEN_PORT, XDP_PASS, Counter::Passed),
        ] {
            let mut frame = Frame::new(ip(STRANGER_V4), ip(SERVER_V4), Proto::Udp, port).build();
            let pad = size - frame.len();
            frame.resize(size, 0xa5);
            let ip_len = u16::from_be_bytes([frame[16], frame[17]]) + pad as u16;
            frame[16..18].copy_from_slice(&ip_len.to_be_bytes());
            let udp_len = u16::from_be_bytes([frame[38], frame[39]]) + pad as u16;
            frame[38..40].copy_from_slice(&udp_len.to_be_bytes());
            h.expect(&format!("{size}-byte frame to port {port}"), &frame, verdict, counter);
        }
    }
}

/// Installs `ports` (TCP) as sequence `index` of client 42 for slot `slot`, valid now.
fn install_sequence(h: &mut Harness, index: u32, slot: u64, ports: &[u16]) {
    let now = clock::boot_ns();
    let valid = (now.saturating_sub(1_000_000_000), now + 60_000_000_000);
    testrun::install_tcp_sequence(&mut h.maps, &mut h.table, index, 42, slot, ports, valid);
}

#[test]
fn a_knock_through_the_program_opens_the_door_once() {
    if !privileged("a_knock_through_the_program_opens_the_door_once") {
        return;
    }
    let mut h = Harness::new();
    let knocks = [61001, 62002, 63003];
    let next_slot = [61004, 62005, 63006];
    install_sequence(&mut h, 5, 7, &knocks);
    install_sequence(&mut h, 6, 8, &next_slot);
    for (family, (knocker, replayer, server)) in [
        ("ipv4", (STRANGER_V4, EXPIRED_V4, SERVER_V4)),
        ("ipv6", (STRANGER_V6, EXPIRED_V6, SERVER_V6)),
    ] {
        let syn = |src: &str, port| Frame::new(ip(src), ip(server), Proto::Tcp, port).build();
        // Not knocks: a SYN+ACK or a bare ACK to a knock port passes untouched.
        for flags in [0x12, 0x10, 0x03] {
            let frame = Frame {
                tcp_flags: flags,
                ..Frame::new(ip(knocker), ip(server), Proto::Tcp, knocks[0])
            };
            h.expect(
                &format!("{family} flags {flags:#x} to a knock port"),
                &frame.build(),
                XDP_PASS,
                Counter::Passed,
            );
        }
        h.expect(
            &format!("{family} before knocking"),
            &syn(knocker, PROTECTED_TCP),
            XDP_DROP,
            Counter::DroppedProtected,
        );
        // Knocks pass to the host, like every SYN to a closed port.
        h.events();
        for &port in &knocks {
            h.expect(
                &format!("{family} knock {port}"),
                &syn(knocker, port),
                XDP_PASS,
                Counter::Knock,
            );
        }
        let kinds: Vec<u32> = h.events().iter().map(|e| e.kind).collect();
        if family == "ipv4" {
            assert_eq!(kinds, [EventKind::Opened as u32]);
            h.expect(
                "after knocking",
                &syn(knocker, PROTECTED_TCP),
                XDP_PASS,
                Counter::PassedAllowed,
            );
            let admitted = h.maps.allowed().unwrap();
            let entry =
                admitted.iter().find(|(k, _)| k.ip() == Some(ip(knocker))).expect("admitted").1;
            assert_eq!((entry.origin, entry.client), (AllowOrigin::Knock as u32, 42));
        } else {
            // IPv6 knocks advance like IPv4 ones, and the sequence IPv4
            // used is refused as a replay...
            assert_eq!(kinds, [EventKind::Replay as u32]);
            h.expect(
                "ipv6 replay of a used sequence",
                &syn(knocker, PROTECTED_TCP),
                XDP_DROP,
                Counter::DroppedProtected,
            );
            // ...while the next slot's opens the door over IPv6.
            for &port in &next_slot {
                h.expect(
                    &format!("ipv6 knock {port}"),
                    &syn(knocker, port),
                    XDP_PASS,
                    Counter::Knock,
                );
            }
            h.expect(
                "ipv6 after the next slot's knock",
                &Frame::new(ip(knocker), ip(server), Proto::Tcp, PROTECTED_TCP)
                    .build_with_sport(40001),
                XDP_PASS,
                Counter::PassedAllowed,
            );
        }
        for &port in &knocks {
            h.run(&syn(replayer, port));
        }
        h.expect(
            &format!("{family} replayed"),
            &syn(replayer, PROTECTED_TCP),
            XDP_DROP,
            Counter::DroppedProtected,
        );
    }
}

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

#[test]
fn full_maps_still_let_a_new_knock_open_the_door() {
    if !privileged("full_maps_still_let_a_new_knock_open_the_door") {
        return;
    }
    let mut h = Harness::new();
    h.maps.set_settings(config(60_000_000_000, 10_000_000_000)).unwrap();
    let knocks = [61001, 62002, 63003];
    install_sequence(&mut h, 5, 7, &knocks);
    // Fill the allow map (an LRU) with other sources, and the flow table too.
    let later = clock::boot_ns() + 3_600_000_000_000;
    let filler = |i: u32| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    for i in 0..knock_common::maps::ALLOW_MAX_ENTRIES {
        h.maps.allow(filler(i), later).unwrap();
    }
    let flows: Vec<_> = (0..knock_common::maps::FLOWS_MAX_ENTRIES)
        .map(|i| kernel_maps::tcp_flow(filler(i), 40000, PROTECTED_TCP))
        .collect();
    h.maps.seed_flows(&flows).unwrap();
    // The kernel's LRU starts evicting a little before the nominal size.
    let held = h.maps.allowed().unwrap().len();
    assert!(held > knock_common::maps::ALLOW_MAX_ENTRIES as usize * 9 / 10, "{held}");

    let syn = |port| Frame::new(ip(STRANGER_V4), ip(SERVER_V4), Proto::Tcp, port).build();
    for &port in &knocks {
        h.expect(&format!("knock {port} into full maps"), &syn(port), XDP_PASS, Counter::Knock);
    }
    h.expect("the door opens anyway", &syn(PROTECTED_TCP), XDP_PASS, Counter::PassedAllowed);
    let ack = Frame {
        tcp_flags: 0x10,
        tcp_seq: 2,
        ..Frame::new(ip(STRANGER_V4), ip(SERVER_V4), Proto::Tcp, PROTECTED_TCP)
    };
    h.maps.revoke(&ip(STRANGER_V4).into()).unwrap();
    h.expect(
        "its connection got a flow in the full table",
        &ack.build(),
        XDP_PASS,
        Counter::PassedFlow,
    );
}
