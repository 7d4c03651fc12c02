//! Every file knock-xdp writes that holds a secret or controls the daemon
//! is private: profiles, client files, the state file, the audit trail and
//! the knock client's slots record are 0600, their directories and the
//! state directory 0700, the control socket 0600. Every command and the
//! daemon run with umask 0 here, so a mode left to the umask shows.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, process::Command, time::Duration};

use knock_common::{Proto, ProtoPort};
use knock_tests::{
    lab::{self, CLIENT_V4, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, eventually},
    privileged,
};

const SERVICE: u16 = 8022;

fn mode(path: &Path) -> u32 {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    meta.permissions().mode() & 0o777
}

#[test]
fn private_files_are_0600_and_their_directories_0700_whatever_the_umask() {
    if !privileged("private_files_are_0600_and_their_directories_0700_whatever_the_umask") {
        return;
    }
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, SERVICE);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.set_umask(0);
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &format!("{SERVICE}/tcp")]);
    let profile = knock.add_client("laptop", &["--slot", "60s"]);

    // The knock client, with umask 0 too: an opening for the audit file,
    // and a slots record.
    let slots = lab.slots_dir.with_extension("modes");
    let _ = fs::remove_dir_all(&slots);
    let mut client = Command::new("ip");
    client
        .args(["netns", "exec", &lab.client.name])
        .arg(lab::binary())
        .args(["knock", SERVER_V4, "--profile", profile.to_str().unwrap()])
        .args(["--check", &SERVICE.to_string(), "--slots-dir", slots.to_str().unwrap()]);
    lab::with_umask(&mut client, 0);
    let out = client.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    // A reset for the refusals file: a sequence's first port, then a port
    // of the knock space in none of the installed sequences (s-1..s+2).
    let first = lab.sequence(&profile, None)[0];
    let other = ProtoPort::new(Proto::Tcp, lab.unused_knock_port(&profile, 60));
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &[first, other], Duration::from_millis(20));
    let state = knock.state_path().to_owned();
    eventually("no refusal was audited", || state.join("refusals.jsonl").exists());

    let records: Vec<_> = fs::read_dir(&slots).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let expected = [
        (state.clone(), 0o700),
        (state.join("control.sock"), 0o600),
        (state.join("state.toml"), 0o600),
        (state.join("clients"), 0o700),
        (state.join("clients/laptop.toml"), 0o600),
        (state.join("audit.jsonl"), 0o600),
        (state.join("refusals.jsonl"), 0o600),
        (profile.clone(), 0o600),
        (slots.clone(), 0o700),
        (records[0].clone(), 0o600),
    ];
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(path, want)| mode(path) != *want)
        .map(|(path, want)| format!("{} is {:o}, not {want:o}", path.display(), mode(path)))
        .collect();
    let _ = fs::remove_dir_all(&slots);
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The used sequences, written as the daemon stops.
    knock.ok(&["detach"]);
    assert!(knock.wait_daemon().success(), "{}", knock.daemon_log());
    assert_eq!(mode(&state.join("used.toml")), 0o600, "used.toml");
}
