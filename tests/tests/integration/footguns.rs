//! Dangerous or meaningless configuration: refused in one line that says
//! why, changing nothing; where `--force` applies, accepted with it, and the
//! forcing recorded in the audit trail.

use std::{fs, time::Duration};

use knock_tests::{
    lab::{Entry, Instance, Lab, SERVER_V4, has_xdp},
    privileged,
};

/// A protected port, and a service listening in the server namespace.
const PROTECTED: &str = "8022/tcp";
const PROTECTED_UDP: &str = "8053/udp";
const LISTENING: u16 = 8080;

/// (arguments, a phrase the refusal must contain, whether `--force` gets past it)
const FOOT_GUNS: &[(&[&str], &str, bool)] = &[
    // Always-allowed networks wider than a /8 or a /32.
    (&["allow", "0.0.0.0/0", "--permanent"], "more than a /8 of IPv4", true),
    (&["allow", "10.0.0.0/7", "--permanent"], "more than a /8 of IPv4", true),
    (&["allow", "::/0", "--permanent"], "more than a /32 of IPv6", true),
    // Addresses no packet comes from.
    (&["allow", "0.0.0.0"], "can never be a packet's source address (the unspecified", false),
    (&["allow", "::"], "can never be a packet's source address (the unspecified", false),
    (&["allow", "224.0.0.1", "--permanent"], "(multicast)", false),
    (&["allow", "ff02::1"], "(multicast)", false),
    (&["allow", "::ffff:10.77.0.9"], "IPv4-mapped", false),
    (&["allow", "::ffff:10.77.0.9", "--permanent"], "allow 10.77.0.9 instead", false),
    // Static sequences under three knocks.
    (&["client", "add", "one", "--static", "7201"], "static sequence of 1 knock", true),
    (&["client", "add", "two", "--static", "7201,7202:udp"], "static sequence of 2 knocks", true),
    // Knock ports on a protected port or a listening service.
    (
        &["client", "add", "web", "--static", "8080,8090,8095"],
        "a service listens on 8080/tcp",
        true,
    ),
    (&["client", "add", "span", "--static", "8000,8030,8040"], "protected port 8022/tcp", true),
    (&["client", "add", "range", "--ports", "8000-8100"], "protected port 8022/tcp", true),
    // An SPA range takes datagrams: it is checked against UDP ports.
    (&["client", "add", "spa", "--spa", "--ports", "8050-8060"], "protected port 8053/udp", true),
    (
        &["client", "add", "near", "--ports", "8020-8090", "--exclude", "8022"],
        "listens on 8080",
        true,
    ),
    // Knock ports in the ephemeral range: refused, --force or not.
    (&["client", "add", "eph", "--ports", "40000-41000"], "ephemeral ports 32768-60999", false),
    (&["client", "add", "ephs", "--static", "40000,40001,40002"], "ephemeral ports", false),
    (&["client", "add", "edge", "--ports", "60990-61010"], "60990 is in both", false),
    // Protecting a client's knock port.
    (&["protect", "7102"], "lies in the knock ports 7101-7103/tcp of client 'legacy'", true),
];

fn assert_refused(args: &[&str], out: &std::process::Output, phrase: &str, forceable: bool) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?} was not refused: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: not one line:\n{stderr}");
    assert!(stderr.starts_with("knock-xdp: ") && stderr.contains(phrase), "{args:?}: {stderr}");
    assert_eq!(stderr.contains("--force"), forceable, "{args:?}: {stderr}");
}

#[test]
fn every_foot_gun_is_refused_and_forced_only_where_that_applies() {
    if !privileged("every_foot_gun_is_refused_and_forced_only_where_that_applies") {
        return;
    }
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, LISTENING);
    let knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.ok(&["protect", PROTECTED, PROTECTED_UDP]);
    knock.add_client("legacy", &["--static", "7101,7102,7103"]);
    let dir = knock.state_path();
    // Datagrams never reach a TCP port: an SPA range over one is no foot-gun.
    knock.ok(&["client", "add", "spa-tcp", "--spa", "--ports", "8020-8025"]);

    for &(args, phrase, forceable) in FOOT_GUNS {
        let before = knock.state_files(&[]);
        assert_refused(args, &knock.cli(args), phrase, forceable);
        assert_eq!(
            knock.state_files(&[]),
            before,
            "{args:?}: a refusal changed the state directory"
        );

        let forced: Vec<&str> = args.iter().copied().chain(["--force"]).collect();
        let out = knock.cli(&forced);
        if !forceable {
            assert_refused(&forced, &out, phrase, false);
            assert_eq!(knock.state_files(&[]), before, "{forced:?} changed the state directory");
            continue;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{forced:?}: {stderr}");
        assert!(stderr.contains("WARN") && stderr.contains(phrase), "{forced:?}: {stderr}");
        // One `forced` record per refusal it overrode (a client can cross two).
        let log = knock.ok(&["log", "--json", "-n", "2"]);
        let records: Vec<serde_json::Value> =
            log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(
            records.iter().any(|r| r["event"] == "forced"
                && r["detail"].as_str().is_some_and(|d| d.contains(phrase))),
            "{forced:?}: {log}"
        );
    }
    // What the forced commands did is in force: the wide network and the port.
    let state = fs::read_to_string(dir.join("state.toml")).unwrap();
    assert!(state.contains("0.0.0.0/0") && state.contains("7102/tcp"), "{state}");
    let clients = knock.ok(&["client", "list"]);
    for name in ["one", "two", "web", "span", "range", "spa", "near"] {
        assert!(clients.contains(name), "{name} missing:\n{clients}");
    }
    assert!(!clients.contains("eph"), "{clients}");
}

