//! The audit trail: openings, client removals and revocations are kept
//! whatever the refusals, `knock-xdp log` shows both kinds in time order,
//! and the daemon rotates each file past 4 MiB, keeping one generation.

use std::{fs, io::Write as _, time::Duration};

use knock_common::{Proto, ProtoPort};
use knock_tests::{
    lab::{CLIENT_V4, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, SERVICE, eventually},
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
    let lab = Lab::with_service();
    let mut knock = lab.protecting_daemon(Entry::NetnsExec, &[]);
    knock.ok(&["allow", CLIENT_V4, "--for", "1h"]);
    let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).expect("allowed");
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
    let kept = fs::read_to_string(knock.state_path().join("audit.jsonl")).unwrap();
    assert_eq!(kept.lines().count(), 4, "{kept}");
    let human = knock.ok(&["log"]);
    assert!(human.contains("client_removed") && human.contains("open flows ended"), "{human}");
}

/// Past this size the daemon rotates an audit file (the README's 4 MiB).
const ROTATE_AT: usize = 4 * 1024 * 1024;

/// Lines of `event` records from `source`, dated long ago, `bytes` long in
/// all, exactly.
fn filler(event: &str, source: &str, bytes: usize) -> String {
    let mut record = Record::now(event, source.to_owned());
    record.time = "2001-01-01T00:00:00.000Z".into();
    let line = |record: &Record| serde_json::to_string(record).unwrap() + "\n";
    let one = line(&record);
    let mut text = one.repeat(bytes / one.len() - 1);
    // The last line takes up the rest, with a detail of the right length.
    record.detail = Some(String::new());
    let bare = line(&record).len();
    record.detail = Some("x".repeat(bytes - text.len() - bare));
    text.push_str(&line(&record));
    assert_eq!(text.len(), bytes);
    text
}

#[test]
fn the_daemon_rotates_each_audit_file_past_4_mib_keeping_one_generation() {
    if !privileged("the_daemon_rotates_each_audit_file_past_4_mib_keeping_one_generation") {
        return;
    }
    let lab = Lab::with_service();
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    let state = knock.state_path().to_owned();
    StateDir::new(&state).create().unwrap();
    let (audit, refusals) = (state.join("audit.jsonl"), state.join("refusals.jsonl"));
    let previous = |path: &std::path::Path| path.with_extension("jsonl.1");
    // Exactly 4 MiB of old openings: not past it, so not rotated yet; and
    // refusals one byte past it.
    fs::write(&audit, filler("opened", "198.51.100.1", ROTATE_AT)).unwrap();
    fs::write(&refusals, filler("reset", "198.51.100.2", ROTATE_AT + 1)).unwrap();
    knock.attach(&[&lab.server_if]);
    knock.protect_service();
    let profile = knock.add_client("alice", &["--slot", "60s"]);

    // A real opening lands in the full file, which is not past 4 MiB yet.
    let out = lab.knock(&profile, &["--check", &SERVICE.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let size = || fs::metadata(&audit).unwrap().len() as usize;
    eventually("the opening was not audited", || size() > ROTATE_AT);
    assert!(!previous(&audit).exists(), "rotated at exactly 4 MiB");
    // The next record rotates it: the old file whole in .1, a new one begun.
    let kept = fs::read(&audit).unwrap();
    knock.ok(&["revoke", CLIENT_V4]);
    assert_eq!(fs::read(previous(&audit)).unwrap(), kept, "the rotated generation");
    let fresh = fs::read_to_string(&audit).unwrap();
    assert!(fresh.lines().count() == 1 && fresh.contains("\"revoked\""), "{fresh}");
    assert_eq!(fs::read(&refusals).unwrap().len(), ROTATE_AT + 1, "refusals untouched");

    // A refusal (a reset: a first knock, then another port of the knock
    // space) rotates the refusals, and only them.
    let first = lab.sequence(&profile, None)[0];
    let stray = ProtoPort::new(Proto::Tcp, lab.unused_knock_port(&profile, 60));
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &[first, stray], Duration::from_millis(20));
    eventually("the refusals were not rotated", || previous(&refusals).exists());
    assert_eq!(fs::read(previous(&refusals)).unwrap().len(), ROTATE_AT + 1);
    assert!(fs::read_to_string(&refusals).unwrap().contains("\"reset\""));
    assert_eq!(fs::read_to_string(&audit).unwrap(), fresh, "a refusal touched the audit file");

    // `log` reads both generations: alice's opening (in .1) and the revocation.
    let records = log(&knock);
    let mine: Vec<&str> = records
        .iter()
        .filter(|r| r["source"] == CLIENT_V4)
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(mine, ["opened", "revoked"], "{:?}", &records[records.len() - 3..]);

    // Filled past 4 MiB again, the next record rotates again: one
    // generation is kept, so alice's opening is gone for good.
    let more = filler("opened", "198.51.100.3", ROTATE_AT);
    let mut file = fs::OpenOptions::new().append(true).open(&audit).unwrap();
    file.write_all(more.as_bytes()).unwrap();
    drop(file);
    knock.add_client("brief", &[]);
    knock.ok(&["client", "remove", "brief"]);
    assert_eq!(fs::read_to_string(previous(&audit)).unwrap(), fresh + &more);
    assert!(fs::read_to_string(&audit).unwrap().contains("\"client_removed\""));
    assert!(log(&knock).iter().all(|r| r["source"] != CLIENT_V4 || r["event"] == "revoked"));
}
