//! Two servers of a fleet in the lab's one server namespace, one on each of
//! two veth pairs ([`Lab::second_link`]): server A at SERVER_V4, driven by
//! a config file (interfaces, protected ports, server_name) as the systemd
//! unit runs it, and server B at SERVER_B_V4, named by --server-name as
//! the Kubernetes DaemonSet names it.

use std::{
    fs,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use knock_tests::{
    lab::{
        CLIENT_B_V4, CLIENT_V4, CLIENT2_V4, Entry, Instance, Lab, SERVER_B_V4, SERVER_V4, SERVICE,
        SecondLink, knocked, middle_of_slot, rfc3339, slot_now, text,
    },
    privileged,
};

const SLOT_SECS: u64 = 60;
const GAP: Duration = Duration::from_millis(20);
const NAME_A: &str = "a.fleet.test";
const NAME_B: &str = "b.fleet.test";

/// Two servers protecting the service, each with its own name.
struct Fleet {
    lab: Lab,
    _link: SecondLink,
    a: Instance,
    b: Instance,
}

/// The config file of a server on `iface` protecting the service, named
/// `name`.
fn server_config(iface: &str, name: &str) -> String {
    format!(
        "interfaces = [\"{iface}\"]\nprotected = [\"{SERVICE}/tcp\"]\nserver_name = \"{name}\"\n"
    )
}

fn two_servers() -> Fleet {
    let lab = Lab::new();
    let link = lab.second_link();
    lab.tcp_echo(SERVER_V4, SERVICE);
    lab.tcp_echo(SERVER_B_V4, SERVICE);

    let mut a = lab.instance(Entry::NetnsExec);
    let config = a.side_file("config.toml");
    fs::write(&config, server_config(&lab.server_if, &NAME_A.to_uppercase())).unwrap();
    a.attach(&["--config", config.to_str().unwrap()]);

    let mut b = lab.instance(Entry::NetnsExec);
    b.attach(&[&link.server_if, "--server-name", NAME_B]);
    b.protect_service();

    assert_eq!(a.status()["server_name"], NAME_A, "normalized from the config file");
    assert_eq!(b.status()["server_name"], NAME_B);
    assert!(a.ok(&["status"]).contains(&format!("server:     {NAME_A}")));
    Fleet { lab, _link: link, a, b }
}

/// Adds a client on A and installs the very same client file on B, as a
/// fleet deployment does (docs/fleet.md); returns the client's profile.
fn shared_client(fleet: &Fleet, name: &str, args: &[&str]) -> PathBuf {
    let profile = fleet.a.add_client(name, args);
    let file = format!("clients/{name}.toml");
    let clients = fleet.b.state_path().join("clients");
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&clients).unwrap();
    fs::copy(fleet.a.state_path().join(&file), fleet.b.state_path().join(&file)).unwrap();
    fleet.b.ok(&["reload"]);
    assert_eq!(fleet.b.status()["clients"], 1);
    profile
}

/// The middle of the current slot (as `--at` takes it), and that slot:
/// the slot and its neighbours stay accepted for the whole test.
fn middle_of_this_slot() -> (String, u64) {
    let slot = slot_now(SLOT_SECS);
    (rfc3339(middle_of_slot(slot, SLOT_SECS)), slot)
}

/// `knock HOSTS --profile PROFILE --check SERVICE EXTRA...`
fn knock_checked(lab: &Lab, hosts: &[&str], profile: &Path, extra: &[&str]) -> Output {
    lab.knock_hosts(hosts, profile, &[&["--check", &SERVICE.to_string()][..], extra].concat())
}

