//! The exit status of `check` and `knock --check`, as the README gives it:
//! 0 open, 3 closed, 4 filtered, 1 for errors; each with what it prints.

use std::process::Output;

use knock_tests::{
    lab::{Entry, Instance, Lab, SERVER_V4},
    privileged,
};

/// Protected, with a service behind it.
const PROTECTED: u16 = 8022;
/// Open: a service, unprotected.
const OPEN: u16 = 8080;
/// Closed: nothing listens, unprotected, so the host answers with a RST.
const CLOSED: u16 = 8081;
/// A name that never resolves (RFC 6761).
const NOWHERE: &str = "knock-xdp.invalid";

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Exit status `code`, and `says` in what was printed.
fn assert_exit(what: &str, out: &Output, code: i32, says: &str) {
    let text = text(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {text}");
    assert!(text.contains(says), "{what}: expected '{says}' in: {text}");
}

fn lab_and_daemon() -> (Lab, Instance) {
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, PROTECTED);
    lab.tcp_echo(SERVER_V4, OPEN);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &format!("{PROTECTED}/tcp")]);
    (lab, knock)
}

#[test]
fn check_exits_0_open_3_closed_4_filtered_1_on_errors() {
    if !privileged("check_exits_0_open_3_closed_4_filtered_1_on_errors") {
        return;
    }
    let (lab, _knock) = lab_and_daemon();
    let check = |host: &str, port: u16| {
        lab.client_cli(&["check", host, &port.to_string(), "--timeout", "1s"])
    };
    assert_exit("open", &check(SERVER_V4, OPEN), 0, "open");
    assert_exit("closed", &check(SERVER_V4, CLOSED), 3, "closed");
    assert_exit("protected", &check(SERVER_V4, PROTECTED), 4, "filtered");
    let out = check(NOWHERE, OPEN);
    assert_exit("unresolvable", &out, 1, NOWHERE);
    assert_eq!(text(&out).trim_end().lines().count(), 1, "{}", text(&out));
}

#[test]
fn knock_check_exits_0_open_3_closed_4_filtered_1_on_errors() {
    if !privileged("knock_check_exits_0_open_3_closed_4_filtered_1_on_errors") {
        return;
    }
    let (lab, knock) = lab_and_daemon();
    let profile = knock.add_client("laptop", &["--slot", "60s"]);
    let gone = knock.add_client("gone", &["--slot", "60s"]);
    knock.ok(&["client", "remove", "gone"]);
    let knock_check = |host: &str, profile: &std::path::Path, port: u16| {
        let (profile, port) = (profile.to_str().unwrap(), port.to_string());
        lab.client_cli(&["knock", host, "--profile", profile, "--check", &port, "--retries", "0"])
    };
    // The knock of a removed client leaves the door shut.
    assert_exit("filtered", &knock_check(SERVER_V4, &gone, PROTECTED), 4, "filtered");
    // A knock that opens it.
    assert_exit("knocked in", &knock_check(SERVER_V4, &profile, PROTECTED), 0, "open");
    // A port nothing listens on: the host refuses the connection.
    assert_exit("closed", &knock_check(SERVER_V4, &profile, CLOSED), 3, "closed");
    let out = knock_check(NOWHERE, &profile, PROTECTED);
    assert_exit("unresolvable", &out, 1, NOWHERE);
}
