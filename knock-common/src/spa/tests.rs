extern crate std;

use core::net::IpAddr;

use super::*;
use crate::{
    decide::XDP_PASS,
    maps::{Counter, port_flags},
    model::{Model, SEC},
};

const SERVER: &str = "192.0.2.1";
const OTHER_SERVER: &str = "192.0.2.99";
const CLIENT: &str = "198.51.100.7";
const PORT: u16 = 62_000;
/// UNIX time at boot time 0 in these tests.
const BOOT_AT_UNIX: u64 = 1_800_000_000;
const SECRET: [u8; 32] = [7; 32];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn model(policy: u32) -> Model {
    let mut m = Model::new();
    m.settings.spa_skew_secs = 30;
    m.set_runtime(Runtime::UnixOffset, BOOT_AT_UNIX * SEC);
    m.ports.insert(PORT, port_flags::SPA_UDP);
    let (inner, outer) = sha256::hmac_midstates(&key_from_secret(&SECRET));
    m.spa_keys.insert(3, SpaKey { inner, outer, client: 77, policy });
    m
}

fn request(at_secs: u64) -> Request {
    Request {
        index: 3,
        unix_secs: (BOOT_AT_UNIX + at_secs) as u32,
        nonce: [9; NONCE_LEN],
        admit: None,
    }
}

fn send(m: &Model, from: &str, to: &str, bytes: &[u8], at_secs: u64) -> crate::decide::Decision {
    let src = SourceKey::from(ip(from));
    m.datagram(src, SourceKey::from(ip(to)), PORT, bytes, at_secs * SEC)
}

fn valid(at_secs: u64) -> [u8; DATAGRAM_LEN] {
    datagram(&key_from_secret(&SECRET), &request(at_secs), ip(SERVER))
}

#[test]
fn a_valid_datagram_opens_for_its_source_and_passes_like_any_other() {
    let m = model(0);
    let d = send(&m, CLIENT, SERVER, &valid(10), 10);
    assert_eq!((d.action, d.counter), (XDP_PASS, Counter::Spa));
    let entry = m.allowed_entry(SourceKey::from(ip(CLIENT))).expect("admitted");
    assert_eq!((entry.origin, entry.client), (AllowOrigin::Spa as u32, 77));
    assert_eq!(entry.deadline_ns, 10 * SEC + m.settings.open_window_ns);
    assert_eq!(m.last_event(), EventKind::SpaOpened);
}

#[test]
fn a_replay_is_refused_from_any_source() {
    let m = model(0);
    let bytes = valid(10);
    send(&m, CLIENT, SERVER, &bytes, 10);
    for from in [CLIENT, "203.0.113.5"] {
        m.allow.borrow_mut().clear();
        let d = send(&m, from, SERVER, &bytes, 11);
        assert_eq!(d.action, XDP_PASS);
        assert!(m.allow.borrow().is_empty(), "a replay from {from} opened the door");
        assert_eq!(m.last_event(), EventKind::SpaReplay);
    }
}

#[test]
fn any_flipped_byte_is_refused() {
    let good = valid(10);
    for position in 0..DATAGRAM_LEN {
        for bit in [0x01u8, 0x80] {
            let m = model(policy::MAY_ADMIT_OTHER);
            let mut bytes = good;
            bytes[position] ^= bit;
            send(&m, CLIENT, SERVER, &bytes, 10);
            assert!(m.allow.borrow().is_empty(), "byte {position} ^ {bit:#x} still opened");
            assert!(m.nonces.borrow().is_empty(), "byte {position}: state before verification");
        }
    }
}

#[test]
fn a_time_outside_the_skew_is_refused() {
    for (sent, now) in [(10, 41), (41, 10)] {
        let m = model(0);
        send(&m, CLIENT, SERVER, &valid(sent), now);
        assert!(m.allow.borrow().is_empty(), "sent at {sent}, checked at {now}");
    }
    let m = model(0);
    send(&m, CLIENT, SERVER, &valid(10), 40);
    assert!(!m.allow.borrow().is_empty(), "30 s is within the skew");
}

#[test]
fn a_datagram_for_another_server_is_refused() {
    let m = model(0);
    let other = datagram(&key_from_secret(&SECRET), &request(10), ip(OTHER_SERVER));
    send(&m, CLIENT, SERVER, &other, 10);
    assert!(m.allow.borrow().is_empty());
    // IPv6 server addresses are bound too.
    let v6 = datagram(&key_from_secret(&SECRET), &request(10), ip("2001:db8::1"));
    send(&m, "2001:db8::7", "2001:db8::2", &v6, 10);
    assert!(m.allow.borrow().is_empty());
    send(&m, "2001:db8::7", "2001:db8::1", &v6, 10);
    assert!(!m.allow.borrow().is_empty());
}

