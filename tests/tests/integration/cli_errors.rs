//! Every mistake a user can make gets one clear line on stderr, a non-zero
//! exit, no panic, and changes nothing.

use std::{fs, process::Command};

use knock_tests::{
    lab::{Entry, Instance, Lab, binary},
    privileged,
};

/// (arguments, a phrase the error must contain)
const MISTAKES: &[(&[&str], &str)] = &[
    (&["protect", "0"], "out of range"),
    (&["protect", "70000"], "out of range"),
    (&["protect", "abc"], "invalid port 'abc'"),
    (&["protect", "22/sctp"], "unknown protocol"),
    (&["protect"], "required"),
    (&["unprotect", "-5"], "unexpected argument"),
    (&["allow", "10.0.0.300"], "invalid address"),
    (&["allow", "not-an-ip"], "invalid address"),
    (&["allow", "10.0.0.1", "--for", "5x"], "invalid duration"),
    (&["allow", "10.0.0.1", "--for", "0s"], "longer than zero"),
    (&["allow", "10.0.0.1", "--for", "500d"], "maximum"),
    (&["revoke", "::g"], "invalid address"),
    (&["allow", "10.0.0.0/8"], "only be allowed --permanent"),
    (&["allow", "10.0.0.0/33", "--permanent"], "invalid address"),
    (&["allow", "10.0.0.1", "--permanent", "--for", "1h"], "cannot be used with"),
    (&["attach", "lo", "--idle-timeout", "0s"], "longer than zero"),
    (&["attach", "--mode", "turbo", "lo"], "invalid value"),
    (&["attach", "no-such-if0"], "no network interface named 'no-such-if0'"),
    (&["attach"], "no interface to attach to"),
    (
        &["--config", "/nonexistent/knock.toml", "attach", "lo"],
        "cannot read /nonexistent/knock.toml",
    ),
    (&["check", "127.0.0.1", "0"], "out of range"),
    (&["frobnicate"], "unrecognized subcommand"),
    (&["client", "add", "../evil"], "invalid client name"),
    (&["client", "add", "a", "--length", "0"], "invalid value"),
    (&["client", "add", "a", "--length", "17"], "invalid value"),
    (&["client", "add", "a", "--ports", "65000-61000"], "is above"),
    (&["client", "add", "a", "--ports", "61000-61002"], "fewer than the sequence length"),
    (&["client", "add", "a", "--slot", "1500ms"], "whole seconds"),
    (&["client", "add", "a", "--proto", "icmp"], "invalid value"),
    (&["client", "add", "a", "--static", "7000,7000"], "twice in a row"),
    (&["client", "add", "a", "--static", "7000", "--length", "3"], "cannot be used with"),
    (&["client", "remove", "nobody"], "no client named 'nobody'"),
    (&["knock", "127.0.0.1", "--profile", "/nonexistent.knock"], "cannot read profile"),
    (&["knock", "127.0.0.1"], "required"),
    (&["knock", "127.0.0.1", "--profile", "knock-xdp:profile?v=1&name=x&bogus=1"], "unknown field"),
    (&["knock", "127.0.0.1", "--profile", "x", "--code", "12345"], "6 digits"),
    (&["knock", "127.0.0.1", "--profile", "x", "--retries", "1"], "--check"),
    (
        &["knock", "127.0.0.1", "--profile", "x", "--check", "22", "--retries", "many"],
        "invalid value",
    ),
    (&["client", "show", "nobody"], "no client named 'nobody'"),
    (&["client", "add", "a", "--totp", "--static", "1,2"], "cannot be used with"),
    (&["client", "add", "a", "--pin-file", "/nonexistent"], "--totp"),
    (&["client", "add", "a", "--cost", "5"], "invalid value"),
    (&["client", "add", "a", "--passphrase-file", "/nonexistent/pass"], "cannot read"),
    (&["log", "-n", "x"], "invalid value"),
    (&["sequence", "--profile", "/nonexistent.knock", "--at", "yesterday"], "invalid time"),
    // Commands that need a running daemon.
    (&["allow", "10.0.0.1"], "not running"),
    (&["revoke", "10.0.0.1"], "not running"),
    (&["list"], "not running"),
    (&["status"], "not running"),
    (&["reload"], "not running"),
    (&["install"], "required"),
    (&["install", "--iface", "no-such-if0", "--unit-dir", "/tmp"], "no network interface"),
    (&["completions", "tcsh"], "invalid value"),
    (&["attach", "lo", "--metrics-listen", "nowhere"], "invalid value"),
];

