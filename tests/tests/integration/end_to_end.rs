//! End to end: real TCP and UDP services in a server namespace, a real
//! daemon attached to the server's end of a veth pair, and real sockets in a
//! client namespace.

use std::{
    thread,
    time::{Duration, Instant},
};

use knock_tests::{
    lab::{
        CLIENT_V4, CLIENT_V6, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, SERVER_V6, eventually,
        field, has_xdp, program_loaded, tcp_knocks,
    },
    privileged,
};
use knock_userspace::check::PortState;

const TCP_PORT: u16 = 8022;
const UDP_PORT: u16 = 5353;

fn lab_with_services() -> Lab {
    let lab = Lab::new();
    for addr in [SERVER_V4, SERVER_V6] {
        lab.tcp_echo(addr, TCP_PORT);
        lab.udp_echo(addr, UDP_PORT);
    }
    lab
}

#[test]
fn protect_allow_expire_unprotect() {
    if !privileged("protect_allow_expire_unprotect") {
        return;
    }
    let lab = lab_with_services();
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.attach(&[&lab.server_if, "--mode", "native"]);

    // Before protection the services answer over both families.
    assert_eq!(lab.tcp_state(SERVER_V4, TCP_PORT), PortState::Open);
    assert!(lab.udp_exchange(SERVER_V4, UDP_PORT));

    knock.ok(&["protect", &format!("{TCP_PORT}/tcp"), &format!("{UDP_PORT}/udp")]);
    for server in [SERVER_V4, SERVER_V6] {
        assert_eq!(lab.tcp_state(server, TCP_PORT), PortState::Filtered, "tcp via {server}");
        assert!(!lab.udp_exchange(server, UDP_PORT), "udp via {server}");
    }

    // Allowing a source opens the door for it alone.
    let window = Duration::from_secs(12);
    let allowed_at = Instant::now();
    knock.ok(&["allow", CLIENT_V4, "--for", "12s"]);
    let listing: serde_json::Value = knock.list();
    let allowed: Vec<&str> = field(&listing["allowed"], "addr");
    assert_eq!(allowed, [CLIENT_V4]);
    assert_eq!(listing["protected"].as_array().unwrap().len(), 2);
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, TCP_PORT));
    assert!(lab.udp_exchange(SERVER_V4, UDP_PORT));
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, TCP_PORT), "another source got in");
    assert!(!lab.tcp_exchange(CLIENT_V6, SERVER_V6, TCP_PORT), "the IPv6 source got in");
    knock.ok(&["allow", CLIENT_V6, "--for", "4s"]);
    assert!(lab.tcp_exchange(CLIENT_V6, SERVER_V6, TCP_PORT));
    assert!(lab.udp_exchange(SERVER_V6, UDP_PORT));
    assert!(allowed_at.elapsed() < window, "the test itself was too slow");

    // The window ends: the door closes again.
    thread::sleep(window.saturating_sub(allowed_at.elapsed()) + Duration::from_millis(300));
    assert_eq!(lab.tcp_state(SERVER_V4, TCP_PORT), PortState::Filtered);
    assert!(!lab.tcp_exchange(CLIENT_V6, SERVER_V6, TCP_PORT));
    assert!(!lab.udp_exchange(SERVER_V4, UDP_PORT));

    // Counters saw all of it.
    let counters = &knock.status()["counters"];
    assert!(counters["dropped_protected"].as_u64().unwrap() >= 6, "{counters}");
    assert!(counters["passed_allowed"].as_u64().unwrap() >= 4, "{counters}");

    // Unprotecting opens the ports to everyone.
    knock.ok(&["unprotect", &format!("{TCP_PORT}/tcp"), &format!("{UDP_PORT}/udp")]);
    assert_eq!(lab.tcp_state(SERVER_V4, TCP_PORT), PortState::Open);
    assert!(lab.tcp_exchange(CLIENT_V6, SERVER_V6, TCP_PORT));
    assert!(lab.udp_exchange(SERVER_V6, UDP_PORT));
}

#[test]
fn revoke_closes_the_door_at_once() {
    if !privileged("revoke_closes_the_door_at_once") {
        return;
    }
    let lab = lab_with_services();
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &TCP_PORT.to_string()]);
    knock.ok(&["allow", CLIENT_V4]);
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, TCP_PORT));
    knock.ok(&["revoke", CLIENT_V4]);
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, TCP_PORT));
    let again = knock.cli(&["revoke", CLIENT_V4]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not in the allow list"));
}

