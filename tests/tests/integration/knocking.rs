//! Knocking end to end: real clients (knock-xdp's own, knockd's `knock`, and
//! raw sockets replaying or spraying) in a client namespace, a real daemon
//! and real services in the server namespace.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use knock_common::{Proto, ProtoPort};
use knock_tests::{
    lab::{
        CLIENT_V4, CLIENT_V6, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, SERVER_V6, SERVICE,
        away_from_slot_boundary, eventually, field, middle_of_slot, slot_now,
    },
    privileged,
};
use knock_userspace::probe::PortState;

const GAP: Duration = Duration::from_millis(20);

/// A daemon protecting the service, with short windows for the tests.
fn knock_daemon(lab: &Lab, open_window: &str, knock_timeout: &str) -> Instance {
    lab.protecting_daemon(
        Entry::NetnsExec,
        &["--open-window", open_window, "--knock-timeout", knock_timeout],
    )
}

#[test]
fn a_knock_opens_the_door_and_mistakes_do_not() {
    if !privileged("a_knock_opens_the_door_and_mistakes_do_not") {
        return;
    }
    let lab = Lab::with_service();
    let knock = knock_daemon(&lab, "4s", "2s");
    let profile = knock.add_client("alice", &["--slot", "60s"]);
    away_from_slot_boundary(60, Duration::from_secs(25));
    let seq = lab.sequence(&profile, None);
    assert_eq!(seq.len(), 4);

    // Without a knock, the service is invisible.
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);

    // Wrong order.
    let reversed: Vec<ProtoPort> = seq.iter().rev().copied().collect();
    lab.send_knocks(CLIENT_V4, SERVER_V4, &reversed, GAP);
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "reversed order opened the door");

    // One extra port of the knock space in the middle.
    let stray = (61000..).find(|p| seq.iter().all(|k| k.port != *p)).unwrap();
    let mut extra = seq.clone();
    extra.insert(2, ProtoPort::new(Proto::Tcp, stray));
    lab.send_knocks(CLIENT_V4, SERVER_V4, &extra, GAP);
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "an extra port opened the door");

    // Too slowly: four knocks 800 ms apart exceed the 2 s knock timeout.
    let slow = lab.knock(&profile, &["--delay", "800"]);
    assert!(slow.status.success(), "{}", String::from_utf8_lossy(&slow.stderr));
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "a slow knock opened the door");

    // The right sequence, sent by knock-xdp itself, opens it.
    let out = lab.knock(&profile, &["--check", &SERVICE.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" open"), "{stdout}");
    let opened = Instant::now();
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    let listing = knock.list();
    assert_eq!(listing["allowed"][0]["addr"], CLIENT_V4);
    assert_eq!(listing["allowed"][0]["origin"], "knock (alice)");
    // Only that source: the second address of the client is still out.
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE));

    // After the open window, new connections are refused again.
    thread::sleep(
        Duration::from_secs(4).saturating_sub(opened.elapsed()) + Duration::from_millis(300),
    );
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the window did not close");

    let log = knock.daemon_log();
    assert!(log.contains("door opened") && log.contains("client=alice"), "{log}");
    assert!(log.contains("knock reset") && log.contains("knock timed out"), "{log}");
    let counters = &knock.status()["counters"];
    // 4 reversed + 5 around the extra port + 4 slow + 4 right, all passed
    // on to the host like any SYN to a closed port.
    assert_eq!(counters["knock"], 17, "{counters}");
}

#[test]
fn a_knock_interleaved_with_real_connections_to_other_services_opens_the_door() {
    if !privileged("a_knock_interleaved_with_real_connections_to_other_services_opens_the_door") {
        return;
    }
    let lab = Lab::with_service();
    // A web server and a DNS-like UDP service on the same host, not protected.
    lab.tcp_echo(SERVER_V4, 8080);
    lab.udp_echo(SERVER_V4, 5353);
    let knock = knock_daemon(&lab, "30s", "10s");
    let profile = knock.add_client("alice", &["--slot", "60s"]);
    away_from_slot_boundary(60, Duration::from_secs(20));
    let seq = lab.sequence(&profile, None);
    for (i, step) in seq.iter().enumerate() {
        lab.send_knocks(CLIENT_V4, SERVER_V4, &[*step], GAP);
        // A colleague behind the same address browses the same host.
        assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, 8080), "the web server is reachable");
        if i % 2 == 0 {
            assert!(lab.udp_exchange(SERVER_V4, 5353), "the UDP service answers");
        }
    }
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the interleaved knock failed");
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "another source got in");
}

