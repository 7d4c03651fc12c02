//! Hand edits and the config file: `reload` and SIGHUP apply them without
//! cutting a connection, a broken file is refused in one line and changes
//! nothing, and command-line flags beat the file.

use std::{fs, time::Duration};

use knock_tests::{
    lab::{
        CLIENT_V4, CLIENT2_V4, Entry, Lab, SERVER_V4, SERVER_V6, SERVICE, UDP_SERVICE,
        eventually_within, refusal,
    },
    privileged,
};
use knock_userspace::probe::PortState;

#[test]
fn reload_and_sighup_apply_hand_edits_and_a_broken_file_changes_nothing() {
    if !privileged("reload_and_sighup_apply_hand_edits_and_a_broken_file_changes_nothing") {
        return;
    }
    let lab = Lab::with_services();
    let knock = lab.protecting_daemon(Entry::NetnsExec, &[]);
    knock.ok(&["allow", CLIENT_V4, "--for", "1h"]);
    let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).unwrap();
    let state_file = knock.state_path().join("state.toml");
    assert!(lab.udp_exchange(SERVER_V6, UDP_SERVICE));

    // A hand edit, applied by `reload`.
    fs::write(&state_file, format!("protected = [\"{SERVICE}/tcp\", \"{UDP_SERVICE}/udp\"]\n"))
        .unwrap();
    let out = knock.ok(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    assert!(!lab.udp_exchange(SERVER_V6, UDP_SERVICE), "the reloaded protection is not in force");
    assert!(session.exchange(), "reload cut an open connection");

    // A broken file: one clear error, nothing changes, the file stays.
    fs::write(&state_file, "protected = [\n").unwrap();
    let stderr = refusal("reload of a broken file", &knock.cli(&["reload"]));
    assert!(stderr.contains("state.toml line"), "{stderr}");
    assert_eq!(fs::read_to_string(&state_file).unwrap(), "protected = [\n");
    assert!(!lab.udp_exchange(SERVER_V6, UDP_SERVICE), "a broken reload dropped protection");
    assert!(session.exchange());

    // SIGHUP does the same as reload.
    fs::write(&state_file, format!("protected = [\"{SERVICE}/tcp\"]\n")).unwrap();
    // SAFETY: plain kill(2) to the daemon.
    assert_eq!(unsafe { libc::kill(knock.pid(), libc::SIGHUP) }, 0);
    eventually_within("SIGHUP did not reload", Duration::from_secs(5), || {
        lab.udp_exchange(SERVER_V6, UDP_SERVICE)
    });
    assert!(session.exchange());
    assert_eq!(lab.tcp_state(SERVER_V6, SERVICE), PortState::Filtered);
}

#[test]
fn a_config_file_sets_the_defaults_flags_override_it_and_reload_rereads_it() {
    if !privileged("a_config_file_sets_the_defaults_flags_override_it_and_reload_rereads_it") {
        return;
    }
    let lab = Lab::with_services();
    let mut knock = lab.instance(Entry::NetnsExec);
    let config = knock.side_file("config.toml");
    let text = format!(
        "interfaces = [\"{}\"]\nprotected = [\"{SERVICE}/tcp\"]\nallow = [\"{CLIENT2_V4}/32\"]\nopen_window = \"5s\"\nidle_timeout = \"20m\"\nlog_format = \"json\"\n",
        lab.server_if
    );
    fs::write(&config, &text).unwrap();
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
    assert_eq!(lab.tcp_state(SERVER_V6, SERVICE), PortState::Filtered);
    assert!(lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE));
    for args in [["unprotect", &format!("{SERVICE}/tcp")], ["revoke", &format!("{CLIENT2_V4}/32")]]
    {
        let out = knock.cli(&[&["--config", config_arg][..], &args].concat());
        assert!(refusal(args[0], &out).contains("remove it there"));
    }

    // Reload re-reads it; a broken one changes nothing and stays as it is.
    let with_udp = text.replace(
        &format!("\"{SERVICE}/tcp\""),
        &format!("\"{SERVICE}/tcp\", \"{UDP_SERVICE}/udp\""),
    );
    fs::write(&config, with_udp).unwrap();
    knock.ok(&["reload"]);
    assert!(!lab.udp_exchange(SERVER_V6, UDP_SERVICE), "the reloaded config is not in force");
    fs::write(&config, "interfaces = [\n").unwrap();
    let stderr = refusal("reload of a broken config", &knock.cli(&["reload"]));
    assert!(stderr.contains("config.toml line"), "{stderr}");
    assert_eq!(fs::read_to_string(&config).unwrap(), "interfaces = [\n");
    assert!(!lab.udp_exchange(SERVER_V6, UDP_SERVICE), "a broken config dropped protection");
    let _ = fs::remove_file(&config);
}