#[test]
fn protected_ports_persist_across_restarts() {
    if !privileged("protected_ports_persist_across_restarts") {
        return;
    }
    let lab = lab_with_services();
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    // Protecting with no daemon running writes the state for the next start.
    let offline = knock.ok(&["protect", &format!("{TCP_PORT}/tcp")]);
    assert!(offline.contains("not running"), "{offline}");
    knock.attach(&[&lab.server_if]);
    assert_eq!(lab.tcp_state(SERVER_V4, TCP_PORT), PortState::Filtered);

    knock.ok(&["protect", &format!("{UDP_PORT}/udp")]);
    knock.ok(&["detach"]);
    assert!(knock.wait_daemon().success());
    assert_eq!(
        lab.tcp_state(SERVER_V4, TCP_PORT),
        PortState::Open,
        "detach left protection behind"
    );

    knock.attach(&[&lab.server_if]);
    assert_eq!(lab.tcp_state(SERVER_V4, TCP_PORT), PortState::Filtered);
    assert!(!lab.udp_exchange(SERVER_V4, UDP_PORT));
    let listing: serde_json::Value = knock.list();
    assert_eq!(listing["protected"].as_array().unwrap().len(), 2, "{listing}");
}

#[test]
fn detach_leaves_no_program_and_no_pins() {
    if !privileged("detach_leaves_no_program_and_no_pins") {
        return;
    }
    let lab = lab_with_services();
    // nsenter keeps the host's bpffs, so the pins are visible here.
    let mut knock = Instance::new(&lab.server, Entry::NsenterNet);
    knock.attach(&[&lab.server_if]);
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
    let lab = lab_with_services();
    let mut knock = Instance::new(&lab.server, Entry::NsenterNet);
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &format!("{TCP_PORT}/tcp")]);
    let old_program = knock.status()["program_id"].as_u64().unwrap();
    // One client allowed with an open connection, another in the middle of a knock.
    knock.ok(&["allow", CLIENT_V4, "--for", "1h"]);
    let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, TCP_PORT).unwrap();
    assert!(session.exchange());
    knock.add_client("mid", &["--static", "7101,7102,7103"]);
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &tcp_knocks(&[7101, 7102]), Duration::from_millis(20));

    knock.kill_daemon();
    // Fail closed: the pinned link keeps the program attached (a stranger,
    // over IPv6, is still kept out).
    assert_eq!(lab.tcp_state(SERVER_V6, TCP_PORT), PortState::Filtered);
    assert!(session.exchange(), "the allowed client's connection broke when the daemon died");
    let status = knock.cli(&["status"]);
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("not running"));

    // A new daemon takes over the program's maps and links in place.
    knock.attach(&[&lab.server_if]);
    assert!(knock.daemon_log().contains("took over"), "{}", knock.daemon_log());
    let new_program = knock.status()["program_id"].as_u64().unwrap();
    assert_ne!(new_program, old_program);
    eventually("the old program is still loaded", || !program_loaded(old_program as u32));
    assert!(has_xdp(&lab.server, &lab.server_if));
    assert_eq!(lab.tcp_state(SERVER_V6, TCP_PORT), PortState::Filtered, "strangers got in");
    assert!(session.exchange(), "the restart broke the allowed client's connection");
    // The knock begun before the crash completes.
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &tcp_knocks(&[7103]), Duration::from_millis(20));
    assert!(
        lab.tcp_exchange(CLIENT2_V4, SERVER_V4, TCP_PORT),
        "the interrupted knock did not complete"
    );
    let listing: serde_json::Value = knock.list();
    let origins: Vec<&str> = field(&listing["allowed"], "origin");
    assert_eq!(origins, ["manual", "knock (mid)"]);

    // Killed again, `detach` without a daemon removes what it left pinned.
    knock.kill_daemon();
    let out = knock.ok(&["detach"]);
    assert!(out.contains(&lab.server_if), "{out}");
    assert!(!knock.pin_dir().exists());
    assert!(!has_xdp(&lab.server, &lab.server_if));
    assert_eq!(lab.tcp_state(SERVER_V6, TCP_PORT), PortState::Open);
}

#[test]
fn instances_with_their_own_state_dirs_do_not_interfere() {
    if !privileged("instances_with_their_own_state_dirs_do_not_interfere") {
        return;
    }
    let lab_a = lab_with_services();
    let lab_b = lab_with_services();
    let mut a = Instance::new(&lab_a.server, Entry::NsenterNet);
    let mut b = Instance::new(&lab_b.server, Entry::NsenterNet);
    a.attach(&[&lab_a.server_if]);
    b.attach(&[&lab_b.server_if]);
    assert_ne!(a.pin_dir(), b.pin_dir());

    a.ok(&["protect", &format!("{TCP_PORT}/tcp")]);
    assert_eq!(lab_a.tcp_state(SERVER_V4, TCP_PORT), PortState::Filtered);
    assert_eq!(lab_b.tcp_state(SERVER_V4, TCP_PORT), PortState::Open);

    a.ok(&["detach"]);
    a.wait_daemon();
    assert!(!a.pin_dir().exists());
    assert!(b.pin_dir().exists(), "detaching one instance removed the other's pins");
    assert!(b.cli(&["status"]).status.success());
}

