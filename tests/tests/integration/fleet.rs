//! One client profile, many servers (docs/fleet.md): two servers of a
//! fleet, each a daemon of its own on its own link with its own
//! server_name, share one fleet client. A sequence seen at one is refused
//! at the other, while the client opens both with one `knock A B` command.
//! Without `fleet`, the same experiment shows the replay the fleet
//! derivation prevents.
//!
//! The two daemons run in the lab's one server namespace, one on each of
//! two veth pairs ([`Lab::second_link`]): server A at SERVER_V4, driven by
//! a config file (interfaces, protected ports, server_name) as the systemd
//! unit runs it, and server B at SERVER_B_V4, named by --server-name as
//! the Kubernetes DaemonSet names it.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use knock_common::ProtoPort;
use knock_tests::{
    lab::{
        CLIENT_B_V4, CLIENT_V4, CLIENT2_V4, Entry, Instance, Lab, SERVER_B_V4, SERVER_V4,
        SecondLink, binary, parse_sequence,
    },
    privileged,
};
use knock_userspace::{
    clients::{Client, ClientStore},
    config::Config,
    state::StateDir,
};

const SERVICE: u16 = 8022;
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

fn two_servers() -> Fleet {
    let lab = Lab::new();
    let link = lab.second_link();
    lab.tcp_echo(SERVER_V4, SERVICE);
    lab.tcp_echo(SERVER_B_V4, SERVICE);

    let mut a = Instance::new(&lab.server, Entry::NetnsExec);
    let config = a.side_file("config.toml");
    fs::write(
        &config,
        format!(
            "interfaces = [\"{}\"]\nprotected = [\"{SERVICE}/tcp\"]\nserver_name = \"{}\"\n",
            lab.server_if,
            NAME_A.to_uppercase()
        ),
    )
    .unwrap();
    a.attach(&["--config", config.to_str().unwrap()]);

    let mut b = Instance::new(&lab.server, Entry::NetnsExec);
    b.attach(&[&link.server_if, "--server-name", NAME_B]);
    b.ok(&["protect", &format!("{SERVICE}/tcp")]);

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

/// The middle of the current slot, and that slot: the slot and its
/// neighbours stay accepted for the whole test.
fn middle_of_this_slot() -> (String, u64) {
    let slot = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / SLOT_SECS;
    let at = UNIX_EPOCH + Duration::from_secs(slot * SLOT_SECS + SLOT_SECS / 2);
    (humantime::format_rfc3339_seconds(at).to_string(), slot)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The ports of every `knocked ...: PORTS (slot N)` line, in order.
fn knocked(out: &Output) -> Vec<Vec<ProtoPort>> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("knocked "))
        .map(|l| {
            let ports = l.split_once(": ").expect(l).1.rsplit_once(" (").expect(l).0;
            parse_sequence(ports)
        })
        .collect()
}

