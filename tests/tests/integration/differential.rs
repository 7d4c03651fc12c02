//! Differential testing: the same generated packet streams go through the
//! real XDP program (BPF_PROG_TEST_RUN) and through the reference model
//! (knock-common's decision and knock logic over plain collections). Their
//! verdicts, counters and resulting allow, flow and knock-state maps must agree.
//! On the same streams three properties are checked without the model: a
//! source gets nothing through to a protected port unless it sent some
//! client's knock ports in order; a clean knock of a sequence that has not
//! opened the door yet always opens it; and one that has, never does again.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
};

use knock_common::{
    maps::{Config, Counter, SourceKey, event_kind, port_flags},
    model::Model,
    verdict::{Parsed, Transport, decide},
};
use knock_tests::{
    frames::{Frame, L4},
    privileged, testrun,
};
use knock_userspace::{
    clock, loader,
    ports::{Proto, ProtoPort},
    tables::Tables,
};
use proptest::{prelude::*, test_runner::TestRunner};

const SERVER_V4: &str = "198.51.100.1";
const SERVER_V6: &str = "2001:db8:1::1";
const SOURCES: [&str; 5] =
    ["198.51.100.10", "198.51.100.11", "198.51.100.12", "2001:db8:1::10", "2001:db8:1::11"];
/// Knock ports are drawn from here, so streams hit them often.
const POOL: [u16; 8] = [61000, 61001, 61002, 61003, 61004, 61005, 61006, 61007];
const PROTECTED_TCP: u16 = 22;
const PROTECTED_UDP: u16 = 53;
const OTHER: u16 = 80;

const SYN: u8 = 0x02;
const FLAGS: [u8; 6] = [SYN, SYN, 0x10, 0x12, 0x11, 0x04];

/// Long enough that nothing expires during a case: this test is about
/// matching, replay and flows, not clocks.
const CONFIG: Config = Config {
    open_window_ns: 3_600_000_000_000,
    knock_timeout_ns: 3_600_000_000_000,
    idle_timeout_ns: 3_600_000_000_000,
    close_grace_ns: 3_600_000_000_000,
};

#[derive(Clone, Debug)]
enum Op {
    /// One packet: source, UDP?, port (index into POOL, or 8 = 22, 9 = 53, 10 = 80), TCP flags, source port.
    Packet { source: usize, udp: bool, port: usize, flags: u8, sport: u16 },
    /// Source `source` sends client `client`'s whole sequence, after a
    /// packet to an unrelated port that ends any attempt in progress.
    Knock { source: usize, client: usize },
}

fn port_of(index: usize) -> u16 {
    match index {
        8 => PROTECTED_TCP,
        9 => PROTECTED_UDP,
        10 => OTHER,
        i => POOL[i],
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..SOURCES.len(), any::<bool>(), 0..11usize, prop::sample::select(FLAGS.to_vec()), 40000..40003u16)
            .prop_map(|(source, udp, port, flags, sport)| Op::Packet { source, udp, port, flags, sport }),
        1 => (0..SOURCES.len(), 0..3usize).prop_map(|(source, client)| Op::Knock { source, client }),
    ]
}

/// Three clients' sequences (1-3 TCP knocks from the pool, distinct ports
/// within a sequence; clients may share ports) and a packet stream.
fn case() -> impl Strategy<Value = (Vec<Vec<u16>>, Vec<Op>)> {
    let sequence = prop::sample::subsequence(POOL.to_vec(), 1..=3).prop_shuffle();
    (prop::collection::vec(sequence, 3), prop::collection::vec(op(), 1..40))
}

struct Kernel {
    ebpf: aya::Ebpf,
    tables: Tables,
}

#[test]
fn the_program_and_the_model_agree_on_generated_streams() {
    if !privileged("the_program_and_the_model_agree_on_generated_streams") {
        return;
    }
    let mut ebpf = loader::load().unwrap();
    let mut tables = Tables::take(&mut ebpf).unwrap();
    tables.set_config(CONFIG).unwrap();
    let protected: BTreeSet<ProtoPort> = [
        ProtoPort { port: PROTECTED_TCP, proto: Proto::Tcp },
        ProtoPort { port: PROTECTED_UDP, proto: Proto::Udp },
    ]
    .into();
    tables.set_protected(&Default::default(), &protected).unwrap();
    let kernel = RefCell::new(Kernel { ebpf, tables });
    let pool: BTreeSet<ProtoPort> =
        POOL.iter().map(|&port| ProtoPort { port, proto: Proto::Tcp }).collect();

    let mut runner = TestRunner::new(ProptestConfig { cases: 96, ..ProptestConfig::default() });
    runner
        .run(&case(), |(sequences, ops)| {
            run_case(&mut kernel.borrow_mut(), &pool, &sequences, &ops);
            Ok(())
        })
        .unwrap();
}