#[test]
fn an_interface_with_another_xdp_program_is_refused() {
    if !privileged("an_interface_with_another_xdp_program_is_refused") {
        return;
    }
    let lab = lab_with_services();
    let mut first = Instance::new(&lab.server, Entry::NetnsExec);
    first.attach(&[&lab.server_if]);
    first.ok(&["protect", &format!("{TCP_PORT}/tcp")]);

    let second = Instance::new(&lab.server, Entry::NetnsExec);
    // (Fail-open: under ip netns exec a fail-closed start is refused first.)
    let out =
        second.cli_within(&["attach", &lab.server_if, "--fail-open"], Duration::from_secs(20));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already has an XDP program"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // The first instance is untouched.
    assert_eq!(lab.tcp_state(SERVER_V4, TCP_PORT), PortState::Filtered);
    assert!(first.cli(&["status"]).status.success());
}

#[test]
fn two_interfaces_at_once_and_detaching_one() {
    if !privileged("two_interfaces_at_once_and_detaching_one") {
        return;
    }
    let lab = lab_with_services();
    // A second link in the server namespace to attach to.
    let extra = format!("kxd{}", lab.id);
    lab.server.ip(&[
        "link",
        "add",
        &extra,
        "type",
        "veth",
        "peer",
        "name",
        &format!("kxe{}", lab.id),
    ]);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.attach(&[&lab.server_if, &extra, "--mode", "native"]);
    let status = knock.status();
    let names: Vec<&str> = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [lab.server_if.as_str(), extra.as_str()]);
    assert!(status["interfaces"].as_array().unwrap().iter().all(|i| i["mode"] == "native"));

    knock.ok(&["protect", &format!("{TCP_PORT}/tcp")]);
    knock.ok(&["detach", &extra]);
    assert!(!has_xdp(&lab.server, &extra));
    assert!(has_xdp(&lab.server, &lab.server_if));
    assert_eq!(lab.tcp_state(SERVER_V4, TCP_PORT), PortState::Filtered);
    assert_eq!(knock.status()["interfaces"].as_array().unwrap().len(), 1);
}

#[test]
fn with_fail_open_protection_ends_with_a_killed_daemon() {
    if !privileged("with_fail_open_protection_ends_with_a_killed_daemon") {
        return;
    }
    let lab = lab_with_services();
    let mut knock = Instance::new(&lab.server, Entry::NsenterNet);
    knock.attach(&[&lab.server_if, "--fail-open", "--log-format", "json"]);
    knock.ok(&["protect", &format!("{TCP_PORT}/tcp")]);
    assert_eq!(lab.tcp_state(SERVER_V4, TCP_PORT), PortState::Filtered);
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
    assert_eq!(lab.tcp_state(SERVER_V4, TCP_PORT), PortState::Open);
    // And a new daemon starts without anything to clean up.
    knock.attach(&[&lab.server_if]);
    assert_eq!(lab.tcp_state(SERVER_V4, TCP_PORT), PortState::Filtered);
}

#[test]
fn reload_and_sighup_apply_hand_edits_and_a_broken_file_changes_nothing() {
    if !privileged("reload_and_sighup_apply_hand_edits_and_a_broken_file_changes_nothing") {
        return;
    }
    let lab = lab_with_services();
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &format!("{TCP_PORT}/tcp")]);
    knock.ok(&["allow", CLIENT_V4, "--for", "1h"]);
    let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, TCP_PORT).unwrap();
    let state_file = knock.state_path().join("state.toml");
    assert!(lab.udp_exchange(SERVER_V6, UDP_PORT));

    // A hand edit, applied by `reload`.
    std::fs::write(&state_file, format!("protected = [\"{TCP_PORT}/tcp\", \"{UDP_PORT}/udp\"]\n"))
        .unwrap();
    let out = knock.ok(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    assert!(!lab.udp_exchange(SERVER_V6, UDP_PORT), "the reloaded protection is not in force");
    assert!(session.exchange(), "reload cut an open connection");

    // A broken file: one clear error, nothing changes, the file stays.
    std::fs::write(&state_file, "protected = [\n").unwrap();
    let out = knock.cli(&["reload"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("state.toml line") && stderr.trim().lines().count() == 1, "{stderr}");
    assert_eq!(std::fs::read_to_string(&state_file).unwrap(), "protected = [\n");
    assert!(!lab.udp_exchange(SERVER_V6, UDP_PORT), "a broken reload dropped protection");
    assert!(session.exchange());

    // SIGHUP does the same as reload.
    std::fs::write(&state_file, format!("protected = [\"{TCP_PORT}/tcp\"]\n")).unwrap();
    let pid = knock.status()["pid"].as_u64().unwrap() as i32;
    // SAFETY: plain kill(2) to the daemon.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !lab.udp_exchange(SERVER_V6, UDP_PORT) {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            knock.daemon_log()
        );
    }
    assert!(session.exchange());
    assert_eq!(lab.tcp_state(SERVER_V6, TCP_PORT), PortState::Filtered);
}

