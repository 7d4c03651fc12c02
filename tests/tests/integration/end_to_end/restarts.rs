//! What outlives the daemon: protection saved for the next start, nothing
//! left after a detach, a killed fail-closed daemon's program kept and
//! taken over by the next one, and a fail-open one's gone with it.

use std::time::Duration;

use knock_tests::{
    lab::{
        CLIENT_V4, CLIENT2_V4, Entry, Lab, SERVER_V4, SERVER_V6, SERVICE, UDP_SERVICE, eventually,
        field, has_xdp, program_loaded, refusal, tcp_knocks,
    },
    privileged,
};
use knock_userspace::probe::PortState;

#[test]
fn protected_ports_persist_across_restarts() {
    if !privileged("protected_ports_persist_across_restarts") {
        return;
    }
    let lab = Lab::with_services();
    let mut knock = lab.instance(Entry::NetnsExec);
    // Protecting with no daemon running writes the state for the next start.
    let offline = knock.ok(&["protect", &format!("{SERVICE}/tcp")]);
    assert!(offline.contains("not running"), "{offline}");
    knock.attach(&[&lab.server_if]);
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);

    knock.ok(&["protect", &format!("{UDP_SERVICE}/udp")]);
    knock.ok(&["detach"]);
    assert!(knock.wait_daemon().success());
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Open, "detach left protection behind");

    knock.attach(&[&lab.server_if]);
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
    assert!(!lab.udp_exchange(SERVER_V4, UDP_SERVICE));
    let listing = knock.list();
    assert_eq!(listing["protected"].as_array().unwrap().len(), 2, "{listing}");
}

#[test]
fn detach_leaves_no_program_and_no_pins() {
    if !privileged("detach_leaves_no_program_and_no_pins") {
        return;
    }
    let lab = Lab::with_service();
    // nsenter keeps the host's bpffs, so the pins are visible here.
    let mut knock = lab.daemon(Entry::NsenterNet, &[]);
    let program_id = knock.status()["program_id"].as_u64().unwrap() as u32;
    let pins = knock.pin_dir();
    assert!(pins.join(format!("link-{}", lab.server_if)).exists());
    assert!(pins.join("ALLOW").exists());
    assert!(has_xdp(&lab.server, &lab.server_if));
    assert!(program_loaded(program_id));

    let out = knock.ok(&["detach"]);
    assert!(out.contains("detached"), "{out}");
    assert!(knock.wait_daemon().success(), "{}", knock.daemon_log());
    assert!(!pins.exists(), "pins left in {}", pins.display());
    assert!(!has_xdp(&lab.server, &lab.server_if), "an XDP program is still attached");
    eventually(&format!("program {program_id} is still loaded"), || !program_loaded(program_id));
    assert!(!knock.state_path().join("control.sock").exists());
}

#[test]
fn a_killed_daemon_keeps_protection_and_a_new_one_takes_over() {
    if !privileged("a_killed_daemon_keeps_protection_and_a_new_one_takes_over") {
        return;
    }
    let lab = Lab::with_service();
    // The knock interrupted by the restart below must outlive it, however
    // slow the machine: the settings of the maps carry over.
    let mut knock = lab.protecting_daemon(Entry::NsenterNet, &["--knock-timeout", "60s"]);
    let old_program = knock.status()["program_id"].as_u64().unwrap();
    // One client allowed with an open connection, another in the middle of a knock.
    knock.ok(&["allow", CLIENT_V4, "--for", "1h"]);
    let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).unwrap();
    assert!(session.exchange());
    knock.add_client("mid", &["--static", "7101,7102,7103"]);
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &tcp_knocks(&[7101, 7102]), Duration::from_millis(20));

    knock.kill_daemon();
    // Fail closed: the pinned link keeps the program attached (a stranger,
    // over IPv6, is still kept out).
    assert_eq!(lab.tcp_state(SERVER_V6, SERVICE), PortState::Filtered);
    assert!(session.exchange(), "the allowed client's connection broke when the daemon died");
    let status = refusal("status without a daemon", &knock.cli(&["status"]));
    assert!(status.contains("not running"), "{status}");

    // A new daemon takes over the program's maps and links in place.
    knock.attach(&[&lab.server_if, "--knock-timeout", "60s"]);
    assert!(knock.daemon_log().contains("took over"), "{}", knock.daemon_log());
    let new_program = knock.status()["program_id"].as_u64().unwrap();
    assert_ne!(new_program, old_program);
    eventually("the old program is still loaded", || !program_loaded(old_program as u32));
    assert!(has_xdp(&lab.server, &lab.server_if));
    assert_eq!(lab.tcp_state(SERVER_V6, SERVICE), PortState::Filtered, "strangers got in");
    assert!(session.exchange(), "the restart broke the allowed client's connection");
    // The knock begun before the crash completes.
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &tcp_knocks(&[7103]), Duration::from_millis(20));
    assert!(
        lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE),
        "the interrupted knock did not complete"
    );
    assert_eq!(field(&knock.list()["allowed"], "origin"), ["manual", "knock (mid)"]);

    // Killed again, `detach` without a daemon removes what it left pinned.
    knock.kill_daemon();
    let out = knock.ok(&["detach"]);
    assert!(out.contains(&lab.server_if), "{out}");
    assert!(!knock.pin_dir().exists());
    assert!(!has_xdp(&lab.server, &lab.server_if));
    assert_eq!(lab.tcp_state(SERVER_V6, SERVICE), PortState::Open);
}

