//! Guessing: one source spraying every port, many spoofed sources each in
//! its own order, and the failed-knock limits per source and for all.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use knock_common::{
    Proto, ProtoPort,
    limit::Rate,
    maps::{MAP_RUNTIME, Runtime},
};
use knock_tests::{
    flood::{self, spoofed_source, syn},
    frames::Frame,
    lab::{
        CLIENT_V4, CLIENT_V6, CLIENT2_V4, Entry, Lab, SERVER_V4, SERVER_V6, SERVICE,
        eventually_within, field,
    },
    privileged, soak_scale,
};
use knock_userspace::{
    clock,
    daemon::{GLOBAL_MISS_BURST, GLOBAL_MISS_RATE_PER_SEC},
};

use super::{FLOOD_LIMIT, alice_and_her_first_port, protected_service};

/// A seeded xorshift generator: random enough to shuffle a spray, and the
/// seed is printed so a failing order can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A random permutation of the ports 1..=65535: `a * k + b` modulo
    /// 2^16 visits every value once for an odd `a`; 0 is skipped.
    fn port_order(&mut self) -> impl Fn(u64) -> u16 + Send + use<> {
        let (a, b) = (self.next() | 1, self.next());
        move |k| {
            let value = (a.wrapping_mul(k + 1).wrapping_add(b) & 0xffff) as u16;
            if value == 0 { (b & 0xffff) as u16 } else { value }
        }
    }
}