#[test]
fn a_named_address_is_admitted_only_when_the_client_may() {
    let named = Request { admit: Some(ip("203.0.113.50")), ..request(10) };
    let bytes = datagram(&key_from_secret(&SECRET), &named, ip(SERVER));
    let m = model(policy::MAY_ADMIT_OTHER);
    send(&m, CLIENT, SERVER, &bytes, 10);
    assert!(m.allowed_entry(SourceKey::from(ip("203.0.113.50"))).is_some());
    assert!(m.allowed_entry(SourceKey::from(ip(CLIENT))).is_none());
    // Without the permission it is refused, and its nonce not spent.
    let m = model(0);
    send(&m, CLIENT, SERVER, &bytes, 10);
    assert!(m.allow.borrow().is_empty());
    assert!(m.nonces.borrow().is_empty());
}

#[test]
fn naming_the_source_binds_a_datagram_to_it() {
    // The client names its own address: a copy raced from elsewhere is
    // refused without spending the nonce, so the real one still opens.
    let bound = Request { admit: Some(ip(CLIENT)), ..request(10) };
    let bytes = datagram(&key_from_secret(&SECRET), &bound, ip(SERVER));
    let m = model(0);
    send(&m, "203.0.113.66", SERVER, &bytes, 10);
    assert!(m.allow.borrow().is_empty(), "a raced copy opened the door");
    send(&m, CLIENT, SERVER, &bytes, 10);
    assert!(m.allowed_entry(SourceKey::from(ip(CLIENT))).is_some());
}

#[test]
fn datagrams_no_client_sends_are_refused_before_the_mac() {
    let key = key_from_secret(&SECRET);
    let signed = |bytes: &mut [u8; DATAGRAM_LEN]| {
        // Re-sign after the change, so only the rules refuse it.
        let mut scratch = Scratch {
            datagram: *bytes,
            server: SourceKey::from(ip(SERVER)),
            block: [0; 16],
            state: [0; 8],
            work: [0; 8],
        };
        mac_into(&spa_key(&key, 0, 0), &mut scratch);
        for (i, word) in scratch.state[..4].iter().enumerate() {
            bytes[SIGNED_LEN + 4 * i..SIGNED_LEN + 4 * i + 4].copy_from_slice(&word.to_be_bytes());
        }
    };
    let base = datagram(&key, &request(10), ip(SERVER));
    let v4_named =
        datagram(&key, &Request { admit: Some(ip("203.0.113.5")), ..request(10) }, ip(SERVER));
    for (what, mut bytes, position, value) in [
        ("ADMIT_V6 alone", base, 1, flags::ADMIT_V6),
        ("an unknown flag", base, 1, 0x04),
        ("address bytes without ADMIT", base, 25, 1),
        ("bytes after an IPv4 address", v4_named, 30, 1),
    ] {
        bytes[position] |= value;
        signed(&mut bytes);
        let m = model(policy::MAY_ADMIT_OTHER);
        send(&m, CLIENT, SERVER, &bytes, 10);
        assert!(m.allow.borrow().is_empty(), "{what} was accepted");
    }
}

#[test]
fn datagrams_from_before_the_maps_existed_are_refused() {
    let m = model(0);
    m.set_runtime(Runtime::SpaNotBefore, BOOT_AT_UNIX + 20);
    send(&m, CLIENT, SERVER, &valid(10), 25);
    assert!(m.allow.borrow().is_empty(), "a datagram older than the nonce cache opened");
    send(&m, CLIENT, SERVER, &valid(21), 25);
    assert!(!m.allow.borrow().is_empty());
}

#[test]
fn other_sizes_and_unknown_clients_are_not_spa() {
    let m = model(0);
    let bytes = valid(10);
    for len in [0, 51, 53] {
        let mut longer = std::vec::Vec::from(bytes);
        longer.resize(len, 0);
        let d = send(&m, CLIENT, SERVER, &longer, 10);
        assert_eq!((d.action, d.counter), (XDP_PASS, Counter::Passed), "{len} bytes");
    }
    let unknown =
        datagram(&key_from_secret(&SECRET), &Request { index: 4, ..request(10) }, ip(SERVER));
    send(&m, CLIENT, SERVER, &unknown, 10);
    assert!(m.allow.borrow().is_empty());
}

#[test]
fn the_key_is_separate_from_the_secret() {
    assert_ne!(key_from_secret(&SECRET), SECRET);
    assert_ne!(key_from_secret(&SECRET), key_from_secret(&[8; 32]));
}