#[test]
fn with_fail_open_protection_ends_with_a_killed_daemon() {
    if !privileged("with_fail_open_protection_ends_with_a_killed_daemon") {
        return;
    }
    let lab = Lab::with_service();
    let mut knock =
        lab.protecting_daemon(Entry::NsenterNet, &["--fail-open", "--log-format", "json"]);
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
    assert_eq!(knock.status()["fail_open"], true);
    assert!(!knock.pin_dir().exists(), "fail-open pinned something");
    // JSON log lines, one object each.
    let log = knock.daemon_log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["message"] == "protected" && l["ports"] == "8022/tcp"), "{log}");
    knock.kill_daemon();
    // The kernel dropped the link with the process: exposed, not locked.
    eventually("the fail-open program outlived its daemon", || {
        !has_xdp(&lab.server, &lab.server_if)
    });
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Open);
    // And a new daemon starts without anything to clean up.
    knock.attach(&[&lab.server_if]);
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
}

#[test]
fn a_client_removed_while_no_daemon_ran_loses_its_sessions_at_the_take_over() {
    if !privileged("a_client_removed_while_no_daemon_ran_loses_its_sessions_at_the_take_over") {
        return;
    }
    let lab = Lab::with_service();
    let mut knock = lab.protecting_daemon(Entry::NsenterNet, &[]);
    // A client's session, and beside it one admitted by hand.
    knock.add_client("stolen", &["--static", "7201,7202,7203"]);
    lab.send_knocks(
        CLIENT_V4,
        SERVER_V4,
        &tcp_knocks(&[7201, 7202, 7203]),
        Duration::from_millis(20),
    );
    let mut stolen = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).expect("knocked");
    knock.ok(&["allow", CLIENT2_V4, "--for", "1h"]);
    let mut kept = lab.tcp_session(CLIENT2_V4, SERVER_V4, SERVICE).expect("allowed");
    assert!(stolen.exchange() && kept.exchange());

    knock.kill_daemon();
    let out = knock.ok(&["client", "remove", "stolen"]);
    assert!(out.contains("removed"), "{out}");
    knock.attach(&[&lab.server_if]);
    let log = knock.daemon_log();
    assert!(log.contains("took over") && log.contains("sessions ended"), "{log}");
    assert!(
        !stolen.exchange(),
        "the removed client's session survived the take-over: {log} {}",
        knock.list()
    );
    assert!(
        lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).is_none(),
        "its source is still allowed"
    );
    assert!(kept.exchange(), "a session admitted by hand ended with the removed client's");
    assert_eq!(field(&knock.list()["allowed"], "origin"), ["manual"]);
    // The audit trail says what the take-over ended.
    let records = knock.log_records(&[]);
    assert!(
        records.iter().any(|r| r["event"] == "revoked" && r["flows"].as_u64() >= Some(1)),
        "{records:?}"
    );
}
