//! The XDP program through BPF_PROG_TEST_RUN: tables of crafted frames ×
//! (unprotected, protected, allowed, allowed-but-expired), knocks, flows and
//! always-allowed networks, asserting the verdict and the counter each
//! frame moves.

mod events;
mod flows;
mod knocks;
mod tables;

use std::net::IpAddr;

use aya::Ebpf;
use aya::maps::{MapData, RingBuf};
use knock_common::{
    Proto, ProtoPort,
    decide::{XDP_DROP, XDP_PASS},
    event::Event,
    maps::{Counter, MAP_EVENTS, Settings},
    trie::KnockTable,
};
use knock_tests::{
    frames::{Ext, Frame},
    testrun,
};
use knock_userspace::{clock, loader, maps::KernelMaps};

pub const SERVER_V4: &str = "192.0.2.1";
pub const ALLOWED_V4: &str = "192.0.2.10";
pub const EXPIRED_V4: &str = "192.0.2.11";
pub const STRANGER_V4: &str = "192.0.2.12";
pub const SERVER_V6: &str = "2001:db8::1";
pub const ALLOWED_V6: &str = "2001:db8::10";
pub const EXPIRED_V6: &str = "2001:db8::11";
pub const STRANGER_V6: &str = "2001:db8::12";

pub const PROTECTED_TCP: u16 = 22;
pub const PROTECTED_UDP: u16 = 51820;
pub const OPEN_PORT: u16 = 80;

pub fn config(idle_timeout_ns: u64, close_grace_ns: u64) -> Settings {
    Settings {
        open_window_ns: 30_000_000_000,
        knock_timeout_ns: 10_000_000_000,
        idle_timeout_ns,
        close_grace_ns,
        ..Settings::default()
    }
}

pub struct Harness {
    pub ebpf: Ebpf,
    pub maps: KernelMaps,
    pub table: KnockTable,
    events: RingBuf<MapData>,
}

impl Harness {
    pub fn new() -> Self {
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
    pub fn run(&mut self, frame: &[u8]) -> (u32, Counter) {
        testrun::run_frame(&mut self.ebpf, &self.maps, frame)
    }

    /// The events the program wrote since the last call.
    pub fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(bytemuck::pod_read_unaligned::<Event>(&item));
        }
        out
    }

    pub fn expect(&mut self, name: &str, frame: &[u8], verdict: u32, counter: Counter) {
        let (got_verdict, got_counter) = self.run(frame);
        assert_eq!(
            (verdict_name(got_verdict), got_counter),
            (verdict_name(verdict), counter),
            "case {name}"
        );
    }
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_PASS => "PASS",
        XDP_DROP => "DROP",
        _ => "OTHER",
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A frame shape: how the transport header is wrapped.
pub type Shape = (&'static str, fn(Frame) -> Frame);

pub fn v4_shapes() -> Vec<Shape> {
    vec![
        ("ipv4", |f| f),
        ("ipv4+options(4 words)", |f| Frame { ipv4_option_words: 4, ..f }),
        ("ipv4+options(max 10 words)", |f| Frame { ipv4_option_words: 10, ..f }),
        ("vlan/ipv4", |f| Frame { vlans: vec![100], ..f }),
        ("qinq/ipv4", |f| Frame { vlans: vec![10, 20], ..f }),
        ("qinq/ipv4+options", |f| Frame { vlans: vec![10, 20], ipv4_option_words: 3, ..f }),
    ]
}

pub fn v6_shapes() -> Vec<Shape> {
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

/// Installs `ports` (TCP) as sequence `index` of client 42 for slot `slot`, valid now.
pub fn install_sequence(h: &mut Harness, index: u32, slot: u64, ports: &[u16]) {
    let now = clock::boot_ns();
    let valid = (now.saturating_sub(1_000_000_000), now + 60_000_000_000);
    testrun::install_tcp_sequence(&mut h.maps, &mut h.table, index, 42, slot, ports, valid);
}
