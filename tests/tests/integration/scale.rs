//! 4,096 clients in maps sized for them: every client's four live slots
//! derived as the daemon derives them. Most draw from the default range, so
//! the trie fills four fifths of its room; collisions are forced on the
//! rest: one in 32 draws from 16 ports (shared first knocks and
//! prefixes) and one in 32 shares its secret in fours (four identical
//! sequences in every slot, as many as a trie node finishes). Every client
//! opens the door from its own address; then every client rotates at once,
//! and every client opens the door again with its next slot's sequence.

use std::{collections::BTreeSet, net::IpAddr};

use knock_common::{
    Proto, ProtoPort,
    decide::XDP_PASS,
    maps::{Counter, Limits},
    sequence::{self, Params},
    trie::{InstallError, KnockTable, SequenceInfo},
};
use knock_tests::{frames::Frame, privileged, testrun};
use knock_userspace::{clock, loader, maps::KernelMaps};

const CLIENTS: u32 = 4096;
const SERVER: &str = "192.0.2.1";
const PROTECTED: u16 = 22;
/// The default knock ports.
const WIDE: Params<'static> = Params { length: 4, port_lo: 61000, port_hi: 65535, exclude: &[] };
/// 16 ports, 4 knocks.
const NARROW: Params<'static> = Params { length: 4, port_lo: 61000, port_hi: 61015, exclude: &[] };
const SLOTS: u64 = 4;

fn secret(client: u32) -> [u8; 32] {
    // Clients 1, 33, 65 and 97 share one secret, 129, 161, 193 and 225 the next...
    let owner = if client % 32 == 1 { CLIENTS + client / 128 } else { client };
    let mut secret = [0x5a; 32];
    secret[..4].copy_from_slice(&owner.to_be_bytes());
    secret
}

fn params(client: u32) -> &'static Params<'static> {
    if client.is_multiple_of(32) { &NARROW } else { &WIDE }
}

fn steps(client: u32, slot: u64) -> Vec<ProtoPort> {
    let sequence = sequence::derive(&secret(client), slot, params(client)).expect("derivable");
    sequence.as_slice().iter().map(|&port| ProtoPort::new(Proto::Tcp, port)).collect()
}

fn source(client: u32) -> IpAddr {
    IpAddr::from([10, 1, (client >> 8) as u8, client as u8])
}

/// Installs `slot` for `client` at the daemon's index for it; false when
/// more identical sequences than a trie node can finish are installed
/// already (the daemon then reports the client as broken).
fn install(table: &mut KnockTable, client: u32, slot: u64, now: u64) -> bool {
    let steps = steps(client, slot);
    let info = SequenceInfo {
        valid_from_ns: 0,
        valid_until_ns: now + testrun::HOUR_NS,
        slot,
        client: client + 1,
        length: steps.len() as u32,
    };
    match table.install(client * 4 + (slot % SLOTS) as u32, info, &steps) {
        Ok(()) => true,
        Err(InstallError::TooManyIdentical) => false,
        Err(err) => panic!("client {client} slot {slot}: {err}"),
    }
}

/// Knocks `client`'s sequence for `slot` from its address; true when the
/// door then opens to it.
fn knock(ebpf: &mut aya::Ebpf, maps: &KernelMaps, client: u32, slot: u64, sport: u16) -> bool {
    let server: IpAddr = SERVER.parse().unwrap();
    for step in steps(client, slot) {
        let frame = Frame::new(source(client), server, Proto::Tcp, step.port).build();
        let (verdict, counter) = testrun::run_frame(ebpf, maps, &frame);
        assert_eq!((verdict, counter), (XDP_PASS, Counter::Knock), "client {client}");
    }
    let connect = Frame::new(source(client), server, Proto::Tcp, PROTECTED).build_with_sport(sport);
    testrun::run_frame(ebpf, maps, &connect) == (XDP_PASS, Counter::PassedAllowed)
}

#[test]
fn four_thousand_colliding_clients_each_open_the_door_before_and_after_a_rotation() {
    if !privileged("four_thousand_colliding_clients_each_open_the_door_before_and_after_a_rotation")
    {
        return;
    }
    let limits = Limits { clients: CLIENTS, ..Limits::DEFAULT };
    let mut ebpf = loader::load_sized(&limits).expect("load the XDP program");
    let mut maps = KernelMaps::take(&mut ebpf).unwrap();
    maps.set_settings(testrun::lasting_settings()).unwrap();
    let protected = [ProtoPort::new(Proto::Tcp, PROTECTED)].into();
    maps.set_protected(&Default::default(), &protected).unwrap();
    let space = (WIDE.port_lo..=WIDE.port_hi).map(|p| ProtoPort::new(Proto::Tcp, p)).collect();
    maps.set_knock_space(&Default::default(), &space).unwrap();

    // Slots 1-4 live; clients knock slot 2.
    let now = clock::boot_ns();
    let mut table = KnockTable::new();
    let mut broken = BTreeSet::new();
    for client in 0..CLIENTS {
        for slot in 1..=SLOTS {
            if !install(&mut table, client, slot, now) {
                broken.insert((client, slot));
            }
        }
    }
    table.sync(&mut maps).expect("4,096 clients fit in maps sized for them");
    let edges = maps.edges().unwrap().len();
    assert!(
        edges > 65_536 * 3 / 4,
        "the trie holds only {edges} edges: too little to fill its room"
    );
    let narrow: BTreeSet<u16> = (0..CLIENTS).step_by(32).map(|c| steps(c, 2)[0].port).collect();
    assert_eq!(narrow.len(), 16, "the narrow clients share their first knocks");
    assert_eq!(steps(1, 2), steps(97, 2), "clients 1 and 97 share their sequences");
    assert!(broken.len() < 8, "{} clients with too many identical sequences", broken.len());

    for client in (0..CLIENTS).filter(|&c| !broken.contains(&(c, 2))) {
        assert!(knock(&mut ebpf, &maps, client, 2, 40000), "client {client} did not open the door");
    }

    // Every client rotates at once: slot 5 takes slot 1's place.
    for client in 0..CLIENTS {
        if !install(&mut table, client, 5, now) {
            broken.insert((client, 5));
        }
    }
    table.sync(&mut maps).expect("a rotation of every client fits");
    for client in (0..CLIENTS).filter(|&c| !broken.contains(&(c, 5))) {
        assert!(
            knock(&mut ebpf, &maps, client, 5, 40001),
            "client {client} did not open after the rotation"
        );
    }
}
