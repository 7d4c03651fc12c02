//! The knock client recovers on its own: `knock --check` knocks again with
//! the next sequence the server accepts, the slots it used are remembered
//! across runs, and one command knocks several servers.
//!
//! Tests that depend on which slot is current knock `--at` the middle of the
//! current 60 s slot: that slot and the next stay accepted for more than a
//! minute, whichever boundary the test runs into.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    process::Output,
    time::{Duration, SystemTime},
};

use knock_tests::{
    lab::{
        CLIENT_V4, CLIENT_V6, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, SERVER_V6, SERVICE,
        error_line, field, knocked, middle_of_slot, rfc3339, slot_now,
    },
    privileged,
};
use knock_userspace::probe::PortState;

const SLOT_SECS: u64 = 60;
const GAP: Duration = Duration::from_millis(20);

fn setup() -> (Lab, Instance) {
    let lab = Lab::with_service();
    let knock = lab.protecting_daemon(Entry::NetnsExec, &[]);
    (lab, knock)
}

/// The middle of the current 60 s slot, and that slot.
fn middle_of_this_slot() -> (SystemTime, u64) {
    let slot = slot_now(SLOT_SECS);
    (middle_of_slot(slot, SLOT_SECS), slot)
}

/// What a `knock` printed: stdout and stderr apart.
fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The slots of the `knocked ... (slot N)` lines, in order.
fn knocked_slots(stdout: &str) -> Vec<u64> {
    knocked(stdout).iter().map(|k| k.slot).collect()
}

/// `ADDR:PORT STATE after N tries (T s)` lines: (address, state, tries).
fn results(stdout: &str) -> Vec<(String, String, u32)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" after ")?;
            let (addr, state) = head.rsplit_once(' ')?;
            let tries = tail.split_once(' ')?.0.parse().ok()?;
            Some((addr.to_owned(), state.to_owned(), tries))
        })
        .collect()
}

#[test]
fn check_knocks_again_with_the_next_slot_when_this_one_was_used_elsewhere() {
    if !privileged("check_knocks_again_with_the_next_slot_when_this_one_was_used_elsewhere") {
        return;
    }
    let (lab, knock) = setup();
    let profile = knock.add_client("alice", &["--slot", "60s"]);
    let (at, slot) = middle_of_this_slot();
    let check = SERVICE.to_string();
    let args = ["knock", SERVER_V4, "--profile", profile.to_str().unwrap(), "--check", &check];
    let at_arg = rfc3339(at);
    let args = [&args[..], &["--at", &at_arg]].concat();

    // Another machine (with a record of its own) knocked with this slot's
    // sequence, from another address.
    let seq = lab.sequence(&profile, Some(at));
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &seq, GAP);
    assert!(lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "the other address did not get in");

    // Without retries the client sends the same sequence, which is refused.
    let out = lab.client_cli(&[&args[..], &["--retries", "0"]].concat());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}{stderr}");
    assert_eq!(knocked_slots(&stdout), [slot], "{stdout}");
    assert_eq!(results(&stdout), [(format!("{SERVER_V4}:{SERVICE}"), "filtered".into(), 1)]);
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "a replay opened the door");
    // A run that stayed filtered forgets its slots: they may never have arrived.
    let files: Vec<_> = fs::read_dir(&lab.slots_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let record = fs::read_to_string(&files[0]).unwrap();
    assert!(!record.contains(&slot.to_string()), "{record}");

    // With retries, and no record to learn from (its directory cannot be
    // created): refused first, then in with the next slot. The record
    // failing twice gives one warning and does not fail the knock.
    let out = lab.client_cli_env(&args, &[("KNOCK_XDP_SLOTS_DIR", "/dev/null/knock-xdp")]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}{}", knock.daemon_log());
    // At the middle of a slot, the next slot (accepted the longest) comes second.
    assert_eq!(knocked_slots(&stdout), [slot, slot + 1], "{stdout}");
    assert_eq!(results(&stdout), [(format!("{SERVER_V4}:{SERVICE}"), "open".into(), 2)]);
    assert_eq!(stderr.matches("cannot remember").count(), 1, "{stderr}");
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    assert!(knock.daemon_log().contains("replayed sequence refused"), "{}", knock.daemon_log());
}

