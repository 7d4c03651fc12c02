//! Load and abuse end to end: floods of spoofed sources, knock-state
//! exhaustion and brute force, written onto the client's veth with an
//! AF_PACKET socket while real clients knock and talk across it.
//!
//! `KNOCK_XDP_SOAK=1` (`cargo xtask test --soak`) makes every run here ten
//! times longer.

use std::{
    fs,
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use knock_common::maps::{FLOWS_MAX_ENTRIES, KNOCK_STATE_MAX_ENTRIES};
use knock_tests::{
    flood::{self, spoofed_source, syn},
    frames::{Frame, Proto},
    lab::{
        CLIENT_V4, CLIENT_V6, CLIENT2_V4, Entry, Instance, Knock, Lab, SERVER_V4, SERVER_V6,
        away_from_slot_boundary,
    },
    privileged,
};

const SERVICE: u16 = 8022;

/// Ten times more of everything under `KNOCK_XDP_SOAK=1`.
fn scale() -> u64 {
    if std::env::var("KNOCK_XDP_SOAK").is_ok_and(|v| v == "1") { 10 } else { 1 }
}

/// The daemon's resident memory, in KiB.
fn rss_kib(knock: &Instance) -> u64 {
    let pid = knock.status()["pid"].as_u64().expect("status has the pid");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon runs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn counter(knock: &Instance, name: &str) -> u64 {
    knock.status()["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
}

/// A lab whose TCP echo service a daemon (started with `attach_args`) protects.
fn protected_service(attach_args: &[&str]) -> (Lab, Instance) {
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, SERVICE);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    let mut args = vec![lab.server_if.as_str()];
    args.extend_from_slice(attach_args);
    knock.attach(&args);
    knock.ok(&["protect", &format!("{SERVICE}/tcp")]);
    (lab, knock)
}

/// A client with one-minute slots, and the first port of her sequence,
/// far enough from a slot boundary for a test to use it.
fn alice_and_her_first_port(lab: &Lab, knock: &Instance) -> (PathBuf, u16) {
    let alice = knock.add_client("alice", &["--slot", "60s"]);
    away_from_slot_boundary(60, Duration::from_secs(15));
    let first = lab.sequence(&alice, None)[0].port;
    (alice, first)
}

#[test]
fn a_spoofed_flood_neither_keeps_a_client_out_nor_evicts_anyone() {
    if !privileged("a_spoofed_flood_neither_keeps_a_client_out_nor_evicts_anyone") {
        return;
    }
    let (lab, knock) = protected_service(&["--open-window", "5m"]);
    let (alice, first) = alice_and_her_first_port(&lab, &knock);

    // Someone already admitted, with an open connection: the flood must
    // evict neither the admission nor the flow.
    knock.ok(&["allow", CLIENT2_V4, "--for", "10m"]);
    let mut session = lab.tcp_session(CLIENT2_V4, SERVER_V4, SERVICE).expect("admitted");
    assert!(session.exchange());
    let rss_before = rss_kib(&knock);
    let (dropped_before, knocks_before) =
        (counter(&knock, "dropped_protected"), counter(&knock, "knock"));

    // Distinct spoofed sources, IPv4 and IPv6: half try the service, half
    // start a knock at the first port of alice's current sequence, each
    // creating knock state (the exhaustion attempt).
    let packets = 1_000_000 * scale();
    let iface = lab.client_if.clone();
    let started = Instant::now();
    let (sent, knocked) = thread::scope(|scope| {
        let flood = scope.spawn(|| {
            lab.client.enter(move || {
                let (v4, v6): (IpAddr, IpAddr) =
                    (SERVER_V4.parse().unwrap(), SERVER_V6.parse().unwrap());
                flood::send(&iface, packets, |i| {
                    let v6_source = i % 2 == 1;
                    let dst = if v6_source { v6 } else { v4 };
                    let port = if i % 4 < 2 { SERVICE } else { first };
                    syn(spoofed_source(i & 0x7f_ffff, v6_source), dst, port, i)
                })
                .expect("flood")
            })
        });
        // The real client knocks in the middle of the flood.
        thread::sleep(Duration::from_millis(300));
        let out = lab.knock(&alice, &["--check", &SERVICE.to_string()]);
        let knocked = (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned());
        (flood.join().expect("flood thread"), knocked)
    });
    let elapsed = started.elapsed();
    assert_eq!(sent, packets);
    assert_eq!(knocked.0, Some(0), "the knock failed during the flood: {}", knocked.1);
    assert!(
        elapsed > Duration::from_millis(600),
        "the flood ended before the knock could overlap it ({elapsed:?})"
    );

    // Every frame reached the program: those to the service were dropped
    // there, the knocks passed on to the host (with alice's own few).
    let dropped = counter(&knock, "dropped_protected") - dropped_before;
    let knocked = counter(&knock, "knock") - knocks_before;
    assert!(
        (packets / 2..packets / 2 + 8).contains(&dropped),
        "{dropped} of the {} frames to the service dropped",
        packets / 2
    );
    assert!(
        (packets / 2 + 4..packets / 2 + 40).contains(&knocked),
        "{knocked} knocks counted for {} first knocks and alice's",
        packets / 2
    );

    // The client got in and stays in; the earlier admission and its flow survived.
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "alice is not in after the flood");
    assert!(session.exchange(), "the open connection was cut by the flood");
    let list = knock.list();
    let allowed = knock_tests::lab::field(&list["allowed"], "addr");
    assert!(allowed.contains(&CLIENT_V4) && allowed.contains(&CLIENT2_V4), "{allowed:?}");
    assert!(allowed.len() == 2, "a spoofed source was admitted: {allowed:?}");

    // The maps stayed within their bounds, and the knock-state map was
    // really filled (else the bound proves nothing).
    let status = knock.status();
    let in_progress = status["knocks_in_progress"].as_u64().unwrap();
    assert!(in_progress <= u64::from(KNOCK_STATE_MAX_ENTRIES), "{in_progress}");
    assert!(in_progress > u64::from(KNOCK_STATE_MAX_ENTRIES) / 2, "{in_progress}");
    assert!(status["flows"].as_u64().unwrap() <= u64::from(FLOWS_MAX_ENTRIES));

    // The daemon's memory stayed flat.
    let rss_after = rss_kib(&knock);
    assert!(
        rss_after < rss_before + 8 * 1024,
        "daemon RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    eprintln!(
        "flood: {packets} frames in {elapsed:?}, {in_progress} knock states, RSS {rss_before} -> {rss_after} KiB"
    );
}

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
    let rounds = scale();
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
    assert_eq!(counter(&knock, "passed_allowed"), 0);
    assert!(knock_tests::lab::field(&knock.list()["allowed"], "addr").is_empty());
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the spraying source got in");
    let log = knock.ok(&["log", "--json", "--lines", "100000"]);
    assert!(!log.contains("\"opened\""), "{log}");
    // Every frame to the knock spaces (61000-65535, TCP for alice, UDP for
    // bob) reached the state machine: 20 sweeps of 4,536 ports a round.
    let rounds_sent = sent / frames_per_round;
    assert_eq!(counter(&knock, "knock"), rounds_sent * 20 * 4536);
    assert_eq!(counter(&knock, "knock_limited"), 0);

    // The door itself works: alice's real knock opens it.
    let out = lab.knock(&alice, &["--check", &SERVICE.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("spray: {sent} frames in {elapsed:?}");
}

#[test]
fn a_flood_of_refusals_is_logged_in_moderation() {
    if !privileged("a_flood_of_refusals_is_logged_in_moderation") {
        return;
    }
    let (lab, knock) = protected_service(&[]);
    let (alice, first) = alice_and_her_first_port(&lab, &knock);

    // Each spoofed source starts a knock and then knocks elsewhere in the
    // knock space: the program reports a reset for every pair.
    let elsewhere = if first == 65_535 { 61_000 } else { first + 1 };
    let pairs = 500_000 * scale();
    let iface = lab.client_if.clone();
    let started = Instant::now();
    let knocked = thread::scope(|scope| {
        let flood = scope.spawn(|| {
            lab.client.enter(move || {
                let (v4, v6): (IpAddr, IpAddr) =
                    (SERVER_V4.parse().unwrap(), SERVER_V6.parse().unwrap());
                flood::send(&iface, 2 * pairs, |i| {
                    let (pair, v6_source) = (i / 2, i % 4 >= 2);
                    let dst = if v6_source { v6 } else { v4 };
                    let port = if i % 2 == 0 { first } else { elsewhere };
                    syn(spoofed_source(pair & 0x7f_ffff, v6_source), dst, port, pair)
                })
                .expect("flood")
            })
        });
        thread::sleep(Duration::from_millis(300));
        let out = lab.knock(&alice, &["--check", &SERVICE.to_string()]);
        flood.join().expect("flood thread");
        out
    });
    assert_eq!(knocked.status.code(), Some(0), "{}", String::from_utf8_lossy(&knocked.stdout));
    // Let the daemon read what is left and report the last second.
    thread::sleep(Duration::from_millis(1500));
    let secs = started.elapsed().as_secs() + 1;

    // The opening is in the audit trail, the resets only up to the budget,
    // and the rest is counted.
    let log = knock.ok(&["log", "--json", "--lines", "100000"]);
    let records: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).expect("a JSON record")).collect();
    let of = |event: &'static str| records.iter().filter(move |r| r["event"] == event);
    assert!(
        of("opened").any(|r| r["client"] == "alice" && r["source"] == CLIENT_V4),
        "alice's opening is missing from the audit trail"
    );
    let resets = of("reset").count() as u64;
    assert!(resets > 0 && resets <= 20 * (secs + 1), "{resets} resets audited in {secs} s");
    let unlogged: u64 = of("unlogged").map(|r| r["count"].as_u64().unwrap()).sum();
    assert!(unlogged > 10_000, "only {unlogged} refusals counted as unlogged");
    let daemon_log = knock.daemon_log();
    let reset_lines = daemon_log.lines().filter(|l| l.contains("knock reset")).count() as u64;
    assert!(reset_lines <= 20 * (secs + 1), "{reset_lines} reset lines logged in {secs} s");
    assert!(daemon_log.contains("more knock refusals than logged"), "{daemon_log}");
    eprintln!("refusals: {resets} audited, {unlogged} counted unlogged, in {secs} s");
}

