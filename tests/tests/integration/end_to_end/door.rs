//! The door: a protected port is filtered to everyone, an allowed source
//! gets in until its window ends or it is revoked, and unprotecting opens
//! the port to all.

use std::{
    thread,
    time::{Duration, Instant},
};

use knock_tests::{
    lab::{
        CLIENT_V4, CLIENT_V6, CLIENT2_V4, Entry, Lab, SERVER_V4, SERVER_V6, SERVICE, UDP_SERVICE,
        field, refusal,
    },
    privileged,
};
use knock_userspace::probe::PortState;

#[test]
fn protect_allow_expire_unprotect() {
    if !privileged("protect_allow_expire_unprotect") {
        return;
    }
    let lab = Lab::with_services();
    let knock = lab.daemon(Entry::NetnsExec, &["--mode", "native"]);

    // Before protection the services answer over both families.
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Open);
    assert!(lab.udp_exchange(SERVER_V4, UDP_SERVICE));

    knock.protect_services();
    for server in [SERVER_V4, SERVER_V6] {
        assert_eq!(lab.tcp_state(server, SERVICE), PortState::Filtered, "tcp via {server}");
        assert!(!lab.udp_exchange(server, UDP_SERVICE), "udp via {server}");
    }

    // Allowing a source opens the door for it alone.
    let window = Duration::from_secs(12);
    let allowed_at = Instant::now();
    knock.ok(&["allow", CLIENT_V4, "--for", "12s"]);
    let listing = knock.list();
    assert_eq!(field(&listing["allowed"], "addr"), [CLIENT_V4]);
    assert_eq!(listing["protected"].as_array().unwrap().len(), 2);
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    assert!(lab.udp_exchange(SERVER_V4, UDP_SERVICE));
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "another source got in");
    assert!(!lab.tcp_exchange(CLIENT_V6, SERVER_V6, SERVICE), "the IPv6 source got in");
    knock.ok(&["allow", CLIENT_V6, "--for", "4s"]);
    assert!(lab.tcp_exchange(CLIENT_V6, SERVER_V6, SERVICE));
    assert!(lab.udp_exchange(SERVER_V6, UDP_SERVICE));
    assert!(allowed_at.elapsed() < window, "the test itself was too slow");

    // The window ends: the door closes again.
    thread::sleep(window.saturating_sub(allowed_at.elapsed()) + Duration::from_millis(300));
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
    assert!(!lab.tcp_exchange(CLIENT_V6, SERVER_V6, SERVICE));
    assert!(!lab.udp_exchange(SERVER_V4, UDP_SERVICE));

    // Counters saw all of it.
    assert!(knock.counter("dropped_protected") >= 6, "{}", knock.status()["counters"]);
    assert!(knock.counter("passed_allowed") >= 4, "{}", knock.status()["counters"]);

    // Unprotecting opens the ports to everyone.
    knock.ok(&["unprotect", &format!("{SERVICE}/tcp"), &format!("{UDP_SERVICE}/udp")]);
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Open);
    assert!(lab.tcp_exchange(CLIENT_V6, SERVER_V6, SERVICE));
    assert!(lab.udp_exchange(SERVER_V6, UDP_SERVICE));
}

#[test]
fn revoke_closes_the_door_at_once() {
    if !privileged("revoke_closes_the_door_at_once") {
        return;
    }
    let lab = Lab::with_service();
    let knock = lab.protecting_daemon(Entry::NetnsExec, &[]);
    knock.ok(&["allow", CLIENT_V4]);
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    knock.ok(&["revoke", CLIENT_V4]);
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    let again = refusal("a second revoke", &knock.cli(&["revoke", CLIENT_V4]));
    assert!(again.contains("not in the allow list"), "{again}");
}
