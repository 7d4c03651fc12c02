//! The admission filter through the program: every source with an allow
//! entry or a flow has its slot set, whoever wrote the entry, and a rebuild
//! clears stale slots without ever clearing a live source's. (The
//! differential test checks the filter never changes a verdict, with
//! rebuilds in its streams.)

use std::net::IpAddr;

use knock_common::{
    Proto, ProtoPort,
    decide::{XDP_DROP, XDP_PASS},
    filter,
    maps::{Counter, Runtime},
    proto::tcp_flags,
    source::SourceKey,
    trie::KnockTable,
};
use knock_tests::{frames::Frame, privileged, testrun};
use knock_userspace::{clock, loader, maps::KernelMaps};

const SERVER: &str = "192.0.2.1";
const PROTECTED: u16 = 22;
const KNOCKS: [u16; 3] = [61001, 62002, 63003];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(s: &str) -> SourceKey {
    SourceKey::from(ip(s))
}

fn syn(src: &str, port: u16, sport: u16) -> Vec<u8> {
    Frame::new(ip(src), ip(SERVER), Proto::Tcp, port).build_with_sport(sport)
}

#[test]
fn every_admitted_source_is_in_the_filter_and_a_rebuild_drops_only_stale_slots() {
    if !privileged("every_admitted_source_is_in_the_filter_and_a_rebuild_drops_only_stale_slots") {
        return;
    }
    let mut ebpf = loader::load().expect("load the XDP program");
    let mut maps = KernelMaps::take(&mut ebpf).unwrap();
    maps.set_protected(&Default::default(), &[ProtoPort::new(Proto::Tcp, PROTECTED)].into())
        .unwrap();
    maps.set_settings(testrun::lasting_settings()).unwrap();
    let now = clock::boot_ns();
    let mut table = KnockTable::new();
    testrun::install_tcp_sequence(
        &mut maps,
        &mut table,
        0,
        7,
        1,
        &KNOCKS,
        (0, now + testrun::HOUR_NS),
    );

    // Four sources whose slots differ, so each one's slot is its own.
    let (manual, knocker, seeded, stranger) =
        ("192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13");
    let slots: std::collections::BTreeSet<u32> =
        [manual, knocker, seeded, stranger].iter().map(|s| filter::slot(&key(s))).collect();
    assert_eq!(slots.len(), 4, "pick sources whose slots differ");

    assert!(!maps.filter_admits(&key(stranger)).unwrap());
    maps.allow(ip(manual), now + testrun::HOUR_NS).unwrap();
    maps.seed_flows(&[knock_userspace::maps::tcp_flow(ip(seeded), 40000, PROTECTED)]).unwrap();
    for (src, by) in [(manual, "a manual allow"), (seeded, "a kept connection")] {
        assert!(maps.filter_admits(&key(src)).unwrap(), "{src}: {by} set no slot");
    }

    // The program sets the slot of the source its knock admits, and of the
    // flow its connection opens.
    for port in KNOCKS {
        let (verdict, counter) = testrun::run_frame(&mut ebpf, &maps, &syn(knocker, port, 40000));
        assert_eq!((verdict, counter), (XDP_PASS, Counter::Knock));
    }
    assert!(maps.filter_admits(&key(knocker)).unwrap(), "the program set no slot");
    let connect = syn(knocker, PROTECTED, 41000);
    assert_eq!(testrun::run_frame(&mut ebpf, &maps, &connect), (XDP_PASS, Counter::PassedAllowed));
    let stranger_syn = syn(stranger, PROTECTED, 41000);
    assert_eq!(
        testrun::run_frame(&mut ebpf, &maps, &stranger_syn),
        (XDP_DROP, Counter::DroppedProtected)
    );

    // The knocker's window and the manual allow end; the knocker's flow
    // lives on. A rebuild keeps the flow's source and the kept connection,
    // and clears the manual source's stale slot.
    for src in [manual, knocker] {
        assert!(maps.revoke(&key(src)).unwrap());
    }
    let half = maps.runtime(Runtime::FilterHalf).unwrap();
    let live = maps.rebuild_filter().unwrap();
    assert_eq!(
        maps.runtime(Runtime::FilterHalf).unwrap(),
        1 - half,
        "the program reads the new half"
    );
    assert_eq!(live, 2, "the knocker's flow and the kept connection");
    assert!(!maps.filter_admits(&key(manual)).unwrap(), "a stale slot survived the rebuild");
    for src in [knocker, seeded] {
        assert!(maps.filter_admits(&key(src)).unwrap(), "{src}: a live slot was cleared");
    }
    let ack = Frame {
        tcp_flags: tcp_flags::ACK,
        tcp_seq: 2,
        ..Frame::new(ip(knocker), ip(SERVER), Proto::Tcp, PROTECTED)
    }
    .build_with_sport(41000);
    assert_eq!(testrun::run_frame(&mut ebpf, &maps, &ack), (XDP_PASS, Counter::PassedFlow));
    assert_eq!(
        testrun::run_frame(&mut ebpf, &maps, &syn(manual, PROTECTED, 41000)),
        (XDP_DROP, Counter::DroppedProtected)
    );

    // After the rebuild the program writes the half it now reads: a manual
    // allow and a network still admit.
    maps.allow(ip(manual), now + testrun::HOUR_NS).unwrap();
    assert_eq!(
        testrun::run_frame(&mut ebpf, &maps, &syn(manual, PROTECTED, 41001)),
        (XDP_PASS, Counter::PassedAllowed)
    );
    let net = ["192.0.2.0/28".parse().unwrap()].into();
    maps.set_allowed_nets(&Default::default(), &net).unwrap();
    assert_eq!(
        testrun::run_frame(&mut ebpf, &maps, &stranger_syn),
        (XDP_PASS, Counter::PassedNetwork)
    );
}
