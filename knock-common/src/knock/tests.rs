use super::*;
use crate::{
    decide::{Maps as _, XDP_PASS},
    maps::{SLOTS_PER_CLIENT, port_flags},
    model::{Model, SEC},
    proto::ProtoPort,
};

const A: SourceKey = SourceKey::v4([10, 0, 0, 2]);
const B: SourceKey = SourceKey::v4([10, 0, 0, 3]);

fn model() -> Model {
    let mut m = Model::new();
    m.knock_space(Proto::Tcp, 1000, 4000);
    m.install(0, 7, 100, &[1000, 2000, 3000, 4000]);
    m
}

fn limited(burst: u64) -> Model {
    let mut m = model();
    m.settings.miss_interval_ns = 60 * SEC;
    m.settings.miss_burst_ns = burst * 60 * SEC;
    m.settings.global_miss_interval_ns = SEC;
    m.settings.global_miss_burst_ns = 1000 * SEC;
    m
}

#[test]
fn the_sequence_opens_the_door_for_its_client() {
    let m = model();
    m.knock(A, &[1000, 2000, 3000, 4000], 1);
    let entry = m.allowed_entry(A).expect("admitted");
    assert_eq!(
        (entry.origin, entry.client, entry.deadline_ns),
        (AllowOrigin::Knock as u32, 7, 31 * SEC)
    );
    assert_eq!(m.last_event(), EventKind::Opened);
    // A clean knock is no failed knock.
    assert!(m.misses.borrow().is_empty());
}

#[test]
fn every_knock_passes_to_the_host() {
    let m = model();
    for port in [1000, 2000, 2500, 3000, 4000] {
        assert_eq!(m.syn(A, port, 1).action, XDP_PASS, "{port}");
    }
}

#[test]
fn wrong_order_extra_port_and_missing_port_do_not() {
    for ports in [
        &[2000, 1000, 3000, 4000][..],
        &[1000, 2000, 2500, 3000, 4000],
        &[1000, 2000, 4000],
        &[1000, 3000, 2000, 4000],
    ] {
        let m = model();
        m.knock(A, ports, 1);
        assert_eq!(m.allowed_entry(A), None, "{ports:?}");
    }
}

#[test]
fn retransmitted_syns_are_ignored() {
    let m = model();
    m.knock(A, &[1000, 1000, 2000, 2000, 2000, 3000, 4000, 4000], 1);
    assert!(m.allowed_entry(A).is_some());
    // The retransmission of the final knock is no replay.
    assert!(!m.saw(EventKind::Replay));
}

#[test]
fn a_wrong_knock_restarts_cleanly_when_it_is_a_first_knock() {
    let m = model();
    m.knock(A, &[1000, 2000, 1000, 2000, 3000, 4000], 1);
    assert!(m.allowed_entry(A).is_some());
}

#[test]
fn another_attempt_in_the_knock_space_resets_even_on_a_port_no_sequence_uses() {
    let m = model();
    m.knock(A, &[1000, 2000], 1);
    m.syn(A, 2222, 1);
    assert_eq!(m.last_event(), EventKind::Reset);
    m.knock(A, &[3000, 4000], 1);
    assert_eq!(m.allowed_entry(A), None);
}

#[test]
fn spraying_every_port_in_order_never_opens() {
    let mut m = model();
    m.knock_space(Proto::Tcp, 1, u16::MAX);
    for _ in 0..2 {
        for port in 1..=u16::MAX {
            m.syn(A, port, 1);
        }
    }
    assert_eq!(m.allowed_entry(A), None);
}

#[test]
fn scans_create_no_state() {
    let mut m = model();
    m.knock_space(Proto::Tcp, 1, u16::MAX);
    for port in (1..=u16::MAX).filter(|p| *p != 1000) {
        m.syn(B, port, 1);
    }
    assert!(m.states.borrow().is_empty());
}

#[test]
fn too_slow_times_out() {
    let m = model();
    m.knock(A, &[1000, 2000, 3000], 1);
    m.syn(A, 4000, 12);
    assert_eq!(m.allowed_entry(A), None);
    assert!(m.saw(EventKind::Timeout));
}

#[test]
fn a_sequence_works_once_from_any_source() {
    let m = model();
    m.knock(A, &[1000, 2000, 3000, 4000], 1);
    m.knock(B, &[1000, 2000, 3000, 4000], 2);
    assert_eq!(m.allowed_entry(B), None);
    assert_eq!(m.last_event(), EventKind::Replay);
    // Not even from the first source again.
    m.allow.borrow_mut().clear();
    m.syn(A, 2222, 3);
    m.knock(A, &[1000, 2000, 3000, 4000], 3);
    assert_eq!(m.allowed_entry(A), None);
}

#[test]
fn outside_its_validity_a_sequence_is_stale() {
    let mut m = model();
    m.sequences.get_mut(&0).unwrap().valid_from_ns = 50 * SEC;
    m.knock(A, &[1000, 2000, 3000, 4000], 1);
    assert_eq!(m.allowed_entry(A), None);
    assert_eq!(m.last_event(), EventKind::Stale);
}

#[test]
fn static_sequences_can_be_reused() {
    let mut m = Model::new();
    m.install(4, 9, STATIC_SLOT, &[7000, 8000, 9000]);
    m.knock(A, &[7000, 8000, 9000], 1);
    m.knock(B, &[7000, 8000, 9000], 1);
    assert!(m.allowed_entry(A).is_some() && m.allowed_entry(B).is_some());
}

