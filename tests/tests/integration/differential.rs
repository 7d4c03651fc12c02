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

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..SOURCES.len(), prop::sample::select(Proto::ALL.to_vec()), 0..12usize,
              prop::sample::select(FLAGS.to_vec()), 40000..40003u16,
              prop::sample::select(vec![1u32, 2, 3, 77_777]))
            .prop_map(|(source, proto, port, flags, sport, seq)| Op::Packet { source, proto, port, flags, sport, seq }),
        3 => (0..SOURCES.len(), 0..3usize).prop_map(|(source, client)| Op::Knock { source, client }),
        1 => (0..SOURCES.len(), 0..BACKGROUND)
            .prop_map(|(source, client)| Op::KnockBackground { source, client }),
        1 => (0..SOURCES.len(), any::<bool>()).prop_map(|(source, long)| Op::Allow { source, long }),
        2 => (0..SOURCES.len(), 0..5u8).prop_map(|(source, kind)| Op::Spa { source, kind }),
        1 => Just(Op::RebuildFilter),
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
    (sequences, prop::collection::vec(op(), 1..50))
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
    assert!(checked.longer_windows_kept >= 3, "{checked:?}");
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

fn run_case(kernel: &mut Kernel, checked: &mut Checked, sequences: &[Vec<u16>], ops: &[Op]) {
    kernel.maps.forget_runtime_state().unwrap();
    let mut model = Model::new();
    model.settings = SETTINGS;
    model.ports.insert(PROTECTED_TCP, port_flags::PROTECTED_TCP);
    model.ports.insert(PROTECTED_UDP, port_flags::PROTECTED_UDP);
    model.knock_space(Proto::Tcp, POOL[0], POOL[7]);
    model.knock_space(Proto::Tcp, SPOILER, SPOILER);
    model.ports.insert(SPA_PORT, port_flags::SPA_UDP);
    model.spa_keys.insert(SPA_INDEX, spa_key(&key_from_secret(&SPA_SECRET), SPA_CLIENT, 0));
    // The same offset between UNIX and boot time on both sides.
    let unix_offset = unix_ns().wrapping_sub(clock::boot_ns());
    kernel.maps.set_runtime(Runtime::UnixOffset, unix_offset).unwrap();
    model.set_runtime(Runtime::UnixOffset, unix_offset);
    let mut last_spa: Option<[u8; spa::DATAGRAM_LEN]> = None;
    let mut nonce = 0u64;
    let now = clock::boot_ns();
    // Checked: the boot clock may be younger than the hour subtracted.
    let valid = (now.saturating_sub(HOUR), now + HOUR);
    let mut table = KnockTable::new();
    let knocked = sequences;
    let sequences: Vec<Vec<u16>> = knocked.iter().cloned().chain(background()).collect();
    for (client, ports) in sequences.iter().enumerate() {
        // Client c's sequence sits at index 4c, as the daemon places slot 0.
        let index = client as u32 * 4;
        let id = client as u32 + 1;
        let steps: Vec<ProtoPort> = ports.iter().map(|&p| ProtoPort::new(Proto::Tcp, p)).collect();
        let info = SequenceInfo {
            valid_from_ns: valid.0,
            valid_until_ns: valid.1,
            slot: 7,
            client: id,
            length: steps.len() as u32,
        };
        table.install(index, info, &steps).unwrap();
        model.install(index, id, 7, ports);
        let info = model.sequences.get_mut(&index).unwrap();
        (info.valid_from_ns, info.valid_until_ns) = valid;
    }
    // One write of the whole table (the knock space holds the pool already).
    table.sync(&mut kernel.maps).unwrap();
    let context = || format!("\nsequences {knocked:?}\nops {ops:?}");

    // What each source sent, for the properties below.
    let mut sent: Vec<Vec<ProtoPort>> = vec![Vec::new(); SOURCES.len()];
    // Sources allowed by hand or by a single-packet authorization.
    let mut allowed_by_hand = [false; SOURCES.len()];
    for op in ops {
        if let Op::Spa { source, kind } = *op {
            let src: IpAddr = SOURCES[source].parse().unwrap();
            let server: IpAddr = if src.is_ipv4() { SERVER_V4 } else { SERVER_V6 }.parse().unwrap();
            let now_unix = (clock::boot_ns().wrapping_add(unix_offset) / 1_000_000_000) as u32;
            nonce += 1;
            let mut request = spa::Request {
                index: SPA_INDEX as u16,
                unix_secs: now_unix,
                nonce: [0; spa::NONCE_LEN],
                admit: None,
            };
            request.nonce[..8].copy_from_slice(&nonce.to_be_bytes());
            let key = key_from_secret(&SPA_SECRET);
            let datagram = match kind {
                1 => last_spa.unwrap_or_else(|| spa::datagram(&key, &request, server)),
                2 => {
                    let mut bytes = spa::datagram(&key, &request, server);
                    bytes[(nonce % spa::DATAGRAM_LEN as u64) as usize] ^= 0x10;
                    bytes
                }
                3 => spa::datagram(
                    &key,
                    &spa::Request { unix_secs: now_unix - 60, ..request },
                    server,
                ),
                4 => {
                    let other: IpAddr =
                        if src.is_ipv4() { "198.51.100.2" } else { "2001:db8:1::2" }
                            .parse()
                            .unwrap();
                    spa::datagram(&key, &request, other)
                }
                _ => spa::datagram(&key, &request, server),
            };
            if kind == 0 {
                last_spa = Some(datagram);
            }
            let frame = Frame {
                udp_payload: datagram.to_vec(),
                ..Frame::new(src, server, Proto::Udp, SPA_PORT)
            }
            .build_with_sport(40000);
            let pkt = Packet {
                src: SourceKey::from(src),
                proto: Proto::Udp,
                sport: 40000,
                dport: SPA_PORT,
                tcp: Segment::default(),
                payload: datagram.to_vec(),
                destination: Some(SourceKey::from(server)),
            };
            let opened_before = model
                .events
                .borrow()
                .iter()
                .filter(|e| e.kind == EventKind::SpaOpened as u32)
                .count();
            let expected = decide(&model, Parsed::Transport(pkt), clocks_now());
            let (action, counter) = testrun::run_frame(&mut kernel.ebpf, &kernel.maps, &frame);
            assert_eq!(
                (action, counter),
                (expected.action, expected.counter),
                "SPA kind {kind} from {src}{}",
                context()
            );
            let opened = model
                .events
                .borrow()
                .iter()
                .filter(|e| e.kind == EventKind::SpaOpened as u32)
                .count()
                > opened_before;
            if opened {
                // Its source may pass from now on without knocking.
                allowed_by_hand[source] = true;
            }
            if kind == 0 {
                checked.spa_opened += 1;
                assert!(opened, "a valid datagram did not open{}", context());
            } else if kind != 1 || last_spa.is_some() {
                checked.spa_refused += 1;
                assert!(!opened, "an SPA datagram of kind {kind} opened{}", context());
            }
            continue;
        }
        let packets: Vec<(usize, Proto, u16, u8, u16, u32)> = match *op {
            Op::Packet { source, proto, port, flags, sport, seq } => {
                vec![(source, proto, port_of(port), flags, sport, seq)]
            }
            // The client then connects, as a real one would.
            Op::Knock { source, client } | Op::KnockBackground { source, client } => {
                let client = match *op {
                    Op::Knock { .. } => client,
                    _ => knocked.len() + client,
                };
                std::iter::once((source, Proto::Tcp, SPOILER, SYN, 40000, 1))
                    .chain(
                        sequences[client]
                            .iter()
                            .map(|&port| (source, Proto::Tcp, port, SYN, 40000, 1)),
                    )
                    .chain([(source, Proto::Tcp, PROTECTED_TCP, SYN, 40003, 1)])
                    .collect()
            }
            Op::Allow { source, long } => {
                let deadline = clock::boot_ns() + if long { 2 * HOUR } else { HOUR / 6 };
                let entry = AllowEntry {
                    deadline_ns: deadline,
                    origin: AllowOrigin::Manual as u32,
                    client: 0,
                };
                kernel.maps.allow(SOURCES[source].parse().unwrap(), deadline).unwrap();
                model.allow.borrow_mut().insert(source_key(source), entry);
                allowed_by_hand[source] = true;
                continue;
            }
            Op::RebuildFilter => {
                kernel.maps.rebuild_filter().unwrap();
                checked.filter_rebuilds += 1;
                continue;
            }
            Op::Spa { .. } => unreachable!("sent above"),
        };
        let (source, client) = match *op {
            Op::Knock { source, client } => (source, Some(client)),
            _ => (0, None),
        };
        let opened_before = client.is_some_and(|c| opened_for(&model, c));
        let allowed_before = model.allowed_entry(source_key(source));
        for (source, proto, port, flags, sport, seq) in packets {
            sent[source].push(ProtoPort::new(proto, port));
            let src: IpAddr = SOURCES[source].parse().unwrap();
            let server: IpAddr = if src.is_ipv4() { SERVER_V4 } else { SERVER_V6 }.parse().unwrap();
            let udp = proto == Proto::Udp;
            let flags = if udp { 0 } else { flags };
            let frame =
                Frame { tcp_flags: flags, tcp_seq: seq, ..Frame::new(src, server, proto, port) }
                    .build_with_sport(sport);
            let tcp = if udp { Segment::default() } else { Segment::new(flags, seq, 0, 0) };
            let parsed = Parsed::Transport(Packet {
                src: SourceKey::from(src),
                proto,
                sport,
                dport: port,
                tcp,
                // The frame's UDP payload: four bytes.
                payload: if udp { vec![0; 4] } else { Vec::new() },
                destination: None,
            });
            let expected = decide(&model, parsed, clocks_now());
            let (action, counter) = testrun::run_frame(&mut kernel.ebpf, &kernel.maps, &frame);
            assert_eq!(
                (action, counter),
                (expected.action, expected.counter),
                "packet {src} {proto:?} :{sport} -> {port} flags {flags:#x} seq {seq}{}",
                context()
            );
            // Nothing through to a protected port without the knock ports in order.
            if matches!(counter, Counter::PassedAllowed | Counter::PassedFlow)
                && !allowed_by_hand[source]
            {
                checked.passes_from_knockers += 1;
                assert!(
                    sequences.iter().any(|seq| sent_in_order(&sent[source], seq)),
                    "{src} got through without knocking{}",
                    context()
                );
            }
        }
        if let Some(client) = client {
            let key = source_key(source);
            // Over the limit after the knock means over it during the knock:
            // a knock that opens costs no miss.
            let limited = model
                .misses
                .borrow()
                .get(&key.miss_prefix())
                .is_some_and(|tat| SETTINGS.miss_rate().exhausted(*tat, clock::boot_ns()));
            let after = model.allowed_entry(key);
            if opened_before {
                checked.replays_refused += 1;
                assert_eq!(
                    after,
                    allowed_before,
                    "a replayed sequence changed the door{}",
                    context()
                );
            } else if limited {
                checked.clean_knocks_limited += 1;
            } else {
                checked.clean_knocks_opened += 1;
                assert!(
                    opened_for(&model, client),
                    "a valid knock did not open the door{}",
                    context()
                );
                let after = after.expect("admitted");
                if allowed_before
                    .is_some_and(|b| b.deadline_ns > after.deadline_ns.saturating_sub(TOLERANCE_NS))
                    && allowed_before.is_some_and(|b| b.origin == AllowOrigin::Manual as u32)
                {
                    checked.longer_windows_kept += 1;
                    assert_eq!(
                        Some(after),
                        allowed_before,
                        "a knock shortened a longer window{}",
                        context()
                    );
                }
            }
        }
    }
    checked.background_opened += model
        .events
        .borrow()
        .iter()
        .filter(|e| e.kind == EventKind::Opened as u32 && e.client as usize > knocked.len())
        .count() as u32;
    compare_maps(kernel, &model, &context());
}

