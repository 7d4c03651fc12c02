//! The limits the README states, reached for real: 1,024 always-allowed
//! networks, 1,024 clients by default; each refuses the next one in one line
//! and changes nothing. And the client at the last index knocks like the
//! first.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

use knock_tests::{
    lab::{CLIENT_V4, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, field},
    privileged,
};
use knock_userspace::state::{State, StateDir};

const SERVICE: u16 = 8022;
/// The limits as the README states them (not the constants the code uses,
/// which a test built on would follow wherever they went).
const ALLOW_NETS_MAX_ENTRIES: u32 = 1024;
/// The default of `[limits] clients`.
const MAX_CLIENTS: u32 = 1024;

/// Refused in one `knock-xdp: ...` line containing `why`, exit status 1.
fn assert_refused(out: &std::process::Output, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "not refused: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "not one line:\n{stderr}");
    assert!(stderr.starts_with("knock-xdp: ") && stderr.contains(why), "{stderr}");
}

#[test]
fn the_always_allowed_networks_fill_up_at_their_limit() {
    if !privileged("the_always_allowed_networks_fill_up_at_their_limit") {
        return;
    }
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, SERVICE);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    // All but one of the networks the kernel holds, saved before the start
    // (a thousand `allow` commands would only take longer).
    let state = StateDir::new(knock.state_path());
    state.create().unwrap();
    let nets = (0..ALLOW_NETS_MAX_ENTRIES - 1)
        .map(|i| format!("10.64.{}.{}/32", i / 256, i % 256).parse().unwrap())
        .collect();
    state
        .save(&State {
            protected: [format!("{SERVICE}/tcp").parse().unwrap()].into(),
            allow_nets: nets,
        })
        .unwrap();
    knock.attach(&[&lab.server_if]);
    let permanent = || knock.list()["permanent"].as_array().unwrap().len() as u32;
    assert_eq!(permanent(), ALLOW_NETS_MAX_ENTRIES - 1);

    // The last place is taken; the one after is refused.
    knock.ok(&["allow", &format!("{CLIENT_V4}/32"), "--permanent"]);
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the last network admits nothing");
    let saved = fs::read(knock.state_path().join("state.toml")).unwrap();
    let out = knock.cli(&["allow", &format!("{CLIENT2_V4}/32"), "--permanent"]);
    assert_refused(&out, &format!("{ALLOW_NETS_MAX_ENTRIES} networks"));
    // Nothing changed: not the file, not the list, not the kernel.
    assert_eq!(fs::read(knock.state_path().join("state.toml")).unwrap(), saved);
    assert_eq!(permanent(), ALLOW_NETS_MAX_ENTRIES);
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "the refused network admits");

    // With one place free again, it is accepted.
    knock.ok(&["revoke", "10.64.0.0/32"]);
    knock.ok(&["allow", &format!("{CLIENT2_V4}/32"), "--permanent"]);
    assert!(lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE));
}

/// Copies of the client file `seed` (written by `client add`) as clients
/// `c1`..`c{count - 1}`, with indexes 1.. and ids of their own.
fn hand_made_clients(clients: &Path, seed: &str, count: u32) {
    let text = fs::read_to_string(clients.join(format!("{seed}.toml"))).unwrap();
    for i in 1..count {
        let name = format!("c{i}");
        let copy: String = text
            .lines()
            .map(|line| match line.split_once(" = ") {
                Some(("name", _)) => format!("name = \"{name}\""),
                Some(("id", _)) => format!("id = {}", 1_000_000 + i),
                Some(("index", _)) => format!("index = {i}"),
                _ => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(copy, text, "the client file has no name, id or index line:\n{text}");
        let path = clients.join(format!("{name}.toml"));
        fs::write(&path, copy).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[test]
fn the_clients_fill_up_at_their_limit() {
    if !privileged("the_clients_fill_up_at_their_limit") {
        return;
    }
    let lab = Lab::new();
    let knock = Instance::new(&lab.server, Entry::NetnsExec);
    // Without a daemon: the commands keep the clients themselves.
    knock.add_client("c0", &[]);
    let clients = knock.state_path().join("clients");
    hand_made_clients(&clients, "c0", MAX_CLIENTS);
    let listed: serde_json::Value =
        serde_json::from_str(&knock.ok(&["client", "list", "--json"])).unwrap();
    assert_eq!(field(&listed, "name").len(), MAX_CLIENTS as usize);

    let profile = knock.state_path().with_extension("one-more.knock");
    let out = knock.cli(&["client", "add", "one-more", "--profile-out", profile.to_str().unwrap()]);
    assert_refused(&out, &format!("at most {MAX_CLIENTS} clients (raise `clients`"));
    assert!(!clients.join("one-more.toml").exists() && !profile.exists(), "a refused add wrote");
    assert_eq!(fs::read_dir(&clients).unwrap().count(), MAX_CLIENTS as usize);

    // With one removed, the next is accepted (at the index set free).
    knock.ok(&["client", "remove", "c7"]);
    knock.add_client("one-more", &[]);
    let text = fs::read_to_string(clients.join("one-more.toml")).unwrap();
    assert!(text.lines().any(|l| l == "index = 7"), "{text}");
}

#[test]
fn the_client_at_the_last_index_knocks_like_the_first() {
    if !privileged("the_client_at_the_last_index_knocks_like_the_first") {
        return;
    }
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, SERVICE);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    // Its sequences take the last places of the kernel's sequence table.
    let profile = knock.add_client("last", &[]);
    let file = knock.state_path().join("clients/last.toml");
    let text = fs::read_to_string(&file).unwrap();
    let last = MAX_CLIENTS - 1;
    let moved: Vec<String> = text
        .lines()
        .map(|l| if l.starts_with("index = ") { format!("index = {last}") } else { l.to_owned() })
        .collect();
    fs::write(&file, moved.join("\n")).unwrap();
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &format!("{SERVICE}/tcp")]);
    assert_eq!(knock.status()["sequences"], 4);

    let out = lab.knock(&profile, &["--check", &SERVICE.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    assert_eq!(field(&knock.list()["allowed"], "origin"), ["knock (last)"]);
}
