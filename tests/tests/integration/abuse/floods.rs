//! Floods of spoofed sources: a client still gets in and nobody is evicted,
//! and refusals are logged in moderation.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Instant,
};

use knock_common::maps::KNOCK_STATE_MAX_ENTRIES;
use knock_tests::{
    flood::{self, spoofed_source, syn},
    lab::{
        CLIENT_V4, CLIENT2_V4, Instance, SERVER_V4, SERVER_V6, SERVICE, eventually_within, field,
    },
    privileged, soak_scale,
};

use super::{FLOOD_LIMIT, alice_and_her_first_port, protected_service, rss_kib};

/// The `i`-th frame of the spoofed flood: a SYN from a source of its own,
/// IPv4 and IPv6 in turn; frames 0 and 1 of every four go to the service,
/// 2 and 3 start a knock at `first`.
fn flood_frame(i: u64, first: u16) -> Vec<u8> {
    let (v4, v6): (IpAddr, IpAddr) = (SERVER_V4.parse().unwrap(), SERVER_V6.parse().unwrap());
    let v6_source = i % 2 == 1;
    let dst = if v6_source { v6 } else { v4 };
    let port = if i % 4 < 2 { SERVICE } else { first };
    syn(spoofed_source(i & 0x7f_ffff, v6_source), dst, port, i)
}

/// Of the first `frames` frames of the flood, how many went to the service.
fn to_the_service(frames: u64) -> u64 {
    frames / 4 * 2 + (frames % 4).min(2)
}

/// The knock-state map holds at least this many entries when full: the
/// kernel's LRU starts evicting a little before its nominal size.
const FULL: u64 = KNOCK_STATE_MAX_ENTRIES as u64 * 9 / 10;