/// `knock-xdp sequence` of `profile` at `at`, with extra arguments.
fn sequence(lab: &Lab, profile: &Path, at: &str, extra: &[&str]) -> Vec<ProtoPort> {
    let mut args = vec!["sequence", "--profile", profile.to_str().unwrap(), "--at", at];
    args.extend_from_slice(extra);
    let out = lab.client_cli(&args);
    assert!(out.status.success(), "{}", text(&out));
    parse_sequence(&String::from_utf8_lossy(&out.stdout))
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
    let a_arg = format!("{NAME_A}={SERVER_V4}");
    let out = lab.client_cli(&[
        "knock",
        &a_arg,
        "--profile",
        profile.to_str().unwrap(),
        "--at",
        &at,
        "--check",
        &SERVICE.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), fleet.a.daemon_log());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!("knocked {SERVER_V4} as {NAME_A}: ")),
        "the line names the server: {stdout}"
    );
    assert!(stdout.contains(&format!("(slot {slot})")), "{stdout}");
    let seen = knocked(&out);
    assert_eq!(seen.len(), 1, "{stdout}");
    let seen = &seen[0];
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
    for id in [NAME_B, "B.Fleet.Test."] {
        let own = sequence(lab, &profile, &at, &["--server", id]);
        assert_ne!(&own, seen, "B's sequence is A's");
    }
    assert_eq!(&sequence(lab, &profile, &at, &["--server", NAME_A]), seen);
    // And at A, from another address, it is a replay.
    lab.send_knocks(CLIENT2_V4, SERVER_V4, seen, GAP);
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "a replay opened A");

    // B's own sequence for this slot, from the same profile, opens B.
    let b_arg = format!("{NAME_B}={SERVER_B_V4}");
    let out = lab.client_cli(&[
        "knock",
        &b_arg,
        "--profile",
        profile.to_str().unwrap(),
        "--at",
        &at,
        "--check",
        &SERVICE.to_string(),
    ]);
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
    let out =
        lab.client_cli(&["knock", SERVER_V4, "--profile", profile.to_str().unwrap(), "--at", &at]);
    assert!(out.status.success(), "{}", text(&out));
    let seen = &knocked(&out)[0];
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
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, SERVICE);
    // Fail closed (nsenter keeps the host's bpffs), so a killed daemon
    // leaves its program and sequences for the next one to take over.
    let mut knock = Instance::new(&lab.server, Entry::NsenterNet);
    let config = knock.side_file("config.toml");
    let write_config = |name: &str| {
        let text = format!(
            "interfaces = [\"{}\"]\nprotected = [\"{SERVICE}/tcp\"]\nserver_name = \"{name}\"\n",
            lab.server_if
        );
        fs::write(&config, text).unwrap();
    };
    write_config("old.fleet.test");
    let config_arg = config.to_str().unwrap().to_owned();
    knock.attach(&["--config", &config_arg]);
    let profile = knock.add_client("roamer", &["--fleet", "--slot", "60s"]);
    let (at, slot) = middle_of_this_slot();

    // A reload reads the new name but keeps the old one until a restart.
    write_config("new.fleet.test");
    let reloaded = knock.ok(&["reload"]);
    assert!(reloaded.contains("until the daemon restarts"), "{reloaded}");
    assert_eq!(knock.status()["server_name"], "old.fleet.test");

    // Killed and started again: the new daemon takes over the program,
    // whose sequences were derived for the old name, and derives them anew.
    knock.kill_daemon();
    knock.attach(&["--config", &config_arg]);
    assert!(knock.daemon_log().contains("took over"), "{}", knock.daemon_log());
    assert_eq!(knock.status()["server_name"], "new.fleet.test");
    let old = sequence(&lab, &profile, &at, &["--server", "old.fleet.test"]);
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &old, GAP);
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "the old name's sequence opened");
    let new = format!("new.fleet.test={SERVER_V4}");
    let out = lab.client_cli(&[
        "knock",
        &new,
        "--profile",
        profile.to_str().unwrap(),
        "--at",
        &at,
        "--check",
        &SERVICE.to_string(),
    ]);
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
    let profile_arg = profile.to_str().unwrap();
    let service = SERVICE.to_string();

    // By name, as typed: the client derives each server's sequence from
    // the name it knocks on, resolved from the namespace's hosts file.
    let _hosts = NetnsHosts::new(lab, &format!("{SERVER_V4} {NAME_A}\n{SERVER_B_V4} {NAME_B}\n"));
    let out = lab.client_cli(&[
        "knock",
        NAME_A,
        NAME_B,
        "--profile",
        profile_arg,
        "--passphrase-file",
        pass_arg,
        "--check",
        &service,
    ]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}{}{}", fleet.a.daemon_log(), fleet.b.daemon_log());
    assert!(all.contains(&format!("knocked {SERVER_V4} as {NAME_A}: ")), "{all}");
    assert!(all.contains(&format!("knocked {SERVER_B_V4} as {NAME_B}: ")), "{all}");
    assert!(all.contains(&format!("{SERVER_V4}:{SERVICE} open after 1 try")), "{all}");
    assert!(all.contains(&format!("{SERVER_B_V4}:{SERVICE} open after 1 try")), "{all}");
    let sent = knocked(&out);
    assert_ne!(sent[0], sent[1], "the two servers got the same sequence");
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
    let out = lab.client_cli(&[
        "knock",
        &wrong,
        "--profile",
        profile_arg,
        "--passphrase-file",
        pass_arg,
        "--check",
        &service,
        "--retries",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("server_name"), "{}", text(&out));
}