/// Every entry of every map the two sides write must agree.
fn compare_maps(kernel: &Kernel, model: &Model, context: &str) {
    let close = |a: u64, b: u64| a.abs_diff(b) <= TOLERANCE_NS;

    let kernel_allowed: BTreeMap<SourceKey, AllowEntry> =
        kernel.maps.allowed().unwrap().into_iter().collect();
    let model_allowed: BTreeMap<SourceKey, AllowEntry> =
        model.allow.borrow().iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        kernel_allowed.keys().collect::<Vec<_>>(),
        model_allowed.keys().collect::<Vec<_>>(),
        "allowed sources{context}"
    );
    for (key, k) in &kernel_allowed {
        let m = model_allowed[key];
        assert!(
            close(k.deadline_ns, m.deadline_ns) && (k.origin, k.client) == (m.origin, m.client),
            "allow entry of {key:?}: kernel {k:?}, model {m:?}{context}"
        );
    }

    let kernel_flows: BTreeMap<_, _> = kernel.maps.flows().unwrap().into_iter().collect();
    let model_flows: BTreeMap<_, _> = model.flows.borrow().iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        kernel_flows.keys().collect::<Vec<_>>(),
        model_flows.keys().collect::<Vec<_>>(),
        "flows{context}"
    );
    for (key, k) in &kernel_flows {
        let m = model_flows[key];
        assert!(
            close(k.last_seen_ns, m.last_seen_ns)
                && (k.closing_until_ns == 0) == (m.closing_until_ns == 0)
                && close(k.closing_until_ns, m.closing_until_ns)
                && (k.client, k.next_seq, k.last_ack, k.tracking)
                    == (m.client, m.next_seq, m.last_ack, m.tracking),
            "flow {key:?}: kernel {k:?}, model {m:?}{context}"
        );
    }

    let kernel_states: BTreeMap<_, _> = kernel.maps.knock_states().unwrap().into_iter().collect();
    let model_states: BTreeMap<_, _> =
        model.states.borrow().iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        kernel_states.keys().collect::<Vec<_>>(),
        model_states.keys().collect::<Vec<_>>(),
        "knock states{context}"
    );
    for (key, k) in &kernel_states {
        let m = model_states[key];
        assert!(
            close(k.started_ns, m.started_ns)
                && (k.node, k.step, k.last_port, k.last_proto, k.via)
                    == (m.node, m.step, m.last_port, m.last_proto, m.via),
            "knock state of {key:?}: kernel {k:?}, model {m:?}{context}"
        );
    }

    let kernel_used: BTreeSet<_> =
        kernel.maps.used().unwrap().into_iter().map(|(k, _)| k).collect();
    let model_used: BTreeSet<_> = model.used.borrow().keys().copied().collect();
    assert_eq!(kernel_used, model_used, "used sequences{context}");

    let kernel_misses: BTreeMap<_, _> = kernel.maps.misses().unwrap().into_iter().collect();
    let model_misses: BTreeMap<_, _> =
        model.misses.borrow().iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        kernel_misses.keys().collect::<Vec<_>>(),
        model_misses.keys().collect::<Vec<_>>(),
        "miss records{context}"
    );
    for (key, k) in &kernel_misses {
        assert!(
            close(*k, model_misses[key]),
            "misses of {key:?}: kernel {k}, model {}{context}",
            model_misses[key]
        );
    }

    let kernel_nonces: BTreeSet<_> =
        kernel.maps.spa_nonces().unwrap().into_iter().map(|(k, _)| k).collect();
    let model_nonces: BTreeSet<_> = model.nonces.borrow().keys().copied().collect();
    assert_eq!(kernel_nonces, model_nonces, "SPA nonces{context}");

    // And the security property itself: a source is only ever allowed after
    // completing a sequence that opened the door for it, or by hand.
    let opened: BTreeSet<SourceKey> = model
        .events
        .borrow()
        .iter()
        .filter(|e| e.kind == EventKind::Opened as u32)
        .map(|e| e.source)
        .collect();
    for (key, entry) in &model_allowed {
        assert!(
            opened.contains(key) || entry.origin != AllowOrigin::Knock as u32,
            "{key:?}{context}"
        );
    }
}

/// Has client `client` (index into the case's sequences) opened the door?
fn opened_for(model: &Model, client: usize) -> bool {
    model
        .events
        .borrow()
        .iter()
        .any(|e| e.kind == EventKind::Opened as u32 && e.client == client as u32 + 1)
}

/// Did a source send `sequence`'s ports, over TCP, in order (not
/// necessarily back to back)? Opening the door needs at least that.
fn sent_in_order(sent: &[ProtoPort], sequence: &[u16]) -> bool {
    let mut wanted = sequence.iter().peekable();
    for knock in sent {
        if knock.proto == Proto::Tcp && wanted.peek() == Some(&&knock.port) {
            wanted.next();
        }
    }
    wanted.peek().is_none()
}
