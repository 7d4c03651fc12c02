//! The audit trail: openings, client removals and revocations are kept
//! whatever the refusals, and `knock-xdp log` shows both kinds in time order.

use knock_tests::{
    lab::{CLIENT_V4, Entry, Instance, Lab, SERVER_V4},
    privileged,
};
use knock_userspace::{
    audit::{self, Record},
    state::StateDir,
};

/// `log --json` with every record.
fn log(knock: &Instance) -> Vec<serde_json::Value> {
    let out = knock.ok(&["log", "--json", "-n", "10000000"]);
    out.lines().map(|l| serde_json::from_str(l).expect("a JSON record")).collect()
}

fn of<'a>(records: &'a [serde_json::Value], event: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["event"] == event).collect()
}

#[test]
fn a_refusal_flood_never_pushes_an_opening_out_of_the_log() {
    if !privileged("a_refusal_flood_never_pushes_an_opening_out_of_the_log") {
        return;
    }
    let lab = Lab::new();
    let knock = Instance::new(&lab.server, Entry::NetnsExec);
    let state = StateDir::new(knock.state_path());
    state.create().unwrap();
    let opening = |source: &str| {
        let mut record = Record::now("opened", source.to_owned());
        record.client = Some("alice".into());
        record.open_secs = Some(30);
        record.step = 4;
        record
    };
    // An opening, then refusals through the daemon's own code path (the one
    // events.rs writes with), three times what a file holds before it
    // rotates, then another opening.
    audit::append(&state, &opening("192.0.2.10")).unwrap();
    let mut reset = Record::now("reset", "198.51.100.1".into());
    reset.client = Some("alice".into());
    reset.step = 1;
    let line = serde_json::to_string(&reset).unwrap().len() + 1;
    let flood = 3 * 4 * 1024 * 1024 / line;
    for i in 0..flood {
        reset.source = format!("198.51.{}.{}", i / 250 % 250, i % 250);
        audit::append(&state, &reset).unwrap();
    }
    audit::append(&state, &opening("192.0.2.11")).unwrap();

    let records = log(&knock);
    let opened: Vec<&str> =
        of(&records, "opened").iter().map(|r| r["source"].as_str().unwrap()).collect();
    assert_eq!(opened, ["192.0.2.10", "192.0.2.11"], "an opening was rotated out");
    let resets = of(&records, "reset").len();
    assert!(resets > 10_000 && resets < flood, "{resets} of {flood} resets shown");
    let times: Vec<&str> = records.iter().map(|r| r["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "log is not in time order");
    // The human form too, for the one client.
    let human = knock.ok(&["log", "--client", "alice", "-n", "1"]);
    assert!(human.contains("opened") && human.contains("192.0.2.11"), "{human}");
}

#[test]
fn client_removals_and_revocations_are_audited_with_or_without_the_daemon() {
    if !privileged("client_removals_and_revocations_are_audited_with_or_without_the_daemon") {
        return;
    }
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, 8022);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", "8022/tcp"]);
    knock.ok(&["allow", CLIENT_V4, "--for", "1h"]);
    let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, 8022).expect("allowed");
    assert!(session.exchange());
    knock.ok(&["revoke", CLIENT_V4]);
    knock.add_client("bob", &[]);
    knock.ok(&["client", "remove", "bob"]);
    knock.ok(&["allow", "192.0.2.0/24", "--permanent"]);
    knock.ok(&["detach"]);
    knock.wait_daemon();
    // Without a daemon the commands record it themselves.
    knock.ok(&["revoke", "192.0.2.0/24"]);
    knock.add_client("carol", &[]);
    knock.ok(&["client", "remove", "carol"]);

    let records = log(&knock);
    let revoked = of(&records, "revoked");
    assert_eq!(revoked.len(), 2, "{records:?}");
    assert_eq!(revoked[0]["source"], CLIENT_V4);
    assert!(revoked[0]["flows"].as_u64().is_some_and(|n| n >= 1), "{:?}", revoked[0]);
    assert_eq!(revoked[1]["source"], "192.0.2.0/24");
    let removed: Vec<&str> =
        of(&records, "client_removed").iter().map(|r| r["client"].as_str().unwrap()).collect();
    assert_eq!(removed, ["bob", "carol"]);
    // They are kept with the openings, not with the refusals.
    let kept = std::fs::read_to_string(knock.state_path().join("audit.jsonl")).unwrap();
    assert_eq!(kept.lines().count(), 4, "{kept}");
    let human = knock.ok(&["log"]);
    assert!(human.contains("client_removed") && human.contains("open flows ended"), "{human}");
}