#[test]
fn a_sequence_seen_at_one_server_is_refused_at_another() {
    if !privileged("a_sequence_seen_at_one_server_is_refused_at_another") {
        return;
    }
    let fleet = two_servers();
    let lab = &fleet.lab;
    let profile = shared_client(&fleet, "roamer", &["--fleet", "--slot", "60s"]);
    let (at, slot) = middle_of_this_slot();

    // The client knocks on A (by address, naming the server), and gets in.
    let out = knock_checked(lab, &[&format!("{NAME_A}={SERVER_V4}")], &profile, &["--at", &at]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), fleet.a.daemon_log());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!("knocked {SERVER_V4} as {NAME_A}: ")),
        "the line names the server: {stdout}"
    );
    let seen = knocked(&stdout);
    assert_eq!(seen.len(), 1, "{stdout}");
    assert_eq!(seen[0].slot, slot, "{stdout}");
    let seen = &seen[0].ports;
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "A did not open");

    // The exact ports seen at A, sent to B at once (same slot), from B's
    // side of the client: B never installed them.
    lab.send_knocks(CLIENT_B_V4, SERVER_B_V4, seen, GAP);
    assert!(
        !lab.tcp_exchange(CLIENT_B_V4, SERVER_B_V4, SERVICE),
        "A's sequence opened B:\n{}",
        fleet.b.daemon_log()
    );
    let b_list = fleet.b.list();
    assert_eq!(b_list["allowed"].as_array().unwrap().len(), 0, "{b_list}");
    assert!(!fleet.b.daemon_log().contains("door opened"), "{}", fleet.b.daemon_log());
    // B's sequence is another, however its name is typed.
    let at_time = Some(middle_of_slot(slot, SLOT_SECS));
    for id in [NAME_B, "B.Fleet.Test."] {
        let own = lab.sequence_with(&profile, at_time, &["--server", id]);
        assert_ne!(&own, seen, "B's sequence is A's");
    }
    assert_eq!(&lab.sequence_with(&profile, at_time, &["--server", NAME_A]), seen);
    // And at A, from another address, it is a replay.
    lab.send_knocks(CLIENT2_V4, SERVER_V4, seen, GAP);
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "a replay opened A");

    // B's own sequence for this slot, from the same profile, opens B.
    let out = knock_checked(lab, &[&format!("{NAME_B}={SERVER_B_V4}")], &profile, &["--at", &at]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), fleet.b.daemon_log());
    assert!(text(&out).contains(&format!("(slot {slot})")), "no need for another slot");
    assert!(lab.tcp_exchange(CLIENT_B_V4, SERVER_B_V4, SERVICE));
}

#[test]
fn without_fleet_a_sequence_seen_at_one_server_opens_the_other() {
    if !privileged("without_fleet_a_sequence_seen_at_one_server_opens_the_other") {
        return;
    }
    // The replay the fleet derivation is there to stop: the same secret
    // under sequence v1 gives both servers the same ports.
    let fleet = two_servers();
    let lab = &fleet.lab;
    let profile = shared_client(&fleet, "shared", &["--slot", "60s"]);
    let (at, _) = middle_of_this_slot();
    let out = lab.knock(&profile, &["--at", &at]);
    assert!(out.status.success(), "{}", text(&out));
    let seen = &knocked(&String::from_utf8_lossy(&out.stdout))[0].ports;
    lab.send_knocks(CLIENT_B_V4, SERVER_B_V4, seen, GAP);
    assert!(
        lab.tcp_exchange(CLIENT_B_V4, SERVER_B_V4, SERVICE),
        "v1 sequences should be the same on both servers:\n{}",
        fleet.b.daemon_log()
    );
}

#[test]
fn a_new_server_name_waits_for_a_restart_and_then_wins_over_a_kept_program() {
    if !privileged("a_new_server_name_waits_for_a_restart_and_then_wins_over_a_kept_program") {
        return;
    }
    let lab = Lab::with_service();
    // Fail closed (nsenter keeps the host's bpffs), so a killed daemon
    // leaves its program and sequences for the next one to take over.
    let mut knock = lab.instance(Entry::NsenterNet);
    let config = knock.side_file("config.toml");
    fs::write(&config, server_config(&lab.server_if, "old.fleet.test")).unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    knock.attach(&["--config", &config_arg]);
    let profile = knock.add_client("roamer", &["--fleet", "--slot", "60s"]);
    let (at, slot) = middle_of_this_slot();

    // A reload reads the new name but keeps the old one until a restart.
    fs::write(&config, server_config(&lab.server_if, "new.fleet.test")).unwrap();
    let reloaded = knock.ok(&["reload"]);
    assert!(reloaded.contains("until the daemon restarts"), "{reloaded}");
    assert_eq!(knock.status()["server_name"], "old.fleet.test");

    // Killed and started again: the new daemon takes over the program,
    // whose sequences were derived for the old name, and derives them anew.
    knock.kill_daemon();
    knock.attach(&["--config", &config_arg]);
    assert!(knock.daemon_log().contains("took over"), "{}", knock.daemon_log());
    assert_eq!(knock.status()["server_name"], "new.fleet.test");
    let at_time = Some(middle_of_slot(slot, SLOT_SECS));
    let old = lab.sequence_with(&profile, at_time, &["--server", "old.fleet.test"]);
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &old, GAP);
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "the old name's sequence opened");
    let new = format!("new.fleet.test={SERVER_V4}");
    let out = knock_checked(&lab, &[&new], &profile, &["--at", &at]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), knock.daemon_log());
    assert!(text(&out).contains(&format!("(slot {slot})")), "{}", text(&out));
    assert!(text(&out).contains("open after 1 try"), "{}", text(&out));
}