#[test]
fn spraying_ports_for_several_slots_never_opens_the_door() {
    if !privileged("spraying_ports_for_several_slots_never_opens_the_door") {
        return;
    }
    // Without the failed-knock limit, so the spray meets the state machine
    // itself (the limit has its own test below).
    let (lab, knock) = protected_service(&["--failed-knocks", "off"]);
    // One-second slots, so the spray outlives several of them; a TCP and a
    // UDP client, each with sequences for four slots installed at any time.
    let alice = knock.add_client("alice", &["--slot", "1s"]);
    knock.add_client("bob", &["--slot", "1s", "--proto", "udp"]);

    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1;
    eprintln!("spray seed {seed:#x}");
    let mut rng = Rng(seed);
    // One source: every port in order, then in a random order, over TCP
    // and over UDP. Many sources: each every port in its own random order,
    // all interleaved.
    let rounds = soak_scale();
    let sources = 16;
    let orders: Vec<_> = (0..sources).map(|_| rng.port_order()).collect();
    let single = rng.port_order();
    let one_source_frames = 4 * 65_535;
    let frames_per_round = one_source_frames + sources * 65_535;
    let iface = lab.client_if.clone();
    let started = Instant::now();
    // Whole rounds until at least three slot boundaries have passed.
    let sent = lab.client.enter(move || {
        let (client, server): (IpAddr, IpAddr) =
            (CLIENT_V4.parse().unwrap(), SERVER_V4.parse().unwrap());
        let mut sent = 0;
        let mut round = 0;
        while round < rounds || started.elapsed() < Duration::from_millis(3200) {
            sent += flood::send(&iface, frames_per_round, |i| {
                let (k, pass) = (i % 65_535, i / 65_535);
                if i < one_source_frames {
                    let port = if pass % 2 == 0 { k as u16 + 1 } else { single(k) };
                    let l4 = if pass < 2 { Proto::Tcp } else { Proto::Udp };
                    Frame::new(client, server, l4, port).build_with_sport(40_000)
                } else {
                    let i = i - one_source_frames;
                    let source = i % sources;
                    let port = orders[source as usize](i / sources);
                    syn(spoofed_source(source, false), server, port, source)
                }
            })
            .expect("spray");
            round += 1;
        }
        sent
    });
    let elapsed = started.elapsed();
    assert!(sent >= rounds * frames_per_round);

    // Nobody got in, and nothing was logged as an opening.
    assert_eq!(knock.counter("passed_allowed"), 0);
    assert!(field(&knock.list()["allowed"], "addr").is_empty());
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the spraying source got in");
    let log = knock.ok(&["log", "--json", "--lines", "100000"]);
    assert!(!log.contains("\"opened\""), "{log}");
    // Every frame to the knock spaces (61000-65535, TCP for alice, UDP for
    // bob) reached the state machine: 20 sweeps of 4,536 ports a round.
    let rounds_sent = sent / frames_per_round;
    assert_eq!(knock.counter("knock"), rounds_sent * 20 * 4536);
    assert_eq!(knock.counter("knock_limited"), 0);

    // The door itself works: alice's real knock opens it.
    let out = lab.knock(&alice, &["--check", &SERVICE.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("spray: {sent} frames in {elapsed:?}");
}

#[test]
fn failed_knocks_are_limited_per_source_and_under_global_pressure() {
    if !privileged("failed_knocks_are_limited_per_source_and_under_global_pressure") {
        return;
    }
    // Through nsenter: the test reads the pinned global-limit word.
    let lab = Lab::with_service();
    let knock = lab.protecting_daemon(Entry::NsenterNet, &[]);
    let (alice, _) = alice_and_her_first_port(&lab, &knock);
    let seq = lab.sequence(&alice, None);
    // Ports of the knock space that no installed sequence uses.
    let now = std::time::SystemTime::now();
    let installed: Vec<u16> = [now - Duration::from_secs(60), now, now + Duration::from_secs(60)]
        .into_iter()
        .chain([now + Duration::from_secs(120)])
        .flat_map(|at| lab.sequence(&alice, Some(at)))
        .map(|k| k.port)
        .collect();
    let wrong: Vec<ProtoPort> = (61_000..)
        .filter(|p| !installed.contains(p))
        .take(40)
        .map(|port| ProtoPort::new(Proto::Tcp, port))
        .collect();

    // One source guesses 40 times (the default allows a burst of 32): its
    // right knock afterwards is ignored, and nothing shows from outside.
    let (knocks_before, limited_before) = (knock.counter("knock"), knock.counter("knock_limited"));
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &wrong, Duration::from_millis(2));
    assert_eq!(knock.counter("knock") - knocks_before, 32, "misses followed");
    assert_eq!(knock.counter("knock_limited") - limited_before, 8, "misses ignored");
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &seq, Duration::from_millis(20));
    assert_eq!(knock.counter("knock_limited") - limited_before, 8 + seq.len() as u64);
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "a limited source got in");
    let log = knock.ok(&["log", "--json"]);
    assert!(log.contains("\"limited\"") && log.contains(CLIENT2_V4), "{log}");

    // Many sources at once: spoofed misses over the global limit. Then a
    // source with a single miss is limited at once, while one with none
    // (alice, below) knocks as usual. A flood holds the limit exhausted only
    // while it keeps up (one miss in 10 ms is let through): once the flood
    // has shown it exhausts the limit, the test holds it there for the
    // trial, so that a stall of the flood's thread decides nothing.
    let mut runtime = knock.pinned_array::<u64>(MAP_RUNTIME);
    let global = Rate::new(1_000_000_000 / GLOBAL_MISS_RATE_PER_SEC, GLOBAL_MISS_BURST);
    let slot = Runtime::GlobalMisses as u32;
    let iface = lab.client_if.clone();
    let (stop, progress) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let ports: Vec<u16> = wrong.iter().map(|k| k.port).collect();
    let (v6_opened, alice_opened) = thread::scope(|scope| {
        let _stop = flood::StopOnDrop(stop.clone());
        let flood = scope.spawn(|| {
            let (stop, progress) = (stop.clone(), progress.clone());
            lab.client.enter(move || {
                let server: IpAddr = SERVER_V4.parse().unwrap();
                let done = || stop.load(Ordering::SeqCst);
                flood::send_until(&iface, 0, done, &progress, |i| {
                    let port = ports[(i % 40) as usize];
                    syn(spoofed_source(i & 0x7f_ffff, false), server, port, i)
                })
                .expect("flood")
            })
        });
        // Each spoofed miss is followed (its source is new) and charged to
        // the global limit: twice its burst in, the limit is exhausted.
        let before = knock.counter("knock");
        eventually_within("the flood's misses never reached the program", FLOOD_LIMIT, || {
            flood.is_finished() || knock.counter("knock") >= before + 2 * GLOBAL_MISS_BURST
        });
        eventually_within("the flood never exhausted the global limit", FLOOD_LIMIT, || {
            global.exhausted(runtime.get(&slot, 0).unwrap(), clock::boot_ns())
        });
        let held = clock::boot_ns() + global.burst_ns + 60_000_000_000;
        runtime.set(slot, held, 0).unwrap();
        lab.send_knocks(CLIENT_V6, SERVER_V6, &wrong[..1], Duration::from_millis(20));
        lab.send_knocks(CLIENT_V6, SERVER_V6, &seq, Duration::from_millis(20));
        let v6_opened = lab.tcp_exchange(CLIENT_V6, SERVER_V6, SERVICE);
        let out = lab.knock(&alice, &["--check", &SERVICE.to_string()]);
        stop.store(true, Ordering::SeqCst);
        flood.join().expect("flood thread");
        (v6_opened, out.status.code() == Some(0))
    });
    assert!(!v6_opened, "one miss under global pressure did not limit its source");
    assert!(alice_opened, "a source without misses was kept out by the global limit");
}