#[test]
fn udp_and_ipv6_clients() {
    if !privileged("udp_and_ipv6_clients") {
        return;
    }
    let lab = Lab::with_service();
    let knock = knock_daemon(&lab, "30s", "10s");
    let udp = knock.add_client("phone", &["--proto", "udp", "--length", "6"]);
    let tcp = knock.add_client("laptop", &[]);

    let seq = lab.sequence(&udp, None);
    assert!(seq.iter().all(|k| k.proto == Proto::Udp) && seq.len() == 6, "{seq:?}");
    let now = slot_now(30);
    let slot =
        knock.status()["current_slots"]["phone"].as_u64().expect("status shows the current slot");
    assert!(slot == now || slot == now + 1, "{slot}");
    let out = lab.knock(&udp, &["--check", &SERVICE.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));

    // Over IPv6, with the server given as [addr].
    assert!(!lab.tcp_exchange(CLIENT_V6, SERVER_V6, SERVICE));
    let host = format!("[{SERVER_V6}]");
    let out = lab.knock_hosts(&[&host], &tcp, &["--check", &SERVICE.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(lab.tcp_exchange(CLIENT_V6, SERVER_V6, SERVICE));
}

#[test]
fn knockd_knock_client_opens_a_static_door() {
    if !privileged("knockd_knock_client_opens_a_static_door") {
        return;
    }
    let lab = Lab::with_service();
    let knock = knock_daemon(&lab, "30s", "10s");
    // Its span, 9000-9900/tcp, stays clear of the protected 8022/tcp.
    knock.add_client("legacy", &["--static", "9000,9500:udp,9900"]);
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));

    // knockd's client, unchanged: `knock HOST PORT[:PROTO]...`.
    let out = lab.client_run("knock", &["-d", "50", SERVER_V4, "9000", "9500:udp", "9900"]);
    assert!(out.status.success(), "knock: {}", String::from_utf8_lossy(&out.stderr));
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));
    // Static sequences do not rotate, so they are not single use.
    let out = lab.client_run("knock", &["-d", "50", SERVER_V4, "9000", "9500:udp", "9900"]);
    assert!(out.status.success());
    lab.send_knocks(
        CLIENT2_V4,
        SERVER_V4,
        &[
            ProtoPort::new(Proto::Tcp, 9000),
            ProtoPort::new(Proto::Udp, 9500),
            ProtoPort::new(Proto::Tcp, 9900),
        ],
        GAP,
    );
    assert!(lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE));

    // A knock port on a protected port or a listening service, forced past
    // the refusal of `client add`, gets a loud warning from the daemon.
    lab.udp_echo(SERVER_V4, 5353);
    knock.add_client("clash", &["--static", &format!("{SERVICE},5353:udp"), "--force"]);
    let log = knock.daemon_log();
    assert!(
        log.contains("knock port is also a protected port") && log.contains("port=8022/tcp"),
        "{log}"
    );
    assert!(
        log.contains("knock port has a listening socket") && log.contains("port=5353/udp"),
        "{log}"
    );
}

#[test]
fn neighbouring_slots_open_and_distant_ones_do_not() {
    if !privileged("neighbouring_slots_open_and_distant_ones_do_not") {
        return;
    }
    let lab = Lab::with_service();
    let knock = knock_daemon(&lab, "30s", "10s");
    let slot_secs = 60;
    let profile = knock.add_client("skewed", &["--slot", "60s"]);
    away_from_slot_boundary(slot_secs, Duration::from_secs(30));
    let slot = slot_now(slot_secs);
    let try_slot = |offset: i64| {
        let at = middle_of_slot(slot.checked_add_signed(offset).unwrap(), slot_secs);
        let seq = lab.sequence(&profile, Some(at));
        lab.send_knocks(CLIENT_V4, SERVER_V4, &seq, GAP);
        let opened = lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE);
        knock.cli(&["revoke", CLIENT_V4]);
        opened
    };
    assert!(!try_slot(-2), "slot s-2 opened the door");
    assert!(!try_slot(2), "slot s+2 opened the door");
    assert!(try_slot(-1), "slot s-1 did not open the door");
    assert!(try_slot(1), "slot s+1 did not open the door");
    assert!(try_slot(0), "slot s did not open the door");
}

#[test]
fn a_replayed_sequence_fails_from_another_source() {
    if !privileged("a_replayed_sequence_fails_from_another_source") {
        return;
    }
    let lab = Lab::with_service();
    let knock = knock_daemon(&lab, "30s", "10s");
    let profile = knock.add_client("alice", &["--slot", "60s"]);
    away_from_slot_boundary(60, Duration::from_secs(15));
    let seq = lab.sequence(&profile, None);
    lab.send_knocks(CLIENT_V4, SERVER_V4, &seq, GAP);
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE));

    // An eavesdropper replays the captured knocks from its own address.
    lab.send_knocks(CLIENT2_V4, SERVER_V4, &seq, GAP);
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "the replay opened the door");
    eventually("the replay was not logged as refused", || {
        knock.daemon_log().contains("replayed sequence refused")
    });
}

