//! Differential testing: the same generated packet streams go through the
//! real XDP program (BPF_PROG_TEST_RUN) and through the reference model
//! (knock-common's decision and knock logic over plain collections). Both
//! get their sequences from the same builder the daemon uses. Their verdicts
//! and counters must agree packet by packet, and afterwards every map entry:
//! allowed sources, flows (with their sequence tracking and client), knock
//! states, used sequences and failed-knock records, deadlines within the few
//! microseconds between the two clocks.
//!
//! On the same streams three properties are checked without the model, and
//! counted, so a run that never exercised one fails: a source gets nothing
//! through to a protected port unless it was allowed by hand or sent some
//! client's knock ports in order; a clean knock of a sequence that has not
//! opened the door yet always opens it (unless its source is over the
//! failed-knock limit); and one that has, never does again.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use knock_common::{
    Proto, ProtoPort,
    allow::{AllowEntry, AllowOrigin},
    decide::{Parsed, decide},
    event::EventKind,
    flow::Segment,
    knock::KnockMaps as _,
    maps::{Counter, Runtime, Settings, port_flags},
    model::{At, Model, Packet},
    proto::tcp_flags::{ACK, FIN, RST, SYN},
    source::SourceKey,
    spa::{self, key_from_secret, spa_key},
    trie::{KnockTable, SequenceInfo},
};
use knock_tests::{frames::Frame, privileged, testrun};
use knock_userspace::{clock, loader, maps::KernelMaps};
use proptest::{prelude::*, test_runner::TestRunner};

mod compare;
mod stream;

use compare::{compare_maps, opened_for, sent_in_order};
use stream::run_case;

const SERVER_V4: &str = "198.51.100.1";
const SERVER_V6: &str = "2001:db8:1::1";
const SOURCES: [&str; 5] =
    ["198.51.100.10", "198.51.100.11", "198.51.100.12", "2001:db8:1::10", "2001:db8:1::11"];
/// Knock ports are drawn from here, so streams hit them often.
const POOL: [u16; 8] = [61000, 61001, 61002, 61003, 61004, 61005, 61006, 61007];
/// In the knock space, but in no sequence: a SYN here ends any knock.
const SPOILER: u16 = 61010;
const PROTECTED_TCP: u16 = 22;
const PROTECTED_UDP: u16 = 53;
const OTHER: u16 = 80;

/// TCP flags of generated packets: bare SYNs twice as often as the rest.
const FLAGS: [u8; 7] = [SYN, SYN, ACK, SYN | ACK, FIN | ACK, RST, RST | ACK];
const HOUR: u64 = 3_600_000_000_000;
/// The two clocks are read microseconds apart.
const TOLERANCE_NS: u64 = 50_000_000;

/// Long enough that nothing expires during a case: this test is about
/// matching, replay, limits and flows, not clocks. Failed knocks are
/// limited (a burst of 4, then one an hour) so the limiter runs too.
const SETTINGS: Settings = Settings {
    open_window_ns: HOUR,
    knock_timeout_ns: HOUR,
    idle_timeout_ns: HOUR,
    close_grace_ns: HOUR,
    miss_interval_ns: HOUR,
    miss_burst_ns: 4 * HOUR,
    global_miss_interval_ns: 1_000_000,
    global_miss_burst_ns: 1_000_000_000,
    spa_skew_secs: 30,
};
/// The SPA client: its index, id and port.
const SPA_INDEX: u32 = 9;
const SPA_CLIENT: u32 = 99;
const SPA_PORT: u16 = 62_000;
const SPA_SECRET: [u8; 32] = [5; 32];

#[derive(Clone, Debug)]
enum Op {
    /// One packet: source, protocol, port (index into POOL, or 8 = 22,
    /// 9 = 53, 10 = 80, 11 = the spoiler), TCP flags, source port, sequence
    /// number.
    Packet { source: usize, proto: Proto, port: usize, flags: u8, sport: u16, seq: u32 },
    /// Source `source` sends client `client`'s whole sequence, after a
    /// SYN to the spoiler port that ends any knock in progress, then
    /// connects to the protected TCP port.
    Knock { source: usize, client: usize },
    /// The same for one of the [`background`] clients (its index there).
    KnockBackground { source: usize, client: usize },
    /// `allow SOURCE --for` 10 minutes or 2 hours (the knock's window is 1 h).
    Allow { source: usize, long: bool },
    /// An SPA datagram from `source`: 0 valid and fresh, 1 a replay of the
    /// last valid one, 2 a flipped byte, 3 a minute old, 4 for another server.
    Spa { source: usize, kind: u8 },
    /// The daemon rebuilds the admission filter (the model has none).
    RebuildFilter,
}

fn port_of(index: usize) -> u16 {
    match index {
        8 => PROTECTED_TCP,
        9 => PROTECTED_UDP,
        10 => OTHER,
        11 => SPOILER,
        i => POOL[i],
    }
}

