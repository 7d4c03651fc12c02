//! How admissions and flows end in the running daemon, seen in its pinned
//! maps: expired allow entries are deleted by the sweep, dead flows by the
//! flow sweep, and a real client's FIN or RST starts the close grace, after
//! which its flow admits nothing and is gone.

use std::{
    thread,
    time::{Duration, Instant},
};

use knock_common::{
    allow::AllowEntry,
    flow::{FlowEntry, FlowKey},
    maps::{MAP_ALLOW, MAP_FLOWS},
    source::SourceKey,
};
use knock_tests::{
    lab::{
        CLIENT_V4, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, SERVICE, TcpSession,
        eventually_within,
    },
    privileged,
};

/// The close grace the daemon gives a finished TCP flow (`CLOSE_GRACE`).
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How often the daemon removes dead flows (`FLOW_SWEEP_INTERVAL`).
const FLOW_SWEEP: Duration = Duration::from_secs(10);

/// A lab, and a daemon through nsenter (its pins are the host's, where
/// the test reads them) protecting the service.
fn daemon(extra: &[&str]) -> (Lab, Instance) {
    let lab = Lab::with_service();
    let knock = lab.protecting_daemon(Entry::NsenterNet, extra);
    (lab, knock)
}

/// The sources in the kernel's allow map, expired or not.
fn allow_map(knock: &Instance) -> Vec<SourceKey> {
    let map = knock.pinned_hash_map::<SourceKey, AllowEntry>(MAP_ALLOW);
    map.keys().map(Result::unwrap).collect()
}

/// The client ports of the kernel's flows, dead or alive.
fn flow_map(knock: &Instance) -> Vec<u16> {
    let map = knock.pinned_hash_map::<FlowKey, FlowEntry>(MAP_FLOWS);
    map.keys().map(|k| k.unwrap().src_port).collect()
}

/// The flows `list` shows: (client port, closing).
fn listed_flows(knock: &Instance) -> Vec<(u16, bool)> {
    let list = knock.list();
    let flows = list["flows"].as_array().unwrap();
    flows
        .iter()
        .map(|f| (f["source_port"].as_u64().unwrap() as u16, f["closing"] == true))
        .collect()
}

#[test]
fn expired_allow_entries_are_deleted_from_the_kernel() {
    if !privileged("expired_allow_entries_are_deleted_from_the_kernel") {
        return;
    }
    let (_lab, knock) = daemon(&[]);
    knock.ok(&["allow", CLIENT_V4, "--for", "1h"]);
    let asked = Instant::now();
    knock.ok(&["allow", CLIENT2_V4, "--for", "1s"]);
    let key = |addr: &str| SourceKey::from(addr.parse::<std::net::IpAddr>().unwrap());
    let (kept, short) = (key(CLIENT_V4), key(CLIENT2_V4));
    assert!(allow_map(&knock).contains(&short), "not in the kernel");
    // The sweep runs every second: gone within two of the deadline.
    eventually_within("the expired entry stayed in the kernel", Duration::from_secs(5), || {
        !allow_map(&knock).contains(&short)
    });
    assert!(asked.elapsed() >= Duration::from_secs(1), "deleted before it expired");
    assert!(allow_map(&knock).contains(&kept), "the sweep took a live entry too");
    assert!(knock.daemon_log().contains(&format!("allow window ended source={CLIENT2_V4}")));
}

#[test]
fn dead_flows_are_swept_from_the_kernel() {
    if !privileged("dead_flows_are_swept_from_the_kernel") {
        return;
    }
    let (lab, knock) = daemon(&["--idle-timeout", "2s"]);
    knock.ok(&["allow", CLIENT_V4, "--for", "1h"]);
    let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).expect("allowed");
    assert!(session.exchange());
    let (port, quiet) = (session.local_port(), Instant::now());
    assert!(flow_map(&knock).contains(&port));
    // Idle past the timeout, it is dead: no longer listed...
    eventually_within("the idle flow is still listed", Duration::from_secs(4), || {
        listed_flows(&knock).iter().all(|(p, _)| *p != port)
    });
    // Flows are timed by CLOCK_MONOTONIC_COARSE, which lags the clock
    // `quiet` reads by up to a tick (4-10 ms), and the flow's last packet
    // (the client's ACK) came before the test thread woke to read `quiet`:
    // a death a little before 2 s after `quiet` is on time, one far before
    // it is not.
    assert!(
        quiet.elapsed() + Duration::from_millis(250) >= Duration::from_secs(2),
        "listed as dead while it was alive ({:?} after the last exchange)",
        quiet.elapsed()
    );
    // ...and the flow sweep deletes it from the kernel.
    eventually_within("the dead flow stayed in the kernel", FLOW_SWEEP * 2, || {
        !flow_map(&knock).contains(&port)
    });
}

/// A session ended by `end` (its FIN or RST) starts the close grace: the
/// flow is listed as closing, then, the grace over, as nothing, and the
/// flow sweep deletes it.
fn ends_after_the_close_grace(end: impl FnOnce(TcpSession) -> u16) {
    let (lab, knock) = daemon(&[]);
    knock.ok(&["allow", CLIENT_V4, "--for", "1h"]);
    let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).expect("allowed");
    assert!(session.exchange());
    let before = Instant::now();
    let port = end(session);
    // The program starts the grace when the FIN or RST reaches it, after this.
    let ended = Instant::now();
    eventually_within("the flow never started closing", Duration::from_secs(3), || {
        listed_flows(&knock).contains(&(port, true))
    });
    assert!(before.elapsed() < CLOSE_GRACE, "seen closing only after the grace: too slow");
    while ended.elapsed() < CLOSE_GRACE + Duration::from_millis(500) {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(listed_flows(&knock).iter().all(|(p, _)| *p != port), "alive past the grace");
    eventually_within("the closed flow stayed in the kernel", FLOW_SWEEP * 2, || {
        !flow_map(&knock).contains(&port)
    });
}

#[test]
fn a_clients_fin_starts_the_close_grace_in_the_running_daemon() {
    if !privileged("a_clients_fin_starts_the_close_grace_in_the_running_daemon") {
        return;
    }
    ends_after_the_close_grace(|session| {
        session.finish();
        session.local_port()
    });
}

#[test]
fn a_clients_rst_starts_the_close_grace_in_the_running_daemon() {
    if !privileged("a_clients_rst_starts_the_close_grace_in_the_running_daemon") {
        return;
    }
    ends_after_the_close_grace(|session| {
        let port = session.local_port();
        session.abort();
        port
    });
}