fn assert_one_clear_line(args: &[&str], out: &std::process::Output, phrase: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(matches!(out.status.code(), Some(1 | 2)), "{args:?}: exit {:?}", out.status);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: not one line:\n{stderr}");
    assert!(stderr.starts_with("knock-xdp: "), "{args:?}: {stderr}");
    assert!(stderr.contains(phrase), "{args:?}: expected '{phrase}' in: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
}

#[test]
fn invalid_arguments_are_refused_cleanly_and_change_nothing() {
    if !privileged("invalid_arguments_are_refused_cleanly_and_change_nothing") {
        return;
    }
    let lab = Lab::new();
    let knock = Instance::new(&lab.server, Entry::NetnsExec);
    for (args, phrase) in MISTAKES {
        let out = knock.cli(args);
        assert_one_clear_line(args, &out, phrase);
        assert!(!knock.state_path().join("state.toml").exists(), "{args:?} wrote state");
    }
    assert!(!lab.server.ip(&["-d", "link", "show", "dev", &lab.server_if]).contains("prog/xdp"));
}

#[test]
fn a_broken_state_file_is_reported_with_its_line_and_kept() {
    if !privileged("a_broken_state_file_is_reported_with_its_line_and_kept") {
        return;
    }
    let lab = Lab::new();
    let knock = Instance::new(&lab.server, Entry::NetnsExec);
    fs::create_dir_all(knock.state_path()).unwrap();
    let garbage = "protected = [\"22/tcp\"]\n[[[\n";
    let state_file = knock.state_path().join("state.toml");
    fs::write(&state_file, garbage).unwrap();
    for args in [&["protect", "80"][..], &["attach", lab.server_if.as_str()][..]] {
        let out = knock.cli(args);
        assert_one_clear_line(args, &out, "state.toml line 2");
        assert_eq!(fs::read_to_string(&state_file).unwrap(), garbage, "{args:?} touched the file");
    }
    assert!(!lab.server.ip(&["-d", "link", "show", "dev", &lab.server_if]).contains("prog/xdp"));
}

#[test]
fn commands_refuse_to_run_without_root() {
    if !privileged("commands_refuse_to_run_without_root") {
        return;
    }
    let state_dir = std::env::temp_dir().join(format!("knock-noroot-{}", std::process::id()));
    for args in [&["attach", "lo"][..], &["protect", "22"], &["status"], &["detach"]] {
        // setpriv drops to nobody for this one command.
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(binary())
            .arg("--state-dir")
            .arg(&state_dir)
            .args(args)
            .output()
            .unwrap();
        assert_one_clear_line(args, &out, "needs root");
    }
    assert!(!state_dir.exists());
}

#[test]
fn help_is_there_for_every_command() {
    for command in
        ["attach", "detach", "protect", "unprotect", "allow", "revoke", "list", "status", "check"]
    {
        let out = Command::new(binary()).args([command, "--help"]).output().unwrap();
        assert!(out.status.success(), "{command} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: knock-xdp"), "{command}");
    }
}

#[test]
fn an_interface_without_ethernet_frames_is_refused() {
    if !privileged("an_interface_without_ethernet_frames_is_refused") {
        return;
    }
    let lab = Lab::new();
    // A tun device's frames start at the IP header: the program could not
    // read them, and would pass everything.
    lab.server.ip(&["tuntap", "add", "dev", "kxtun0", "mode", "tun"]);
    lab.server.ip(&["link", "set", "kxtun0", "up"]);
    for entry in [Entry::NetnsExec, Entry::NsenterNet] {
        let knock = Instance::new(&lab.server, entry);
        let args = ["attach", "kxtun0"];
        assert_one_clear_line(&args, &knock.cli(&args), "does not carry Ethernet frames");
        // The pin directory is named after the state directory: neither exists.
        assert!(!knock.state_path().exists(), "the refusal created the state directory");
    }
    assert!(!lab.server.ip(&["-d", "link", "show", "dev", "kxtun0"]).contains("prog/xdp"));
}