#[test]
fn a_fleet_unit_is_driven_by_the_config_file() {
    if !privileged("a_fleet_unit_is_driven_by_the_config_file") {
        return;
    }
    let base = std::env::temp_dir().join(format!("knock-fleet-unit-{}", std::process::id()));
    let units = base.join("units");
    fs::create_dir_all(&units).unwrap();
    let config = base.join("config.toml");
    fs::write(&config, "interfaces = [\"lo\"]\nprotected = [\"22/tcp\"]\nserver_name = \"web1\"\n")
        .unwrap();
    let run = |args: &[&str]| {
        Command::new(binary())
            .arg("--state-dir")
            .arg(base.join("state"))
            .args(args)
            .output()
            .unwrap()
    };
    let units_arg = units.to_str().unwrap();
    let out = run(&["--config", config.to_str().unwrap(), "install", "--unit-dir", units_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let unit = fs::read_to_string(units.join("knock-xdp.service")).unwrap();
    let exec = format!(
        "\nExecStart={} --state-dir {} --config {} attach\n",
        binary().display(),
        base.join("state").display(),
        config.display()
    );
    assert!(unit.contains(&exec), "{exec} missing:\n{unit}");
    assert!(unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"), "{unit}");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("knock-xdp.service"))
        .output()
        .expect("systemd-analyze");
    assert!(verify.status.success(), "systemd-analyze verify: {}", text(&verify));
    assert_eq!(
        fs::metadata(base.join("state")).unwrap().permissions().mode() & 0o022,
        0,
        "the state directory is not writable by group or others"
    );

    // Without interfaces in the file, --iface is required, and nothing is written.
    fs::write(&config, "server_name = \"web1\"\n").unwrap();
    fs::remove_file(units.join("knock-xdp.service")).unwrap();
    let out = run(&["--config", config.to_str().unwrap(), "install", "--unit-dir", units_arg]);
    assert!(!out.status.success() && text(&out).contains("--iface is required"), "{}", text(&out));
    assert!(!units.join("knock-xdp.service").exists());
    // A broken server_name is refused in one line too.
    fs::write(&config, "interfaces = [\"lo\"]\nserver_name = \"web_1\"\n").unwrap();
    let out = run(&["--config", config.to_str().unwrap(), "install", "--unit-dir", units_arg]);
    assert!(!out.status.success() && text(&out).contains("server_name"), "{}", text(&out));
    assert!(!units.join("knock-xdp.service").exists());
    let _ = fs::remove_dir_all(&base);
}

/// The text of the ConfigMap key `key` (a `|` block) of the Kubernetes
/// manifest.
fn manifest_block(key: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let head = format!("  {key}: |");
    let body: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != head)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect();
    assert!(!body.is_empty(), "no {key} in {}", path.display());
    body.join("\n") + "\n"
}

/// `client add NAME --fleet` in the state directory `state`, as an admin
/// makes a fleet's clients; the client's server copy.
fn add_fleet_client(state: &StateDir, name: &str) -> Client {
    let out = Command::new(binary())
        .arg("--state-dir")
        .arg(state.path())
        .args(["client", "add", name, "--fleet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    ClientStore::new(state).get(name).unwrap()
}

#[test]
fn the_kubernetes_manifest_gives_the_daemon_a_config_and_clients_it_accepts() {
    if !privileged("the_kubernetes_manifest_gives_the_daemon_a_config_and_clients_it_accepts") {
        return;
    }
    let base = std::env::temp_dir().join(format!("knock-fleet-k8s-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).unwrap();

    // The ConfigMap's config file reads, and names no server: each node's
    // name comes from the downward API.
    let config = base.join("config.toml");
    fs::write(&config, manifest_block("config.toml")).unwrap();
    let loaded = Config::load(Some(&config)).unwrap();
    assert!(!loaded.interfaces.is_empty() && !loaded.protected.is_empty());
    assert!(loaded.server_name.is_none());

    // A client's server copy, in a Secret volume as the kubelet lays one
    // out: every file a link into a timestamped directory through ..data.
    let scratch = StateDir::new(base.join("scratch"));
    let client = add_fleet_client(&scratch, "laptop");
    let secret = base.join("secret");
    let stamp = secret.join("..2026_11_26_12_00_00.000000000");
    fs::create_dir_all(&stamp).unwrap();
    fs::copy(scratch.path().join("clients/laptop.toml"), stamp.join("laptop.toml")).unwrap();
    symlink(stamp.file_name().unwrap(), secret.join("..data")).unwrap();
    symlink("..data/laptop.toml", secret.join("laptop.toml")).unwrap();

    // Mounted as the clients directory, those links would be refused.
    let direct = StateDir::new(base.join("linked"));
    direct.create().unwrap();
    fs::DirBuilder::new().mode(0o700).create(direct.path().join("clients")).unwrap();
    symlink(secret.join("laptop.toml"), direct.path().join("clients/laptop.toml")).unwrap();
    let err = format!("{:#}", direct.check().unwrap_err());
    assert!(err.contains("symbolic link"), "{err}");

    // The node's state directory, with a client the Secret no longer holds.
    let state = StateDir::new(base.join("state"));
    add_fleet_client(&state, "gone");

    let script = manifest_block("sync-clients.sh")
        .replace("/run/knock-xdp/clients", secret.to_str().unwrap())
        .replace("/var/lib/knock-xdp", state.path().to_str().unwrap())
        .replace("/etc/knock-xdp/config.toml", config.to_str().unwrap());
    let script_path = base.join("sync-clients.sh");
    fs::write(&script_path, script).unwrap();
    for run in 0..2 {
        let out = Command::new("sh").arg(&script_path).arg("--once").output().unwrap();
        assert!(out.status.success(), "run {run}: {}", text(&out));
        let clients: Vec<String> = fs::read_dir(state.path().join("clients"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(clients, ["laptop.toml"], "run {run}: only the Secret's clients, no leftovers");
        let copied = state.path().join("clients/laptop.toml");
        let meta = fs::symlink_metadata(&copied).unwrap();
        assert!(meta.file_type().is_file(), "a regular file, not a link");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // What the daemon checks and loads at start.
        state.check().unwrap();
        let loaded = ClientStore::new(&state).load().unwrap();
        assert_eq!(loaded, std::slice::from_ref(&client));
        assert!(loaded[0].profile.is_fleet());
    }
    let _ = fs::remove_dir_all(&base);
}
