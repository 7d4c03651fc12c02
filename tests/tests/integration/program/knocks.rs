//! Knocks through the program: a knock opens the door once per sequence and
//! slot, over IPv4 and IPv6; a new knock opens the door with full maps; a
//! knock never shortens a longer window.

use knock_common::{
    Proto,
    allow::AllowOrigin,
    decide::{XDP_DROP, XDP_PASS},
    event::EventKind,
    maps::Counter,
    proto::tcp_flags::{ACK, FIN, SYN},
};
use knock_tests::{frames::Frame, privileged};
use knock_userspace::{clock, maps as kernel_maps};

use super::*;

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
        for flags in [SYN | ACK, ACK, SYN | FIN] {
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
        tcp_flags: ACK,
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

#[test]
fn a_knock_keeps_a_longer_window_and_lengthens_a_shorter_one() {
    if !privileged("a_knock_keeps_a_longer_window_and_lengthens_a_shorter_one") {
        return;
    }
    let mut h = Harness::new();
    let open_window = config(0, 1).open_window_ns;
    let (longer, shorter) = ("192.0.2.20", "192.0.2.21");
    let syn = |src: &str, port| Frame::new(ip(src), ip(SERVER_V4), Proto::Tcp, port).build();
    let entry_of = |h: &Harness, src: &str| {
        let allowed = h.maps.allowed().unwrap();
        allowed.into_iter().find(|(k, _)| k.ip() == Some(ip(src))).expect("allowed").1
    };
    // Admitted by hand for an hour, and for five seconds: one window longer
    // than a knock's, one shorter.
    let hour = clock::boot_ns() + 3_600_000_000_000;
    h.maps.allow(ip(longer), hour).unwrap();
    h.maps.allow(ip(shorter), clock::boot_ns() + 5_000_000_000).unwrap();
    install_sequence(&mut h, 5, 7, &[61001, 62002, 63003]);
    install_sequence(&mut h, 6, 8, &[61004, 62005, 63006]);

    // Each completes a knock: the door opens (the event says so)...
    h.events();
    for port in [61001, 62002, 63003] {
        h.expect(&format!("longer: knock {port}"), &syn(longer, port), XDP_PASS, Counter::Knock);
    }
    let before = clock::boot_ns();
    for port in [61004, 62005, 63006] {
        h.expect(&format!("shorter: knock {port}"), &syn(shorter, port), XDP_PASS, Counter::Knock);
    }
    let after = clock::boot_ns();
    let opened = h.events().iter().filter(|e| e.kind == EventKind::Opened as u32).count();
    assert_eq!(opened, 2, "both knocks completed");

    // ...but the hour stays whole and stays the manual entry it was,
    let entry = entry_of(&h, longer);
    assert_eq!((entry.deadline_ns, entry.origin), (hour, AllowOrigin::Manual as u32));
    // while the five seconds become the open window, credited to the knock.
    let entry = entry_of(&h, shorter);
    assert!(
        (before + open_window..=after + open_window).contains(&entry.deadline_ns),
        "the shorter window was not lengthened to the open window: {entry:?}"
    );
    assert_eq!((entry.origin, entry.client), (AllowOrigin::Knock as u32, 42));
}
