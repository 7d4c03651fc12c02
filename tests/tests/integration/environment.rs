//! The `KNOCK_XDP_*` environment variables: every one the command line
//! reads (asked of clap itself, so a new one cannot slip by) is named in
//! the README's Configuration section, and does what its flag does.

use std::{
    collections::BTreeSet,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use clap::CommandFactory as _;
use knock_common::{Proto, ProtoPort};
use knock_tests::{
    lab::{self, CLIENT_V4, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4},
    privileged,
};
use knock_userspace::{cli::Cli, maps::TEST_ABORT_AFTER_WRITES};

const SERVICE: u16 = 8022;
const METRICS_PORT: u16 = 9419;

/// Every environment variable a command reads through clap.
fn cli_variables() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut pending = vec![Cli::command()];
    while let Some(command) = pending.pop() {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                names.insert(env.to_string_lossy().into_owned());
            }
        }
        pending.extend(command.get_subcommands().cloned());
    }
    names
}

/// The README's Configuration section.
fn configuration_section() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = fs::read_to_string(&readme).unwrap();
    let start = text.find("### Configuration").expect("a Configuration section");
    let end = text[start + 3..].find("\n### ").map_or(text.len(), |e| start + 3 + e);
    text[start..end].to_owned()
}

#[test]
fn every_variable_is_named_in_the_readmes_configuration_section() {
    let section = configuration_section();
    let mut read: BTreeSet<String> = cli_variables();
    read.insert(TEST_ABORT_AFTER_WRITES.to_owned());
    assert!(read.len() >= 12, "clap names only {read:?}");
    let missing: Vec<&String> = read.iter().filter(|v| !section.contains(v.as_str())).collect();
    assert!(missing.is_empty(), "not in the README's Configuration section: {missing:?}");
    // And the section names none that nothing reads.
    let named: BTreeSet<&str> = section
        .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .filter(|w| w.starts_with("KNOCK_XDP_") && w.len() > "KNOCK_XDP_".len())
        .collect();
    let stale: Vec<&&str> = named.iter().filter(|v| !read.contains(**v)).collect();
    assert!(stale.is_empty(), "named in the README but read by nothing: {stale:?}");
}

/// GET /metrics at `addr` from the calling thread's namespace.
fn scrape(addr: (&str, u16)) -> String {
    let mut stream = TcpStream::connect(addr).expect("the metrics address answers");
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn every_variable_does_what_its_flag_does() {
    if !privileged("every_variable_does_what_its_flag_does") {
        return;
    }
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, SERVICE);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    let config = knock.side_file("config.toml");
    fs::write(&config, format!("protected = [\"{SERVICE}/tcp\"]\n")).unwrap();
    let metrics = format!("{SERVER_V4}:{METRICS_PORT}");
    // Each variable checked below, by name: one without a check fails here.
    let daemon_env = [
        ("KNOCK_XDP_CONFIG", config.to_str().unwrap()),
        ("KNOCK_XDP_MODE", "skb"),
        ("KNOCK_XDP_OPEN_WINDOW", "7s"),
        ("KNOCK_XDP_KNOCK_TIMEOUT", "3s"),
        ("KNOCK_XDP_IDLE_TIMEOUT", "9s"),
        ("KNOCK_XDP_FAILED_KNOCKS", "2/1m"),
        ("KNOCK_XDP_METRICS_LISTEN", metrics.as_str()),
        ("KNOCK_XDP_METRICS_PUBLIC", "true"),
        ("KNOCK_XDP_LOG_FORMAT", "json"),
        ("KNOCK_XDP_SERVER_NAME", "gate.example.org"),
    ];
    let mut checked: BTreeSet<String> = daemon_env.iter().map(|(v, _)| v.to_string()).collect();
    checked.extend(
        ["KNOCK_XDP_STATE_DIR", "KNOCK_XDP_PROFILE", "KNOCK_XDP_SLOTS_DIR"].map(String::from),
    );
    assert_eq!(checked, cli_variables(), "a variable without a check here, or a check of none");

    knock.attach_env(&[&lab.server_if], &daemon_env);
    let status = knock.status();
    assert_eq!(status["interfaces"][0]["mode"], "skb", "KNOCK_XDP_MODE");
    assert_eq!(status["open_window_secs"], 7, "KNOCK_XDP_OPEN_WINDOW");
    assert_eq!(status["knock_timeout_secs"], 3, "KNOCK_XDP_KNOCK_TIMEOUT");
    assert_eq!(status["idle_timeout_secs"], 9, "KNOCK_XDP_IDLE_TIMEOUT");
    assert_eq!(status["server_name"], "gate.example.org", "KNOCK_XDP_SERVER_NAME");
    let protected = &knock.list()["protected"];
    assert_eq!(*protected, serde_json::json!([{ "port": SERVICE, "proto": "tcp" }]), "CONFIG");
    // A public address, served, read from the client's side.
    let text = lab.client.enter(move || scrape((SERVER_V4, METRICS_PORT)));
    assert!(text.contains("knock_xdp_packets_total"), "KNOCK_XDP_METRICS_*: {text}");
    let log = knock.daemon_log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let record: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(record.is_ok(), "KNOCK_XDP_LOG_FORMAT=json, but: {line}");
    }

    // Two failed knocks allowed, the third ignored.
    let profile = knock.add_client("laptop", &["--slot", "60s"]);
    let before = knock.status()["counters"].clone();
    let port = lab.unused_knock_port(&profile, 60);
    let miss = ProtoPort::new(Proto::Tcp, port);
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &[miss; 3], Duration::from_millis(20));
    let after = knock.status()["counters"].clone();
    let moved = |name: &str| after[name].as_u64().unwrap() - before[name].as_u64().unwrap();
    assert_eq!((moved("knock"), moved("knock_limited")), (2, 1), "KNOCK_XDP_FAILED_KNOCKS");

    // A command finds the daemon through the state directory it names.
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.server.name])
        .arg(lab::binary())
        .args(["status", "--json"])
        .env("KNOCK_XDP_STATE_DIR", knock.state_path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "KNOCK_XDP_STATE_DIR: {}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pid"], knock.status()["pid"], "KNOCK_XDP_STATE_DIR");

    // The profile from the environment knocks; the slots go where named.
    let slots = lab.slots_dir.with_extension("env");
    let _ = fs::remove_dir_all(&slots);
    let out = lab.client_cli_env(
        &["knock", SERVER_V4, "--check", &SERVICE.to_string()],
        &[
            ("KNOCK_XDP_PROFILE", profile.to_str().unwrap()),
            ("KNOCK_XDP_SLOTS_DIR", slots.to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "KNOCK_XDP_PROFILE: {out:?}");
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    let recorded = fs::read_dir(&slots).map(|d| d.count()).unwrap_or(0);
    let _ = fs::remove_dir_all(&slots);
    assert!(recorded > 0, "KNOCK_XDP_SLOTS_DIR: nothing recorded there");
}