/// One op, or a short run of ops that a property needs together and that
/// independent draws would seldom produce.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop_oneof![
        8 => (0..SOURCES.len(), prop::sample::select(Proto::ALL.to_vec()), 0..12usize,
              prop::sample::select(FLAGS.to_vec()), 40000..40003u16,
              prop::sample::select(vec![1u32, 2, 3, 77_777]))
            .prop_map(|(source, proto, port, flags, sport, seq)| vec![Op::Packet { source, proto, port, flags, sport, seq }]),
        3 => (0..SOURCES.len(), 0..3usize).prop_map(|(source, client)| vec![Op::Knock { source, client }]),
        1 => (0..SOURCES.len(), 0..BACKGROUND)
            .prop_map(|(source, client)| vec![Op::KnockBackground { source, client }]),
        1 => (0..SOURCES.len(), any::<bool>()).prop_map(|(source, long)| vec![Op::Allow { source, long }]),
        // A knock must keep a longer window given by hand.
        1 => (0..SOURCES.len(), 0..3usize).prop_map(|(source, client)| {
            vec![Op::Allow { source, long: true }, Op::Knock { source, client }]
        }),
        2 => (0..SOURCES.len(), 0..5u8).prop_map(|(source, kind)| vec![Op::Spa { source, kind }]),
        1 => Just(vec![Op::RebuildFilter]),
    ]
}

/// Three clients' sequences (1-3 TCP knocks from the pool, distinct ports
/// within a sequence; clients may share ports, but no sequence is a prefix
/// of another, or the shorter one would complete first, by design) and a
/// packet stream. [`background`] clients are installed beside them.
fn case() -> impl Strategy<Value = (Vec<Vec<u16>>, Vec<Op>)> {
    let sequence = prop::sample::subsequence(POOL.to_vec(), 1..=3).prop_shuffle();
    let sequences = prop::collection::vec(sequence, 3).prop_filter("prefix-free", |s| {
        s.iter()
            .enumerate()
            .all(|(i, a)| s.iter().enumerate().all(|(j, b)| i == j || !b.starts_with(a)))
    });
    (sequences, prop::collection::vec(ops(), 1..50).prop_map(|runs| runs.concat()))
}

/// Clients beside the three a case knocks for, so the trie holds hundreds
/// of sequences: 4 knocks each from the same pool, so they share prefixes
/// with each other and with the three, and some are identical (up to the
/// four finishers a node holds). Streams of random packets complete some.
const BACKGROUND: usize = 300;

fn background() -> Vec<Vec<u16>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        // xorshift64: the same clients in every run.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut seen: BTreeMap<Vec<u16>, usize> = BTreeMap::new();
    let mut out = Vec::new();
    while out.len() < BACKGROUND {
        let mut ports = POOL.to_vec();
        let sequence: Vec<u16> =
            (0..4).map(|_| ports.remove(next() as usize % ports.len())).collect();
        let copies = seen.entry(sequence.clone()).or_default();
        if *copies < knock_common::trie::MAX_FINISHERS {
            *copies += 1;
            out.push(sequence);
        }
    }
    out
}

struct Kernel {
    ebpf: aya::Ebpf,
    maps: KernelMaps,
}

/// How often each property was checked, over the whole run.
#[derive(Debug, Default)]
struct Checked {
    passes_from_knockers: u32,
    clean_knocks_opened: u32,
    clean_knocks_limited: u32,
    replays_refused: u32,
    longer_windows_kept: u32,
    spa_opened: u32,
    spa_refused: u32,
    filter_rebuilds: u32,
    background_opened: u32,
}

#[test]
fn the_program_and_the_model_agree_on_generated_streams() {
    if !privileged("the_program_and_the_model_agree_on_generated_streams") {
        return;
    }
    let mut ebpf = loader::load().unwrap();
    let mut maps = KernelMaps::take(&mut ebpf).unwrap();
    maps.set_settings(SETTINGS).unwrap();
    let protected: BTreeSet<ProtoPort> =
        [ProtoPort::new(Proto::Tcp, PROTECTED_TCP), ProtoPort::new(Proto::Udp, PROTECTED_UDP)]
            .into();
    maps.set_protected(&Default::default(), &protected).unwrap();
    let space: BTreeSet<ProtoPort> =
        POOL.iter().chain([&SPOILER]).map(|&port| ProtoPort::new(Proto::Tcp, port)).collect();
    maps.set_knock_space(&Default::default(), &space).unwrap();
    let spa_ports = [ProtoPort::new(Proto::Udp, SPA_PORT)].into();
    maps.set_spa_ports(&Default::default(), &spa_ports).unwrap();
    maps.set_spa_key(SPA_INDEX, &spa_key(&key_from_secret(&SPA_SECRET), SPA_CLIENT, 0)).unwrap();
    let kernel = RefCell::new(Kernel { ebpf, maps });
    let checked = RefCell::new(Checked::default());

    let mut runner = TestRunner::new(ProptestConfig { cases: 96, ..ProptestConfig::default() });
    runner
        .run(&case(), |(sequences, ops)| {
            run_case(&mut kernel.borrow_mut(), &mut checked.borrow_mut(), &sequences, &ops);
            Ok(())
        })
        .unwrap();
    let checked = checked.into_inner();
    eprintln!("{checked:?}");
    assert!(checked.passes_from_knockers >= 20, "{checked:?}");
    assert!(checked.clean_knocks_opened >= 40, "{checked:?}");
    assert!(checked.clean_knocks_limited >= 5, "{checked:?}");
    assert!(checked.replays_refused >= 20, "{checked:?}");
    assert!(checked.longer_windows_kept >= 10, "{checked:?}");
    assert!(checked.spa_opened >= 20 && checked.spa_refused >= 40, "{checked:?}");
    assert!(checked.filter_rebuilds >= 20 && checked.background_opened >= 20, "{checked:?}");
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// The program's two clocks, read now.
fn clocks_now() -> At {
    At { boot_ns: clock::boot_ns(), flow_ns: clock::flow_ns() }
}

fn source_key(source: usize) -> SourceKey {
    SourceKey::from(SOURCES[source].parse::<IpAddr>().unwrap())
}
