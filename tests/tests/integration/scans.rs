//! A real port scanner, nmap, SYN-scans every port of the server: the scan
//! leaves no knock state in the kernel. Knock state is made only by the
//! first knock of an installed sequence, and any other attempt of the
//! scanner in the knock space ends it; with the failed-knock limit (the
//! default) the scanner is soon ignored altogether.

use std::{collections::BTreeSet, path::Path};

use knock_common::{maps::MAP_KNOCK_STATE, source::SourceKey, trie::KnockState};
use knock_tests::{
    lab::{CLIENT_V4, Entry, Instance, Lab, SERVER_V4, SERVICE},
    privileged,
};

/// The default knock space of a client, every port of which the scan hits.
const KNOCK_SPACE: u64 = 65_535 - 61_000 + 1;

/// The knock states in the kernel (a daemon started through nsenter).
fn knock_states(knock: &Instance) -> Vec<(SourceKey, KnockState)> {
    let map = knock.pinned_hash_map::<SourceKey, KnockState>(MAP_KNOCK_STATE);
    map.iter().map(Result::unwrap).collect()
}

/// A daemon protecting the service, with one client and its four
/// sequences installed; `extra` for attach.
fn setup(extra: &[&str]) -> (Lab, Instance, std::path::PathBuf) {
    let lab = Lab::with_service();
    let knock = lab.protecting_daemon(Entry::NsenterNet, extra);
    let profile = knock.add_client("laptop", &["--slot", "60s"]);
    (lab, knock, profile)
}

/// nmap's SYN scan of every TCP port from the client, as fast as it goes;
/// its report of the service.
fn scan_every_port(lab: &Lab) -> String {
    let out = lab
        .client_run("nmap", &["-sS", "-p-", "-n", "-Pn", "-T5", "--max-retries", "1", SERVER_V4]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "nmap (Debian package nmap) failed: {stdout}{:?}", out.stderr);
    stdout
}

/// The counter `name` moved by at least the knock space: every SYN of the
/// scan to a knock port reached the program.
fn knock_space_scanned(before: &serde_json::Value, after: &serde_json::Value) -> u64 {
    let moved = |name: &str| after[name].as_u64().unwrap() - before[name].as_u64().unwrap();
    moved("knock") + moved("knock_limited")
}

#[test]
fn a_port_scan_leaves_no_knock_state_in_the_kernel() {
    if !privileged("a_port_scan_leaves_no_knock_state_in_the_kernel") {
        return;
    }
    let (lab, knock, _) = setup(&[]);
    let before = knock.status()["counters"].clone();
    let report = scan_every_port(&lab);
    let after = knock.status()["counters"].clone();
    assert!(knock_space_scanned(&before, &after) >= KNOCK_SPACE, "{before}\n{after}");
    // To the scanner the service is filtered, like the knock ports' host
    // answers: nothing shows which ports matter.
    assert!(report.contains(&format!("{SERVICE}/tcp filtered")), "{report}");
    assert_eq!(knock_states(&knock), [], "the scan left knock state");
    assert_eq!(knock.status()["knocks_in_progress"], 0);
}

#[test]
fn without_the_failed_knock_limit_a_scan_leaves_at_most_a_first_knock() {
    if !privileged("without_the_failed_knock_limit_a_scan_leaves_at_most_a_first_knock") {
        return;
    }
    let (lab, knock, profile) = setup(&["--failed-knocks", "off"]);
    let before = knock.status()["counters"].clone();
    scan_every_port(&lab);
    let after = knock.status()["counters"].clone();
    assert_eq!(after["knock_limited"], before["knock_limited"], "nothing was limited");
    assert!(knock_space_scanned(&before, &after) >= KNOCK_SPACE, "{before}\n{after}");
    // Each attempt ended the one before: what can be left is the scanner's
    // last attempt in the knock space, and only if it was the first knock
    // of an installed sequence (about one scan in a thousand).
    let states = knock_states(&knock);
    assert!(states.len() <= 1, "{} knock states left by one scanner", states.len());
    let firsts = first_ports(&lab, &profile);
    for (source, state) in &states {
        assert_eq!(source.ip(), Some(CLIENT_V4.parse().unwrap()));
        assert!(
            state.step == 1 && firsts.contains(&state.last_port),
            "the scan left state that no first knock makes: {state:?} (first ports {firsts:?})"
        );
    }
}

/// The first ports of the sequences installed now (slots s-1 to s+2).
fn first_ports(lab: &Lab, profile: &Path) -> BTreeSet<u16> {
    let slot = std::time::Duration::from_secs(60);
    let first = std::time::SystemTime::now() - slot;
    (0..4).map(|k| lab.sequence(profile, Some(first + slot * k))[0].port).collect()
}
