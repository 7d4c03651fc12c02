//! Interfaces and instances: two instances keep apart, an interface with
//! another XDP program is refused, one daemon serves several interfaces,
//! and one that disappears is forgotten and protected again on return.

use std::time::Duration;

use knock_tests::{
    lab::{Entry, Instance, Lab, SERVER_V4, SERVICE, eventually, has_xdp, refusal},
    privileged,
};
use knock_userspace::probe::PortState;

/// The names of a veth pair made inside the server namespace: one more
/// interface there to attach to.
fn extra_pair(lab: &Lab) -> (String, String) {
    (format!("kxd{}", lab.id), format!("kxe{}", lab.id))
}

fn add_pair(lab: &Lab, (end, peer): &(String, String)) {
    lab.server.ip(&["link", "add", end, "type", "veth", "peer", "name", peer]);
}

/// The interfaces `status` lists, by name.
fn interface_names(knock: &Instance) -> Vec<String> {
    let status = knock.status();
    let interfaces = status["interfaces"].as_array().unwrap();
    interfaces.iter().map(|i| i["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn instances_with_their_own_state_dirs_do_not_interfere() {
    if !privileged("instances_with_their_own_state_dirs_do_not_interfere") {
        return;
    }
    let (lab_a, lab_b) = (Lab::with_service(), Lab::with_service());
    let mut a = lab_a.daemon(Entry::NsenterNet, &[]);
    let b = lab_b.daemon(Entry::NsenterNet, &[]);
    assert_ne!(a.pin_dir(), b.pin_dir());

    a.protect_service();
    assert_eq!(lab_a.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
    assert_eq!(lab_b.tcp_state(SERVER_V4, SERVICE), PortState::Open);

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
    let lab = Lab::with_service();
    let first = lab.protecting_daemon(Entry::NetnsExec, &[]);

    let second = lab.instance(Entry::NetnsExec);
    // (Fail-open: under ip netns exec a fail-closed start is refused first.)
    let out =
        second.cli_within(&["attach", &lab.server_if, "--fail-open"], Duration::from_secs(20));
    let stderr = refusal("a second attach", &out);
    assert!(stderr.contains("already has an XDP program"), "{stderr}");
    // The first instance is untouched.
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
    assert!(first.cli(&["status"]).status.success());
}

#[test]
fn two_interfaces_at_once_and_detaching_one() {
    if !privileged("two_interfaces_at_once_and_detaching_one") {
        return;
    }
    let lab = Lab::with_service();
    let pair = extra_pair(&lab);
    add_pair(&lab, &pair);
    let extra = &pair.0;
    let knock = lab.daemon(Entry::NetnsExec, &[extra, "--mode", "native"]);
    assert_eq!(interface_names(&knock), [lab.server_if.as_str(), extra]);
    let status = knock.status();
    assert!(status["interfaces"].as_array().unwrap().iter().all(|i| i["mode"] == "native"));

    knock.protect_service();
    knock.ok(&["detach", extra]);
    assert!(!has_xdp(&lab.server, extra));
    assert!(has_xdp(&lab.server, &lab.server_if));
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
    assert_eq!(interface_names(&knock), [lab.server_if.as_str()]);
}

#[test]
fn without_a_daemon_detaching_one_interface_leaves_the_others_protected() {
    if !privileged("without_a_daemon_detaching_one_interface_leaves_the_others_protected") {
        return;
    }
    let lab = Lab::with_service();
    let pair = extra_pair(&lab);
    add_pair(&lab, &pair);
    let extra = &pair.0;
    let mut knock = lab.protecting_daemon(Entry::NsenterNet, &[extra]);
    knock.kill_daemon();
    let out = knock.ok(&["detach", extra]);
    assert!(out.contains(&format!("detached from {extra} ")), "{out}");
    assert!(!has_xdp(&lab.server, extra));
    assert!(has_xdp(&lab.server, &lab.server_if), "{out}");
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
    // An interface it is not attached to changes nothing.
    let stderr = refusal("detach again", &knock.cli(&["detach", extra]));
    assert!(stderr.contains(&format!("not attached to {extra}")), "{stderr}");
    assert!(has_xdp(&lab.server, &lab.server_if));
    // The last one takes the program and every pin with it.
    let out = knock.ok(&["detach", &lab.server_if]);
    assert!(out.contains(&lab.server_if), "{out}");
    assert!(!has_xdp(&lab.server, &lab.server_if));
    assert!(!knock.pin_dir().exists());
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Open);
}

#[test]
fn an_interface_that_disappears_is_forgotten_and_protected_again_when_it_returns() {
    if !privileged("an_interface_that_disappears_is_forgotten_and_protected_again_when_it_returns")
    {
        return;
    }
    let lab = Lab::with_service();
    let pair = extra_pair(&lab);
    add_pair(&lab, &pair);
    let extra = &pair.0;
    let knock = lab.protecting_daemon(Entry::NetnsExec, &[extra]);

    lab.server.ip(&["link", "del", extra]);
    eventually("the daemon did not notice the interface going", || {
        knock.daemon_log().contains("interface disappeared")
    });
    assert_eq!(interface_names(&knock), [lab.server_if.as_str()]);
    assert_eq!(
        lab.tcp_state(SERVER_V4, SERVICE),
        PortState::Filtered,
        "the other interface lost protection"
    );

    add_pair(&lab, &pair);
    eventually("the returning interface was not attached again", || has_xdp(&lab.server, extra));
    assert_eq!(interface_names(&knock).len(), 2);
}