fn run_case(kernel: &mut Kernel, pool: &BTreeSet<ProtoPort>, sequences: &[Vec<u16>], ops: &[Op]) {
    let tables = &mut kernel.tables;
    tables.forget_runtime_state().unwrap();
    tables.set_knock_ports(pool, &Default::default()).unwrap();

    let mut model = Model::new();
    model.config = CONFIG;
    model.ports.insert(PROTECTED_TCP, port_flags::PROTECTED_TCP);
    model.ports.insert(PROTECTED_UDP, port_flags::PROTECTED_UDP);
    let now = clock::boot_ns();
    // Checked: the boot clock may be younger than the hour subtracted.
    let valid = (now.saturating_sub(3_600_000_000_000), now + 3_600_000_000_000);
    let mut steps = BTreeMap::new();
    for (client, ports) in sequences.iter().enumerate() {
        // Client c's sequence sits at index 4c, as the daemon places slot 0.
        let index = client as u32 * 4;
        testrun::install_tcp_sequence(
            tables,
            index,
            client as u32 + 1,
            7,
            ports,
            valid,
            &mut steps,
        );
        model.install(index, client as u32 + 1, 7, ports);
        let info = model.sequences.get_mut(&index).unwrap();
        (info.valid_from_ns, info.valid_until_ns) = valid;
    }

    // What each source sent, for the properties below.
    let mut sent: Vec<Vec<(bool, u16)>> = vec![Vec::new(); SOURCES.len()];
    for op in ops {
        let packets: Vec<(usize, bool, u16, u8, u16)> = match *op {
            Op::Packet { source, udp, port, flags, sport } => {
                vec![(source, udp, port_of(port), flags, sport)]
            }
            Op::Knock { source, client } => std::iter::once((source, false, OTHER, SYN, 40000))
                .chain(sequences[client].iter().map(|&port| (source, false, port, SYN, 40000)))
                .collect(),
        };
        let allowed_before = match *op {
            Op::Knock { source, .. } => is_allowed(&kernel.tables, source),
            Op::Packet { .. } => false,
        };
        let opened_before = match *op {
            Op::Knock { client, .. } => opened_for(&model, client),
            Op::Packet { .. } => false,
        };
        for (source, udp, port, flags, sport) in packets {
            sent[source].push((udp, port));
            let src: IpAddr = SOURCES[source].parse().unwrap();
            let server: IpAddr = if src.is_ipv4() { SERVER_V4 } else { SERVER_V6 }.parse().unwrap();
            let l4 = if udp { L4::Udp } else { L4::Tcp };
            let flags = if udp { 0 } else { flags };
            let frame = Frame { tcp_flags: flags, ..Frame::new(src, server, l4, port) }
                .build_with_sport(sport);
            let now = clock::boot_ns();
            let proto = if udp { Transport::Udp } else { Transport::Tcp };
            let parsed =
                Parsed::Transport { src: SourceKey::from(src), proto, sport, dport: port, flags };
            let expected = decide(&model, parsed, || now);
            let (action, counter) = testrun::run_frame(&mut kernel.ebpf, &kernel.tables, &frame);
            assert_eq!(
                (action, counter),
                (expected.action, expected.counter),
                "packet {src} {l4:?} :{sport} -> {port} flags {flags:#x}\nsequences {sequences:?}\nops {ops:?}"
            );
            // Nothing through to a protected port without the knock ports in order.
            if matches!(counter, Counter::PassedAllowed | Counter::PassedFlow) {
                assert!(
                    sequences.iter().any(|seq| sent_in_order(&sent[source], seq)),
                    "{src} got through without knocking\nsequences {sequences:?}\nops {ops:?}"
                );
            }
        }
        // When no sequence is a prefix of another (else the shorter one
        // completes first, by design), a clean knock opens the door exactly
        // when its sequence has not opened it before.
        if let Op::Knock { source, client } = *op
            && prefix_free(sequences)
        {
            let allowed = is_allowed(&kernel.tables, source);
            if opened_before {
                assert_eq!(
                    allowed, allowed_before,
                    "a replayed sequence opened the door\nsequences {sequences:?}\nops {ops:?}"
                );
            } else {
                assert!(
                    allowed && opened_for(&model, client),
                    "a valid knock did not open the door\nsequences {sequences:?}\nops {ops:?}"
                );
            }
        }
    }

    // The maps agree too.
    let kernel_allowed: HashSet<SourceKey> =
        kernel.tables.allowed().unwrap().into_iter().map(|(k, _)| k).collect();
    let model_allowed: HashSet<SourceKey> = model.allow.borrow().keys().copied().collect();
    assert_eq!(
        kernel_allowed, model_allowed,
        "allowed sources\nsequences {sequences:?}\nops {ops:?}"
    );
    let kernel_flows: BTreeSet<_> =
        kernel.tables.flows().unwrap().into_iter().map(|(k, _)| format!("{k:?}")).collect();
    let model_flows: BTreeSet<_> = model.flows.borrow().keys().map(|k| format!("{k:?}")).collect();
    assert_eq!(kernel_flows, model_flows, "flows\nsequences {sequences:?}\nops {ops:?}");

    // And the security property itself: a source is only ever allowed after
    // completing a sequence that opened the door for it.
    let opened: HashSet<SourceKey> = model
        .events
        .borrow()
        .iter()
        .filter(|e| e.kind == event_kind::OPENED)
        .map(|e| e.source)
        .collect();
    assert!(model_allowed.is_subset(&opened));
}

fn is_allowed(tables: &Tables, source: usize) -> bool {
    let key = SourceKey::from(SOURCES[source].parse::<IpAddr>().unwrap());
    tables.allowed().unwrap().iter().any(|(k, _)| *k == key)
}

/// Has client `client` (index into the case's sequences) opened the door?
fn opened_for(model: &Model, client: usize) -> bool {
    model
        .events
        .borrow()
        .iter()
        .any(|e| e.kind == event_kind::OPENED && e.client == client as u32 + 1)
}

/// Did a source send `sequence`'s ports, over TCP, in order (not
/// necessarily back to back)? Opening the door needs at least that.
fn sent_in_order(sent: &[(bool, u16)], sequence: &[u16]) -> bool {
    let mut wanted = sequence.iter().peekable();
    for &(udp, port) in sent {
        if !udp && wanted.peek() == Some(&&port) {
            wanted.next();
        }
    }
    wanted.peek().is_none()
}

/// No sequence starts with another (or equals it).
fn prefix_free(sequences: &[Vec<u16>]) -> bool {
    sequences
        .iter()
        .enumerate()
        .all(|(i, a)| sequences.iter().enumerate().all(|(j, b)| i == j || !b.starts_with(a)))
}