#[test]
fn clients_sharing_ports_knock_concurrently() {
    let mut m = Model::new();
    // Same first and last port, interleaved knocks from two sources.
    m.install(0, 1, 100, &[1000, 2000, 3000, 4000]);
    m.install(SLOTS_PER_CLIENT, 2, 100, &[1000, 3000, 2000, 4000]);
    for (a, b) in [(1000, 1000), (2000, 3000), (3000, 2000), (4000, 4000)] {
        m.syn(A, a, 1);
        m.syn(B, b, 1);
    }
    assert_eq!(m.allowed_entry(A).map(|e| e.client), Some(1));
    assert_eq!(m.allowed_entry(B).map(|e| e.client), Some(2));
}

#[test]
fn identical_sequences_of_two_clients_both_work() {
    let mut m = Model::new();
    m.install(0, 1, 100, &[1000, 2000]);
    m.install(4095 * SLOTS_PER_CLIENT, 2, 100, &[1000, 2000]);
    m.knock(A, &[1000, 2000], 1);
    m.knock(B, &[1000, 2000], 1);
    assert_eq!(m.allowed_entry(A).map(|e| e.client), Some(1));
    assert_eq!(m.allowed_entry(B).map(|e| e.client), Some(2));
}

#[test]
fn one_knock_sequences_complete_at_once() {
    let mut m = Model::new();
    m.install(3, 5, 100, &[1234]);
    m.syn(A, 1234, 1);
    assert!(m.allowed_entry(A).is_some());
}

#[test]
fn udp_knocks_and_mixed_sequences() {
    let mut m = Model::new();
    let steps = [ProtoPort::new(Proto::Tcp, 7000), ProtoPort::new(Proto::Udp, 8000)];
    m.install_steps(0, 5, STATIC_SLOT, &steps);
    assert_ne!(m.port_flags(8000) & port_flags::KNOCK_SPACE_UDP, 0);
    m.syn(A, 7000, 1);
    m.packet(A, Proto::Tcp, 40000, 8000, crate::proto::tcp_flags::SYN, SEC);
    assert!(m.allowed_entry(A).is_none(), "TCP on a UDP step");
    m.syn(A, 7000, 2);
    m.packet(A, Proto::Udp, 40000, 8000, 0, 2 * SEC);
    assert!(m.allowed_entry(A).is_some());
}

#[test]
fn failed_knocks_are_limited_per_prefix() {
    let m = limited(4);
    // Four misses from A's address, then its attempts are ignored: even the
    // right sequence does nothing...
    for port in [1001, 1002, 1003, 1004, 1005] {
        m.syn(A, port, 1);
    }
    assert!(m.saw(EventKind::Limited));
    m.knock(A, &[1000, 2000, 3000, 4000], 2);
    assert!(m.allowed_entry(A).is_none());
    assert_eq!(m.syn(A, 1000, 2).counter, crate::maps::Counter::KnockLimited);
    // ...while another source is untouched...
    m.knock(B, &[1000, 2000, 3000, 4000], 2);
    assert!(m.allowed_entry(B).is_some());
    // ...and once a minute has passed, A may knock again (a fresh slot's
    // sequence here, as the first was used by B).
    let mut m = m;
    m.install(1, 7, 101, &[1500, 2500]);
    m.knock(A, &[1500, 2500], 62);
    assert!(m.allowed_entry(A).is_some());
}

#[test]
fn an_ipv6_slash_64_shares_one_budget() {
    let m = limited(2);
    let host = |last: u8| {
        let mut addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        addr[15] = last;
        SourceKey::v6(addr)
    };
    m.syn(host(1), 1001, 1);
    m.syn(host(2), 1001, 1);
    m.knock(host(3), &[1000, 2000, 3000, 4000], 1);
    assert!(m.allowed_entry(host(3)).is_none());
}

#[test]
fn under_global_pressure_one_miss_uses_up_a_prefix() {
    let mut m = limited(8);
    m.settings.global_miss_burst_ns = 3 * SEC;
    // Three misses from three sources use up the global budget...
    for last in 10..13 {
        m.syn(SourceKey::v4([10, 9, 9, last]), 1001, 1);
    }
    // ...so the next source's one miss limits it at once.
    m.syn(A, 1001, 1);
    m.knock(A, &[1000, 2000, 3000, 4000], 1);
    assert!(m.allowed_entry(A).is_none());
    m.knock(B, &[1000, 2000, 3000, 4000], 1);
    assert!(m.allowed_entry(B).is_some(), "a source without misses is not affected");
}

#[test]
fn resets_replays_and_timeouts_are_misses_too() {
    let m = limited(100);
    let tat = || m.misses.borrow().get(&A.miss_prefix()).copied();
    let full = [1000, 2000, 3000, 4000];
    m.knock(A, &full, 1);
    assert_eq!(tat(), None, "opening is no miss");
    m.knock(A, &full, 1);
    assert_eq!(m.last_event(), EventKind::Replay);
    assert_eq!(tat(), Some(61 * SEC), "a replay is one miss");
    m.knock(A, &[1000, 2000], 1);
    assert_eq!(tat(), Some(61 * SEC), "progress is none");
    m.syn(A, 2222, 1);
    assert_eq!(tat(), Some(121 * SEC), "a reset is one");
    m.knock(A, &[1000], 1);
    m.syn(A, 2000, 20);
    assert!(m.saw(EventKind::Timeout));
    assert_eq!(tat(), Some(181 * SEC), "a timeout is one, however many reasons the packet has");
}
