//! Verdict tables: every frame shape × port × source, truncations, headers
//! the parser cannot follow, TCP flags, fragments and large frames.

use knock_common::{
    Proto,
    decide::{XDP_DROP, XDP_PASS},
    maps::{ALL_MAPS, Counter},
};
use knock_tests::{
    frames::{self, Ext, Frame},
    privileged,
};
use knock_userspace::loader;

use super::*;

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