fn knocks_in_progress(knock: &Instance) -> u64 {
    knock.status()["knocks_in_progress"].as_u64().expect("status has knocks_in_progress")
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
        (knock.counter("dropped_protected"), knock.counter("knock"));

    // Distinct spoofed sources, IPv4 and IPv6: half try the service, half
    // start a knock at the first port of alice's current sequence, each
    // creating knock state (the exhaustion attempt). The flood goes on
    // until alice is done, and at least `packets` frames.
    let packets = 1_000_000 * soak_scale();
    let iface = lab.client_if.clone();
    let (stop, progress) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let (sent, knock_started, knock_ended, out) = thread::scope(|scope| {
        // Whatever fails below, the flood stops (else the scope never ends).
        let _stop = flood::StopOnDrop(stop.clone());
        let flood = scope.spawn(|| {
            let (stop, progress) = (stop.clone(), progress.clone());
            lab.client.enter(move || {
                let done = || stop.load(Ordering::SeqCst);
                flood::send_until(&iface, packets, done, &progress, |i| flood_frame(i, first))
                    .expect("flood")
            })
        });
        // The real client knocks once the flood has filled the knock-state
        // map (or the flood failed).
        eventually_within("the flood never filled the knock-state map", FLOOD_LIMIT, || {
            flood.is_finished() || knocks_in_progress(&knock) >= FULL
        });
        let knock_started = Instant::now();
        let out = lab.knock(&alice, &["--check", &SERVICE.to_string()]);
        let knock_ended = Instant::now();
        stop.store(true, Ordering::SeqCst);
        (flood.join().expect("flood thread"), knock_started, knock_ended, out)
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "the knock failed during the flood: {stdout}");
    // The overlap, from the flood thread's own clock: its first frame went
    // out before alice began, its last after she was in.
    let since = |t: Instant| t.saturating_duration_since(sent.first);
    assert!(
        sent.first < knock_started && knock_ended < sent.last,
        "no overlap: the flood ran from 0 to {:?}, the knock from {:?} to {:?}",
        since(sent.last),
        since(knock_started),
        since(knock_ended),
    );
    // Her first knock opened the door: one try, four knocks, and no probe
    // of hers was dropped.
    let tries = stdout.lines().filter(|l| l.starts_with("knocked ")).count() as u64;
    assert_eq!(tries, 1, "alice needed more than one try during the flood: {stdout}");

    // Every frame reached the program: those to the service were dropped
    // there, the knocks passed on to the host (with alice's own four).
    let service = to_the_service(sent.frames);
    let dropped = knock.counter("dropped_protected") - dropped_before;
    let knocked = knock.counter("knock") - knocks_before;
    assert_eq!(dropped, service, "frames to the service dropped, of {}", sent.frames);
    assert_eq!(knocked, sent.frames - service + 4, "knocks counted, of {}", sent.frames);

    // The client got in and stays in; the earlier admission and its flow survived.
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "alice is not in after the flood");
    assert!(session.exchange(), "the open connection was cut by the flood");
    let list = knock.list();
    let mut allowed = field(&list["allowed"], "addr");
    allowed.sort();
    assert_eq!(allowed, [CLIENT_V4, CLIENT2_V4], "a spoofed source was admitted");
    // No spoofed source has a flow; the admitted connection still has one.
    let flows = list["flows"].as_array().unwrap();
    let strangers: Vec<_> = flows
        .iter()
        .filter(|f| ![CLIENT_V4, CLIENT2_V4].contains(&f["source"].as_str().unwrap()))
        .collect();
    assert!(strangers.is_empty(), "{} flows of strangers: {:?}", strangers.len(), &strangers[..3]);
    assert!(
        flows.iter().any(|f| f["source"] == CLIENT2_V4 && f["source_port"] == session.local_port()),
        "{flows:?}"
    );

    // The knock-state map is still full after the flood: the flood really
    // was the exhaustion attempt it claims to be.
    let in_progress = knocks_in_progress(&knock);
    assert!(in_progress >= FULL, "{in_progress} knock states after the flood");

    // The daemon's memory stayed flat.
    let rss_after = rss_kib(&knock);
    assert!(
        rss_after < rss_before + 8 * 1024,
        "daemon RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    eprintln!(
        "flood: {} frames in {:?}, {in_progress} knock states, RSS {rss_before} -> {rss_after} KiB",
        sent.frames,
        sent.last - sent.first
    );
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
    let pairs = 500_000 * soak_scale();
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
        // The real client knocks once the daemon is busy with refusals.
        eventually_within("no reset was ever logged", FLOOD_LIMIT, || {
            flood.is_finished() || knock.daemon_log().contains("knock reset")
        });
        let out = lab.knock(&alice, &["--check", &SERVICE.to_string()]);
        flood.join().expect("flood thread");
        out
    });
    assert_eq!(knocked.status.code(), Some(0), "{}", String::from_utf8_lossy(&knocked.stdout));
    // The daemon reads what is left and sums up each second's unlogged
    // refusals: wait for that sum to pass what the budget let through.
    let audit = || -> Vec<serde_json::Value> {
        let log = knock.ok(&["log", "--json", "--lines", "100000"]);
        log.lines().map(|l| serde_json::from_str(l).expect("a JSON record")).collect()
    };
    let unlogged_sum = |records: &[serde_json::Value]| -> u64 {
        let unlogged = records.iter().filter(|r| r["event"] == "unlogged");
        unlogged.map(|r| r["count"].as_u64().unwrap()).sum()
    };
    eventually_within("the unlogged refusals were never counted", FLOOD_LIMIT, || {
        unlogged_sum(&audit()) > 10_000
    });
    let secs = started.elapsed().as_secs() + 1;

    // The opening is in the audit trail, the resets only up to the budget,
    // and the rest is counted.
    let records = audit();
    let of = |event: &'static str| records.iter().filter(move |r| r["event"] == event);
    assert!(
        of("opened").any(|r| r["client"] == "alice" && r["source"] == CLIENT_V4),
        "alice's opening is missing from the audit trail"
    );
    let resets = of("reset").count() as u64;
    assert!(resets > 0 && resets <= 20 * (secs + 1), "{resets} resets audited in {secs} s");
    let unlogged = unlogged_sum(&records);
    let daemon_log = knock.daemon_log();
    let reset_lines = daemon_log.lines().filter(|l| l.contains("knock reset")).count() as u64;
    assert!(reset_lines <= 20 * (secs + 1), "{reset_lines} reset lines logged in {secs} s");
    assert!(daemon_log.contains("more knock refusals than logged"), "{daemon_log}");
    eprintln!("refusals: {resets} audited, {unlogged} counted unlogged, in {secs} s");
}