#[test]
fn the_config_files_networks_are_checked_at_attach_and_reload() {
    if !privileged("the_config_files_networks_are_checked_at_attach_and_reload") {
        return;
    }
    let lab = Lab::new();
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    let config = knock.side_file("config.toml");
    let config_arg = config.to_str().unwrap().to_owned();
    let attach = |extra: &[&str]| {
        let mut args = vec!["--config", &config_arg, "attach", &lab.server_if, "--fail-open"];
        args.extend_from_slice(extra);
        knock.cli_within(&args, Duration::from_secs(20))
    };
    fs::write(&config, "allow = [\"0.0.0.0\"]\n").unwrap();
    for force in [&[][..], &["--force"]] {
        let out = attach(force);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("allow: 0.0.0.0 can never be a packet's source"), "{stderr}");
    }
    fs::write(&config, "allow = [\"0.0.0.0/0\"]\n").unwrap();
    let out = attach(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("config.toml: allow: always allowing 0.0.0.0/0"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(!has_xdp(&lab.server, &lab.server_if), "a refused start attached");

    // A daemon without --force refuses the same on reload, changing nothing.
    fs::write(&config, "allow = [\"192.0.2.0/24\"]\n").unwrap();
    knock.attach(&["--config", &config_arg, &lab.server_if]);
    fs::write(&config, "allow = [\"0.0.0.0/0\"]\n").unwrap();
    let out = knock.cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("always allowing 0.0.0.0/0"), "{stderr}");
    assert_eq!(knock.list()["permanent"], serde_json::json!(["192.0.2.0/24"]));
    knock.ok(&["detach"]);
    knock.wait_daemon();

    // With --force it starts, warns and records it.
    knock.attach(&["--config", &config_arg, &lab.server_if, "--force"]);
    assert_eq!(knock.list()["permanent"], serde_json::json!(["0.0.0.0/0"]));
    let log = knock.ok(&["log", "--json"]);
    assert!(log.contains("\"forced\"") && log.contains("always allowing 0.0.0.0/0"), "{log}");
}

#[test]
fn a_weak_authenticator_pin_is_refused_and_a_strong_one_accepted() {
    if !privileged("a_weak_authenticator_pin_is_refused_and_a_strong_one_accepted") {
        return;
    }
    let lab = Lab::new();
    let knock = Instance::new(&lab.server, Entry::NetnsExec);
    let pin = knock.side_file("pin");
    let pin_arg = pin.to_str().unwrap().to_owned();
    // (PIN, cost): six digits at the default cost fall in under a minute,
    // twelve in under two years, and a cheaper cost asks for more.
    for (weak, cost) in
        [("482913", "600000"), ("123456789012", "600000"), ("1234567890123", "10000")]
    {
        fs::write(&pin, format!("{weak}\n")).unwrap();
        for force in [&[][..], &["--force"]] {
            let mut args = vec!["client", "add", "phone", "--totp", "--pin-file", &pin_arg];
            args.extend_from_slice(&["--cost", cost]);
            args.extend_from_slice(force);
            let out = knock.cli(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{weak}: {stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "{weak}: {stderr}");
            assert!(stderr.contains("falls to an offline search in"), "{weak}: {stderr}");
            assert!(stderr.contains("RTX 5090") && stderr.contains("10 years"), "{stderr}");
        }
    }
    assert!(!knock.ok(&["client", "list"]).contains("phone"), "a weak PIN made a client");
    fs::write(&pin, "correct horse battery staple\n").unwrap();
    let profile = knock.side_file("phone.knock");
    let profile_arg = profile.to_str().unwrap();
    let args = ["client", "add", "phone", "--totp", "--pin-file", &pin_arg];
    knock.ok(&[&args[..], &["--cost", "10000", "--profile-out", profile_arg]].concat());
    assert!(knock.ok(&["client", "list"]).contains("phone"));
}