#[test]
fn a_second_knock_in_the_same_slot_from_a_new_address_opens_at_once() {
    if !privileged("a_second_knock_in_the_same_slot_from_a_new_address_opens_at_once") {
        return;
    }
    let (lab, knock) = setup();
    let profile = knock.add_client("alice", &["--slot", "60s"]);
    let (at, slot) = middle_of_this_slot();
    let args = ["--check", &SERVICE.to_string(), "--at", &rfc3339(at)].map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let out = lab.knock(&profile, &args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(knocked_slots(&stdout), [slot], "{stdout}");

    // The laptop moves: its address is now CLIENT2_V4, still in this slot.
    let route = ["route", "replace", "10.201.0.0/24", "dev", &lab.client_if, "proto", "kernel"];
    lab.client.ip(&[&route[..], &["scope", "link", "src", CLIENT2_V4]].concat());
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
    let out = lab.knock(&profile, &args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}{}", knock.daemon_log());
    let second = knocked_slots(&stdout);
    assert!(second.len() == 1 && second[0] != slot, "{stdout}");
    assert_eq!(results(&stdout), [(format!("{SERVER_V4}:{SERVICE}"), "open".into(), 1)]);
    assert!(field(&knock.list()["allowed"], "addr").contains(&CLIENT2_V4));
    assert!(!knock.daemon_log().contains("replayed sequence refused"), "{}", knock.daemon_log());

    // The record: one private file, slot numbers only, no secret in it or its name.
    let files: Vec<_> = fs::read_dir(&lab.slots_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let record = fs::read_to_string(&files[0]).unwrap();
    assert!(record.contains(&slot.to_string()) && record.contains(&second[0].to_string()));
    assert_eq!(fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777, 0o600);
    let profile_text = fs::read_to_string(&profile).unwrap();
    let secret = profile_text
        .lines()
        .find_map(|l| l.strip_prefix("secret = \""))
        .expect(&profile_text)
        .trim_end_matches('"');
    assert!(!record.contains(secret) && !files[0].to_string_lossy().contains(&secret[..16]));
}

#[test]
fn one_command_knocks_several_hosts_and_exits_with_the_worst_outcome() {
    if !privileged("one_command_knocks_several_hosts_and_exits_with_the_worst_outcome") {
        return;
    }
    let (lab, knock) = setup();
    let profile = knock.add_client("alice", &[]);
    let v6 = format!("[{SERVER_V6}]");
    let check = SERVICE.to_string();
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    assert!(!lab.tcp_exchange(CLIENT_V6, SERVER_V6, SERVICE));

    // The IPv4 and the IPv6 address of one server: the second knock takes a
    // slot the first did not use, or the server would refuse it as a replay.
    let out = lab.knock_hosts(&[SERVER_V4, &v6], &profile, &["--check", &check]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}{}", knock.daemon_log());
    let slots = knocked_slots(&stdout);
    assert!(slots.len() == 2 && slots[0] != slots[1], "{stdout}");
    assert_eq!(
        results(&stdout),
        [
            (format!("{SERVER_V4}:{SERVICE}"), "open".into(), 1),
            (format!("[{SERVER_V6}]:{SERVICE}"), "open".into(), 1)
        ]
    );
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    assert!(lab.tcp_exchange(CLIENT_V6, SERVER_V6, SERVICE));

    // A host where nobody answers is filtered; the next host is still
    // knocked, and the exit status is the worse outcome.
    let out = lab.knock_hosts(
        &["10.201.0.9", SERVER_V4],
        &profile,
        &["--check", &check, "--retries", "0"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}{stderr}");
    assert_eq!(
        results(&stdout),
        [
            (format!("10.201.0.9:{SERVICE}"), "filtered".into(), 1),
            (format!("{SERVER_V4}:{SERVICE}"), "open".into(), 1)
        ]
    );

    // A host that cannot be resolved is an error, on one line; the others
    // are knocked all the same.
    let out = lab.knock_hosts(&["no-such-host.invalid", &v6], &profile, &["--check", &check]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(error_line("an unresolvable host", &out).contains("no-such-host.invalid"));
    assert_eq!(results(&stdout), [(format!("[{SERVER_V6}]:{SERVICE}"), "open".into(), 1)]);
}
