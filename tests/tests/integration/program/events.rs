//! The event ring under a flood of refusals: refusals may fill it only
//! halfway, so openings, by knock or by SPA, always find room and the audit
//! trail never loses one.

use std::net::{IpAddr, Ipv4Addr};

use knock_common::{
    Proto, ProtoPort,
    event::{Event, EventKind},
    maps::{EVENTS_BYTES, Runtime},
    spa::{self, key_from_secret, spa_key},
};
use knock_tests::{frames::Frame, privileged};
use knock_userspace::clock;

use super::*;

const SPA_PORT: u16 = 62_000;
const SPA_INDEX: u16 = 3;
const SPA_SECRET: [u8; 32] = [7; 32];

#[test]
fn openings_find_room_in_a_ring_full_of_refusals() {
    if !privileged("openings_find_room_in_a_ring_full_of_refusals") {
        return;
    }
    let mut h = Harness::new();
    h.maps.set_settings(Settings { spa_skew_secs: 30, ..config(0, 1) }).unwrap();
    let knocks = [61001, 62002, 63003];
    install_sequence(&mut h, 5, 7, &knocks);
    let spa_ports = [ProtoPort::new(Proto::Udp, SPA_PORT)].into();
    h.maps.set_spa_ports(&Default::default(), &spa_ports).unwrap();
    let key = key_from_secret(&SPA_SECRET);
    h.maps.set_spa_key(SPA_INDEX.into(), &spa_key(&key, 42, 0)).unwrap();
    let unix_ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    h.maps
        .set_runtime(Runtime::UnixOffset, (unix_ns as u64).wrapping_sub(clock::boot_ns()))
        .unwrap();
    let syn = |src: IpAddr, port| Frame::new(src, ip(SERVER_V4), Proto::Tcp, port).build();

    // Refusals from twice as many sources as the whole ring holds events:
    // each begins the sequence and then knocks out of order.
    let record = (8 + size_of::<Event>()).next_multiple_of(8) as u32;
    for i in 0..2 * EVENTS_BYTES / record {
        let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        h.run(&syn(source, knocks[0]));
        h.run(&syn(source, knocks[2]));
    }
    // Then a knock, and a single-packet authorization, open the door.
    for &port in &knocks {
        h.expect("a knock after the flood", &syn(ip(STRANGER_V4), port), XDP_PASS, Counter::Knock);
    }
    let request = spa::Request {
        index: SPA_INDEX,
        unix_secs: (unix_ns / 1_000_000_000) as u32,
        nonce: [9; spa::NONCE_LEN],
        admit: None,
    };
    let datagram = spa::datagram(&key, &request, ip(SERVER_V4));
    let frame = Frame {
        udp_payload: datagram.to_vec(),
        ..Frame::new(ip(EXPIRED_V4), ip(SERVER_V4), Proto::Udp, SPA_PORT)
    };
    h.run(&frame.build_with_sport(40000));

    let events = h.events();
    let refusals = events.iter().filter(|e| !e.is_opening()).count() as u32;
    let half = EVENTS_BYTES / 2 / record;
    assert!(
        (half - 1..=half + 1).contains(&refusals),
        "refusals filled {refusals} records, not half the ring ({half})"
    );
    let openings: Vec<(u32, u32)> =
        events.iter().filter(|e| e.is_opening()).map(|e| (e.kind, e.client)).collect();
    assert_eq!(openings, [(EventKind::Opened as u32, 42), (EventKind::SpaOpened as u32, 42)]);
}
