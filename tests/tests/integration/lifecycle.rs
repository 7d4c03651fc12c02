//! How the daemon attaches and ends: SIGINT and SIGTERM detach cleanly,
//! `--mode skb` attaches generic XDP, and `--mode auto` falls back to it on
//! an interface without native XDP (a bridge) — each protecting for real.

use knock_tests::{
    lab::{CLIENT_V4, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, SERVER_V6, eventually, has_xdp},
    privileged,
};
use knock_userspace::probe::PortState;

const SERVICE: u16 = 8022;

/// The service is protected: a stranger sees it filtered, an allowed
/// source talks to it.
fn protects(lab: &Lab, knock: &Instance) {
    knock.ok(&["protect", &format!("{SERVICE}/tcp")]);
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered, "not protected");
    knock.ok(&["allow", CLIENT_V4, "--for", "1m"]);
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the allowed source is kept out");
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "a stranger got in");
}

/// The one interface's mode in `status`, and the XDP kind `ip` shows.
fn modes(lab: &Lab, knock: &Instance, iface: &str) -> (String, &'static str) {
    let status = knock.status();
    let interfaces = status["interfaces"].as_array().unwrap();
    assert_eq!(interfaces.len(), 1, "{status}");
    // The kernel's own word: XDP_ATTACHED_DRV is 1, XDP_ATTACHED_SKB 2.
    let link: serde_json::Value =
        serde_json::from_str(&lab.server.ip(&["-j", "-d", "link", "show", "dev", iface])).unwrap();
    let kind = match link[0]["xdp"]["mode"].as_u64() {
        Some(1) => "native",
        Some(2) => "generic",
        _ => "none",
    };
    (interfaces[0]["mode"].as_str().unwrap().to_owned(), kind)
}

#[test]
fn skb_mode_attaches_generic_xdp_and_protects() {
    if !privileged("skb_mode_attaches_generic_xdp_and_protects") {
        return;
    }
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, SERVICE);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    // The veth supports native XDP: skb is asked for, not fallen back to.
    knock.attach(&[&lab.server_if, "--mode", "skb"]);
    assert_eq!(modes(&lab, &knock, &lab.server_if), ("skb".into(), "generic"));
    protects(&lab, &knock);
}

#[test]
fn auto_mode_falls_back_to_generic_on_a_bridge_and_protects() {
    if !privileged("auto_mode_falls_back_to_generic_on_a_bridge_and_protects") {
        return;
    }
    let lab = Lab::new();
    // The server's addresses move to a bridge over its veth end: a bridge
    // has no native XDP, and what it delivers locally passes its generic
    // XDP hook.
    let bridge = format!("kxb{}", lab.id);
    lab.server.ip(&["link", "add", &bridge, "type", "bridge"]);
    lab.server.ip(&["addr", "flush", "dev", &lab.server_if]);
    lab.server.ip(&["link", "set", &lab.server_if, "master", &bridge]);
    lab.server.ip(&["addr", "add", &format!("{SERVER_V4}/24"), "dev", &bridge]);
    lab.server.ip(&["addr", "add", &format!("{SERVER_V6}/64"), "dev", &bridge, "nodad"]);
    lab.server.ip(&["link", "set", &bridge, "up"]);
    lab.tcp_echo(SERVER_V4, SERVICE);
    eventually("the bridge does not carry", || lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE));

    // Native is refused there, which is what auto falls back from.
    let native = Instance::new(&lab.server, Entry::NetnsExec);
    let out = native.cli_within(
        &["attach", &bridge, "--mode", "native", "--fail-open"],
        std::time::Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!has_xdp(&lab.server, &bridge), "a refused attach left a program");
    drop(native);

    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.attach(&[&bridge, "--mode", "auto"]);
    assert_eq!(modes(&lab, &knock, &bridge), ("skb".into(), "generic"));
    protects(&lab, &knock);
}

/// Ends a daemon with `signal`: it detaches, unpins and exits 0.
fn ends_cleanly_on(signal: libc::c_int, name: &str) {
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, SERVICE);
    // nsenter: the pins are in the host's bpffs, where the test can look.
    let mut knock = Instance::new(&lab.server, Entry::NsenterNet);
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &format!("{SERVICE}/tcp")]);
    let status = knock.status();
    let (pid, program) = (status["pid"].as_i64().unwrap(), status["program_id"].as_u64().unwrap());
    let pins = knock.pin_dir();
    assert!(pins.exists() && has_xdp(&lab.server, &lab.server_if));

    // SAFETY: plain kill(2) on the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
    let exit = knock.wait_daemon();
    assert!(exit.success(), "{name}: the daemon exited {exit}:\n{}", knock.daemon_log());
    let log = knock.daemon_log();
    assert!(log.contains(&format!("{name}: detaching")), "{log}");
    assert!(!has_xdp(&lab.server, &lab.server_if), "{name}: the program is still attached");
    assert!(!pins.exists(), "{name}: {} is still there", pins.display());
    assert!(!knock.state_path().join("control.sock").exists(), "{name}: the socket stayed");
    eventually(&format!("{name}: the program is still loaded"), || {
        !knock_tests::lab::program_loaded(program as u32)
    });
    // The service is open again: nothing is left protecting it.
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Open, "{name}");
}

#[test]
fn sigint_detaches_cleanly() {
    if !privileged("sigint_detaches_cleanly") {
        return;
    }
    ends_cleanly_on(libc::SIGINT, "SIGINT");
}

#[test]
fn sigterm_detaches_cleanly() {
    if !privileged("sigterm_detaches_cleanly") {
        return;
    }
    ends_cleanly_on(libc::SIGTERM, "SIGTERM");
}