#[test]
fn an_interface_that_disappears_is_forgotten_and_protected_again_when_it_returns() {
    if !privileged("an_interface_that_disappears_is_forgotten_and_protected_again_when_it_returns")
    {
        return;
    }
    let lab = lab_with_services();
    let extra = format!("kxd{}", lab.id);
    let peer = format!("kxe{}", lab.id);
    lab.server.ip(&["link", "add", &extra, "type", "veth", "peer", "name", &peer]);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.attach(&[&lab.server_if, &extra]);
    knock.ok(&["protect", &format!("{TCP_PORT}/tcp")]);

    lab.server.ip(&["link", "del", &extra]);
    eventually("the daemon did not notice the interface going", || {
        knock.daemon_log().contains("interface disappeared")
    });
    let names = |knock: &Instance| -> Vec<String> {
        knock.status()["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&knock), std::slice::from_ref(&lab.server_if));
    assert_eq!(
        lab.tcp_state(SERVER_V4, TCP_PORT),
        PortState::Filtered,
        "the other interface lost protection"
    );

    lab.server.ip(&["link", "add", &extra, "type", "veth", "peer", "name", &peer]);
    eventually("the returning interface was not attached again", || has_xdp(&lab.server, &extra));
    assert_eq!(names(&knock).len(), 2);
}

#[test]
fn a_config_file_sets_the_defaults_flags_override_it_and_reload_rereads_it() {
    if !privileged("a_config_file_sets_the_defaults_flags_override_it_and_reload_rereads_it") {
        return;
    }
    let lab = lab_with_services();
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    let config = knock.side_file("config.toml");
    let text = format!(
        "interfaces = [\"{}\"]\nprotected = [\"{TCP_PORT}/tcp\"]\nallow = [\"{CLIENT2_V4}/32\"]\nopen_window = \"5s\"\nidle_timeout = \"20m\"\nlog_format = \"json\"\n",
        lab.server_if
    );
    std::fs::write(&config, &text).unwrap();
    let config_arg = config.to_str().unwrap();
    // No interface on the command line: the file's; --open-window beats the file.
    knock.attach(&["--config", config_arg, "--open-window", "7s"]);
    let status = knock.status();
    assert_eq!(status["interfaces"][0]["name"], lab.server_if.as_str());
    assert_eq!(status["open_window_secs"], 7);
    assert_eq!(status["idle_timeout_secs"], 1200);
    let first = knock.daemon_log().lines().next().unwrap_or_default().to_owned();
    assert!(serde_json::from_str::<serde_json::Value>(&first).is_ok(), "not JSON: {first}");

    // The file's port is protected, its network allowed, and neither can be
    // undone from the command line.
    assert_eq!(lab.tcp_state(SERVER_V6, TCP_PORT), PortState::Filtered);
    assert!(lab.tcp_exchange(CLIENT2_V4, SERVER_V4, TCP_PORT));
    let out = knock.cli(&["--config", config_arg, "unprotect", &format!("{TCP_PORT}/tcp")]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("remove it there")
    );
    let out = knock.cli(&["--config", config_arg, "revoke", &format!("{CLIENT2_V4}/32")]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("remove it there")
    );

    // Reload re-reads it; a broken one changes nothing and stays as it is.
    std::fs::write(
        &config,
        text.replace(
            &format!("\"{TCP_PORT}/tcp\""),
            &format!("\"{TCP_PORT}/tcp\", \"{UDP_PORT}/udp\""),
        ),
    )
    .unwrap();
    knock.ok(&["reload"]);
    assert!(!lab.udp_exchange(SERVER_V6, UDP_PORT), "the reloaded config is not in force");
    std::fs::write(&config, "interfaces = [\n").unwrap();
    let out = knock.cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("config.toml line"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "interfaces = [\n");
    assert!(!lab.udp_exchange(SERVER_V6, UDP_PORT), "a broken config dropped protection");
    let _ = std::fs::remove_file(&config);
}