/// Adds clients `a` and `b` sharing six ports, again until neither one's
/// current sequence is one the other has installed (s-1 to s+2): identical
/// knocks cannot be told apart, which happens about once in a hundred runs.
fn two_distinguishable_clients(lab: &Lab, knock: &Instance) -> (Vec<ProtoPort>, Vec<ProtoPort>) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let slot_time = |offset: i64| UNIX_EPOCH + Duration::from_secs((now + offset * 60) as u64);
    for _ in 0..20 {
        // Four knocks out of six ports: any two sequences share at least two.
        let a = knock.add_client("a", &["--ports", "61000-61005", "--slot", "60s"]);
        let b = knock.add_client("b", &["--ports", "61000-61005", "--slot", "60s"]);
        let (seq_a, seq_b) = (lab.sequence(&a, None), lab.sequence(&b, None));
        let installed = |profile: &Path| -> Vec<Vec<ProtoPort>> {
            (-1..=2).map(|offset| lab.sequence(profile, Some(slot_time(offset)))).collect()
        };
        if !installed(&a).contains(&seq_b) && !installed(&b).contains(&seq_a) {
            return (seq_a, seq_b);
        }
        knock.ok(&["client", "remove", "a"]);
        knock.ok(&["client", "remove", "b"]);
    }
    panic!("twenty pairs of clients all had interchangeable sequences");
}

#[test]
fn two_clients_sharing_ports_knock_at_once() {
    if !privileged("two_clients_sharing_ports_knock_at_once") {
        return;
    }
    let lab = Lab::with_service();
    let knock = knock_daemon(&lab, "30s", "10s");
    away_from_slot_boundary(60, Duration::from_secs(15));
    let (seq_a, seq_b) = two_distinguishable_clients(&lab, &knock);
    let shared = seq_a.iter().filter(|k| seq_b.contains(k)).count();
    assert!(shared >= 2, "{seq_a:?} {seq_b:?}");

    // Interleaved, knock by knock, from two sources.
    for (ka, kb) in seq_a.iter().zip(&seq_b) {
        lab.send_knocks(CLIENT_V4, SERVER_V4, &[*ka], Duration::ZERO);
        lab.send_knocks(CLIENT2_V4, SERVER_V4, &[*kb], GAP);
    }
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "client a");
    assert!(lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "client b");
    // Each source is credited to its own client.
    let listing = knock.list();
    let origins: Vec<&str> = field(&listing["allowed"], "origin");
    assert_eq!(origins, ["knock (a)", "knock (b)"], "{seq_a:?} {seq_b:?}\n{}", knock.daemon_log());
}

#[test]
fn spraying_every_port_in_order_never_opens_the_door() {
    if !privileged("spraying_every_port_in_order_never_opens_the_door") {
        return;
    }
    let lab = Lab::with_service();
    // Without the failed-knock limit: with it, every SYN after the 32nd
    // would be ignored, and the spray would never meet the state machine.
    let knock = lab.protecting_daemon(Entry::NetnsExec, &["--failed-knocks", "off"]);
    // The spray crosses every port of every installed sequence, in order.
    knock.add_client("alice", &[]);
    for _ in 0..3 {
        lab.spray_syns(CLIENT_V4, SERVER_V4);
    }
    assert!(!lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "spraying opened the door");
    let listing = knock.list();
    assert!(listing["allowed"].as_array().unwrap().is_empty(), "{listing}");
    // Every SYN to alice's knock space (61000-65535) was followed.
    let counters = &knock.status()["counters"];
    assert_eq!(counters["knock"], 3 * 4536, "{counters}");
    assert_eq!(counters["knock_limited"], 0, "{counters}");
}

#[test]
fn a_sequence_used_before_a_restart_stays_used() {
    if !privileged("a_sequence_used_before_a_restart_stays_used") {
        return;
    }
    let lab = Lab::with_service();
    // nsenter keeps the host's bpffs, so a killed daemon leaves its maps
    // pinned for an offline `detach`.
    let mut knock = lab.protecting_daemon(Entry::NsenterNet, &[]);
    let profile = knock.add_client("alice", &["--slot", "300s"]);
    // The whole test runs within one slot: s-1 to s+2 stay installed.
    away_from_slot_boundary(300, Duration::from_secs(90));
    let (now, length) = (SystemTime::now(), Duration::from_secs(300));
    let slot = |offset: i32| {
        let at = if offset < 0 {
            now - length * offset.unsigned_abs()
        } else {
            now + length * offset as u32
        };
        lab.sequence(&profile, Some(at))
    };
    let opens = |source: &str, server: &str, seq: &[ProtoPort]| {
        lab.send_knocks(source, server, seq, GAP);
        lab.tcp_exchange(source, server, SERVICE)
    };
    assert!(opens(CLIENT_V4, SERVER_V4, &slot(0)), "the first knock did not open the door");

    // A daemon that stops cleanly keeps what was used for the next one.
    knock.ok(&["detach"]);
    assert!(knock.wait_daemon().success(), "{}", knock.daemon_log());
    knock.attach(&[&lab.server_if]);
    assert!(!opens(CLIENT2_V4, SERVER_V4, &slot(0)), "a replay after a restart opened the door");
    assert!(opens(CLIENT2_V4, SERVER_V4, &slot(1)), "an unused slot did not open the door");

    // So does `detach` after a daemon that died.
    knock.kill_daemon();
    knock.ok(&["detach"]);
    knock.attach(&[&lab.server_if]);
    assert!(!opens(CLIENT_V6, SERVER_V6, &slot(1)), "a replay after a crash and detach opened");
    assert!(opens(CLIENT_V6, SERVER_V6, &slot(-1)), "an unused slot did not open the door");
}
