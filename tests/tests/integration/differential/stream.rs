//! One generated stream, packet by packet through the program and the
//! model, with the properties checked along the way.

use super::*;

pub(super) fn run_case(
    kernel: &mut Kernel,
    checked: &mut Checked,
    sequences: &[Vec<u16>],
    ops: &[Op],
) {
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