#[test]
fn failed_knocks_are_limited_per_source_and_under_global_pressure() {
    if !privileged("failed_knocks_are_limited_per_source_and_under_global_pressure") {
        return;
    }
    let (lab, knock) = protected_service(&[]);
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
    let wrong: Vec<Knock> = (61_000..)
        .filter(|p| !installed.contains(p))
        .take(40)
        .map(|port| Knock { port, udp: false })
        .collect();

    // One source guesses 40 times (the default allows a burst of 32): its
    // right knock afterwards is ignored, and nothing shows from outside.
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &wrong, Duration::from_millis(2));
    let limited_before = counter(&knock, "knock_limited");
    assert!(limited_before >= 8, "{limited_before} attempts ignored");
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &seq, Duration::from_millis(20));
    assert_eq!(counter(&knock, "knock_limited"), limited_before + seq.len() as u64);
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "a limited source got in");
    let log = knock.ok(&["log", "--json"]);
    assert!(log.contains("\"limited\"") && log.contains(CLIENT2_V4), "{log}");

    // Many sources at once: spoofed misses over the global limit. Then a
    // source with a single miss is limited at once, while one with none
    // (alice, below) knocks as usual.
    let iface = lab.client_if.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (v6_opened, alice_opened) = thread::scope(|scope| {
        let flood = scope.spawn(|| {
            let (stop, ports) = (stop.clone(), wrong.iter().map(|k| k.port).collect::<Vec<_>>());
            lab.client.enter(move || {
                let server: IpAddr = SERVER_V4.parse().unwrap();
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    sent += flood::send(&iface, 20_000, |i| {
                        let port = ports[(i % 40) as usize];
                        syn(spoofed_source((sent + i) & 0x7f_ffff, false), server, port, i)
                    })
                    .expect("flood");
                }
            })
        });
        thread::sleep(Duration::from_millis(500));
        lab.send_knocks(CLIENT_V6, SERVER_V6, &wrong[..1], Duration::from_millis(20));
        lab.send_knocks(CLIENT_V6, SERVER_V6, &seq, Duration::from_millis(20));
        let v6_opened = lab.tcp_exchange(CLIENT_V6, SERVER_V6, SERVICE);
        let out = lab.knock(&alice, &["--check", &SERVICE.to_string()]);
        stop.store(true, Ordering::Relaxed);
        flood.join().expect("flood thread");
        (v6_opened, out.status.code() == Some(0))
    });
    assert!(!v6_opened, "one miss under global pressure did not limit its source");
    assert!(alice_opened, "a source without misses was kept out by the global limit");
}