/// `/etc/netns/<client namespace>/hosts`, which `ip netns exec` mounts over
/// `/etc/hosts` for commands in that namespace: the fleet's names, for the
/// client alone. Removed on drop.
struct NetnsHosts(PathBuf);

impl NetnsHosts {
    fn new(lab: &Lab, lines: &str) -> Self {
        let dir = Path::new("/etc/netns").join(&lab.client.name);
        fs::create_dir_all(&dir).unwrap();
        let guard = Self(dir);
        fs::write(guard.0.join("hosts"), lines).unwrap();
        guard
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        // Only when empty: another lab's may be there.
        let _ = fs::remove_dir("/etc/netns");
    }
}

#[test]
fn one_command_opens_every_server_of_the_fleet() {
    if !privileged("one_command_opens_every_server_of_the_fleet") {
        return;
    }
    let fleet = two_servers();
    let lab = &fleet.lab;
    // An authenticator-free kind other than a random secret: a passphrase.
    let pass = fleet.a.side_file("pass");
    fs::write(&pass, "correct horse battery staple\n").unwrap();
    let pass_arg = pass.to_str().unwrap();
    let profile = shared_client(
        &fleet,
        "roamer",
        &["--fleet", "--slot", "60s", "--passphrase-file", pass_arg, "--cost", "10000"],
    );

    // By name, as typed: the client derives each server's sequence from
    // the name it knocks on, resolved from the namespace's hosts file.
    let _hosts = NetnsHosts::new(lab, &format!("{SERVER_V4} {NAME_A}\n{SERVER_B_V4} {NAME_B}\n"));
    let out = knock_checked(lab, &[NAME_A, NAME_B], &profile, &["--passphrase-file", pass_arg]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}{}{}", fleet.a.daemon_log(), fleet.b.daemon_log());
    assert!(all.contains(&format!("knocked {SERVER_V4} as {NAME_A}: ")), "{all}");
    assert!(all.contains(&format!("knocked {SERVER_B_V4} as {NAME_B}: ")), "{all}");
    assert!(all.contains(&format!("{SERVER_V4}:{SERVICE} open after 1 try")), "{all}");
    assert!(all.contains(&format!("{SERVER_B_V4}:{SERVICE} open after 1 try")), "{all}");
    let sent = knocked(&String::from_utf8_lossy(&out.stdout));
    assert_ne!(sent[0].ports, sent[1].ports, "the two servers got the same sequence");
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    assert!(lab.tcp_exchange(CLIENT_B_V4, SERVER_B_V4, SERVICE));

    // The slots record keeps them by server name: both servers' slots.
    let records: Vec<_> =
        fs::read_dir(&lab.slots_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = fs::read_to_string(&records[0]).unwrap();
    assert!(record.contains(NAME_A) && record.contains(NAME_B), "{record}");
    assert!(!record.contains(SERVER_V4), "{record}");

    // A name that is not the server's server_name derives a sequence the
    // server never installed: the door stays shut, and the client says why.
    fleet.a.ok(&["revoke", CLIENT_V4]);
    let wrong = format!("web1.fleet.test={SERVER_V4}");
    let out =
        knock_checked(lab, &[&wrong], &profile, &["--passphrase-file", pass_arg, "--retries", "0"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("server_name"), "{}", text(&out));
}
